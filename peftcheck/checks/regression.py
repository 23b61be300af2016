"""The ``no_regression`` check: a method's recorded metrics against the stored baseline."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import Field, field_validator

from peftcheck.artifact_cache import RESOURCE_METRICS
from peftcheck.baseline import BaselineStore, Comparison, MetricSpecs, RegressionRule
from peftcheck.checks.registry import CheckParams, Measurement, NotApplicable, register_check

if TYPE_CHECKING:
    from peftcheck.context import CheckContext

__all__ = ["NoRegressionParams", "no_regression", "baseline_root", "UPDATE_HINT"]

DEFAULT_BASELINE_DIR = "baselines"
UPDATE_HINT = "run with --peftcheck-update-baseline missing to record one"


class NoRegressionParams(CheckParams):
    """Which metrics to hold to the baseline, and how strictly."""

    metrics: list[str] | None = Field(
        None, description="Metrics to compare; default: every metric the method recorded."
    )
    ignore: list[str] = Field(default_factory=list, description="Metrics left out of the comparison.")
    tolerance: dict[str, str | float] = Field(
        default_factory=dict,
        description="Metric -> tolerance overriding its default: 0.05 (absolute, in the metric's "
        "unit), '10%' (relative to the baseline) or '3sigma>=20%' (standard deviations of the "
        "baseline samples, at least 20%).",
    )
    direction: dict[str, str] = Field(
        default_factory=dict,
        description="Metric -> lower | higher | none: which way is better, for metrics without a default.",
    )
    require_baseline: bool = Field(
        False, description="Fail instead of skipping when the suite or method has no baseline yet."
    )

    @field_validator("tolerance")
    @classmethod
    def _tolerances(cls, value: dict[str, str | float]) -> dict[str, str | float]:
        MetricSpecs.from_raw(tolerance=value)  # ValueError names the metric and quotes the tolerance
        return value

    @field_validator("direction")
    @classmethod
    def _directions(cls, value: dict[str, str]) -> dict[str, str]:
        MetricSpecs.from_raw(direction=value)
        return value

    def specs(self) -> MetricSpecs:
        return MetricSpecs.from_raw(self.tolerance, self.direction)


def baseline_root(option: Any) -> Path:
    """The store named by ``--peftcheck-baseline``; ``baselines/`` where no option is set."""
    return Path(option) if option else Path(DEFAULT_BASELINE_DIR)


def _missing(params: NoRegressionParams, reason: str, details: dict[str, Any]) -> Measurement:
    if not params.require_baseline:
        raise NotApplicable(f"{reason}; {UPDATE_HINT}")
    return Measurement(False, None, "a baseline exists", f"{reason} (require_baseline is set); {UPDATE_HINT}",
                       details=details)


@register_check("no_regression", params=NoRegressionParams)
def no_regression(ctx: "CheckContext", params: NoRegressionParams) -> Measurement:
    """No recorded metric is worse than the stored baseline by more than its tolerance.

    Runs after the method's other checks (Session.arrange), whose metrics it compares too."""
    record = ctx.method_record()
    suite, method = ctx.suite.spec.suite, ctx.method
    store = BaselineStore(baseline_root(ctx.option("peftcheck_baseline")))
    details: dict[str, Any] = {
        "store": str(store.root),
        "params": params.model_dump(exclude={"require_baseline"}, exclude_defaults=True),
    }
    if record.get("status", "trained") != "trained":
        return Measurement(False, None, "0 regressions", f"training failed: {record.get('error')}", details=details)
    match = store.lookup(suite, record.get("env") or ctx.env())
    if match is None:
        return _missing(params, f"no baseline for suite {suite!r} in {store.root}", details)
    details.update(baseline=str(match.path), exact=match.exact, baseline_note=match.note)
    comparisons = match.compare(record, specs=params.specs(), only=params.metrics, ignore=params.ignore)
    if comparisons is None:
        return _missing(params, f"{match.path} has no entry for method {method!r}", details)
    details["comparisons"] = [c.as_dict() for c in comparisons]
    judged = RegressionRule.judged(comparisons)  # the same rule the report applies (issue 14)
    regressions = [c for c in judged if c.status == "regressed"]
    # a method served from the artifact cache did not train in this run: its time and speed were not
    # measured, which is not a metric gone missing (issue 14)
    unmeasured = [c.metric for c in judged if c.current is None and record.get("from_cache")
                  and c.metric in RESOURCE_METRICS]  # fmt: skip
    if unmeasured and len(unmeasured) == len(judged):
        raise NotApplicable(f"{method} came from the artifact cache, so {unmeasured} were not measured in this "
                            "run; rerun with --peftcheck-cache write (or off) to train and measure them")  # fmt: skip
    absent = [c for c in judged if params.metrics is not None and c.current is None and c.metric not in unmeasured]
    details["not_measured_from_cache"] = unmeasured
    return Measurement(
        passed=not regressions and not absent,
        value=float(len(regressions)),
        bound="0 regressions",
        unit="regressions",
        message=_message(judged, regressions, absent, match.note),
        details=details,
    )


def _message(
    comparisons: list[Comparison], regressions: list[Comparison], absent: list[Comparison], note: str
) -> str:
    if not regressions and not absent:
        improved = sum(c.status == "improved" for c in comparisons)
        extra = f", {improved} improved" if improved else ""
        return f"{len(comparisons)} metric(s) within tolerance of the baseline{extra} ({note})"
    lines = [f"{len(regressions)} regression(s) against the baseline ({note}):"]
    lines += [f"  {c.describe()}" for c in regressions]
    lines += [f"  {c.metric}: named in `metrics` but not recorded by this run" for c in absent]
    lines.append("  if the change is intended: rerun with --peftcheck-update-baseline all and commit the baseline diff")
    return "\n".join(lines)

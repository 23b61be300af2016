"""Tolerance-aware comparison of one metric against its baseline samples."""

from __future__ import annotations

import dataclasses
import functools
import math
import re
import statistics
from collections.abc import Mapping, Sequence
from typing import Any, Literal

__all__ = [
    "Direction",
    "ToleranceKind",
    "Status",
    "Tolerance",
    "MetricSpec",
    "MetricSpecs",
    "Samples",
    "Comparison",
    "DEFAULT_METRICS",
    "MIN_NOISE_SAMPLES",
    "parse_tolerance",
    "parse_gate",
    "parse_direction",
    "as_float",
    "compare_metric",
    "compare_metrics",
    "RegressionRule",
]

Direction = Literal["lower", "higher", "none"]
ToleranceKind = Literal["absolute", "relative", "noise"]
Status = Literal["improved", "regressed", "unchanged", "changed", "new", "missing", "not_compared"]
DIRECTIONS: tuple[Direction, ...] = ("lower", "higher", "none")

_NUMBER = r"(\d+(?:\.\d*)?(?:[eE][-+]?\d+)?|\.\d+(?:[eE][-+]?\d+)?)"
_RELATIVE = re.compile(rf"^{_NUMBER}\s*%$")
_NOISE = re.compile(rf"^{_NUMBER}\s*(?:sigma|σ)(?:\s*>=\s*{_NUMBER}\s*%)?$")


def as_float(value: Any) -> float | None:
    """A number from a record: floats, ints and the strings 'nan'/'inf' the writer uses."""
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return None
    return None


@dataclasses.dataclass(frozen=True)
class Tolerance:
    """How far a value may move the wrong way before it is a regression.

    ``absolute``: in the metric's unit; ``relative``: a fraction of the baseline; ``noise``:
    ``amount`` standard deviations of the baseline samples, never less than ``floor`` (a fraction
    of the baseline), which is also what applies while there are fewer than two samples.
    """

    kind: ToleranceKind
    amount: float
    floor: float = 0.0

    def allowed(self, baseline: "Samples") -> float:
        scale = abs(baseline.mean)
        if self.kind == "absolute":
            return self.amount
        if self.kind == "relative":
            return self.amount * scale
        sigma = baseline.stdev
        band = self.amount * sigma if sigma is not None and math.isfinite(sigma) else 0.0
        return max(band, self.floor * scale)

    def __str__(self) -> str:
        if self.kind == "absolute":
            return f"{self.amount:g}"
        if self.kind == "relative":
            return f"{self.amount * 100:g}%"
        return f"{self.amount:g}sigma" + (f">={self.floor * 100:g}%" if self.floor else "")


def parse_tolerance(text: str | float | int) -> Tolerance:
    """``0.05`` absolute, ``10%`` relative, ``3sigma`` or ``3sigma>=20%`` noise-aware."""
    if isinstance(text, bool):
        raise ValueError(f"tolerance {text!r}: expected a number, 'N%' or 'Ksigma'")
    if isinstance(text, (int, float)):
        if not math.isfinite(text) or text < 0:
            raise ValueError(f"tolerance {text!r}: must be a finite number >= 0")
        return Tolerance("absolute", float(text))
    raw = text.strip()
    if match := _RELATIVE.match(raw):
        return Tolerance("relative", float(match.group(1)) / 100)
    if match := _NOISE.match(raw):
        floor = float(match.group(2)) / 100 if match.group(2) else 0.0
        return Tolerance("noise", float(match.group(1)), floor)
    try:
        return parse_tolerance(float(raw))
    except ValueError:
        raise ValueError(
            f"tolerance {text!r}: expected an absolute number (0.05), a percentage of the "
            "baseline (10%) or standard deviations of the baseline samples (3sigma, 3sigma>=20%)"
        ) from None


def parse_gate(text: str) -> tuple[str, Tolerance]:
    """``peak_rss_mib:10%`` -> ('peak_rss_mib', Tolerance('relative', 0.1))."""
    name, sep, tolerance = text.partition(":")
    if not sep or not name.strip():
        raise ValueError(f"gate {text!r}: expected METRIC:TOLERANCE, e.g. peak_rss_mib:10%")
    return name.strip(), parse_tolerance(tolerance)


def parse_direction(text: str) -> Direction:
    if text not in DIRECTIONS:
        raise ValueError(f"direction {text!r}: expected one of {', '.join(DIRECTIONS)}")
    return text  # type: ignore[return-value]


@dataclasses.dataclass(frozen=True)
class MetricSpec:
    """What better means for a metric, how much it may move, and whether it travels across devices."""

    direction: Direction
    tolerance: Tolerance
    portable: bool = True  # False: time and memory, meaningless against another device class


# Wall-clock on shared CPU runners: the same tiny-opt IA3 method measured 2,160 and 637 tokens/s
# in two unchanged runs on this project's 2-core machine (load average 5). One sample says
# nothing about that noise, so below MIN_NOISE_SAMPLES a move is shown as "changed", never as a
# regression; from three samples on, 3 sigma (at least the floor: 2.5x) decides.
MIN_NOISE_SAMPLES = 3
_TIME = MetricSpec("lower", Tolerance("noise", 3.0, 1.5), portable=False)
_SPEED = MetricSpec("higher", Tolerance("noise", 3.0, 0.6), portable=False)
_MEMORY = MetricSpec("lower", Tolerance("relative", 0.10), portable=False)
_QUALITY = MetricSpec("higher", Tolerance("absolute", 0.02))

# Defaults per metric name. A fixed seed gives identical CPU numbers run to run, so loss and
# perplexity tolerances only absorb cross-machine float differences (BLAS, GPU kernels); time
# and throughput on shared runners move by tens of percent, hence noise-aware with a wide floor.
DEFAULT_METRICS: dict[str, MetricSpec] = {
    "final_loss": MetricSpec("lower", Tolerance("relative", 0.01)),
    "eval_perplexity": MetricSpec("lower", Tolerance("relative", 0.02)),
    "base_eval_perplexity": MetricSpec("none", Tolerance("relative", 0.01)),
    "init_eval_perplexity": MetricSpec("none", Tolerance("relative", 0.01)),
    "unrelated_perplexity": MetricSpec("lower", Tolerance("relative", 0.02)),
    "train_time_s": _TIME,
    "tokens_per_s": _SPEED,
    "peak_rss_mib": _MEMORY,
    "peak_cuda_mib": _MEMORY,
    "footprint_mib": MetricSpec("lower", Tolerance("relative", 0.05), portable=False),
    "trainable_params": MetricSpec("none", Tolerance("absolute", 0.0)),
    "total_params": MetricSpec("none", Tolerance("absolute", 0.0)),
}

_FALLBACKS: tuple[tuple[tuple[str, ...], MetricSpec], ...] = (
    (("per_s", "tokens/s", "throughput", "samples/s"), _SPEED),
    (("latency", "time", "seconds"), _TIME),
    (("mib", "gib", "memory", "rss", "footprint", "bytes"), _MEMORY),
    (("loss", "perplexity", "ppl", "nats"), MetricSpec("lower", Tolerance("relative", 0.02))),
    (("accuracy", "rouge", "bleu", "score", "agreement", "f1", "exact"), _QUALITY),
)


@dataclasses.dataclass(frozen=True)
class MetricSpecs:
    """Per-metric defaults with the suite's and the check's overrides on top."""

    tolerance: Mapping[str, Tolerance] = dataclasses.field(default_factory=dict)
    direction: Mapping[str, Direction] = dataclasses.field(default_factory=dict)

    @classmethod
    def from_raw(
        cls, tolerance: Mapping[str, str | float] | None = None, direction: Mapping[str, str] | None = None
    ) -> "MetricSpecs":
        """From a suite's ``{metric: '10%'}`` and ``{metric: 'higher'}``; ValueError names the bad one."""
        tolerances, directions = {}, {}
        for name, raw in (tolerance or {}).items():
            try:
                tolerances[name] = parse_tolerance(raw)
            except ValueError as exc:
                raise ValueError(f"{name}: {exc}") from None
        for name, raw in (direction or {}).items():
            try:
                directions[name] = parse_direction(raw)
            except ValueError as exc:
                raise ValueError(f"{name}: {exc}") from None
        return cls(tolerances, directions)

    def spec(self, name: str, unit: str | None = None) -> MetricSpec:
        base = DEFAULT_METRICS.get(name) or _fallback(name, unit)
        return MetricSpec(
            self.direction.get(name, base.direction),
            self.tolerance.get(name, base.tolerance),
            base.portable,
        )


def _fallback(name: str, unit: str | None) -> MetricSpec:
    text = f"{name} {unit or ''}".lower()
    if unit == "s" or name.endswith("_s") and not name.endswith("per_s"):
        return _TIME
    for needles, spec in _FALLBACKS:
        if any(needle in text for needle in needles):
            return spec
    return MetricSpec("none", Tolerance("relative", 0.05))


@dataclasses.dataclass(frozen=True)
class Samples:
    """The baseline's raw values for one metric (several when several runs were recorded)."""

    values: tuple[float, ...]

    @functools.cached_property
    def mean(self) -> float:
        finite = [v for v in self.values if math.isfinite(v)]
        if len(finite) != len(self.values):
            return self.values[-1]
        return statistics.fmean(finite) if finite else math.nan

    @functools.cached_property
    def stdev(self) -> float | None:
        if len(self.values) < 2 or not all(math.isfinite(v) for v in self.values):
            return None
        return statistics.stdev(self.values)


@dataclasses.dataclass(frozen=True)
class Comparison:
    """One metric of one method against its baseline."""

    metric: str
    unit: str | None
    direction: Direction
    tolerance: Tolerance
    status: Status
    current: float | None
    baseline: float | None
    samples: int = 0
    allowed: float | None = None
    note: str = ""

    @property
    def delta(self) -> float | None:
        if self.current is None or self.baseline is None:
            return None
        if self.current == self.baseline:  # also inf == inf
            return 0.0
        return self.current - self.baseline

    @property
    def delta_relative(self) -> float | None:
        delta = self.delta
        if delta is None or not self.baseline or not math.isfinite(self.baseline):
            return None
        return delta / abs(self.baseline)

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready, for a Measurement's details and the results file."""
        return {
            "metric": self.metric,
            "unit": self.unit,
            "direction": self.direction,
            "tolerance": str(self.tolerance),
            "status": self.status,
            "current": self.current,
            "baseline": self.baseline,
            "samples": self.samples,
            "allowed": self.allowed,
            "note": self.note,
        }

    def describe(self) -> str:
        """One line naming field, value, baseline and tolerance, e.g. for a failing check."""
        unit = f" {self.unit}" if self.unit else ""
        if self.current is None or self.baseline is None:
            return f"{self.metric}: {self.status}" + (f" ({self.note})" if self.note else "")
        change = ""
        if self.delta is not None:
            rel = self.delta_relative
            change = f" ({self.delta:+.4g}" + (f", {rel:+.1%}" if rel is not None else "") + ")"
        text = (
            f"{self.metric} = {self.current:.6g}{unit} vs baseline {self.baseline:.6g}{unit}{change}; "
            f"tolerance {self.tolerance}"
        )
        if self.allowed is not None:
            text += f" (±{self.allowed:.4g}{unit})"
        if self.direction != "none":
            text += f", {self.direction} is better"
        return text + (f"; {self.note}" if self.note else "")


def compare_metric(
    name: str,
    current: float | None,
    baseline: Sequence[float] | None,
    *,
    spec: MetricSpec,
    unit: str | None = None,
    same_device: bool = True,
) -> Comparison:
    """Compare one value with the baseline samples under ``spec``."""
    make = functools.partial(Comparison, name, unit, spec.direction, spec.tolerance)
    if not baseline:
        return make("new", current, None, note="no baseline value")
    samples = Samples(tuple(baseline))
    if current is None:
        return make("missing", None, samples.mean, len(samples.values), note="not recorded in this run")
    if not same_device and not spec.portable:
        note = "baseline is from another device class; not comparable"
        return make("not_compared", current, samples.mean, len(samples.values), note=note)
    allowed = spec.tolerance.allowed(samples)
    status = _status(current, samples.mean, allowed, spec.direction)
    note = ""
    if spec.tolerance.kind == "noise" and len(samples.values) < MIN_NOISE_SAMPLES:
        # Too few samples to know the noise: a move past the floor is shown, never judged.
        note = f"{len(samples.values)} baseline sample(s); noise-aware judging needs {MIN_NOISE_SAMPLES}"
        status = "changed" if status in ("regressed", "improved") else status
    return make(status, current, samples.mean, len(samples.values), allowed, note)


def _status(current: float, baseline: float, allowed: float, direction: Direction) -> Status:
    if math.isnan(current) or math.isnan(baseline):
        if math.isnan(current) and math.isnan(baseline):
            return "unchanged"
        if direction == "none":
            return "changed"
        return "regressed" if math.isnan(current) else "improved"
    if current == baseline:
        return "unchanged"
    worse = current - baseline if direction != "higher" else baseline - current
    slack = 1e-9 * max(abs(current), abs(baseline))  # 2.1 - 2.0 > 0.1 in binary floating point
    slack = slack if math.isfinite(slack) else 0.0
    if abs(worse) <= allowed + slack:
        return "unchanged"
    if direction == "none":
        return "changed"
    return "regressed" if worse > 0 else "improved"


def compare_metrics(
    current: Mapping[str, Mapping[str, Any]],
    baseline: Mapping[str, Mapping[str, Any]],
    *,
    specs: MetricSpecs | None = None,
    only: Sequence[str] | None = None,
    ignore: Sequence[str] = (),
    same_device: bool = True,
) -> list[Comparison]:
    """Every metric of a method record (``{name: {value, unit}}``) against a baseline entry's
    ``{name: {samples, unit}}``; metrics only in the baseline come back as ``missing``."""
    specs = specs or MetricSpecs()
    names = list(only) if only is not None else sorted(set(current) | set(baseline))
    result = []
    for name in names:
        if name in ignore:
            continue
        now, then = current.get(name) or {}, baseline.get(name) or {}
        unit = now.get("unit") or then.get("unit")
        samples = [v for v in (as_float(x) for x in then.get("samples", ())) if v is not None]
        result.append(
            compare_metric(
                name,
                as_float(now.get("value")),
                samples,
                spec=specs.spec(name, unit),
                unit=unit,
                same_device=same_device,
            )
        )
    return result


@dataclasses.dataclass(frozen=True)
class RegressionRule:
    """What ``no_regression`` holds a method to: the one comparison that both the check and the
    report run, so the page never flags a metric the check was told to ignore (issue 14)."""

    specs: MetricSpecs = dataclasses.field(default_factory=MetricSpecs)
    only: tuple[str, ...] | None = None
    ignore: tuple[str, ...] = ()

    @classmethod
    def from_params(cls, params: Mapping[str, Any] | None) -> "RegressionRule":
        """From no_regression's parameters as its record keeps them (``details["params"]``);
        unreadable ones give the defaults, as a method without the check gets."""
        params = params or {}
        try:
            specs = MetricSpecs.from_raw(params.get("tolerance"), params.get("direction"))
        except (ValueError, AttributeError):
            specs = MetricSpecs()
        only = params.get("metrics")
        return cls(specs, tuple(only) if only is not None else None, tuple(params.get("ignore") or ()))

    def compare(
        self, current: Mapping[str, Mapping[str, Any]], baseline: Mapping[str, Mapping[str, Any]], *,
        same_device: bool = True,
    ) -> list[Comparison]:
        """Every metric of either side; those the rule leaves out come back ``not_compared``
        (shown, never judged), those named in ``only`` first and in its order."""
        names = list(self.only or ()) + sorted((set(current) | set(baseline)) - set(self.only or ()))
        result = []
        for name in names:
            if name in self.ignore or (self.only is not None and name not in self.only):
                now, then = current.get(name) or {}, baseline.get(name) or {}
                why = "ignored by no_regression" if name in self.ignore else "not in no_regression's metrics"
                samples = [v for v in (as_float(x) for x in then.get("samples", ())) if v is not None]
                spec = self.specs.spec(name, now.get("unit") or then.get("unit"))
                result.append(Comparison(
                    name, now.get("unit") or then.get("unit"), spec.direction, spec.tolerance, "not_compared",
                    as_float(now.get("value")), Samples(tuple(samples)).mean if samples else None, len(samples),
                    note=why,
                ))  # fmt: skip
                continue
            result += compare_metrics(current, baseline, specs=self.specs, only=[name], same_device=same_device)
        return result

    @staticmethod
    def judged(comparisons: Sequence[Comparison]) -> list[Comparison]:
        """The comparisons that decide: not those the rule or the device left out."""
        return [c for c in comparisons if c.status != "not_compared"]

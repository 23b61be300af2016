"""pytest plugin: the HTML report, the Markdown summary and the baseline store at session end."""

from __future__ import annotations

import dataclasses
import datetime
import os
import sys
import time
import warnings
from pathlib import Path
from typing import Any, final

import pytest

from peftcheck.report.options import add_options
from peftcheck.session import output_path

__all__ = ["ReportSession"]

DEFAULT_BASELINE_DIR = "baselines"


@final
@dataclasses.dataclass
class ReportSession:
    """Reads the session's results file once the core has closed it, and publishes from it."""

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

    def _runs(self) -> list[tuple[str, list[dict[str, Any]]]]:
        from peftcheck.record import read_records

        if self.results is None or not self.results.is_file():
            return []
        if self.results.stat().st_mtime < self.started - 1:  # left over from an earlier session
            return []
        records = read_records(self.results)
        if not records or not self._ours(records[0]):
            return []
        if not any(r.get("kind") in ("method", "check") for r in records):
            return []
        return [(str(self.results), records)]

    def _ours(self, session: dict[str, Any]) -> bool:
        """The file was written by this process's session, not a concurrent or earlier one."""
        if session.get("kind") != "session":
            return False
        if "pid" in session:
            return bool(session["pid"] == os.getpid())
        try:
            started = datetime.datetime.fromisoformat(str(session.get("started"))).timestamp()
        except ValueError:
            return False
        return started >= int(self.started) - 1 and session.get("argv") == sys.argv

    def finish(self) -> None:
        runs = self._runs()
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


_SESSION = pytest.StashKey[ReportSession]()


def pytest_addoption(parser: pytest.Parser) -> None:
    add_options(parser.getgroup("peftcheck").addoption, prefix="--peftcheck-", dest_prefix="peftcheck_")


def pytest_configure(config: pytest.Config) -> None:
    if not hasattr(config, "workerinput"):  # xdist workers leave publishing to the controller
        config.stash[_SESSION] = ReportSession.from_config(config)


def pytest_report_header(config: pytest.Config) -> list[str]:
    report = config.stash.get(_SESSION, None)
    return report.header() if report is not None else []


@pytest.hookimpl(trylast=True)  # after the core plugin has closed the results file
def pytest_sessionfinish(session: pytest.Session) -> None:
    if (report := session.config.stash.get(_SESSION, None)) is not None:
        report.finish()


def pytest_terminal_summary(terminalreporter: Any, config: pytest.Config) -> None:
    if (report := config.stash.get(_SESSION, None)) is not None:
        report.summarize(terminalreporter)

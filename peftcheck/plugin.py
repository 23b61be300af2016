"""pytest plugin: collects suite YAML files and records every check; hooks only delegate."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import pytest

from peftcheck.session import BUILTIN_MARKERS, SESSION_KEY, CheckItem, Session, collect_suite


def parse_results_path(value: str) -> str:
    if not value.strip() or value.endswith(("/", "\\")):
        raise argparse.ArgumentTypeError(f"--peftcheck-results: got {value!r}, expected a file path")
    return value


def add_run_options(add: Any, prefix: str = "--peftcheck-") -> None:
    """The run options, shared by the pytest plugin and `peftcheck run`."""
    add(
        f"{prefix}results",
        dest="peftcheck_results",
        type=parse_results_path,
        default="reports/results.jsonl",
        metavar="FILE",
        help="JSON-lines results file, one record per check and per trained method; a relative "
        "FILE is under the directory pytest is run from, not the rootdir (default: reports/results.jsonl)",
    )


def pytest_addoption(parser: pytest.Parser) -> None:
    from peftcheck.artifact_cache import add_cache_option

    add_run_options(parser.getgroup("peftcheck", "peftcheck: PEFT suites").addoption)
    add_cache_option(parser.getgroup("peftcheck").addoption)  # issue 14


def pytest_configure(config: pytest.Config) -> None:
    for name, text in BUILTIN_MARKERS.items():
        config.addinivalue_line("markers", f"{name}: {text}")
    config.stash[SESSION_KEY] = Session.from_config(config)


def pytest_report_header(config: pytest.Config) -> list[str]:
    return config.stash[SESSION_KEY].header() if SESSION_KEY in config.stash else []


def pytest_collect_file(parent: pytest.Collector, file_path: Path) -> Any:
    return collect_suite(parent, file_path)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    report = yield
    if isinstance(item, CheckItem) and (report.when == "call" or (report.when == "setup" and not report.passed)):
        item.config.stash[SESSION_KEY].record_check(item, report)
    return report


def pytest_sessionfinish(session: pytest.Session) -> None:
    if SESSION_KEY in session.config.stash:
        session.config.stash[SESSION_KEY].finish()


@pytest.hookimpl(tryfirst=True)  # before the report plugin's section, which reads that file
def pytest_terminal_summary(terminalreporter: Any, config: pytest.Config) -> None:
    if SESSION_KEY in config.stash:
        config.stash[SESSION_KEY].summarize(terminalreporter)

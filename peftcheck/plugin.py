"""pytest plugin: collects suite YAML files and records every check; hooks only delegate."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import pytest

from peftcheck.session import BUILTIN_MARKERS, SESSION_KEY, CheckItem, Session, collect_suite
from peftcheck.shard import parse_shard
from peftcheck.xdist import XdistPlugin, configure_worker


def parse_results_path(value: str) -> str:
    if not value.strip() or value.endswith(("/", "\\")):
        raise argparse.ArgumentTypeError(f"got {value!r}, expected a file path")
    return value


def add_run_options(add: Any, prefix: str = "--peftcheck-", results_default: str | None = "reports/results.jsonl") -> None:
    """The run options, shared by the pytest plugin and `peftcheck run` (prefix ``--``, which
    hands only what was given on to pytest: ``results_default`` None)."""
    from peftcheck.artifact_cache import add_cache_option

    add(
        f"{prefix}results",
        dest="peftcheck_results",
        type=parse_results_path,
        default=results_default,
        metavar="FILE",
        help="JSON-lines results file, one record per check and per trained method; a relative "
        "FILE is under the directory pytest is run from, not the rootdir (default: reports/results.jsonl)",
    )
    add_cache_option(add, prefix)  # issue 14


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("peftcheck", "peftcheck: PEFT suites")
    add_run_options(group.addoption)
    group.addoption(
        "--peftcheck-shard", dest="peftcheck_shard", type=parse_shard, default=None, metavar="I/N",
        help="run shard I of N (1 <= I <= N): whole method clusters, balanced by the baseline's "
        "train times; merge the shards' results with `peftcheck report shard*.jsonl` (default: all)",
    )  # fmt: skip


def pytest_configure(config: pytest.Config) -> None:
    for name, text in BUILTIN_MARKERS.items():
        config.addinivalue_line("markers", f"{name}: {text}")
    configure_worker(config)  # an xdist worker's GPU, before anything initialises CUDA
    config.stash[SESSION_KEY] = Session.from_config(config)
    config.pluginmanager.register(config.stash[SESSION_KEY].reports, "peftcheck-records")
    if config.pluginmanager.hasplugin("xdist") and config.getoption("numprocesses", None) and not hasattr(config, "workerinput"):
        config.stash[SESSION_KEY].xdist = XdistPlugin(config)
        config.pluginmanager.register(config.stash[SESSION_KEY].xdist, "peftcheck-xdist")


@pytest.hookimpl(trylast=True)  # after other plugins reorder (no_regression must stay last)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    config.stash[SESSION_KEY].arrange(items)


def pytest_report_header(config: pytest.Config) -> list[str]:
    return config.stash[SESSION_KEY].header() if SESSION_KEY in config.stash else []


def pytest_collect_file(parent: pytest.Collector, file_path: Path) -> Any:
    return collect_suite(parent, file_path)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    report = yield
    if isinstance(item, CheckItem) and report.failed and str(report.longrepr).startswith("[XPASS(strict)]"):
        report.longrepr = f"{report.longrepr}\n{item.xfail.closing()}"  # issue 24: the version to close at
    if isinstance(item, CheckItem) and (report.when == "call" or (report.when == "setup" and not report.passed)):
        item.config.stash[SESSION_KEY].record_check(item, report)
    return report


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if SESSION_KEY in session.config.stash:
        session.config.stash[SESSION_KEY].finish(interrupted=exitstatus == pytest.ExitCode.INTERRUPTED)


def pytest_terminal_summary(terminalreporter: Any, config: pytest.Config) -> None:
    if SESSION_KEY in config.stash:
        config.stash[SESSION_KEY].summarize(terminalreporter)

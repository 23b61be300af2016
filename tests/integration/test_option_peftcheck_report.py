"""--peftcheck-report and --peftcheck-summary, from a session's results file (no training here)."""

from __future__ import annotations

import datetime
import json
import os
import sys
from pathlib import Path

import pytest

pytest_plugins = ["pytester"]

FIXTURES = Path(__file__).parents[2] / "fixtures" / "results"


@pytest.fixture
def session_results(pytester: pytest.Pytester) -> Path:
    """A directory whose session 'measured' the fixture run: results in the default place."""
    results = pytester.path / "reports" / "results.jsonl"
    results.parent.mkdir()
    lines = (FIXTURES / "regressed.jsonl").read_text(encoding="utf-8").splitlines()
    session = json.loads(lines[0])  # as the core writes it for this (in-process) session
    session.update(argv=sys.argv, started=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"))
    results.write_text("\n".join([json.dumps(session), *lines[1:]]) + "\n", encoding="utf-8")
    pytester.makepyfile(test_plain="def test_plain():\n    pass\n")
    return results


def test_report_and_summary_are_written(pytester: pytest.Pytester, session_results: Path) -> None:
    result = pytester.runpytest(
        "--peftcheck-report", "out/index.html", "--peftcheck-summary", "out/summary.md", "--junitxml", "junit.xml"
    )
    result.assert_outcomes(passed=1)
    page = (pytester.path / "out" / "index.html").read_text(encoding="utf-8")
    assert 'class="matrix"' in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    summary = (pytester.path / "out" / "summary.md").read_text(encoding="utf-8")
    assert summary.startswith("### ❌ peftcheck: failed")
    assert (pytester.path / "junit.xml").is_file()  # pytest's own JUnit XML keeps working
    result.stdout.fnmatch_lines([
        "*- peftcheck report -*",
        "baseline */baselines: 18 without a baseline value",
        "  quotes: no baseline yet",
        f"report: {pytester.path / 'out' / 'index.html'}",
        f"summary: {pytester.path / 'out' / 'summary.md'}",
    ])


def test_relative_paths_are_under_the_invocation_dir(pytester: pytest.Pytester, session_results: Path) -> None:
    pytester.makeini("[pytest]\n")
    sub = pytester.mkdir("sub")
    os.chdir(sub)  # where the results file is looked for too (issue 17), not the rootdir
    pytester.runpytest("--rootdir", str(pytester.path), str(pytester.path), "--peftcheck-report", "r.html")
    assert (sub / "r.html").is_file() and not (pytester.path / "r.html").exists()


def test_results_left_from_an_earlier_session_are_not_reported(pytester: pytest.Pytester, session_results: Path) -> None:
    os.utime(session_results, (1_000_000_000, 1_000_000_000))
    result = pytester.runpytest("--peftcheck-report", "r.html", "-W", "default")
    result.stdout.fnmatch_lines(["*peftcheck: no results in *results.jsonl; writing an empty report*"])
    assert "No suite items were recorded" in (pytester.path / "r.html").read_text(encoding="utf-8")


def test_results_of_another_session_are_not_reported(pytester: pytest.Pytester, session_results: Path) -> None:
    lines = session_results.read_text(encoding="utf-8").splitlines()
    session = json.loads(lines[0])
    session["argv"] = ["pytest", "suites/", "-p", "no:peftcheck_report"]  # a neighbour's concurrent run
    session_results.write_text("\n".join([json.dumps(session), *lines[1:]]) + "\n", encoding="utf-8")
    result = pytester.runpytest("--peftcheck-report", "r.html", "-W", "default")
    result.stdout.fnmatch_lines(["*peftcheck: no results in *results.jsonl; writing an empty report*"])


def test_without_options_nothing_is_written(pytester: pytest.Pytester, session_results: Path) -> None:
    result = pytester.runpytest()
    result.assert_outcomes(passed=1)
    assert sorted(p.name for p in pytester.path.iterdir() if not p.name.startswith((".", "__"))) == [
        "reports", "test_plain.py"]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--peftcheck-report", "reports/"], "*--peftcheck-report: *'reports/' is a directory*"),
        (["--peftcheck-summary", ""], "*--peftcheck-summary: '': expected a file path*"),
    ],
)
def test_bad_values_are_quoted(pytester: pytest.Pytester, argv: list[str], message: str) -> None:
    result = pytester.runpytest(*argv)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([message])


def test_help_lists_the_options_in_the_peftcheck_group(pytester: pytest.Pytester) -> None:
    result = pytester.runpytest("--help")
    result.stdout.fnmatch_lines([
        "peftcheck*",
        "*--peftcheck-report=FILE*",
        "*--peftcheck-summary=FILE*",
        "*--peftcheck-baseline=DIR*",
        "*--peftcheck-update-baseline={all,missing}*",
    ])

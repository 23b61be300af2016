"""--peftcheck-report and --peftcheck-summary, from a session's results file (no training here)."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

pytest_plugins = ["pytester"]

FIXTURES = Path(__file__).parents[2] / "fixtures" / "results"


@pytest.fixture
def session_results(pytester: pytest.Pytester) -> Path:
    """A directory whose session 'measured' the fixture run: results in the default place."""
    results = pytester.path / "reports" / "results.jsonl"
    results.parent.mkdir()
    shutil.copy(FIXTURES / "regressed.jsonl", results)  # what an earlier session left there
    pytester.makeconftest(REPLAY.format(path=str(FIXTURES / "regressed.jsonl")))
    pytester.makepyfile(test_plain="def test_plain():\n    pass\n")
    return results


REPLAY = """
import json, pytest
from peftcheck.session import SESSION_KEY

@pytest.hookimpl(tryfirst=True)
def pytest_sessionfinish(session):  # this session 'measured' the fixture run (issue 14)
    with open({path!r}, encoding="utf-8") as handle:
        session.config.stash[SESSION_KEY].add_records([json.loads(line) for line in handle if line.strip()])
"""


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
    # the file holds a full run, even this process's pid; a session that measured nothing reports
    # nothing and leaves it alone (issue 14: the report is built from the Session's records)
    (pytester.path / "conftest.py").unlink()
    lines = session_results.read_text(encoding="utf-8").splitlines()
    session_results.write_text("\n".join([json.dumps({**json.loads(lines[0]), "pid": os.getpid()}), *lines[1:]]) + "\n")
    before = session_results.read_text(encoding="utf-8")
    result = pytester.runpytest("--peftcheck-report", "r.html", "-W", "default")
    result.stdout.fnmatch_lines(["*peftcheck: no results in *results.jsonl; writing an empty report*"])
    assert "No suite items were recorded" in (pytester.path / "r.html").read_text(encoding="utf-8")
    assert session_results.read_text(encoding="utf-8") == before


def test_without_options_nothing_is_written(pytester: pytest.Pytester, session_results: Path) -> None:
    result = pytester.runpytest()
    result.assert_outcomes(passed=1)
    assert sorted(p.name for p in pytester.path.iterdir() if not p.name.startswith((".", "__"))) == [
        "conftest.py", "reports", "test_plain.py"]


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

"""--peftcheck-results: a relative path is under the directory pytest runs from (issue 17)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from helpers import tiny_suite

pytest_plugins = ["pytester"]

LORA = {"peft": "LoraConfig", "r": 2, "target_modules": ["q_proj", "v_proj"]}


@pytest.fixture
def project(pytester: pytest.Pytester) -> Path:
    """A project with its own ini (so its folder is the rootdir) and one tiny suite."""
    root = pytester.mkdir("project")
    (root / "pytest.ini").write_text("[pytest]\n", encoding="utf-8")
    suite = tiny_suite({"lora": LORA}, expect={"trainable_ratio": {"max": 0.5}}, model="tiny-llama")
    suite["train"]["max_steps"] = 2
    (root / "tiny.yaml").write_text(yaml.safe_dump(suite, sort_keys=False), encoding="utf-8")
    return root


@pytest.fixture
def elsewhere(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Where the user runs pytest from: not the project."""
    work = pytester.mkdir("work")
    monkeypatch.chdir(work)
    return work


def test_results_and_summary_land_where_pytest_runs_baselines_stay_in_the_project(
    pytester: pytest.Pytester, project: Path, elsewhere: Path
) -> None:
    result = pytester.runpytest(str(project / "tiny.yaml"), "--peftcheck-summary", "out/summary.md")
    result.assert_outcomes(passed=1)
    results = elsewhere / "reports" / "results.jsonl"
    assert results.is_file() and not (project / "reports").exists()
    assert (elsewhere / "out" / "summary.md").is_file() and not (project / "out").exists()
    result.stdout.fnmatch_lines([f"rootdir: {project}*"])
    # said at the start and again at the end
    result.stdout.fnmatch_lines([f"peftcheck: results to {results}", f"peftcheck: results written to {results}"])
    result.stdout.fnmatch_lines([f"peftcheck: baselines in {project / 'baselines'} (under the rootdir)"])
    result.stdout.fnmatch_lines([f"peftcheck: summary to {elsewhere / 'out' / 'summary.md'}"])


def test_the_header_names_the_results_file_quiet_with_q(
    pytester: pytest.Pytester, project: Path, elsewhere: Path
) -> None:
    suite = str(project / "tiny.yaml")
    result = pytester.runpytest(suite, "--collect-only", "--peftcheck-results", "r.jsonl")
    result.stdout.fnmatch_lines([f"peftcheck: results to {elsewhere / 'r.jsonl'}"])
    absolute = pytester.path / "ci" / "results.jsonl"
    result = pytester.runpytest(suite, "--collect-only", "--peftcheck-results", str(absolute))
    result.stdout.fnmatch_lines([f"peftcheck: results to {absolute}"])
    result = pytester.runpytest(suite, "--collect-only", "-q")
    assert "peftcheck: results to" not in result.stdout.str() and "peftcheck: baselines" not in result.stdout.str()


def test_help_says_where_a_relative_path_goes(pytester: pytest.Pytester) -> None:
    text = re.sub(r"\s+", " ", pytester.runpytest("--help").stdout.str())
    assert "a relative FILE is under the directory pytest is run from, not the rootdir" in text
    assert "baselines/ under the rootdir; a relative DIR is under the rootdir too" in text

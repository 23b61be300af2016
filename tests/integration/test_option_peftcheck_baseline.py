"""--peftcheck-baseline and --peftcheck-update-baseline, and the planted regression end to end."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest_plugins = ["pytester"]

ROOT = Path(__file__).parents[2]
FIXTURES = ROOT / "fixtures" / "results"
KEY = "cpu-torch2.13.0-transformers5.24.0-peft0.21.2-bnbnone"  # the environment of the fixture runs


REPLAY = """
import json, pytest
from peftcheck.session import SESSION_KEY

@pytest.hookimpl(tryfirst=True)
def pytest_sessionfinish(session):
    with open({path!r}, encoding="utf-8") as handle:
        session.config.stash[SESSION_KEY].add_records([json.loads(line) for line in handle if line.strip()])
"""


def session_measured(pytester: pytest.Pytester, run: str) -> None:
    """As if this session's items had measured the fixture ``run`` (issue 14: the Session holds
    the records; nothing is read back from a results file)."""
    pytester.makeconftest(REPLAY.format(path=str(FIXTURES / f"{run}.jsonl")))
    pytester.makepyfile(test_plain="def test_plain():\n    pass\n")


def test_missing_writes_under_the_rootdir_then_keeps(pytester: pytest.Pytester) -> None:
    session_measured(pytester, "baseline")
    result = pytester.runpytest("--peftcheck-update-baseline", "missing")
    path = pytester.path / "baselines" / KEY / "quotes.json"
    result.stdout.fnmatch_lines([f"baseline update: {path}: lora added", f"baseline update: {path}: prompt added"])
    written = path.read_text(encoding="utf-8")
    session_measured(pytester, "regressed")
    result = pytester.runpytest("--peftcheck-update-baseline", "missing")
    result.stdout.fnmatch_lines([f"baseline update: {path}: lora kept (already has a baseline)"])
    assert path.read_text(encoding="utf-8") == written


def test_all_replaces_and_says_what_moved(pytester: pytest.Pytester) -> None:
    session_measured(pytester, "baseline")
    pytester.runpytest("--peftcheck-update-baseline", "missing")
    session_measured(pytester, "regressed")
    result = pytester.runpytest("--peftcheck-update-baseline", "all", "--peftcheck-report", "r.html")
    result.stdout.fnmatch_lines(["baseline update: *quotes.json: lora replaced (*final_loss 2.95→3.434 regressed*"])
    page = (pytester.path / "r.html").read_text(encoding="utf-8")
    assert 'class="status-regressed' in page  # compared before the store was rewritten
    assert "Baseline updates written after this comparison" in page


def test_a_store_elsewhere(pytester: pytest.Pytester) -> None:
    session_measured(pytester, "baseline")
    pytester.runpytest("--peftcheck-baseline", "ci/known-good", "--peftcheck-update-baseline", "missing")
    assert (pytester.path / "ci" / "known-good" / KEY / "tiny.json").is_file()
    assert not (pytester.path / "baselines").exists()


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--peftcheck-update-baseline", "some"], "*--peftcheck-update-baseline: 'some': expected 'missing'*"),
        (["--peftcheck-baseline", "test_plain.py"], "*--peftcheck-baseline: 'test_plain.py' is a file*"),
    ],
)
def test_bad_values_are_quoted(pytester: pytest.Pytester, argv: list[str], message: str) -> None:
    pytester.makepyfile(test_plain="def test_plain():\n    pass\n")
    result = pytester.runpytest(*argv)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([message])


SUITE = """\
suite: tiny-regression
description: the planted-regression check of the report (issue 5)
model: tiny-opt
data:
  dataset: {corpus}
  split: "train[:48]"
  eval_split: "train[-16:]"
  text_field: text
  max_length: 32
train:
  max_steps: 12
  per_device_train_batch_size: 8
  seed: 0
methods:
  lora:
    peft: LoraConfig
    r: 8
    lora_alpha: 32
    target_modules: [q_proj, v_proj]
    train: {{learning_rate: {lr}}}
expect:
  loss_decrease: {{min_relative: 0.0}}
  no_regression: {{}}
"""


def test_a_planted_regression_is_flagged_and_an_unchanged_rerun_is_not(pytester: pytest.Pytester) -> None:
    pytest.importorskip("torch")
    corpus = ROOT / "fixtures" / "tiny_corpus.jsonl"

    def run(lr: str, *flags: str) -> pytest.RunResult:
        pytester.path.joinpath("tiny.yaml").write_text(SUITE.format(corpus=corpus, lr=lr), encoding="utf-8")
        # a subprocess: transformers' lazy modules do not survive pytester's sys.modules snapshots
        return pytester.runpytest_subprocess("tiny.yaml", "-p", "no:cacheprovider", "-rs", "--peftcheck-report", "r.html",
                                  "--peftcheck-summary", "s.md", *flags)

    first = run("2.0e-2", "--peftcheck-update-baseline", "missing")
    first.assert_outcomes(passed=1, skipped=1)
    first.stdout.fnmatch_lines(["*no baseline for suite 'tiny-regression'*--peftcheck-update-baseline missing*"])
    assert list((pytester.path / "baselines").glob("*/tiny-regression.json"))

    rerun = run("2.0e-2")
    rerun.assert_outcomes(passed=2)
    assert "REGRESSION" not in rerun.stdout.str()
    assert 'data-status="passed"' in (pytester.path / "r.html").read_text(encoding="utf-8")
    assert (pytester.path / "s.md").read_text(encoding="utf-8").startswith("### ✅ peftcheck: passed")

    planted = run("0.0")
    planted.assert_outcomes(passed=1, failed=1)
    planted.stdout.fnmatch_lines([
        "*tiny-regression::lora::no_regression*",
        "*regression(s) against the baseline*",
        "*final_loss = * nats vs baseline * nats*tolerance 1%*",
        "REGRESSION tiny-regression::lora::final_loss:*",
    ])
    page = (pytester.path / "r.html").read_text(encoding="utf-8")
    assert 'data-status="failed"' in page and 'data-metric="final_loss"' in page
    assert '<tr class="status-regressed problem-row" data-metric="final_loss">' in page
    summary = (pytester.path / "s.md").read_text(encoding="utf-8")
    assert "regression: final_loss" in summary
    report = [json.loads(line) for line in (pytester.path / "reports" / "results.jsonl").open(encoding="utf-8")]
    check = next(r for r in report if r.get("check") == "no_regression")
    assert check["outcome"] == "failed" and check["value"] >= 1

"""``peftcheck report RESULTS... -o FILE`` (peftcheck.report.cli)."""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import pytest

from peftcheck.report import cli

FIXTURES = Path(__file__).parents[2] / "fixtures" / "results"


def main(*argv: str) -> int:
    parser = argparse.ArgumentParser(prog="peftcheck")
    cli.add_parser(parser.add_subparsers())
    args = parser.parse_args(["report", *argv])
    return args.func(args)


@pytest.fixture
def results(tmp_path: Path) -> dict[str, str]:
    for name in ("baseline", "rerun", "regressed"):
        shutil.copy(FIXTURES / f"{name}.jsonl", tmp_path / f"{name}.jsonl")
    return {name: str(tmp_path / f"{name}.jsonl") for name in ("baseline", "rerun", "regressed")}


def test_record_then_report_a_rerun_and_a_regression(results: dict[str, str], tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    store = str(tmp_path / "baselines")
    assert main(results["baseline"], "--baseline", store, "--update-baseline", "missing") == 0
    assert "quotes.json: lora added" in capsys.readouterr().out
    assert main(results["rerun"], "--baseline", store, "-o", str(tmp_path / "rerun.html")) == 0
    out = capsys.readouterr().out
    assert "REGRESSION" not in out and "Nothing regressed" in out
    summary = tmp_path / "pr.md"
    assert main(results["regressed"], "--baseline", store, "-o", str(tmp_path / "r.html"), "--summary", str(summary)) == 1
    out = capsys.readouterr().out
    assert "REGRESSION quotes::lora::final_loss" in out
    assert "regression(s)" in summary.read_text(encoding="utf-8")
    assert "&lt;script&gt;" in (tmp_path / "r.html").read_text(encoding="utf-8")


def test_several_results_files_give_noise_samples(results: dict[str, str], tmp_path: Path) -> None:
    store = tmp_path / "baselines"
    assert main(results["baseline"], results["rerun"], "--baseline", str(store), "--update-baseline", "all") == 0
    data = json.loads(next(store.rglob("quotes.json")).read_text(encoding="utf-8"))
    assert data["methods"]["lora"]["metrics"]["train_time_s"]["samples"] == [12.5, 13.375]


def test_the_default_store_is_baselines_in_the_current_directory(results: dict[str, str], tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert main(results["baseline"], "--update-baseline", "missing") == 0
    assert list((tmp_path / "baselines").rglob("*.json"))


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["missing.jsonl", "-o", "r.html"], "'missing.jsonl': no such results file"),
        (["{baseline}", "--update-baseline", "some"], "'some': expected 'missing'"),
        (["{baseline}", "-o", "{dir}"], "is a directory"),
    ],
)
def test_bad_arguments_quote_the_input(argv: list[str], message: str, results: dict[str, str], tmp_path: Path,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    argv = [a.format(baseline=results["baseline"], dir=tmp_path) for a in argv]
    with pytest.raises(SystemExit) as exit_info:
        main(*argv)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_nothing_to_write_is_a_usage_error(results: dict[str, str], capsys: pytest.CaptureFixture[str]) -> None:
    assert main(results["baseline"]) == 2
    assert "nothing to write" in capsys.readouterr().err

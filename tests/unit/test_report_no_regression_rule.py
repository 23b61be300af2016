"""The report and no_regression run one comparison (issue 14): what the check ignores, the page
does not flag, and `peftcheck report` does not exit 1 over it."""

from __future__ import annotations

import types
from pathlib import Path
from typing import Any

import pytest

from peftcheck.baseline import BaselineStore, collect_entries
from peftcheck.checks.regression import NoRegressionParams, no_regression
from peftcheck.report.model import build_report

ENV = {"python": "3.11.7", "device": "cpu", "versions": {"torch": "2.13.0", "transformers": "5.24.0", "peft": "0.21.2"}}


def method(loss: float, ppl: float) -> dict[str, Any]:
    return {"kind": "method", "suite": "tiny", "suite_file": "tiny.yaml", "method": "lora", "status": "trained",
            "fingerprint": "f", "env": ENV, "metrics": {"final_loss": {"value": loss, "unit": "nats"},
                                                         "eval_perplexity": {"value": ppl, "unit": "ppl"}}}


def check_and_report(tmp_path: Path, params: dict[str, Any]) -> tuple[Any, Any]:
    """no_regression on a run whose final_loss regressed by 50%, and the report of that run."""
    store = BaselineStore(tmp_path / "baselines")
    store.update(collect_entries([{"kind": "session", "env": ENV}, method(2.0, 10.0)]), "missing")
    current = method(3.0, 10.0)
    ctx = types.SimpleNamespace(
        suite=types.SimpleNamespace(spec=types.SimpleNamespace(suite="tiny")), method="lora",
        method_record=lambda: current, option=lambda name: str(store.root), env=lambda: ENV,
    )  # fmt: skip
    measurement = no_regression(ctx, NoRegressionParams.model_validate(params))  # type: ignore[arg-type]
    check = {"kind": "check", "suite": "tiny", "suite_file": "tiny.yaml", "method": "lora", "check": "no_regression",
             "nodeid": "tiny.yaml::tiny::lora::no_regression", "outcome": "passed" if measurement.passed else "failed",
             "message": measurement.message, "details": measurement.details, "value": measurement.value}
    report = build_report([("r.jsonl", [{"kind": "session", "env": ENV}, current, check])], store=store)
    return measurement, report


@pytest.mark.parametrize("params", [{"ignore": ["final_loss"]}, {"metrics": ["eval_perplexity"]}])
def test_what_the_check_leaves_out_the_report_does_not_flag(tmp_path: Path, params: dict[str, Any]) -> None:
    measurement, report = check_and_report(tmp_path, params)
    assert measurement.passed, measurement.message
    assert report.regressions == [] and report.status == "passed"
    loss = report.suites[0].methods[0].metric("final_loss")
    assert loss is not None and loss.status == "not_compared" and "no_regression" in loss.note  # shown, not judged


def test_without_ignore_both_flag_it(tmp_path: Path) -> None:
    measurement, report = check_and_report(tmp_path, {})
    assert not measurement.passed and "final_loss" in measurement.message
    assert [p.what for p in report.regressions] == ["final_loss"] and report.status == "failed"


def _timed(**extra: Any) -> dict[str, Any]:
    record = method(2.0, 10.0)
    record["metrics"]["train_time_s"] = {"value": 30.0, "unit": "s"}
    return {**record, **extra}


def _check_train_time(tmp_path: Path, current: dict[str, Any]) -> Any:
    store = BaselineStore(tmp_path / "baselines")
    store.update(collect_entries([{"kind": "session", "env": ENV}, _timed()]), "missing")
    ctx = types.SimpleNamespace(
        suite=types.SimpleNamespace(spec=types.SimpleNamespace(suite="tiny")), method="lora",
        method_record=lambda: current, option=lambda name: str(store.root), env=lambda: ENV,
    )  # fmt: skip
    return no_regression(ctx, NoRegressionParams.model_validate({"metrics": ["train_time_s"]}))  # type: ignore[arg-type]


def test_a_time_not_measured_because_the_method_came_from_the_cache_is_not_applicable(tmp_path: Path) -> None:
    from peftcheck.checks.registry import NotApplicable

    cached = method(2.0, 10.0) | {"from_cache": True}  # a hit leaves time and speed out (issue 14)
    with pytest.raises(NotApplicable, match=r"artifact cache.*\['train_time_s'\].*--peftcheck-cache write"):
        _check_train_time(tmp_path, cached)


def test_a_time_missing_from_a_trained_run_still_fails(tmp_path: Path) -> None:
    measurement = _check_train_time(tmp_path / "trained", method(2.0, 10.0) | {"from_cache": False})
    assert not measurement.passed and "train_time_s: named in `metrics` but not recorded" in measurement.message
    assert _check_train_time(tmp_path / "timed", _timed(from_cache=False)).passed

"""The report model (peftcheck.report.model): results records and baselines gathered for renderers."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest

from peftcheck.baseline import BaselineStore, collect_entries
from peftcheck.record import read_records
from peftcheck.report import build_report

FIXTURES = Path(__file__).parents[2] / "fixtures" / "results"


def records(name: str) -> list[dict[str, Any]]:
    return read_records(FIXTURES / f"{name}.jsonl")


@pytest.fixture
def store(tmp_path: Path) -> BaselineStore:
    store = BaselineStore(tmp_path / "baselines")
    store.update(collect_entries(records("baseline")), "missing")
    return store


def test_an_unchanged_rerun_flags_nothing(store: BaselineStore) -> None:
    report = build_report([("rerun", records("rerun"))], store=store)
    assert report.status == "passed"
    assert report.regressions == [] and report.failures == []
    statuses = {c.status for s in report.suites for m in s.methods for c in m.metrics}
    assert statuses == {"unchanged"}
    assert report.hint == "Nothing regressed against the baseline."


def test_the_planted_regression_comes_first_and_names_the_metrics(store: BaselineStore) -> None:
    report = build_report([("regressed", records("regressed"))], store=store)
    assert report.status == "failed"
    metric = {(p.suite, p.method, p.what) for p in report.regressions if p.kind == "regression"}
    assert {("quotes", "lora", "final_loss"), ("quotes", "lora", "eval_perplexity"),
            ("tiny", "lora", "final_loss")} <= metric
    kinds = {p.kind for p in report.regressions}
    assert kinds == {"regression", "newly failing", "training failed"}
    assert {(p.suite, p.method, p.what) for p in report.failures} == {
        ("quotes", "lora", "no_regression"), ("quotes", "prompt", "no_regression"),
        ("tiny", "lora", "no_regression"), ("tiny", "ia3", "no_regression")}
    assert "--peftcheck-update-baseline all" in report.hint


def test_counts_and_outcomes(store: BaselineStore) -> None:
    report = build_report([("regressed", records("regressed"))], store=store)
    assert (report.counts.passed, report.counts.failed, report.counts.error) == (5, 10, 4)
    assert (report.counts.skipped, report.counts.xfailed) == (1, 1)
    quotes = report.suites[0]
    assert quotes.checks[:3] == ["trainable_ratio", "loss_decrease", "eval_perplexity"]
    prompt = quotes.methods[1]
    assert prompt.cells["generation"].outcome == "xfailed"
    assert "peft#1234" in (prompt.cells["generation"].xfail_reason or "")
    assert prompt.cells["merge_equivalence"].outcome == "skipped"
    assert quotes.methods[0].cells["loss_decrease"].newly_failing


def test_loss_curves_carry_the_baseline_curve(store: BaselineStore) -> None:
    report = build_report([("regressed", records("regressed"))], store=store)
    lora = report.suites[0].methods[0]
    assert len(lora.loss_curve) == 10 and lora.baseline_curve is not None and len(lora.baseline_curve) == 10
    assert lora.baseline_curve[-1] == (10.0, 2.95)
    assert lora.fingerprint != lora.baseline_fingerprint


def test_a_failed_training_with_a_baseline_is_a_regression(store: BaselineStore) -> None:
    report = build_report([("regressed", records("regressed"))], store=store)
    ia3 = report.suites[1].methods[1]
    assert ia3.status == "error" and "RuntimeError" in (ia3.error or "")
    assert {c.status for c in ia3.metrics} == {"missing"}
    assert any(p.kind == "training failed" and p.method == "ia3" for p in report.regressions)


def test_without_a_store_values_stand_alone() -> None:
    report = build_report([("regressed", records("regressed"))])
    assert report.baseline_root is None
    assert {c.status for s in report.suites for m in s.methods for c in m.metrics} <= {"new"}
    assert all(p.kind != "regression" for p in report.regressions)


def test_a_nearest_baseline_is_named(store: BaselineStore) -> None:
    newer = copy.deepcopy(records("rerun"))
    for record in newer:
        if "env" in record:
            record["env"]["versions"]["peft"] = "0.22.0"
    report = build_report([("newer", newer)], store=store)
    match = report.suites[0].baseline
    assert match is not None and not match.exact
    assert "peft 0.22.0 here, 0.21.2 in the baseline" in match.note


def test_suites_without_a_baseline_get_the_hint(tmp_path: Path) -> None:
    report = build_report([("rerun", records("rerun"))], store=BaselineStore(tmp_path))
    assert all(s.baseline is None for s in report.suites)
    assert "--peftcheck-update-baseline missing" in report.hint


def test_the_report_uses_the_no_regression_items_tolerances(store: BaselineStore) -> None:
    loose = copy.deepcopy(records("regressed"))
    for record in loose:
        if record.get("check") == "no_regression":
            record["details"] = {"params": {"tolerance": {"final_loss": 5, "eval_perplexity": "200%"}}}
    report = build_report([("loose", loose)], store=store)
    assert all(p.kind != "regression" for p in report.regressions)


def test_several_runs_are_kept_apart(store: BaselineStore) -> None:
    report = build_report([("a", records("rerun")), ("b", records("regressed"))], store=store)
    assert [s.title for s in report.suites] == ["quotes (run 1)", "tiny (run 1)", "quotes (run 2)", "tiny (run 2)"]
    assert len({s.anchor for s in report.suites}) == 4
    assert {p.suite for p in report.regressions} == {"quotes (run 2)", "tiny (run 2)"}


def test_empty_results() -> None:
    report = build_report([("empty", [{"kind": "session", "env": {}}])])
    assert report.status == "empty" and report.suites == []

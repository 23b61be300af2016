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


def timed_run() -> list[dict[str, Any]]:
    """Hand-written records: lora with its preparation, ia3 from an older file without it, vera's
    preparation longer than its items, and a second suite of short items."""

    def method(name: str, suite: str = "s", **times: float) -> dict[str, Any]:
        return {"kind": "method", "suite": suite, "method": name, "status": "trained", "metrics": {}, **times}

    def check(method: str, check: str, duration: Any, suite: str = "s", outcome: str = "passed") -> dict[str, Any]:
        return {"kind": "check", "suite": suite, "method": method, "check": check, "outcome": outcome,
                "nodeid": f"{suite}.yaml::{suite}::{method}::{check}", "duration_s": duration}

    return [
        {"kind": "session", "env": {}},
        check("lora", "a", 190.2), check("lora", "b", 4.2, outcome="failed"), check("lora", "c", 3.0),
        check("ia3", "a", 8.0), check("ia3", "b", 1.5), check("ia3", "c", "nan"), check("ia3", "d", None),
        check("ia3", "e", "inf"), check("ia3", "f", -1.0),
        check("vera", "a", 12.0),
        *(check("lora", f"short{i}", 0.25, suite="t") for i in range(5)),
        method("lora", prepare_time_s=187.0, train_time_s=150.0),
        method("ia3", train_time_s=5.0),
        method("vera", prepare_time_s=20.0, train_time_s=None),
        method("lora", suite="t", prepare_time_s=0.5, train_time_s=0.25),
    ]


def test_method_times_split_the_preparation_from_the_checks() -> None:
    suite = build_report([("timed", timed_run())]).suites[0]
    lora, ia3, vera = (m.timing for m in suite.methods)
    assert (lora.prepare_s, lora.train_s) == (187.0, 150.0)
    assert lora.total_s == pytest.approx(197.4) and lora.checks_s == pytest.approx(10.4)  # 197.4 - 187
    # an older file: no preparation, so the checks cannot be told apart from it; NaN, inf, None, -1 are no time
    assert (ia3.prepare_s, ia3.train_s, ia3.checks_s, ia3.total_s) == (None, 5.0, None, 9.5)
    assert (vera.prepare_s, vera.train_s, vera.checks_s, vera.total_s) == (20.0, None, 0.0, 12.0)  # never below 0


def test_suite_times_sum_what_the_methods_know() -> None:
    suite = build_report([("timed", timed_run())]).suites[0]
    timing = suite.timing
    assert timing.total_s == pytest.approx(197.4 + 9.5 + 12.0)
    assert (timing.prepare_s, timing.train_s) == (207.0, 155.0)
    assert timing.checks_s == pytest.approx(10.4)
    assert timing.slowest is not None and timing.slowest.method == "lora"
    assert timing.share(suite.methods[1].timing) == pytest.approx(9.5 / 218.9)


def test_a_suite_without_durations_has_no_slowest_method() -> None:
    run = [{**r, "duration_s": None} if r["kind"] == "check" else r for r in timed_run()]
    suite = build_report([("untimed", run)]).suites[0]
    assert suite.timing.total_s == 0 and suite.timing.slowest is None
    assert suite.timing.share(suite.methods[0].timing) is None


def test_the_slowest_items_come_longest_first() -> None:
    report = build_report([("timed", timed_run())])
    assert [(i.nodeid, i.seconds, i.outcome) for i in report.slowest[:4]] == [
        ("s.yaml::s::lora::a", 190.2, "passed"), ("s.yaml::s::vera::a", 12.0, "passed"),
        ("s.yaml::s::ia3::a", 8.0, "passed"), ("s.yaml::s::lora::b", 4.2, "failed")]
    assert len(report.slowest) == 10  # of 11 timed items
    # equal times keep the run's order
    assert [i.nodeid for i in report.slowest[-4:]] == [f"t.yaml::t::lora::short{i}" for i in range(4)]
    assert report.slowest[0].anchor == report.suites[0].methods[0].cells["a"].anchor
    assert {i.run for i in report.slowest} == {None}
    several = build_report([("a", timed_run()), ("b", timed_run())])
    assert [i.run for i in several.slowest[:2]] == ["run 1", "run 2"]


def test_a_journal_without_its_end_line_reads_as_killed(store: BaselineStore) -> None:
    # issue 26: the results file is written as items finish; a kill leaves it without an end line
    full = records("rerun")
    session = {**full[0], "items": 40}
    checks = [r for r in full if r["kind"] == "check"]
    journal = [session, *[r for r in full if r["kind"] == "method"], *checks[:3]]
    report = build_report([("killed", journal)], store=store)
    assert report.runs[0].interrupted == "interrupted: 3 of 40 items (killed: no end record)"
    assert report.status == "failed"  # a run that did not reach its items is not a pass
    stopped = [*journal, {"kind": "end", "interrupted": True, "items": {"finished": 3, "collected": 40}}]
    assert build_report([("stopped", stopped)], store=store).runs[0].interrupted == "interrupted: 3 of 40 items (stopped)"
    finished = [*journal, {"kind": "end", "interrupted": False, "items": {"finished": 3, "collected": 3}}]
    assert build_report([("done", finished)], store=store).runs[0].interrupted is None
    assembled = [r for r in journal if r["kind"] != "session"]  # records put together elsewhere (a replay)
    assert build_report([("replay", assembled)], store=store).runs[0].interrupted is None

"""Baselines keep history (issue 14): each update appends a run, comparisons read the samples."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from peftcheck.baseline import BaselineStore, collect_entries

ENV = {"python": "3.11.7", "device": "cpu", "versions": {"torch": "2.13.0", "transformers": "5.24.0", "peft": "0.21.2"}}


def run(train_time_s: float, *, fingerprint: str = "f1", loss: float = 2.0) -> list[dict[str, Any]]:
    """One session's records of a method trained in ``train_time_s``."""
    return [
        {"kind": "session", "env": ENV},
        {"kind": "method", "suite": "tiny", "suite_file": "tiny.yaml", "method": "lora", "status": "trained",
         "fingerprint": fingerprint, "env": ENV, "metrics": {
             "train_time_s": {"value": train_time_s, "unit": "s"}, "final_loss": {"value": loss, "unit": "nats"}}},
    ]  # fmt: skip


def compare(store: BaselineStore, records: list[dict[str, Any]]) -> dict[str, Any]:
    match = store.lookup("tiny", ENV)
    assert match is not None
    return {c.metric: c for c in match.compare(records[1]) or []}


def test_three_appended_runs_then_a_slowed_run_flags_train_time(tmp_path: Path) -> None:
    store = BaselineStore(tmp_path)
    for seconds in (10.0, 11.0, 9.0):
        notes = store.update(collect_entries(run(seconds)), "all")
    assert [n.action for n in notes] == ["appended"] and "3 sample(s)" in notes[0].detail
    data = json.loads(next(tmp_path.rglob("tiny.json")).read_text(encoding="utf-8"))
    assert data["methods"]["lora"]["metrics"]["train_time_s"]["samples"] == [10.0, 11.0, 9.0]
    assert [r["run"] for r in data["runs"]] == [1, 2, 3]
    assert compare(store, run(12.0))["train_time_s"].status == "unchanged"  # within the noise
    slowed = compare(store, run(40.0))["train_time_s"]  # mean 10 s: past 3 sigma and the 2.5x floor
    assert slowed.status == "regressed" and slowed.samples == 3, slowed.describe()


def test_two_runs_are_too_few_to_judge_time(tmp_path: Path) -> None:
    store = BaselineStore(tmp_path)
    for seconds in (10.0, 11.0):
        store.update(collect_entries(run(seconds)), "all")
    assert compare(store, run(40.0))["train_time_s"].status == "changed"  # shown, not judged


def test_a_new_fingerprint_starts_the_samples_again(tmp_path: Path) -> None:
    store = BaselineStore(tmp_path)
    for seconds in (10.0, 11.0, 9.0):
        store.update(collect_entries(run(seconds)), "all")
    notes = store.update(collect_entries(run(30.0, fingerprint="f2")), "all")
    assert notes[0].action == "replaced"
    data = json.loads(next(tmp_path.rglob("tiny.json")).read_text(encoding="utf-8"))
    assert data["methods"]["lora"]["metrics"]["train_time_s"]["samples"] == [30.0]


def test_missing_never_appends(tmp_path: Path) -> None:
    store = BaselineStore(tmp_path)
    store.update(collect_entries(run(10.0)), "missing")
    assert [n.action for n in store.update(collect_entries(run(11.0)), "missing")] == ["kept"]


def test_baselines_the_run_did_not_use_are_listed(tmp_path: Path) -> None:
    from peftcheck.report.publish import publish

    store = BaselineStore(tmp_path)
    other = [{**r, "suite": "gone"} if r["kind"] == "method" else r for r in run(10.0)]
    extra = [{**r, "method": "prefix"} if r["kind"] == "method" else r for r in run(10.0)]
    store.update(collect_entries(run(10.0) + other[1:] + extra[1:]), "missing")
    lines = publish([("r.jsonl", run(10.0))], baseline=tmp_path).lines()
    unused = [line for line in lines if line.startswith("baseline not used by this run: ")]
    assert len(unused) == 2, lines
    assert any("gone.json (suite gone did not run)" in line for line in unused)
    assert any("tiny.json: prefix (did not run)" in line for line in unused)

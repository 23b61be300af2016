"""``pytest -n 2`` gives what a serial run gives (issue 14): the same outcomes, the same records,
the same report; a method cluster stays on one worker; each worker sees its own GPU."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest

from helpers import CORPUS

pytest.importorskip("xdist")
pytest_plugins = ["pytester"]

SUITE = f"""
suite: tiny4
model: tiny-llama
data: {{dataset: {CORPUS}, split: "train[:64]", eval_split: "train[-16:]", text_field: text, max_length: 24}}
train: {{max_steps: 6, learning_rate: 2.0e-2, per_device_train_batch_size: 8, seed: 0}}
methods:
  lora: {{peft: LoraConfig, r: 4, lora_alpha: 8, target_modules: [q_proj, v_proj]}}
  lora_mlp:
    peft: LoraConfig
    r: 4
    lora_alpha: 8
    target_modules: [gate_proj, up_proj]
    expect:
      memory_footprint: {{max_ratio: 1.5, relative_to: lora}}   # lora must train on this worker too
  ia3:
    peft: IA3Config
    target_modules: [k_proj, v_proj, down_proj]
    feedforward_modules: [down_proj]
    expect:
      loss_decrease: {{min_relative: 0.5}}   # red: 6 steps of IA3 do not halve the loss
  prompt:
    peft: PromptTuningConfig
    num_virtual_tokens: 4
    expect:
      trainable_ratio: {{max: 1.0e-9, xfail: "a prompt has trainable parameters"}}
expect:
  trainable_ratio: {{max: 0.5}}
  loss_decrease: {{min_relative: 0.001}}
  merge_equivalence: {{}}                   # not applicable to the prompt: skipped
  no_regression: {{ignore: [train_time_s]}}  # first here, run last; skipped: no baseline
"""
ENV_TEST = """
import os, pytest

@pytest.mark.parametrize("n", range(4))
def test_env(n):
    with open("devices.txt", "a") as handle:
        handle.write(f"{os.environ.get('PYTEST_XDIST_WORKER', 'serial')}={os.environ.get('CUDA_VISIBLE_DEVICES')}\\n")
"""
TIMED = {"train_time_s", "tokens_per_s", "peak_rss_mib", "prepare_time_s"}  # wall clock and RSS differ by nature


def run(pytester: pytest.Pytester, name: str, *args: str) -> tuple[Any, list[dict[str, Any]]]:
    result = pytester.runpytest_subprocess(
        "-p", "no:cacheprovider", "-v", "--peftcheck-results", f"{name}.jsonl", "--peftcheck-report", f"{name}.html",
        "--peftcheck-summary", f"{name}.md", *args,
    )  # fmt: skip
    records = [json.loads(line) for line in (pytester.path / f"{name}.jsonl").read_text(encoding="utf-8").splitlines()]
    return result, records


def comparable(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Records without what a clock or a process decides."""
    out = []
    for record in records[1:-1]:  # the session and end lines say which process wrote them
        record = {k: v for k, v in record.items() if k not in TIMED | {"duration_s", "env", "step_times_s"}}
        if record["kind"] == "method":
            record["metrics"] = {k: v for k, v in record["metrics"].items() if k not in TIMED}
        out.append(record)
    return out


def sections(pytester: pytest.Pytester, name: str) -> dict[str, Any]:
    from peftcheck.record import read_records
    from peftcheck.report.model import build_report

    report = build_report([("r", read_records(pytester.path / f"{name}.jsonl"))])
    page = (pytester.path / f"{name}.html").read_text(encoding="utf-8")
    return {
        "cells": [(m.method, c.check, c.outcome, c.value) for s in report.suites for m in s.methods for c in m.cells.values()],
        "metrics": [(m.method, c.metric) for s in report.suites for m in s.methods for c in m.metrics],
        "headings": [h.replace(f"{name}.jsonl", "NAME.jsonl") for h in re.findall(r"<h[23][^>]*>(.*?)</h[23]>", page)],
        "summary": (pytester.path / f"{name}.md").read_text(encoding="utf-8").splitlines()[0],
        "counts": report.counts,
    }


def test_two_workers_equal_a_serial_run(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    pytester.makefile(".yaml", tiny4=SUITE)
    pytester.makepyfile(test_env=ENV_TEST)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "4,6")  # the CPU build of torch ignores it
    serial, serial_records = run(pytester, "serial")
    (pytester.path / "devices.txt").unlink()
    xdist, xdist_records = run(pytester, "xdist", "-n", "2")

    counts = [{k: v for k, v in r.parseoutcomes().items() if k != "warnings"} for r in (serial, xdist)]
    assert counts[0] == counts[1]
    outcomes = {r["nodeid"]: r["outcome"] for r in serial_records if r["kind"] == "check"}
    assert {"failed", "passed", "skipped", "xfailed"} <= set(outcomes.values())  # every kind is compared
    assert outcomes == {r["nodeid"]: r["outcome"] for r in xdist_records if r["kind"] == "check"}
    assert comparable(serial_records) == comparable(xdist_records)
    assert len([r for r in xdist_records if r["kind"] == "check"]) == 4 * 4 + 1  # every record, once
    assert sections(pytester, "serial") == sections(pytester, "xdist")

    # a cluster on one worker: lora_mlp's footprint is relative to lora
    where: dict[str, set[str]] = {}
    for worker, method in re.findall(r"\[(gw\d)\] .*?(?:PASSED|FAILED|SKIPPED|XFAIL)\S* tiny4\.yaml::tiny4::(\w+)::",
                                     xdist.stdout.str()):
        where.setdefault(method, set()).add(worker)
    assert set(where) == {"lora", "lora_mlp", "ia3", "prompt"}
    assert all(len(w) == 1 for w in where.values()) and where["lora"] == where["lora_mlp"], where

    session = xdist_records[0]
    assert session["xdist"]["dist"].startswith("peftcheck clusters")
    assert session["xdist"]["workers"] == {"gw0": {"cuda_visible_devices": "4"}, "gw1": {"cuda_visible_devices": "6"}}
    seen = set((pytester.path / "devices.txt").read_text(encoding="utf-8").split())
    assert seen and seen <= {"gw0=4", "gw1=6"}, seen  # set in each worker before CUDA could initialise
    assert "xdist" not in serial_records[0]
    # issue 22: each worker on its share of the cores, not all of them
    from peftcheck.xdist import worker_threads

    threads = {r["env"]["torch_threads"] for r in xdist_records if r["kind"] == "method" and r.get("env")}
    assert threads == {worker_threads(2)}, threads


def test_an_explicit_dist_is_respected(pytester: pytest.Pytester) -> None:
    from peftcheck.xdist import dist_was_chosen

    config = pytester.parseconfig("--dist", "loadscope", "-n", "2")
    assert dist_was_chosen(config)
    assert not dist_was_chosen(pytester.parseconfig("-n", "2"))

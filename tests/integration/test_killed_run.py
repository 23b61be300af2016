"""A run killed at any point keeps what it finished (issue 26): the results file is a journal,
written and fsynced as each item finishes; the whole file replaces it at the end."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from helpers import tiny_suite

METHODS = {f"lora{r}": {"peft": "LoraConfig", "r": r, "target_modules": ["q_proj", "v_proj"]} for r in (1, 2, 3, 4)}
EXPECT = {"trainable_ratio": {"max": 0.5}, "loss_decrease": {"min_relative": 0.0}, "base_frozen": True,
          "merge_equivalence": True, "save_load_roundtrip": True}  # fmt: skip
ITEMS = len(METHODS) * len(EXPECT)
KILL_AFTER = 7  # check records: into the second method, before the last


@pytest.fixture
def project(tmp_path: Path) -> Path:
    suite = tiny_suite(METHODS, expect=EXPECT, model="tiny-llama")
    suite["train"]["max_steps"] = 30  # long enough that a kill lands mid-run
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(suite, sort_keys=False), encoding="utf-8")
    return tmp_path


def _env(project: Path) -> dict[str, str]:
    return {**os.environ, "PEFTCHECK_CACHE": "on", "PEFTCHECK_CACHE_DIR": str(project / "cache"),
            "PYTHONUNBUFFERED": "1"}  # fmt: skip


def _command(*extra: str) -> list[str]:
    return [sys.executable, "-m", "pytest", "tiny.yaml", "-p", "no:cacheprovider", "--peftcheck-results",
            "results.jsonl", *extra]  # fmt: skip


def _lines(path: Path) -> list[dict[str, Any]]:
    """The file's complete lines; a kill must never leave a partial one (each is fsynced whole)."""
    if not path.exists():
        return []
    text = path.read_text(encoding="utf-8")
    return [json.loads(line) for line in text.splitlines(keepends=True) if line.endswith("\n")]


def _checks(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [r for r in records if r.get("kind") == "check"]


def _run_until(project: Path, checks: int, sig: int, *extra: str) -> subprocess.CompletedProcess[str]:
    """Start the run, send ``sig`` once ``checks`` items are on disk, and wait for it to end."""
    results = project / "results.jsonl"
    # SIGINT as a terminal delivers it: a job a non-interactive shell starts in the background (a CI
    # script's `cmd &`) inherits SIGINT ignored, and Python then installs no KeyboardInterrupt handler
    process = subprocess.Popen(_command(*extra), cwd=project, env=_env(project), text=True,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))  # fmt: skip
    deadline = time.monotonic() + 600
    while len(_checks(_lines(results))) < checks:
        assert process.poll() is None, f"the run ended before {checks} items:\n{process.stdout.read()}"  # type: ignore[union-attr]
        assert time.monotonic() < deadline, "no progress in 600 s"
        time.sleep(0.05)
    process.send_signal(sig)
    out, _ = process.communicate(timeout=300)
    return subprocess.CompletedProcess(process.args, process.returncode, out, "")


def _report(project: Path) -> str:
    done = subprocess.run([sys.executable, "-m", "peftcheck", "report", "results.jsonl", "-o", "report.html"],
                          cwd=project, env=_env(project), text=True, capture_output=True, timeout=300)  # fmt: skip
    assert done.returncode in (0, 1), done.stdout + done.stderr  # 1: a failed item, not a crash
    return (project / "report.html").read_text(encoding="utf-8")


def test_sigkill_keeps_the_finished_items_and_the_rerun_trains_none_of_them(project: Path) -> None:
    killed = _run_until(project, KILL_AFTER, signal.SIGKILL)
    assert killed.returncode == -signal.SIGKILL
    records = _lines(project / "results.jsonl")
    finished = _checks(records)
    assert KILL_AFTER <= len(finished) < ITEMS
    assert records[0]["kind"] == "session" and records[0]["items"] == ITEMS
    assert not any(r["kind"] == "end" for r in records)  # how a reader knows the run was killed
    trained = {r["method"] for r in records if r["kind"] == "method"}
    assert {r["method"] for r in finished} <= trained
    html = _report(project)
    assert f"interrupted: {len(finished)} of {ITEMS} items" in html
    assert all(r["nodeid"].rsplit("::", 1)[-1] in html for r in finished)

    rerun = subprocess.run(_command(), cwd=project, env=_env(project), text=True, capture_output=True, timeout=900)
    assert rerun.returncode == 0, rerun.stdout[-3000:]
    served = next(line for line in rerun.stdout.splitlines() if "methods from the artifact cache" in line)
    assert int(served.split()[1]) >= len(trained), served
    assert len(_checks(_lines(project / "results.jsonl"))) == ITEMS


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_an_interrupted_run_ends_with_its_results_and_report(project: Path, sig: int) -> None:
    stopped = _run_until(project, KILL_AFTER, sig, "--peftcheck-report", "run.html")
    assert stopped.returncode == pytest.ExitCode.INTERRUPTED, stopped.stdout[-3000:]
    assert "peftcheck: interrupted after " in stopped.stdout
    records = _lines(project / "results.jsonl")
    end = records[-1]
    assert end["kind"] == "end" and end["interrupted"] is True
    assert KILL_AFTER <= end["items"]["finished"] == len(_checks(records)) < ITEMS
    assert end["items"]["collected"] == ITEMS
    html = (project / "run.html").read_text(encoding="utf-8")
    assert f"interrupted: {end['items']['finished']} of {ITEMS} items" in html


def test_a_finished_run_is_not_marked_interrupted(project: Path) -> None:
    done = subprocess.run(_command(), cwd=project, env=_env(project), text=True, capture_output=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:]
    records = _lines(project / "results.jsonl")
    assert records[-1] == {**records[-1], "kind": "end", "interrupted": False,
                           "items": {"finished": ITEMS, "collected": ITEMS}}  # fmt: skip
    assert not list(project.glob(".results.jsonl.*.tmp"))  # the whole file was moved into place
    assert "interrupted:" not in _report(project)

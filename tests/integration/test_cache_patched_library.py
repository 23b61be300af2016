"""The caches see the code that ran (issue 26): a run under a conftest or a ``-p`` plugin that
patches peft is not served the clean run's artifact or check results, and is measured (and fails);
the clean run after it is served from the cache again."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

import peftcheck.check_cache  # noqa: F401 - kept across the in-process runs, as its code digest is in one process
from helpers import tiny_suite

pytest_plugins = ["pytester"]

LORA = {"peft": "LoraConfig", "r": 2, "lora_alpha": 8, "target_modules": ["q_proj", "v_proj"]}
# LoRA's merge scales its delta by 1.3: what a contributor's local peft change does to merge_equivalence;
# undone at the end, as the in-process run shares this process's peft
PATCH = """
import pytest
from peft.tuners.lora import layer

_patch = pytest.MonkeyPatch()
_real = layer.Linear.get_delta_weight


def _scaled(self, adapter):
    return 1.3 * _real(self, adapter)


def pytest_configure(config):
    _patch.setattr(layer.Linear, "get_delta_weight", _scaled)


def pytest_unconfigure(config):
    _patch.undo()
"""
REUSED = ("peftcheck: 1 of 1 methods from the artifact cache, 2 of 2 checks replayed from the check cache "
          "(--peftcheck-cache off measures everything)")  # fmt: skip


def _run(pytester: pytest.Pytester, *args: str) -> tuple[pytest.RunResult, dict[str, Any]]:
    """The run and its method record, with each check's (outcome, from_cache)."""
    result = pytester.runpytest("-p", "no:peftcheck_report", "-p", "no:cacheprovider", *args)
    records = [json.loads(line) for line in (pytester.path / "reports" / "results.jsonl").read_text().splitlines()]
    (method,) = [r for r in records if r["kind"] == "method"]
    method["checks"] = {r["check"]: (r["outcome"], r["from_cache"]) for r in records if r["kind"] == "check"}
    return result, method


def _reused(result: pytest.RunResult) -> list[str]:
    return [line for line in result.stdout.lines if "from the artifact cache," in line]


def test_a_patched_peft_is_measured_and_the_clean_rerun_is_served(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("PEFTCHECK_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("PEFTCHECK_CACHE", raising=False)  # the default: on
    suite = tiny_suite(
        {"lora": LORA}, model="tiny-llama", expect={"merge_equivalence": {}, "base_frozen": {}},
        train={"max_steps": 4, "learning_rate": 2e-2, "per_device_train_batch_size": 8, "seed": 0},
    )  # fmt: skip
    pytester.makefile(".yaml", tiny=yaml.safe_dump(suite, sort_keys=False))
    clean, cold = _run(pytester)
    assert clean.ret == 0, clean.stdout.str()
    assert cold["cache"]["stored"] is True and cold["checks"]["merge_equivalence"] == ("passed", False)
    assert _reused(_run(pytester)[0]) == [REUSED]

    pytester.makeconftest(PATCH)
    patched, record = _run(pytester)
    assert patched.ret == pytest.ExitCode.TESTS_FAILED, patched.stdout.str()
    assert _reused(patched) == [], patched.stdout.str()  # neither the artifact nor a check replayed
    assert record["from_cache"] is False and record["checks"]["merge_equivalence"] == ("failed", False)
    assert record["loss_curve"] == cold["loss_curve"]  # training does not merge: the same artifact, retrained

    (pytester.path / "conftest.py").rename(pytester.path / "scaled_merge.py")  # the patch as a -p plugin
    pytester.syspathinsert()
    by_plugin, record = _run(pytester, "-p", "scaled_merge")
    assert by_plugin.ret == pytest.ExitCode.TESTS_FAILED and _reused(by_plugin) == [], by_plugin.stdout.str()
    assert record["checks"]["merge_equivalence"] == ("failed", False)

    again, record = _run(pytester)  # the patch gone: the clean run's entries again
    assert again.ret == 0 and _reused(again) == [REUSED], again.stdout.str()
    assert record["from_cache"] is True and record["checks"]["merge_equivalence"] == ("passed", True)

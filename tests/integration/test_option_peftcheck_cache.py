"""--peftcheck-cache through pytest and `peftcheck run --cache` (issue 14)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from helpers import tiny_suite

pytest_plugins = ["pytester"]

LORA = {"peft": "LoraConfig", "r": 2, "lora_alpha": 8, "target_modules": ["q_proj", "v_proj"]}


def _write(pytester: pytest.Pytester, bound: float) -> None:
    suite = tiny_suite(
        {"lora": LORA}, model="tiny-llama", expect={"loss_decrease": {"min_relative": bound}, "base_frozen": {}},
        train={"max_steps": 4, "learning_rate": 2e-2, "per_device_train_batch_size": 8, "seed": 0},
    )  # fmt: skip
    pytester.makefile(".yaml", tiny=yaml.safe_dump(suite, sort_keys=False))


def _method(pytester: pytest.Pytester, *args: str, says: str | None = None) -> dict[str, Any]:
    """The method record; ``says``: the summary's cache line (none where nothing was reused)."""
    result = pytester.runpytest("-p", "no:peftcheck_report", "-p", "no:cacheprovider", *args)
    assert result.ret == 0, result.stdout.str()
    lines = [line for line in result.stdout.lines if "from the artifact cache," in line]
    assert lines == ([says] if says else []), result.stdout.str()
    records = [json.loads(line) for line in (pytester.path / "reports" / "results.jsonl").read_text().splitlines()]
    (method,) = [r for r in records if r["kind"] == "method"]
    method["checks"] = {r["check"]: r["from_cache"] for r in records if r["kind"] == "check"}
    return method


def test_a_bound_only_change_is_served_from_the_cache(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("PEFTCHECK_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("PEFTCHECK_CACHE", raising=False)  # the default: on
    _write(pytester, 0.001)
    cold = _method(pytester)
    assert cold["from_cache"] is False and cold["cache"]["stored"] is True
    assert cold["checks"] == {"loss_decrease": False, "base_frozen": False}
    _write(pytester, 0.0001)
    line = ("peftcheck: 1 of 1 methods from the artifact cache, {} of 2 checks replayed from the check cache "
            "(--peftcheck-cache off measures everything)")  # fmt: skip
    warm = _method(pytester, says=line.format(1))
    assert warm["from_cache"] is True and warm["loss_curve"] == cold["loss_curve"]
    assert "train_time_s" not in warm["metrics"]
    # the changed bound is a changed parameter: measured again, on the cached artifact
    assert warm["checks"] == {"loss_decrease": False, "base_frozen": True}
    again = _method(pytester, says=line.format(2))
    assert again["checks"] == {"loss_decrease": True, "base_frozen": True}
    off = _method(pytester, "--peftcheck-cache", "off")
    assert off["from_cache"] is False and off["checks"] == {"loss_decrease": False, "base_frozen": False}


def test_a_bad_mode_is_a_usage_error(pytester: pytest.Pytester) -> None:
    _write(pytester, 0.001)
    result = pytester.runpytest("--peftcheck-cache", "sometimes")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*--peftcheck-cache: got 'sometimes', expected one of off, read, write, on*"])


def test_peftcheck_run_forwards_cache(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import pytest as pytest_module

    from peftcheck.cli import main

    suite = tmp_path / "tiny.yaml"
    suite.write_text(yaml.safe_dump(tiny_suite({"lora": LORA})))
    seen: list[list[str]] = []
    monkeypatch.setattr(pytest_module, "main", lambda args: seen.append(list(args)) or 0)
    assert main(["run", str(suite), "--cache", "read"]) == 0
    assert seen[-1][-2:] == ["--peftcheck-cache", "read"]
    assert main(["run", str(suite)]) == 0
    assert "--peftcheck-cache" not in seen[-1]  # $PEFTCHECK_CACHE or the default decides

"""Hostile input stays data and is refused in one located line (issue 26): each payload here
would create a marker file if anything ran it; each test asserts that file does not exist."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import pytest
import yaml

from helpers import tiny_suite
from peftcheck.cli import main

pytest_plugins = ["pytester"]


class _Payload:
    """Unpickling this calls ``open(marker, "w")``: the file exists if anything unpickled it."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self) -> tuple[object, tuple[str, str]]:
        return open, (self.marker, "w")


def _pickled_adapter(root: Path, marker: Path) -> Path:
    """A sound LoRA folder whose weights were replaced by a pickle with a payload."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from peftcheck.fixtures import materialise

    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_pretrained(materialise("tiny-llama"))
    folder = root / "adapter"
    get_peft_model(base, LoraConfig(r=2, target_modules=["q_proj"], task_type="CAUSAL_LM")).save_pretrained(folder)
    (folder / "adapter_model.safetensors").unlink()
    (folder / "adapter_model.bin").write_bytes(pickle.dumps({"weights": _Payload(marker)}))
    return folder


def _remote_code_model(root: Path, marker: Path) -> Path:
    """A model folder transformers could only build by importing its own code (auto_map)."""
    folder = root / "base"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({
        "model_type": "hostile", "architectures": ["HostileForCausalLM"],
        "auto_map": {"AutoConfig": "modeling_hostile.HostileConfig",
                     "AutoModelForCausalLM": "modeling_hostile.HostileForCausalLM"},
    }))  # fmt: skip
    (folder / "modeling_hostile.py").write_text(f"open({str(marker)!r}, 'w').close()\n")
    return folder


def _write(root: Path, suite: dict) -> Path:
    path = root / "tiny.yaml"
    path.write_text(yaml.safe_dump(suite, sort_keys=False))
    return path


def _line_of(path: Path, key: str) -> int:
    return next(n for n, line in enumerate(path.read_text().splitlines(), 1) if line.strip().startswith(f"{key}:"))


ARTIFACT_EXPECT = {"adapter_integrity": {}, "merge_equivalence": {}, "save_load_roundtrip": {}}


def test_validate_refuses_pickled_adapter_weights(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    marker = tmp_path / "ran"
    _pickled_adapter(tmp_path, marker)
    path = _write(tmp_path, tiny_suite({"mine": {"adapter": "adapter"}}, model="tiny-llama", expect=ARTIFACT_EXPECT))
    assert main(["validate", str(path)]) == 1
    err = capsys.readouterr().err
    assert f"{path}:{_line_of(path, 'adapter')} methods.mine.adapter: " in err
    assert "holds pickled adapter weights only (adapter_model.bin)" in err
    assert "Traceback" not in err and not marker.exists()


def test_a_run_on_pickled_weights_fails_integrity_once_and_skips_the_rest(pytester: pytest.Pytester) -> None:
    marker = pytester.path / "ran"
    _pickled_adapter(pytester.path, marker)
    _write(pytester.path, tiny_suite({"mine": {"adapter": "adapter"}}, model="tiny-llama", expect=ARTIFACT_EXPECT))
    result = pytester.runpytest("-q", "-rs", "-p", "no:peftcheck_report")
    output = result.stdout.str() + result.stderr.str()
    result.assert_outcomes(failed=1, skipped=2)
    result.stdout.fnmatch_lines([
        "*pickle-based adapter weights ?'adapter_model.bin'?*",
        "*not applicable: methods.mine.adapter: *holds pickled adapter weights only*",
    ])  # fmt: skip
    assert "UnpicklingError" not in output and "Traceback" not in output and 'File "' not in output, output
    assert not marker.exists()


def test_validate_refuses_a_model_folder_that_needs_its_own_code(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    marker = tmp_path / "ran"
    _remote_code_model(tmp_path, marker)
    path = _write(tmp_path, tiny_suite({"lora": {"peft": "LoraConfig", "r": 2}}, model="base",
                                       expect={"trainable_ratio": {}}))  # fmt: skip
    assert main(["validate", str(path)]) == 1
    err = capsys.readouterr().err
    assert f"{path}:{_line_of(path, 'model')} model: " in err
    assert "model_type 'hostile' is not one transformers builds itself" in err and "trust_remote_code: true" in err
    assert "Traceback" not in err and not marker.exists()


def test_a_run_on_a_remote_code_model_is_one_collection_error(pytester: pytest.Pytester) -> None:
    marker = pytester.path / "ran"
    _remote_code_model(pytester.path, marker)
    _write(pytester.path, tiny_suite({"lora": {"peft": "LoraConfig", "r": 2}}, model="base",
                                     expect={"trainable_ratio": {}}))  # fmt: skip
    result = pytester.runpytest("-q", "-p", "no:peftcheck_report")
    output = result.stdout.str() + result.stderr.str()
    assert result.ret == pytest.ExitCode.INTERRUPTED
    result.stdout.fnmatch_lines(["*tiny.yaml:* model: *model_type 'hostile' is not one transformers builds itself*"])
    assert "Traceback" not in output and 'File "' not in output, output
    assert not marker.exists()

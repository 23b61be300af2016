"""The command line: validate, list, schema, run — exit codes and messages."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from helpers import tiny_suite
from peftcheck.cli import main

LORA = {"peft": "LoraConfig", "r": 2, "target_modules": ["q_proj", "v_proj"]}


def write(tmp_path: Path, suite: dict, name: str = "s.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(suite, sort_keys=False))
    return path


def test_validate_ok_and_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    good = write(tmp_path, tiny_suite({"lora": LORA}, expect={"trainable_ratio": {}}), "good.yaml")
    assert main(["validate", str(good)]) == 0
    bad = tiny_suite({"lora": {**LORA, "lora_alpah": 8}}, expect={"trainable_ratio": {"mx": 1}})
    bad_path = write(tmp_path, bad, "bad.yaml")
    assert main(["validate", str(bad_path)]) == 1
    err = capsys.readouterr().err
    assert "bad.yaml:" in err and "expect.trainable_ratio.mx: unknown key" in err


def test_validate_reports_unknown_config_argument(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path, tiny_suite({"lora": {**LORA, "lora_alpah": 8}}))
    assert main(["validate", str(path)]) == 1
    err = capsys.readouterr().err
    assert "methods.lora.lora_alpah: unknown argument of LoraConfig" in err and "lora_alpha" in err


def test_validate_says_which_adapters_methods_it_could_not_check(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from peftcheck.backends import adapters

    monkeypatch.setattr(adapters, "is_adapters_available", lambda: False)
    path = write(tmp_path, tiny_suite({"houlsby": {"backend": "adapters", "config": "double_seq_bn"}}))
    assert main(["validate", str(path)]) == 0  # the suite is fine; its items skip where adapters is missing
    err = capsys.readouterr().err
    assert "methods.houlsby: not checked here: adapters is not installed" in err


def test_missing_path_is_a_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["validate", str(tmp_path / "nope.yaml")]) == 2
    assert "no such file" in capsys.readouterr().err


def test_list_prints_item_ids(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path, tiny_suite({"lora": LORA}, expect={"trainable_ratio": {}, "base_frozen": {}}))
    assert main(["list", str(path)]) == 0
    assert capsys.readouterr().out.split() == [f"{path}::tiny::lora::trainable_ratio", f"{path}::tiny::lora::base_frozen"]


def test_schema_is_json_schema(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["schema"]) == 0
    schema = json.loads(capsys.readouterr().out)
    assert schema["title"] == "peftcheck suite"
    assert {"suite", "model", "data", "methods"} <= set(schema["required"])
    assert schema["additionalProperties"] is False

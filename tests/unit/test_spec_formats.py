"""Suite validation of `trainer`, `train:` names per trainer and `data.format` (issue 15)."""

from __future__ import annotations

import pytest
import yaml

from helpers import tiny_suite
from peftcheck.errors import SuiteError
from peftcheck.loader import load_suite_text

pytest.importorskip("trl")

LORA = {"peft": "LoraConfig", "r": 4, "target_modules": ["q_proj", "v_proj"]}


def text(suite: dict) -> str:
    return yaml.safe_dump(suite, sort_keys=False)


def located(suite: dict) -> SuiteError:
    with pytest.raises(SuiteError) as info:
        load_suite_text(text(suite), path="suites/x.yaml")
    err = info.value
    assert err.file == "suites/x.yaml" and err.line is not None
    return err


def test_sft_config_names_are_accepted_for_sft_methods() -> None:
    suite = tiny_suite({"lora": {**LORA, "trainer": "sft", "train": {"packing": False}}}, trainer="hf")
    loaded = load_suite_text(text(suite))
    assert loaded.spec.trainer_of("lora") == "sft" and loaded.spec.train_args("lora")["packing"] is False


def test_unknown_sft_config_name_is_located() -> None:
    suite = tiny_suite({"lora": LORA}, trainer="sft")
    suite["train"]["complection_only_loss"] = True
    err = located(suite)
    assert err.field == "train.complection_only_loss" and "unknown SFTConfig name" in err.message
    assert "completion_only_loss" in (err.hint or "")
    assert text(suite).splitlines()[err.line - 1].strip().startswith("complection_only_loss")


def test_sft_only_name_on_an_hf_method_is_located() -> None:
    suite = tiny_suite({"lora": {**LORA, "train": {"packing": True}}})
    err = located(suite)
    assert err.field == "methods.lora.train.packing" and "unknown TrainingArguments name" in err.message


@pytest.mark.parametrize(("fmt", "loss"), [("prompt_completion", "assistant_only"), ("text", "completion_only")])
def test_loss_scope_must_fit_the_format(fmt: str, loss: str) -> None:
    suite = tiny_suite({"lora": LORA})
    suite["data"].update({"format": fmt, "loss": loss})
    err = located(suite)
    assert err.field == "data" and f"loss {loss!r} needs format" in err.message


def test_unknown_format_is_located() -> None:
    suite = tiny_suite({"lora": LORA})
    suite["data"]["format"] = "chat"
    err = located(suite)
    assert err.field == "data.format" and "got 'chat'" in err.message


def test_default_loss_scope_follows_trl() -> None:
    suite = tiny_suite({"lora": LORA})
    suite["data"]["format"] = "prompt_completion"
    assert load_suite_text(text(suite)).spec.data.loss_scope == "completion_only"

"""Artifact mode (issue 15): `adapter:` methods validate with located errors, load instead of
training, take the base from adapter_config.json where the suite names none, and training-only
checks are not applicable to them (loss_decrease reads trainer_state.json where it is there)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from helpers import CORPUS, load, quiet_pipeline, run_check, tiny_suite
from peftcheck.checks.registry import NotApplicable
from peftcheck.errors import SuiteError
from peftcheck.loader import load_suite_text


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A LoRA folder by peft's save_pretrained on the built-in tiny-llama, naming it as its base."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from peftcheck.fixtures import materialise

    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_pretrained(materialise("tiny-llama"))
    config = LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False, task_type="CAUSAL_LM")
    out = tmp_path_factory.mktemp("artifact") / "lora"
    get_peft_model(base, config).save_pretrained(out)
    data = json.loads((out / "adapter_config.json").read_text())
    data["base_model_name_or_path"] = "tiny-llama"  # a built-in name resolves like the suite's `model:`
    (out / "adapter_config.json").write_text(json.dumps(data))
    return out


def _text(methods: dict[str, Any], **overrides: Any) -> str:
    return yaml.safe_dump(tiny_suite(methods, **overrides), sort_keys=False)


def _error(text: str) -> SuiteError:
    with pytest.raises(SuiteError) as info:
        load_suite_text(text, path="suite.yaml")
    return info.value


def _line(text: str, needle: str) -> int:
    return next(i for i, line in enumerate(text.splitlines(), 1) if needle in line)


@pytest.mark.parametrize(
    ("method", "message"),
    [
        ({"adapter": "x", "peft": "LoraConfig"}, "takes its config from adapter_config.json and is not trained; remove ['peft']"),
        ({"adapter": "x", "r": 8}, "remove ['r']"),
        ({"adapter": "x", "train": {"max_steps": 3}}, "remove ['train']"),
        ({"peft": "LoraConfig", "merged": "y"}, "`merged:` checks a saved adapter: give `adapter: <folder>` too"),
    ],
)
def test_artifact_fields_that_do_not_go_together_are_located_errors(method: dict[str, Any], message: str) -> None:
    text = _text({"mine": method})
    error = _error(text)
    assert message in error.message
    assert error.file == "suite.yaml" and error.field == "methods.mine" and error.line == _line(text, "mine:")


def test_a_missing_folder_is_an_error_at_its_field(tmp_path: Path) -> None:
    text = _text({"ok": {"peft": "LoraConfig"}, "mine": {"adapter": str(tmp_path / "nowhere")}})
    error = _error(text)
    assert error.field == "methods.mine.adapter" and error.line == _line(text, "adapter:")
    assert "does not exist" in error.message and "save_pretrained" in error.hint
    (tmp_path / "empty").mkdir()
    error = _error(_text({"mine": {"adapter": str(tmp_path / "empty")}}))
    assert "no adapter_config.json in" in error.message


def test_a_merged_folder_without_config_is_an_error(folder: Path, tmp_path: Path) -> None:
    text = _text({"mine": {"adapter": str(folder), "merged": str(tmp_path)}})
    error = _error(text)
    assert error.field == "methods.mine.merged" and "has no config.json" in error.message


def test_the_model_comes_from_adapter_config_only_when_every_method_is_an_artifact(folder: Path) -> None:
    suite = tiny_suite({"mine": {"adapter": str(folder)}})
    del suite["model"]
    loaded = load(suite)
    assert loaded.spec.model == "tiny-llama"
    suite["methods"]["trained"] = {"peft": "LoraConfig"}
    error = _error(yaml.safe_dump(suite, sort_keys=False))
    assert error.field == "model" and error.line == 1
    assert "required key is missing: methods ['trained'] train on it" in error.message


def test_an_artifact_loads_instead_of_training_and_runs_the_checks_that_apply(folder: Path) -> None:
    loaded = load(tiny_suite({"mine": {"adapter": str(folder)}}, model="tiny-llama"))
    assert "adapter_integrity" in loaded.spec.expectations("mine")  # on by default for artifacts
    pipeline = quiet_pipeline()
    artifact = pipeline.artifact(loaded, "mine")
    assert artifact.record["artifact"] == str(folder) and artifact.train.loss_curve == []
    assert artifact.record["trainable_params"] == 4 * (64 + 64) * 2 + 4 * (64 + 32) * 2  # q 64->64, v 64->32
    assert run_check(pipeline, loaded, "mine", "merge_equivalence").passed
    assert run_check(pipeline, loaded, "mine", "trainable_ratio").passed
    for check in ("base_frozen", "init_identity", "gradient_checkpointing", "adapter_name_invariance"):
        with pytest.raises(NotApplicable, match="saved adapter \\(artifact mode\\), trained elsewhere"):
            run_check(pipeline, loaded, "mine", check)
    with pytest.raises(NotApplicable, match="no trainer_state.json log_history"):
        run_check(pipeline, loaded, "mine", "loss_decrease")
    off = tiny_suite({"mine": {"adapter": str(folder), "expect": {"adapter_integrity": False}}}, model="tiny-llama")
    assert "adapter_integrity" not in load(off).spec.expectations("mine")


@pytest.mark.parametrize(("losses", "passed"), [([4.0, 3.9, 3.0, 2.0, 1.9, 1.8], True), ([2.0, 2.1, 2.0, 2.2], False)])
def test_loss_decrease_reads_the_trainers_log_history(folder: Path, tmp_path: Path, losses: list[float],
                                                      passed: bool) -> None:  # fmt: skip
    import shutil

    copy = tmp_path / "with_state"
    shutil.copytree(folder, copy)
    history = [{"step": i + 1, "loss": loss} for i, loss in enumerate(losses)] + [{"step": 6, "train_loss": 9.0}]
    (copy / "trainer_state.json").write_text(json.dumps({"log_history": history}))
    loaded = load(tiny_suite({"mine": {"adapter": str(copy)}}, model="tiny-llama"))
    measurement = run_check(quiet_pipeline(), loaded, "mine", "loss_decrease", min_relative=0.2, window=2)
    assert measurement.passed is passed, measurement.message
    assert measurement.details["first"] == pytest.approx(sum(losses[:2]) / 2)


def test_relative_adapter_paths_are_relative_to_the_suite_file(folder: Path, tmp_path: Path) -> None:
    suite = tiny_suite({"mine": {"adapter": "lora"}}, model="tiny-llama")
    suite["data"]["dataset"] = CORPUS
    loaded = load_suite_text(yaml.safe_dump(suite), path=str(folder.parent / "suite.yaml"))
    from peftcheck.artifact import folder as folder_of

    assert folder_of(loaded, "mine") == folder

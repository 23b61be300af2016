"""save_load_roundtrip passes on sound adapters and fails on the defect each test plants."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from helpers import load, quiet_pipeline, run_check, tiny_suite

LORA = {"peft": "LoraConfig", "r": 4, "lora_alpha": 8, "target_modules": ["q_proj", "v_proj"]}
METHODS = {
    "lora": LORA,
    "adalora": {"peft": "AdaLoraConfig", "init_r": 6, "target_r": 2, "target_modules": ["q_proj", "v_proj"]},
    "prefix": {"peft": "PrefixTuningConfig", "num_virtual_tokens": 4, "prefix_projection": True,
               "encoder_hidden_size": 16},
}  # fmt: skip


@pytest.fixture(scope="module")
def sound() -> Any:
    return quiet_pipeline(), load(tiny_suite(METHODS))


@pytest.mark.parametrize("method", list(METHODS))
def test_sound_checkpoint_is_complete_small_and_reloads_exactly(sound: Any, method: str) -> None:
    pipeline, loaded = sound
    measurement = run_check(pipeline, loaded, method, "save_load_roundtrip")
    assert measurement.passed, measurement.message
    details = measurement.details
    assert "adapter_model.safetensors" in details["files"] and not details["base_weights_leaked"]
    assert details["tensors_saved"] == details["tensors_expected"] > 0
    assert not details["resave_changed"]
    if method == "adalora":
        # AdaLoRA reloads at the ranks its budget kept (smaller lora_A/lora_E/lora_B than the
        # trained masked ones), so the GEMMs reduce over fewer terms: the same values, summed in
        # another order. Bitwise on AVX512 kernels, 2.7e-07 with AVX2's (issue 17).
        assert 0.0 <= details["reload"]["max_abs"] <= 1e-5
    else:
        assert details["reload"]["max_abs"] == 0.0
    metrics = measurement.metrics
    assert metrics["checkpoint_size_mib"]["value"] == pytest.approx(details["size_bytes"] / 2**20)


def test_budget_pruned_ranks_are_expected_in_the_checkpoint(sound: Any) -> None:
    # AdaLoRA saves each module at the ranks its budget kept (possibly none): those shapes are
    # what the live mask says, not a lost tensor.
    from peftcheck.methods import expected_checkpoint

    pipeline, loaded = sound
    model = pipeline.artifact(loaded, "adalora").model
    expected = expected_checkpoint(model)
    masks = model.peft_config["default"].rank_pattern
    assert masks and len(expected) == 12
    kept = {spec["shape"][0] for key, spec in expected.items() if key.endswith("lora_A")}
    assert kept <= {sum(mask) for mask in masks.values()}
    assert all(spec["shape"][0] < 6 for key, spec in expected.items() if key.endswith("lora_A"))


def _patch_state_dict(monkeypatch: pytest.MonkeyPatch, edit: Any) -> None:
    import peft.peft_model

    real = peft.peft_model.get_peft_model_state_dict

    def planted(*args: Any, **kwargs: Any) -> dict[str, Any]:
        return edit(dict(real(*args, **kwargs)))

    monkeypatch.setattr(peft.peft_model, "get_peft_model_state_dict", planted)


def test_save_that_drops_one_tensor_is_caught(sound: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    pipeline, loaded = sound
    assert run_check(pipeline, loaded, "lora", "save_load_roundtrip").passed
    dropped = []

    def drop_one(state: dict[str, Any]) -> dict[str, Any]:
        key = sorted(k for k in state if "lora_B" in k)[0]
        dropped.append(key)
        del state[key]  # planted defect: one trainable tensor silently missing from the file
        return state

    _patch_state_dict(monkeypatch, drop_one)
    measurement = run_check(pipeline, loaded, "lora", "save_load_roundtrip")
    assert not measurement.passed
    assert f"1 missing tensor(s): ['{dropped[0]}" in measurement.message
    assert "reloaded vs adapter" in measurement.message  # the reload lost that tensor's effect


def test_save_that_writes_an_empty_tensor_is_caught(sound: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    pipeline, loaded = sound

    def empty_one(state: dict[str, Any]) -> dict[str, Any]:
        key = sorted(state)[0]
        state[key] = state[key][:0]  # planted defect: a placeholder instead of the tensor
        return state

    _patch_state_dict(monkeypatch, empty_one)
    measurement = run_check(pipeline, loaded, "lora", "save_load_roundtrip")
    assert not measurement.passed and "1 empty tensor(s)" in measurement.message


def test_checkpoint_carrying_base_weights_is_caught(sound: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    pipeline, loaded = sound
    base = pipeline.artifact(loaded, "lora").base.model

    def add_base(state: dict[str, Any]) -> dict[str, Any]:
        weight = base.get_input_embeddings().weight  # planted defect: a base weight saved too
        state["base_model.model.model.decoder.embed_tokens.weight"] = weight.detach().clone()
        return state

    _patch_state_dict(monkeypatch, add_base)
    measurement = run_check(pipeline, loaded, "lora", "save_load_roundtrip")
    assert not measurement.passed
    assert "1 base weight(s) in the adapter checkpoint" in measurement.message
    assert "trainable bytes" in measurement.message  # and it blows the size bound


def test_pickle_checkpoint_is_caught(sound: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    from peft import PeftModel

    pipeline, loaded = sound
    real = PeftModel.save_pretrained

    def pickled(self: Any, folder: Any, **kwargs: Any) -> None:
        real(self, folder, **{**kwargs, "safe_serialization": False})  # planted defect: torch.save

    monkeypatch.setattr(PeftModel, "save_pretrained", pickled)
    measurement = run_check(pipeline, loaded, "lora", "save_load_roundtrip")
    assert not measurement.passed and "no adapter_model.safetensors" in measurement.message
    assert "pickle-based files" in measurement.message


def test_size_bound_is_enforced(sound: Any) -> None:
    pipeline, loaded = sound
    measurement = run_check(pipeline, loaded, "lora", "save_load_roundtrip", max_mib=0.001)
    assert not measurement.passed and "MiB > 0.001 MiB" in measurement.message


def test_adapter_equal_to_base_cannot_pass_the_reload() -> None:
    pipeline, loaded = quiet_pipeline(), load(tiny_suite({"lora": LORA}, train={"max_steps": 2}))
    artifact = pipeline.artifact(loaded, "lora")
    with torch.no_grad():  # planted defect: an adapter that does nothing reloads "exactly"
        for name, param in artifact.model.named_parameters():
            if "lora_B" in name:
                param.zero_()
    measurement = run_check(pipeline, loaded, "lora", "save_load_roundtrip")
    assert not measurement.passed and "the reload proves nothing" in measurement.message


# -- modules_to_save and trainable tokens (issue 26) ---------------------------------------------

COPIES = {
    "lm_head_copy": {**LORA, "modules_to_save": ["lm_head"]},
    "token_rows": {**LORA, "trainable_token_indices": {"embed_tokens": [1, 2, 3]}},
}


@pytest.fixture(scope="module")
def copies() -> Any:
    """LoRA on tiny-llama (untied embeddings) with a trained lm_head copy, and with trained token rows."""
    return quiet_pipeline(), load(tiny_suite(COPIES, model="tiny-llama"))


@pytest.mark.parametrize("method", list(COPIES))
def test_a_trained_copy_saved_under_the_base_modules_name_is_not_a_base_weight(copies: Any, method: str) -> None:
    # peft saves the modules_to_save copy as base_model.model.lm_head.weight, the base module's name
    pipeline, loaded = copies
    measurement = run_check(pipeline, loaded, method, "save_load_roundtrip")
    assert measurement.passed, measurement.message
    assert not measurement.details["base_weights_leaked"]
    assert measurement.details["tensors_saved"] == measurement.details["tensors_expected"]
    if method == "lm_head_copy":
        base = pipeline.artifact(loaded, method).base.model
        saved = pipeline.artifact(loaded, method).model.base_model.model.lm_head.modules_to_save["default"].weight
        assert not torch.equal(saved, base.lm_head.weight)  # trained: the copy is not the base's tensor


def test_a_frozen_base_weight_beside_a_modules_to_save_copy_is_caught(
    copies: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    pipeline, loaded = copies
    base = pipeline.artifact(loaded, "lm_head_copy").base.model

    def add_base(state: dict[str, Any]) -> dict[str, Any]:
        # planted defect: a frozen base weight saved beside the lm_head copy
        state["base_model.model.model.embed_tokens.weight"] = base.get_input_embeddings().weight.detach().clone()
        return state

    _patch_state_dict(monkeypatch, add_base)
    measurement = run_check(pipeline, loaded, "lm_head_copy", "save_load_roundtrip")
    assert not measurement.passed
    assert measurement.details["base_weights_leaked"] == ["base_model.model.model.embed_tokens.weight"]
    assert "1 base weight(s) in the adapter checkpoint" in measurement.message


def test_the_frozen_base_weight_saved_in_place_of_the_trained_copy_is_caught(
    copies: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    pipeline, loaded = copies
    base = pipeline.artifact(loaded, "lm_head_copy").base.model

    def swap(state: dict[str, Any]) -> dict[str, Any]:
        # planted defect: the original lm_head saved under the copy's key instead of the trained copy
        state["base_model.model.lm_head.weight"] = base.lm_head.weight.detach().clone()
        return state

    _patch_state_dict(monkeypatch, swap)
    measurement = run_check(pipeline, loaded, "lm_head_copy", "save_load_roundtrip")
    assert not measurement.passed
    assert measurement.details["base_weights_leaked"] == ["base_model.model.lm_head.weight"]
    assert measurement.details["wrong_value"] == ["base_model.model.lm_head.weight"]

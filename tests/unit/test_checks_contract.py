"""The adapter-contract checks of issue 16 pass on sound adapters and fail on the defect each
test plants: a random-B LoRA at init, a load that gets trainability wrong, a merged save that
drops or scales a tensor, a safe_merge that lets a NaN through, a renamed adapter that trains nothing."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from pydantic import ValidationError

from helpers import load, quiet_pipeline, run_check, tiny_suite
from peftcheck.checks import NotApplicable

LORA = {"peft": "LoraConfig", "r": 4, "lora_alpha": 8, "target_modules": ["q_proj", "v_proj"]}
IA3 = {"peft": "IA3Config", "target_modules": ["k_proj", "fc2"], "feedforward_modules": ["fc2"]}
PROMPT = {"peft": "PromptTuningConfig", "num_virtual_tokens": 4}
CONTRACT = ("init_identity", "inference_load", "merged_save_load", "safe_merge", "adapter_name_invariance")


@pytest.fixture(scope="module")
def sound() -> Any:
    """Tiny LoRA, IA3, prompt tuning and a random-B LoRA, trained once for the module."""
    methods = {"lora": LORA, "ia3": IA3, "prompt": PROMPT, "random_b": {**LORA, "init_lora_weights": False}}
    # random_b: the suite chose peft's random init; it is not held to the identity promise
    return quiet_pipeline(), load(tiny_suite(methods))


@pytest.mark.parametrize("method", ["lora", "ia3"])
def test_sound_adapter_passes_every_contract(sound: Any, method: str) -> None:
    pipeline, loaded = sound
    results = {check: run_check(pipeline, loaded, method, check) for check in CONTRACT}
    for check, measurement in results.items():
        assert measurement.passed, f"{check}: {measurement.message}"
    init = results["init_identity"].details
    assert init["untrained_vs_base"]["max_abs"] == 0.0 and init["effect_vs_base"]["max_abs"] > 1e-2
    assert not init["rebuild_differs"]  # the rebuilt untrained adapter is the one training started from
    load_ = results["inference_load"].details
    assert load_["frozen_trainable"] == 0 and load_["trainable_count"] == load_["expected_trainable"] > 0
    assert all(d["max_abs"] == 0.0 for d in load_["comparisons"].values())
    merged = results["merged_save_load"].details
    assert any(f.endswith(".safetensors") for f in merged["files"]) and not merged["missing_keys"]
    assert merged["comparisons"]["reloaded vs merged in memory"]["max_abs"] == 0.0
    assert merged["comparisons"]["reloaded merged vs adapter"]["max_abs"] < 1e-5
    safe = results["safe_merge"].details
    assert safe["safe_vs_merge"]["max_abs"] == 0.0 and safe["weight_apart"] == 0.0
    assert "NaNs detected" in safe["refusal"]
    renamed = results["adapter_name_invariance"].details
    assert renamed["counts"]["other"] == renamed["counts"]["default"] == renamed["loaded_trainable"] > 0


def test_contracts_leave_the_trained_model_untouched(sound: Any) -> None:
    pipeline, loaded = sound
    artifact = pipeline.artifact(loaded, "lora")
    before = {n: p.detach().clone() for n, p in artifact.model.named_parameters()}
    trainable = {n for n, p in artifact.model.named_parameters() if p.requires_grad}
    for check in CONTRACT:
        run_check(pipeline, loaded, "lora", check)
    after = dict(artifact.model.named_parameters())
    assert before.keys() == after.keys() and all(torch.equal(before[n], after[n]) for n in before)
    assert {n for n, p in after.items() if p.requires_grad} == trainable
    assert list(artifact.model.peft_config) == ["default"]


def test_prompt_learning_is_not_applicable_with_the_reason(sound: Any) -> None:
    pipeline, loaded = sound
    with pytest.raises(NotApplicable, match="virtual tokens initialised away from the base"):
        run_check(pipeline, loaded, "prompt", "init_identity")
    for check in ("merged_save_load", "safe_merge"):
        with pytest.raises(NotApplicable, match="no weights to merge"):
            run_check(pipeline, loaded, "prompt", check)
    renamed = run_check(pipeline, loaded, "prompt", "adapter_name_invariance")
    assert renamed.passed, renamed.message  # loaded frozen: peft refuses is_trainable=True for prompts


def test_identity_promise_is_method_knowledge() -> None:
    from peft import FourierFTConfig, IA3Config, LoHaConfig, LoraConfig, PrefixTuningConfig

    from peftcheck.methods import identity_at_init, init_setting

    assert identity_at_init(LoraConfig()) is None and init_setting(LoraConfig()) == "init_lora_weights=True"
    assert "init_lora_weights=False: a random init, chosen by the suite" in identity_at_init(
        LoraConfig(init_lora_weights=False)
    )
    assert identity_at_init(IA3Config()) is None
    loftq = LoraConfig()
    loftq.init_lora_weights = "loftq"  # set after construction: LoftQ's own checks need scipy
    assert "LoftQ starts A and B at the quantization residual" in identity_at_init(loftq)
    assert "virtual tokens" in identity_at_init(PrefixTuningConfig(num_virtual_tokens=2))
    assert identity_at_init(LoHaConfig()) is None and init_setting(LoHaConfig()) == "init_weights=True"
    assert "knows no identity-at-init promise for FourierFTConfig" in identity_at_init(FourierFTConfig())


def test_a_random_init_chosen_by_the_suite_is_not_applicable(sound: Any) -> None:
    pipeline, loaded = sound
    with pytest.raises(NotApplicable, match="init_lora_weights=False: a random init, chosen by the suite"):
        run_check(pipeline, loaded, "random_b", "init_identity")
    assert run_check(pipeline, loaded, "random_b", "adapter_name_invariance").passed  # same seed, same B


def test_a_default_init_that_starts_off_the_base_is_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    from peft.tuners.lora.layer import LoraLayer

    real = LoraLayer.reset_lora_parameters

    def planted(self: Any, adapter_name: str, *args: Any, **kwargs: Any) -> None:
        real(self, adapter_name, *args, **kwargs)
        if adapter_name in self.lora_B:  # planted defect: the default init leaves B random
            torch.nn.init.normal_(self.lora_B[adapter_name].weight, std=0.1)

    monkeypatch.setattr(LoraLayer, "reset_lora_parameters", planted)
    pipeline, loaded = quiet_pipeline(), load(tiny_suite({"lora": LORA}, train={"max_steps": 2}))
    measurement = run_check(pipeline, loaded, "lora", "init_identity")
    assert not measurement.passed
    assert "untrained adapter (init_lora_weights=True) vs base: max |Δlogit|" in measurement.message
    assert measurement.value > 1e-2


def test_adapter_equal_to_the_base_fails_every_contract() -> None:
    pipeline, loaded = quiet_pipeline(), load(tiny_suite({"lora": LORA}, train={"max_steps": 2}))
    artifact = pipeline.artifact(loaded, "lora")
    with torch.no_grad():  # planted defect: the trained adapter does nothing
        for name, param in artifact.model.named_parameters():
            if "lora_B" in name:
                param.zero_()
    artifact.memo.clear()
    expected = {
        "init_identity": "the identity proves nothing",
        "inference_load": "the reload proves nothing",
        "merged_save_load": "the reloaded merged model equals the base",
        "safe_merge": "the merge moved no base weight",
        "adapter_name_invariance": "equal outputs under two names proves nothing",
    }
    for check, why in expected.items():
        measurement = run_check(pipeline, loaded, "lora", check)
        assert not measurement.passed and why in measurement.message, (check, measurement.message)


def _patch_load(monkeypatch: pytest.MonkeyPatch, edit: Any) -> None:
    from peft import PeftModel

    real = PeftModel.from_pretrained.__func__

    def planted(cls: Any, *args: Any, **kwargs: Any) -> Any:
        model = real(cls, *args, **kwargs)
        edit(model, kwargs.get("is_trainable", False))
        return model

    monkeypatch.setattr(PeftModel, "from_pretrained", classmethod(planted))


def test_frozen_load_that_leaves_the_adapter_trainable_is_caught(sound: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    pipeline, loaded = sound

    def unfreeze(model: Any, is_trainable: bool) -> None:
        for name, param in model.named_parameters():
            if "lora_" in name:  # planted defect (peft#282 in reverse): frozen load stays trainable
                param.requires_grad_(True)

    _patch_load(monkeypatch, unfreeze)
    measurement = run_check(pipeline, loaded, "lora", "inference_load")
    assert not measurement.passed and measurement.value == 2048
    assert "is_trainable=False left 2,048 parameters trainable" in measurement.message


def test_trainable_load_that_freezes_the_adapter_is_caught(sound: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    pipeline, loaded = sound

    def freeze(model: Any, is_trainable: bool) -> None:
        for param in model.parameters():  # planted defect: requires_grad dropped on load
            param.requires_grad_(False)

    _patch_load(monkeypatch, freeze)
    measurement = run_check(pipeline, loaded, "lora", "inference_load")
    assert not measurement.passed
    assert "is_trainable=True gives 0 trainable parameters, the trained adapter 2,048" in measurement.message
    assert "trainable tensors differ from the trained ones" in measurement.message


def _patch_merged_save(monkeypatch: pytest.MonkeyPatch, edit: Any) -> list[str]:
    import transformers.modeling_utils

    real, touched = transformers.modeling_utils.safe_save_file, []

    def planted(tensors: dict[str, Any], *args: Any, **kwargs: Any) -> Any:
        tensors = dict(tensors)
        key = sorted(k for k in tensors if "layers.0.self_attn.v_proj.weight" in k)[0]
        touched.append(key)
        edit(tensors, key)
        return real(tensors, *args, **kwargs)

    monkeypatch.setattr(transformers.modeling_utils, "safe_save_file", planted)
    return touched


def test_merged_save_that_drops_a_tensor_is_caught(sound: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    pipeline, loaded = sound
    touched = _patch_merged_save(monkeypatch, lambda tensors, key: tensors.pop(key))  # planted: one weight lost
    measurement = run_check(pipeline, loaded, "lora", "merged_save_load")
    assert not measurement.passed and touched
    assert "1 missing keys loading the merged model" in measurement.message
    assert "reloaded merged vs adapter: max |Δlogit|" in measurement.message


def test_merged_save_that_scales_a_weight_is_caught(sound: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    pipeline, loaded = sound

    def scale(tensors: dict[str, Any], key: str) -> None:
        tensors[key] = tensors[key] * 1.01  # planted defect: one merged weight written 1% off

    _patch_merged_save(monkeypatch, scale)
    measurement = run_check(pipeline, loaded, "lora", "merged_save_load")
    assert not measurement.passed and "missing keys" not in measurement.message
    assert "reloaded merged vs adapter" in measurement.message
    assert "reloaded vs merged in memory" in measurement.message


def test_merged_save_load_skips_a_quantized_base(sound: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    pipeline, loaded = sound
    monkeypatch.setattr(pipeline.artifact(loaded, "lora").base, "quantization", "nf4")
    with pytest.raises(NotApplicable, match="nf4 base: merge_and_unload re-quantizes"):
        run_check(pipeline, loaded, "lora", "merged_save_load")


def _patch_lora_merge(monkeypatch: pytest.MonkeyPatch, planted: Any) -> None:
    from peft.tuners.lora.layer import Linear

    real = Linear.merge
    def merge(self: Any, safe_merge: bool = False, adapter_names: Any = None) -> None:
        planted(real, self, safe_merge, adapter_names)

    monkeypatch.setattr(Linear, "merge", merge)


def test_safe_merge_that_lets_a_nan_through_is_caught(sound: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    pipeline, loaded = sound
    # planted defect: safe_merge=True silently runs the unchecked merge
    _patch_lora_merge(monkeypatch, lambda real, self, safe, names: real(self, safe_merge=False, adapter_names=names))
    measurement = run_check(pipeline, loaded, "lora", "safe_merge")
    assert not measurement.passed and "without refusing" in measurement.message
    assert measurement.details["refusal"] is None and "lora_A" in measurement.details["nan_planted_in"]


def test_safe_merge_that_merges_differently_is_caught(sound: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    pipeline, loaded = sound

    def planted(real: Any, self: Any, safe: bool, names: Any) -> None:
        real(self, safe_merge=safe, adapter_names=names)
        if safe:  # planted defect: the safe path adds 1% of the delta once more
            for adapter in self.merged_adapters:
                self.get_base_layer().weight.data += 0.01 * self.get_delta_weight(adapter)

    _patch_lora_merge(monkeypatch, planted)
    measurement = run_check(pipeline, loaded, "lora", "safe_merge")
    assert not measurement.passed and "safe_merge vs merge: max |Δlogit|" in measurement.message
    assert "is off a normal merge's by" in measurement.message


def test_safe_merge_is_not_applicable_without_the_argument(sound: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    from peft.tuners.lora.model import LoraModel

    pipeline, loaded = sound
    monkeypatch.setattr(LoraModel, "merge_and_unload", lambda self, progressbar=False: None)
    with pytest.raises(NotApplicable, match="merge_and_unload takes no safe_merge"):
        run_check(pipeline, loaded, "lora", "safe_merge")


def test_renamed_adapter_with_nothing_trainable_is_caught(sound: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    import peft

    pipeline, loaded = sound
    real = peft.get_peft_model

    def planted(model: Any, config: Any, adapter_name: str = "default", **kwargs: Any) -> Any:
        wrapped = real(model, config, adapter_name=adapter_name, **kwargs)
        if adapter_name != "default":  # planted defect (peft#1410): a custom name trains nothing
            for param in wrapped.parameters():
                param.requires_grad_(False)
        return wrapped

    monkeypatch.setattr(peft, "get_peft_model", planted)
    measurement = run_check(pipeline, loaded, "lora", "adapter_name_invariance")
    assert not measurement.passed and measurement.value == 0
    assert "adapter 'other' has 0 trainable parameters, 'default' 2,048" in measurement.message


def test_adapter_name_must_differ_from_default(sound: Any) -> None:
    pipeline, loaded = sound
    with pytest.raises(ValidationError, match="other than 'default'"):
        run_check(pipeline, loaded, "lora", "adapter_name_invariance", adapter_name="default")
    renamed = run_check(pipeline, loaded, "lora", "adapter_name_invariance", adapter_name="second")
    assert renamed.passed and renamed.details["counts"] == {"default": 2048, "second": 2048}


def test_renamed_adapter_with_nothing_trainable_under_either_name_is_caught(
    sound: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    import peft

    pipeline, loaded = sound
    pipeline.artifact(loaded, "lora")  # trained before the plant
    real = peft.get_peft_model

    def planted(model: Any, config: Any, adapter_name: str = "default", **kwargs: Any) -> Any:
        wrapped = real(model, config, adapter_name=adapter_name, **kwargs)
        for param in wrapped.parameters():  # planted defect: the rebuilt method trains nothing, under any name
            param.requires_grad_(False)
        return wrapped

    monkeypatch.setattr(peft, "get_peft_model", planted)
    measurement = run_check(pipeline, loaded, "lora", "adapter_name_invariance")
    # issue 26: 0 == 0 trainable parameters and no tensor differing passed
    assert not measurement.passed and measurement.details["counts"] == {"default": 0, "other": 0}
    assert "no trainable tensor under 'default' or 'other'" in measurement.message


def test_inference_load_of_an_adapter_with_nothing_trainable_is_caught(
    sound: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    pipeline, loaded = sound
    artifact = pipeline.artifact(loaded, "lora")
    trainable = [p for p in artifact.model.parameters() if p.requires_grad]
    _patch_load(monkeypatch, lambda model, is_trainable: [p.requires_grad_(False) for p in model.parameters()])
    monkeypatch.setitem(artifact.record, "trainable_params", 0)
    try:
        for param in trainable:  # planted: the trained adapter and its reload train nothing
            param.requires_grad_(False)
        measurement = run_check(pipeline, loaded, "lora", "inference_load")
    finally:
        for param in trainable:
            param.requires_grad_(True)
    # issue 26: 0 trainable after is_trainable=True equalled the 0 expected and passed
    assert not measurement.passed and measurement.details["trainable_count"] == 0
    assert "the trained adapter has no trainable parameter" in measurement.message

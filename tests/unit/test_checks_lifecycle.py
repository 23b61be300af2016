"""The lifecycle checks of issue 16 pass on sound adapters and fail on the defect each names:
gradient checkpointing that trains nothing (transformers#25841), a merged adapter that stays
merged when disabled, generate() that forgets a prompt-learning adapter after disable_adapter()
(peft#1501), and merges of several adapters that drop or rescale one of them."""

from __future__ import annotations

import contextlib
import copy
from typing import Any

import pytest
import torch

from helpers import MIXED_ADAPTER_NAMES, PREFIX_GENERATE, load, quiet_pipeline, run_check, tiny_suite
from peftcheck.checks import NotApplicable

LORA = {"peft": "LoraConfig", "r": 4, "lora_alpha": 8, "target_modules": ["q_proj", "v_proj"]}
METHODS = {
    "lora": LORA,
    "dora": {**LORA, "use_dora": True},
    "ia3": {"peft": "IA3Config", "target_modules": ["k_proj", "fc2"], "feedforward_modules": ["fc2"]},
    "prompt": {"peft": "PromptTuningConfig", "num_virtual_tokens": 4},
    "prefix": {"peft": "PrefixTuningConfig", "num_virtual_tokens": 4},
    "lora_k": {**LORA, "r": 2, "target_modules": ["k_proj"]},  # a second LoRA on other modules and rank
    "loha": {"peft": "LoHaConfig", "target_modules": ["q_proj"]},
}
LIFECYCLE = ("gradient_checkpointing", "merged_disable", "generate_after_disable", "multi_adapter_merge")


@pytest.fixture(scope="module")
def sound() -> Any:
    return quiet_pipeline(), load(tiny_suite(METHODS))


@pytest.mark.parametrize("method", ["lora", "dora", "ia3"])
def test_sound_tuner_adapters_pass(sound: Any, method: str) -> None:
    pipeline, loaded = sound
    results = {check: run_check(pipeline, loaded, method, check) for check in LIFECYCLE}
    for check, measurement in results.items():
        assert measurement.passed, f"{check}: {measurement.message}"
    runs = results["gradient_checkpointing"].details["runs"]
    assert set(runs) == {"use_reentrant=True", "use_reentrant=False"}
    assert all(run["lost_count"] == 0 and run["max_relative"] <= 1e-6 for run in runs.values())
    generated = results["generate_after_disable"].details["tokens"]
    assert generated["disabled"] == generated["base"] and generated["after"] == generated["adapter"]
    merges = results["multi_adapter_merge"].details
    assert all(d["max_abs"] < 1e-4 for d in merges["comparisons"].values())
    assert all(d["max_abs"] > 1e-2 for d in merges["apart"].values())
    cat = "add_weighted_adapter cat vs both active"
    assert (cat in merges["comparisons"]) == (method == "lora"), merges["weighted cat"]


def test_prompt_learning_generates_and_says_what_does_not_apply(sound: Any) -> None:
    pipeline, loaded = sound
    generated = run_check(pipeline, loaded, "prompt", "generate_after_disable")
    assert generated.passed, generated.message
    assert generated.details["prompts_with_other_tokens"] > 0
    assert generated.details["comparisons"]["first generated step vs forward"]["max_abs"] < 1e-5
    for method in ("prompt", "prefix"):
        for check in ("merged_disable", "multi_adapter_merge"):
            with pytest.raises(NotApplicable, match="no weights to merge"):
                run_check(pipeline, loaded, method, check)
    assert run_check(pipeline, loaded, "prompt", "gradient_checkpointing").passed
    with pytest.raises(NotApplicable, match="peft#869"):
        run_check(pipeline, loaded, "prefix", "gradient_checkpointing")


@PREFIX_GENERATE.mark()
def test_prefix_tuning_generates_from_its_forward(sound: Any) -> None:
    """The check finds tests/unit/test_peft_prefix_generate.py's upstream bug on a trained prefix."""
    pipeline, loaded = sound
    generated = run_check(pipeline, loaded, "prefix", "generate_after_disable")
    assert generated.passed, generated.message


def _fresh(methods: dict[str, Any]) -> tuple[Any, Any]:
    pipeline, loaded = quiet_pipeline(), load(tiny_suite(methods))
    return pipeline, loaded


def test_reentrant_checkpointing_without_input_grads_fails(monkeypatch: pytest.MonkeyPatch) -> None:
    """transformers#25841: frozen embeddings' output does not require grad, so reentrant
    checkpointing gives the adapter inside checkpointed layers no gradient. Planted as it was
    before the fix: enabling checkpointing does not make the embeddings' output require grad."""
    from transformers import PreTrainedModel

    monkeypatch.setattr(PreTrainedModel, "enable_input_require_grads", lambda self: None)
    pipeline, loaded = _fresh({"lora": LORA})
    artifact = pipeline.artifact(loaded, "lora")
    planted = copy.deepcopy(artifact.model)
    planted.get_base_model().disable_input_require_grads()
    artifact.model = planted
    measurement = run_check(pipeline, loaded, "lora", "gradient_checkpointing")
    assert not measurement.passed
    # every layer is checkpointed and the adapter lives only inside them: the loss has no graph
    assert "use_reentrant=True: the training step raised RuntimeError: element 0 of tensors does not require grad" in (
        measurement.message
    )
    assert measurement.details["runs"]["use_reentrant=False"]["lost_count"] == 0  # non-reentrant is unaffected


def test_disabling_a_merged_adapter_that_stays_merged_fails(sound: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    from peft.tuners.lora import layer

    pipeline, loaded = sound
    monkeypatch.setattr(layer.Linear, "unmerge", lambda self: None)  # disabled, but the merge stays in W
    measurement = run_check(pipeline, loaded, "lora", "merged_disable")
    assert not measurement.passed and "merged, disabled vs base: max |Δlogit|" in measurement.message
    assert run_check(pipeline, loaded, "lora", "disable_equals_base").passed  # unmerged disable is fine


def test_generation_that_forgets_the_prompt_after_disable_fails(sound: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """peft#1501: leaving disable_adapter() left generation preparing inputs as the base does, so
    prompt learning generated as the base; a forward pass after the context was right."""
    from peft import PeftModel

    pipeline, loaded = sound
    real = PeftModel.disable_adapter

    @contextlib.contextmanager
    def leaky(self: Any) -> Any:
        with real(self):
            yield
        self.prepare_inputs_for_generation = self.base_model.prepare_inputs_for_generation

    artifact = pipeline.artifact(loaded, "prompt")
    restore = artifact.model.prepare_inputs_for_generation
    monkeypatch.setattr(PeftModel, "disable_adapter", leaky)
    try:
        measurement = run_check(pipeline, loaded, "prompt", "generate_after_disable")
        assert not measurement.passed
        assert "after disable vs adapter (generation scores)" in measurement.message
        assert "after disable vs adapter: greedy tokens differ" in measurement.message
        artifact.model.prepare_inputs_for_generation = restore
        # the forward-only check cannot see it
        assert run_check(pipeline, loaded, "prompt", "disable_equals_base").passed
    finally:
        artifact.model.prepare_inputs_for_generation = restore


def test_a_merge_that_drops_the_second_adapter_fails(sound: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """A merge of several adapters that folds in only the first (peft#3608's kind: a merge of
    two adapters on one layer that is not their unmerged output)."""
    from peft.tuners.lora import layer

    pipeline, loaded = sound
    real = layer.Linear.merge

    def first_only(self: Any, safe_merge: bool = False, adapter_names: Any = None) -> None:
        names = adapter_names if adapter_names is not None else self.active_adapters
        real(self, safe_merge=safe_merge, adapter_names=list(names)[:1])

    monkeypatch.setattr(layer.Linear, "merge", first_only)
    measurement = run_check(pipeline, loaded, "lora", "multi_adapter_merge")
    assert not measurement.passed and "both merged vs both active: max |Δlogit|" in measurement.message


def test_a_weighted_cat_with_the_wrong_weights_fails(sound: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    from peft.tuners.lora import model as lora_model

    pipeline, loaded = sound
    real = lora_model.LoraModel.add_weighted_adapter

    def halved(self: Any, adapters: Any, weights: Any, *args: Any, **kwargs: Any) -> Any:
        return real(self, adapters, [w / 2 for w in weights], *args, **kwargs)

    monkeypatch.setattr(lora_model.LoraModel, "add_weighted_adapter", halved)
    measurement = run_check(pipeline, loaded, "lora", "multi_adapter_merge")
    assert not measurement.passed and "add_weighted_adapter cat vs both active" in measurement.message


def test_a_second_adapter_that_does_nothing_fails(sound: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    from peftcheck.checks import merging

    pipeline, loaded = sound
    real = merging._second_adapter_state

    def inert(peft_model: Any, seed: int, trained: set[str]) -> dict[str, Any]:
        return {k: torch.zeros_like(v) if "lora_B" in k else v for k, v in real(peft_model, seed, trained).items()}

    monkeypatch.setattr(merging, "_second_adapter_state", inert)
    measurement = run_check(pipeline, loaded, "lora", "multi_adapter_merge")
    assert not measurement.passed and "both vs first alone: equal" in measurement.message


def test_adapters_of_the_suite_share_one_base(sound: Any) -> None:
    pipeline, loaded = sound
    same = run_check(pipeline, loaded, "lora", "co_resident", adapters=["lora_k"])
    assert same.passed, same.message
    assert all(d["max_abs"] < 1e-5 for d in same.details["comparisons"].values())
    assert "mixed batch vs separate runs" in same.details["comparisons"]
    # LoRA and LoHa on the same q_proj: peft's PeftMixedModel, the LoHa layer wrapping the LoRA one
    mixed_types = run_check(pipeline, loaded, "lora", "co_resident", adapters=["loha"], mixed_batch=False)
    assert mixed_types.passed, mixed_types.message
    with pytest.raises(NotApplicable, match="cannot load these adapters on one base"):
        run_check(pipeline, loaded, "lora", "co_resident", adapters=["ia3"])  # PeftMixedModel has no IA3


@MIXED_ADAPTER_NAMES.mark()
def test_a_mixed_batch_over_adapters_of_two_types(sound: Any) -> None:
    """The check finds tests/unit/test_peft_mixed_adapter_names.py's upstream bug."""
    pipeline, loaded = sound
    measurement = run_check(pipeline, loaded, "lora", "co_resident", adapters=["loha"])
    assert measurement.passed, measurement.message


def _plant_after_load(monkeypatch: pytest.MonkeyPatch, damage: Any) -> None:
    """``damage`` the second adapter as it loads beside the first (not when it loads alone)."""
    from peft import PeftModel

    real = PeftModel.load_adapter

    def load_adapter(self: Any, model_id: Any, adapter_name: str, *args: Any, **kwargs: Any) -> Any:
        out = real(self, model_id, adapter_name, *args, **kwargs)
        if adapter_name == "lora_k":
            damage(self, adapter_name)
        return out

    monkeypatch.setattr(PeftModel, "load_adapter", load_adapter)


def test_a_second_adapter_that_loads_as_a_no_op_fails(sound: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    def zero_b(model: Any, adapter: str) -> None:
        with torch.no_grad():
            for name, param in model.named_parameters():
                if "lora_B" in name and adapter in name.split("."):
                    param.zero_()

    _plant_after_load(monkeypatch, zero_b)
    pipeline, loaded = sound
    measurement = run_check(pipeline, loaded, "lora", "co_resident", adapters=["lora_k"])
    assert not measurement.passed and "lora_k on the shared base vs alone: max |Δlogit|" in measurement.message


def test_a_second_adapter_on_fewer_modules_fails(sound: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    from peft.tuners.lora import LoraLayer

    def drop_one_layer(model: Any, adapter: str) -> None:
        layer = next(m for m in model.modules() if isinstance(m, LoraLayer) and adapter in m.lora_A)
        del layer.lora_A[adapter], layer.lora_B[adapter]

    _plant_after_load(monkeypatch, drop_one_layer)
    pipeline, loaded = sound
    measurement = run_check(pipeline, loaded, "lora", "co_resident", adapters=["lora_k"])
    assert not measurement.passed and "lora_k on the shared base holds 256 parameters in 2 tensors, alone 512 in 4" in (
        measurement.message
    ), measurement.message


def test_a_load_that_crashes_fails_with_pefts_error(sound: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """A combination peft accepts but crashes on (AdaLoRA in a PeftMixedModel, with the kept-rank
    pattern of a trained adapter) is a failure naming the error, not a traceback or a skip."""
    from peft import PeftMixedModel

    def crash(self: Any, *args: Any, **kwargs: Any) -> None:
        raise AttributeError("'PeftMixedModel' object has no attribute 'resize_modules_by_rank_pattern'")

    monkeypatch.setattr(PeftMixedModel, "load_adapter", crash)
    pipeline, loaded = sound
    measurement = run_check(pipeline, loaded, "lora", "co_resident", adapters=["loha"], mixed_batch=False)
    assert not measurement.passed
    assert measurement.message.startswith("loading loha beside lora raised AttributeError: 'PeftMixedModel'")

"""The core checks pass on a sound adapter and fail on the defect each one names (planted)."""

from __future__ import annotations

from typing import Any

import pytest

import peftcheck.methods
from helpers import BNB_CPU_REPACKING, load, quiet_pipeline, run_check, tiny_suite

LORA = {"peft": "LoraConfig", "r": 4, "lora_alpha": 8, "target_modules": ["q_proj", "v_proj"]}


@pytest.fixture(scope="module")
def sound() -> Any:
    """One tiny LoRA, trained once for every test that needs a sound adapter."""
    pipeline = quiet_pipeline()
    loaded = load(tiny_suite({"lora": LORA, "ia3": {"peft": "IA3Config", "target_modules": ["k_proj", "fc2"],
                                                      "feedforward_modules": ["fc2"]}}))
    return pipeline, loaded


@pytest.mark.parametrize("method", ["lora", "ia3"])
def test_sound_adapter_passes_parameter_checks(sound: Any, method: str) -> None:
    pipeline, loaded = sound
    ratio = run_check(pipeline, loaded, method, "trainable_ratio", max=0.2)
    assert ratio.passed, ratio.message
    assert ratio.details["trainable"] == ratio.details["analytic"] > 0
    for check in ("target_coverage", "base_frozen"):
        measurement = run_check(pipeline, loaded, method, check)
        assert measurement.passed, measurement.message


def test_sound_adapter_learns(sound: Any) -> None:
    pipeline, loaded = sound
    loss = run_check(pipeline, loaded, "lora", "loss_decrease", min_relative=0.005)
    assert loss.passed, loss.message
    ppl = run_check(pipeline, loaded, "lora", "eval_perplexity", max_ratio_to_base=1.0)
    assert ppl.passed and ppl.value < 1.0, ppl.message
    # LoRA's B starts at zero: before its first step the adapter is the base
    assert ppl.details["init_perplexity"] == pytest.approx(ppl.details["base_perplexity"], rel=1e-5)
    assert "untrained adapter" in ppl.message


def test_initial_perplexity_shows_a_non_identity_init() -> None:
    # a prefix is random key/value vectors from the start: the untrained adapter is not the base
    loaded = load(tiny_suite({"prefix": {"peft": "PrefixTuningConfig", "num_virtual_tokens": 4}}))
    ppl = run_check(quiet_pipeline(), loaded, "prefix", "eval_perplexity", max_ratio_to_base=100.0)
    init, base = ppl.details["init_perplexity"], ppl.details["base_perplexity"]
    assert abs(init - base) > 1e-3 * base, ppl.message


def test_target_typo_is_caught() -> None:
    # planted: a typo in one target_modules entry; peft wraps v_proj and ignores "q_prj"
    loaded = load(tiny_suite({"typo": {**LORA, "target_modules": ["q_prj", "v_proj"]}}))
    measurement = run_check(quiet_pipeline(), loaded, "typo", "target_coverage")
    assert not measurement.passed
    assert "q_prj" in measurement.message and measurement.details["matches"]["v_proj"] == 2


def _unfreeze_base_weight(monkeypatch: pytest.MonkeyPatch) -> None:
    real = peftcheck.methods.apply_method

    def planted(model: Any, config: Any, **kwargs: Any) -> Any:
        peft_model = real(model, config, **kwargs)
        # planted defect: one base weight left trainable
        base = peft_model.get_base_model()
        base.model.decoder.layers[0].fc1.weight.requires_grad_(True)
        return peft_model

    monkeypatch.setattr(peftcheck.methods, "apply_method", planted)


def test_unfrozen_base_weight_is_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    _unfreeze_base_weight(monkeypatch)
    loaded = load(tiny_suite({"lora": LORA}))
    pipeline = quiet_pipeline()
    frozen = run_check(pipeline, loaded, "lora", "base_frozen")
    assert not frozen.passed
    assert frozen.details["changed"] == ["model.decoder.layers.0.fc1.weight"]
    count = run_check(pipeline, loaded, "lora", "trainable_ratio", max=0.5)
    assert not count.passed and "analytic" in count.message


def test_parameter_checks_over_nothing_do_not_pass(sound: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    # issue 26: an empty target list read "0 entries matched", an empty base "0 tensors unchanged"
    from peftcheck.checks import NotApplicable

    pipeline, loaded = sound
    monkeypatch.setattr(peftcheck.methods, "coverage_targets", lambda config: [])
    with pytest.raises(NotApplicable, match="names no entry to match"):
        run_check(pipeline, loaded, "lora", "target_coverage")
    artifact = pipeline.artifact(loaded, "lora")
    monkeypatch.setattr(type(artifact.base.training_source), "named_parameters", lambda self, *a, **k: iter(()))
    frozen = run_check(pipeline, loaded, "lora", "base_frozen")
    assert not frozen.passed and "nothing was checked" in frozen.message


def test_ratio_bound_is_enforced(sound: Any) -> None:
    pipeline, loaded = sound
    measurement = run_check(pipeline, loaded, "lora", "trainable_ratio", max=1e-6)
    assert not measurement.passed and "outside" in measurement.message


def test_no_learning_is_caught() -> None:
    # planted: a learning rate too small to move anything
    suite = tiny_suite({"lora": {**LORA, "train": {"learning_rate": 1e-12}}})
    pipeline, loaded = quiet_pipeline(), load(suite)
    loss = run_check(pipeline, loaded, "lora", "loss_decrease", min_relative=0.005)
    assert not loss.passed
    ppl = run_check(pipeline, loaded, "lora", "eval_perplexity", max_ratio_to_base=0.999)
    assert not ppl.passed and ppl.value == pytest.approx(1.0, abs=1e-3)


def test_prompt_tuning_skips_target_coverage() -> None:
    from peftcheck.checks import NotApplicable

    loaded = load(tiny_suite({"prompt": {"peft": "PromptTuningConfig", "num_virtual_tokens": 4}}))
    pipeline = quiet_pipeline()
    with pytest.raises(NotApplicable, match="no target_modules"):
        run_check(pipeline, loaded, "prompt", "target_coverage")
    count = run_check(pipeline, loaded, "prompt", "trainable_ratio", max=0.5)
    assert count.passed and count.details["trainable"] == 4 * 64


METHODS = {
    "adalora": {"peft": "AdaLoraConfig", "init_r": 6, "target_r": 2, "target_modules": ["q_proj", "v_proj"],
                "tinit": 1, "tfinal": 2, "deltaT": 1},
    "prefix": {"peft": "PrefixTuningConfig", "num_virtual_tokens": 4},
    "prefix_projection": {"peft": "PrefixTuningConfig", "num_virtual_tokens": 4, "prefix_projection": True,
                          "encoder_hidden_size": 16},
    "prompt": {"peft": "PromptTuningConfig", "num_virtual_tokens": 4},
    "ptuning": {"peft": "PromptEncoderConfig", "num_virtual_tokens": 4, "encoder_hidden_size": 16},
    "ia3": {"peft": "IA3Config", "target_modules": ["k_proj", "down_proj"], "feedforward_modules": ["down_proj"]},
    "lora_all_linear": {"peft": "LoraConfig", "r": 2, "target_modules": "all-linear"},
}


@pytest.fixture(scope="module")
def llama() -> Any:
    """Every seed method on tiny-llama (grouped-query attention), a few steps each."""
    suite = tiny_suite(METHODS, model="tiny-llama")
    suite["train"]["max_steps"] = 4
    return quiet_pipeline(), load(suite)


@pytest.mark.parametrize("method", sorted(METHODS))
def test_analytic_count_matches_every_method(llama: Any, method: str) -> None:
    pipeline, loaded = llama
    measurement = run_check(pipeline, loaded, method, "trainable_ratio", max=0.9)
    assert measurement.details["analytic"] is not None, measurement.details["formula"]
    assert measurement.passed, measurement.message
    assert run_check(pipeline, loaded, method, "base_frozen").passed


def test_adalora_budget_is_updated_every_step(llama: Any) -> None:
    pipeline, loaded = llama
    artifact = pipeline.artifact(loaded, "adalora")
    assert artifact.record["optimizer_hook_calls"] == 4
    # after tfinal the budget is fixed: some ranks of lora_E were masked to zero
    ranks = [int((p != 0).sum()) for n, p in artifact.model.named_parameters() if "lora_E" in n]
    assert ranks and min(ranks) < 6


def test_fixed_seed_gives_identical_measurements() -> None:
    suite = tiny_suite({"lora": {**LORA, "lora_dropout": 0.1}})
    suite["train"]["max_steps"] = 3
    records = [quiet_pipeline().artifact(load(suite), "lora").record for _ in range(2)]
    assert records[0]["loss_curve"] == records[1]["loss_curve"]
    assert records[0]["metrics"]["eval_perplexity"] == records[1]["metrics"]["eval_perplexity"]
    other_seed = tiny_suite({"lora": {**LORA, "lora_dropout": 0.1}})
    other_seed["train"].update(max_steps=3, seed=1)
    assert quiet_pipeline().artifact(load(other_seed), "lora").record["loss_curve"] != records[0]["loss_curve"]


@BNB_CPU_REPACKING
def test_four_bit_weights_count_as_the_weights_they_encode() -> None:
    pytest.importorskip("bitsandbytes")
    suite = tiny_suite({"lora": LORA, "qlora": {**LORA, "quantization": "nf4"}})
    suite["train"]["max_steps"] = 1
    pipeline, loaded = quiet_pipeline(), load(suite)
    full, packed = (pipeline.artifact(loaded, m).record for m in ("lora", "qlora"))
    assert packed["trainable_params"] == full["trainable_params"]
    assert packed["total_params"] == full["total_params"]

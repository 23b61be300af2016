"""Quantized bases (issue 27): base_frozen reads a quantized weight by the state it computes with,
and quantization_fidelity holds a quantized base to its float base; each passes a sound run and
fails the defect it names (planted)."""

from __future__ import annotations

from typing import Any

import pytest

import peftcheck.methods
from helpers import load, quiet_pipeline, run_check, tiny_suite
from peftcheck.checks.quantization import layer_states, scheme_of, state_changes
from test_bnb_dequantize_avx512 import DEQUANTIZE_4BIT_AVX512

pytestmark = pytest.mark.quant

LORA = {"peft": "LoraConfig", "r": 4, "lora_alpha": 8, "target_modules": ["q_proj", "v_proj"]}


@pytest.fixture(autouse=True)
def _bitsandbytes() -> None:
    pytest.importorskip("bitsandbytes")


def _quantized(scheme: str, model: str = "tiny-llama") -> tuple[Any, Any]:
    """(model, tokenizer) of a built-in fixture quantized as ``scheme`` (nf4+dq: double quantization)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig

    from peftcheck.fixtures import materialise

    quant_type, _, nested = scheme.partition("+")
    config = BitsAndBytesConfig(load_in_8bit=True) if scheme == "int8" else BitsAndBytesConfig(
        load_in_4bit=True, bnb_4bit_quant_type=quant_type, bnb_4bit_compute_dtype=torch.float32,
        bnb_4bit_use_double_quant=bool(nested),
    )  # fmt: skip
    folder = materialise(model)
    loaded = AutoModelForCausalLM.from_pretrained(folder, quantization_config=config, device_map={"": "cpu"},
                                                  dtype=torch.float32)  # fmt: skip
    return loaded.eval(), AutoTokenizer.from_pretrained(folder)


def _eval_forward(model: Any, tokenizer: Any) -> None:
    import torch

    with torch.no_grad():
        model(**tokenizer(["the quick brown fox jumps over the lazy dog"], return_tensors="pt"))


def _layer(model: Any, kind: str) -> Any:
    return next(m for m in model.modules() if type(m._parameters.get("weight")).__name__ == kind)


def _repacks() -> bool:
    from bitsandbytes.functional import has_avx512bf16

    return bool(has_avx512bf16())


# -- the state, by value ---------------------------------------------------------------------
@pytest.mark.parametrize("scheme", ["nf4", "nf4+dq", "fp4"])
def test_a_repack_that_keeps_the_values_is_not_a_change(scheme: str) -> None:
    """An eval forward (which repacks 4-bit weights in place on an AVX512-BF16 CPU) changes no value."""
    model, tokenizer = _quantized(scheme)
    assert scheme_of(model) == scheme
    before = layer_states(model)
    _eval_forward(model, tokenizer)
    after = layer_states(model)
    if _repacks():  # the case this guards: the layout changed under the values
        assert all(state.repacked for state in after.values())
    assert state_changes(before, after) == ({}, [])


@pytest.mark.parametrize("repacked", [False, True], ids=["standard", "after-eval-forward"])
def test_a_rescaled_absmax_is_a_change(repacked: bool) -> None:
    model, tokenizer = _quantized("nf4")
    before = layer_states(model)
    if repacked:
        _eval_forward(model, tokenizer)
    layer = _layer(model, "Params4bit")
    layer.weight.quant_state.absmax.mul_(1.05)  # planted: a library rescales the block scales in place
    changed, missing = state_changes(before, layer_states(model))
    assert list(changed) == ["model.layers.0.self_attn.q_proj.weight"] and not missing
    assert "absmax" in changed["model.layers.0.self_attn.q_proj.weight"]


def test_a_changed_double_quantization_state_is_a_change() -> None:
    model, _ = _quantized("nf4+dq")
    before = layer_states(model)
    _layer(model, "Params4bit").weight.quant_state.state2.absmax.mul_(2)  # planted: the nested scales
    changed, _ = state_changes(before, layer_states(model))
    assert "state2.absmax" in changed["model.layers.0.self_attn.q_proj.weight"]


def test_a_flipped_code_is_a_change() -> None:
    model, _ = _quantized("nf4")
    before = layer_states(model)
    _layer(model, "Params4bit").weight.data.view(-1)[7] ^= 0x10  # planted: one 4-bit code
    changed, _ = state_changes(before, layer_states(model))
    assert "codes: 1 of 2048 bytes (2 codes each) differ" in changed["model.layers.0.self_attn.q_proj.weight"]


def test_an_int8_forward_moves_scb_without_changing_it_and_a_rewrite_is_a_change() -> None:
    model, tokenizer = _quantized("int8")
    assert scheme_of(model) == "int8"
    before = layer_states(model)
    layer = _layer(model, "Int8Params")
    _eval_forward(model, tokenizer)  # moves SCB from the weight to the layer's state: a layout
    assert layer.weight.SCB is None and layer.state.SCB is not None
    assert state_changes(before, layer_states(model)) == ({}, [])
    layer.state.SCB[3] *= 2  # planted: one row scale rewritten in place
    changed, _ = state_changes(before, layer_states(model))
    assert changed["model.layers.0.self_attn.q_proj.weight"].startswith("SCB: 1 of 64 scales differ")


# -- base_frozen through the pipeline ------------------------------------------------------------
def _suite(**methods: Any) -> Any:
    suite = tiny_suite(methods, model="tiny-llama")
    suite["train"]["max_steps"] = 3
    return load(suite)  # eval_split kept: the untrained adapter's perplexity is an eval forward


def test_base_frozen_passes_sound_quantized_runs() -> None:
    pipeline, loaded = quiet_pipeline(), _suite(qlora={**LORA, "quantization": "nf4"},
                                                 lora_int8={**LORA, "quantization": "int8"})  # fmt: skip
    for method in ("qlora", "lora_int8"):
        frozen = run_check(pipeline, loaded, method, "base_frozen")
        assert frozen.passed, frozen.message
        assert frozen.details["quantized"] == 14, frozen.message  # 2 layers x 7 linears
    if _repacks():  # what made byte comparison wrong: the trained copy was repacked, the pristine one not
        trained = pipeline.artifact(loaded, "qlora").model.get_base_model()
        assert all(state.repacked for state in layer_states(trained).values())


def _corrupt_on_first_step(monkeypatch: pytest.MonkeyPatch, corrupt: Any) -> None:
    real = peftcheck.methods.optimizer_step_hook

    def planted(model: Any) -> Any:
        hook = real(model)

        def step(global_step: int) -> Any:
            if global_step == 1:
                corrupt(model.get_base_model())
            return hook(global_step) if hook is not None else None

        return step

    monkeypatch.setattr(peftcheck.methods, "optimizer_step_hook", planted)


def _rewrite_scb(model: Any) -> None:
    layer = _layer(model, "Int8Params")
    scb = layer.weight.SCB if layer.weight.SCB is not None else layer.state.SCB
    scb.mul_(1.5)  # planted: a training step rewrites the row scales in place


def _rescale_absmax(model: Any) -> None:
    _layer(model, "Params4bit").weight.quant_state.absmax.mul_(1.05)  # planted: rescaled block scales


@pytest.mark.parametrize(("scheme", "corrupt", "what"), [("int8", _rewrite_scb, "SCB"), ("nf4", _rescale_absmax, "absmax")])
def test_base_frozen_fails_a_rewritten_quantization_state(monkeypatch: pytest.MonkeyPatch, scheme: str,
                                                          corrupt: Any, what: str) -> None:  # fmt: skip
    _corrupt_on_first_step(monkeypatch, corrupt)
    loaded = _suite(planted={**LORA, "quantization": scheme})
    frozen = run_check(quiet_pipeline(), loaded, "planted", "base_frozen")
    assert not frozen.passed and frozen.value == 1.0, frozen.message
    assert frozen.details["changed"] == ["model.layers.0.self_attn.q_proj.weight"]
    assert f"({what}: " in frozen.message, frozen.message


# -- quantization_fidelity -------------------------------------------------------------------
def test_fidelity_passes_the_schemes_on_whole_block_widths() -> None:
    pipeline = quiet_pipeline()
    loaded = _suite(**{s: {**LORA, "quantization": s} for s in ("int8", "nf4", "fp4")}, lora=LORA)
    for scheme in ("int8", "nf4", "fp4"):
        fidelity = run_check(pipeline, loaded, scheme, "quantization_fidelity")
        assert fidelity.passed, fidelity.message
        assert fidelity.details["scheme"] == scheme and fidelity.details["max_kernel_error"] == 0.0
        assert 0 < fidelity.metrics["quant_max_layer_error"]["value"] < 0.13
    with pytest.raises(peftcheck.checks.NotApplicable, match="float base"):
        run_check(pipeline, loaded, "lora", "quantization_fidelity")


def test_fidelity_names_a_layer_whose_scales_are_off() -> None:
    pipeline = quiet_pipeline()
    loaded = _suite(qlora={**LORA, "quantization": "nf4"})
    source = pipeline.base(loaded, "nf4").training_source
    _layer(source, "Params4bit").weight.quant_state.absmax[:4] *= 3  # planted: 4 of 64 blocks off
    fidelity = run_check(pipeline, loaded, "qlora", "quantization_fidelity")
    assert not fidelity.passed
    assert fidelity.details["layers_off"] == ["model.layers.0.self_attn.q_proj.weight"], fidelity.message
    assert "q_proj.weight: dequantized 0.47" in fidelity.message and "> 0.14" in fidelity.message


def _per_row_dequantize(packed: Any, state: Any, *args: Any, **kwargs: Any) -> Any:
    """dequantize_4bit as the AVX512 branch computes it: absmax[row * (n // blocksize) + col // blocksize]."""
    import torch

    rows, n = state.shape
    data = packed.reshape(-1).view(torch.uint8)
    codes = torch.empty(data.numel() * 2, dtype=torch.long)
    codes[0::2], codes[1::2] = data >> 4, data & 0xF
    index = torch.arange(rows)[:, None] * (n // state.blocksize) + torch.arange(n)[None, :] // state.blocksize
    return state.code[codes[: rows * n]].reshape(rows, n) * state.absmax.float()[index]


def test_fidelity_names_a_kernel_that_misreads_the_scales(monkeypatch: pytest.MonkeyPatch) -> None:
    """Planted on every CPU: the AVX512 branch's reading, on rows of 48 and 96 (not whole 64-blocks)."""
    import bitsandbytes.functional

    monkeypatch.setattr(bitsandbytes.functional, "dequantize_4bit", _per_row_dequantize)
    loaded = load(tiny_suite({"qlora": {**LORA, "quantization": "nf4"}}, model="tiny-llama-w48"))
    fidelity = run_check(quiet_pipeline(), loaded, "qlora", "quantization_fidelity")
    assert not fidelity.passed and len(fidelity.details["layers_off"]) == 14, fidelity.message
    assert "the kernel applies the wrong scales" in fidelity.message


@DEQUANTIZE_4BIT_AVX512.mark()
def test_fidelity_of_an_nf4_base_with_rows_of_48_and_96() -> None:
    """The AVX512 dequantize bug through the pipeline: every CPU should pass; an avx512f CPU fails."""
    loaded = load(tiny_suite({"qlora": {**LORA, "quantization": "nf4"}}, model="tiny-llama-w48"))
    fidelity = run_check(quiet_pipeline(), loaded, "qlora", "quantization_fidelity")
    assert fidelity.passed, fidelity.message

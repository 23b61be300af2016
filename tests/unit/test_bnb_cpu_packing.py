"""The bitsandbytes finding behind suites/quotes.yaml's `bnb_cpu_packed` xfails, reproduced with
plain bitsandbytes + peft calls (no peftcheck pipeline) on the tiny-llama fixture.

On a CPU with AVX512-BF16, bitsandbytes 0.50.2's ``Linear4bit.forward`` in eval mode without grad
repacks the weight in place for its CPU inference kernel (``quant_state.packing_format_for_cpu``)
and never converts it back for training, and ``state_dict()`` converts the bytes back but not the
quantization state. Each test states what should hold; on such a CPU with that release it is a
strict expected failure, so it turns red the day bitsandbytes fixes it. Elsewhere it must pass.
"""

from __future__ import annotations

from typing import Any

import pytest

from helpers import BNB_CPU_REPACKING as upstream

pytestmark = pytest.mark.quant


@pytest.fixture
def nf4() -> tuple[Any, Any, Any]:
    """(model, a batch, its first Linear4bit) of the tiny-llama fixture on an nf4 base."""
    pytest.importorskip("bitsandbytes")
    import bitsandbytes as bnb

    from peftcheck.models import load_base, resolve_model

    model, tokenizer = load_base(resolve_model("tiny-llama"), dtype="float32", quantization="nf4")
    batch = tokenizer(["the quick brown fox jumps over the lazy dog"], return_tensors="pt")
    layer = next(m for m in model.modules() if isinstance(m, bnb.nn.Linear4bit))
    return model, batch, layer


def _dequantized(layer: Any) -> Any:
    import bitsandbytes.functional as F

    return F.dequantize_4bit(layer.weight.data, layer.weight.quant_state).clone()


def _eval_forward(model: Any, batch: Any) -> None:
    import torch

    model.eval()
    with torch.no_grad():
        model(**batch)


@upstream
def test_lora_on_a_4bit_base_gets_gradient_after_an_eval_forward(nf4: tuple[Any, Any, Any]) -> None:
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

    model, batch, _ = nf4
    _eval_forward(model, batch)  # what evaluating before training (or Trainer's eval loop) does
    model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    peft_model = get_peft_model(model, LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    peft_model.train()
    peft_model(**batch, labels=batch["input_ids"]).loss.backward()
    grads = {n: p.grad for n, p in peft_model.named_parameters() if "lora_B" in n}
    assert grads and all(g is not None for g in grads.values())
    # lora_B of the first layer only gets gradient through the 4-bit layers above it
    assert sum(float(g.abs().sum()) for g in grads.values()) > 0, "no gradient reached the adapter"


@upstream
def test_an_eval_forward_leaves_the_4bit_weight_as_it_dequantizes(nf4: tuple[Any, Any, Any]) -> None:
    import torch

    model, batch, layer = nf4
    before = _dequantized(layer)
    _eval_forward(model, batch)
    # peft's merge_adapter dequantizes exactly so: layer.weight.data with its quant_state
    assert torch.equal(_dequantized(layer), before)


@upstream
def test_state_dict_after_an_eval_forward_keeps_the_4bit_weight(nf4: tuple[Any, Any, Any]) -> None:
    import torch

    model, batch, layer = nf4
    before = _dequantized(layer)
    _eval_forward(model, batch)
    model.state_dict()  # what save_pretrained calls
    assert torch.equal(_dequantized(layer), before)


def test_a_model_never_run_in_eval_mode_keeps_its_weights(nf4: tuple[Any, Any, Any]) -> None:
    """The control: without the eval forward the same calls change nothing, on every CPU."""
    import torch

    model, _, layer = nf4
    before = _dequantized(layer)
    model.state_dict()
    assert torch.equal(_dequantized(layer), before)
    assert not getattr(layer.weight.quant_state, "packing_format_for_cpu", False)

"""Issue 24, reproduced with plain transformers + peft + bitsandbytes calls (no peftcheck
pipeline): LoRA on an nf4 OPT base raises inside training on a CPU with AVX512-BF16.

bitsandbytes 0.50.2's ``Linear4bit.forward`` in eval mode without grad repacks its weight in place
for the CPU inference kernel (``quant_state.packing_format_for_cpu``; tests/unit/test_bnb_cpu_packing.py)
and ``matmul_4bit`` takes that kernel from then on, also in training: ``F.gemv_4bit``, a custom op
without an autograd formula, returns ``out.reshape(...)``, a view of a fresh leaf that torch's
autograd fallback gives a grad_fn once the input requires grad, and ``result += bias`` adds the
bias in place to that view: "a view of a leaf Variable that requires grad is being used in an
in-place operation" (bitsandbytes/autograd/_functions.py, matmul_4bit). OPT's linears have biases;
Llama's have none and train silently without gradient instead (the bnb_cpu_packed finding).
Gradient checkpointing is not the cause: reentrant, non-reentrant and off all raise.

Each test states what should hold; on such a CPU with that release the affected ones are strict
expected failures, so they turn red the day bitsandbytes fixes it. Elsewhere they must pass.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest

from peftcheck.checks.registry import XfailSpec

pytestmark = pytest.mark.quant

RAISES_ON_A_BIASED_LINEAR = XfailSpec(
    reason="upstream (bitsandbytes 0.50.2, CPU with avx512_bf16): after a no-grad eval forward repacked the "
    "weights, matmul_4bit's CPU path does `result += bias` on F.gemv_4bit's output, a view with an autograd "
    "fallback grad_fn: RuntimeError 'a view of a leaf Variable that requires grad is being used in an in-place "
    "operation' (tiny OPT, LoRA q_proj/v_proj: raised at the first q_proj of step 1, with gradient "
    "checkpointing reentrant, non-reentrant or off; without the eval forward loss 4.8893 -> 4.8460, 8/8 "
    "adapter tensors move)",
    when={"bitsandbytes": ">=0.50.2"},
    cpu_flags=["avx512_bf16"],
).mark(RuntimeError)


@pytest.fixture(scope="module")
def opt_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random 2-layer OPT (hidden 64, vocab 128, biased linears, seed 0) saved for a 4-bit load."""
    pytest.importorskip("bitsandbytes")
    import torch
    from transformers import OPTConfig, OPTForCausalLM

    torch.manual_seed(0)
    model = OPTForCausalLM(OPTConfig(
        vocab_size=128, hidden_size=64, ffn_dim=128, num_hidden_layers=2, num_attention_heads=4,
        max_position_embeddings=64, word_embed_proj_dim=64, dropout=0.0, attention_dropout=0.0,
    ))  # fmt: skip
    folder = tmp_path_factory.mktemp("tiny-opt")
    model.save_pretrained(folder)
    return folder


def _nf4(folder: Path) -> Any:
    import torch
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    quant = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.float32)
    return AutoModelForCausalLM.from_pretrained(folder, quantization_config=quant, device_map={"": "cpu"},
                                                dtype=torch.float32).eval()  # fmt: skip


def _rows() -> Any:
    import torch
    from datasets import Dataset

    ids = torch.randint(0, 128, (16, 12), generator=torch.Generator().manual_seed(0)).tolist()
    return Dataset.from_dict({"input_ids": ids, "labels": ids})


def _train(folder: Path, out: Path, *, evaluate_first: bool) -> tuple[list[float], int, int]:
    """(losses, adapter tensors that moved, adapter tensors) of 2 Trainer steps of LoRA on q_proj and
    v_proj of the nf4 OPT, with Trainer's gradient checkpointing; ``evaluate_first``: Trainer.evaluate()
    before train(), as a user measuring the starting point does."""
    import torch
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training
    from transformers import Trainer, TrainingArguments

    model = prepare_model_for_kbit_training(_nf4(folder), use_gradient_checkpointing=True)
    model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
    before = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    args = TrainingArguments(
        str(out), max_steps=2, per_device_train_batch_size=8, learning_rate=1e-2, gradient_checkpointing=True,
        logging_steps=1, report_to=[], use_cpu=True, save_strategy="no", disable_tqdm=True,
    )  # fmt: skip
    trainer = Trainer(model=model, args=args, train_dataset=_rows(), eval_dataset=_rows().select(range(8)))
    if evaluate_first:
        trainer.evaluate()
    trainer.train()
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    moved = sum(not torch.equal(before[n], p.detach()) for n, p in model.named_parameters() if n in before)
    return losses, moved, len(before)


@RAISES_ON_A_BIASED_LINEAR
def test_lora_on_nf4_opt_trains_after_trainer_evaluate(opt_folder: Path, tmp_path: Path) -> None:
    """Trainer.evaluate() then Trainer.train() with gradient checkpointing: both steps run and move the adapter."""
    losses, moved, total = _train(opt_folder, tmp_path, evaluate_first=True)
    assert len(losses) == 2 and all(math.isfinite(loss) for loss in losses)
    assert moved == total, f"{moved} of {total} adapter tensors moved"


def test_lora_on_nf4_opt_trains_without_an_eval_forward(opt_folder: Path, tmp_path: Path) -> None:
    """The control: the same training on a base no eval forward has touched trains on every CPU."""
    losses, moved, total = _train(opt_folder, tmp_path, evaluate_first=False)
    assert len(losses) == 2 and losses[1] < losses[0]
    assert moved == total, f"{moved} of {total} adapter tensors moved"


def _backward(layer: Any) -> tuple[Any, Any]:
    """(x.grad, the expected x.grad) of sum(layer(x)) in train mode with grad: ones @ W."""
    import bitsandbytes.functional as F
    import torch

    weight = F.dequantize_4bit(layer.weight.data, layer.weight.quant_state).float()
    layer.train()
    x = torch.randn(2, 5, layer.in_features, requires_grad=True, generator=torch.Generator().manual_seed(0))
    layer(x).sum().backward()
    return x.grad, torch.ones(2, 5, layer.out_features) @ weight


@RAISES_ON_A_BIASED_LINEAR
def test_a_biased_linear4bit_backpropagates_after_an_eval_forward(opt_folder: Path) -> None:
    """The mechanism on one layer: OPT's q_proj (a Linear4bit with a bias) after the model ran in eval mode."""
    import torch

    model = _nf4(opt_folder)
    with torch.no_grad():
        model(input_ids=torch.arange(8)[None])
    grad, expected = _backward(model.model.decoder.layers[0].self_attn.q_proj)
    assert grad is not None and torch.allclose(grad, expected, atol=1e-4)


def test_a_biased_linear4bit_backpropagates(opt_folder: Path) -> None:
    """The control: the same layer, no eval forward: the input gradient is ones @ W on every CPU."""
    import torch

    layer = _nf4(opt_folder).model.decoder.layers[0].self_attn.q_proj
    assert layer.bias is not None
    assert not getattr(layer.weight.quant_state, "packing_format_for_cpu", False)
    grad, expected = _backward(layer)
    assert grad is not None and torch.allclose(grad, expected, atol=1e-4)

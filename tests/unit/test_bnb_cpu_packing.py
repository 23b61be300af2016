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


@upstream
def test_trainer_keeps_training_after_its_evaluation_loop(nf4: tuple[Any, Any, Any], tmp_path: Any) -> None:
    """Trainer with ``eval_strategy="steps"``: the steps after the first evaluation still move
    the adapter (on an affected CPU its grad_norm is 0 from then on)."""
    import torch
    from datasets import Dataset
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training
    from transformers import DataCollatorForLanguageModeling, Trainer, TrainerCallback, TrainingArguments

    from peftcheck.models import load_base, resolve_model

    model, _, _ = nf4
    _, tokenizer = load_base(resolve_model("tiny-llama"), dtype="float32")
    texts = [f"the quick brown fox jumps over the lazy dog number {i}" for i in range(32)]
    data = Dataset.from_dict({"text": texts}).map(lambda b: tokenizer(b["text"]), batched=True, remove_columns=["text"])
    peft_model = get_peft_model(
        prepare_model_for_kbit_training(model, use_gradient_checkpointing=False),
        LoraConfig(r=4, target_modules=["q_proj", "v_proj"]),
    )
    lora_b = [p for n, p in peft_model.named_parameters() if "lora_B" in n]
    norms: dict[int, float] = {}

    class Norms(TrainerCallback):
        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            norms[state.global_step] = float(torch.stack([p.detach().norm() for p in lora_b]).sum())

    args = TrainingArguments(
        str(tmp_path), max_steps=6, per_device_train_batch_size=8, learning_rate=1e-2, eval_strategy="steps",
        eval_steps=3, report_to=[], use_cpu=True, save_strategy="no", disable_tqdm=True,
    )  # fmt: skip
    Trainer(
        model=peft_model, args=args, train_dataset=data, eval_dataset=data.select(range(8)),
        data_collator=DataCollatorForLanguageModeling(tokenizer, mlm=False), callbacks=[Norms()],
    ).train()  # fmt: skip
    assert norms[1] < norms[3], "the adapter did not train before the evaluation"  # the control
    assert norms[6] != norms[3], "the steps after Trainer's evaluation left the adapter unchanged"


def test_methods_train_on_a_copy_of_the_base_no_forward_has_touched() -> None:
    """peftcheck's guard: a reference forward on the shared 4-bit base (what checks and other
    suites do) must not decide whether the next method trains. On an affected CPU, copying the
    forwarded base instead gives the method no gradient; elsewhere this holds either way."""
    pytest.importorskip("bitsandbytes")
    import torch

    from helpers import load, quiet_pipeline, tiny_suite
    from peftcheck.resources.calls import gradient_reach

    lora = {"peft": "LoraConfig", "r": 4, "lora_alpha": 8, "target_modules": ["q_proj", "v_proj"]}
    suite = tiny_suite({"qlora": {**lora, "quantization": "nf4"}}, model="tiny-llama")
    suite["train"]["max_steps"] = 2
    del suite["data"]["eval_split"]  # no perplexity before training: only the base forward below
    pipeline, loaded = quiet_pipeline(), load(suite)
    base = pipeline.base(loaded, "nf4")
    assert base.pristine is not None and base.training_source is base.pristine
    assert pipeline.base(loaded, "none").pristine is None  # only quantized CPU bases keep one
    with torch.no_grad():  # a check's reference forward on the shared base
        base.model.eval()(**base.tokenizer(["the quick brown fox"], return_tensors="pt"))
    reached, total = gradient_reach(pipeline.artifact(loaded, "qlora"))
    assert total > 0 and reached == total, f"{reached} of {total} trainable tensors got a gradient"

"""The upstream finding behind the `MIXED_ADAPTER_NAMES` xfail of the co_resident tests,
reproduced with plain peft calls on a random tiny Llama (issue 16).

peft's ``PeftModel`` runs a batch whose rows name different adapters (``adapter_names=``) or
refuses it with an error where it cannot (DoRA, prompt learning). ``PeftMixedModel``, which
holds adapters of different types (LoRA and LoHa here) on one base, passes ``adapter_names`` on to
the transformers model, whose ``**kwargs`` drops it: every row silently runs the active adapter.
Strict: red the day peft uses the argument or refuses it.
"""

from __future__ import annotations

from pathlib import Path

import torch

from helpers import MIXED_ADAPTER_NAMES, tiny_llama


@MIXED_ADAPTER_NAMES.mark()
def test_a_mixed_model_runs_each_row_with_its_named_adapter_or_refuses(tmp_path: Path) -> None:
    from peft import LoHaConfig, LoraConfig, PeftMixedModel, get_peft_model

    for name, config in {"lora": LoraConfig(r=4, target_modules=["q_proj"], init_lora_weights=False),
                         "loha": LoHaConfig(r=4, target_modules=["q_proj"], init_weights=False)}.items():  # fmt: skip
        get_peft_model(tiny_llama(), config).save_pretrained(tmp_path / name)
    model = PeftMixedModel.from_pretrained(tiny_llama(), tmp_path / "lora", adapter_name="lora")
    model.load_adapter(str(tmp_path / "loha"), adapter_name="loha")
    ids = torch.tensor([[5, 17, 42, 9], [5, 17, 42, 9]])
    with torch.no_grad():
        model.set_adapter("lora")
        lora = model(input_ids=ids).logits[0]
        model.set_adapter("loha")
        loha = model(input_ids=ids).logits[0]
        assert (lora - loha).abs().max() > 1e-2  # two different adapters: the rows can tell them apart
        try:
            mixed = model(input_ids=ids, adapter_names=["lora", "loha"]).logits
        except (ValueError, TypeError, NotImplementedError):
            return  # refusing is fine
    assert torch.allclose(mixed[0], lora, atol=1e-5) and torch.allclose(mixed[1], loha, atol=1e-5)

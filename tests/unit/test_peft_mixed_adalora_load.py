"""The upstream finding behind suites/quotes_contract.yaml's `mixed_adalora` xfail, reproduced
with plain peft calls on a random tiny Llama (issue 16).

peft lists AdaLoRA among the tuner types ``PeftMixedModel`` holds beside others
(``COMPATIBLE_TUNER_TYPES``), but loading a saved AdaLoRA adapter into one raises
``AttributeError: 'PeftMixedModel' object has no attribute 'resize_modules_by_rank_pattern'``
(peft 0.21.2) once the adapter has trained (its config carries the kept-rank pattern): the load
path calls a method of ``PeftModel`` that the mixed model lacks. A LoRA
and a LoHa adapter, the control, load side by side. Strict: red the day it loads.
"""

from __future__ import annotations

from pathlib import Path

import torch

from helpers import tiny_llama
from peftcheck.checks.registry import XfailSpec

MIXED_ADALORA = XfailSpec(
    reason="upstream (peft 0.21.2): PeftMixedModel.load_adapter of an AdaLoRA adapter raises AttributeError",
    when={"peft": ">=0.21.2"},
)


def _load_beside_lora(second: object, tmp_path: Path) -> object:
    from peft import AdaLoraConfig, LoraConfig, PeftMixedModel, get_peft_model

    get_peft_model(tiny_llama(), LoraConfig(r=4, target_modules=["q_proj"])).save_pretrained(tmp_path / "lora")
    trained = get_peft_model(tiny_llama(), second)
    if isinstance(second, AdaLoraConfig):  # one budget step, as training runs it: the ranks get a pattern
        trained.train()
        trained(input_ids=torch.tensor([[5, 17, 42, 9]]), labels=torch.tensor([[5, 17, 42, 9]])).loss.backward()
        trained.base_model.update_and_allocate(5)
        assert trained.peft_config["default"].rank_pattern  # what a trained AdaLoRA checkpoint carries
    trained.save_pretrained(tmp_path / "second")
    model = PeftMixedModel.from_pretrained(tiny_llama(), tmp_path / "lora", adapter_name="lora")
    model.load_adapter(str(tmp_path / "second"), adapter_name="second")
    return model


@MIXED_ADALORA.mark(AttributeError)
def test_an_adalora_adapter_loads_into_a_mixed_model(tmp_path: Path) -> None:
    from peft import AdaLoraConfig

    config = AdaLoraConfig(init_r=4, target_r=2, tinit=0, tfinal=0, deltaT=1, total_step=10, target_modules=["v_proj"])
    model = _load_beside_lora(config, tmp_path)
    assert "second" in model.peft_config


def test_a_loha_adapter_loads_into_a_mixed_model(tmp_path: Path) -> None:
    from peft import LoHaConfig

    model = _load_beside_lora(LoHaConfig(r=4, target_modules=["v_proj"]), tmp_path)
    assert set(model.peft_config) == {"lora", "second"}

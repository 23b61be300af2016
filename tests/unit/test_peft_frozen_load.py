"""The peft finding behind suites/matrix.yaml's `prompt_load_trainable` xfails, reproduced with
plain peft calls on the tiny-llama fixture (issue 16).

``PeftModel.from_pretrained(..., is_trainable=False)`` promises an adapter "frozen and can only be
used for inference". peft 0.21.2 sets ``inference_mode`` but leaves a prompt-learning adapter's
prompt-encoder embedding with ``requires_grad=True`` (and so did 0.13.2, 0.14.0, 0.17.1 and
0.18.0 in the nox matrix cells); LoRA is frozen as promised. Strict: red the day peft freezes it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from peftcheck.checks.registry import XfailSpec

_FROZEN_LOAD = XfailSpec(
    reason="upstream (peft 0.13.2-0.21.2): from_pretrained(is_trainable=False) leaves the prompt encoder trainable",
    when={"peft": ">=0.13.2,<0.22.0"},  # on 0.13.2, 0.14.0, 0.17.1, 0.18.0 and 0.21.2; fixed in 0.22.0
)
PROMPT_LOAD_TRAINABLE = _FROZEN_LOAD.mark()


def _base() -> Any:
    from transformers import AutoModelForCausalLM

    from peftcheck.fixtures import materialise

    return AutoModelForCausalLM.from_pretrained(materialise("tiny-llama"))


def _trainable_after_frozen_load(config: Any, folder: Path) -> list[tuple[str, int]]:
    from peft import PeftModel, get_peft_model

    get_peft_model(_base(), config).save_pretrained(folder)
    loaded = PeftModel.from_pretrained(_base(), folder, is_trainable=False)
    assert loaded.peft_config["default"].inference_mode
    return [(name, p.numel()) for name, p in loaded.named_parameters() if p.requires_grad]


@PROMPT_LOAD_TRAINABLE
@pytest.mark.parametrize("method", ["prompt", "prefix"])
def test_a_frozen_load_of_a_prompt_learning_adapter_trains_nothing(method: str, tmp_path: Path) -> None:
    from peft import PrefixTuningConfig, PromptTuningConfig

    config = (PromptTuningConfig if method == "prompt" else PrefixTuningConfig)(
        task_type="CAUSAL_LM", num_virtual_tokens=4
    )
    assert _trainable_after_frozen_load(config, tmp_path) == []


def test_a_frozen_load_of_lora_trains_nothing(tmp_path: Path) -> None:
    # the control: the same calls freeze LoRA as promised
    from peft import LoraConfig

    config = LoraConfig(task_type="CAUSAL_LM", r=2, target_modules=["q_proj", "v_proj"])
    assert _trainable_after_frozen_load(config, tmp_path) == []

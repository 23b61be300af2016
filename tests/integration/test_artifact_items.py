"""Artifact mode through pytest (issue 15): a planted defect fails adapter_integrity with the
defect named, the method's other items report in one line that peft cannot load the folder, and
training-only items skip with the reason; never a traceback."""

from __future__ import annotations

import json

import pytest
import yaml

from helpers import tiny_suite

pytest_plugins = ["pytester"]


def test_a_planted_defect_fails_its_item_in_one_message(pytester: pytest.Pytester) -> None:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from peftcheck.fixtures import materialise

    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_pretrained(materialise("tiny-llama"))
    config = LoraConfig(r=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False, task_type="CAUSAL_LM")
    folder = pytester.path / "adapter"
    get_peft_model(base, config).save_pretrained(folder)
    data = json.loads((folder / "adapter_config.json").read_text())
    (folder / "adapter_config.json").write_text(json.dumps({**data, "r": 4}))  # weights stay rank 8
    suite = tiny_suite({"mine": {"adapter": "adapter"}}, model="tiny-llama",
                       expect={"merge_equivalence": {}, "base_frozen": {}})  # fmt: skip
    pytester.makefile(".yaml", tiny=yaml.safe_dump(suite, sort_keys=False))
    result = pytester.runpytest("-q", "-rs", "-p", "no:peftcheck_report")
    output = result.stdout.str() + result.stderr.str()
    result.assert_outcomes(failed=2, skipped=1)
    result.stdout.fnmatch_lines([
        "*message:  8 tensor(s) with another shape than the config and the model imply*the weights have rank [[]8[]], "
        "adapter_config.json says r=4*",
        "*methods.mine.adapter: peft cannot load adapter: RuntimeError: size mismatch*",
        "*not applicable: base_frozen measures peftcheck's own training run*",
    ])  # fmt: skip
    assert "Traceback" not in output and 'File "' not in output, output

"""The random-weight built-ins of more architectures (issue 16): each builds, loads and runs."""

from __future__ import annotations

from collections.abc import Iterator
import copy
from pathlib import Path

import pytest

# built-in -> (a module it must have, that module's class as transformers names it)
ARCHITECTURES = {
    "tiny-gpt2": ("transformer.h.0.attn.c_attn", "Conv1D"),  # the layer LoRA needs fan_in_fan_out for
    "tiny-gemma3": ("model.layers.0.self_attn.q_proj", "Linear"),
    "tiny-qwen3": ("model.layers.0.self_attn.q_proj", "Linear"),
}


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A fresh PEFTCHECK_CACHE_DIR, so the builders run here instead of reading an old build."""
    folder = tmp_path_factory.mktemp("peftcheck-cache")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("PEFTCHECK_CACHE_DIR", str(folder))
        yield folder


@pytest.mark.parametrize("name", sorted(ARCHITECTURES))
def test_a_builtin_materialises_loads_and_gives_finite_logits(name: str, cache: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from peftcheck.fixtures import BUILTIN_MODELS, materialise

    folder = materialise(name)
    assert folder.is_relative_to(cache) and (folder / "config.json").exists()
    assert not BUILTIN_MODELS[name].real
    model = AutoModelForCausalLM.from_pretrained(folder).eval()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    module, layer_type = ARCHITECTURES[name]
    assert type(model.get_submodule(module)).__name__ == layer_type
    # the special tokens are the shared tokenizer's, not the architecture's defaults (GPT-2: 50256)
    assert model.config.vocab_size == len(tokenizer)
    assert model.config.eos_token_id == model.config.bos_token_id == tokenizer.eos_token_id
    batch = tokenizer(["the lighthouse keeper counts every small star before rain " * 3], return_tensors="pt")
    assert batch["input_ids"].shape[1] > 16  # longer than tiny-gemma3's sliding window
    with torch.no_grad():
        logits = model(**batch).logits
    assert logits.shape == (1, batch["input_ids"].shape[1], len(tokenizer))
    assert torch.isfinite(logits).all()


def test_gpt2_conv1d_stores_its_weight_in_by_out(cache: Path) -> None:
    # the reason LoRA on tiny-gpt2 needs fan_in_fan_out: Conv1D's weight is (in, out), not Linear's (out, in)
    from transformers import AutoModelForCausalLM

    from peftcheck.fixtures import materialise

    model = AutoModelForCausalLM.from_pretrained(materialise("tiny-gpt2"))
    assert tuple(model.get_submodule("transformer.h.0.attn.c_attn").weight.shape) == (64, 3 * 64)


def test_gemma3_has_a_sliding_layer_with_a_window_shorter_than_the_suites(cache: Path) -> None:
    from transformers import AutoConfig

    from peftcheck.fixtures import materialise

    config = AutoConfig.from_pretrained(materialise("tiny-gemma3"))
    assert config.layer_types == ["sliding_attention", "full_attention"]
    assert config.sliding_window == 16


def test_a_config_class_this_transformers_lacks_names_the_version_it_needs() -> None:
    # the matrix's oldest cell (transformers 4.46) has neither Gemma3TextConfig nor Qwen3Config
    from peftcheck.errors import ResolveError
    from peftcheck.fixtures import _config_class

    with pytest.raises(ResolveError, match=r"NoSuchConfig needs transformers>=99\.0, got \d"):
        _config_class("NoSuchConfig", since="99.0")


def test_the_analytic_lora_count_covers_gpt2_conv1d(cache: Path) -> None:
    # Conv1D has no in_features: the formula reads its (in, out) weight, and all-linear counts
    # Conv1D as peft does (every c_attn, c_proj and c_fc; not the output layer)
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from peftcheck.fixtures import materialise
    from peftcheck.methods import expected_trainable, matched_targets, parameter_counts

    base = AutoModelForCausalLM.from_pretrained(materialise("tiny-gpt2"))
    assert len(matched_targets(base, "all-linear")["all-linear"]) == 2 * 4  # c_attn, c_proj, mlp c_fc, c_proj
    for targets in (["c_attn"], "all-linear"):
        config = LoraConfig(r=4, target_modules=targets, fan_in_fan_out=True, task_type="CAUSAL_LM")
        count, formula = expected_trainable(base, config)
        assert formula == "r·(in+out) per target"
        assert count == parameter_counts(get_peft_model(copy.deepcopy(base), config))[0]
    assert expected_trainable(base, LoraConfig(r=4, target_modules=["c_attn"]))[0] == 2 * 4 * (64 + 192)

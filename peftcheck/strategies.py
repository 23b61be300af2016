"""Hypothesis strategies for property tests of PEFT adapters on tiny CPU models (opt-in: imports torch).

Everything here is re-exported from ``peftcheck._strategies``. Strategies are small functions
returning ``SearchStrategy[T]``: one positional argument, the rest keyword-only. Models and
adapted models are *recipes* (``build()`` returns a fresh copy), because peft wraps modules
in place and a property usually needs the untouched base next to the adapted model.

    from hypothesis import given, strategies as st
    from peftcheck import strategies as ps

    @given(ps.adapted_models(ps.mlps(), configs=ps.lora_configs), st.data())
    def test_disable_is_base(adapted, data):
        batch = data.draw(ps.input_batches(adapted.base, dtype=adapted.dtype))
        ...

See docs/strategies.md.
"""

from __future__ import annotations

from peftcheck._strategies.adapters import (
    AdaptedModel,
    adapted_models,
    adapter_parameters,
    model_output,
    perturb_adapter,
)
from peftcheck._strategies.configs import (
    METHODS,
    ia3_configs,
    loha_configs,
    lokr_configs,
    lora_configs,
    peft_configs,
    prompt_tuning_configs,
    target_selections,
    vera_configs,
)
from peftcheck._strategies.counts import expected_trainable_parameters, matching_modules
from peftcheck._strategies.models import (
    TinyModel,
    attention_blocks,
    base_models,
    embedding_mlps,
    mlp_recipe,
    mlps,
    tiny_decoders,
)
from peftcheck._strategies.tensors import Tolerance, dtypes, input_batches, tolerance_for

__all__ = [
    # base modules
    "TinyModel",
    "mlp_recipe",
    "mlps",
    "embedding_mlps",
    "attention_blocks",
    "tiny_decoders",
    "base_models",
    # configs
    "METHODS",
    "target_selections",
    "lora_configs",
    "ia3_configs",
    "loha_configs",
    "lokr_configs",
    "vera_configs",
    "prompt_tuning_configs",
    "peft_configs",
    # adapted models
    "AdaptedModel",
    "adapted_models",
    "perturb_adapter",
    "adapter_parameters",
    "model_output",
    # tensors and oracles
    "dtypes",
    "input_batches",
    "Tolerance",
    "tolerance_for",
    "expected_trainable_parameters",
    "matching_modules",
]

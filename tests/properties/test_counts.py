"""The trainable parameter count equals the count computed from the config and module shapes."""

from __future__ import annotations

import functools

import pytest
from hypothesis import given
from peft.tuners.lora.model import LoraModel
from torch import nn

from peftcheck import strategies as ps

from ._checks import run_planted, trainable_count

COUNTED = ("lora", "ia3", "loha", "vera", "prompt_tuning")

counted = ps.adapted_models(ps.base_models(), configs=functools.partial(ps.peft_configs, methods=COUNTED))
plain_lora = ps.adapted_models(
    ps.base_models(decoders=False),
    configs=functools.partial(ps.lora_configs, dora=False, lora_bias=False),
    dtypes=ps.dtypes(half=False),
)


def count_matches_config(adapted: ps.AdaptedModel) -> None:
    expected = ps.expected_trainable_parameters(adapted.base.build(), adapted.config)
    model = adapted.build()
    actual = trainable_count(model)
    assert actual == expected, (
        f"{adapted.method}: {actual} trainable parameters, the config implies {expected}; trainable: "
        + ", ".join(f"{n}{tuple(p.shape)}" for n, p in model.named_parameters() if p.requires_grad)
    )
    reported, _ = model.get_nb_trainable_parameters()
    assert reported == expected, f"get_nb_trainable_parameters() says {reported}, expected {expected}"


@given(counted)
def test_trainable_count_matches_config(adapted: ps.AdaptedModel) -> None:
    count_matches_config(adapted)


def test_expected_count_by_hand() -> None:
    """The oracle itself on one worked example: LoRA r=2 on Linear(8→16) and Linear(16→4)."""
    from peft import LoraConfig

    base = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))
    config = LoraConfig(r=2, target_modules=["0", "2"], bias="lora_only", use_dora=True)
    lora = 2 * (8 + 16) + 2 * (16 + 4)
    dora = 16 + 4
    biases = 16 + 4
    assert ps.expected_trainable_parameters(base, config) == lora + dora + biases


def test_planted_stray_trainable_tensor_is_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    """A tuner that leaves one base tensor (the first LayerNorm or Linear weight) trainable."""
    original = LoraModel._mark_only_adapters_as_trainable

    def stray(self: LoraModel, model: nn.Module) -> None:
        original(self, model)
        for name, param in model.named_parameters():
            if name.endswith("weight") and "lora_" not in name and "modules_to_save" not in name:
                param.requires_grad_(True)
                return

    monkeypatch.setattr(LoraModel, "_mark_only_adapters_as_trainable", stray)
    with pytest.raises(AssertionError, match="trainable parameters, the config implies"):
        run_planted(count_matches_config, plain_lora)

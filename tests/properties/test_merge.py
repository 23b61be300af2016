"""Merging: merged ≡ unmerged output, unmerge restores the base, merging twice warns and is a no-op."""

from __future__ import annotations

import functools
import warnings

import pytest
import torch
from hypothesis import given
from peft.tuners.lora import layer as lora_layer

from peftcheck import strategies as ps

from ._checks import (
    assert_changed,
    assert_close,
    assert_same_state,
    base_state,
    cases,
    run_planted,
)

MERGEABLE = ("lora", "ia3", "loha", "lokr", "vera")
ADAPTER = frozenset({"default"})

mergeable = cases(
    ps.adapted_models(ps.base_models(), configs=functools.partial(ps.peft_configs, methods=MERGEABLE))
)
# The planted defects patch plain LoRA's Linear layer, so they draw only that, in float32.
plain_lora = cases(
    ps.adapted_models(
        ps.base_models(decoders=False),
        configs=functools.partial(ps.lora_configs, dora=False, lora_bias=False, embeddings=False),
        dtypes=ps.dtypes(half=False),
    )
)


def merge_matches_unmerged(adapted: ps.AdaptedModel, batch: dict[str, torch.Tensor]) -> None:
    model = adapted.build()
    base_out = ps.model_output(adapted.base.build(dtype=adapted.dtype), batch)
    unmerged = ps.model_output(model, batch)
    assert_changed(unmerged, base_out, dtype=adapted.dtype, what="unmerged adapter")
    model.merge_adapter()
    merged = ps.model_output(model, batch)
    assert_close(merged, unmerged, dtype=adapted.dtype, what="merged vs unmerged output")


def unmerge_restores_base(adapted: ps.AdaptedModel, batch: dict[str, torch.Tensor]) -> None:
    model = adapted.build()
    unmerged = ps.model_output(model, batch)
    before = base_state(model, ADAPTER)
    model.merge_adapter()
    merged = base_state(model, ADAPTER)
    assert any(not torch.equal(merged[k], before[k]) for k in before), "merging changed no base tensor"
    model.unmerge_adapter()
    assert_same_state(
        base_state(model, ADAPTER), before, what="after unmerge", dtype=adapted.dtype, scale=merged
    )
    if adapted.dtype == torch.float32:
        # In half precision the weights above are the property: fl(fl(W + ΔW) - ΔW) is off by
        # eps·|W + ΔW|, which for a large adapter on small base weights (alpha 16, r 1, fp16)
        # is 10% of W, and no output tolerance stated relative to the output can bound that.
        again = ps.model_output(model, batch)
        assert_close(again, unmerged, dtype=adapted.dtype, what="output after merge + unmerge")


def merge_twice_is_noop(adapted: ps.AdaptedModel, batch: dict[str, torch.Tensor]) -> None:
    model = adapted.build()
    before = base_state(model, ADAPTER)
    model.merge_adapter()
    once_state = base_state(model, ADAPTER)
    assert any(not torch.equal(once_state[k], before[k]) for k in before), "merging changed no base tensor"
    once_out = ps.model_output(model, batch)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model.merge_adapter()
    messages = [str(w.message) for w in caught]
    assert any("already merged" in m for m in messages), f"no 'already merged' warning: {messages}"
    assert_same_state(base_state(model, ADAPTER), once_state, what="after merging twice")
    assert torch.equal(ps.model_output(model, batch), once_out), "merging twice changed the output"


@given(mergeable)
def test_merged_output_equals_unmerged(case: tuple[ps.AdaptedModel, dict[str, torch.Tensor]]) -> None:
    merge_matches_unmerged(*case)


@given(mergeable)
def test_unmerge_restores_base_weights(case: tuple[ps.AdaptedModel, dict[str, torch.Tensor]]) -> None:
    unmerge_restores_base(*case)


@given(mergeable)
def test_merge_twice_warns_and_changes_nothing(case: tuple[ps.AdaptedModel, dict[str, torch.Tensor]]) -> None:
    merge_twice_is_noop(*case)


# --- planted defects: each property above must be able to fail --------------------------------


def test_planted_wrong_merge_scale_is_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    """A merge that adds 1.1·ΔW (unmerge subtracts the same, so only the output can tell)."""
    original = lora_layer.Linear.get_delta_weight

    def scaled(self: lora_layer.Linear, adapter: str) -> torch.Tensor:
        return original(self, adapter) * 1.1

    monkeypatch.setattr(lora_layer.Linear, "get_delta_weight", scaled)
    with pytest.raises(AssertionError, match="merged vs unmerged"):
        run_planted(merge_matches_unmerged, plain_lora)


def test_planted_unmerge_residue_is_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    """An unmerge that leaves 1% of ΔW in the base weight."""
    original = lora_layer.Linear.unmerge

    def leaky(self: lora_layer.Linear) -> None:
        merged = list(self.merged_adapters)
        original(self)
        for name in merged:
            self.get_base_layer().weight.data += 0.01 * self.get_delta_weight(name)

    monkeypatch.setattr(lora_layer.Linear, "unmerge", leaky)
    with pytest.raises(AssertionError, match="after unmerge"):
        run_planted(unmerge_restores_base, plain_lora)


def test_planted_double_merge_is_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    """A merge that forgets which adapters are already merged, adding ΔW a second time."""
    monkeypatch.setattr(lora_layer, "check_adapters_to_merge", lambda module, names=None: names or module.active_adapters)
    with pytest.raises(AssertionError, match="already merged|merging twice|after merging twice"):
        run_planted(merge_twice_is_noop, plain_lora)

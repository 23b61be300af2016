"""disable_adapter ≡ base; deleting an adapter leaves the base intact."""

from __future__ import annotations

import functools

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from peft.tuners.lora import layer as lora_layer
from peft.tuners.tuners_utils import BaseTunerLayer
from torch import nn

from peftcheck import strategies as ps

from ._checks import assert_changed, assert_close, assert_same_state, base_state, cases, run_planted

ADAPTER = frozenset({"default"})
WEIGHT_METHODS = ("lora", "ia3", "loha", "lokr", "vera")

any_adapter = cases(ps.adapted_models(ps.base_models()))
weight_adapter = cases(
    ps.adapted_models(ps.base_models(), configs=functools.partial(ps.peft_configs, methods=WEIGHT_METHODS))
)
plain_lora = cases(
    ps.adapted_models(
        ps.base_models(decoders=False),
        configs=functools.partial(ps.lora_configs, dora=False, lora_bias=False, embeddings=False),
        dtypes=ps.dtypes(half=False),
    )
)


def disable_is_base(adapted: ps.AdaptedModel, batch: dict[str, torch.Tensor]) -> None:
    base_out = ps.model_output(adapted.base.build(dtype=adapted.dtype), batch)
    model = adapted.build()
    adapted_out = ps.model_output(model, batch)
    if adapted_out.shape != base_out.shape:  # prompt tuning prepends its virtual tokens
        adapted_out = adapted_out[:, -base_out.shape[1] :]
    assert_changed(adapted_out, base_out, dtype=adapted.dtype, what="enabled adapter")
    with model.disable_adapter():
        disabled = ps.model_output(model, batch)
    # Disabled layers run the very same base computation, so this is bitwise, not a tolerance.
    assert torch.equal(disabled, base_out), (
        f"disable_adapter output differs from the base by {(disabled.float() - base_out.float()).abs().max():.3g}"
    )
    again = ps.model_output(model, batch)
    assert torch.equal(again[:, -base_out.shape[1] :] if again.dim() == 3 else again, adapted_out), (
        "leaving disable_adapter() did not restore the adapted output"
    )


def delete_keeps_base(adapted: ps.AdaptedModel, batch: dict[str, torch.Tensor], merge_first: bool) -> None:
    original = adapted.base.build(dtype=adapted.dtype)
    expected = {k: v.clone() for k, v in original.state_dict().items()}
    base_out = ps.model_output(original, batch)
    model = adapted.build()
    assert_changed(ps.model_output(model, batch), base_out, dtype=adapted.dtype, what="adapter")
    merged = None
    if merge_first:
        model.merge_adapter()
        merged = base_state(model, ADAPTER)
        model.unmerge_adapter()
    model.delete_adapter("default")
    assert not ps.adapter_parameters(model, "default"), "parameters of the deleted adapter remain"
    # The tuner's wrapped model: PeftModel.forward cannot run without an adapter (see
    # test_forward_after_deleting_the_only_adapter in test_regressions.py).
    inner: nn.Module = model.base_model.model
    out = ps.model_output(inner, batch)
    if merged is not None:  # an unmerge cannot undo the rounding of W + ΔW (see test_merge.py)
        assert_same_state(
            base_state(inner, ADAPTER), expected, what="base after delete", dtype=adapted.dtype, scale=merged
        )
        if adapted.dtype == torch.float32:
            assert_close(out, base_out, dtype=adapted.dtype, what="output after delete")
    else:
        assert_same_state(base_state(inner, ADAPTER), expected, what="base after delete")
        assert torch.equal(out, base_out), "output after delete differs from the base"


@given(any_adapter)
def test_disable_adapter_equals_base(case: tuple[ps.AdaptedModel, dict[str, torch.Tensor]]) -> None:
    disable_is_base(*case)


@given(weight_adapter, st.booleans())
def test_delete_adapter_leaves_base_intact(
    case: tuple[ps.AdaptedModel, dict[str, torch.Tensor]], merge_first: bool
) -> None:
    delete_keeps_base(*case, merge_first)


# --- planted defects ------------------------------------------------------------------------


def test_planted_disable_that_does_nothing_is_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    """Adapter layers that ignore being disabled."""
    original = BaseTunerLayer.enable_adapters

    def stuck(self: BaseTunerLayer, enabled: bool) -> None:
        original(self, True)

    monkeypatch.setattr(BaseTunerLayer, "enable_adapters", stuck)
    with pytest.raises(AssertionError, match="disable_adapter output differs"):
        run_planted(disable_is_base, plain_lora)


def test_planted_delete_residue_is_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    """A delete that folds 1% of the adapter into the base weight on its way out."""
    original = lora_layer.LoraLayer.delete_adapter

    def leaky(self: lora_layer.LoraLayer, adapter_name: str) -> None:
        if adapter_name in self.lora_A:
            self.get_base_layer().weight.data += 0.01 * self.get_delta_weight(adapter_name)
        original(self, adapter_name)

    monkeypatch.setattr(lora_layer.LoraLayer, "delete_adapter", leaky)
    with pytest.raises(AssertionError, match="base after delete"):
        run_planted(lambda adapted, batch: delete_keeps_base(adapted, batch, False), plain_lora)

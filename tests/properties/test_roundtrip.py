"""save_pretrained → from_pretrained reproduces outputs and the state dict exactly."""

from __future__ import annotations

import tempfile
import warnings

import peft.peft_model
import pytest
import torch
from hypothesis import given
from peft import PeftModel, get_peft_model_state_dict

from peftcheck import strategies as ps

from ._checks import assert_changed, cases, run_planted

any_adapter = cases(ps.adapted_models(ps.base_models()))
mlp_adapter = cases(ps.adapted_models(ps.mlps(), dtypes=ps.dtypes(half=False)))


def _assert_same_tensors(actual: dict[str, torch.Tensor], expected: dict[str, torch.Tensor], what: str) -> None:
    assert actual.keys() == expected.keys(), (
        f"{what}: missing {sorted(expected.keys() - actual.keys())}, extra {sorted(actual.keys() - expected.keys())}"
    )
    for key, tensor in expected.items():
        assert actual[key].dtype == tensor.dtype, f"{what}: {key} is {actual[key].dtype}, saved {tensor.dtype}"
        assert torch.equal(actual[key], tensor), f"{what}: {key} differs after reload"


def roundtrip_is_exact(adapted: ps.AdaptedModel, batch: dict[str, torch.Tensor]) -> None:
    model = adapted.build()
    out = ps.model_output(model, batch)
    base_out = ps.model_output(adapted.base.build(dtype=adapted.dtype), batch)
    assert_changed(out[:, -base_out.shape[1] :] if out.shape != base_out.shape else out, base_out,
                   dtype=adapted.dtype, what="adapter")
    with tempfile.TemporaryDirectory() as folder, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.save_pretrained(folder)
        loaded = PeftModel.from_pretrained(adapted.base.build(dtype=adapted.dtype), folder).eval()
    _assert_same_tensors(
        get_peft_model_state_dict(loaded), get_peft_model_state_dict(model), "adapter state dict"
    )
    _assert_same_tensors(loaded.state_dict(), model.state_dict(), "full state dict")
    assert torch.equal(ps.model_output(loaded, batch), out), "reloaded model's output differs"


@given(any_adapter)
def test_save_load_roundtrip_is_exact(case: tuple[ps.AdaptedModel, dict[str, torch.Tensor]]) -> None:
    roundtrip_is_exact(*case)


def test_planted_dropped_tensor_on_save_is_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    """A save that silently leaves one adapter tensor out of the checkpoint."""
    original = peft.peft_model.get_peft_model_state_dict

    def lossy(*args: object, **kwargs: object) -> dict[str, torch.Tensor]:
        state = dict(original(*args, **kwargs))
        state.pop(sorted(state)[-1])
        return state

    monkeypatch.setattr(peft.peft_model, "get_peft_model_state_dict", lossy)
    with pytest.raises(AssertionError, match="differs after reload|missing"):
        run_planted(roundtrip_is_exact, mlp_adapter)

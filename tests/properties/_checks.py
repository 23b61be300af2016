"""Assertions the property tests share: dtype-scaled closeness, "the adapter changed the output",
snapshots of the base weights under a PeftModel, and running a property against a planted defect."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from hypothesis import HealthCheck, Phase, assume, event, given, settings
from hypothesis import strategies as st
from torch import nn

from peftcheck import strategies as ps

# Names of the wrappers peft puts between a module and its original parameters.
_WRAPPER_PARTS = frozenset({"base_layer", "original_module"})


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape, f"shapes differ: {tuple(a.shape)} vs {tuple(b.shape)}"
    return float((a.float() - b.float()).abs().max())


def assert_close(actual: torch.Tensor, expected: torch.Tensor, *, dtype: torch.dtype, what: str) -> None:
    bound = ps.tolerance_for(dtype).bound(expected)
    diff = max_diff(actual, expected)
    assert diff <= bound, f"{what}: max |difference| {diff:.3g} > tolerance {bound:.3g} ({dtype})"


def assert_changed(adapted: torch.Tensor, base: torch.Tensor, *, dtype: torch.dtype, what: str) -> None:
    """The pairing of every equality check: the adapter changes the output beyond the tolerance.

    An example where it does not (rank 1 on q_proj of a decoder whose attention scores are too
    small for fp16 to see; a hidden layer whose ReLUs are all off) would make the equality
    vacuous, so it is discarded rather than counted as a pass. Should no example change the
    output (an adapter that is never applied), Hypothesis fails the test as unsatisfiable.
    """
    bound = ps.tolerance_for(dtype).bound(base)
    diff = max_diff(adapted, base)
    event(f"{what}: effect {'above' if diff > bound else 'within'} the {dtype} tolerance")
    assume(diff > bound)


def base_state(model: nn.Module, adapter_names: set[str] | frozenset[str]) -> dict[str, torch.Tensor]:
    """Copies of the base model's tensors inside a PeftModel, under the names they have in the
    unwrapped base (adapter tensors and peft's wrapper levels left out)."""
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    out: dict[str, torch.Tensor] = {}
    for name, tensor in inner.state_dict().items():
        parts = name.split(".")
        if set(parts) & adapter_names:
            continue
        out[".".join(p for p in parts if p not in _WRAPPER_PARTS)] = tensor.detach().clone()
    return out


def assert_same_state(
    actual: dict[str, torch.Tensor], expected: dict[str, torch.Tensor], *, what: str,
    dtype: torch.dtype | None = None, scale: dict[str, torch.Tensor] | None = None,
) -> None:
    """Equal key sets and tensors: bitwise without ``dtype``, else within its tolerance of
    ``scale`` (the merged weights, whose rounding an unmerge cannot undo)."""
    assert actual.keys() == expected.keys(), (
        f"{what}: keys differ: missing {sorted(expected.keys() - actual.keys())}, "
        f"extra {sorted(actual.keys() - expected.keys())}"
    )
    for key, tensor in expected.items():
        if dtype is None:
            assert torch.equal(actual[key], tensor), f"{what}: {key} changed (max diff {max_diff(actual[key], tensor):.3g})"
            continue
        reference = tensor if scale is None else torch.maximum(tensor.abs(), scale[key].abs())
        bound = ps.tolerance_for(dtype).bound(reference)
        diff = max_diff(actual[key], tensor)
        assert diff <= bound, f"{what}: {key} differs by {diff:.3g} > {bound:.3g} ({dtype})"


def trainable_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


Property = Callable[[ps.AdaptedModel, dict[str, torch.Tensor]], None]


def cases(adapted: st.SearchStrategy[ps.AdaptedModel]) -> st.SearchStrategy[tuple[ps.AdaptedModel, dict[str, torch.Tensor]]]:
    """An adapted model with an input batch for it, in its dtype."""
    return adapted.flatmap(
        lambda a: st.tuples(st.just(a), ps.input_batches(a.base, dtype=a.dtype))
    )


# A planted defect must make the property fail within a few examples. No shrinking (only the
# fact of failing matters) and no database, so a run cannot replay an old failure.
PLANTED = settings(
    max_examples=25,
    phases=(Phase.generate,),
    database=None,
    deadline=None,
    report_multiple_bugs=False,
    suppress_health_check=list(HealthCheck),
)


def run_planted(prop: Callable[..., Any], strategy: st.SearchStrategy[Any]) -> None:
    """Run ``prop`` on ``strategy`` under PLANTED settings; the caller expects it to fail."""

    @PLANTED
    @given(strategy)
    def run(case: Any) -> None:
        if isinstance(case, tuple):
            prop(*case)
        else:
            prop(case)

    run()

"""Dtypes, input batches for a tiny model, and dtype-scaled tolerances."""

from __future__ import annotations

import dataclasses

import torch
from hypothesis import strategies as st
from hypothesis.strategies import SearchStrategy

from peftcheck._strategies.models import TinyModel

__all__ = ["Tolerance", "tolerance_for", "dtypes", "input_batches"]

Batch = dict[str, torch.Tensor]


@dataclasses.dataclass(frozen=True)
class Tolerance:
    """``|a - b| <= atol + rtol * max|b|``: closeness scaled to the size of the expected tensor."""

    rtol: float
    atol: float

    def bound(self, expected: torch.Tensor) -> float:
        return self.atol + self.rtol * float(expected.detach().abs().max().float())


# Merging rounds W + ΔW once to the dtype where the unmerged path rounds x·W and x·ΔW apart;
# through a few layers (softmax amplifies when a large adapter makes logits large) that is
# up to ~150 epsilons of the dtype (fp32 1.2e-7, fp16 9.8e-4, bf16 7.8e-3) relative to the
# output in fp32, and ~10-15 in half precision, whose products accumulate in fp32 but where
# DoRA's unmerge divides by a weight norm computed in the dtype (14 fp16 epsilons seen). Each
# bound leaves a margin over the largest difference seen in the "thorough" profile and stays
# well below what a merge scale off by 10% produces.
_TOLERANCES = {
    torch.float32: Tolerance(rtol=1e-4, atol=1e-5),
    torch.float16: Tolerance(rtol=2e-2, atol=2e-3),
    torch.bfloat16: Tolerance(rtol=8e-2, atol=1.5e-2),
}


def tolerance_for(dtype: torch.dtype) -> Tolerance:
    """The tolerance merged-vs-unmerged comparisons use for outputs computed in ``dtype``."""
    try:
        return _TOLERANCES[dtype]
    except KeyError:
        known = ", ".join(str(d) for d in _TOLERANCES)
        raise ValueError(f"dtype={dtype!r} has no tolerance; use one of {known}") from None


def dtypes(*, half: bool = True) -> SearchStrategy[torch.dtype]:
    """float32, and unless ``half=False`` also float16 and bfloat16 (all run on CPU)."""
    options = [torch.float32, torch.float16, torch.bfloat16] if half else [torch.float32]
    return st.sampled_from(options)


def input_batches(
    model: TinyModel, *, dtype: torch.dtype = torch.float32, max_batch: int = 3
) -> SearchStrategy[Batch]:
    """Keyword arguments for ``model``'s forward: a float tensor or ``input_ids`` (+ mask).

    Shapes come from hypothesis; values from a drawn seed, so examples stay small and shrink
    to seed 0 rather than to a tensor of zeros.
    """
    if max_batch < 1:
        raise ValueError(f"max_batch={max_batch!r} must be >= 1")
    # At least two positions: with one, attention weights are 1 whatever q and k are, so an
    # adapter on q_proj/k_proj alone could not change the output.
    shapes = st.tuples(
        st.integers(min_value=1, max_value=max_batch),
        st.integers(min_value=min(2, model.max_length), max_value=model.max_length),
    )
    seeds = st.integers(min_value=0, max_value=2**16)
    if model.input_kind == "tokens":
        return st.builds(_token_batch, shapes, seed=seeds, model=st.just(model))
    scales = st.sampled_from([1.0, 0.1, 3.0])
    return st.builds(
        _float_batch, shapes, seed=seeds, scale=scales, model=st.just(model), dtype=st.just(dtype)
    )


def _generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _token_batch(shape: tuple[int, int], *, seed: int, model: TinyModel) -> Batch:
    ids = torch.randint(0, model.input_size, shape, generator=_generator(seed))
    if not model.is_causal_lm:
        return {"input_ids": ids}
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}


def _float_batch(
    shape: tuple[int, int], *, seed: int, scale: float, model: TinyModel, dtype: torch.dtype
) -> Batch:
    batch, length = shape
    size = (batch, model.input_size) if model.input_kind == "features" else (*shape, model.input_size)
    x = torch.randn(size, generator=_generator(seed)) * scale
    return {"x": x.to(dtype)}

"""Comparing models on the probe batch: logit differences, distribution agreement, base weights."""

from __future__ import annotations

import dataclasses
import math
from typing import Any

from pydantic import Field

from peftcheck.checks.registry import CheckParams
from peftcheck.context import CheckContext
from peftcheck.resources.footprint import float_weight
from peftcheck.tolerances import Tolerance, tolerance_for

__all__ = [
    "ToleranceParams", "table_tolerance", "Diff", "real_logits", "adapter_logits", "base_logits", "compare",
    "judged", "judged_unit", "worst", "weight_diff",
]  # fmt: skip


class ToleranceParams(CheckParams):
    """Overrides of single fields of the tolerance table (peftcheck.tolerances)."""

    max_abs: float | None = Field(None, ge=0, description="Largest |logit difference| (float bases).")
    mean_abs: float | None = Field(None, ge=0, description="Largest mean |logit difference| (float bases).")
    max_kl: float | None = Field(None, ge=0, description="Largest mean KL(reference || other), nats (4/8-bit bases).")
    min_top1: float | None = Field(None, ge=0, le=1, description="Smallest top-1 token agreement (4/8-bit bases).")
    weight_rtol: float | None = Field(
        None, ge=0, description="Largest base-weight change after unmerge, relative to the tensor's max |w|."
    )

    def tolerance(self, ctx: CheckContext) -> Tolerance:
        return table_tolerance(ctx).override(**self.model_dump(include={"max_abs", "mean_abs", "max_kl", "min_top1", "weight_rtol"}))


def table_tolerance(ctx: CheckContext) -> Tolerance:
    """The tolerance table's entry for this method's base dtype/quantization and peft type."""
    artifact = ctx.artifact()
    peft_type = getattr(artifact.config, "peft_type", None)
    return tolerance_for(
        dtype=artifact.base.dtype,
        quantization=artifact.base.quantization,
        peft_type=str(getattr(peft_type, "value", peft_type) or type(artifact.config).__name__),
    )


@dataclasses.dataclass(frozen=True)
class Diff:
    """How far one model's outputs are from a reference's, over the real (unpadded) tokens."""

    max_abs: float  # largest |logit difference|
    mean_abs: float  # mean |logit difference|
    kl: float  # mean KL(reference || other) per token, nats
    top1: float  # fraction of tokens where both predict the same next token

    def as_dict(self) -> dict[str, float]:
        return dataclasses.asdict(self)

    def __str__(self) -> str:
        return (
            f"max |Δ| {self.max_abs:.3g}, mean |Δ| {self.mean_abs:.3g}, "
            f"KL {self.kl:.3g}, top-1 agreement {self.top1:.4f}"
        )


def real_logits(model: Any, batch: dict[str, Any]) -> Any:
    """Float32 CPU logits of ``model`` at the real tokens of ``batch``: [tokens, vocab].

    Prompt-learning methods return logits for their virtual tokens first; they are dropped."""
    from peftcheck.measure import logits

    out = logits(model, batch)
    mask = batch["attention_mask"].bool().cpu()
    return out[:, -mask.shape[1] :][mask]


def adapter_logits(ctx: CheckContext) -> Any:
    """The trained adapter's logits on the probe batch (memoised per artifact)."""
    artifact = ctx.artifact()
    if "logits:adapter" not in artifact.memo:
        artifact.memo["logits:adapter"] = real_logits(artifact.model, ctx.probe())
    return artifact.memo["logits:adapter"]


def base_logits(ctx: CheckContext) -> Any:
    """The untouched base model's logits on the probe batch (memoised per artifact)."""
    artifact = ctx.artifact()
    if "logits:base" not in artifact.memo:
        artifact.memo["logits:base"] = real_logits(artifact.base.model, ctx.probe())
    return artifact.memo["logits:base"]


def judged(diff: Diff, tol: Tolerance) -> float:
    """The figure ``tol`` judges ``diff`` by: KL for a distribution tolerance, else max |Δlogit|."""
    return diff.kl if tol.by_distribution else diff.max_abs


def judged_unit(tol: Tolerance) -> str:
    return "nats KL" if tol.by_distribution else "max |Δlogit|"


def worst(diffs: dict[str, Diff], tol: Tolerance) -> Diff:
    """The comparison furthest off by the figure ``tol`` judges."""
    return max(diffs.values(), key=lambda d: judged(d, tol))


def compare(reference: Any, other: Any) -> Diff:
    """Differences of ``other`` from ``reference`` (both [tokens, vocab] float32)."""
    import torch

    if reference.shape != other.shape:
        raise ValueError(f"output shapes differ: {tuple(reference.shape)} vs {tuple(other.shape)}")
    delta = (other - reference).abs()
    log_p = torch.log_softmax(reference.double(), dim=-1)
    log_q = torch.log_softmax(other.double(), dim=-1)
    kl = (log_p.exp() * (log_p - log_q)).sum(-1).clamp_min(0.0).mean()
    top1 = (reference.argmax(-1) == other.argmax(-1)).double().mean()
    finite = bool(torch.isfinite(other).all())
    return Diff(
        max_abs=float(delta.max()) if finite else math.inf,
        mean_abs=float(delta.mean()) if finite else math.inf,
        kl=float(kl) if finite else math.inf,
        top1=float(top1),
    )


def _base_params(model: Any) -> dict[str, tuple[Any, Any]]:
    """Base parameter name -> (owning module, parameter), for a plain model or a PeftModel's
    base with its adapter wrappers' ``base_layer`` names folded back (no copies)."""
    if hasattr(model, "get_base_model"):
        model = model.get_base_model()
    params: dict[str, tuple[Any, Any]] = {}
    for module_name, module in model.named_modules():
        for name, param in module.named_parameters(recurse=False):
            full = f"{module_name}.{name}" if module_name else name
            params.setdefault(full.replace(".base_layer.", ".").replace(".original_module.", "."), (module, param))
    return params


def weight_diff(reference: Any, other: Any) -> tuple[float, str | None, list[str]]:
    """Base weights of ``other`` against those of ``reference`` (dequantized where quantized):
    (largest ||W' - W|| / max(||W||, ||W'||) over the tensors, which tensor, tensors missing or
    reshaped)."""
    import torch

    theirs = _base_params(other)
    worst, where, missing = 0.0, None, []
    for name, (module, param) in _base_params(reference).items():
        if name not in theirs:
            missing.append(name)
            continue
        original = float_weight(module, param)
        current = float_weight(*theirs[name])
        if current.shape != original.shape:
            missing.append(name)
            continue
        if torch.equal(current, original):
            continue
        # relative to the larger norm: a zero-initialised bias (OPT's) that a merge moves is off by
        # at most 2, not by 1e30
        norm = torch.maximum(torch.linalg.vector_norm(original), torch.linalg.vector_norm(current)).clamp_min(1e-30)
        change = float(torch.linalg.vector_norm(current - original) / norm)
        if math.isnan(change):  # a NaN weight: the furthest off, not skipped by the comparison (issue 26)
            change = math.inf
        if change > worst:
            worst, where = change, name
    return worst, where, missing

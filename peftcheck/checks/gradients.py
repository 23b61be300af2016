"""Gradient checkpointing trains what training without it trains (issue 16; PEFT's
``_test_training_gradient_checkpointing``): PEFT with reentrant checkpointing once gave the
adapter no gradient at all, because the frozen embeddings' output did not require grad
(transformers#25841, #26334), and the loss curve alone does not show it."""

from __future__ import annotations

import copy
from typing import Any

from pydantic import Field

from peftcheck.checks import adapter_ops
from peftcheck.checks.registry import CheckParams, Measurement, NotApplicable, register_check
from peftcheck.context import CheckContext

__all__ = ["GradientCheckpointingParams", "gradient_checkpointing"]


class GradientCheckpointingParams(CheckParams):
    max_relative: float = Field(
        1e-4, ge=0, lt=1,
        description="Largest |g_ckpt - g| / max|g| over each trainable tensor: recomputation "
        "replays the same forward, so only rounding may differ.",
    )  # fmt: skip
    modes: list[bool] = Field(
        [True, False], min_length=1, description="use_reentrant values to run (both by default)."
    )


def _gradients(model: Any, batch: dict[str, Any], seed: int) -> tuple[float, dict[str, Any]]:
    """Loss and the gradient of every trainable tensor (None where none arrived) of one
    forward and backward in train mode, dropout seeded so both runs draw the same masks."""
    import torch

    model.train()
    model.zero_grad(set_to_none=True)
    torch.manual_seed(seed)
    loss = model(**batch).loss
    loss.backward()
    grads = {n: None if p.grad is None else p.grad.detach().float().cpu() for n, p in model.named_parameters()
             if p.requires_grad}  # fmt: skip
    return float(loss), grads


def _enable(model: Any, reentrant: bool) -> None:
    """Checkpointing on, the way the installed Trainer turns it on: transformers 5.x renamed
    gradient_checkpointing_enable to activation_checkpointing_enable (the old name warns)."""
    kwargs = {"use_reentrant": reentrant}
    if hasattr(model.get_base_model(), "activation_checkpointing_enable"):
        model.get_base_model().activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)


def _relative(ours: Any, reference: Any) -> float:
    scale = float(reference.abs().max())
    return float((ours - reference).abs().max()) / scale if scale > 0 else float((ours - reference).abs().max())


@register_check("gradient_checkpointing", params=GradientCheckpointingParams, needs_training=True)
def gradient_checkpointing(ctx: CheckContext, params: GradientCheckpointingParams) -> Measurement:
    """With gradient checkpointing enabled the way Trainer enables it (``use_reentrant`` True and
    False), one training step gives every trainable tensor the gradient it gets without it."""
    from peftcheck.methods import supports_gradient_checkpointing
    from peftcheck.resources.calls import train_batch

    artifact = ctx.artifact()
    adapter_ops.require(artifact.model, "gradient_checkpointing_enable on a PeftModel")
    reason = supports_gradient_checkpointing(artifact.config)
    if reason is not None:
        raise NotApplicable(reason)
    batch, seed = train_batch(artifact), int(ctx.suite.spec.train_args(ctx.method)["seed"])
    plain = copy.deepcopy(artifact.model)
    if getattr(plain, "is_gradient_checkpointing", False):  # the suite trained with it: the reference runs without
        base = plain.get_base_model()
        (getattr(base, "activation_checkpointing_disable", None) or base.gradient_checkpointing_disable)()
    loss, reference = _gradients(plain, batch, seed)
    del plain
    reached = sorted(n for n, g in reference.items() if g is not None and bool(g.abs().sum() > 0))

    problems, runs = [], {}
    if not reached:
        problems.append(f"without checkpointing no trainable tensor of {len(reference)} gets a gradient: nothing to compare")
    for reentrant in params.modes:
        model = copy.deepcopy(artifact.model)
        _enable(model, reentrant)
        what = f"use_reentrant={reentrant}"
        try:
            ckpt_loss, grads = _gradients(model, batch, seed)
        except (RuntimeError, ValueError) as exc:
            problems.append(f"{what}: the training step raised {type(exc).__name__}: {str(exc)[:200]}")
            runs[what] = {"error": f"{type(exc).__name__}: {str(exc)[:200]}"}
            continue
        finally:
            del model
        lost = [n for n in reached if grads.get(n) is None or not bool(grads[n].abs().sum() > 0)]
        worst, worst_at = 0.0, None
        for name in reached:
            if name not in lost:
                apart = _relative(grads[name], reference[name])
                if apart > worst:
                    worst, worst_at = apart, name
        runs[what] = {"loss": ckpt_loss, "lost": lost[:20], "lost_count": len(lost), "max_relative": worst,
                      "worst_tensor": worst_at}  # fmt: skip
        if lost:
            problems.append(f"{what}: {len(lost)} of {len(reached)} trainable tensors get no gradient: {lost[:3]}")
        if worst > params.max_relative:
            problems.append(f"{what}: gradient of {worst_at} is off by {worst:.3g} relative (> {params.max_relative:g})")
        if abs(ckpt_loss - loss) > params.max_relative * max(abs(loss), 1.0):
            problems.append(f"{what}: loss {ckpt_loss:.6g} vs {loss:.6g} without checkpointing")
    value = max((r["max_relative"] for r in runs.values() if "error" not in r), default=0.0)
    summary = "; ".join(
        f"{w}: {r['error']}" if "error" in r else f"{w}: {len(reached) - r['lost_count']}/{len(reached)} tensors, "
        f"max relative {r['max_relative']:.3g}" for w, r in runs.items()
    )  # fmt: skip
    return Measurement(
        passed=not problems,
        value=value,
        bound=f"every tensor reached without checkpointing is reached with it, within {params.max_relative:g} relative",
        unit="max relative gradient difference",
        message="; ".join(problems) or f"loss {loss:.4f}, {len(reached)} trainable tensors with a gradient; {summary}",
        details={"loss": loss, "reached": len(reached), "trainable_tensors": len(reference), "runs": runs},
    )

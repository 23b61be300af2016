"""Quantized bases (issue 27): the state a bitsandbytes layer computes with, read by value so
base_frozen sees it, and quantization_fidelity, a quantized base against its float base.

The layer state itself is read in peftcheck/resources/quant_state.py: no check imports an adapter
library."""

from __future__ import annotations

import copy
from typing import Any

from pydantic import Field

from peftcheck.checks.registry import CheckParams, Measurement, NotApplicable, register_check
from peftcheck.context import CheckContext
from peftcheck.resources.quant_state import (
    LayerState, differences, is_quantized, layer_errors, layer_readers, layer_states, scheme_of, state_changes,
)  # fmt: skip

__all__ = [
    "LayerState", "is_quantized", "layer_readers", "layer_states", "differences", "state_changes", "scheme_of",
    "layer_errors",
    "quantization_fidelity",
]  # fmt: skip

class FidelityParams(CheckParams):
    max_kl: float | None = Field(None, ge=0, description="Largest mean KL(float base || quantized base), nats.")
    min_top1: float | None = Field(None, ge=0, le=1, description="Smallest top-1 agreement with the float base.")
    max_layer_error: float | None = Field(
        None, gt=0, description="Largest ||dequantize(W_q) - W|| / ||W|| of any quantized layer against its float weight."
    )
    max_kernel_error: float | None = Field(
        None, gt=0, description="Largest distance of bitsandbytes' dequantize_4bit from the layer's own codes and "
        "scales read as flat blocks (4-bit layers), relative.",
    )


def _quantized_copy(base: Any) -> Any:
    """The quantized base as training computes with it, on a copy: nothing here may change what
    the methods train from. On a CPU with AVX512-BF16 bitsandbytes would repack 4-bit weights on
    this no-grad forward (and raise where a width is not a multiple of 64, issue 27)."""
    model = copy.deepcopy(base.training_source) if base.pristine is not None else base.model
    if base.pristine is not None:
        for module in model.modules():
            if hasattr(module, "support_avx512bf16_for_cpu"):
                module.support_avx512bf16_for_cpu = False  # dequantize + float matmul: QLoRA's training path
    return model


def _measure(ctx: CheckContext) -> dict[str, Any]:
    """KL / top-1 of the quantized base against the float base on the probe texts, and every
    layer's dequantization error; memoised on the quantized base per suite probe."""
    from peftcheck.checks.outputs import compare, real_logits
    from peftcheck.measure import probe_batch

    base = ctx.base()
    spec = ctx.suite.spec
    texts = ctx.pipeline.data(ctx.suite, base.tokenizer).eval_texts
    key = ("fidelity", tuple(texts), spec.data.max_length)
    if key not in base.memo:
        float_base = ctx.pipeline.base(ctx.suite, "none")
        batch = probe_batch(base.tokenizer, texts, max_length=spec.data.max_length, device=base.device)
        quantized = _quantized_copy(base)
        diff = compare(real_logits(float_base.model, batch), real_logits(quantized, batch))
        base.memo[key] = {"diff": diff, "layers": layer_errors(quantized, float_base.model),
                          "scheme": scheme_of(quantized), "tokens": int(batch["attention_mask"].sum())}  # fmt: skip
    return base.memo[key]


def _layer_problem(name: str, row: dict[str, float], bound: Any) -> str:
    text = f"{name}: dequantized {row['error']:.3g} off the float weight"
    if bound.max_kernel_error is not None and row.get("kernel", 0.0) > bound.max_kernel_error:
        return text + (f", its own codes and scales read as flat blocks: {row['reference']:.3g}; bitsandbytes' "
                       f"dequantize_4bit is {row['kernel']:.3g} off them > {bound.max_kernel_error:g}: the kernel "
                       "applies the wrong scales")  # fmt: skip
    return text + f" > {bound.max_layer_error:g}"


@register_check("quantization_fidelity", params=FidelityParams)
def quantization_fidelity(ctx: CheckContext, params: FidelityParams) -> Measurement:
    """The quantized base stays close to its float base: KL, top-1 agreement, per-layer weight error."""
    from peftcheck.tolerances import fidelity_for

    if ctx.spec.quantization == "none":
        raise NotApplicable(f"methods.{ctx.method} has a float base: nothing quantized to compare")
    found = _measure(ctx)
    diff, layers, scheme = found["diff"], found["layers"], found["scheme"]
    if scheme is None:  # the quantization config matched no layer: the "quantized" base is the float one
        return Measurement(passed=False, value=None, bound="a quantized base", unit=None,
                           message=f"methods.{ctx.method} asks for {ctx.spec.quantization}, but its base holds no "
                           "bitsandbytes-quantized weight")  # fmt: skip
    bound = fidelity_for(scheme).override(**params.model_dump())
    problems = []
    if not diff.kl <= bound.max_kl:
        problems.append(f"KL to the float base {diff.kl:.3g} > {bound.max_kl:g}")
    if not diff.top1 >= bound.min_top1:
        problems.append(f"top-1 agreement with the float base {diff.top1:.4f} < {bound.min_top1:g}")
    kernel_bound = bound.max_kernel_error if bound.max_kernel_error is not None else float("inf")
    off = sorted((n for n, r in layers.items()
                  if not (r["error"] <= bound.max_layer_error and r.get("kernel", 0.0) <= kernel_bound)),
                 key=lambda n: -layers[n]["error"])  # fmt: skip
    problems += [_layer_problem(n, layers[n], bound) for n in off[:3]]
    if len(off) > 3:
        problems.append(f"and {len(off) - 3} more of the {len(layers)} quantized layers")
    worst = max(layers, key=lambda n: layers[n]["error"]) if layers else None
    worst_error = layers[worst]["error"] if worst else 0.0
    kernel = max((r.get("kernel", 0.0) for r in layers.values()), default=0.0)
    return Measurement(
        passed=not problems,
        value=diff.kl,
        bound=f"{bound.describe()} ({bound.source})",
        unit="nats KL",
        message="; ".join(problems) or (
            f"{scheme} base vs float base on {found['tokens']} tokens: KL {diff.kl:.3g}, top-1 agreement "
            f"{diff.top1:.4f}; worst layer {worst} {worst_error:.3g} off its float weight ({len(layers)} layers)"
        ),
        details={"scheme": scheme, "vs_float": diff.as_dict(), "layers_off": off, "worst_layer": worst,
                 "max_kernel_error": kernel,
                 "layers": {n: layers[n] for n in sorted(layers, key=lambda n: -layers[n]["error"])[:20]}},  # fmt: skip
        metrics={"quant_kl": {"value": diff.kl, "unit": "nats"},
                 "quant_top1_agreement": {"value": diff.top1, "unit": "fraction"},
                 "quant_max_layer_error": {"value": worst_error, "unit": "relative"},
                 "quant_max_kernel_error": {"value": kernel, "unit": "relative"}},  # fmt: skip
    )

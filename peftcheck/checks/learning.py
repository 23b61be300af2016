"""Learning checks: the training loss goes down, held-out perplexity beats the base."""

from __future__ import annotations

import math

from pydantic import Field

from peftcheck.checks.registry import CheckParams, Measurement, NotApplicable, register_check
from peftcheck.context import CheckContext


class LossDecreaseParams(CheckParams):
    min_relative: float = Field(
        0.1, gt=-1, lt=1, description="Smallest (first - last) / first over the mean of the edge windows."
    )
    window: int = Field(3, ge=1, description="Logged steps averaged at each end (noise).")


@register_check("loss_decrease", params=LossDecreaseParams)
def loss_decrease(ctx: CheckContext, params: LossDecreaseParams) -> Measurement:
    """Training loss falls by at least min_relative between the first and last steps."""
    curve = [loss for _, loss in ctx.artifact().train.loss_curve]
    if len(curve) < 2 and ctx.spec.adapter is not None:  # artifact mode reads the trainer's log (issue 15)
        raise NotApplicable(
            f"methods.{ctx.method} is a saved adapter and its folder has {len(curve)} logged losses "
            "(no trainer_state.json log_history beside it): there is no loss curve to judge"
        )
    if len(curve) < 2:
        raise NotApplicable(f"only {len(curve)} loss values were logged; train for more steps")
    window = min(params.window, len(curve) // 2)
    first = sum(curve[:window]) / window
    last = sum(curve[-window:]) / window
    if not (math.isfinite(first) and math.isfinite(last)) or first == 0:
        return Measurement(
            passed=False, value=None, bound=f">= {params.min_relative}", unit="relative decrease",
            message=f"training loss {first} -> {last}: no finite, non-zero loss to decrease (did the method mask every label?)",
            details={"first": first, "last": last, "window": window},
        )
    relative = (first - last) / first
    return Measurement(
        passed=relative >= params.min_relative,
        value=relative,
        bound=f">= {params.min_relative}",
        unit="relative decrease",
        message=f"loss {first:.4f} -> {last:.4f} (mean of {window} steps at each end)",
        details={"first": first, "last": last, "window": window},
    )


class EvalPerplexityParams(CheckParams):
    max_ratio_to_base: float = Field(
        1.0, gt=0, description="Largest adapter/base perplexity ratio on the eval split."
    )
    max: float | None = Field(None, gt=0, description="Optional absolute perplexity bound.")


@register_check("eval_perplexity", params=EvalPerplexityParams)
def eval_perplexity(ctx: CheckContext, params: EvalPerplexityParams) -> Measurement:
    """Held-out perplexity after training against the untrained base on the same split.

    The adapter's perplexity before its first step is reported beside it: an initialisation
    that is far from the identity (a random prefix) shows there, not as a training failure."""
    if ctx.suite.spec.data.eval_split is None:
        raise NotApplicable("the suite has no data.eval_split")
    metrics = ctx.method_record()["metrics"]
    ppl, base = metrics["eval_perplexity"]["value"], metrics["base_eval_perplexity"]["value"]
    init = metrics.get("init_eval_perplexity", {}).get("value")
    ratio = ppl / base
    ok = ratio <= params.max_ratio_to_base and (params.max is None or ppl <= params.max)
    bound = f"ratio <= {params.max_ratio_to_base}" + (f", ppl <= {params.max}" if params.max else "")
    return Measurement(
        passed=ok,
        value=ratio,
        bound=bound,
        unit="ratio to base",
        message=f"perplexity {ppl:.2f} vs base {base:.2f} (ratio {ratio:.3f})"
        + ("" if init is None else f"; the untrained adapter: {init:.2f}"),
        details={"perplexity": ppl, "base_perplexity": base, "init_perplexity": init},
    )

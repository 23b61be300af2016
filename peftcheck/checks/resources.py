"""Resource checks: model footprint, quantization savings, peak memory per phase, latency, throughput.

Memory is bytes held (footprint) or peak growth per phase measured in a child process per method;
speed is always a ratio measured in the same run (interleaved rounds, median of ratios), never an
absolute time. Every figure also goes into the method's record with its unit.
"""

from __future__ import annotations

import copy
from typing import Any, Literal

from pydantic import Field, model_validator

from peftcheck import methods
from peftcheck.checks.registry import CheckParams, Measurement, NotApplicable, register_check
from peftcheck.context import CheckContext

Phase = Literal["total", "load", "adapt", "train_step", "save", "merge"]


def _put(ctx: CheckContext, name: str, value: float, unit: str) -> None:
    ctx.metrics[name] = {"value": value, "unit": unit}  # returned in the Measurement (issue 14)


def _within(value: float, low: float | None, high: float | None) -> bool:
    return (low is None or value >= low) and (high is None or value <= high)


def _range(low: float | None, high: float | None, what: str) -> str:
    if low is not None and high is not None:
        return f"{low:g} <= {what} <= {high:g}"
    return f"{what} >= {low:g}" if low is not None else f"{what} <= {high:g}"


# -- footprint --------------------------------------------------------------------------------


class MemoryFootprintParams(CheckParams):
    method_fields = ("relative_to",)
    max_mib: float | None = Field(None, gt=0, description="Largest footprint, MiB.")
    max_ratio: float | None = Field(
        None, gt=0, description="Largest footprint as a ratio to the footprint of `relative_to`."
    )
    relative_to: str = Field(
        "base",
        description="'base': the unquantized base at the suite's dtype; or a method of the suite.",
    )
    part: Literal["model", "base"] = Field(
        "model",
        description="'model': the base with the trained adapter (what fine-tuning holds); "
        "'base': the method's loaded (possibly quantized) base alone.",
    )

    @model_validator(mode="after")
    def _a_bound(self) -> "MemoryFootprintParams":
        if self.max_mib is None and self.max_ratio is None:
            raise ValueError("give max_mib, max_ratio (with relative_to) or both")
        return self


def _footprint_of(artifact: Any, part: str) -> Any:
    from peftcheck.resources.footprint import footprint

    key = f"footprint:{part}"
    if key not in artifact.memo:
        artifact.memo[key] = footprint(artifact.model if part == "model" else artifact.base.model)
    return artifact.memo[key]


def _gradient_reach_of(artifact: Any) -> tuple[int, int]:
    """``gradient_reach`` once per trained model (a reference method serves several ratios)."""
    from peftcheck.resources.calls import gradient_reach

    if "gradient_reach" not in artifact.memo:
        artifact.memo["gradient_reach"] = gradient_reach(artifact)
    return artifact.memo["gradient_reach"]


def _unquantized_footprint(ctx: CheckContext) -> Any:
    from peftcheck.resources.footprint import footprint

    base = ctx.pipeline.base(ctx.suite, "none")
    if "footprint" not in base.memo:
        base.memo["footprint"] = footprint(base.model)
    return base.memo["footprint"]


@register_check("memory_footprint", params=MemoryFootprintParams, resource=True)
def memory_footprint(ctx: CheckContext, params: MemoryFootprintParams) -> Measurement:
    """Bytes the model holds (parameters, buffers, quantization scales) within MiB or ratio bounds."""
    artifact = ctx.artifact()
    own = _footprint_of(artifact, params.part)
    mib = own.total_mib
    _put(ctx, "footprint_mib" if params.part == "model" else "base_footprint_mib", mib, "MiB")
    details: dict[str, Any] = {"part": params.part, **own.as_dict()}
    problems, value, unit, bounds = [], mib, "MiB", []
    if params.max_mib is not None:
        bounds.append(f"footprint <= {params.max_mib:g} MiB")
        if mib > params.max_mib:
            problems.append(f"footprint {mib:.1f} MiB > {params.max_mib:g} MiB")
    if params.max_ratio is not None:
        if params.relative_to == "base":
            ref_mib, ref_name = _unquantized_footprint(ctx).total_mib, f"unquantized {ctx.suite.spec.dtype} base"
        else:
            ref_mib, ref_name = _footprint_of(ctx.other(params.relative_to), params.part).total_mib, params.relative_to
        value, unit = mib / ref_mib, f"ratio to {params.relative_to}"
        _put(ctx, f"footprint_ratio_to_{params.relative_to}", value, unit)
        details.update(reference=ref_name, reference_mib=ref_mib)
        bounds.append(f"footprint <= {params.max_ratio:g} x {params.relative_to}")
        if value > params.max_ratio:
            problems.append(f"footprint {mib:.1f} MiB is {value:.3f} x {ref_name} ({ref_mib:.1f} MiB) > {params.max_ratio:g}")
    by_dtype = ", ".join(f"{k} {v:.1f}" for k, v in details["by_dtype_mib"].items())
    return Measurement(
        passed=not problems, value=value, bound="; ".join(bounds), unit=unit,
        message="; ".join(problems) or f"footprint {mib:.1f} MiB ({by_dtype} MiB)"
        + (f", {value:.3f} x {details['reference']}" if params.max_ratio is not None else ""),
        details=details,
    )  # fmt: skip


# -- quantization ------------------------------------------------------------------------------


class QuantizationSavingsParams(CheckParams):
    margin: float = Field(
        0.1, ge=0, lt=1,
        description="Largest relative difference between the bytes saved against the unquantized "
        "base and the bytes the quantization should save at its nominal bits per weight. Scales "
        "count as cost: nf4's fp32 absmax per 64 weights is 0.5 bit, 2% of the saving on an fp32 "
        "base, 4% on fp16.",
    )  # fmt: skip
    min_quantized: float = Field(
        1.0, gt=0, le=1,
        description="Fraction of the base's Linear weights (all but the output layer) that must be quantized.",
    )  # fmt: skip
    adapter_dtypes: list[Literal["float32", "bfloat16", "float16"]] = Field(
        default_factory=lambda: ["float32", "bfloat16", "float16"],
        description="Dtypes the trainable adapter weights may have (they stay in 16/32-bit).",
    )


@register_check("quantization_savings", params=QuantizationSavingsParams, resource=True)
def quantization_savings(ctx: CheckContext, params: QuantizationSavingsParams) -> Measurement:
    """The base is quantized to its bits, the adapter stays 16/32-bit, and the bytes saved match."""
    import torch

    from peftcheck.resources.footprint import QUANTIZED_BITS, footprint, quantized_weights

    artifact = ctx.artifact()
    quantization = artifact.spec.quantization
    if quantization == "none":
        raise NotApplicable("the method's base is not quantized")
    bits = QUANTIZED_BITS[quantization]
    fp_base = ctx.pipeline.base(ctx.suite, "none").model
    output = fp_base.get_output_embeddings()
    eligible = {
        f"{name}.weight": module.weight
        for name, module in fp_base.named_modules()
        if isinstance(module, torch.nn.Linear) and module is not output
    }
    quantized = quantized_weights(artifact.base.model)
    missing = sorted(set(eligible) - set(quantized))
    wrong_bits = {n: q["bits"] for n, q in quantized.items() if abs(q["bits"] - bits) > 1e-9}
    should_save = sum(w.numel() * (w.element_size() - bits / 8) for w in eligible.values())
    fp_total, q_total = _unquantized_footprint(ctx).total, footprint(artifact.base.model).total
    saved = fp_total - q_total
    ratio = saved / should_save if should_save else 0.0
    adapter = {n: str(p.dtype).removeprefix("torch.") for n, p in artifact.model.named_parameters() if p.requires_grad}
    bad_adapter = {n: d for n, d in adapter.items() if d not in params.adapter_dtypes}
    fraction = 1 - len(missing) / len(eligible) if eligible else 0.0
    problems = []
    if fraction < params.min_quantized:
        problems.append(f"{len(missing)} of {len(eligible)} Linear weights not quantized: {missing[:3]}")
    if wrong_bits:
        problems.append(f"{len(wrong_bits)} weights not {bits}-bit: {dict(list(wrong_bits.items())[:3])}")
    if abs(ratio - 1) > params.margin:
        problems.append(f"saved {saved / 2**20:.1f} MiB, {ratio:.3f} x the {should_save / 2**20:.1f} MiB {quantization} should save")
    if bad_adapter:
        problems.append(f"adapter weights not in {params.adapter_dtypes}: {dict(list(bad_adapter.items())[:3])}")
    if not adapter:  # issue 26: the dtype promise over no tensor
        problems.append("no trainable adapter tensor: the adapter's dtypes are unchecked")
    _put(ctx, "quantization_saved_mib", saved / 2**20, "MiB")
    return Measurement(
        passed=not problems, value=ratio, bound=f"|saved / expected - 1| <= {params.margin:g}", unit="saved / expected",
        message="; ".join(problems) or (
            f"{len(quantized)} weights {bits}-bit, adapter in {sorted(set(adapter.values()))}; saved "
            f"{saved / 2**20:.1f} MiB of {fp_total / 2**20:.1f} ({ratio:.3f} x expected)"
        ),
        details={
            "bits": bits, "eligible": len(eligible), "quantized": len(quantized), "not_quantized": missing[:20],
            "saved_mib": saved / 2**20, "expected_saved_mib": should_save / 2**20,
            "unquantized_mib": fp_total / 2**20, "quantized_base_mib": q_total / 2**20,
            "adapter_dtypes": sorted(set(adapter.values())), "adapter_not_allowed": list(bad_adapter)[:20],
        },
    )  # fmt: skip


# -- peak memory --------------------------------------------------------------------------------


class PeakMemoryParams(CheckParams):
    method_fields = ("reference",)
    max_mib: dict[Phase, float] = Field(
        default_factory=dict,
        description="Largest peak growth per phase, MiB, e.g. {train_step: 600, total: 1200}. Phases: "
        "load (quantizing on the fly for a quantized base), adapt, train_step, save, merge, and "
        "total (the highest point of all phases above the child process's start).",
    )
    max_ratio: dict[Phase, float] = Field(
        default_factory=dict, description="Largest ratio to `reference`'s peak per phase, e.g. {total: 0.7}."
    )
    reference: str | None = Field(None, description="Method of the suite that max_ratio compares with.")
    steps: int = Field(2, ge=1, le=100, description="Training steps of the train_step phase.")
    timeout_s: float = Field(900, gt=0, description="Seconds the child process of one method may run.")

    @model_validator(mode="after")
    def _a_bound(self) -> "PeakMemoryParams":
        if not self.max_mib and not self.max_ratio:
            raise ValueError("give max_mib or max_ratio (with reference), e.g. max_mib: {total: 1200}")
        if bool(self.max_ratio) != (self.reference is not None):
            raise ValueError("max_ratio and reference go together")
        if any(v <= 0 for v in [*self.max_mib.values(), *self.max_ratio.values()]):
            raise ValueError("bounds must be > 0")
        return self


def _peaks(artifact: Any, params: PeakMemoryParams, ctx: CheckContext | None = None) -> dict[str, Any]:
    """The child-process measurement of ``artifact``'s method, run once per step count; its
    figures go into ``ctx``'s Measurement (a reference's own check records the reference's)."""
    from peftcheck.resources import peak

    key = f"peak:{params.steps}"
    if key not in artifact.memo:
        artifact.memo[key] = peak.probe(artifact.suite, artifact.method, steps=params.steps, timeout_s=params.timeout_s)
    result = artifact.memo[key]
    if ctx is not None:
        unit = "MiB (CUDA allocated)" if result["device"] == "cuda" else "MiB (RSS growth)"
        for name, figures in [*result["phases"].items(), ("total", result["total"])]:
            if "peak_mib" in figures:
                _put(ctx, f"peak_{name}_mib", figures["peak_mib"], unit)
    return result


def _phase_peaks(result: dict[str, Any]) -> dict[str, float]:
    found = {k: float(v["peak_mib"]) for k, v in result["phases"].items() if "peak_mib" in v}
    return {**found, "total": float(result["total"]["peak_mib"])}


@register_check("peak_memory", params=PeakMemoryParams, needs_training=True, resource=True)
def peak_memory(ctx: CheckContext, params: PeakMemoryParams) -> Measurement:
    """Peak memory growth per phase, measured in a child process per method, within bounds.

    The value is the first phase's figure: of max_ratio if given (a ratio), else of max_mib. A
    bounded phase that was not measured fails; one the method (or the reference) does not have is
    not applicable, and the item too when that leaves no bound judged."""
    artifact = ctx.artifact()
    result = _peaks(artifact, params, ctx)
    own = _phase_peaks(result)
    skipped = {k: v["not_applicable"] for k, v in result["phases"].items() if "not_applicable" in v}
    bounded = {*params.max_mib, *params.max_ratio}
    if bounded <= set(skipped):
        raise NotApplicable("; ".join(f"{k}: {skipped[k]}" for k in sorted(bounded)))
    problems: list[str] = []
    bounds: list[str] = []
    unjudged: dict[str, None] = {}  # "phase (method): reason", in order, each once

    def measured(phase: str, peaks: dict[str, float], reasons: dict[str, str], whose: str) -> bool:
        # issue 26: a bound on a phase with no figure is never passed silently
        if phase in peaks:
            return True
        if phase in reasons:
            unjudged[f"{phase} ({whose}): {reasons[phase]}"] = None  # once, if both bounds name it
        else:
            problems.append(f"{phase} peak of {whose} was not measured (phases: {sorted(peaks)})")
        return False

    mib_value, ratio_value, unit = None, None, "MiB"
    for phase, limit in params.max_mib.items():
        if measured(phase, own, skipped, ctx.method):
            bounds.append(f"{phase} <= {limit:g} MiB")
            mib_value = own[phase] if mib_value is None else mib_value
            if own[phase] > limit:
                problems.append(f"{phase} peak {own[phase]:.1f} MiB > {limit:g} MiB")
    ref: dict[str, float] = {}
    if params.max_ratio and params.reference is not None:
        ref_result = _peaks(ctx.other(params.reference), params)
        ref = _phase_peaks(ref_result)
        ref_skipped = {k: v["not_applicable"] for k, v in ref_result["phases"].items() if "not_applicable" in v}
        for phase, limit in params.max_ratio.items():
            if not (measured(phase, own, skipped, ctx.method) and measured(phase, ref, ref_skipped, params.reference)):
                continue
            ratio = own[phase] / ref[phase] if ref[phase] > 0 else float("inf")
            _put(ctx, f"peak_{phase}_ratio_to_{params.reference}", ratio, f"ratio to {params.reference}")
            bounds.append(f"{phase} <= {limit:g} x {params.reference}")
            ratio_value = ratio if ratio_value is None else ratio_value
            if ratio > limit:
                problems.append(
                    f"{phase} peak {own[phase]:.1f} MiB is {ratio:.3f} x {params.reference}'s {ref[phase]:.1f} MiB > {limit:g}"
                )
    if not bounds and not problems:  # every bound fell on a phase one of the two does not have
        raise NotApplicable("no bounded phase measured: " + "; ".join(unjudged))
    value = mib_value
    if ratio_value is not None:  # a ratio bound is the value shown
        value, unit = ratio_value, f"ratio to {params.reference}"
    where = "CUDA allocated" if result["device"] == "cuda" else "RSS growth"
    shown = ", ".join(f"{k} {v:.0f}" for k, v in own.items())
    not_judged = f"; not judged: {'; '.join(unjudged)}" if unjudged else ""
    return Measurement(
        passed=not problems, value=value, bound="; ".join(bounds) or "no bounded phase measured", unit=unit,
        message=("; ".join(problems) or f"peaks within bounds ({where}, MiB: {shown})") + not_judged,
        details={"peaks_mib": own, "reference_peaks_mib": ref, "not_applicable": skipped, "not_judged": list(unjudged),
                 "probe": result},
    )  # fmt: skip


# -- speed ----------------------------------------------------------------------------------------

_THREADS = Field(
    1, ge=1,
    description="torch threads while timing, alike for every arm (1 is steadiest on a shared CPU); "
    "null keeps torch's setting.",
)  # fmt: skip


class LatencyOverheadParams(CheckParams):
    max_merged_ratio: float = Field(1.15, gt=0, description="Largest median latency ratio merged / base.")
    min_merged_ratio: float | None = Field(None, gt=0, description="Smallest median ratio merged / base, if any.")
    max_unmerged_ratio: float | None = Field(
        None, gt=0, description="Largest median ratio unmerged (adapter active) / base; null only reports it."
    )
    texts: int = Field(
        1, ge=1, le=4, description="Held-out texts in the timed batch (1: the latency of one request)."
    )
    rounds: int = Field(11, ge=3, description="Interleaved rounds (base, merged and unmerged timed per round).")
    max_rounds: int = Field(33, ge=3, description="Rounds allowed while a ratio's 95% interval straddles its bound.")
    warmup: int = Field(2, ge=0, description="Untimed calls of each model first.")
    threads: int | None = _THREADS


def _straddles(timings: Any, arm: str, reference: str, bounds: list[float | None], **kwargs: Any) -> bool:
    from peftcheck.resources.timing import median_interval

    lo, hi = median_interval(timings.ratios(arm, reference, **kwargs))
    return any(b is not None and lo <= b <= hi for b in bounds)


@register_check("latency_overhead", params=LatencyOverheadParams, resource=True)
def latency_overhead(ctx: CheckContext, params: LatencyOverheadParams) -> Measurement:
    """Inference latency of the merged and the unmerged adapter as ratios to the base, same run."""
    from peftcheck.methods import can_merge
    from peftcheck.resources.calls import forward_call
    from peftcheck.resources.timing import interleaved, torch_threads

    artifact = ctx.artifact()
    batch = {k: v[: params.texts] for k, v in ctx.probe().items()}
    if "attention_mask" in batch:  # drop the columns that are padding in every kept row
        keep = batch["attention_mask"].sum(dim=0) > 0
        batch = {k: v[:, keep] if v.dim() == 2 and v.shape[1] == keep.shape[0] else v for k, v in batch.items()}
    reason = can_merge(artifact.model)
    if reason is not None and params.max_unmerged_ratio is None:
        raise NotApplicable(f"{reason}; give max_unmerged_ratio to judge the unmerged latency")
    # The base is timed on a deep copy, like the trained model (itself a copy) and the merged one:
    # the base as loaded runs ~8% slower on this CPU than any copy of it (copy/loaded 0.915-0.922
    # over 15 rounds, copy/copy 1.01), which would read as a merged model faster than its base.
    # The trained model too, so timing leaves it as it was: bitsandbytes 0.50.2 repacks 4-bit
    # weights in place on a CPU with AVX512-BF16 at the first no-grad forward.
    base = copy.deepcopy(artifact.base.model).eval()
    unmerged = copy.deepcopy(artifact.model).eval()
    arms = {"base": forward_call(base, batch), "unmerged": forward_call(unmerged, batch)}
    merged = None
    if reason is None:
        merged = methods.merged_copy(artifact.model)  # the trained model stays as it is
        merged.eval()
        arms["merged"] = forward_call(merged, batch)
    bounds = {"merged": [params.max_merged_ratio, params.min_merged_ratio], "unmerged": [params.max_unmerged_ratio]}
    judged = [a for a in arms if a != "base"]
    with torch_threads(params.threads):
        timings = interleaved(
            arms, rounds=params.rounds, warmup=params.warmup, max_rounds=params.max_rounds,
            undecided=lambda t: any(_straddles(t, a, "base", bounds[a]) for a in judged),
        )  # fmt: skip
    del merged, unmerged, base, arms
    figures = {a: timings.summary(a, "base") for a in timings.times if a != "base"}
    _put(ctx, "latency_base_ms", timings.per_call_s("base") * 1e3, "ms")
    for arm, summary in figures.items():
        _put(ctx, f"latency_{arm}_ratio", summary["ratio_median"], "ratio to base")
        _put(ctx, f"latency_{arm}_ms", timings.per_call_s(arm) * 1e3, "ms")
    problems, bound = [], []
    if "merged" in figures:
        value, unit = figures["merged"]["ratio_median"], "merged/base latency"
        bound.append(_range(params.min_merged_ratio, params.max_merged_ratio, "merged/base"))
        if not _within(value, params.min_merged_ratio, params.max_merged_ratio):
            problems.append(f"merged/base latency {value:.3f} outside {bound[-1]} (the merged model should cost nothing)")
    else:
        value, unit = figures["unmerged"]["ratio_median"], "unmerged/base latency"
    if params.max_unmerged_ratio is not None:
        bound.append(f"unmerged/base <= {params.max_unmerged_ratio:g}")
        if figures["unmerged"]["ratio_median"] > params.max_unmerged_ratio:
            problems.append(f"unmerged/base latency {figures['unmerged']['ratio_median']:.3f} > {params.max_unmerged_ratio:g}")
    shown = "; ".join(
        f"{a}/base {s['ratio_median']:.3f} (95% CI {s['ratio_ci95'][0]:.3f}-{s['ratio_ci95'][1]:.3f})" for a, s in figures.items()
    )
    return Measurement(
        passed=not problems, value=value, bound="; ".join(bound), unit=unit,
        message="; ".join(problems) or f"{shown}; base {timings.per_call_s('base') * 1e3:.2f} ms, {timings.rounds} rounds",
        details={
            "ratios": figures, "ms": {a: timings.per_call_s(a) * 1e3 for a in timings.times},
            "rounds": timings.rounds, "calls_per_sample": timings.inner, "threads": params.threads,
            "batch_shape": list(batch["input_ids"].shape), "not_mergeable": reason,
        },
    )  # fmt: skip


class ThroughputParams(CheckParams):
    method_fields = ("reference",)
    reference: str = Field(description="Method of the suite whose training tokens/s is the denominator.")
    min_ratio: float | None = Field(None, gt=0, description="Smallest tokens/s ratio to the reference.")
    max_ratio: float | None = Field(None, gt=0, description="Largest tokens/s ratio to the reference.")
    rounds: int = Field(5, ge=3, description="Interleaved rounds of one training step of each method.")
    max_rounds: int = Field(15, ge=3, description="Rounds allowed while the ratio's 95% interval straddles a bound.")
    warmup: int = Field(1, ge=0, description="Untimed training steps of each method first.")
    threads: int | None = _THREADS

    @model_validator(mode="after")
    def _a_bound(self) -> "ThroughputParams":
        if self.min_ratio is None and self.max_ratio is None:
            raise ValueError("give min_ratio, max_ratio or both")
        return self


@register_check("throughput", params=ThroughputParams, needs_training=True, resource=True)
def throughput(ctx: CheckContext, params: ThroughputParams) -> Measurement:
    """Training tokens/s as a ratio to a reference method, timed in interleaved rounds."""
    from peftcheck.resources.calls import train_step_call
    from peftcheck.resources.timing import interleaved, torch_threads

    artifact, reference = ctx.artifact(), ctx.other(params.reference)
    reach = {ctx.method: _gradient_reach_of(artifact), params.reference: _gradient_reach_of(reference)}
    (own_step, own_tokens), (ref_step, ref_tokens) = train_step_call(artifact), train_step_call(reference)
    scale = own_tokens / ref_tokens  # tokens/s ratio = tokens ratio x reference time / own time
    bounds = [params.min_ratio, params.max_ratio]
    with torch_threads(params.threads):
        timings = interleaved(
            {"own": own_step, "reference": ref_step}, rounds=params.rounds, warmup=params.warmup,
            max_rounds=params.max_rounds,
            undecided=lambda t: _straddles(t, "own", "reference", bounds, scale=scale, invert=True),
        )  # fmt: skip
    del own_step, ref_step
    summary = timings.summary("own", "reference", scale=scale, invert=True)
    ratio, (lo, hi) = summary["ratio_median"], summary["ratio_ci95"]
    own_tps, ref_tps = own_tokens / timings.per_call_s("own"), ref_tokens / timings.per_call_s("reference")
    _put(ctx, "train_tokens_per_s", own_tps, "tokens/s")
    _put(ctx, f"throughput_ratio_to_{params.reference}", ratio, f"ratio to {params.reference}")
    untrained = [
        f"{method}'s training step gives no gradient to any of its {total} trainable tensors: "
        "its tokens/s times a step that trains nothing"
        for method, (reached, total) in reach.items() if reached == 0
    ]  # fmt: skip
    return Measurement(
        passed=_within(ratio, params.min_ratio, params.max_ratio) and not untrained,
        value=ratio, bound=_range(params.min_ratio, params.max_ratio, "tokens/s ratio"),
        unit=f"ratio to {params.reference}",
        message="; ".join([
            f"{own_tps:.0f} vs {ref_tps:.0f} tokens/s for {params.reference}: ratio {ratio:.3f} "
            f"(95% CI {lo:.3f}-{hi:.3f}, {summary['rounds']} rounds)", *untrained,
        ]),  # fmt: skip
        details={
            **summary, "tokens_per_s": own_tps, "reference_tokens_per_s": ref_tps, "tokens_per_step": own_tokens,
            "reference_tokens_per_step": ref_tokens, "trainer_tokens_per_s": artifact.train.tokens_per_s,
            "reference_trainer_tokens_per_s": reference.train.tokens_per_s, "steps_per_sample": timings.inner,
            "threads": params.threads,
            "gradient_reach": {m: {"reached": r, "trainable_tensors": t} for m, (r, t) in reach.items()},
        },
    )  # fmt: skip

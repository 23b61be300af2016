"""Parameter checks: trainable ratio and analytic count, target coverage, base weights frozen
(a quantized weight by its quantization state, issue 27)."""

from __future__ import annotations

from typing import Any

from pydantic import Field

from peftcheck.checks import adapter_ops
from peftcheck.checks.registry import CheckParams, Measurement, NotApplicable, register_check
from peftcheck.context import CheckContext


class TrainableRatioParams(CheckParams):
    max: float = Field(1.0, gt=0, le=1, description="Largest trainable/total parameter ratio.")
    min: float = Field(0.0, ge=0, le=1, description="Smallest ratio (catches an adapter that adds nothing).")
    analytic: bool = Field(
        True, description="Also require the trainable count to equal the count computed from the config."
    )


@register_check("trainable_ratio", params=TrainableRatioParams)
def trainable_ratio(ctx: CheckContext, params: TrainableRatioParams) -> Measurement:
    """Trainable/total parameter ratio within bounds, and the count equals the analytic count."""
    from peftcheck.methods import can_resume, expected_trainable

    artifact = ctx.artifact()
    trainable, total = artifact.record["trainable_params"], artifact.record["total_params"]
    ratio = trainable / total
    expected, formula = expected_trainable(artifact.base.model, artifact.config)
    if expected is not None and ctx.spec.adapter is not None and can_resume(artifact.config) is not None:
        # a saved prompt adapter is its virtual-token table alone, not the encoder that trained it (issue 15)
        expected, formula = None, f"not compared: a saved {type(artifact.config).__name__} holds no encoder ({formula})"
    problems = []
    if not params.min <= ratio <= params.max:
        problems.append(f"ratio {ratio:.6f} outside [{params.min}, {params.max}]")
    if params.analytic and expected is not None and expected != trainable:
        problems.append(f"trainable count {trainable} != analytic {expected} ({formula})")
    return Measurement(
        passed=not problems,
        value=ratio,
        bound=f"{params.min} <= ratio <= {params.max}",
        unit="ratio",
        message="; ".join(problems) or f"{trainable:,} of {total:,} parameters trainable ({ratio:.4%})",
        details={"trainable": trainable, "total": total, "analytic": expected, "formula": formula},
    )


class TargetCoverageParams(CheckParams):
    min_matches: int = Field(1, ge=1, description="Modules every target_modules entry must match.")


@register_check("target_coverage", params=TargetCoverageParams)
def target_coverage(ctx: CheckContext, params: TargetCoverageParams) -> Measurement:
    """Every target_modules entry matched at least one module that the adapter wrapped."""
    from peftcheck.methods import coverage_targets, matched_targets

    artifact = ctx.artifact()
    targets = coverage_targets(artifact.config)
    if targets is None:
        raise NotApplicable(f"{type(artifact.config).__name__} has no target_modules")
    if not targets:  # no entry to match: "0 entries matched" would pass on nothing (issue 26)
        raise NotApplicable(f"{type(artifact.config).__name__}'s target_modules names no entry to match")
    matched = matched_targets(artifact.base.model, targets)
    wrapped = _wrapped_modules(artifact.model)
    coverage = {entry: sorted(set(names) & wrapped) for entry, names in matched.items()}
    missing = sorted(entry for entry, names in coverage.items() if len(names) < params.min_matches)
    return Measurement(
        passed=not missing,
        value=float(len(missing)),
        bound=f"every entry matches >= {params.min_matches} module(s)",
        unit="entries unmatched",
        message=(
            f"target_modules entries matching nothing: {missing} (peft ignores them silently)"
            if missing
            else f"{len(coverage)} entries matched {len(wrapped)} modules"
        ),
        details={"matches": {k: len(v) for k, v in coverage.items()}, "examples": {k: v[:3] for k, v in coverage.items()}},
    )


def _wrapped_modules(peft_model: Any) -> set[str]:
    """Names (relative to the base model) of modules carrying an adapter layer."""
    from peftcheck.methods import tuner_layers, wrapper_modules

    base = peft_model.get_base_model()
    return set(tuner_layers(base)) | set(wrapper_modules(base))


class BaseFrozenParams(CheckParams):
    pass


def _base_name(name: str, wrappers: list[str] = ()) -> str:
    for wrapper in wrappers:
        name = name.replace(f"{wrapper}.model.", f"{wrapper}.")
    return name.replace(".base_layer.", ".").replace(".original_module.", ".")


@register_check("base_frozen", params=BaseFrozenParams, needs_training=True)
def base_frozen(ctx: CheckContext, params: BaseFrozenParams) -> Measurement:
    """Every base weight is unchanged after training, a quantized one by what it computes with (and none went missing)."""
    import torch

    from peftcheck.checks import quantization
    from peftcheck.methods import rewrites_base, wrapper_modules

    artifact = ctx.artifact()
    # what the method was copied from: a quantized CPU base's copy no forward has repacked (issue 27)
    source = artifact.base.training_source
    pristine = dict(source.named_parameters())
    # a quantized weight is its codes and scales (SCB, absmax, nested state), not the bytes'
    # layout, which bitsandbytes repacks in place on AVX512-BF16 CPUs (issue 27)
    before = quantization.layer_readers(source)
    if rewrites_base(artifact.config):  # the base training froze is the residual the init wrote: rebuild it
        rebuilt_model = adapter_ops.untrained(ctx).unload()  # unload: the adapter off, not merged
        rebuilt = dict(rebuilt_model.named_parameters())
        pristine = {n: rebuilt.get(n, p) for n, p in pristine.items()}
        rebuilt_states = quantization.layer_readers(rebuilt_model)
        before = {n: rebuilt_states.get(n, s) for n, s in before.items()}
    base = artifact.model.get_base_model()
    wrappers = wrapper_modules(base)
    trained = {_base_name(n, wrappers): p for n, p in base.named_parameters()}
    changed, missing = [], []
    for name, original in pristine.items():
        current = trained.get(name)
        if name in before:
            continue  # compared by its quantization state below
        if current is None:
            missing.append(name)
        elif current.shape != original.shape or not torch.equal(current.detach().cpu(), original.detach().cpu()):
            changed.append(name)
    after = quantization.layer_readers(base, rename=lambda n: _base_name(n, wrappers))
    rewritten, lost = quantization.state_changes(before, after)
    changed += list(rewritten)
    missing += lost
    bad = changed + missing
    if not pristine:  # "0 base tensors unchanged" compares nothing (issue 26)
        return Measurement(passed=False, value=None, bound="0 base tensors changed or missing", unit="tensors",
                           message="the base has no tensor to compare: nothing was checked")  # fmt: skip
    shown = [f"{n} ({rewritten[n]})" if n in rewritten else n for n in bad[:5]]
    kept = f" ({len(before)} quantized ones by their codes and scales)" if before else ""
    return Measurement(
        passed=not bad,
        value=float(len(bad)),
        bound="0 base tensors changed or missing",
        unit="tensors",
        message=(
            f"{len(changed)} base tensors changed, {len(missing)} missing: {shown}"
            if bad
            else f"{len(pristine)} base tensors bitwise unchanged{kept}"
        ),
        details={"changed": changed[:20], "missing": missing[:20], "checked": len(pristine),
                 "quantized": len(before), "quantization_state": dict(list(rewritten.items())[:20])},  # fmt: skip
    )

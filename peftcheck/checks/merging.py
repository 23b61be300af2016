"""Merging checks: merged == unmerged, unmerge restores the base, disable_adapter == base,
and one base serving several adapters (set_adapter, mixed-adapter batches).

Every check works on a deep copy of the trained model (or restores it exactly), compares
outputs on the probe batch under the tolerance table of ``peftcheck.tolerances``, and pairs
each equality with "the adapter changed the output", so an adapter that does nothing fails.
"""

from __future__ import annotations

import copy
import tempfile
from pathlib import Path
from typing import Any

from pydantic import Field

from peftcheck import methods
from peftcheck.checks import adapter_ops
from peftcheck.checks.outputs import (
    Diff,
    ToleranceParams,
    adapter_logits,
    base_logits,
    compare,
    judged,
    judged_unit,
    real_logits,
    weight_diff,
    worst,
)
from peftcheck.checks.registry import Measurement, NotApplicable, register_check
from peftcheck.context import CheckContext
from peftcheck.tolerances import Tolerance

__all__ = ["merge_equivalence", "unmerge_restores", "disable_equals_base", "merged_disable", "adapter_switching"]


def _record(ctx: CheckContext, name: str, value: float, unit: str) -> None:
    ctx.metrics[name] = {"value": value, "unit": unit}  # returned in the Measurement (issue 14)


def _record_diffs(ctx: CheckContext, prefix: str, diffs: dict[str, Diff], tol: Tolerance) -> None:
    """The worst measured difference of a family of comparisons, into the method record."""
    values = list(diffs.values())
    _record(ctx, f"{prefix}_max_abs_diff", max(d.max_abs for d in values), "logits")
    _record(ctx, f"{prefix}_mean_abs_diff", max(d.mean_abs for d in values), "logits")
    if tol.judges_distribution:
        _record(ctx, f"{prefix}_kl", max(d.kl for d in values), "nats")
        _record(ctx, f"{prefix}_top1_agreement", min(d.top1 for d in values), "fraction")


def _require_merge(ctx: CheckContext, *, unmerge: bool = False) -> Any:
    from peftcheck.methods import can_merge, can_unmerge

    artifact = ctx.artifact()
    reason = (can_unmerge if unmerge else can_merge)(artifact.model)
    if reason is not None:
        raise NotApplicable(reason)
    return artifact


def require_float_merge(ctx: CheckContext, what: str, *, unmerge: bool = False) -> Any:
    """The artifact, if it can merge into a float base; NotApplicable on a 4/8-bit base, whose
    merges re-quantize W + ΔW (merge_equivalence and unmerge_restores judge those, with their
    findings): ``what`` would only repeat that rounding."""
    artifact = _require_merge(ctx, unmerge=unmerge)
    if artifact.base.quantization != "none":
        raise NotApplicable(
            f"{artifact.base.quantization} base: a merge re-quantizes W + ΔW, so {what} would measure that "
            "rounding again (merge_equivalence and unmerge_restores judge merges into quantized bases)"
        )
    return artifact


def require_original_base(ctx: CheckContext) -> None:
    """NotApplicable where the init rewrote the base (PiSSA, OLoRA): disabling the adapter gives that
    residual by design, and a second adapter loaded onto the original base is not the same adapter."""
    from peftcheck.methods import rewrites_base

    reason = rewrites_base(ctx.artifact().config)
    if reason is not None:
        raise NotApplicable(reason)


def _merged_into_dequantized(ctx: CheckContext) -> Any:
    """Logits of the adapter, saved and loaded onto a float (dequantized) copy of the 4/8-bit
    base, merged there: the usual way to ship a QLoRA model."""
    artifact = ctx.artifact()
    with tempfile.TemporaryDirectory(prefix="peftcheck-dequantized-") as tmp:
        adapter_ops.save(artifact.model, Path(tmp))
        float_base = copy.deepcopy(artifact.base.model).dequantize()
        merged = adapter_ops.load(artifact.model, float_base, Path(tmp)).merge_and_unload()
    return real_logits(merged, ctx.probe())


@register_check("merge_equivalence", params=ToleranceParams)
def merge_equivalence(ctx: CheckContext, params: ToleranceParams) -> Measurement:
    """Adapter output == after merge_adapter == after merge_and_unload, and merged != base."""
    artifact = _require_merge(ctx)
    tol = params.tolerance(ctx)
    reference, batch = adapter_logits(ctx), ctx.probe()

    model = copy.deepcopy(artifact.model)
    model.merge_adapter()
    diffs = {"merge_adapter": compare(reference, real_logits(model, batch))}
    del model
    merged = methods.merged_copy(artifact.model)
    merged_logits = real_logits(merged, batch)
    del merged
    diffs["merge_and_unload"] = compare(reference, merged_logits)
    if artifact.base.quantization != "none":
        diffs["merged_into_dequantized"] = compare(reference, _merged_into_dequantized(ctx))
    effect = compare(base_logits(ctx), merged_logits)

    problems = [p for what, diff in diffs.items() for p in tol.problems(diff, f"{what} vs adapter")]
    if not tol.differs(effect):
        problems.append(f"the merged model equals the base ({effect}): the adapter does nothing")
    _record_diffs(ctx, "merge", diffs, tol)
    _record(ctx, "merge_effect_max_abs", effect.max_abs, "logits")
    return Measurement(
        passed=not problems,
        value=judged(worst(diffs, tol), tol),
        bound=f"{tol.describe()} ({tol.source}); merged differs from base",
        unit=judged_unit(tol),
        message="; ".join(problems)
        or "; ".join(f"{what}: {diff}" for what, diff in diffs.items()) + f"; effect vs base: {effect}",
        details={
            "comparisons": {what: diff.as_dict() for what, diff in diffs.items()},
            "effect_vs_base": effect.as_dict(),
            "tolerance": tol.source,
            "tokens": int(reference.shape[0]),
        },
    )


@register_check("unmerge_restores", params=ToleranceParams)
def unmerge_restores(ctx: CheckContext, params: ToleranceParams) -> Measurement:
    """After merge then unmerge, the output is the adapter's again and the base weights the originals."""
    from peftcheck.methods import rewrites_base

    artifact = _require_merge(ctx, unmerge=True)
    tol = params.tolerance(ctx)
    reference, batch = adapter_logits(ctx), ctx.probe()
    pristine = artifact.base.model
    if rewrites_base(artifact.config):  # unmerge restores the residual the init wrote, rebuilt here
        pristine = adapter_ops.untrained(ctx).unload()  # unload: the adapter off, not merged

    model = copy.deepcopy(artifact.model)
    model.merge_adapter()
    merged_change, _, _ = weight_diff(pristine, model)
    model.unmerge_adapter()
    output = compare(reference, real_logits(model, batch))
    residue, where, missing = weight_diff(pristine, model)
    del model

    problems = tol.problems(output, "unmerged vs adapter")
    if missing:
        problems.append(f"{len(missing)} base tensors missing after unmerge: {missing[:3]}")
    if residue > tol.weight_rtol:
        problems.append(
            f"base weight {where} is off the original by {residue:.3g} (||ΔW||/||W|| > {tol.weight_rtol:g})"
        )
    if merged_change <= tol.weight_rtol:
        problems.append(f"merge_adapter changed no base weight beyond {tol.weight_rtol:g}: nothing to unmerge")
    _record(ctx, "unmerge_weight_residue", residue, "relative")
    _record(ctx, "unmerge_max_abs_diff", output.max_abs, "logits")
    if tol.judges_distribution:
        _record(ctx, "unmerge_kl", output.kl, "nats")
    return Measurement(
        passed=not problems,
        value=residue,
        bound=f"weight residue ||ΔW||/||W|| <= {tol.weight_rtol:g}; outputs {tol.describe()} ({tol.source})",
        unit="relative weight residue",
        message="; ".join(problems)
        or f"residue {residue:.3g} (at {where}); merge moved weights by {merged_change:.3g}; output {output}",
        details={
            "weight_residue": residue, "worst_tensor": where, "merged_weight_change": merged_change,
            "output": output.as_dict(), "tolerance": tol.source,
        },
    )  # fmt: skip


@register_check("disable_equals_base", params=ToleranceParams)
def disable_equals_base(ctx: CheckContext, params: ToleranceParams) -> Measurement:
    """Inside disable_adapter() the output is the untouched base's; after it, the adapter's again."""
    artifact = ctx.artifact()
    require_original_base(ctx)
    tol = params.tolerance(ctx)
    reference, base, batch = adapter_logits(ctx), base_logits(ctx), ctx.probe()
    with adapter_ops.disabled(artifact.model):
        disabled = compare(base, real_logits(artifact.model, batch))
    restored = compare(reference, real_logits(artifact.model, batch))
    effect = compare(base, reference)
    # Inside disable_adapter the adapter model runs the very base computation: hold it to the
    # tolerance of the base's dtype, which for a float base is its merge tolerance.
    problems = tol.problems(disabled, "disabled vs base") + tol.problems(restored, "after disable vs adapter")
    if not tol.differs(effect):
        problems.append(f"the adapter's output equals the base's ({effect}): disabling it proves nothing")
    _record(ctx, "disable_max_abs_diff", disabled.max_abs, "logits")
    return Measurement(
        passed=not problems,
        value=disabled.max_abs,
        bound=f"{tol.describe()} ({tol.source}); adapter differs from base",
        unit="max |Δlogit|",
        message="; ".join(problems) or f"disabled vs base: {disabled}; restored: {restored}; effect: {effect}",
        details={
            "disabled": disabled.as_dict(), "restored": restored.as_dict(), "effect_vs_base": effect.as_dict()
        },  # fmt: skip
    )


@register_check("merged_disable", params=ToleranceParams)
def merged_disable(ctx: CheckContext, params: ToleranceParams) -> Measurement:
    """A merged adapter (merge_adapter) disabled gives the base's output, and the adapter's again
    after disable_adapter() (PEFT's test_disable_adapters_with_merging)."""
    artifact = require_float_merge(ctx, "disabling a merged adapter", unmerge=True)
    require_original_base(ctx)
    tol = params.tolerance(ctx)
    reference, base, batch = adapter_logits(ctx), base_logits(ctx), ctx.probe()
    model = copy.deepcopy(artifact.model)
    model.merge_adapter()
    diffs = {"merged vs adapter": compare(reference, real_logits(model, batch))}
    with adapter_ops.disabled(model):
        diffs["merged, disabled vs base"] = compare(base, real_logits(model, batch))
    diffs["after disable vs adapter"] = compare(reference, real_logits(model, batch))
    del model
    effect = compare(base, reference)
    problems = [p for what, diff in diffs.items() for p in tol.problems(diff, what)]
    if not tol.differs(effect):
        problems.append(f"the adapter's output equals the base's ({effect}): disabling it proves nothing")
    disabled = diffs["merged, disabled vs base"]
    _record(ctx, "merged_disable_max_abs_diff", disabled.max_abs, "logits")
    return Measurement(
        passed=not problems,
        value=judged(disabled, tol),
        bound=f"{tol.describe()} ({tol.source}); adapter differs from base",
        unit=judged_unit(tol),
        message="; ".join(problems)
        or "; ".join(f"{what}: {diff}" for what, diff in diffs.items()) + f"; effect vs base: {effect}",
        details={"comparisons": {w: d.as_dict() for w, d in diffs.items()}, "effect_vs_base": effect.as_dict()},
    )


class AdapterSwitchingParams(ToleranceParams):
    mixed_batch: bool = Field(
        True,
        description="Also run one batch whose rows name different adapters (adapter_names=...): "
        "it must match the separate runs, or peft must refuse it; silently running one adapter "
        "for every row fails.",
    )
    seed: int = Field(0, description="Seed of the perturbation that makes the second adapter.")


NOISE_SCALE = 4.0  # times each tensor's own std: far enough apart to tell even 4-bit outputs apart


def _second_adapter_state(peft_model: Any, seed: int, trained: set[str]) -> dict[str, Any]:
    """The trained adapter's checkpoint state, every float tensor of ``trained`` moved by seeded
    noise of NOISE_SCALE times its own scale (fixed tensors: projections, indices, norms stay as
    saved): a second, clearly different adapter of the same shapes."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    state = {}
    for key, value in sorted(methods.saved_state(peft_model).items()):
        if key in trained and value.is_floating_point() and value.numel() > 0:
            scale = float(value.float().std()) if value.numel() > 1 else float(value.abs().max())
            noise = torch.randn(value.shape, generator=generator) * NOISE_SCALE * max(scale, 1e-2)
            value = (value.float().cpu() + noise).to(value.dtype).to(value.device)
        state[key] = value
    return state


def _second_adapter(peft_model: Any, folder: Path, seed: int) -> dict[str, Any]:
    """Write a second adapter checkpoint into ``folder`` (the trained one, perturbed) and
    return its tensors: loading it is the documented way to put two adapters on one base."""
    from safetensors.torch import save_file

    weights = methods.save(peft_model, folder)
    trained = set(methods.expected_checkpoint(peft_model))
    state = _second_adapter_state(peft_model, seed, trained)
    tensors = {key: value.detach().cpu().clone().contiguous() for key, value in state.items()}  # no shared storage
    save_file(tensors, str(weights), metadata={"format": "pt"})
    return {key: value for key, value in state.items() if key in trained}  # what _not_loaded checks


def _mixed_batch(
    model: Any, batch: dict[str, Any], names: list[str], expected: Any, first: Any, tol: Tolerance
) -> tuple[Diff | None, str, list[str]]:
    """Run one batch whose rows name different adapters: (its difference from the separate
    runs, a note, problems). peft refusing the batch is fine; silently ignoring it is not."""
    import torch

    model.eval()
    mask = batch["attention_mask"].bool().cpu()
    try:
        with torch.no_grad():
            out = model(**batch, adapter_names=names).logits.float().cpu()
    except (ValueError, TypeError, NotImplementedError) as exc:
        return None, f"peft refuses mixed-adapter batches for this method ({type(exc).__name__}: {exc})"[:240], []
    diff = compare(expected, out[:, -mask.shape[1] :][mask])
    problems = tol.problems(diff, "mixed batch vs separate runs")
    if problems and not tol.differs(compare(first, out[:, -mask.shape[1] :][mask])):
        problems.append("every row ran the active adapter: adapter_names was silently ignored")
    return diff, "differs from the separate runs" if problems else "matches the separate runs", problems


@register_check("adapter_switching", params=AdapterSwitchingParams)
def adapter_switching(ctx: CheckContext, params: AdapterSwitchingParams) -> Measurement:
    """One base, two adapters: set_adapter switches between their own outputs exactly.

    A batch whose rows name different adapters must match the separate runs, or peft must
    refuse it; silently running the active adapter on every row fails."""
    import torch

    artifact = ctx.artifact()
    adapter_ops.require(artifact.model, "set_adapter")
    tol = params.tolerance(ctx)
    reference, batch = adapter_logits(ctx), ctx.probe()
    first = artifact.model.active_adapter
    with tempfile.TemporaryDirectory(prefix="peftcheck-second-") as tmp:
        # from a copy: saving rewrites 4-bit weights in place on some CPUs (adapter_ops.save)
        state = _second_adapter(copy.deepcopy(artifact.model), Path(tmp), params.seed)
        solo_model = adapter_ops.load(artifact.model, copy.deepcopy(artifact.base.model), Path(tmp))
        not_loaded = _not_loaded(solo_model, state, solo_model.active_adapter)
        solo = real_logits(solo_model, batch)
        del solo_model
        model = copy.deepcopy(artifact.model)
        model.load_adapter(tmp, adapter_name="second")
        not_loaded += _not_loaded(model, state, "second")
    diffs = {"first after adding second": compare(reference, real_logits(model, batch))}
    model.set_adapter("second")
    diffs["second vs its own model"] = compare(solo, real_logits(model, batch))
    model.set_adapter(first)
    diffs["first after switching back"] = compare(reference, real_logits(model, batch))
    apart = compare(reference, solo)
    problems = [p for what, diff in diffs.items() for p in tol.problems(diff, what)]
    if not_loaded:
        problems.append(f"tensors of the second adapter did not load: {sorted(set(not_loaded))[:3]}")
    if not tol.differs(apart):
        problems.append(f"the two adapters give the same output ({apart}): switching proves nothing")

    mixed_note = "not run (mixed_batch: false)"
    if params.mixed_batch:
        mask = batch["attention_mask"].bool().cpu()
        names = [first if row % 2 == 0 else "second" for row in range(mask.shape[0])]
        rows = torch.cat([torch.full((int(m.sum()),), i) for i, m in enumerate(mask)])
        expected = torch.where((rows % 2 == 0).unsqueeze(-1), reference, solo)
        mixed, mixed_note, mixed_problems = _mixed_batch(model, batch, names, expected, reference, tol)
        if mixed is not None:
            diffs["mixed batch vs separate runs"] = mixed
        problems += mixed_problems
    del model
    largest = max(d.max_abs for d in diffs.values())
    _record(ctx, "switching_max_abs_diff", largest, "logits")
    return Measurement(
        passed=not problems,
        value=largest,
        bound=f"{tol.describe()} ({tol.source}); the adapters differ",
        unit="max |Δlogit|",
        message="; ".join(problems)
        or f"set_adapter switches exactly; adapters apart by {apart}; mixed batch: {mixed_note}",
        details={
            "comparisons": {what: diff.as_dict() for what, diff in diffs.items()},
            "adapters_apart": apart.as_dict(),
            "mixed_batch": mixed_note,
        },
    )


def _not_loaded(model: Any, state: dict[str, Any], adapter: str) -> list[str]:
    """Keys of ``state`` that did not arrive in ``adapter`` (peft's load result lists keys it
    loads by another path, such as prompt tables, as unexpected, so it is not enough)."""
    import torch

    from peftcheck.methods import expected_checkpoint

    live = expected_checkpoint(model, adapter, trainable_only=False)
    return [
        key for key, value in state.items()
        if key not in live
        or (live[key]["tensor"] is not None and not torch.equal(live[key]["tensor"], value.cpu()))
    ]  # fmt: skip

"""Several adapters on one base (issue 16; PEFT's ``_test_merge_layers_multi`` and
``test_multiple_active_adapters_forward``): two active adapters merge into what they compute
unmerged, merging a subset gives that subset alone, and ``add_weighted_adapter(..., "cat")``
equals the adapters applied together (peft#3608, two DoRA adapters merged on one layer, 2.6-13.9%
output error, hid there); and the suite's own adapters loaded side by side under their names."""

from __future__ import annotations

import copy
import tempfile
from pathlib import Path
from typing import Any

from pydantic import Field

from peftcheck import methods
from peftcheck.checks import adapter_ops
from peftcheck.checks.merging import _not_loaded, _second_adapter, require_float_merge, require_original_base
from peftcheck.checks.outputs import (
    ToleranceParams,
    adapter_logits,
    base_logits,
    compare,
    judged,
    judged_unit,
    real_logits,
    worst,
)
from peftcheck.checks.registry import Measurement, NotApplicable, register_check
from peftcheck.context import CheckContext

__all__ = ["MultiAdapterParams", "multi_adapter_merge", "CoResidentParams", "co_resident"]

SECOND = "second"
CAT = "cat_of_both"


class MultiAdapterParams(ToleranceParams):
    seed: int = Field(0, description="Seed of the perturbation that makes the second adapter.")
    weighted_cat: bool = Field(
        True, description="Also compare add_weighted_adapter([first, second], [1, 1], combination_type='cat') "
        "with both adapters active, where the method has it.",
    )  # fmt: skip


def _with_second(ctx: CheckContext, seed: int) -> tuple[Any, Any, list[str]]:
    """A copy of the trained model with a second, clearly different adapter loaded beside it
    (the trained one perturbed), the second's own output, and tensors that did not load."""
    artifact = ctx.artifact()
    with tempfile.TemporaryDirectory(prefix="peftcheck-multi-") as tmp:
        state = _second_adapter(copy.deepcopy(artifact.model), Path(tmp), seed)
        model = copy.deepcopy(artifact.model)
        try:
            model.load_adapter(tmp, adapter_name=SECOND)
        except ValueError as exc:  # e.g. trainable tokens: "Only disjunct token indices are currently supported"
            raise NotApplicable(f"peft refuses a second adapter of this kind here (ValueError: {exc})"[:300]) from None
        solo_model = adapter_ops.load(artifact.model, copy.deepcopy(artifact.base.model), Path(tmp))
        solo = real_logits(solo_model, ctx.probe())
        del solo_model
    return model, solo, _not_loaded(model, state, SECOND)


def _crashed(what: str, exc: Exception) -> Measurement:
    """A failure naming where peft crashed on a combination it accepts (not a refusal, which is
    not applicable): red, with peft's error, never a traceback."""
    return Measurement(
        passed=False, value=None, bound=f"{what} runs", unit="",
        message=f"{what} raised {type(exc).__name__}: {str(exc)[:240]}",
        details={"error": f"{type(exc).__name__}: {str(exc)[:500]}"},
    )


def _activate(model: Any, names: list[str]) -> None:
    # PeftModel.set_adapter takes one name; the tuner's own set_adapter takes several
    model.base_model.set_adapter(names)


@register_check("multi_adapter_merge", params=MultiAdapterParams)
def multi_adapter_merge(ctx: CheckContext, params: MultiAdapterParams) -> Measurement:
    """Two adapters active on one base: merging both equals their unmerged output, merging one of
    them (``merge_and_unload(adapter_names=[...])``) equals that one alone, and a ``cat`` weighted
    combination equals both active; both together differ from each alone."""
    from peftcheck.methods import supports_weighted_cat

    artifact = ctx.artifact()
    adapter_ops.require(artifact.model, "several active adapters")
    require_float_merge(ctx, "merging several adapters")
    require_original_base(ctx)
    tol, batch, first = params.tolerance(ctx), ctx.probe(), artifact.model.active_adapter
    reference = adapter_logits(ctx)
    model, second, not_loaded = _with_second(ctx, params.seed)
    try:
        _activate(model, [first, SECOND])
        both = real_logits(model, batch)  # LN tuning refuses only at the forward
    except (ValueError, TypeError, NotImplementedError) as exc:
        raise NotApplicable(f"peft refuses several active adapters here ({type(exc).__name__}: {exc})"[:300]) from None
    except RuntimeError as exc:  # peft accepted both adapters, then its forward broke (C3A; issue 13)
        return _crashed("the forward with both adapters active", exc)
    diffs, notes = {}, {}
    merged = copy.deepcopy(model)
    merged.merge_adapter()
    diffs["both merged vs both active"] = compare(both, real_logits(merged, batch))
    del merged
    subset = copy.deepcopy(model).merge_and_unload(adapter_names=[SECOND])
    diffs[f"merge_and_unload(adapter_names=[{SECOND!r}]) vs {SECOND} alone"] = compare(second, real_logits(subset, batch))
    del subset

    cat_reason = supports_weighted_cat(artifact.model) if params.weighted_cat else "weighted_cat: false"
    if cat_reason is None:
        try:
            model.add_weighted_adapter([first, SECOND], [1.0, 1.0], CAT, combination_type="cat")
        except (ValueError, TypeError, NotImplementedError) as exc:
            cat_reason = f"peft refuses it ({type(exc).__name__}: {str(exc)[:200]})"
        else:
            model.set_adapter(CAT)
            diffs["add_weighted_adapter cat vs both active"] = compare(both, real_logits(model, batch))
    notes["weighted cat"] = "compared" if cat_reason is None else f"not run: {cat_reason}"
    del model

    problems = [p for what, diff in diffs.items() for p in tol.problems(diff, what)]
    if not_loaded:
        problems.append(f"tensors of the second adapter did not load: {sorted(set(not_loaded))[:3]}")
    apart = {"both vs first alone": compare(reference, both), f"both vs {SECOND} alone": compare(second, both)}
    for what, diff in apart.items():
        if not tol.differs(diff):
            problems.append(f"{what}: equal ({diff}), so one adapter did nothing and the merges prove nothing")
    furthest = worst(diffs, tol)
    ctx.metrics["multi_adapter_max_abs_diff"] = {"value": furthest.max_abs, "unit": "logits"}
    return Measurement(
        passed=not problems,
        value=judged(furthest, tol),
        bound=f"{tol.describe()} ({tol.source}); both adapters together differ from each alone",
        unit=judged_unit(tol),
        message="; ".join(problems)
        or "; ".join(f"{w}: {d}" for w, d in diffs.items()) + f"; weighted cat: {notes['weighted cat']}",
        details={"comparisons": {w: d.as_dict() for w, d in diffs.items()},
                 "apart": {w: d.as_dict() for w, d in apart.items()}, **notes},
    )  # fmt: skip


class CoResidentParams(ToleranceParams):
    method_fields = ("adapters",)
    adapters: list[str] = Field(
        min_length=1, description="Other methods of the suite whose trained adapters load beside this one, each "
        "under its method's name, on one base.",
    )  # fmt: skip
    mixed_batch: bool = Field(
        True, description="Also run one batch whose rows name different adapters, where peft supports it."
    )


def _adapter_tensors(model: Any, adapter: str) -> dict[str, int]:
    """Parameter name -> size of ``adapter``'s tensors, the name with its adapter segment put back
    to ``default`` and without ``base_layer`` segments (a second tuner type on the same module
    wraps the first one's layer, so its names move)."""
    return {
        ".".join("default" if part == adapter else part for part in name.split(".") if part != "base_layer"): p.numel()
        for name, p in model.named_parameters() if adapter in name.split(".")
    }  # fmt: skip


def _alone(artifacts: dict[str, Any], folder: Path) -> dict[str, dict[str, int]]:
    """Save every adapter into ``folder``/<method>; the tensors each has loaded alone on a fresh
    base (a loaded prompt adapter is its table, without the encoder that trained it)."""
    tensors = {}
    for name, artifact in artifacts.items():
        adapter_ops.save(artifact.model, folder / name)
        alone = adapter_ops.load(artifact.model, copy.deepcopy(artifact.base.model), folder / name)
        tensors[name] = _adapter_tensors(alone, alone.active_adapter)
        del alone
    return tensors


def _one_base(artifacts: dict[str, Any], folder: Path) -> Any:
    """Every adapter saved in ``folder`` loaded on one fresh copy of their base under its
    method's name (peft: a PeftModel when they share a peft type, else PeftMixedModel)."""
    first = next(iter(artifacts.values()))
    base = copy.deepcopy(first.base.model)
    return methods.load_together(first.model, base, {name: folder / name for name in artifacts})


@register_check("co_resident", params=CoResidentParams)
def co_resident(ctx: CheckContext, params: CoResidentParams) -> Measurement:
    """The suite's adapters loaded on one base under their own names: each adapter holds the
    tensors (names, count) and wraps the modules it has alone, ``set_adapter`` gives each its own
    output, each differs from the base, and a batch whose rows name different adapters matches
    the separate runs where peft supports it (a second adapter that loads as a no-op or on other
    modules fails)."""
    import torch

    from peftcheck.checks.merging import _mixed_batch

    names = [ctx.method, *params.adapters]
    if len(set(names)) != len(names):
        raise NotApplicable(f"adapters {params.adapters} repeat a method: each loads once, under its own name")
    artifacts = {name: ctx.artifact() if name == ctx.method else ctx.other(name) for name in names}
    for name, artifact in artifacts.items():
        adapter_ops.require(artifact.model, f"loading {name} beside other adapters")
    bases = {name: a.base.quantization for name, a in artifacts.items()}
    if len(set(bases.values())) > 1:
        raise NotApplicable(f"the methods train on different bases ({bases}): they cannot share one")
    tol, batch, base = params.tolerance(ctx), ctx.probe(), base_logits(ctx)
    solo = {name: real_logits(a.model, batch) for name, a in artifacts.items()}
    with tempfile.TemporaryDirectory(prefix="peftcheck-coresident-") as tmp:
        alone = _alone(artifacts, Path(tmp))
        try:
            model = _one_base(artifacts, Path(tmp))
        except (ValueError, TypeError, KeyError) as exc:  # e.g. PeftMixedModel refusing a peft type
            raise NotApplicable(f"peft cannot load these adapters on one base ({type(exc).__name__}: {exc})"[:300]) from None
        except (AttributeError, RuntimeError) as exc:  # a combination peft accepts, crashing as it loads
            return _crashed(f"loading {', '.join(params.adapters)} beside {ctx.method}", exc)
    problems, diffs = [], {}
    for name in artifacts:
        own, shared = alone[name], _adapter_tensors(model, name)
        if shared != own:
            missing, extra = sorted(set(own) - set(shared)), sorted(set(shared) - set(own))
            problems.append(
                f"{name} on the shared base holds {sum(shared.values()):,} parameters in {len(shared)} tensors, "
                f"alone {sum(own.values()):,} in {len(own)} (missing {missing[:2]}, extra {extra[:2]})"
            )
        model.set_adapter(name)
        diffs[f"{name} on the shared base vs alone"] = compare(solo[name], real_logits(model, batch))
        if not tol.differs(compare(base, solo[name])):
            problems.append(f"{name}'s output equals the base's: it loads as a no-op")
    problems += [p for what, diff in diffs.items() for p in tol.problems(diff, what)]

    mixed_note = "not run (mixed_batch: false)"
    if params.mixed_batch:
        mask = batch["attention_mask"].bool().cpu()
        row_names = [names[row % len(names)] for row in range(mask.shape[0])]
        rows = torch.cat([torch.full((int(m.sum()),), i) for i, m in enumerate(mask)])
        expected = torch.cat([solo[row_names[int(r)]][i : i + 1] for i, r in enumerate(rows)])
        # the last adapter set is the active one: what every row gets if adapter_names is ignored
        mixed, mixed_note, mixed_problems = _mixed_batch(model, batch, row_names, expected, solo[names[-1]], tol)
        if mixed is not None:
            diffs["mixed batch vs separate runs"] = mixed
        problems += mixed_problems
    del model
    furthest = worst(diffs, tol)
    return Measurement(
        passed=not problems,
        value=judged(furthest, tol),
        bound=f"{tol.describe()} ({tol.source}); each adapter's own tensors; each differs from the base",
        unit=judged_unit(tol),
        message="; ".join(problems)
        or f"{len(names)} adapters on one base ({', '.join(names)}) each reproduce their own output; worst {furthest}; "
        f"mixed batch: {mixed_note}",
        details={"adapters": names, "comparisons": {w: d.as_dict() for w, d in diffs.items()}, "mixed_batch": mixed_note},
    )

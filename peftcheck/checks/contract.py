"""Contracts PEFT's own test suite asserts (issue 16): the untrained adapter is the base, loading
for inference freezes the adapter, a merged model survives save -> load, safe_merge equals a
merge and refuses NaN weights, and the adapter's name makes no difference.

Every check works on copies (rebuilt, saved or loaded ones) and pairs its equalities with
"the trained adapter changed the output", so an adapter that does nothing fails.
"""

from __future__ import annotations

import copy
import math
import tempfile
from pathlib import Path
from typing import Any

from pydantic import Field, field_validator

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
from peftcheck.checks.persistence import UNSAFE_SUFFIXES
from peftcheck.checks.registry import Measurement, NotApplicable, register_check
from peftcheck.context import CheckContext
from peftcheck.tolerances import Tolerance

__all__ = [
    "init_identity", "inference_load", "merged_save_load", "safe_merge", "adapter_name_invariance",
    "GenerateAfterDisableParams", "generate_after_disable",
]  # fmt: skip


def _record(ctx: CheckContext, name: str, value: float, unit: str) -> None:
    ctx.metrics[name] = {"value": value, "unit": unit}  # returned in the Measurement (issue 14)


def _effect(ctx: CheckContext, tol: Tolerance, what: str) -> tuple[Diff, list[str]]:
    """The trained adapter against the base: it must differ, or ``what`` proves nothing."""
    effect = compare(base_logits(ctx), adapter_logits(ctx))
    if tol.differs(effect):
        return effect, []
    return effect, [f"the trained adapter's output equals the base's ({effect}): {what} proves nothing"]


def _trainable(model: Any) -> dict[str, Any]:
    return {name: p for name, p in model.named_parameters() if p.requires_grad}


def _unequal(ours: dict[str, Any], theirs: dict[str, Any]) -> list[str]:
    """Names present on one side only, or whose tensors differ bitwise."""
    import torch

    both = set(ours) & set(theirs)
    return sorted((set(ours) ^ set(theirs)) | {n for n in both if not torch.equal(ours[n], theirs[n])})


def _renamed(name: str, adapter: str) -> str:
    """A parameter name with its adapter-name segment ``adapter`` put back to ``default``."""
    return ".".join("default" if part == adapter else part for part in name.split("."))


def _reload_expectation(artifact: Any) -> int:
    """Trainable parameters a reload with ``is_trainable=True`` should have: the trained count,
    less what a rank budget pruned from the checkpoint (AdaLoRA saves only the kept ranks)."""
    from peftcheck.methods import expected_checkpoint

    live = dict(artifact.model.named_parameters())
    count = int(artifact.record["trainable_params"])
    for spec in expected_checkpoint(artifact.model).values():
        if len(spec["from"]) == 1:  # one live tensor saved as one (possibly smaller) tensor
            count -= live[spec["from"][0]].numel() - math.prod(spec["shape"])
    return count


def _load(artifact: Any, folder: str, **kwargs: Any) -> Any:
    return adapter_ops.load(artifact.model, copy.deepcopy(artifact.base.model), Path(folder), **kwargs)


@register_check("init_identity", params=ToleranceParams, needs_training=True)
def init_identity(ctx: CheckContext, params: ToleranceParams) -> Measurement:
    """Before its first step the adapter's output is the base's, where the method promises it.

    The untrained adapter is rebuilt as training built it (and must be bitwise the one training
    started from); the trained adapter must then differ from the base."""
    artifact = ctx.artifact()
    reason = methods.identity_at_init(artifact.config)
    if reason is not None:
        raise NotApplicable(reason)
    tol = params.tolerance(ctx)
    untrained = adapter_ops.untrained(ctx)
    rebuilt = {n: p.detach().cpu() for n, p in _trainable(untrained).items()}
    identity = compare(base_logits(ctx), real_logits(untrained, ctx.probe()))
    del untrained
    unlike = _unequal(rebuilt, artifact.initial_trainable)
    problems = tol.problems(identity, f"untrained adapter ({methods.init_setting(artifact.config)}) vs base")
    if unlike:
        problems.append(f"the rebuilt untrained adapter is not the one training started from: {unlike[:3]}")
    effect, no_effect = _effect(ctx, tol, "the identity")
    problems += no_effect
    _record(ctx, "init_max_abs_diff", identity.max_abs, "logits")
    return Measurement(
        passed=not problems,
        value=judged(identity, tol),
        bound=f"untrained vs base {tol.describe()} ({tol.source}); trained differs from base",
        unit=judged_unit(tol),
        message="; ".join(problems) or f"untrained vs base: {identity}; trained vs base: {effect}",
        details={"init": methods.init_setting(artifact.config), "untrained_vs_base": identity.as_dict(),
                 "effect_vs_base": effect.as_dict(), "rebuild_differs": unlike[:20], "tolerance": tol.source},
    )  # fmt: skip


@register_check("inference_load", params=ToleranceParams)
def inference_load(ctx: CheckContext, params: ToleranceParams) -> Measurement:
    """PeftModel.from_pretrained(is_trainable=False) freezes every parameter and gives the
    trained outputs; is_trainable=True gives the trained adapter's trainable tensors and outputs
    (peft#282, #2759), where peft can resume the method."""
    from peftcheck.methods import can_resume, parameter_counts

    artifact = ctx.artifact()
    adapter_ops.require(artifact.model, "PeftModel.from_pretrained(is_trainable=...)")
    tol = params.tolerance(ctx)
    reference, batch = adapter_logits(ctx), ctx.probe()
    trained_names = set(_trainable(artifact.model))
    expected = _reload_expectation(artifact)
    no_resume = can_resume(artifact.config)
    count, names = None, set()
    with tempfile.TemporaryDirectory(prefix="peftcheck-inference-") as tmp:
        adapter_ops.save(artifact.model, Path(tmp))
        frozen = _load(artifact, tmp, trainable=False)
        frozen_names = sorted(_trainable(frozen))
        frozen_count = parameter_counts(frozen)[0]
        diffs = {"is_trainable=False vs adapter": compare(reference, real_logits(frozen, batch))}
        del frozen
        if no_resume is None:
            trainable = _load(artifact, tmp, trainable=True)
            names, count = set(_trainable(trainable)), parameter_counts(trainable)[0]
            diffs["is_trainable=True vs adapter"] = compare(reference, real_logits(trainable, batch))
            del trainable

    problems = [p for what, diff in diffs.items() for p in tol.problems(diff, what)]
    if frozen_count:
        problems.append(f"is_trainable=False left {frozen_count:,} parameters trainable: {frozen_names[:3]}")
    if count is not None and count != expected:
        problems.append(f"is_trainable=True gives {count:,} trainable parameters, the trained adapter {expected:,}")
    if count is not None and not expected and not trained_names:  # issue 26: 0 == 0 restores nothing
        problems.append("the trained adapter has no trainable parameter: is_trainable=True has nothing to restore")
    if count is not None and names != trained_names:
        problems.append(
            f"is_trainable=True: trainable tensors differ from the trained ones (missing "
            f"{sorted(trained_names - names)[:3]}, extra {sorted(names - trained_names)[:3]})"
        )
    effect, no_effect = _effect(ctx, tol, "the reload")
    problems += no_effect
    resumed = f"{count:,} trainable" if count is not None else f"not run: {no_resume}"
    wanted = f"{expected:,} trainable" if no_resume is None else "refused by peft"
    return Measurement(
        passed=not problems,
        value=float(frozen_count),
        bound=f"is_trainable=False: 0 trainable; is_trainable=True: {wanted}; outputs {tol.describe()}",
        unit="trainable parameters after an inference load",
        message="; ".join(problems)
        or f"is_trainable=False: 0 trainable, {diffs['is_trainable=False vs adapter']}; is_trainable=True: {resumed}; "
        f"trained vs base: {effect}",
        details={
            "frozen_trainable": frozen_count, "trainable_count": count, "expected_trainable": expected,
            "resume": no_resume or "run", "comparisons": {w: d.as_dict() for w, d in diffs.items()},
            "effect_vs_base": effect.as_dict(),
        },
    )  # fmt: skip


@register_check("merged_save_load", params=ToleranceParams)
def merged_save_load(ctx: CheckContext, params: ToleranceParams) -> Measurement:
    """merge_and_unload -> save_pretrained -> a fresh AutoModelForCausalLM.from_pretrained gives
    the adapter's logits, with every tensor loaded, and differs from the base."""
    import torch
    from transformers import AutoModelForCausalLM

    from peftcheck.methods import can_merge
    from peftcheck.models import dtype_kwarg

    artifact = ctx.artifact()
    reason = can_merge(artifact.model)
    if reason is not None:
        raise NotApplicable(reason)
    if artifact.base.quantization != "none":
        raise NotApplicable(
            f"{artifact.base.quantization} base: merge_and_unload re-quantizes W + ΔW and the saved "
            "model holds bitsandbytes codes, not a float model to ship; merge_equivalence covers "
            "merging into a dequantized copy"
        )
    tol = params.tolerance(ctx)
    reference, batch = adapter_logits(ctx), ctx.probe()
    merged = methods.merged_copy(artifact.model)
    in_memory = real_logits(merged, batch)
    with tempfile.TemporaryDirectory(prefix="peftcheck-merged-") as tmp:
        merged.save_pretrained(tmp)
        del merged
        files = sorted(p.name for p in Path(tmp).iterdir())
        loaded, info = AutoModelForCausalLM.from_pretrained(
            tmp, output_loading_info=True, trust_remote_code=ctx.suite.spec.trust_remote_code,
            **dtype_kwarg(getattr(torch, artifact.base.dtype)),
        )  # fmt: skip
    loaded.to(artifact.device)
    out = real_logits(loaded, batch)
    del loaded
    diffs = {"reloaded merged vs adapter": compare(reference, out)}
    diffs["reloaded vs merged in memory"] = compare(in_memory, out)
    problems = [p for what, diff in diffs.items() for p in tol.problems(diff, what)]
    unsafe = [name for name in files if name.endswith(UNSAFE_SUFFIXES)]
    if unsafe or not any(name.endswith(".safetensors") for name in files):
        problems.append(f"the merged model is not saved as safetensors (files: {files})")
    loading = {key: sorted(info.get(key) or []) for key in ("missing_keys", "unexpected_keys", "mismatched_keys")}
    for key, names in loading.items():
        if names:
            shown = [str(n) for n in names[:3]]
            problems.append(f"{len(names)} {key.replace('_', ' ')} loading the merged model: {shown}")
    effect = compare(base_logits(ctx), out)
    if not tol.differs(effect):
        problems.append(f"the reloaded merged model equals the base ({effect}): the adapter does nothing")
    reloaded = diffs["reloaded merged vs adapter"]
    _record(ctx, "merged_reload_max_abs_diff", reloaded.max_abs, "logits")
    return Measurement(
        passed=not problems,
        value=reloaded.max_abs,
        bound=f"{tol.describe()} ({tol.source}); every tensor loaded; reloaded differs from base",
        unit="max |Δlogit|",
        message="; ".join(problems)
        or "; ".join(f"{what}: {diff}" for what, diff in diffs.items()) + f"; vs base: {effect}",
        details={"files": files, "comparisons": {w: d.as_dict() for w, d in diffs.items()},
                 "effect_vs_base": effect.as_dict(), **{k: [str(n) for n in v[:20]] for k, v in loading.items()}},
    )  # fmt: skip


@register_check("safe_merge", params=ToleranceParams)
def safe_merge(ctx: CheckContext, params: ToleranceParams) -> Measurement:
    """merge_and_unload(safe_merge=True) equals a normal merge and moves the base weights; with a
    NaN planted in one adapter weight (on a copy) it must refuse to merge."""
    import torch

    from peftcheck.methods import merged_parameters, supports_safe_merge

    artifact = ctx.artifact()
    reason = supports_safe_merge(artifact.model)
    if reason is not None:
        raise NotApplicable(reason)
    names = merged_parameters(artifact.model)
    if not names:
        raise NotApplicable("no adapter tensor of a tuner layer to plant a NaN in")
    tol, batch = params.tolerance(ctx), ctx.probe()
    normal = methods.merged_copy(artifact.model)
    normal_out = real_logits(normal, batch)
    safe = copy.deepcopy(artifact.model).merge_and_unload(safe_merge=True)
    diff = compare(normal_out, real_logits(safe, batch))
    apart, apart_at, _ = weight_diff(normal, safe)
    moved, _, _ = weight_diff(artifact.base.model, safe)
    del normal, safe

    poisoned = copy.deepcopy(artifact.model)
    with torch.no_grad():
        dict(poisoned.named_parameters())[names[0]].view(-1)[0] = float("nan")
    try:
        poisoned.merge_and_unload(safe_merge=True)
        refusal = None
    except (ValueError, RuntimeError) as exc:  # peft raises ValueError("NaNs detected ...")
        refusal = f"{type(exc).__name__}: {str(exc)[:200]}"
    del poisoned

    problems = tol.problems(diff, "safe_merge vs merge")
    if apart > tol.weight_rtol:
        problems.append(
            f"safe_merge's weight {apart_at} is off a normal merge's by {apart:.3g} (> {tol.weight_rtol:g})"
        )
    if moved <= tol.weight_rtol:
        problems.append(f"the merge moved no base weight beyond {tol.weight_rtol:g}: equal merges prove nothing")
    if refusal is None:
        problems.append(f"safe_merge merged an adapter with a NaN in {names[0]} without refusing")
    return Measurement(
        passed=not problems,
        value=judged(diff, tol),
        bound=f"{tol.describe()} ({tol.source}), weights within {tol.weight_rtol:g}; a NaN adapter is refused",
        unit=judged_unit(tol),
        message="; ".join(problems)
        or f"safe vs normal merge: {diff}; merge moved weights by {moved:.3g}; NaN refused ({refusal})",
        details={"safe_vs_merge": diff.as_dict(), "weight_apart": apart, "merge_moved": moved,
                 "nan_planted_in": names[0], "refusal": refusal},
    )  # fmt: skip


class AdapterNameParams(ToleranceParams):
    adapter_name: str = Field(
        "other", min_length=1, description="The non-default adapter name to compare with 'default'."
    )

    @field_validator("adapter_name")
    @classmethod
    def _not_default(cls, value: str) -> str:
        if value == "default" or not value.isidentifier():
            raise ValueError(f"must be an identifier other than 'default', got {value!r}")
        return value


@register_check("adapter_name_invariance", params=AdapterNameParams, needs_training=True)
def adapter_name_invariance(ctx: CheckContext, params: AdapterNameParams) -> Measurement:
    """The method under a non-default adapter name gives the same trainable tensors and untrained
    outputs (same seed), and loads the trained adapter with its count and outputs (peft#1410)."""
    from peftcheck.methods import can_resume, parameter_counts

    artifact = ctx.artifact()
    adapter_ops.require(artifact.model, "adapter_name")
    name, tol, batch = params.adapter_name, params.tolerance(ctx), ctx.probe()
    default, other = adapter_ops.untrained(ctx), adapter_ops.untrained(ctx, adapter_name=name)
    counts = {"default": parameter_counts(default)[0], name: parameter_counts(other)[0]}
    ours = {n: p.detach().cpu() for n, p in _trainable(default).items()}
    theirs = {_renamed(n, name): p.detach().cpu() for n, p in _trainable(other).items()}
    unlike = _unequal(ours, theirs)
    diffs = {"untrained: renamed vs default": compare(real_logits(default, batch), real_logits(other, batch))}
    del default, other
    resumable = can_resume(artifact.config) is None  # else loaded frozen, as peft allows
    expected = _reload_expectation(artifact) if resumable else None  # frozen counts: inference_load
    with tempfile.TemporaryDirectory(prefix="peftcheck-renamed-") as tmp:
        adapter_ops.save(artifact.model, Path(tmp))
        loaded = _load(artifact, tmp, adapter_name=name, trainable=resumable)
        loaded_count = parameter_counts(loaded)[0]
        diffs["trained, loaded renamed vs adapter"] = compare(adapter_logits(ctx), real_logits(loaded, batch))
        del loaded

    problems = [p for what, diff in diffs.items() for p in tol.problems(diff, what)]
    if counts[name] != counts["default"]:
        problems.append(
            f"adapter {name!r} has {counts[name]:,} trainable parameters, 'default' {counts['default']:,}"
        )
    if unlike:
        problems.append(f"{len(unlike)} trainable tensors differ between the names (same seed): {unlike[:3]}")
    if not ours and not theirs:  # issue 26: equal counts and tensors over nothing
        problems.append(f"the rebuilt method has no trainable tensor under 'default' or {name!r}: comparing them "
                        "proves nothing")  # fmt: skip
    if expected is not None and loaded_count != expected:
        problems.append(
            f"loaded as {name!r} (is_trainable={resumable}): {loaded_count:,} trainable, expected {expected:,}"
        )
    effect, no_effect = _effect(ctx, tol, "equal outputs under two names")
    problems += no_effect
    worst_diff = worst(diffs, tol)
    return Measurement(
        passed=not problems,
        value=float(counts[name]),
        bound=f"trainable count {counts['default']:,} as under 'default'; outputs {tol.describe()} ({tol.source})",
        unit="trainable parameters",
        message="; ".join(problems)
        or f"{counts[name]:,} trainable under {name!r} as under 'default'; worst output difference {worst_diff}",
        details={"counts": counts, "loaded_trainable": loaded_count, "expected_trainable": expected,
                 "tensors_differ": unlike[:20], "comparisons": {w: d.as_dict() for w, d in diffs.items()},
                 "effect_vs_base": effect.as_dict()},
    )  # fmt: skip


class GenerateAfterDisableParams(ToleranceParams):
    samples: int = Field(4, ge=1, le=64, description="Held-out texts whose first half is a prompt.")
    max_new_tokens: int = Field(8, ge=1, le=256, description="Greedy tokens generated per prompt.")


def _greedy(model: Any, tokenizer: Any, prompts: list[str], *, max_new_tokens: int, device: str) -> list[Any]:
    """Per prompt, (new token ids, the logits of each step)."""
    from peftcheck.checks.quality import greedy

    model.eval()
    return [greedy(model, tokenizer, prompt, max_new_tokens=max_new_tokens, device=device) for prompt in prompts]


def _generations_apart(reference: list[Any], other: list[Any], tol: Tolerance) -> tuple[Diff, list[str]]:
    """The scores compared over each prompt's shared token prefix up to the first differing
    token, and the prompts whose tokens differ beyond a near tie (scores within ``tol``)."""
    import torch

    ref_scores, other_scores, diverged = [], [], []
    for index, ((ref_ids, ref_step), (ids, step)) in enumerate(zip(reference, other)):
        same = next((i for i, (a, b) in enumerate(zip(ref_ids, ids)) if a != b), min(len(ref_ids), len(ids)))
        upto = min(same + 1, ref_step.shape[0], step.shape[0])
        ref_scores.append(ref_step[:upto])
        other_scores.append(step[:upto])
        if ref_ids != ids and tol.problems(compare(ref_step[:upto], step[:upto]), ""):
            diverged.append(f"prompt {index} from token {same}")
    return compare(torch.cat(ref_scores), torch.cat(other_scores)), diverged


def _prompt_logits(model: Any, tokenizer: Any, prompts: list[str], *, device: str) -> Any:
    """The forward pass's logits at each prompt's last token, [prompts, vocab]."""
    import torch

    rows = []
    for prompt in prompts:
        encoded = tokenizer(prompt, return_tensors="pt").to(device)
        with torch.no_grad():
            rows.append(model(**encoded).logits[0, -1].float().cpu())
    return torch.stack(rows)


@register_check("generate_after_disable", params=GenerateAfterDisableParams)
def generate_after_disable(ctx: CheckContext, params: GenerateAfterDisableParams) -> Measurement:
    """generate() inside disable_adapter() is the base's, and after it the adapter's again,
    compared on greedy tokens and their scores (peft#1501: prompt learning generated as the base
    after the context, which a forward pass does not show); the first generated step is the
    adapter's forward pass, and the adapter generates unlike the base."""
    import torch

    from peftcheck.checks.merging import require_original_base
    from peftcheck.checks.quality import held_out_texts, split_prompt

    artifact = ctx.artifact()
    require_original_base(ctx)
    tol = params.tolerance(ctx)
    prompts = [split_prompt(t, 0.5)[0] for t in held_out_texts(ctx, params.samples)]
    if not prompts:
        raise NotApplicable("no held-out text of two or more words to prompt with")
    kwargs = {"max_new_tokens": params.max_new_tokens, "device": artifact.device}
    tokenizer = artifact.base.tokenizer
    key = ("generate_after_disable", tuple(prompts), params.max_new_tokens)
    if key not in artifact.base.memo:  # the base is shared by every method of the suite
        artifact.base.memo[key] = _greedy(artifact.base.model, tokenizer, prompts, **kwargs)
    base = artifact.base.memo[key]
    model = artifact.model
    was_training = model.training
    try:
        before = _greedy(model, tokenizer, prompts, **kwargs)
        with adapter_ops.disabled(model):
            disabled = _greedy(model, tokenizer, prompts, **kwargs)
        after = _greedy(model, tokenizer, prompts, **kwargs)
    finally:
        model.train(was_training)
    runs = {"disabled vs base": (base, disabled), "after disable vs adapter": (before, after)}
    problems, diffs = [], {}
    # generate()'s first step must be the adapter's own forward pass at the prompt's last token
    diffs["first generated step vs forward"] = compare(
        _prompt_logits(model, tokenizer, prompts, device=artifact.device), torch.stack([s[0] for _, s in before])
    )
    problems += tol.problems(diffs["first generated step vs forward"], "adapter: first generated step vs its forward pass")
    for what, (reference, other) in runs.items():
        diffs[what], diverged = _generations_apart(reference, other, tol)
        problems += tol.problems(diffs[what], f"{what} (generation scores)")
        if diverged:
            problems.append(f"{what}: greedy tokens differ ({', '.join(diverged[:3])})")
    effect, _ = _generations_apart(base, before, tol)
    tokens_apart = sum(ids != base_ids for (ids, _), (base_ids, _) in zip(before, base))
    if not tol.differs(effect) and not tokens_apart:
        problems.append(f"the adapter generates as the base does ({effect}): the comparison proves nothing")
    worst_diff = worst(diffs, tol)
    _record(ctx, "generate_after_disable_max_abs_diff", worst_diff.max_abs, "logits")
    return Measurement(
        passed=not problems,
        value=judged(worst_diff, tol),
        bound=f"scores {tol.describe()} ({tol.source}), the same greedy tokens; the adapter generates unlike the base",
        unit=judged_unit(tol),
        message="; ".join(problems)
        or "; ".join(f"{w}: {d}" for w, d in diffs.items())
        + f"; adapter vs base: {effect}, tokens differ on {tokens_apart}/{len(prompts)} prompts",
        details={"prompts": prompts, "comparisons": {w: d.as_dict() for w, d in diffs.items()},
                 "effect_vs_base": effect.as_dict(), "prompts_with_other_tokens": tokens_apart,
                 "tokens": {"base": [ids for ids, _ in base], "adapter": [ids for ids, _ in before],
                            "disabled": [ids for ids, _ in disabled], "after": [ids for ids, _ in after]}},
    )  # fmt: skip

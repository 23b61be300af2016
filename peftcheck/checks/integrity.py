"""adapter_integrity (issue 15): a saved adapter folder holds every tensor its config implies,
with the shape the config and the model imply, none empty, all-zero, NaN or Inf; peft loads it
with no missing and no unexpected key; its target_modules match the model; and a merged export
beside it gives the adapter's logits.

Failures users report about exactly this folder: an adapter saved empty or all-zero under
DeepSpeed ZeRO-3 (trl#4416, peft#2892), "missing adapter keys" that peft only warns about
(peft#2699, #2566), a merged folder that does not match the adapter (peft#1836, #2502). The
expected tensors come from peft itself: the folder's config applied to the base, and the
checkpoint that model would save (``methods.expected_checkpoint``), so every peft type is
covered; the folder is read without loading it, so a broken one fails this item with the
defect named while the other items of the method report that it does not load.
"""

from __future__ import annotations

import copy
import tempfile
from pathlib import Path
from typing import Any

from pydantic import Field

from peftcheck.checks.outputs import ToleranceParams, adapter_logits, base_logits, compare, real_logits
from peftcheck.checks.persistence import UNSAFE_SUFFIXES
from peftcheck.checks.registry import Measurement, register_check
from peftcheck.context import CheckContext
from peftcheck.errors import PeftcheckError, SuiteError

__all__ = ["IntegrityParams", "adapter_integrity", "inspect_folder"]

# ZeRO-3 saves parameters it had partitioned away as empty or zero tensors (trl#4416, peft#2892)
_ZERO_HINT = "never trained, or saved from a partitioned (DeepSpeed ZeRO-3) model: trl#4416, peft#2892"


class IntegrityParams(ToleranceParams):
    """Tolerance fields bound the merged export against the adapter (the merge_equivalence table)."""

    allow_zero: list[str] = Field(
        default_factory=list,
        description="Substrings of checkpoint keys whose tensors may be all-zero (every float adapter "
        "tensor must otherwise be non-zero: LoRA's B starts at zero and a trained adapter moves it).",
    )


def _read(path: Path) -> dict[str, Any]:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as handle:
        return {key: handle.get_tensor(key) for key in handle.keys()}


def _module_of(key: str, prefix: str) -> str:
    """The module a checkpoint key belongs to, by its short name (``q_proj`` of
    ``...self_attn.q_proj.lora_A.weight``): the part before the tuner's parameter prefix."""
    parts = key.split(".")
    for index, part in enumerate(parts):
        if prefix and part.startswith(prefix) and index:
            return parts[index - 1]
    return parts[-2] if len(parts) > 1 else key


def _rank_note(config: Any, wrong: dict[str, tuple[tuple[int, ...], tuple[int, ...]]]) -> str:
    """Where a LoRA-family shape disagrees only in the rank dimension: which rank the weights have."""
    rank = getattr(config, "r", None)
    if not isinstance(rank, int) or getattr(config, "rank_pattern", None):
        return ""
    found = set()
    for saved, want in wrong.values():
        if len(saved) == len(want):
            found |= {s for s, w in zip(saved, want) if s != w and w == rank}
    return f"; the weights have rank {sorted(found)}, adapter_config.json says r={rank}" if found else ""


def _non_persistent(model: Any) -> set[int]:
    """ids of ``model``'s buffers that ``state_dict()``, and so ``save_pretrained``, leaves out:
    ``saved_state`` reads the live buffers and lists them too (issue 26: TrainableTokens'
    ``trainable_tokens_original`` is not saved, and is not missing)."""
    return {
        id(buffer) for module in model.modules() for name, buffer in module._buffers.items()
        if buffer is not None and name in module._non_persistent_buffers_set
    }  # fmt: skip


def inspect_folder(folder: Path, base: Any, *, quantization: str, name: str, allow_zero: list[str]) -> dict[str, Any]:
    """Every problem of the adapter folder against ``base`` (a BaseHandle), with what was found."""
    import torch

    from peftcheck import methods

    files = sorted(p.name for p in folder.iterdir())
    found: dict[str, Any] = {"files": files, "problems": []}
    problems = found["problems"]
    weights = folder / "adapter_model.safetensors"
    # adapter weights only: every Trainer output folder also holds its pickled training_args.bin
    unsafe = [f for f in files if f.startswith("adapter_model") and f.endswith(UNSAFE_SUFFIXES)]
    if unsafe:
        problems.append(f"pickle-based adapter weights {unsafe}: a checkpoint that runs code when loaded")
    if not weights.is_file():
        problems.append(f"no adapter_model.safetensors in {folder} (files: {files})")
        return found
    try:
        saved = _read(weights)
        config = methods.read_config(folder)
    except (OSError, ValueError, TypeError, KeyError, RuntimeError) as exc:  # the folder is the defect
        problems.append(f"unreadable adapter folder: {type(exc).__name__}: {str(exc)[:300]}")
        return found
    found["tensors"] = len(saved)
    prefix = methods.parameter_prefix(config)

    targets = methods.coverage_targets(config)
    if targets is not None:
        exclude = getattr(config, "exclude_modules", None)
        matched = methods.matched_targets(base.model, targets, exclude=exclude)
        unmatched = sorted(entry for entry, names in matched.items() if not names)
        found["target_matches"] = {entry: len(names) for entry, names in matched.items()}
        if unmatched:
            problems.append(f"target_modules entries matching no module of the model: {unmatched}")

    try:
        fresh = methods.apply_method(copy.deepcopy(base.training_source), copy.deepcopy(config),
                                     quantization=quantization, name=name)  # fmt: skip
    except (SuiteError, ValueError, RuntimeError, TypeError, KeyError) as exc:
        message = exc.message if isinstance(exc, SuiteError) else f"{type(exc).__name__}: {exc}"
        problems.append(f"adapter_config.json does not apply to the model: {message[:300]}")
        return found
    # the keys peft saves for this config on this model (VeRA's shared projections included), shaped as
    # the live tensors they stand for (a rank budget's pruned shapes: expected_checkpoint)
    shapes = {k: v["shape"] for k, v in methods.expected_checkpoint(fresh, trainable_only=False).items()}
    transient = _non_persistent(fresh)
    expected = {
        k: shapes.get(k, tuple(v.shape)) for k, v in methods.saved_state(fresh).items() if id(v) not in transient
    }  # fmt: skip
    found["tensors_expected"] = len(expected)
    missing = sorted(set(expected) - set(saved))
    unexpected = sorted(set(saved) - set(expected))
    wrong = {k: (tuple(saved[k].shape), expected[k]) for k in sorted(set(saved) & set(expected))
             if tuple(saved[k].shape) != expected[k] and saved[k].numel()}  # fmt: skip
    shown_targets = f"target_modules: {targets}" if targets is not None else type(config).__name__
    if missing:
        modules = sorted({_module_of(k, prefix) for k in missing})
        problems.append(f"{len(missing)} tensor(s) the config implies are missing from the file (modules {modules}): "
                        f"{missing[:3]}")  # fmt: skip
    if unexpected:
        modules = sorted({_module_of(k, prefix) for k in unexpected})
        problems.append(f"{len(unexpected)} tensor(s) in the file the config does not imply (modules {modules}; "
                        f"{shown_targets}): {unexpected[:3]}")  # fmt: skip
    if wrong:
        first = next(iter(wrong))
        problems.append(f"{len(wrong)} tensor(s) with another shape than the config and the model imply: {first} "
                        f"saved {wrong[first][0]}, expected {wrong[first][1]}{_rank_note(config, wrong)}")  # fmt: skip

    if not methods.is_prompt_learning(config) and not wrong:
        # peft's own load, whose missing/unexpected keys it only warns about (peft#2699, #2566); prompt
        # learning loads its table by another path and reports it as unexpected, so it is left out
        try:
            missing_keys, load_unexpected = methods.load_state(fresh, saved)
            load_missing = [k for k in missing_keys if prefix in k and "default" in k]
        except (RuntimeError, ValueError, KeyError) as exc:
            load_missing, load_unexpected = [], []
            problems.append(f"peft's load raises {type(exc).__name__}: {str(exc).strip().splitlines()[-1].strip()[:200]}")
        found["load"] = {"missing_keys": load_missing[:20], "unexpected_keys": load_unexpected[:20]}
        if load_missing:
            problems.append(f"peft's load reports {len(load_missing)} missing adapter key(s) (it only warns): "
                            f"{load_missing[:3]}")  # fmt: skip
        if load_unexpected:
            problems.append(f"peft's load reports {len(load_unexpected)} unexpected key(s): {load_unexpected[:3]}")
    del fresh

    bad: dict[str, list[str]] = {"empty": [], "NaN": [], "Inf": [], "all-zero": []}
    for key, tensor in saved.items():
        if tensor.numel() == 0:
            if 0 not in expected.get(key, (1,)):  # a rank budget may prune a module to nothing
                bad["empty"].append(key)
            continue
        if not tensor.is_floating_point():  # indices (SHiRA) are not values
            continue
        values = tensor.float()
        if bool(torch.isnan(values).any()):
            bad["NaN"].append(key)
        elif bool(torch.isinf(values).any()):
            bad["Inf"].append(key)
        elif not bool(values.any()) and not any(part in key for part in allow_zero):
            bad["all-zero"].append(key)
    found.update({kind.lower(): keys[:20] for kind, keys in bad.items()})
    for kind, keys in bad.items():
        if keys:
            why = f" ({_ZERO_HINT})" if kind in ("empty", "all-zero") else ""
            problems.append(f"{len(keys)} {kind} tensor(s){why}: {keys[:3]}")
    return found


def _merged_problems(ctx: CheckContext, params: IntegrityParams, folder: Path) -> tuple[list[str], dict[str, Any]]:
    """The merged export against the loaded adapter: same logits (merge_equivalence's table),
    every tensor loaded, and unlike the base (a merged folder that is the base proves nothing)."""
    import torch
    from transformers import AutoModelForCausalLM

    from peftcheck.models import dtype_kwarg

    try:
        artifact = ctx.artifact()
    except PeftcheckError as exc:
        return [f"merged folder not compared: the adapter does not load ({exc})"], {}
    tol = params.tolerance(ctx)
    loaded, info = AutoModelForCausalLM.from_pretrained(
        str(folder), output_loading_info=True, trust_remote_code=ctx.suite.spec.trust_remote_code,
        **dtype_kwarg(getattr(torch, artifact.base.dtype)),
    )  # fmt: skip
    loaded.to(artifact.device)
    out = real_logits(loaded, ctx.probe())
    del loaded
    diff, effect = compare(adapter_logits(ctx), out), compare(base_logits(ctx), out)
    problems = tol.problems(diff, "merged folder vs base + adapter")
    for key in ("missing_keys", "unexpected_keys", "mismatched_keys"):
        names = sorted(str(n) for n in info.get(key) or [])
        if names:
            problems.append(f"{len(names)} {key.replace('_', ' ')} loading the merged folder: {names[:3]}")
    if not tol.differs(effect):
        problems.append(f"the merged folder's output equals the base's ({effect}): the adapter is not merged into it")
    return problems, {"merged_vs_adapter": diff.as_dict(), "merged_vs_base": effect.as_dict(),
                      "tolerance": f"{tol.describe()} ({tol.source})"}  # fmt: skip


@register_check("adapter_integrity", params=IntegrityParams)
def adapter_integrity(ctx: CheckContext, params: IntegrityParams) -> Measurement:
    """The saved adapter folder is complete, well-shaped, finite, non-zero and loads cleanly.

    Every tensor its config implies is there, shaped as config and model imply, none empty,
    all-zero, NaN or Inf; peft loads it with no missing or unexpected key; target_modules match
    modules of the model; a `merged:` export gives the adapter's logits."""
    from peftcheck import artifact as saved
    from peftcheck.checks import adapter_ops

    base = ctx.base()
    kwargs = {"quantization": ctx.spec.quantization, "name": ctx.method, "allow_zero": params.allow_zero}
    if saved.is_artifact(ctx.spec):
        where = saved.folder(ctx.suite, ctx.method)
        found = inspect_folder(where, base, **kwargs)
    else:  # a method peftcheck trained: its own save is the folder
        model = ctx.artifact().model
        adapter_ops.require(model, "a peft adapter folder")
        with tempfile.TemporaryDirectory(prefix="peftcheck-integrity-") as tmp:
            adapter_ops.save(model, Path(tmp))
            found = inspect_folder(Path(tmp), base, **kwargs)
        where = "the adapter peftcheck trained, saved"
    problems = list(found["problems"])
    merged = saved.merged_folder(ctx.suite, ctx.method) if saved.is_artifact(ctx.spec) else None
    if merged is not None:
        merged_problems, found["merged"] = _merged_problems(ctx, params, merged)
        problems += merged_problems
    checked = f"{found.get('tensors', 0)} tensors as the config implies ({found.get('tensors_expected', 0)} expected)"
    return Measurement(
        passed=not problems,
        value=float(len(problems)),
        bound="every implied tensor present and shaped; none empty, all-zero, NaN or Inf; no missing or "
        "unexpected key; target_modules match" + ("; merged folder == base + adapter" if merged else ""),
        unit="problems",
        message="; ".join(problems) or f"{where}: {checked}" + ("; merged folder matches" if merged else ""),
        details={"folder": str(where), **found},
    )

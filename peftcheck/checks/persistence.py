"""Persistence checks: the adapter-only checkpoint is complete, small, safe, and reloads exactly."""

from __future__ import annotations

import copy
import tempfile
from pathlib import Path
from typing import Any

from pydantic import Field

from peftcheck.checks import adapter_ops
from peftcheck.checks.outputs import ToleranceParams, adapter_logits, base_logits, compare, real_logits
from peftcheck.checks.registry import Measurement, register_check
from peftcheck.context import CheckContext

__all__ = ["SaveLoadParams", "save_load_roundtrip"]

UNSAFE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".ckpt")
HEADER_ALLOWANCE = 64 * 1024  # safetensors JSON header: names, dtypes and offsets of the tensors


class SaveLoadParams(ToleranceParams):
    max_ratio_to_trainable: float = Field(
        1.25,
        gt=0,
        description="Largest checkpoint size over the bytes of the trainable tensors "
        f"(plus {HEADER_ALLOWANCE // 1024} KiB for the header): a checkpoint carrying base weights fails.",
    )
    max_mib: float | None = Field(None, gt=0, description="Optional absolute bound on the checkpoint, MiB.")


def _read_checkpoint(path: Path) -> dict[str, Any]:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as handle:
        return {key: handle.get_tensor(key) for key in handle.keys()}


def _compare_tensors(expected: dict[str, Any], saved: dict[str, Any]) -> dict[str, list[str]]:
    import torch

    found: dict[str, list[str]] = {"missing": [], "wrong_shape": [], "wrong_value": [], "empty": []}
    for key, want in expected.items():
        have = saved.get(key)
        if have is None:
            found["missing"].append(f"{key} (from {', '.join(want['from'][:2])})")
        elif tuple(have.shape) != want["shape"]:
            found["wrong_shape"].append(f"{key}: saved {tuple(have.shape)}, live {want['shape']}")
        elif want["tensor"] is not None and not torch.equal(have, want["tensor"].to(have.dtype)):
            found["wrong_value"].append(key)
    # A tensor may be empty only where the live model says so (a rank budget pruned to zero).
    found["empty"] = [
        key for key, tensor in saved.items()
        if tensor.numel() == 0 and 0 not in expected.get(key, {}).get("shape", (1,))
    ]  # fmt: skip
    return found


def _leaked_base_weights(saved: dict[str, Any], adapter: dict[str, Any], base: dict[str, Any]) -> list[str]:
    """Checkpoint keys that hold a frozen base weight: a key under a base parameter's name that
    no live adapter tensor is saved under, or one a live adapter tensor is saved under whose value
    is the frozen base's and not that tensor's.

    ``adapter`` (``expected_checkpoint(..., trainable_only=False)``) names the keys the live model
    saves its own tensors under: peft saves a modules_to_save copy without ``modules_to_save.<name>``,
    i.e. under the base module's name (issue 26: ``lm_head.weight`` of ``modules_to_save: [lm_head]``
    is the trained copy, not a leak). An untrained copy equals the base and is still the copy."""
    import torch

    def same(tensor: Any, other: Any) -> bool:
        return tuple(tensor.shape) == tuple(other.shape) and torch.equal(tensor, other.detach().cpu().to(tensor.dtype))

    leaked = []
    for key, tensor in saved.items():
        original = base.get(key.removeprefix("base_model.model."))
        if original is None:
            continue  # not a base parameter's name (adapter tensors, save_embedding_layers' base_layer copy)
        if key not in adapter:
            leaked.append(key)
            continue
        live = adapter[key]["tensor"]  # None: a pruned shape, checked through the reload
        if live is not None and not same(tensor, live) and same(tensor, original):
            leaked.append(key)  # the frozen base weight saved in place of the trained copy
    return sorted(leaked)


def _reload(
    artifact: Any, folder: Path, saved: dict[str, Any], batch: dict[str, Any], reference: Any
) -> tuple[Any, list[str], str | None]:
    """(outputs of a fresh base + PeftModel.from_pretrained vs the adapter's, tensors that
    change when the reloaded adapter is saved again, or the error that stopped the reload)."""
    import torch

    try:
        fresh = adapter_ops.load(artifact.model, copy.deepcopy(artifact.base.model), folder)
    except (RuntimeError, ValueError, KeyError, OSError) as exc:  # the checkpoint is the defect
        return None, [], f"{type(exc).__name__}: {str(exc).splitlines()[-1][:300]}"
    reload = compare(reference, real_logits(fresh, batch))
    resaved = _read_checkpoint(adapter_ops.save(fresh, folder / "resaved"))
    changed = sorted(
        k for k in set(saved) | set(resaved)
        if k not in saved or k not in resaved or not torch.equal(saved[k], resaved[k])
    )  # fmt: skip
    return reload, changed, None


@register_check("save_load_roundtrip", params=SaveLoadParams)
def save_load_roundtrip(ctx: CheckContext, params: SaveLoadParams) -> Measurement:
    """Adapter-only safetensors checkpoint: complete, no base weights, small, reloads exactly.

    Every trainable tensor is saved with its live shape and value, none empty; a fresh base
    plus the checkpoint gives the adapter's outputs, and saving that again gives the same file."""
    from peftcheck.methods import expected_checkpoint, saved_state

    artifact = ctx.artifact()
    tol = params.tolerance(ctx)
    reference = adapter_logits(ctx)
    trainable_bytes = sum(
        p.numel() * p.element_size() for p in artifact.model.parameters() if p.requires_grad
    )
    base_params = dict(artifact.base.model.named_parameters(remove_duplicate=False))  # tied names too
    problems: list[str] = []
    with tempfile.TemporaryDirectory(prefix="peftcheck-adapter-") as tmp:
        folder = Path(tmp)
        path = adapter_ops.save(artifact.model, folder)
        files = sorted(p.name for p in folder.iterdir())
        unsafe = [name for name in files if name.endswith(UNSAFE_SUFFIXES)]
        if unsafe:
            problems.append(f"pickle-based files in the checkpoint: {unsafe}")
        if not path.exists():
            problems.append(f"no {path.name} (files: {files})")
            return Measurement(False, None, "safetensors checkpoint", "; ".join(problems), details={"files": files})
        size = path.stat().st_size
        saved = _read_checkpoint(path)
        expected = expected_checkpoint(artifact.model)
        found = _compare_tensors(expected, saved)
        leaked = _leaked_base_weights(saved, expected_checkpoint(artifact.model, trainable_only=False), base_params)
        extra = sorted(set(saved) - set(expected) - set(leaked))
        reload, changed, reload_error = _reload(artifact, folder, saved, ctx.probe(), reference)

    for kind, keys in found.items():
        if keys:
            problems.append(f"{len(keys)} {kind.replace('_', ' ')} tensor(s): {keys[:3]}")
    if changed:
        problems.append(f"saving the reloaded adapter changes {len(changed)} tensor(s): {changed[:3]}")
    if leaked:
        problems.append(f"{len(leaked)} base weight(s) in the adapter checkpoint: {leaked[:3]}")
    # tensors peft saves by design beside the trainable ones (VeRA/RandLoRA/FRoD projections, SHiRA
    # indices, DeLoRA norms): counted into the bound, listed in details["extra"]
    live = {t.data_ptr() for t in (*artifact.model.parameters(), *artifact.model.buffers()) if t.numel()}
    storage: dict[tuple[int, tuple[int, ...]], list[str]] = {}
    for key, value in saved_state(artifact.model).items():
        if value.numel() and value.data_ptr() in live:  # not the pruned copies AdaLoRA saves
            storage.setdefault((value.data_ptr(), tuple(value.shape)), []).append(key)
        else:
            storage[(id(value), ())] = [key]
    copies = [keys for keys in storage.values() if len(keys) > 1]  # one live tensor saved under several keys
    if copies:
        problems.append(
            f"{sum(len(k) - 1 for k in copies)} checkpoint key(s) repeat a live tensor saved under another key: "
            f"{copies[0][:3]}"
        )
    once = {keys[0] for keys in storage.values()}
    fixed_bytes = sum(saved[k].numel() * saved[k].element_size() for k in extra if k in once)
    limit = params.max_ratio_to_trainable * (trainable_bytes + fixed_bytes) + HEADER_ALLOWANCE
    if size > limit:
        problems.append(
            f"checkpoint {size:,} bytes > {params.max_ratio_to_trainable} x {trainable_bytes:,} trainable bytes + header"
        )
    if params.max_mib is not None and size > params.max_mib * 2**20:
        problems.append(f"checkpoint {size / 2**20:.3f} MiB > {params.max_mib} MiB")
    if reload_error is not None:
        problems.append(f"a fresh base cannot load the checkpoint: {reload_error}")
    else:
        problems += tol.problems(reload, "reloaded vs adapter")
    effect = compare(base_logits(ctx), reference)
    if not tol.differs(effect):
        problems.append(f"the adapter's output equals the base's ({effect}): the reload proves nothing")

    mib = size / 2**20
    metrics = ctx.metrics  # returned in the Measurement (issue 14)
    metrics["checkpoint_size_mib"] = {"value": mib, "unit": "MiB"}
    if reload is not None:
        metrics["reload_max_abs_diff"] = {"value": reload.max_abs, "unit": "logits"}
    bound = f"every trainable tensor saved; size <= {params.max_ratio_to_trainable} x trainable + header"
    return Measurement(
        passed=not problems,
        value=mib,
        bound=bound + (f", <= {params.max_mib} MiB" if params.max_mib else "") + f"; reload {tol.describe()}",
        unit="MiB",
        message="; ".join(problems)
        or f"{len(saved)} tensors, {mib:.3f} MiB ({size / max(trainable_bytes, 1):.2f} x trainable); reload {reload}",
        details={
            "files": files, "size_bytes": size, "trainable_bytes": trainable_bytes,
            "tensors_saved": len(saved), "tensors_expected": len(expected),
            **{kind: keys[:20] for kind, keys in found.items()},
            "base_weights_leaked": leaked[:20], "extra": extra[:20], "resave_changed": changed[:20],
            "reload": reload.as_dict() if reload is not None else {"error": reload_error},
        },
    )  # fmt: skip

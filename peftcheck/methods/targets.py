"""Which modules a config's targets match, their shapes, and parameter counts: computed from the
base model alone, independently of the adapter library."""

from __future__ import annotations

import re
from typing import Any

__all__ = ["matched_targets", "is_linear", "features", "parameter_counts", "logical_numel"]


def is_linear(module: Any) -> bool:
    """A Linear as peft's all-linear counts it: torch's, or transformers' Conv1D (GPT-2)."""
    import torch
    from transformers.pytorch_utils import Conv1D

    return isinstance(module, (torch.nn.Linear, Conv1D))


def features(module: Any) -> tuple[int, int]:
    """(in, out) features; Conv1D stores its weight (in, out) and has no in_features."""
    if hasattr(module, "in_features"):
        return int(module.in_features), int(module.out_features)
    rows, cols = module.weight.shape
    return int(rows), int(cols)


def matched_targets(base_model: Any, target_modules: Any, *, exclude: Any = None) -> dict[str, list[str]]:
    """target_modules entry -> module names it matches in ``base_model``, matched the way
    peft documents it (exact name or dotted suffix for a list, full regex for a string,
    every Linear but the output layer for 'all-linear'), computed independently of peft."""
    names = [n for n, _ in base_model.named_modules() if n]
    modules = dict(base_model.named_modules())
    output = getattr(base_model, "get_output_embeddings", lambda: None)()
    if target_modules is None:
        return {}
    if isinstance(target_modules, str):
        if target_modules == "all-linear":
            found = [n for n in names if is_linear(modules[n]) and modules[n] is not output]
        else:
            found = [n for n in names if re.fullmatch(target_modules, n)]
        return {target_modules: found}
    return {t: [n for n in names if n == t or n.endswith("." + t)] for t in target_modules}


def logical_numel(param: Any) -> int:
    """Elements a parameter stands for: bitsandbytes packs two 4-bit values per storage byte."""
    if type(param).__name__ == "Params4bit":
        storage = getattr(param, "quant_storage", None)
        return param.numel() * 2 * (storage.itemsize if storage is not None else 1)
    return param.numel()


def parameter_counts(model: Any) -> tuple[int, int]:
    """(trainable, total) parameters, counting 4-bit weights as the weights they encode."""
    trainable = sum(logical_numel(p) for p in model.parameters() if p.requires_grad)
    return trainable, sum(logical_numel(p) for p in model.parameters())

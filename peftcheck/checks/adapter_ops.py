"""What the adapter-contract checks do to a trained model (disable, save, load), through its
backend (``peftcheck.methods``): checks never call an adapter library themselves (issue 13)."""

from __future__ import annotations

import contextlib
import copy
from pathlib import Path
from typing import TYPE_CHECKING, Any

from peftcheck import methods
from peftcheck.checks.registry import NotApplicable

if TYPE_CHECKING:
    from peftcheck.context import CheckContext

__all__ = ["require", "disabled", "save", "load", "untrained"]


def require(model: Any, what: str) -> None:
    """NotApplicable unless ``model``'s backend offers ``what`` (some contracts only peft offers)."""
    reason = methods.offers(model, what)
    if reason is not None:
        raise NotApplicable(reason)


def disabled(model: Any) -> contextlib.AbstractContextManager[Any]:
    """The base computation inside, the trained adapter active again after."""
    return methods.disabled(model)


def save(model: Any, folder: Path) -> Path:
    """Save the adapter alone into ``folder``; returns the path its weights should be in.

    Saves from a copy: a save must not change the model other checks read, and bitsandbytes
    0.50.2's ``Linear4bit.state_dict()`` rewrites weights it had repacked for the CPU in place."""
    return Path(methods.save(copy.deepcopy(model), folder))


def load(like: Any, base_model: Any, folder: Path, **kwargs: Any) -> Any:
    """``base_model`` (a fresh copy, modified) with the adapter saved in ``folder``, the way
    ``like``'s backend loads it."""
    return methods.load(like, base_model, folder, **kwargs)


def untrained(ctx: CheckContext, *, adapter_name: str = "default") -> Any:
    """The method before its first step, rebuilt the way ``Pipeline._train`` builds it (a fresh
    config, the same seed, a deep copy of the same base): deterministic."""
    from transformers import set_seed

    artifact = ctx.artifact()
    args = ctx.suite.spec.train_args(ctx.method)
    config = methods.build_config(artifact.spec, name=ctx.method, max_steps=int(args["max_steps"]))
    set_seed(int(args["seed"]))
    return methods.apply_method(
        copy.deepcopy(artifact.base.training_source), config,
        quantization=artifact.spec.quantization, name=ctx.method, adapter_name=adapter_name,
    )  # fmt: skip

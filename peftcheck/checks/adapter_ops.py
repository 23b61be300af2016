"""What the adapter-contract checks do to a trained model (disable, save, load) for each
backend: peft, and AdapterHub's ``adapters`` (``peftcheck.backends.adapters``)."""

from __future__ import annotations

import contextlib
import copy
from pathlib import Path
from typing import Any

from peftcheck.checks.registry import NotApplicable

__all__ = ["is_peft", "require_peft", "disabled", "save", "load", "PEFT_CHECKPOINT"]

PEFT_CHECKPOINT = "adapter_model.safetensors"


def _adapters_backend(model: Any) -> Any:
    if getattr(model, "peftcheck_backend", None) == "adapters":
        from peftcheck.backends import adapters

        return adapters
    return None


def is_peft(model: Any) -> bool:
    return _adapters_backend(model) is None


def require_peft(model: Any, what: str) -> None:
    """NotApplicable unless ``model`` is a peft model: some contracts only peft offers."""
    if not is_peft(model):
        raise NotApplicable(f"{what} is peft's API; the AdapterHub adapters backend is not driven here")


def disabled(model: Any) -> contextlib.AbstractContextManager[Any]:
    """The base computation inside, the trained adapter active again after."""
    backend = _adapters_backend(model)
    return backend.disabled(model) if backend is not None else model.disable_adapter()


def save(model: Any, folder: Path) -> Path:
    """Save the adapter alone into ``folder``; returns the path its weights should be in.

    Saves from a copy: a save must not change the model other checks read, and bitsandbytes
    0.50.2's ``Linear4bit.state_dict()`` rewrites weights it had repacked for the CPU in place."""
    model = copy.deepcopy(model)
    backend = _adapters_backend(model)
    if backend is not None:
        return Path(backend.save(model, folder))
    model.save_pretrained(folder)
    return Path(folder) / PEFT_CHECKPOINT


def load(like: Any, base_model: Any, folder: Path) -> Any:
    """``base_model`` (a fresh copy, modified) with the adapter saved in ``folder``, the way
    ``like``'s backend loads it."""
    backend = _adapters_backend(like)
    if backend is not None:
        return backend.load(base_model, folder)
    from peft import PeftModel

    return PeftModel.from_pretrained(base_model, folder)

"""Method knowledge in one place (issue 13): the backends, registered by name, and the functions
the pipeline and the checks call. Each function asks the backend of its argument (a suite method,
a config or a model, ``backend.backend_for``); nothing outside this package imports an adapter
library or branches on a method's name.

Adding a backend: a module defining ``BACKEND`` (``backend.Backend``), and one line below.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from peftcheck.errors import SuiteError
from peftcheck.methods.backend import Backend, backend_for, get_backend, register_backend, registered_backends
from peftcheck.methods.targets import matched_targets, parameter_counts

if TYPE_CHECKING:
    from peftcheck.spec import MethodSpec

register_backend("peft", "peftcheck.methods.peft_backend")
register_backend("adapters", "peftcheck.methods.adapterhub")

__all__ = [
    "Backend", "backend_for", "get_backend", "register_backend", "registered_backends",
    "build_config", "apply_method", "apply_to_skeleton", "training_copy", "optimizer_step_hook",
    "disabled", "save", "load", "load_together", "merged_copy", "offers", "read_config", "parameter_prefix",
    "load_state",
    "parameter_counts", "matched_targets", "expected_trainable", "expected_checkpoint", "saved_state",
    "is_prompt_learning", "can_merge", "can_unmerge", "supports_safe_merge", "supports_weighted_cat",
    "can_resume", "supports_gradient_checkpointing", "rewrites_base", "identity_at_init", "init_setting",
    "coverage_targets", "wrapper_modules", "tuner_layers", "merged_parameters",
]  # fmt: skip


# -- building and training -------------------------------------------------------------------
def build_config(method: MethodSpec, *, name: str, max_steps: int) -> Any:
    """The config of suite method ``name``; a SuiteError (with the field) for a wrong one."""
    return get_backend(method.backend).build_config(method, name=name, max_steps=max_steps)


def apply_method(model: Any, config: Any, *, quantization: str, name: str, adapter_name: str = "default") -> Any:
    """Wrap ``model`` (modified in place) with the adapter described by ``config``."""
    return backend_for(config).apply(model, config, quantization=quantization, name=name, adapter_name=adapter_name)


def apply_to_skeleton(model: Any, config: Any, *, name: str) -> None:
    """Apply ``config`` to ``model`` (built on the meta device) as training would; a library error
    is a SuiteError at ``methods.<name>`` (a computation meta tensors cannot do is
    NotImplementedError: not a problem of the suite)."""
    import torch

    try:
        with torch.device("meta"):
            apply_method(model, copy.deepcopy(config), quantization="none", name=name)
    except SuiteError:
        raise
    except (TypeError, ValueError, AssertionError, RuntimeError, KeyError) as exc:
        if "meta" in str(exc).lower():
            raise NotImplementedError(str(exc)[:200]) from None
        raise SuiteError(f"peft could not apply the method: {type(exc).__name__}: {str(exc)[:300]}",
                         field=f"methods.{name}") from None  # fmt: skip


def training_copy(model: Any) -> Any:
    return backend_for(model).training_copy(model)


def optimizer_step_hook(model: Any) -> Callable[[int], Any] | None:
    """A function of the global step to call after every optimizer step, or None (AdaLoRA
    reallocates its rank budget after each step; Trainer does not call it)."""
    return backend_for(model).step_hook(model)


# -- the adapter contract --------------------------------------------------------------------
def disabled(model: Any) -> AbstractContextManager[Any]:
    return backend_for(model).disabled(model)


def save(model: Any, folder: Path) -> Path:
    return backend_for(model).save(model, folder)


def load(like: Any, base_model: Any, folder: Path, *, adapter_name: str | None = None, trainable: bool = False) -> Any:
    """``base_model`` (modified) with the adapter saved in ``folder``, loaded by ``like``'s backend."""
    return backend_for(like).load(base_model, folder, adapter_name=adapter_name, trainable=trainable)


def load_together(like: Any, base_model: Any, folders: dict[str, Path]) -> Any:
    return backend_for(like).load_together(base_model, folders)


def merged_copy(model: Any) -> Any:
    return backend_for(model).merged_copy(model)


def read_config(folder: Path, *, backend: str | None = None) -> Any:
    """The config saved in an adapter folder, read by ``backend`` (peft's by default)."""
    return get_backend(backend).read_config(folder)


def parameter_prefix(config: Any) -> str:
    return backend_for(config).parameter_prefix(config)


def load_state(model: Any, state: dict[str, Any], adapter_name: str = "default") -> tuple[list[str], list[str]]:
    return backend_for(model).load_state(model, state, adapter_name)


def offers(model: Any, what: str) -> str | None:
    return backend_for(model).offers(model, what)


# -- what a method promises, where it sits, what it saves ------------------------------------
def expected_trainable(base_model: Any, config: Any) -> tuple[int | None, str]:
    return backend_for(config).expected_trainable(base_model, config)


def expected_checkpoint(model: Any, adapter: str | None = None, *, trainable_only: bool = True) -> dict[str, Any]:
    return backend_for(model).expected_checkpoint(model, adapter, trainable_only=trainable_only)


def saved_state(model: Any, adapter: str | None = None) -> dict[str, Any]:
    return backend_for(model).saved_state(model, adapter)


def is_prompt_learning(config: Any) -> bool:
    return backend_for(config).is_prompt_learning(config)


def can_merge(model: Any) -> str | None:
    return backend_for(model).can_merge(model)


def can_unmerge(model: Any) -> str | None:
    return backend_for(model).can_unmerge(model)


def supports_safe_merge(model: Any) -> str | None:
    return backend_for(model).supports_safe_merge(model)


def supports_weighted_cat(model: Any) -> str | None:
    return backend_for(model).supports_weighted_cat(model)


def can_resume(config: Any) -> str | None:
    return backend_for(config).can_resume(config)


def supports_gradient_checkpointing(config: Any) -> str | None:
    return backend_for(config).supports_gradient_checkpointing(config)


def rewrites_base(config: Any) -> str | None:
    return backend_for(config).rewrites_base(config)


def identity_at_init(config: Any) -> str | None:
    return backend_for(config).identity_at_init(config)


def init_setting(config: Any) -> str:
    return backend_for(config).init_setting(config)


def coverage_targets(config: Any) -> Any:
    return backend_for(config).coverage_targets(config)


def wrapper_modules(model: Any) -> list[str]:
    return backend_for(model).wrapper_modules(model)


def tuner_layers(model: Any) -> dict[str, Any]:
    return backend_for(model).tuner_layers(model)


def merged_parameters(model: Any) -> list[str]:
    return backend_for(model).merged_parameters(model)

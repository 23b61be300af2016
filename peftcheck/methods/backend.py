"""The Backend protocol and the registry of backends by name (issue 13).

A backend is the one place that knows a family of adapters: how to build a config from a suite's
method, apply it, disable, save, load and merge it, what it should train and save. Checks and the
pipeline reach a backend through ``peftcheck.methods``, never a library: adding one is a module
that defines ``BACKEND`` plus one ``register_backend`` line in ``peftcheck/methods/__init__.py``,
as peft's own ``register_peft_method`` adds a tuner.
"""

from __future__ import annotations

import contextlib
import importlib
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

if TYPE_CHECKING:
    from peftcheck.spec import MethodSpec

__all__ = ["Backend", "register_backend", "registered_backends", "get_backend", "backend_for", "DEFAULT_BACKEND"]

DEFAULT_BACKEND = "peft"


@runtime_checkable
class Backend(Protocol):
    """What peftcheck needs from an adapter library. Every ``-> str | None`` query answers None
    when the backend supports the thing, else the reason it does not (the check is then not
    applicable with that reason)."""

    name: str

    def build_config(self, method: MethodSpec, *, name: str, max_steps: int) -> Any:
        """The library's config for ``method``; SuiteError (with the field) for a wrong one."""

    def apply(self, model: Any, config: Any, *, quantization: str, name: str, adapter_name: str) -> Any:
        """``model`` with the adapter added, in training mode, base parameters frozen."""

    def training_copy(self, model: Any) -> Any:
        """A copy of a trained model that checks may change freely."""

    def disabled(self, model: Any) -> contextlib.AbstractContextManager[Any]:
        """The base computation inside, the adapter active again after."""

    def save(self, model: Any, folder: Path) -> Path:
        """Save the adapter alone into ``folder``; the file its weights are in."""

    def load(self, base_model: Any, folder: Path, *, adapter_name: str | None = None, trainable: bool = False) -> Any:
        """``base_model`` (modified) with the adapter saved in ``folder``."""

    def merged_copy(self, model: Any) -> Any:
        """A copy of ``model`` with the adapter folded into the base weights and removed."""

    def can_merge(self, model: Any) -> str | None: ...

    def expected_trainable(self, base_model: Any, config: Any) -> tuple[int | None, str]:
        """Trainable parameters the config implies on ``base_model``: (count, formula) or (None, why none)."""

    def expected_checkpoint(self, model: Any, adapter: str | None = None, *, trainable_only: bool = True) -> dict[str, Any]:
        """Checkpoint key -> {"shape", "tensor" (or None), "from" (live parameter names)}: what
        the saved adapter must hold."""

    def step_hook(self, model: Any) -> Callable[[int], Any] | None:
        """A function of the global step to call after every optimizer step, or None."""

    def offers(self, model: Any, what: str) -> str | None:
        """None if the backend offers the operation ``what`` (peft's API names: set_adapter,
        from_pretrained(is_trainable=...), ...), else why not."""


_REGISTRY: dict[str, str | Backend] = {}


def register_backend(name: str, module: str) -> None:
    """Register the backend defined as ``BACKEND`` in ``module``; imported on first use, so an
    optional library costs nothing until a suite names it."""
    _REGISTRY[name] = module


def registered_backends() -> list[str]:
    return sorted(_REGISTRY)


def get_backend(name: str | None) -> Backend:
    entry = _REGISTRY.get(name or DEFAULT_BACKEND)
    if entry is None:
        raise KeyError(f"no backend {name!r}; registered: {registered_backends()}")
    if isinstance(entry, str):
        backend = importlib.import_module(entry).BACKEND
        if not isinstance(backend, Backend):  # a module whose BACKEND misses a protocol method
            raise TypeError(f"{entry}.BACKEND does not implement peftcheck.methods.Backend")
        _REGISTRY[name or DEFAULT_BACKEND] = entry = backend
    return entry


def backend_for(obj: Any) -> Backend:
    """The backend of a suite method, a config it built or a model it applied: a model or config
    a backend made carries ``peftcheck_backend`` (peft's own objects carry nothing: the default)."""
    name = getattr(obj, "peftcheck_backend", None) or getattr(obj, "backend", None)
    return get_backend(name if isinstance(name, str) else None)


class BackendDefaults:
    """Answers to the optional queries for a backend that makes none of these promises: every
    capability peft's API offers is declined with the reason, nothing rewrites the base."""

    name = "?"

    def _declined(self, what: str) -> str:
        return f"{what} is peft's API; the {self.name} backend does not offer it here"

    def offers(self, model: Any, what: str) -> str | None:
        return self._declined(what)

    def can_unmerge(self, model: Any) -> str | None:
        return self.can_merge(model)  # type: ignore[attr-defined]

    def supports_safe_merge(self, model: Any) -> str | None:
        return self.can_merge(model)  # type: ignore[attr-defined]

    def supports_weighted_cat(self, model: Any) -> str | None:
        return self._declined("add_weighted_adapter(combination_type='cat')")

    def can_resume(self, config: Any) -> str | None:
        return self._declined("from_pretrained(is_trainable=True)")

    def supports_gradient_checkpointing(self, config: Any) -> str | None:
        return self._declined("gradient_checkpointing_enable on a PeftModel")

    def rewrites_base(self, config: Any) -> str | None:
        return None

    def identity_at_init(self, config: Any) -> str | None:
        return f"{type(config).__name__}: the {self.name} backend makes no identity-at-init promise peftcheck knows"

    def init_setting(self, config: Any) -> str:
        return ""

    def is_prompt_learning(self, config: Any) -> bool:
        return bool(getattr(config, "is_prompt_learning", False))

    def coverage_targets(self, config: Any) -> Any:
        return getattr(config, "target_modules", None)

    def wrapper_modules(self, model: Any) -> list[str]:
        return []

    def tuner_layers(self, model: Any) -> dict[str, Any]:
        return {}

    def merged_parameters(self, model: Any) -> list[str]:
        return []

    def saved_state(self, model: Any, adapter: str | None = None) -> dict[str, Any]:
        return {k: v["tensor"] for k, v in self.expected_checkpoint(model, adapter).items()}  # type: ignore[attr-defined]

    def load_together(self, base_model: Any, folders: dict[str, Path]) -> Any:
        raise NotImplementedError(self._declined("several adapters on one base"))

    def read_config(self, folder: Path) -> Any:
        raise NotImplementedError(self._declined("reading an adapter folder's config"))

    def parameter_prefix(self, config: Any) -> str:
        return ""

    def load_state(self, model: Any, state: dict[str, Any], adapter_name: str = "default") -> tuple[list[str], list[str]]:
        raise NotImplementedError(self._declined("loading a checkpoint's tensors"))

    def training_copy(self, model: Any) -> Any:
        import copy

        return copy.deepcopy(model)

    def step_hook(self, model: Any) -> Callable[[int], Any] | None:
        return None

"""The AdapterHub ``adapters`` backend (registered as ``adapters`` in ``peftcheck/methods/__init__.py``): bottleneck adapters (Houlsby, Pfeiffer) and any other
config of its ``ADAPTER_CONFIG_MAP`` by name.

A suite method names it with ``backend: adapters`` and ``config: double_seq_bn`` (Houlsby: an
adapter after attention and after the feed-forward block of every layer) or ``seq_bn`` (Pfeiffer:
after the feed-forward block only); the method's other keys override the config's fields
(``reduction_factor: 32``). ``adapters`` pins one transformers minor release (1.3.0:
``transformers~=4.57.6``), so it lives in its own environment (``nox -t adapters``); where it
cannot be imported, build_config raises MissingExtraError and the method's items skip.
"""

from __future__ import annotations

import contextlib
import dataclasses
import difflib
import importlib.util
import sys
import types
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from peftcheck.errors import MissingExtraError, SuiteError
from peftcheck.methods.backend import BackendDefaults

if TYPE_CHECKING:
    from peftcheck.spec import MethodSpec

__all__ = [
    "BACKEND",
    "ADAPTER_NAME",
    "AdaptersConfig",
    "AdaptersUnavailable",
    "is_adapters_available",
    "build_config",
    "apply",
    "is_adapters_model",
    "save",
    "load",
    "disabled",
    "can_merge",
    "expected_trainable",
]

ADAPTER_NAME = "peftcheck"  # the one adapter peftcheck adds and trains


class AdaptersUnavailable(MissingExtraError):
    """``adapters`` is installed but cannot be imported (usually a transformers it does not pin)."""

    def __init__(self, reason: str) -> None:
        super().__init__("adapters", "adapters")
        message = f"adapters cannot be imported ({reason}); it pins its own transformers release"
        self.args, self.msg = (message,), message  # ImportError's str() reads msg


def is_adapters_available() -> bool:
    if sys.modules.get("adapters") is not None:  # imported: its lazy module has no __spec__
        return True
    try:
        return importlib.util.find_spec("adapters") is not None
    except (ImportError, ValueError):
        return False


def _import_adapters() -> Any:
    if not is_adapters_available():
        raise MissingExtraError("adapters", "adapters")
    try:
        import adapters
    except Exception as exc:  # documented boundary: any import failure skips the method's items
        raise AdaptersUnavailable(f"{type(exc).__name__}: {exc}") from None
    return adapters


@dataclasses.dataclass
class AdaptersConfig:
    """What build_config returns: the adapters config plus what peftcheck's checks read."""

    name: str  # the ADAPTER_CONFIG_MAP key, e.g. double_seq_bn
    overrides: dict[str, Any]
    adapter_config: Any  # an adapters.AdapterConfig instance
    backend: str = "adapters"

    @property
    def architecture(self) -> str:
        return str(getattr(self.adapter_config, "architecture", None) or "bottleneck")

    @property
    def is_prompt_learning(self) -> bool:
        """Prompt tuning adds virtual tokens, like peft's prompt-learning methods."""
        return self.architecture == "prompt_tuning"

    def __str__(self) -> str:
        extra = ", ".join(f"{k}={v!r}" for k, v in self.overrides.items())
        return f"adapters:{self.name}" + (f"({extra})" if extra else "")


def build_config(method: MethodSpec, *, name: str) -> AdaptersConfig:
    """The adapters config named by ``method.config`` with the method's keys as overrides."""
    _import_adapters()
    from adapters import AdapterConfig
    from adapters.configuration.adapter_config import ADAPTER_CONFIG_MAP

    config_name = method.config or ""
    if config_name not in ADAPTER_CONFIG_MAP:  # never let adapters look an unknown name up online
        close = difflib.get_close_matches(config_name, ADAPTER_CONFIG_MAP, n=1)
        hint = f"did you mean {close[0]!r}?" if close else "known: " + ", ".join(sorted(ADAPTER_CONFIG_MAP))
        raise SuiteError(f"got {config_name!r}, not an adapters config name", field=f"methods.{name}.config",
                         hint=hint)  # fmt: skip
    if method.quantization != "none":
        raise SuiteError(
            "the adapters backend trains on an unquantized base here",
            field=f"methods.{name}.quantization", hint="use quantization: none, or a peft method for QLoRA",
        )  # fmt: skip
    template = ADAPTER_CONFIG_MAP[config_name]
    fields = {f.name for f in dataclasses.fields(template)}
    for key in method.kwargs:
        if key not in fields:
            close = difflib.get_close_matches(key, fields, n=1)
            raise SuiteError(
                f"unknown argument of adapters' {type(template).__name__}", field=f"methods.{name}.{key}",
                hint=f"did you mean {close[0]!r}?" if close else "see the adapters docs of " + type(template).__name__,
            )  # fmt: skip
    try:
        loaded = AdapterConfig.load(config_name, **method.kwargs)
    except (TypeError, ValueError) as exc:
        raise SuiteError(f"adapters rejected the arguments: {exc}", field=f"methods.{name}") from None
    return AdaptersConfig(config_name, dict(method.kwargs), loaded)


def _self(model: Any) -> Any:
    return model


def apply(model: Any, config: AdaptersConfig, *, quantization: str, name: str) -> Any:
    """Add the adapter to ``model`` (in place) and put it in adapter-training mode.

    ``adapters.init`` swaps the classes of the model's modules for adapter-aware ones and keeps
    every base parameter under its name; ``train_adapter`` freezes them and activates the
    adapter. The returned model is the base model itself, so ``get_base_model`` returns it."""
    adapters = _import_adapters()
    try:
        adapters.init(model)
        model.add_adapter(ADAPTER_NAME, config=config.adapter_config)
        model.train_adapter(ADAPTER_NAME)
    except ValueError as exc:  # e.g. "Model llama not pre-supported by adapters"
        raise SuiteError(f"adapters could not apply the method: {exc}", field=f"methods.{name}") from None
    model.get_base_model = types.MethodType(_self, model)  # what checks read the base weights from
    model.peftcheck_backend = "adapters"  # what methods.backend_for dispatches on for a trained model
    model.peftcheck_config = config
    return model


CHECKPOINT = "adapter.safetensors"  # adapters' name for the weights saved with use_safetensors


def save(model: Any, folder: str | Path) -> Path:
    """Save the trained adapter alone (config + safetensors); returns the weights file.

    ``with_head=False``: the "head" of a causal LM is its lm_head, a base weight (tied to the
    embeddings in SmolLM2), which adapters would otherwise save beside the adapter."""
    model.save_adapter(str(folder), ADAPTER_NAME, use_safetensors=True, with_head=False)
    return Path(folder) / CHECKPOINT


def load(base_model: Any, folder: str | Path, *, name: str = "reloaded") -> Any:
    """``base_model`` (modified in place) with the adapter saved in ``folder``, active, in eval mode."""
    adapters = _import_adapters()
    adapters.init(base_model)
    base_model.load_adapter(str(folder), load_as=ADAPTER_NAME, set_active=True, use_safetensors=True,
                            with_head=False)  # fmt: skip
    base_model.get_base_model = types.MethodType(_self, base_model)
    base_model.peftcheck_backend = "adapters"
    base_model.peftcheck_config = AdaptersConfig(name, {}, base_model.adapters_config.get(ADAPTER_NAME))
    return base_model.eval()


@contextlib.contextmanager
def disabled(model: Any) -> Iterator[Any]:
    """No adapter active inside (the base computation), the trained one active again after:
    what peft's ``disable_adapter()`` context is for a PeftModel."""
    active = model.active_adapters
    model.set_active_adapters(None)
    try:
        yield model
    finally:
        model.set_active_adapters(active)


def is_adapters_model(model: Any) -> bool:
    return getattr(model, "peftcheck_backend", None) == "adapters"


def can_merge(model: Any) -> str | None:
    """Bottleneck adapters are non-linear blocks between layers: nothing to fold into a weight."""
    config: AdaptersConfig = model.peftcheck_config
    if config.architecture == "lora":
        return "adapters' LoRA merges through merge_adapter, which peftcheck's merge checks do not drive"
    if config.is_prompt_learning:
        return f"{config} adds virtual tokens; there are no weights to merge"
    return f"{config} inserts {config.architecture} modules (a non-linear bottleneck); there are no weights to merge"


def _bottleneck_params(hidden: int, config: Any) -> tuple[int | None, str]:
    rf = config.reduction_factor
    if isinstance(rf, Mapping):
        return None, "a per-layer reduction_factor has no formula here"
    down = max(1, int(hidden // rf))
    count = hidden * down + down + down * hidden + hidden  # down and up projections with biases
    count += 2 * hidden * (bool(config.ln_before) + bool(config.ln_after))
    if config.scaling == "learned":
        count += 1
    elif config.scaling == "channel":
        count += hidden
    if config.use_gating:
        count += hidden + 1
    return count, f"h·d + d + d·h + h with h={hidden}, d=h//{rf}={down}"


def expected_trainable(base_model: Any, config: AdaptersConfig) -> tuple[int | None, str]:
    """Trainable parameters of a bottleneck adapter from its config and the base's shapes."""
    cfg = config.adapter_config
    if config.architecture != "bottleneck":
        return None, f"no analytic formula for adapters' {config.architecture}"
    if cfg.phm_layer or cfg.inv_adapter or cfg.cross_adapter:
        return None, "bottleneck adapters with PHM layers, invertible or cross adapters have no formula here"
    mc = base_model.config
    hidden, layers = int(mc.hidden_size), int(mc.num_hidden_layers)
    per_module, formula = _bottleneck_params(hidden, cfg)
    if per_module is None:
        return None, formula
    where = int(bool(cfg.mh_adapter)) + int(bool(cfg.output_adapter))
    kept = layers - len({i for i in cfg.leave_out if 0 <= i < layers})
    total = per_module * where * kept
    return total, f"{where} adapter(s) x {kept} layers x ({formula})"


def expected_checkpoint(model: Any, adapter: str | None = None, *, trainable_only: bool = True) -> dict[str, Any]:
    """adapters saves every trainable tensor of the adapter under its own name."""
    return {
        name: {"shape": tuple(p.shape), "tensor": p.detach().cpu(), "from": [name]}
        for name, p in model.named_parameters() if p.requires_grad or not trainable_only
    }  # fmt: skip


class AdaptersBackend(BackendDefaults):
    """The Backend protocol over this module's functions."""

    name = "adapters"

    def build_config(self, method: MethodSpec, *, name: str, max_steps: int) -> AdaptersConfig:
        return build_config(method, name=name)

    def apply(self, model: Any, config: Any, *, quantization: str, name: str, adapter_name: str = ADAPTER_NAME) -> Any:
        return apply(model, config, quantization=quantization, name=name)

    def disabled(self, model: Any) -> contextlib.AbstractContextManager[Any]:
        return disabled(model)

    def save(self, model: Any, folder: Path) -> Path:
        return save(model, folder)

    def load(self, base_model: Any, folder: Path, *, adapter_name: str | None = None, trainable: bool = False) -> Any:
        loaded = load(base_model, folder)
        return loaded.train() if trainable else loaded

    def merged_copy(self, model: Any) -> Any:
        raise NotImplementedError(can_merge(model))

    def can_merge(self, model: Any) -> str | None:
        return can_merge(model)

    def expected_trainable(self, base_model: Any, config: Any) -> tuple[int | None, str]:
        return expected_trainable(base_model, config)

    def expected_checkpoint(self, model: Any, adapter: str | None = None, *, trainable_only: bool = True) -> dict[str, Any]:
        return expected_checkpoint(model, adapter, trainable_only=trainable_only)


BACKEND = AdaptersBackend()

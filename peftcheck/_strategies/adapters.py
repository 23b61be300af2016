"""Adapted models: a base recipe + a PEFT config + a dtype, built with non-identity adapter weights."""

from __future__ import annotations

import copy
import dataclasses
import warnings
from collections.abc import Callable

import torch
from hypothesis import strategies as st
from hypothesis.strategies import SearchStrategy
from peft import PeftConfig, PeftModel, get_peft_model
from torch import nn

from peftcheck._strategies.configs import peft_configs
from peftcheck._strategies.models import TinyModel, base_models
from peftcheck._strategies.tensors import dtypes

__all__ = ["AdaptedModel", "adapted_models", "perturb_adapter", "adapter_parameters", "model_output"]

ConfigStrategy = Callable[[TinyModel], SearchStrategy[PeftConfig]]


def adapter_parameters(model: nn.Module, adapter_name: str) -> dict[str, nn.Parameter]:
    """Every floating parameter that belongs to ``adapter_name``: its tuner weights, its
    ``modules_to_save`` copies and its prompt embeddings (a dotted-name part equals the name)."""
    return {
        name: param
        for name, param in model.named_parameters()
        if adapter_name in name.split(".") and param.is_floating_point()
    }


def perturb_adapter(
    model: nn.Module, adapter_name: str = "default", *, seed: int = 0, scale: float = 0.5
) -> None:
    """Add uniform noise in ``[-scale, scale]`` to every parameter of the adapter, in place.

    Most methods start as the identity (LoRA's B = 0, IA3's vectors = 1); an equality check
    against an identity adapter is trivially true, so property tests perturb first.
    """
    if not 0 < scale < 1:
        raise ValueError(f"scale={scale!r} must be in (0, 1) so IA3-style scales stay positive")
    params = adapter_parameters(model, adapter_name)
    if not params:
        raise ValueError(f"adapter_name={adapter_name!r} owns no parameters in this model")
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name in sorted(params):
            param = params[name]
            noise = torch.rand(param.shape, generator=generator) * 2 - 1
            param.add_((noise * scale).to(param.dtype))


def model_output(model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """``model(**batch)`` as one tensor (a transformers output gives its ``logits``), no grad."""
    with torch.no_grad():
        out = model(**batch)
    return getattr(out, "logits", out)


@dataclasses.dataclass(frozen=True, repr=False)
class AdaptedModel:
    """A recipe for a PeftModel: ``build()`` wraps a fresh base and perturbs the adapter."""

    base: TinyModel
    config: PeftConfig
    dtype: torch.dtype
    seed: int

    @property
    def method(self) -> str:
        return str(self.config.peft_type.value).lower()

    def build(self, *, adapter_name: str = "default") -> PeftModel:
        """A fresh PeftModel in eval mode with non-identity adapter weights."""
        return self.attach(self.base.build(dtype=self.dtype), adapter_name=adapter_name)

    def attach(self, module: nn.Module, *, adapter_name: str = "default") -> PeftModel:
        """Wrap ``module`` (a ``base.build()``) with this adapter, perturbed by ``seed``."""
        # Adapter initialisation draws from torch's global generator: seed it, or a failing
        # example would not replay.
        with warnings.catch_warnings(), torch.random.fork_rng(devices=[]):
            warnings.simplefilter("ignore")  # bias/init notices are expected for drawn configs
            torch.manual_seed(self.seed)
            model = get_peft_model(module, _copy(self.config), adapter_name=adapter_name)
        perturb_adapter(model, adapter_name, seed=self.seed)
        return model.eval()

    def __repr__(self) -> str:
        fields = {
            k: v
            for k, v in self.config.to_dict().items()
            if v not in (None, False, [], {}) and k not in _NOISY_FIELDS
        }
        return f"AdaptedModel({self.base!r}, {fields}, dtype={self.dtype}, seed={self.seed})"


# Fields that are the same for every drawn config and only make a falsifying example unreadable.
_NOISY_FIELDS = frozenset(
    {"auto_mapping", "base_model_name_or_path", "revision", "inference_mode", "peft_version"}
)


def _copy(config: PeftConfig) -> PeftConfig:
    # get_peft_model fills fields in (base_model_name_or_path, ...); keep the drawn one pristine.
    return copy.deepcopy(config)


def adapted_models(
    models: SearchStrategy[TinyModel] | None = None,
    *,
    configs: ConfigStrategy = peft_configs,
    dtypes: SearchStrategy[torch.dtype] = dtypes(),
) -> SearchStrategy[AdaptedModel]:
    """Base recipe (default ``base_models()``) + a config drawn for it + dtype + perturbation seed.

    ``configs`` maps a TinyModel to a config strategy, e.g. ``lora_configs`` or
    ``lambda m: peft_configs(m, methods=("lora", "ia3"))``.
    """
    models = base_models() if models is None else models
    return models.flatmap(
        lambda base: st.builds(
            AdaptedModel,
            st.just(base),
            config=configs(base),
            dtype=dtypes,
            seed=st.integers(min_value=0, max_value=2**16),
        )
    )

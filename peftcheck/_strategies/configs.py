"""PEFT configs per method for a TinyModel: targets, rank, alpha, dropout, init, bias, variants."""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any

from hypothesis import strategies as st
from hypothesis.strategies import SearchStrategy
from peft import (
    IA3Config,
    LoHaConfig,
    LoKrConfig,
    LoraConfig,
    PeftConfig,
    PromptTuningConfig,
    VeraConfig,
)

from peftcheck._strategies.models import TinyModel

__all__ = [
    "METHODS",
    "target_selections",
    "lora_configs",
    "ia3_configs",
    "loha_configs",
    "lokr_configs",
    "vera_configs",
    "prompt_tuning_configs",
    "peft_configs",
]


def _has_field(config_cls: type[PeftConfig], name: str) -> bool:
    """Whether the installed peft's config class has ``name`` (rslora, DoRA, lora_bias, ...)."""
    return name in {f.name for f in dataclasses.fields(config_cls)}


def target_selections(
    model: TinyModel, *, embeddings: bool = False, max_size: int | None = None
) -> SearchStrategy[list[str]]:
    """A non-empty, duplicate-free list of ``model``'s Linear names (and embeddings if asked)."""
    names = [*model.linear_names, *(model.embedding_names if embeddings else ())]
    return st.lists(st.sampled_from(names), min_size=1, max_size=max_size, unique=True)


def _modules_to_save(model: TinyModel, targets: list[str]) -> SearchStrategy[list[str] | None]:
    free = [n for n in model.saveable_names if n not in targets]
    if not free:
        return st.none()
    return st.none() | st.lists(st.sampled_from(free), min_size=1, max_size=2, unique=True)


def _with_extras(
    model: TinyModel, fields: Callable[[list[str]], dict[str, SearchStrategy[Any]]], *,
    embeddings: bool = False, save: bool = True,
) -> SearchStrategy[dict[str, Any]]:
    """Draw targets first, then the fields that depend on them, as config keyword arguments."""

    def for_targets(targets: list[str]) -> SearchStrategy[dict[str, Any]]:
        extra = fields(targets)
        if save:
            extra["modules_to_save"] = _modules_to_save(model, targets)
        return st.fixed_dictionaries({"target_modules": st.just(targets), **extra})

    return target_selections(model, embeddings=embeddings).flatmap(for_targets)


def lora_configs(
    model: TinyModel,
    *,
    max_rank: int = 4,
    embeddings: bool = True,
    modules_to_save: bool = True,
    biases: tuple[str, ...] = ("none", "all", "lora_only"),
    dropouts: tuple[float, ...] = (0.0, 0.1),
    init_modes: tuple[bool | str, ...] = (True, False, "gaussian"),
    rslora: bool = True,
    dora: bool = True,
    lora_bias: bool = True,
) -> SearchStrategy[LoraConfig]:
    """LoRA configs: rank 1..max_rank, alpha, dropout, bias mode, init mode, and where the
    installed peft has them ``use_rslora``, ``use_dora`` and ``lora_bias`` (each drawn unless
    turned off). ``embeddings`` lets an embedding be a target; ``modules_to_save`` draws some."""
    _check_rank(max_rank)
    if not biases or set(biases) - {"none", "all", "lora_only"}:
        raise ValueError(f"biases={biases!r}: choose from 'none', 'all', 'lora_only'")
    targets_embedding = embeddings and bool(model.embedding_names)

    def fields(targets: list[str]) -> dict[str, SearchStrategy[Any]]:
        out: dict[str, SearchStrategy[Any]] = {
            "r": st.integers(min_value=1, max_value=max_rank),
            "lora_alpha": st.sampled_from([1, 2, 8, 16]),
            "lora_dropout": st.sampled_from(dropouts),
            "bias": st.sampled_from(biases),
            "init_lora_weights": st.sampled_from(init_modes),
        }
        if rslora and _has_field(LoraConfig, "use_rslora"):
            out["use_rslora"] = st.booleans()
        if dora and _has_field(LoraConfig, "use_dora"):
            out["use_dora"] = st.booleans()
        return out

    kwargs = _with_extras(model, fields, embeddings=targets_embedding, save=modules_to_save)
    if lora_bias and _has_field(LoraConfig, "lora_bias"):
        kwargs = kwargs.flatmap(functools.partial(_lora_bias, model))
    return kwargs.map(lambda kw: LoraConfig(**kw))


def _lora_bias(model: TinyModel, kwargs: dict[str, Any]) -> SearchStrategy[dict[str, Any]]:
    # peft rejects lora_bias with DoRA, on an embedding or with a named init mode, and cannot
    # merge it without a base bias.
    allowed = (
        model.linears_have_bias
        and not kwargs.get("use_dora")
        and kwargs.get("init_lora_weights") in (True, False)
        and not set(kwargs["target_modules"]) & set(model.embedding_names)
    )
    if not allowed:
        return st.just(kwargs)
    return st.booleans().map(lambda flag: {**kwargs, "lora_bias": flag})


def ia3_configs(model: TinyModel, *, modules_to_save: bool = True) -> SearchStrategy[IA3Config]:
    """IA3 configs: a subset of the targets is feed-forward (scales inputs, not outputs)."""

    def fields(targets: list[str]) -> dict[str, SearchStrategy[Any]]:
        return {
            "feedforward_modules": st.lists(st.sampled_from(targets), unique=True),
            "init_ia3_weights": st.booleans(),
        }

    return _with_extras(model, fields, save=modules_to_save).map(lambda kw: IA3Config(**kw))


def loha_configs(
    model: TinyModel, *, max_rank: int = 4, modules_to_save: bool = True
) -> SearchStrategy[LoHaConfig]:
    """LoHa configs: rank, alpha, init mode; dropouts stay 0 so outputs are deterministic."""
    _check_rank(max_rank)

    def fields(targets: list[str]) -> dict[str, SearchStrategy[Any]]:
        return {
            "r": st.integers(min_value=1, max_value=max_rank),
            "alpha": st.sampled_from([1, 4, 8]),
            "init_weights": st.booleans(),
        }

    return _with_extras(model, fields, save=modules_to_save).map(lambda kw: LoHaConfig(**kw))


def lokr_configs(
    model: TinyModel, *, max_rank: int = 4, modules_to_save: bool = True
) -> SearchStrategy[LoKrConfig]:
    """LoKr configs: rank, alpha, whether both Kronecker factors are decomposed, init mode."""
    _check_rank(max_rank)

    def fields(targets: list[str]) -> dict[str, SearchStrategy[Any]]:
        return {
            "r": st.integers(min_value=1, max_value=max_rank),
            "alpha": st.sampled_from([1, 4, 8]),
            "decompose_both": st.booleans(),
            "init_weights": st.booleans(),
        }

    return _with_extras(model, fields, save=modules_to_save).map(lambda kw: LoKrConfig(**kw))


def vera_configs(
    model: TinyModel, *, max_rank: int = 4, modules_to_save: bool = True
) -> SearchStrategy[VeraConfig]:
    """VeRA configs: rank of the shared random projections, their seed, ``d_initial``."""
    _check_rank(max_rank)

    def fields(targets: list[str]) -> dict[str, SearchStrategy[Any]]:
        return {
            "r": st.integers(min_value=1, max_value=max_rank),
            "projection_prng_key": st.integers(min_value=0, max_value=2**16),
            "d_initial": st.sampled_from([0.1, 1.0]),
        }

    return _with_extras(model, fields, save=modules_to_save).map(lambda kw: VeraConfig(**kw))


def prompt_tuning_configs(
    model: TinyModel, *, max_tokens: int = 4
) -> SearchStrategy[PromptTuningConfig]:
    """Prompt tuning with 1..max_tokens random virtual tokens; needs a causal LM (``tiny_decoders``)."""
    if not model.is_causal_lm:
        raise ValueError(f"model={model!r}: prompt tuning needs a causal LM from tiny_decoders()")
    if max_tokens < 1:
        raise ValueError(f"max_tokens={max_tokens!r} must be >= 1")
    return st.integers(min_value=1, max_value=max_tokens).map(
        lambda n: PromptTuningConfig(
            task_type="CAUSAL_LM", num_virtual_tokens=n, token_dim=model.hidden_size
        )
    )


METHODS: dict[str, Callable[[TinyModel], SearchStrategy[PeftConfig]]] = {
    "lora": lora_configs,
    "ia3": ia3_configs,
    "loha": loha_configs,
    "lokr": lokr_configs,
    "vera": vera_configs,
    "prompt_tuning": prompt_tuning_configs,
}
"""Method name -> config strategy for a model; ``peft_configs`` picks among them."""

_NEEDS_CAUSAL_LM = frozenset({"prompt_tuning"})


def peft_configs(
    model: TinyModel, *, methods: tuple[str, ...] = tuple(METHODS)
) -> SearchStrategy[PeftConfig]:
    """A config of any of ``methods`` that applies to ``model`` (prompt tuning: causal LMs only)."""
    unknown = sorted(set(methods) - set(METHODS))
    if unknown:
        raise ValueError(f"methods={methods!r}: unknown {unknown}; choose from {sorted(METHODS)}")
    usable = [m for m in methods if model.is_causal_lm or m not in _NEEDS_CAUSAL_LM]
    if not usable:
        raise ValueError(f"methods={methods!r}: none applies to {model!r}")
    return st.one_of([METHODS[m](model) for m in usable])


def _check_rank(max_rank: int) -> None:
    if max_rank < 1:
        raise ValueError(f"max_rank={max_rank!r} must be >= 1")

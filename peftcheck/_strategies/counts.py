"""The trainable-parameter count a PEFT config implies, computed from the config and module shapes."""

from __future__ import annotations

from collections.abc import Callable, Iterator

from peft import IA3Config, LoHaConfig, LoraConfig, PeftConfig, PromptTuningConfig, VeraConfig
from torch import nn

__all__ = ["expected_trainable_parameters", "matching_modules"]


def matching_modules(model: nn.Module, names: list[str] | str | None) -> Iterator[tuple[str, nn.Module]]:
    """Modules whose dotted name is one of ``names`` or ends with ``"." + name``.

    This is peft's documented rule for a list of ``target_modules``. (peft matches
    ``modules_to_save`` by plain string suffix, so ``"norm"`` would also select
    ``input_layernorm``; the built-in strategies only draw names on which both rules agree.)
    """
    if not names:
        return
    wanted = [names] if isinstance(names, str) else list(names)
    for key, module in model.named_modules():
        if any(key == n or key.endswith("." + n) for n in wanted):
            yield key, module


def _numel(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def _linear_dims(key: str, module: nn.Module) -> tuple[int, int]:
    if not isinstance(module, nn.Linear):
        raise NotImplementedError(f"{key}: only nn.Linear targets are counted, got {type(module).__name__}")
    return module.in_features, module.out_features


def _lora(model: nn.Module, config: LoraConfig) -> int:
    total = 0
    targets = dict(matching_modules(model, config.target_modules))
    for key, module in targets.items():
        if isinstance(module, nn.Embedding):
            total += config.r * (module.num_embeddings + module.embedding_dim)
            total += module.embedding_dim if config.use_dora else 0
            continue
        fan_in, fan_out = _linear_dims(key, module)
        total += config.r * (fan_in + fan_out)  # A: r x in, B: out x r
        total += fan_out if config.use_dora else 0  # magnitude vector
        total += fan_out if getattr(config, "lora_bias", False) else 0  # bias of B
    saved = {k for k, _ in matching_modules(model, config.modules_to_save)}
    if config.bias == "all":  # every bias of the base model, LayerNorm's included
        total += sum(
            p.numel()
            for key, m in model.named_modules()
            if not any(key == s or key.startswith(s + ".") for s in saved)
            for n, p in m.named_parameters(recurse=False)
            if "bias" in n
        )
    elif config.bias == "lora_only":
        total += sum(m.bias.numel() for m in targets.values() if getattr(m, "bias", None) is not None)
    return total


def _ia3(model: nn.Module, config: IA3Config) -> int:
    feedforward = {k for k, _ in matching_modules(model, config.feedforward_modules)}
    total = 0
    for key, module in matching_modules(model, config.target_modules):
        fan_in, fan_out = _linear_dims(key, module)
        total += fan_in if key in feedforward else fan_out  # one scaling vector per target
    return total


def _loha(model: nn.Module, config: LoHaConfig) -> int:
    total = 0
    for key, module in matching_modules(model, config.target_modules):
        fan_in, fan_out = _linear_dims(key, module)
        total += 2 * config.r * (fan_in + fan_out)  # two Hadamard factors, each out x r and r x in
    return total


def _vera(model: nn.Module, config: VeraConfig) -> int:
    total = 0
    for key, module in matching_modules(model, config.target_modules):
        _, fan_out = _linear_dims(key, module)
        total += config.r + fan_out  # lambda_d (r) and lambda_b (out); A and B are frozen buffers
    return total


def _prompt_tuning(model: nn.Module, config: PromptTuningConfig) -> int:
    submodules = config.num_transformer_submodules or 1
    return config.num_virtual_tokens * submodules * config.token_dim


_COUNTERS: dict[type[PeftConfig], Callable[[nn.Module, PeftConfig], int]] = {
    LoraConfig: _lora,
    IA3Config: _ia3,
    LoHaConfig: _loha,
    VeraConfig: _vera,
    PromptTuningConfig: _prompt_tuning,
}


def expected_trainable_parameters(model: nn.Module, config: PeftConfig) -> int:
    """How many parameters ``get_peft_model(model, config)`` should leave trainable.

    ``model`` is the unwrapped base. Counted per method: LoRA r·(in+out) per Linear target
    (r·(vocab+dim) per embedding, + out for DoRA's magnitude or ``lora_bias``, + biases per
    ``bias``), IA3 one vector per target, LoHa 2r·(in+out), VeRA r+out, prompt tuning
    tokens·hidden; plus every parameter of ``modules_to_save``. Other methods raise
    NotImplementedError.
    """
    counter = _COUNTERS.get(type(config))
    if counter is None:
        known = ", ".join(c.__name__ for c in _COUNTERS)
        raise NotImplementedError(f"no count for {type(config).__name__}; counted: {known}")
    saved = sum(_numel(m) for _, m in matching_modules(model, getattr(config, "modules_to_save", None)))
    return counter(model, config) + saved

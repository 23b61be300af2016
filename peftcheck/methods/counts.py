"""The trainable-parameter count a peft config implies, from the config and the base's module
shapes: the one oracle of trainable_ratio and of the hypothesis count properties (issue 13)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from peftcheck.methods.targets import features, is_linear, matched_targets

__all__ = ["NoFormula", "expected_trainable"]


class NoFormula(Exception):
    """This config has no analytic count here (the message says why)."""


def _targets(base: Any, config: Any, field: str = "target_modules") -> dict[str, Any]:
    modules = dict(base.named_modules())
    matched = matched_targets(base, getattr(config, field, None))
    return {n: modules[n] for names in matched.values() for n in names}


def _saved(base: Any, config: Any) -> dict[str, Any]:
    """The modules modules_to_save copies: peft matches them by plain string suffix, so "norm" also
    selects input_layernorm (peft/utils/other.py, _set_trainable)."""
    wanted = getattr(config, "modules_to_save", None) or []
    return {k: m for k, m in base.named_modules() if k and any(k.endswith(t) for t in wanted)}


def _linear(name: str, module: Any, kind: str) -> tuple[int, int]:
    if not is_linear(module):
        raise NoFormula(f"{kind} on a {type(module).__name__} ({name}) has no formula here")
    return features(module)


def _lora(base: Any, config: Any) -> tuple[int, str]:
    if config.rank_pattern:
        raise NoFormula("LoraConfig with rank_pattern has no formula here")
    targets, total = _targets(base, config), 0
    for name, module in targets.items():
        if type(module).__name__ == "Embedding":
            total += config.r * (module.num_embeddings + module.embedding_dim)
            total += module.embedding_dim if config.use_dora else 0
            continue
        fan_in, fan_out = _linear(name, module, "LoraConfig")
        total += config.r * (fan_in + fan_out)  # A: r x in, B: out x r
        total += fan_out if config.use_dora else 0  # the magnitude vector
        total += fan_out if getattr(config, "lora_bias", False) else 0  # B's bias
    saved = set(_saved(base, config))
    if config.bias == "all":  # every bias of the base, the norms' included, outside modules_to_save
        total += sum(
            p.numel() for key, m in base.named_modules()
            if not any(key == s or key.startswith(s + ".") for s in saved)
            for n, p in m.named_parameters(recurse=False) if "bias" in n
        )  # fmt: skip
    elif config.bias == "lora_only":
        total += sum(m.bias.numel() for m in targets.values() if getattr(m, "bias", None) is not None)
    extras = [what for what, on in (("out for DoRA's magnitude", config.use_dora),
                                     ("out for B's bias", getattr(config, "lora_bias", False)),
                                     (f"biases (bias={config.bias!r})", config.bias != "none")) if on]  # fmt: skip
    return total, "r·(in+out) per target" + "".join(f" + {e}" for e in extras)


def _adalora(base: Any, config: Any) -> tuple[int, str]:
    # AdaLoRA fills rank_pattern while it trains, by masking: the parameter count stays
    if config.bias != "none":
        raise NoFormula("AdaLoraConfig with bias has no formula here")
    shapes = [_linear(n, m, "AdaLoraConfig") for n, m in _targets(base, config).items()]
    return sum(config.init_r * (i + o + 1) for i, o in shapes), "init_r·(in+out+1) per target"


def _ia3(base: Any, config: Any) -> tuple[int, str]:
    ff = set(_targets(base, config, "feedforward_modules"))
    total = sum(_linear(n, m, "IA3Config")[0 if n in ff else 1] for n, m in _targets(base, config).items())
    return total, "one vector per target: in_features for feed-forward, out_features otherwise"


def _loha(base: Any, config: Any) -> tuple[int, str]:
    shapes = [_linear(n, m, "LoHaConfig") for n, m in _targets(base, config).items()]
    return sum(2 * config.r * (i + o) for i, o in shapes), "2r·(in+out) per target (two Hadamard factors)"


def _vera(base: Any, config: Any) -> tuple[int, str]:
    shapes = [_linear(n, m, "VeraConfig") for n, m in _targets(base, config).items()]
    return sum(config.r + o for _, o in shapes), "r + out per target (A and B are frozen, shared)"


def _prompt(base: Any, config: Any) -> tuple[int, str]:
    return config.num_virtual_tokens * (config.num_transformer_submodules or 1) * config.token_dim, "tokens·token_dim"


def _prefix(base: Any, config: Any) -> tuple[int, str]:
    per_token = config.num_layers * 2 * config.token_dim
    if not config.prefix_projection:
        return config.num_virtual_tokens * per_token, "tokens·layers·2·token_dim"
    h = config.encoder_hidden_size
    return (config.num_virtual_tokens * config.token_dim + (config.token_dim + 1) * h + (h + 1) * per_token,
            "embedding + two-layer projection")  # fmt: skip


def _ptuning(base: Any, config: Any) -> tuple[int, str]:
    if str(config.encoder_reparameterization_type).endswith("LSTM"):
        raise NoFormula("p-tuning with an LSTM encoder has no formula here")
    d, h = config.token_dim, config.encoder_hidden_size
    emb = config.num_virtual_tokens * config.num_transformer_submodules * d
    return emb + (d + 1) * h + (h + 1) * h + (h + 1) * d, "embedding + three-layer MLP"


_COUNTERS: dict[str, Callable[[Any, Any], tuple[int, str]]] = {
    "LoraConfig": _lora, "AdaLoraConfig": _adalora, "IA3Config": _ia3, "LoHaConfig": _loha, "VeraConfig": _vera,
    "PromptTuningConfig": _prompt, "PrefixTuningConfig": _prefix, "PromptEncoderConfig": _ptuning,
}  # fmt: skip


def expected_trainable(base_model: Any, config: Any) -> tuple[int, str]:
    """(count, formula) of the parameters ``config`` should leave trainable on ``base_model``
    (the unwrapped base), modules_to_save copies included; NoFormula where there is none."""
    kind = type(config).__name__
    counter = _COUNTERS.get(kind)
    if counter is None:
        raise NoFormula(f"no analytic formula for {kind}")
    count, formula = counter(base_model, config)
    saved = _saved(base_model, config)
    if saved:
        count += sum(p.numel() for m in saved.values() for p in m.parameters())
        formula += " + every parameter of modules_to_save"
    return count, formula

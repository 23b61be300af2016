"""Method spec -> PeftConfig (any peft config class by name), applied to a base model.

Everything that depends on which PEFT method is used lives here, so checks stay method-agnostic.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import re
from typing import Any

from peftcheck.errors import SuiteError
from peftcheck.spec import MethodSpec

__all__ = [
    "build_config",
    "parameter_counts",
    "apply_method",
    "apply_to_skeleton",
    "is_prompt_learning",
    "can_merge",
    "supports_safe_merge",
    "can_resume",
    "merged_parameters",
    "supports_gradient_checkpointing",
    "supports_weighted_cat",
    "identity_at_init",
    "init_setting",
    "matched_targets",
    "coverage_targets",
    "wrapper_modules",
    "expected_trainable",
]


def _config_class(name: str, field: str) -> type:
    import peft

    cls = getattr(peft, name, None)
    if not (isinstance(cls, type) and issubclass(cls, peft.PeftConfig)) or name == "PeftConfig":
        known = sorted(n for n in dir(peft) if n.endswith("Config") and n != "PeftConfig")
        close = difflib.get_close_matches(name, known, n=1)
        hint = f"did you mean {close[0]!r}?" if close else f"peft {peft.__version__} has: {', '.join(known)}"
        raise SuiteError(f"got {name!r}, not a peft config class", field=field, hint=hint)
    return cls


def build_config(method: MethodSpec, *, name: str, max_steps: int) -> Any:
    """Instantiate the peft config of ``method``; unknown arguments are SuiteErrors."""
    if method.backend == "adapters":
        from peftcheck.backends import adapters

        return adapters.build_config(method, name=name)
    cls = _config_class(method.peft or "", f"methods.{name}.peft")
    fields = {f.name for f in dataclasses.fields(cls) if f.init}
    kwargs = method.kwargs
    for key in kwargs:
        if key not in fields:
            close = difflib.get_close_matches(key, fields, n=1)
            raise SuiteError(
                f"unknown argument of {cls.__name__}",
                field=f"methods.{name}.{key}",
                hint=f"did you mean {close[0]!r}?" if close else "see the peft docs of " + cls.__name__,
            )
    _check_types(cls, kwargs, name)
    if "task_type" in fields and "task_type" not in kwargs:
        kwargs["task_type"] = "CAUSAL_LM"
    if cls.__name__ == "AdaLoraConfig" and "total_step" not in kwargs:
        kwargs["total_step"] = max_steps  # AdaLoRA's budget schedule spans the whole run
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as exc:
        raise SuiteError(f"{cls.__name__} rejected the arguments: {exc}", field=f"methods.{name}") from None


def _check_types(cls: type, kwargs: dict[str, Any], name: str) -> None:
    """Each argument against its field's annotation in the config dataclass (peft does not check
    them: ``r: "eight"`` fails only at training time with a TypeError naming no field; issue 13).
    Annotations pydantic cannot build a validator for are left to peft."""
    import typing

    from pydantic import TypeAdapter, ValidationError

    try:
        hints = typing.get_type_hints(cls)
    except Exception:  # noqa: BLE001 - an annotation this Python cannot resolve: peft checks it
        return
    for key, value in kwargs.items():
        if value is None:  # peft annotates many optional fields without Optional
            continue
        try:
            adapter = TypeAdapter(hints[key])
        except Exception:  # noqa: BLE001 - no validator for this annotation (or no annotation)
            continue
        hint = f"{cls.__name__}.{key} is {_annotation(hints[key])}"
        try:
            parsed = adapter.validate_python(value)
        except ValidationError as exc:
            if isinstance(value, (int, float)) and not isinstance(value, bool) and _numeric(adapter):
                continue  # peft computes with any number where it annotates one kind (lora_alpha: 16.0)
            wanted = exc.errors()[0]["msg"]
            raise SuiteError(f"got {value!r}, {wanted[0].lower()}{wanted[1:]}", field=f"methods.{name}.{key}",
                             hint=hint) from None  # fmt: skip
        if isinstance(value, str) and not isinstance(parsed, str):  # "8" would reach peft as a string
            raise SuiteError(f"got {value!r}, a string where a {type(parsed).__name__} is wanted",
                             field=f"methods.{name}.{key}", hint=f"{hint}: write it without quotes")  # fmt: skip


def _numeric(adapter: Any) -> bool:
    """Whether a validator accepts a number (an int or a float) at all."""
    from pydantic import ValidationError

    for probe in (0, 0.5):
        try:
            adapter.validate_python(probe)
            return True
        except ValidationError:
            pass
    return False


def _annotation(hint: Any) -> str:
    return str(hint).replace("typing.", "") if not isinstance(hint, type) else hint.__name__


def apply_method(model: Any, config: Any, *, quantization: str, name: str, adapter_name: str = "default") -> Any:
    """Wrap ``model`` (modified in place) with the adapter described by ``config``, named
    ``adapter_name`` (peft's; the adapters backend names it itself)."""
    if getattr(config, "backend", None) == "adapters":
        from peftcheck.backends import adapters

        return adapters.apply(model, config, quantization=quantization, name=name)
    from peft import get_peft_model, prepare_model_for_kbit_training

    if quantization != "none":
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    if type(config).__name__ == "XLoraConfig":
        model.config.use_cache = False  # X-LoRA refuses a base with use_cache (its scaling pass runs the model twice)
    try:
        return get_peft_model(model, config, adapter_name=adapter_name)
    except ValueError as exc:  # e.g. "Target modules ... not found in the base model"
        raise SuiteError(f"peft could not apply the method: {exc}", field=f"methods.{name}") from None


def apply_to_skeleton(model: Any, config: Any, *, name: str) -> None:
    """Apply ``config`` to ``model`` (built on the meta device) as training would; a peft error
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


def _logical_numel(param: Any) -> int:
    """Elements a parameter stands for: bitsandbytes packs two 4-bit values per storage byte."""
    if type(param).__name__ == "Params4bit":
        storage = getattr(param, "quant_storage", None)
        return param.numel() * 2 * (storage.itemsize if storage is not None else 1)
    return param.numel()


def parameter_counts(model: Any) -> tuple[int, int]:
    """(trainable, total) parameters, counting 4-bit weights as the weights they encode."""
    trainable = sum(_logical_numel(p) for p in model.parameters() if p.requires_grad)
    return trainable, sum(_logical_numel(p) for p in model.parameters())


def is_prompt_learning(config: Any) -> bool:
    return bool(getattr(config, "is_prompt_learning", False))


def can_merge(peft_model: Any) -> str | None:
    """None if the adapter can be merged into the base weights, else the reason it cannot."""
    if getattr(peft_model, "peftcheck_backend", None) == "adapters":  # backend: adapters
        from peftcheck.backends import adapters

        return adapters.can_merge(peft_model)
    config = peft_model.peft_config[peft_model.active_adapter]
    if is_prompt_learning(config):
        return f"{type(config).__name__} adds virtual tokens; there are no weights to merge"
    if not hasattr(peft_model, "merge_and_unload"):
        return f"{type(config).__name__} has no merge_and_unload"
    kind = type(config).__name__
    if kind in _NO_MERGE:
        return _NO_MERGE[kind]
    if kind == "BeftConfig":
        from peft.tuners.tuners_utils import BaseTunerLayer

        bare = sorted(n for n, m in peft_model.named_modules() if isinstance(m, BaseTunerLayer) and m.get_base_layer().bias is None)
        if bare:
            return f"BEFT trains a bias for layers that have none ({bare[0]}, ...): peft cannot merge it (it warns so at get_peft_model)"
    return None


_NO_MERGE = {  # peft's merge raises NotImplementedError by design
    "LilyConfig": "Lily's layers raise NotImplementedError on merge/unmerge (peft/tuners/lily/layer.py)",
    "ShadowConfig": "ShadowPEFT is an input-dependent layer-space trajectory, not a weight delta: peft cannot merge it",
}
_NO_UNMERGE = {"OSFConfig": "OSF models do not support unmerging (OSFModel.unmerge_adapter raises NotImplementedError)"}


def can_unmerge(peft_model: Any) -> str | None:
    """None if a merged adapter can be unmerged again (merge_adapter, then unmerge_adapter), else why not."""
    reason = can_merge(peft_model)
    if reason is not None:
        return reason
    return _NO_UNMERGE.get(type(peft_model.peft_config[peft_model.active_adapter]).__name__)


_REWRITES_BASE = ("pissa", "olora", "corda")


def rewrites_base(config: Any) -> str | None:
    """Why the method's init rewrites the base weights it sits on (PiSSA, OLoRA, CorDA: W -> W - B·A), else None."""
    init = getattr(config, "init_lora_weights", None)
    if isinstance(init, str) and init.split("_niter_")[0] in _REWRITES_BASE:
        return (
            f"init_lora_weights={init!r} rewrites the base weights at init (W -> W - B·A): the adapter sits on that "
            "residual, not on the loaded base (peft: convert with path_initial_model_for_weight_conversion)"
        )
    return None


def supports_safe_merge(peft_model: Any) -> str | None:
    """None if ``merge_and_unload(safe_merge=True)`` exists for the adapter, else why not."""
    import inspect

    reason = can_merge(peft_model)
    if reason is not None:
        return reason
    if type(peft_model.peft_config[peft_model.active_adapter]).__name__ == "LNTuningConfig":
        return "LN tuning merges by swapping in its tuned copy, no arithmetic: peft ignores safe_merge (ln_tuning/layer.py)"
    if "safe_merge" not in inspect.signature(peft_model.merge_and_unload).parameters:
        config = peft_model.peft_config[peft_model.active_adapter]
        return f"{type(config).__name__}'s merge_and_unload takes no safe_merge"
    return None


def can_resume(config: Any) -> str | None:
    """None if peft loads a saved adapter of ``config``'s kind for further training
    (``is_trainable=True``), else why not."""
    if is_prompt_learning(config):
        return (
            f"peft refuses is_trainable=True for {type(config).__name__} (prompt learning): the "
            "checkpoint holds the virtual-token table, not the encoder that trained it"
        )
    return None


def supports_gradient_checkpointing(config: Any) -> str | None:
    """None if training the method under gradient checkpointing is supported, else why not."""
    if type(config).__name__ in ("PrefixTuningConfig", "CartridgeConfig"):
        # its prefix is a key/value cache, which recomputation extends a second time (peft#869;
        # peft PR #2191 refuses the combination at get_peft_model)
        return (
            f"{type(config).__name__} feeds a key/value prefix, which gradient checkpointing cannot recompute: "
            "a recomputed layer extends its prefix cache twice (peft#869)"
        )
    return None


def supports_weighted_cat(peft_model: Any) -> str | None:
    """None if ``add_weighted_adapter(..., combination_type="cat")`` applies, else why not: the
    concatenating combination is LoRA's (LoraModel.add_weighted_adapter)."""
    config = peft_model.peft_config[peft_model.active_adapter]
    if type(config).__name__ != "LoraConfig" or not hasattr(peft_model.base_model, "add_weighted_adapter"):
        return f"{type(config).__name__} has no add_weighted_adapter with combination_type='cat'"
    if getattr(config, "use_dora", False):
        # the combination concatenates A and B only; DoRA normalises each adapter's weight by its
        # own norm, so no single adapter equals two DoRA adapters applied together
        return "DoRA: add_weighted_adapter combines A and B only, and DoRA's per-adapter normalisation does not compose"
    return None


def merged_parameters(peft_model: Any) -> list[str]:
    """Names of the trainable adapter tensors that a merge folds into base weights: those of
    peft's tuner layers (not modules_to_save copies, which are swapped in whole)."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    names = []
    for module_name, module in peft_model.named_modules():
        if isinstance(module, BaseTunerLayer):
            for name, param in module.named_parameters(prefix=module_name):
                if param.requires_grad and ".base_layer." not in name:
                    names.append(name)
    return sorted(set(names))


# Config class -> the field choosing its init; at peft's default the untrained adapter is the
# base exactly (LoRA's B = 0, AdaLoRA's E = 0, IA3's vectors = 1, LoHa's w2_b = 0, LoKr's w1 = 0).
# Issue 16.
_IDENTITY_INIT = {
    "LoraConfig": "init_lora_weights", "AdaLoraConfig": "init_lora_weights", "IA3Config": "init_ia3_weights",
    "LoHaConfig": "init_weights", "LoKrConfig": "init_weights",
    # init_weights=True starts at the base (measured on tiny-llama: untrained vs base <= 2.4e-07)
    **{kind: "init_weights" for kind in (
        "BeftConfig", "BOFTConfig", "DeftConfig", "DeloraConfig", "FrodConfig", "GloraConfig", "GraloraConfig",
        "HiraConfig", "HRAConfig", "LilyConfig", "MissConfig", "OFTConfig", "OSFConfig",
        "PeanutConfig", "PsoftConfig", "PveraConfig", "RandLoraConfig", "RoadConfig", "ShadowConfig", "ShiraConfig",
        "SupertuningConfig", "TinyLoraConfig", "TrainableTokensConfig", "VeraConfig", "WaveFTConfig",
    )},
}  # fmt: skip
_NOT_IDENTITY_INIT = {  # inits that start elsewhere by design
    "loftq": "LoftQ starts A and B at the quantization residual: the untrained adapter approximates "
    "the float weights, not the quantized base",
}


# No init field: these start at the base by construction (checked by init_identity in suites/sweep.yaml)
_IDENTITY_BY_DESIGN = {
    "AdaptionPromptConfig": "by design: the adaption gate starts at zero",
    "LNTuningConfig": "by design: the tuned norm layers start as copies of the base's",
}


def init_setting(config: Any) -> str:
    """The config's init field and value, e.g. ``init_lora_weights=True`` ('' if none)."""
    kind = type(config).__name__
    field = _IDENTITY_INIT.get(kind)
    return f"{field}={getattr(config, field)!r}" if field else _IDENTITY_BY_DESIGN.get(kind, "")


def identity_at_init(config: Any) -> str | None:
    """None when the method promises that its untrained adapter computes the base's output,
    else why it does not. An init the suite set to ``False`` (peft's random init, for testing)
    starts off the base by the suite's choice: no promise to hold it to."""
    kind = type(config).__name__
    if getattr(config, "backend", None) == "adapters":  # backend: adapters
        return f"{kind}: the adapters backend makes no identity-at-init promise peftcheck knows"
    if is_prompt_learning(config):
        return f"{kind} prepends virtual tokens initialised away from the base by design (see init_eval_perplexity)"
    if kind in _IDENTITY_BY_DESIGN:
        return None
    if kind not in _IDENTITY_INIT:
        return f"peftcheck knows no identity-at-init promise for {kind}"
    value = getattr(config, _IDENTITY_INIT[kind])
    if value is False:
        return f"{init_setting(config)}: a random init, chosen by the suite, starts off the base by design"
    if isinstance(value, str) and value in _NOT_IDENTITY_INIT:
        return f"{init_setting(config)}: {_NOT_IDENTITY_INIT[value]}"
    return None


def coverage_targets(config: Any) -> Any:
    """The config's target_modules as matched_targets reads them: adaption prompt names one
    attention module, matched as a suffix (peft's adaption_prompt), not a regex."""
    targets = getattr(config, "target_modules", None)
    return [targets] if type(config).__name__ == "AdaptionPromptConfig" and isinstance(targets, str) else targets


def wrapper_modules(model: Any) -> list[str]:
    """Names of modules peft replaces whole, holding the original as ``.model`` (adaption
    prompt's AdaptedAttention) rather than wrapping it as a tuner layer."""
    return [n for n, m in model.named_modules() if type(m).__name__ == "AdaptedAttention"]


def _is_linear(module: Any) -> bool:
    """A Linear as peft's all-linear counts it: torch's, or transformers' Conv1D (GPT-2)."""
    import torch
    from transformers.pytorch_utils import Conv1D

    return isinstance(module, (torch.nn.Linear, Conv1D))


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
            found = [n for n in names if _is_linear(modules[n]) and modules[n] is not output]
        else:
            found = [n for n in names if re.fullmatch(target_modules, n)]
        return {target_modules: found}
    return {t: [n for n in names if n == t or n.endswith("." + t)] for t in target_modules}


def _features(module: Any) -> tuple[int, int]:
    """(in, out) features; Conv1D stores its weight (in, out) and has no in_features."""
    if hasattr(module, "in_features"):
        return int(module.in_features), int(module.out_features)
    rows, cols = module.weight.shape
    return int(rows), int(cols)


def expected_trainable(base_model: Any, config: Any) -> tuple[int | None, str]:
    """Trainable parameters the method should add, from its config and the base's shapes.

    Returns (count, formula) or (None, why there is no formula for this config)."""
    if getattr(config, "backend", None) == "adapters":  # backend: adapters
        from peftcheck.backends import adapters

        return adapters.expected_trainable(base_model, config)
    kind = type(config).__name__
    modules = dict(base_model.named_modules())
    matched = matched_targets(base_model, getattr(config, "target_modules", None))
    targets = sorted({n for names in matched.values() for n in names})
    if kind in ("LoraConfig", "AdaLoraConfig"):
        # AdaLoRA fills rank_pattern while it trains, by masking: the parameter count stays
        ranked = bool(config.rank_pattern) and kind == "LoraConfig"
        if config.use_dora or config.bias != "none" or config.modules_to_save or ranked:
            return None, f"{kind} with DoRA, bias, modules_to_save or rank_pattern has no formula here"
        if not all(_is_linear(modules[n]) for n in targets):
            return None, f"{kind} on non-Linear modules has no formula here"
        if kind == "AdaLoraConfig":
            r = config.init_r
            shapes = [_features(modules[n]) for n in targets]
            return sum(r * (i + o + 1) for i, o in shapes), "init_r·(in+out+1) per target"
        shapes = [_features(modules[n]) for n in targets]
        return sum(config.r * (i + o) for i, o in shapes), "r·(in+out) per target"
    if kind == "IA3Config":
        if config.modules_to_save:
            return None, "IA3 with modules_to_save has no formula here"
        ff = matched_targets(base_model, config.feedforward_modules or [])
        ff_names = {n for ns in ff.values() for n in ns}
        total = sum(_features(modules[n])[0 if n in ff_names else 1] for n in targets)
        return total, "one vector per target: in_features for feed-forward, out_features otherwise"
    if kind == "PromptTuningConfig":
        count = config.num_virtual_tokens * config.token_dim * config.num_transformer_submodules
        return count, "tokens·token_dim"
    if kind == "PrefixTuningConfig":
        per_token = config.num_layers * 2 * config.token_dim
        if not config.prefix_projection:
            return config.num_virtual_tokens * per_token, "tokens·layers·2·token_dim"
        h = config.encoder_hidden_size
        count = config.num_virtual_tokens * config.token_dim + (config.token_dim + 1) * h + (h + 1) * per_token
        return count, "embedding + two-layer projection"
    if kind == "PromptEncoderConfig":
        if str(config.encoder_reparameterization_type).endswith("LSTM"):
            return None, "p-tuning with an LSTM encoder has no formula here"
        d, h = config.token_dim, config.encoder_hidden_size
        emb = config.num_virtual_tokens * config.num_transformer_submodules * d
        return emb + (d + 1) * h + (h + 1) * h + (h + 1) * d, "embedding + three-layer MLP"
    return None, f"no analytic formula for {kind}"


def optimizer_step_hook(peft_model: Any) -> Any:
    """A function of the global step to call after every optimizer step, or None.

    AdaLoRA reallocates its rank budget from the gradients after each step; Trainer does not
    call it, so without this hook AdaLoRA silently trains as a fixed-rank LoRA."""
    if getattr(peft_model, "peftcheck_backend", None) == "adapters":  # backend: adapters
        return None  # no adapters method needs a call per step
    update = getattr(getattr(peft_model, "base_model", None), "update_and_allocate", None)
    if update is None or type(peft_model.peft_config[peft_model.active_adapter]).__name__ != "AdaLoraConfig":
        return None
    return update

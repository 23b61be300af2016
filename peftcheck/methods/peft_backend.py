"""The peft backend: any peft config class by name (issue 13).

What is specific to one peft type is a row of ``facts.FACTS``; this module reads the rows and
drives peft's API (get_peft_model, disable_adapter, save_pretrained, from_pretrained,
merge_and_unload, get_peft_model_state_dict)."""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import difflib
import inspect
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from peftcheck.errors import SuiteError
from peftcheck.methods import counts
from peftcheck.methods.facts import FACTS, Facts, facts_of

if TYPE_CHECKING:
    from peftcheck.spec import MethodSpec

__all__ = ["BACKEND", "PeftBackend", "CHECKPOINT", "DORA_LIVE_SUFFIX"]

CHECKPOINT = "adapter_model.safetensors"
# peft keeps DoRA's magnitude as a module (``lora_magnitude_vector.<adapter>.weight``) but saves it
# under the name it had as a ParameterDict, ``lora_magnitude_vector`` (peft/tuners/lora/model.py)
DORA_LIVE_SUFFIX = "lora_magnitude_vector.weight"


def facts_of_class(cls: type) -> Facts:
    return FACTS.get(cls.__name__, Facts())


def _config(model: Any, adapter: str | None = None) -> Any:
    return model.peft_config[adapter or model.active_adapter]


def _config_class(name: str, field: str) -> type:
    import peft

    cls = getattr(peft, name, None)
    if not (isinstance(cls, type) and issubclass(cls, peft.PeftConfig)) or name == "PeftConfig":
        known = sorted(n for n in dir(peft) if n.endswith("Config") and n != "PeftConfig")
        close = difflib.get_close_matches(name, known, n=1)
        hint = f"did you mean {close[0]!r}?" if close else f"peft {peft.__version__} has: {', '.join(known)}"
        raise SuiteError(f"got {name!r}, not a peft config class", field=field, hint=hint)
    return cls


def _build_config(method: MethodSpec, *, name: str, max_steps: int) -> Any:
    """Instantiate the peft config of ``method``; unknown arguments are SuiteErrors."""
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
    if facts_of_class(cls).total_step_from_run and "total_step" not in kwargs:
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




class PeftBackend:
    """Backend ``peft``: every peft config class by name."""

    name = "peft"

    # -- building and training ------------------------------------------------------------------
    def build_config(self, method: MethodSpec, *, name: str, max_steps: int) -> Any:
        return _build_config(method, name=name, max_steps=max_steps)

    def apply(self, model: Any, config: Any, *, quantization: str, name: str, adapter_name: str = "default") -> Any:
        from peft import get_peft_model, prepare_model_for_kbit_training

        if quantization != "none":
            model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
        if facts_of(config).no_use_cache:
            model.config.use_cache = False  # X-LoRA's scaling pass runs the model twice
        try:
            return get_peft_model(model, config, adapter_name=adapter_name)
        except ValueError as exc:  # e.g. "Target modules ... not found in the base model"
            raise SuiteError(f"peft could not apply the method: {exc}", field=f"methods.{name}") from None

    def training_copy(self, model: Any) -> Any:
        return copy.deepcopy(model)

    def step_hook(self, model: Any) -> Callable[[int], Any] | None:
        hook = facts_of(_config(model)).step_hook
        return getattr(getattr(model, "base_model", None), hook, None) if hook else None

    # -- the adapter contract -------------------------------------------------------------------
    def disabled(self, model: Any) -> contextlib.AbstractContextManager[Any]:
        return model.disable_adapter()

    def save(self, model: Any, folder: Path) -> Path:
        model.save_pretrained(folder)
        return Path(folder) / CHECKPOINT

    def load(self, base_model: Any, folder: Path, *, adapter_name: str | None = None, trainable: bool = False) -> Any:
        from peft import PeftModel

        kwargs = {"adapter_name": adapter_name} if adapter_name else {}
        return PeftModel.from_pretrained(base_model, folder, is_trainable=trainable, **kwargs)

    def load_together(self, base_model: Any, folders: dict[str, Path]) -> Any:
        """Every adapter of ``folders`` on ``base_model`` under its name: a PeftModel when they
        share a peft type, else peft's PeftMixedModel."""
        import json

        from peft import PeftMixedModel, PeftModel

        first, *rest = folders
        kinds = {json.loads((Path(f) / "adapter_config.json").read_text())["peft_type"] for f in folders.values()}
        loader = PeftModel if len(kinds) == 1 else PeftMixedModel
        model = loader.from_pretrained(base_model, folders[first], adapter_name=first)
        for name in rest:
            model.load_adapter(str(folders[name]), adapter_name=name)
        return model

    def merged_copy(self, model: Any) -> Any:
        return copy.deepcopy(model).merge_and_unload()

    def read_config(self, folder: Path) -> Any:
        """The config saved in an adapter folder (adapter_config.json)."""
        from peft import PeftConfig

        return PeftConfig.from_pretrained(str(folder))

    def parameter_prefix(self, config: Any) -> str:
        """The prefix of the method's parameter names (``lora_``), which locates a checkpoint key's module."""
        from peft.mapping import PEFT_TYPE_TO_PREFIX_MAPPING

        return PEFT_TYPE_TO_PREFIX_MAPPING.get(config.peft_type, "")

    def load_state(self, model: Any, state: dict[str, Any], adapter_name: str = "default") -> tuple[list[str], list[str]]:
        """Load a checkpoint's tensors into ``model`` as peft's from_pretrained does; (missing,
        unexpected) keys, which peft itself only warns about (peft#2699, #2566)."""
        from peft import set_peft_model_state_dict

        result = set_peft_model_state_dict(model, dict(state), adapter_name=adapter_name)
        return list(result.missing_keys), list(result.unexpected_keys)

    def offers(self, model: Any, what: str) -> str | None:
        return None

    # -- what the method promises ---------------------------------------------------------------
    def can_merge(self, model: Any) -> str | None:
        config = _config(model)
        kind, facts = type(config).__name__, facts_of(config)
        if is_prompt_learning(config):
            return f"{kind} adds virtual tokens; there are no weights to merge"
        if not hasattr(model, "merge_and_unload"):
            return f"{kind} has no merge_and_unload"
        if facts.no_merge:
            return facts.no_merge
        if facts.merge_needs_bias:
            bare = sorted(n for n, m in self.tuner_layers(model).items() if m.get_base_layer().bias is None)
            if bare:
                return (f"{kind} trains a bias for layers that have none ({bare[0]}, ...): peft cannot merge it "
                        "(it warns so at get_peft_model)")  # fmt: skip
        return None

    def can_unmerge(self, model: Any) -> str | None:
        return self.can_merge(model) or facts_of(_config(model)).no_unmerge

    def supports_safe_merge(self, model: Any) -> str | None:
        reason = self.can_merge(model) or facts_of(_config(model)).no_safe_merge
        if reason is None and "safe_merge" not in inspect.signature(model.merge_and_unload).parameters:
            return f"{type(_config(model)).__name__}'s merge_and_unload takes no safe_merge"
        return reason

    def supports_weighted_cat(self, model: Any) -> str | None:
        config = _config(model)
        if not facts_of(config).weighted_cat or not hasattr(model.base_model, "add_weighted_adapter"):
            return f"{type(config).__name__} has no add_weighted_adapter with combination_type='cat'"
        if getattr(config, "use_dora", False):
            # the combination concatenates A and B only; DoRA normalises each adapter's weight by its
            # own norm, so no single adapter equals two DoRA adapters applied together
            return "DoRA: add_weighted_adapter combines A and B only, and DoRA's per-adapter normalisation does not compose"
        return None

    def can_resume(self, config: Any) -> str | None:
        if is_prompt_learning(config):
            return (
                f"peft refuses is_trainable=True for {type(config).__name__} (prompt learning): the "
                "checkpoint holds the virtual-token table, not the encoder that trained it"
            )
        return None

    def supports_gradient_checkpointing(self, config: Any) -> str | None:
        return facts_of(config).no_checkpointing

    def rewrites_base(self, config: Any) -> str | None:
        init = getattr(config, facts_of(config).init_field or "", None)
        if isinstance(init, str) and init.split("_niter_")[0] in facts_of(config).residual_inits:
            return (
                f"{init_setting(config)} rewrites the base weights at init (W -> W - B·A): the adapter sits on that "
                "residual, not on the loaded base (peft: convert with path_initial_model_for_weight_conversion)"
            )
        return None

    def identity_at_init(self, config: Any) -> str | None:
        kind, facts = type(config).__name__, facts_of(config)
        if is_prompt_learning(config):
            return f"{kind} prepends virtual tokens initialised away from the base by design (see init_eval_perplexity)"
        if facts.identity:
            return None
        if not facts.init_field:
            return f"peftcheck knows no identity-at-init promise for {kind}"
        value = getattr(config, facts.init_field)
        if value is False:
            return f"{init_setting(config)}: a random init, chosen by the suite, starts off the base by design"
        off_base = dict(facts.off_base_inits)
        if isinstance(value, str) and value in off_base:
            return f"{init_setting(config)}: {off_base[value]}"
        return None

    def init_setting(self, config: Any) -> str:
        return init_setting(config)

    def is_prompt_learning(self, config: Any) -> bool:
        return is_prompt_learning(config)

    # -- where the adapter sits and what it saves -----------------------------------------------
    def coverage_targets(self, config: Any) -> Any:
        targets = getattr(config, "target_modules", None)
        return [targets] if facts_of(config).suffix_target and isinstance(targets, str) else targets

    def wrapper_modules(self, model: Any) -> list[str]:
        wrappers = {f.wrapper_class for f in FACTS.values() if f.wrapper_class}
        return [n for n, m in model.named_modules() if type(m).__name__ in wrappers]

    def tuner_layers(self, model: Any) -> dict[str, Any]:
        """Module name -> peft tuner layer, for every layer carrying an adapter."""
        from peft.tuners.tuners_utils import BaseTunerLayer

        return {n: m for n, m in model.named_modules() if isinstance(m, BaseTunerLayer)}

    def merged_parameters(self, model: Any) -> list[str]:
        names = []
        for module_name, module in self.tuner_layers(model).items():
            for name, param in module.named_parameters(prefix=module_name):
                if param.requires_grad and ".base_layer." not in name:
                    names.append(name)
        return sorted(set(names))

    def expected_trainable(self, base_model: Any, config: Any) -> tuple[int | None, str]:
        try:
            return counts.expected_trainable(base_model, config)
        except counts.NoFormula as exc:
            return None, str(exc)

    def saved_state(self, model: Any, adapter: str | None = None) -> dict[str, Any]:
        """What peft's ``get_peft_model_state_dict`` saves for ``adapter``, read from the live
        parameters and buffers (every alias of a shared tensor) instead of ``state_dict()``, which
        rewrites 4-bit weights bitsandbytes repacked for the CPU in place (adapter_ops.save)."""
        from peft import get_peft_model_state_dict

        live = dict(model.named_parameters(remove_duplicate=False))
        live.update(model.named_buffers(remove_duplicate=False))
        return get_peft_model_state_dict(model, state_dict=live, adapter_name=adapter or model.active_adapter)

    def expected_checkpoint(self, model: Any, adapter: str | None = None, *, trainable_only: bool = True) -> dict[str, Any]:
        return _expected_checkpoint(self, model, adapter, trainable_only=trainable_only)


def is_prompt_learning(config: Any) -> bool:
    return bool(getattr(config, "is_prompt_learning", False))


def init_setting(config: Any) -> str:
    """The config's init field and value, e.g. ``init_lora_weights=True`` ('' if none)."""
    facts = facts_of(config)
    return f"{facts.init_field}={getattr(config, facts.init_field)!r}" if facts.init_field else (facts.identity or "")


def _expected_checkpoint(backend: PeftBackend, peft_model: Any, adapter: str | None = None, *, trainable_only: bool = True) -> dict[str, Any]:
    """What an adapter-only checkpoint of ``adapter`` must hold, derived from the live model:
    checkpoint key -> {"shape", "tensor" (live value, or None when only the shape is fixed),
    "from" (the live parameter(s) it stands for)}. ``trainable_only=False`` also covers an
    adapter loaded for inference (its tensors do not require grad).

    - prompt learning saves one table, ``prompt_embeddings``: the virtual tokens the encoder
      produces (the encoder's own MLP/LSTM weights are not saved, by peft's design);
    - budget-allocated ranks (a config ``rank_pattern`` of masks, AdaLoRA) are saved pruned
      to the ranks kept: the rank dimension shrinks to the number of kept ranks;
    - every other trainable tensor is saved under its name without the adapter name (DoRA's
      magnitude also without its ``.weight``)."""
    import torch

    adapter = adapter or peft_model.active_adapter
    config = peft_model.peft_config[adapter]
    if is_prompt_learning(config):
        with torch.no_grad():
            if config.inference_mode:  # a loaded prompt adapter is its table, with no encoder network
                table = peft_model.prompt_encoder[adapter].embedding.weight.detach().cpu()
            else:
                table = peft_model.get_prompt_embedding_to_save(adapter_name=adapter).detach().cpu()
        sources = [
            n for n, p in peft_model.named_parameters()
            if f".{adapter}." in n and (p.requires_grad or not trainable_only)
        ]  # fmt: skip
        return {"prompt_embeddings": {"shape": tuple(table.shape), "tensor": table, "from": sources}}
    pattern = getattr(config, "rank_pattern", None) or {}
    expected: dict[str, Any] = {}
    # the key peft saves a live tensor under, found by storage: a tensor shared by every layer (VB-LoRA's
    # vector bank, UniLoRA's theta_d, TinyLoRA's v) is saved once under the tuner's name, ShadowPEFT keeps
    # the adapter name in its keys
    saved_as: dict[tuple[int, tuple[int, ...]], str] = {}
    for saved_key, value in backend.saved_state(peft_model, adapter).items():
        if value.numel():
            saved_as.setdefault((value.data_ptr(), tuple(value.shape)), saved_key)
    for name, param in peft_model.named_parameters():
        parts = name.split(".")
        if adapter not in parts or not (param.requires_grad or not trainable_only):
            continue
        key = saved_as.get((param.data_ptr(), tuple(param.shape))) or ".".join(
            p for p in parts if p != adapter
        ).replace("modules_to_save.", "")
        if key.endswith(DORA_LIVE_SUFFIX):  # DoRA's magnitude saves without ".weight" (issue 13)
            key = key.removesuffix(".weight")
        shape, tensor = tuple(param.shape), param.detach().cpu()
        mask = _rank_mask(pattern, key, adapter)
        if mask is not None and len(mask) in shape:
            kept = int(sum(bool(m) for m in mask))
            shape = tuple(kept if size == len(mask) else size for size in shape)
            tensor = None  # values are checked through the reload, not bitwise
        expected[key] = {"shape": shape, "tensor": tensor, "from": [name]}
    return expected


def _rank_mask(pattern: dict[str, Any], key: str, adapter: str) -> list[Any] | None:
    """The kept-rank mask recorded for the module holding checkpoint ``key``, if any.

    AdaLoRA records masks under the name of a module's singular-value vector, e.g.
    ``model.layers.0.self_attn.q_proj.lora_E.default``: the module is that name without the
    adapter and the parameter."""
    for name, mask in pattern.items():
        if not isinstance(mask, (list, tuple)):
            continue  # LoRA's rank_pattern maps modules to plain ranks: live shapes already follow
        module = ".".join(p for p in name.split(".") if p != adapter).rsplit(".", 1)[0]
        if f".{module}." in f".{key}":
            return list(mask)
    return None


BACKEND = PeftBackend()

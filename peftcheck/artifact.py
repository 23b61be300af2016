"""Artifact mode (issue 15): a method that names a saved PEFT adapter folder is loaded, not trained.

Any trainer (peft's ``save_pretrained``, TRL's SFTTrainer, axolotl, LLaMA-Factory, unsloth) ends
in the same folder: ``adapter_config.json`` + ``adapter_model.safetensors``, often beside the
Trainer's ``trainer_state.json``. The folder is located and its config read when the suite loads
(JSON only: no torch), so a wrong path is a located SuiteError at collection; the weights are
loaded onto the suite's base on first use, into the same TrainedArtifact training produces, so
every check downstream is the same code.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

from peftcheck.errors import PeftcheckError, SuiteError

__all__ = [
    "ADAPTER_CONFIG", "ADAPTER_WEIGHTS", "TRAINER_STATE", "is_artifact", "folder", "merged_folder",
    "read_config", "resolve_artifacts", "logged_loss_curve", "load", "weights_refused",
]  # fmt: skip

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
TRAINER_STATE = "trainer_state.json"
SAVE_HINT = "point `adapter:` at a folder written by save_pretrained (adapter_config.json + adapter_model.safetensors)"


def is_artifact(mspec: Any) -> bool:
    """Whether a method spec names a saved adapter instead of a config to train."""
    return getattr(mspec, "adapter", None) is not None


def _resolve(suite_path: str, value: str) -> Path:
    path = Path(value).expanduser()
    return path if path.is_absolute() else Path(suite_path).parent / path


def folder(suite: Any, method: str) -> Path:
    """The adapter folder of an artifact method (relative paths are relative to the suite file)."""
    return _resolve(suite.path, suite.spec.methods[method].adapter)


def merged_folder(suite: Any, method: str) -> Path | None:
    value = suite.spec.methods[method].merged
    return None if value is None else _resolve(suite.path, value)


def read_config(path: Path) -> dict[str, Any]:
    """adapter_config.json of ``path`` as a dict; a missing folder or file, or bad JSON, is a SuiteError."""
    if not path.is_dir():
        raise SuiteError(f"adapter folder {path} does not exist", hint=SAVE_HINT)
    config = path / ADAPTER_CONFIG
    if not config.is_file():
        files = sorted(p.name for p in path.iterdir())[:8]
        raise SuiteError(f"no {ADAPTER_CONFIG} in {path} (files: {files})", hint=SAVE_HINT)
    try:
        data = json.loads(config.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise SuiteError(f"{config} is not readable JSON: {exc}") from None
    if not isinstance(data, dict) or "peft_type" not in data:
        raise SuiteError(f"{config} has no peft_type: not a PEFT adapter config", hint=SAVE_HINT)
    return data


def weights_refused(path: Path) -> str | None:
    """Why the folder's adapter weights are not loaded: only safetensors are, since a pickled
    ``adapter_model.bin`` can run code when torch unpickles it (issue 26). None where they are."""
    if (path / ADAPTER_WEIGHTS).is_file():
        return None
    pickled = sorted(p.name for p in path.glob("adapter_model*") if p.suffix in (".bin", ".pt", ".pth", ".ckpt"))
    if pickled:
        return (f"{path} holds pickled adapter weights only ({', '.join(pickled)}): peftcheck loads "
                f"{ADAPTER_WEIGHTS} only, since unpickling can run code")  # fmt: skip
    return f"no {ADAPTER_WEIGHTS} in {path}"


def resolve_artifacts(loaded: Any) -> Any:
    """Check every artifact method's folders when the suite loads, and take the base model from
    the adapters' ``base_model_name_or_path`` where the suite names none (all must agree)."""
    spec = loaded.spec

    def located(exc: SuiteError, *parts: str) -> SuiteError:
        return SuiteError(exc.message, file=loaded.path, line=loaded.line_of(*parts), field=".".join(parts),
                          hint=exc.hint)  # fmt: skip

    bases: dict[str, str] = {}
    for name, mspec in spec.methods.items():
        if not is_artifact(mspec):
            continue
        try:
            config = read_config(folder(loaded, name))
        except SuiteError as exc:
            raise located(exc, "methods", name, "adapter") from None
        merged = merged_folder(loaded, name)
        if merged is not None and not (merged / "config.json").is_file():
            raise SuiteError(
                f"merged folder {merged} has no config.json", file=loaded.path,
                line=loaded.line_of("methods", name, "merged"), field=f"methods.{name}.merged",
                hint="point `merged:` at the folder merge_and_unload() + save_pretrained() wrote",
            )  # fmt: skip
        if config.get("base_model_name_or_path"):
            bases[name] = str(config["base_model_name_or_path"])
    if spec.model is not None:
        return loaded
    trained = [name for name, mspec in spec.methods.items() if not is_artifact(mspec)]
    if trained:
        raise SuiteError(
            f"required key is missing: methods {trained} train on it (only a suite whose every method is an "
            "artifact, `adapter:`, may take the base from adapter_config.json)",
            file=loaded.path, line=1, field="model", hint="give `model:`, e.g. model: tiny-llama",
        )  # fmt: skip
    unnamed = [name for name in spec.methods if name not in bases]
    if unnamed:
        raise SuiteError(
            f"the suite has no `model:` and {ADAPTER_CONFIG} of {folder(loaded, unnamed[0])} names no "
            "base_model_name_or_path", file=loaded.path, line=loaded.line_of("methods", unnamed[0], "adapter"),
            field=f"methods.{unnamed[0]}.adapter", hint="give the suite a `model:`",
        )  # fmt: skip
    if len(set(bases.values())) > 1:
        raise SuiteError(
            f"the suite has no `model:` and the adapters name different bases: {bases}", file=loaded.path,
            line=1, field="model", hint="give the suite a `model:`, or put each base's adapters in a suite of their own",
        )  # fmt: skip
    return loaded.model_copy(update={"spec": spec.model_copy(update={"model": next(iter(bases.values()))})})


def logged_loss_curve(path: Path) -> list[tuple[int, float]] | None:
    """(step, loss) from the ``log_history`` of the Trainer's trainer_state.json beside the adapter
    (every HF-Trainer-based trainer writes it), or None when there is none."""
    state = path / TRAINER_STATE
    if not state.is_file():
        return None
    try:
        history = json.loads(state.read_text(encoding="utf-8")).get("log_history") or []
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, AttributeError):
        return None
    curve = []
    for entry in history:  # evaluation and summary entries carry eval_loss / train_loss, not loss
        loss = entry.get("loss") if isinstance(entry, dict) else None
        if isinstance(loss, (int, float)) and math.isfinite(loss):
            curve.append((int(entry.get("step", len(curve))), float(loss)))
    return curve


def _fingerprint(path: Path) -> str:
    """Of the folder's config and weights: the same files give the same baseline key."""
    import hashlib

    digest = hashlib.sha256()
    for name in (ADAPTER_CONFIG, ADAPTER_WEIGHTS):
        if (path / name).is_file():
            digest.update((path / name).read_bytes())
    return digest.hexdigest()[:16]


def load(pipeline: Any, suite: Any, method: str) -> tuple[Any, ...]:
    """The fields of an artifact method's TrainedArtifact after (suite, method), which the pipeline
    builds (cache.py imports this module, not the other way round): the suite's base with the saved adapter loaded
    (``is_trainable=True`` where peft resumes the method, so every check sees the adapter's
    tensors as training left them). A folder peft cannot load is a PeftcheckError naming it:
    adapter_integrity, which reads the folder without loading it, says which tensor is wrong."""
    import copy

    from peftcheck import data as data_mod
    from peftcheck import methods
    from peftcheck.measure import perplexity
    from peftcheck.record import environment
    from peftcheck.train import TrainResult, trainable_snapshot

    from peftcheck.checks.registry import NotApplicable

    started = time.perf_counter()
    spec, mspec, path = suite.spec, suite.spec.methods[method], folder(suite, method)
    if (refused := weights_refused(path)) is not None:  # before anything loads: adapter_integrity reports it
        raise NotApplicable(f"methods.{method}.adapter: {refused}")
    base = pipeline.base(suite, mspec.quantization)
    suite_data = pipeline.data(suite, base.tokenizer)
    collate = data_mod.collator(base.tokenizer)
    try:
        config = methods.read_config(path, backend=mspec.backend)
        resumable = methods.can_resume(config) is None
        model = methods.get_backend(mspec.backend).load(copy.deepcopy(base.training_source), path, trainable=resumable)
    except (RuntimeError, ValueError, KeyError, TypeError, OSError) as exc:  # the folder is the defect
        raise PeftcheckError(
            f"methods.{method}.adapter: peft cannot load {path}: {type(exc).__name__}: "
            f"{str(exc).strip().splitlines()[-1].strip()[:300]} (adapter_integrity names the tensors)"
        ) from None
    config = model.peft_config[model.active_adapter]
    if not resumable:  # prompt learning loads frozen (peft refuses is_trainable): its saved table is the adapter
        for param in model.prompt_encoder.parameters():
            param.requires_grad_(True)
    trainable, total = methods.parameter_counts(model)
    initial = trainable_snapshot(model)
    curve = logged_loss_curve(path) or []
    result = TrainResult(loss_curve=curve, step_times_s=[], train_time_s=0.0, tokens_seen=0,
                         memory_before_mib=0.0, memory_peak_mib=0.0)  # fmt: skip
    metrics: dict[str, dict[str, Any]] = {
        "final_loss": {"value": curve[-1][1] if curve else None, "unit": "nats"},
    }
    if suite_data.eval is not None:
        metrics["eval_perplexity"] = {"value": perplexity(model, suite_data.eval, collate, device=base.device),
                                      "unit": "ppl"}  # fmt: skip
        metrics["base_eval_perplexity"] = {"value": pipeline.base_perplexity(suite, base), "unit": "ppl"}
    peft_type = getattr(config.peft_type, "value", config.peft_type)
    record = {
        "kind": "method", "suite": spec.suite, "suite_file": suite.path, "method": method,
        # "trained" keeps the report and no_regression reading it as a usable method; `artifact` says by whom
        "status": "trained", "error": None, "artifact": str(path), "fingerprint": _fingerprint(path),
        "peft": type(config).__name__, "peft_type": str(peft_type), "backend": "peft",
        "quantization": mspec.quantization, "dtype": spec.dtype, "device": base.device, "loss_curve": curve,
        "step_times_s": [], "train_time_s": None, "tokens_per_s": None, "trainable_params": trainable,
        "total_params": total, "optimizer_hook_calls": 0,
        "model": {"ref": base.source.ref, "source": base.source.source, "real": base.source.real},
        "metrics": metrics, "samples": [], "env": environment(), "prepare_time_s": time.perf_counter() - started,
    }  # fmt: skip
    pipeline.progress(f"peftcheck: {spec.suite}/{method}: loaded {type(config).__name__} from {path}")
    return mspec, base, model, config, suite_data, collate, result, initial, record

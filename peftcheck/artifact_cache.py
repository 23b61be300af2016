"""The content-addressed cache of trained artifacts (issue 14): train once, check anywhere.

An entry is the trained adapter's tensors plus what the training run recorded, stored under the
sha256 of everything that decides what training produces: the base model's files, the tokenized
data (so the tokenizer and the data slice), the method and its built config, the training
arguments and seed, the device class, the library versions and peftcheck's own training code.
An expectation's bounds are not in the key, so changing one reuses the artifact.

The full key is stored beside the entry and compared field by field on read: lm-evaluation-
harness's caches keyed answers without the model and served one model's answers for another
(EleutherAI/lm-evaluation-harness#2715, #4063). A corrupt entry is a warning and a retrain.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import functools
import hashlib
import json
import os
import shutil
import tempfile
import warnings
from collections.abc import Callable, Iterator
from importlib import metadata
from pathlib import Path
from typing import Any, final

__all__ = [
    "ArtifactCache", "CacheWarning", "CachedEntry", "MODES", "RESOURCE_METRICS", "add_cache_option",
    "parse_cache_mode", "model_difference", "restore_configs", "trained_configs",
]  # fmt: skip

MODES = ("off", "read", "write", "on")
ENV = "PEFTCHECK_CACHE"
DEFAULT_MODE = "on"
KEY_SCHEMA = 1
# Resource figures measure this run's machine and load, not the artifact: a hit never reports
# them as measured (they stay in the record's `cache.recorded`, out of `metrics`, so neither
# no_regression nor a baseline update reads them).
RESOURCE_METRICS = ("train_time_s", "tokens_per_s", "peak_rss_mib")
_PACKAGES = (
    "torch", "transformers", "peft", "bitsandbytes", "trl", "accelerate", "datasets", "tokenizers",
    "safetensors", "adapters", "peftcheck",
)  # fmt: skip
# peftcheck's own code between the suite and the trained model: a change to it may change the result
_TRAINING_CODE = ("train.py", "data.py", "models.py", "fixtures.py", "cache.py", "methods.py", "methods", "backends")
_FILES = ("key.json", "meta.json", "adapter.safetensors")


class CacheWarning(UserWarning):
    """An artifact cache entry was unusable (corrupt, tampered, unreadable): retrained instead."""


def parse_cache_mode(value: str) -> str:
    if value not in MODES:
        raise argparse.ArgumentTypeError(f"--peftcheck-cache: got {value!r}, expected one of {', '.join(MODES)}")
    return value


def add_cache_option(add: Any, prefix: str = "--peftcheck-") -> None:
    """``--peftcheck-cache`` for the plugin, ``--cache`` for `peftcheck run` (prefix ``--``)."""
    add(
        f"{prefix}cache",
        dest="peftcheck_cache",
        type=parse_cache_mode,
        default=None,
        metavar="MODE",
        help="cache of trained artifacts and check results under $PEFTCHECK_CACHE_DIR/artifacts: off, read (use entries, "
        "store none), write (always train, store), on (both); default: $PEFTCHECK_CACHE, else on. "
        "Resource checks always measure (README: what is never cached)",
    )


def _canonical(value: Any) -> Any:
    """JSON-ready and order-independent (a set's order changes between processes)."""
    if isinstance(value, dict):
        return {str(k): _canonical(v) for k, v in sorted(value.items(), key=lambda kv: str(kv[0]))}
    if isinstance(value, (set, frozenset)):
        return sorted((_canonical(v) for v in value), key=lambda v: json.dumps(v, sort_keys=True))
    if isinstance(value, (list, tuple)):
        return [_canonical(v) for v in value]
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if hasattr(value, "value") and isinstance(getattr(value, "value"), (str, int)):  # enums
        return value.value
    if hasattr(value, "to_dict"):
        return _canonical(value.to_dict())
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return _canonical(dataclasses.asdict(value))
    return str(value)


def _digest(value: Any) -> str:
    return hashlib.sha256(json.dumps(_canonical(value), sort_keys=True).encode()).hexdigest()


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _files(root: Path) -> list[Path]:
    return [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file() and not p.name.startswith("."))


@functools.lru_cache(maxsize=16)
def _folder_digest(folder: str, stamp: tuple[Any, ...]) -> dict[str, str]:
    """sha256 of every file below ``folder`` (``stamp``: sizes and mtimes, so an edit rehashes)."""
    root = Path(folder)
    return {(str(p.relative_to(root)) if p != root else p.name): _file_sha256(p) for p in _files(root)}


def files_digest(folder: str | Path) -> dict[str, str]:
    """sha256 of a file, or of every file below a folder, hashed once while none changes."""
    root = Path(folder)
    stamp = tuple((str(p), p.stat().st_size, p.stat().st_mtime_ns) for p in _files(root))
    return _folder_digest(str(root.resolve()), stamp)


@functools.lru_cache(maxsize=1)
def _training_code() -> str:
    package = Path(__file__).parent
    files = sorted(
        p for name in _TRAINING_CODE for p in ([package / name] if name.endswith(".py") else (package / name).rglob("*.py"))
        if p.is_file()
    )  # fmt: skip
    return _digest({str(p.relative_to(package)): _file_sha256(p) for p in files})


def _versions() -> dict[str, str | None]:
    import platform

    def version(package: str) -> str | None:
        try:
            return metadata.version(package)
        except metadata.PackageNotFoundError:
            return None

    return {"python": platform.python_version(), **{p: version(p) for p in _PACKAGES}}


def device_class(device: str) -> dict[str, Any]:
    """What decides the kernels a run takes: fp32 training follows another trajectory per CPU
    kind (suites/quotes.yaml's notes), and per thread count in reductions."""
    import torch

    from peftcheck.record import environment

    found: dict[str, Any] = {"device": device, "torch_threads": torch.get_num_threads()}
    if device == "cuda":
        found.update(name=torch.cuda.get_device_name(0), capability=list(torch.cuda.get_device_capability(0)))
    else:  # the CPU model and the flags that select kernels, as the session record has them
        env = environment()
        found.update(cpu=env["cpu_model"], flags=env["cpu_flags"])
    return found


def _rows_digest(dataset: Any) -> str | None:
    return None if dataset is None else _digest(dataset.to_dict())


def model_difference(trained: Any, rebuilt: Any) -> str | None:
    """The first way ``rebuilt`` differs from ``trained`` (structure, tensors, trainable flags,
    peft configs), or None: what a cache hit hands to checks must be the trained model."""
    import torch

    if type(trained) is not type(rebuilt):
        return f"{type(rebuilt).__name__} instead of {type(trained).__name__}"
    for kind in ("named_parameters", "named_buffers"):
        ours, theirs = dict(getattr(trained, kind)()), dict(getattr(rebuilt, kind)())
        if list(ours) != list(theirs):
            extra = sorted(set(ours) ^ set(theirs))
            return f"{kind.removeprefix('named_')} differ: {extra[:3] or 'their order'}"
        for name, tensor in ours.items():
            other = theirs[name]
            if getattr(tensor, "requires_grad", False) != getattr(other, "requires_grad", False):
                return f"{name}: requires_grad {tensor.requires_grad} vs {other.requires_grad}"
            if tensor.shape != other.shape or tensor.dtype != other.dtype:
                return f"{name}: {tuple(tensor.shape)} {tensor.dtype} vs {tuple(other.shape)} {other.dtype}"
            if not torch.equal(tensor.detach().cpu(), other.detach().cpu()):
                return f"{name}: values differ"
    configs = [getattr(m, "peft_config", None) for m in (trained, rebuilt)]
    if configs[0] is not None:
        ours, theirs = (_canonical(dict(c)) for c in configs)
        if ours != theirs:
            fields = sorted({f for a in ours for f in set(ours[a]) ^ set(theirs.get(a, {}))} | {
                f for a in ours for f in ours[a] if ours[a].get(f) != theirs.get(a, {}).get(f)
            })  # fmt: skip
            return f"peft_config differs after training in {fields[:4]} (state a rebuild does not restore)"
    modes = [(n, a.training, b.training) for (n, a), b in zip(trained.named_modules(), rebuilt.modules())]
    if any(a != b for _, a, b in modes):
        name, a, b = next(m for m in modes if m[1] != m[2])
        return f"{name or 'the model'}: training mode {a} vs {b}"
    return None


@contextlib.contextmanager
def _preserved_rng() -> Iterator[None]:
    """Rebuilding a model reseeds; the checks after it should see the RNG training left."""
    import random

    import numpy as np
    import torch

    state = random.getstate(), np.random.get_state(), torch.random.get_rng_state()
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() and torch.cuda.is_initialized() else None
    try:
        yield
    finally:
        random.setstate(state[0])
        np.random.set_state(state[1])
        torch.random.set_rng_state(state[2])
        if cuda is not None:
            torch.cuda.set_rng_state_all(cuda)


@dataclasses.dataclass
class CachedEntry:
    """A verified entry: its folder and what the training run recorded."""

    digest: str
    path: Path
    meta: dict[str, Any]

    def load_into(self, model: Any) -> None:
        """Overwrite ``model``'s trainable tensors (a fresh build of the same method and seed)."""
        import torch
        from safetensors.torch import load_file

        saved = load_file(str(self.path / "adapter.safetensors"))
        trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
        if set(saved) != set(trainable):
            raise ValueError(f"tensors {sorted(set(saved) ^ set(trainable))[:3]} do not match the rebuilt model")
        with torch.no_grad():
            for name, param in trainable.items():
                if saved[name].shape != param.shape:
                    raise ValueError(f"{name}: saved {tuple(saved[name].shape)}, model {tuple(param.shape)}")
                param.copy_(saved[name].to(param.device, param.dtype))
        restore_configs(model, self.meta.get("peft_config") or {})
        model.eval()  # as train_model leaves the trained model


def trained_configs(model: Any) -> dict[str, Any]:
    """The model's peft configs as JSON, per adapter: what training wrote into them is stored."""
    configs = getattr(model, "peft_config", None)
    return {} if configs is None else _canonical({name: c.to_dict() for name, c in configs.items()})


def restore_configs(model: Any, stored: dict[str, Any]) -> None:
    """Sets the config fields whose stored value differs from the rebuilt model's: the state
    training writes there (AdaLoRA's rank_pattern, its budget's masks). model_difference then
    compares the whole config, so a field this cannot restore leaves the method uncached."""
    for name, config in (getattr(model, "peft_config", None) or {}).items():
        for field, value in stored.get(name, {}).items():
            if hasattr(config, field) and _canonical(getattr(config, field)) != value:
                setattr(config, field, value)


@final
@dataclasses.dataclass
class ArtifactCache:
    """Entries under ``root`` (``$PEFTCHECK_CACHE_DIR/artifacts``); ``mode`` off|read|write|on."""

    root: Path
    mode: str = DEFAULT_MODE

    @classmethod
    def from_option(cls, value: str | None) -> "ArtifactCache":
        """The flag, else ``$PEFTCHECK_CACHE``, else on (settings precedence: flag > environment)."""
        from peftcheck.errors import PeftcheckError
        from peftcheck.fixtures import cache_dir

        mode = value or os.environ.get(ENV) or DEFAULT_MODE
        if mode not in MODES:
            raise PeftcheckError(f"${ENV}: got {mode!r}, expected one of {', '.join(MODES)}")
        return cls(cache_dir() / "artifacts" / f"v{KEY_SCHEMA}", mode)

    @classmethod
    def from_config(cls, config: Any) -> "ArtifactCache":
        return cls.from_option(config.getoption("peftcheck_cache", default=None))

    @property
    def reads(self) -> bool:
        return self.mode in ("read", "on")

    @property
    def writes(self) -> bool:
        return self.mode in ("write", "on")

    def key(self, suite: Any, method: str, *, base: Any, data: Any, config: Any) -> dict[str, Any]:
        """Everything that decides what training ``method`` produces; bounds are not in it."""
        spec, mspec = suite.spec, suite.spec.methods[method]
        source = base.source
        model = (
            {"files": files_digest(source.path)} if source.path
            else {"synthetic_config": source.synthetic_config}
        )  # fmt: skip
        return _canonical({
            "schema": KEY_SCHEMA,
            "model": {"ref": source.ref, "dtype": spec.dtype, "quantization": mspec.quantization,
                      "trust_remote_code": spec.trust_remote_code, **model},
            "data": {"train_rows": _rows_digest(data.train), "eval_rows": _rows_digest(data.eval),
                     "eval_texts": _digest(data.eval_texts), "max_length": spec.data.max_length},
            "method": mspec.model_dump(exclude={"expect", "markers", "reference_for", "train"}),
            "config": config,
            "train": spec.train_args(method),
            "device": device_class(base.device),
            "versions": _versions(),
            "code": _training_code(),
        })  # fmt: skip

    def _folder(self, key: dict[str, Any]) -> tuple[str, Path]:
        digest = _digest(key)
        return digest, self.root / digest[:2] / digest

    def lookup(self, key: dict[str, Any]) -> tuple[CachedEntry | None, str | None]:
        """(the entry, None), (None, None) where there is none, or (None, a warning) for a bad one."""
        digest, folder = self._folder(key)
        if not folder.exists():
            return None, None
        try:
            manifest = json.loads((folder / "manifest.json").read_text(encoding="utf-8"))
            stored = json.loads((folder / "key.json").read_text(encoding="utf-8"))
            if stored != key:  # the digest matched but the key did not: never serve it
                fields = sorted(f for f in set(key) | set(stored) if key.get(f) != stored.get(f))
                raise ValueError(f"its stored key differs from this run's in {fields}")
            for name in _FILES:
                path, want = folder / name, manifest["files"][name]
                if path.stat().st_size != want["size"] or _file_sha256(path) != want["sha256"]:
                    raise ValueError(f"{name} is not the file written ({path.stat().st_size} of {want['size']} bytes)")
            meta = json.loads((folder / "meta.json").read_text(encoding="utf-8"))
        except (OSError, ValueError, KeyError, TypeError) as exc:
            return None, self.warn(f"artifact cache entry {folder} is unusable ({type(exc).__name__}: {exc}); retraining")
        return CachedEntry(digest, folder, meta), None

    def warn(self, message: str) -> str:
        warnings.warn(message, CacheWarning, stacklevel=3)
        return message

    def store(
        self,
        key: dict[str, Any],
        *,
        model: Any,
        initial: dict[str, Any],
        meta: dict[str, Any],
        rebuild: Callable[[], tuple[Any, dict[str, Any]]],
    ) -> dict[str, Any]:
        """Write an entry, atomically, if a rebuild loaded from it is the trained model; returns
        the record's ``cache`` field (stored or not, and why not)."""
        from safetensors.torch import save_file

        digest, folder = self._folder(key)
        tensors = {n: p.detach().cpu().contiguous().clone() for n, p in model.named_parameters() if p.requires_grad}
        folder.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{digest[:12]}-", dir=folder.parent))
        try:
            save_file(tensors, str(tmp / "adapter.safetensors"))
            (tmp / "key.json").write_text(json.dumps(key, sort_keys=True, indent=1), encoding="utf-8")
            (tmp / "meta.json").write_text(json.dumps(_canonical(meta), sort_keys=True), encoding="utf-8")
            files = {n: {"size": (tmp / n).stat().st_size, "sha256": _file_sha256(tmp / n)} for n in _FILES}
            (tmp / "manifest.json").write_text(json.dumps({"files": files}, indent=1), encoding="utf-8")
            with _preserved_rng():  # the reload a hit would do, from the files just written
                rebuilt, rebuilt_initial = rebuild()
                CachedEntry(digest, tmp, meta).load_into(rebuilt)
                why = model_difference(model, rebuilt) or _initial_difference(initial, rebuilt_initial)
            del rebuilt
            if why is not None:
                return {"key": digest, "stored": False, "reason": f"not cached: a reload is not the trained model: {why}"}
            if folder.exists():  # a corrupt entry, found on read: replaced
                shutil.rmtree(folder, ignore_errors=True)
            try:
                os.replace(tmp, folder)
            except OSError:  # another process stored the same key first: keep theirs
                if not (folder / "manifest.json").exists():
                    raise
            return {"key": digest, "stored": True, "entry": str(folder)}
        finally:
            shutil.rmtree(tmp, ignore_errors=True)


def _initial_difference(initial: dict[str, Any], rebuilt: dict[str, Any]) -> str | None:
    import torch

    if set(initial) != set(rebuilt):
        return "the rebuilt adapter has other trainable tensors at init"
    for name, tensor in initial.items():
        if not torch.equal(tensor, rebuilt[name]):
            return f"{name}: the seed does not reproduce the adapter's initial values"
    return None

"""The content-addressed cache of trained artifacts (issue 14): train once, check anywhere.

An entry is the trained adapter's tensors plus what the training run recorded, stored under the
sha256 of everything that decides what training produces: the base model's files, the tokenized
data (so the tokenizer and the data slice), the method and its built config, the training
arguments and seed, the device class, the libraries' versions (their sources where a version does
not name them: editable, VCS or local installs), peftcheck's own code and the pytest plugins and
conftest files the run loaded (issue 26). An expectation's bounds are not in the key, so changing
one reuses the artifact.

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
import sys
import tempfile
import types
import warnings
from collections.abc import Callable, Iterator
from importlib import metadata
from pathlib import Path
from typing import Any, final

__all__ = [
    "ArtifactCache", "CacheWarning", "CachedEntry", "MODES", "RESOURCE_METRICS", "add_cache_option", "code_digest",
    "installed_code", "parse_cache_mode", "plugins_code", "model_difference", "restore_configs", "trained_configs",
]  # fmt: skip

MODES = ("off", "read", "write", "on")
ENV = "PEFTCHECK_CACHE"
DEFAULT_MODE = "on"
KEY_SCHEMA = 2
# Resource figures measure this run's machine and load, not the artifact: a hit never reports
# them as measured (they stay in the record's `cache.recorded`, out of `metrics`, so neither
# no_regression nor a baseline update reads them).
RESOURCE_METRICS = ("train_time_s", "tokens_per_s", "peak_rss_mib")
_PACKAGES = (
    "torch", "transformers", "peft", "bitsandbytes", "trl", "accelerate", "datasets", "tokenizers",
    "safetensors", "adapters", "peftcheck",
)  # fmt: skip
# peftcheck's modules that cannot change a trained artifact (issue 26): they render or merge records
# after a run, turn a command line into pytest's arguments, or generate property tests' inputs, and
# a process that loads and trains a suite imports none of them (tests/unit/test_cache_code_key.py).
# Every other .py file of the package is in the key: walking the package, not the import graph, as
# training imports lazily (a backend, a trainer) and sys.modules varies from run to run.
_NOT_TRAINING = ("report", "matrix.py", "findings.py", "cli.py", "strategies.py", "_strategies")
# pytest's own plugins and peftcheck's are not keyed as plugins: peftcheck's code is the key's "code"
_UNKEYED_PLUGINS = ("_pytest", "peftcheck", "builtins")
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


def code_digest(package: Path, *, exclude: tuple[str, ...] = ()) -> str:
    """sha256 of every .py file below ``package`` but the top-level names in ``exclude``; a name
    the package lacks raises: the list must say what it leaves out (issue 26)."""
    if missing := [name for name in exclude if not (package / name).exists()]:
        raise LookupError(f"{package}: excluded {missing}, which it does not hold; remove them from the exclusion")
    files = sorted(p for p in package.rglob("*.py") if p.relative_to(package).parts[0] not in exclude)
    return _digest({p.relative_to(package).as_posix(): _file_sha256(p) for p in files})


@functools.lru_cache(maxsize=1)
def _training_code() -> str:
    return code_digest(Path(__file__).parent, exclude=_NOT_TRAINING)


def _direct_url(dist: Any) -> str | None:
    """How ``dist`` was installed where not from an index (PEP 610's direct_url.json): editable,
    vcs, local or url; None for an index release."""
    text = dist.read_text("direct_url.json")
    if not text:
        return None
    try:
        info = json.loads(text)
    except ValueError:
        return "unreadable direct_url.json"
    if (info.get("dir_info") or {}).get("editable"):
        return "editable"
    if "vcs_info" in info:
        return "vcs"
    return "local" if str(info.get("url", "")).startswith("file:") else "url"


def _import_roots(module: str) -> list[Path]:
    """Where ``module`` imports from, without importing it: a package's folders or a module's file."""
    import importlib.util

    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):  # a broken parent, or a module set up without a spec
        return []
    if spec is None:
        return []
    if spec.submodule_search_locations:
        return [Path(p) for p in spec.submodule_search_locations]
    return [Path(spec.origin)] if spec.origin and Path(spec.origin).is_file() else []


@functools.lru_cache(maxsize=None)
def installed_code(dist_name: str, module: str) -> Any:
    """What names an installed distribution's code: the version of an index release, else the
    sha256 of the .py files ``module`` imports from (issue 26): an editable, VCS or local install
    keeps one version for different code. Once per process: transformers' 2,951 files take 0.2-0.6 s."""
    try:
        dist = metadata.distribution(dist_name)
    except metadata.PackageNotFoundError:
        return None
    how = _direct_url(dist)
    if how is None:
        return dist.version
    roots = _import_roots(module)
    files = [(root.parent, p) for root in roots for p in ([root] if root.is_file() else sorted(root.rglob("*.py")))]
    sources = _digest({p.relative_to(base).as_posix(): _file_sha256(p) for base, p in files}) if files else None
    return {"version": dist.version, "installed": how, "sources": sources}


def _versions() -> dict[str, Any]:
    import platform

    found = {p: installed_code(p, p) for p in _PACKAGES if p != "peftcheck"}
    try:  # its version only: its code is the key's "code" (its sources would be every module)
        own = metadata.version("peftcheck")
    except metadata.PackageNotFoundError:
        own = None
    return {"python": platform.python_version(), **found, "peftcheck": own}


@functools.lru_cache(maxsize=1)
def _distributions() -> dict[str, list[str]]:
    return metadata.packages_distributions()


def _references(module: types.ModuleType) -> list[types.ModuleType]:
    """The modules ``module``'s globals hold, or define its functions and classes in: a conftest's
    ``from patches import scaled`` brings patches.py into the key."""
    found = []
    for value in list(vars(module).values()):
        if isinstance(value, types.ModuleType):
            found.append(value)
        elif isinstance(value, (type, types.FunctionType)) and (owner := sys.modules.get(value.__module__)):
            found.append(owner)
    return found


def _stdlib(module: types.ModuleType) -> bool:
    import sysconfig

    if module.__name__.partition(".")[0] not in sys.stdlib_module_names:
        return False
    path = getattr(module, "__file__", None)  # a local test/ package shares the stdlib's name
    roots = [Path(sysconfig.get_paths()[k]).resolve() for k in ("stdlib", "platstdlib")]
    return not path or any(Path(path).resolve().is_relative_to(root) for root in roots)


def plugins_code(manager: Any, rootpath: Path) -> dict[str, Any]:
    """The pytest plugins and conftest files a run loaded, and the local modules they reference
    (issue 26): a conftest or plugin that patches peft changes what training and checks produce
    under the same versions. An installed plugin is keyed on its distribution (``installed_code``),
    a local file on its sha256; what has no file to hash is listed under ``unhashable``."""
    owners = {getattr(m, "__name__", None): d.metadata["Name"] for m, d in manager.list_plugin_distinfo()}
    dists: dict[str, Any] = {}
    files: dict[str, str] = {}
    unhashable: set[str] = set()
    pending: list[types.ModuleType] = []
    for _, plugin in manager.list_name_plugin():
        if plugin is None:  # blocked: -p no:NAME
            continue
        module = plugin if isinstance(plugin, types.ModuleType) else sys.modules.get(type(plugin).__module__)
        if module is None:
            unhashable.add(type(plugin).__module__)
        else:
            pending.append(module)
    seen: set[int] = set()  # by identity: conftest files in several folders may share a module name
    while pending:
        module = pending.pop()
        top = module.__name__.partition(".")[0]
        if id(module) in seen or top in _UNKEYED_PLUGINS or top in _PACKAGES:  # _PACKAGES: in "versions"
            continue
        seen.add(id(module))
        dist = owners.get(module.__name__) or next(iter(_distributions().get(top, ())), None)
        path = Path(getattr(module, "__file__", None) or "")
        if dist is not None:
            dists[dist] = installed_code(dist, top)
        elif _stdlib(module) or (not path.is_file() and hasattr(module, "__path__")):  # or a namespace package
            continue
        elif path.is_file():
            try:
                shown = path.resolve().relative_to(rootpath.resolve()).as_posix()
            except ValueError:
                shown = str(path.resolve())
            files[shown] = _file_sha256(path)
            pending.extend(_references(module))
        else:
            unhashable.add(module.__name__)
    return {"dists": dists, "files": files, "unhashable": sorted(unhashable)}


def _uncached(key: dict[str, Any]) -> str | None:
    """Why ``key`` must not be used: a plugin whose code it cannot hold."""
    names = (key.get("plugins") or {}).get("unhashable")
    return f"not cached: the pytest plugins {names} have no source file to hash into the key" if names else None


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
    # the pytest run's plugins_code, taken at the first key (collection has loaded every conftest by
    # then) and kept for the run; None outside pytest
    plugins: Callable[[], dict[str, Any]] | None = None

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
        manager, rootpath = config.pluginmanager, Path(config.rootpath)
        cache = cls.from_option(config.getoption("peftcheck_cache", default=None))
        cache.plugins = functools.cache(lambda: plugins_code(manager, rootpath))
        return cache

    def run_plugins(self) -> dict[str, Any]:
        return self.plugins() if self.plugins is not None else {}

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
            "plugins": self.run_plugins(),
        })  # fmt: skip

    def _folder(self, key: dict[str, Any]) -> tuple[str, Path]:
        digest = _digest(key)
        return digest, self.root / digest[:2] / digest

    def lookup(self, key: dict[str, Any]) -> tuple[CachedEntry | None, str | None]:
        """(the entry, None), (None, None) where there is none, or (None, a warning) for a bad one."""
        if why := _uncached(key):
            return None, self.warn(why)
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
        if why := _uncached(key):
            return {"key": digest, "stored": False, "reason": why}
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

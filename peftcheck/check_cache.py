"""Reused check measurements (issue 14): a check whose measurement is a function of the trained
artifact and its parameters is stored under the artifact's key, the check's name and parameters,
the suite's data, peftcheck's code and the run's pytest plugins and conftest files (issue 26), and
served on the next run instead of measured again.

Never stored: resource checks (they measure this machine and its load), a check that read
another method, the run's options, the method's record or the environment while it ran (a
throughput reference, no_regression), a skip and an error. A hit says so: the check record's
``from_cache``. Entries are plain JSON, the full key inside, compared on read; a bad entry is a
warning and a fresh measurement.
"""

from __future__ import annotations

import dataclasses
import functools
import json
from pathlib import Path
from typing import Any

from peftcheck.artifact_cache import ArtifactCache, _canonical, _digest, code_digest, files_digest
from peftcheck.baseline.store import write_atomic

__all__ = ["CheckCache", "UNCACHED_READS"]

SCHEMA = 1
# what a check may read from its CheckContext that is not a function of the artifact
UNCACHED_READS = ("other", "option", "method_record", "env")


@functools.lru_cache(maxsize=1)
def _package_code() -> str:
    """Any change to peftcheck's code measures again: a check's verdict is its code's."""
    return code_digest(Path(__file__).parent)


def _local_digest(ref: Any, base_dir: Path) -> str | None:
    """The content digest of a file or folder a suite field or parameter names, if it is local."""
    if not isinstance(ref, str) or not ref or len(ref) > 1024:
        return None
    for path in (Path(ref), base_dir / ref):
        try:
            if path.exists():  # hashed once per run while it is unchanged: every check item asks
                return _digest(files_digest(path))
        except OSError:
            return None
    return None


@dataclasses.dataclass
class CheckCache:
    """Check measurements beside the artifact cache (same root and mode)."""

    artifacts: ArtifactCache

    @property
    def root(self) -> Path:
        return self.artifacts.root / "checks"

    def key(self, ctx: Any, check: Any, params: Any, artifact_key: str) -> dict[str, Any]:
        from peftcheck.data import resolve_dataset

        spec = ctx.suite.spec
        base_dir = Path(ctx.suite.path).parent
        data = spec.data.model_dump(mode="json")
        files = {}
        for field in ("dataset", "unrelated"):  # the resolved file's bytes, not only its name
            ref = data.get(field)
            if ref:
                try:
                    files[field] = _local_digest(resolve_dataset(ref, base_dir=base_dir)[1], base_dir)
                except Exception:  # noqa: BLE001 - an unresolvable name: the check itself reports it
                    files[field] = None
        own = params.model_dump(mode="json")
        files.update({f"params.{k}": d for k, v in own.items() if (d := _local_digest(v, base_dir))})
        return _canonical({
            "schema": SCHEMA, "artifact": artifact_key, "check": check.name, "params": own,
            "data": data, "files": files, "code": _package_code(),
            # also in the artifact's key; named here so this key does not lean on that one (issue 26)
            "plugins": _digest(self.artifacts.run_plugins()),
        })  # fmt: skip

    def _path(self, key: dict[str, Any]) -> Path:
        digest = _digest(key)
        return self.root / key["artifact"][:2] / key["artifact"] / f"{key['check']}-{digest[:24]}.json"

    def lookup(self, key: dict[str, Any]) -> dict[str, Any] | None:
        """The stored measurement's fields, or None (none, or a bad entry: a warning)."""
        if not self.artifacts.reads:
            return None
        path = self._path(key)
        if not path.exists():
            return None
        try:
            entry = json.loads(path.read_text(encoding="utf-8"))
            if entry["key"] != key:
                raise ValueError("its stored key differs from this run's")
            return dict(entry["measurement"])
        except (OSError, ValueError, KeyError, TypeError) as exc:
            self.artifacts.warn(f"check cache entry {path} is unusable ({type(exc).__name__}: {exc}); measuring")
            return None

    def store(self, key: dict[str, Any], measurement: dict[str, Any]) -> dict[str, Any] | None:
        """Written atomically; returns the measurement as a hit will read it (tuples as lists), or
        None where it was not stored."""
        if not self.artifacts.writes:
            return None
        try:
            text = json.dumps({"key": key, "measurement": measurement}, sort_keys=True, default=_scalar)
        except (TypeError, ValueError):  # a key JSON cannot hold (a tuple): measured every run
            return None
        write_atomic(self._path(key), text)
        return json.loads(text)["measurement"]


def _scalar(value: Any) -> Any:
    if hasattr(value, "item"):  # numpy / torch scalars
        return value.item()
    raise TypeError(f"{type(value).__name__} is not JSON")

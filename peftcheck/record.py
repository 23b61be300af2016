"""Results records (JSON lines) and the environment/versions provenance they carry."""

from __future__ import annotations

import dataclasses
import datetime as _dt
import functools
import json
import os
import platform
import sys
from importlib import metadata
from pathlib import Path
from typing import Any, TextIO

__all__ = ["ResultsWriter", "environment", "cpu_flags", "read_records", "SCHEMA_VERSION"]

SCHEMA_VERSION = 1
_PACKAGES = ("torch", "transformers", "peft", "bitsandbytes", "accelerate", "datasets", "adapters")


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


# CPU features that change which kernels torch and bitsandbytes run (and so what they compute)
_KERNEL_FLAGS = ("avx2", "avx512f", "avx512_bf16", "avx512_fp16", "amx_bf16", "amx_int8")


@functools.lru_cache(maxsize=4)
def _cpuinfo(path: Path = Path("/proc/cpuinfo")) -> dict[str, str]:
    """The first processor's fields of /proc/cpuinfo, read once per process; empty where there is
    none (not Linux). Callers must not modify the returned dict."""
    fields: dict[str, str] = {}
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return fields
    for line in text.splitlines():
        if not line.strip():
            break
        key, _, value = line.partition(":")
        fields[key.strip()] = value.strip()
    return fields


def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags as Linux names them (``avx512_bf16``); empty where unknown."""
    return frozenset(_cpuinfo().get("flags", "").split())


def environment() -> dict[str, Any]:
    """Versions and machine facts, without importing torch unless it is already imported."""
    env: dict[str, Any] = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "machine": platform.machine(),
        "cpu_count": os.cpu_count(),
        "cpu_model": _cpuinfo().get("model name") or platform.processor() or None,
        "cpu_flags": sorted(cpu_flags().intersection(_KERNEL_FLAGS)),
        "versions": {p: _version(p) for p in _PACKAGES},
    }
    torch = sys.modules.get("torch")
    if torch is not None:
        cuda = torch.cuda.is_available()
        env["device"] = "cuda" if cuda else "cpu"
        env["device_name"] = torch.cuda.get_device_name(0) if cuda else platform.processor() or "cpu"
        env["torch_threads"] = torch.get_num_threads()
    return env


def _jsonable(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return _jsonable(dataclasses.asdict(value))
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, float) and (value != value or value in (float("inf"), float("-inf"))):
        return str(value)  # JSON has no NaN/inf
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if hasattr(value, "item"):  # numpy / torch scalars
        return _jsonable(value.item())
    return str(value)


class ResultsWriter:
    """Appends one JSON object per line and flushes each, so a crashed run keeps what it measured.

    Record kinds: ``session`` (first line: environment), ``method`` (one per trained method:
    loss curve, timings, memory, provenance) and ``check`` (one per check item).
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file: TextIO = self.path.open("w", encoding="utf-8")
        self.write(
            {
                "kind": "session",
                "schema": SCHEMA_VERSION,
                "started": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                "argv": sys.argv,
                "pid": os.getpid(),
                "env": environment(),
            }
        )

    def write(self, record: dict[str, Any]) -> None:
        self._file.write(json.dumps(_jsonable(record), ensure_ascii=False, sort_keys=True) + "\n")
        self._file.flush()

    def close(self) -> None:
        if not self._file.closed:
            self.write({"kind": "end", "env": environment()})
            self._file.close()


def read_records(path: str | Path) -> list[dict[str, Any]]:
    """Read a results file; a truncated last line (a killed run) is skipped with a warning."""
    import warnings

    records = []
    with Path(path).open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                warnings.warn(f"{path}:{number}: skipped a line that is not JSON", stacklevel=2)
    return records

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
from typing import Any, Literal, TextIO

from peftcheck.tested import differences

__all__ = [
    "ResultsWriter", "environment", "cpu_flags", "read_records", "SCHEMA_VERSION",
    "Outcome", "OUTCOMES", "CheckRecord", "MethodRecord", "write_results",
]  # fmt: skip

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
        # decisive packages at another version than constraints.txt pins (issue 24)
        "untested": [d.describe() for d in differences()],
    }
    torch = sys.modules.get("torch")
    if torch is not None:
        cuda = torch.cuda.is_available()
        env["device"] = "cuda" if cuda else "cpu"
        env["device_name"] = torch.cuda.get_device_name(0) if cuda else platform.processor() or "cpu"
        env["torch_threads"] = torch.get_num_threads()
    return env


Outcome = Literal["passed", "failed", "skipped", "error", "xfailed", "xpassed"]
OUTCOMES: tuple[str, ...] = ("passed", "failed", "skipped", "error", "xfailed", "xpassed")


@dataclasses.dataclass
class CheckRecord:
    """One check item's result; the Session alone turns Measurements into these (issue 14)."""

    suite: str
    suite_file: str
    method: str
    check: str
    nodeid: str
    outcome: Outcome
    message: str = ""
    value: float | None = None
    bound: str | None = None
    unit: str | None = None
    details: dict[str, Any] = dataclasses.field(default_factory=dict)
    metrics: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)
    samples: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    xfail: dict[str, Any] | None = None  # {"reason": ...} for xfailed / xpassed
    duration_s: float | None = None
    from_cache: bool = False

    def __post_init__(self) -> None:
        assert self.outcome in OUTCOMES, self.outcome

    def to_dict(self) -> dict[str, Any]:
        return {"kind": "check", **_jsonable(dataclasses.asdict(self))}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "CheckRecord":
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})


@dataclasses.dataclass
class MethodRecord:
    """One (suite, method): trained or failed, with its provenance in ``facts`` (loss curve,
    timings, versions). ``metrics`` holds training's; the Session adds each check's."""

    suite: str
    suite_file: str
    method: str
    status: Literal["trained", "error"]
    error: str | None = None
    metrics: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)
    samples: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    facts: dict[str, Any] = dataclasses.field(default_factory=dict)
    from_cache: bool = False

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        facts = data.pop("facts")
        return {"kind": "method", **_jsonable(facts), **_jsonable(data)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "MethodRecord":
        names = {f.name for f in dataclasses.fields(cls)} - {"facts"}
        own = {k: v for k, v in data.items() if k in names}
        facts = {k: v for k, v in data.items() if k not in names and k != "kind"}
        own.setdefault("metrics", {})
        own["metrics"] = dict(own["metrics"] or {})
        return cls(**own, facts=facts)

    def with_checks(self, checks: "list[CheckRecord]") -> "MethodRecord":
        """A copy holding the metrics and samples of ``checks`` too (in item order)."""
        metrics, samples = dict(self.metrics), list(self.samples)
        for check in checks:
            metrics.update(check.metrics)
            samples = samples or list(check.samples)
        return dataclasses.replace(self, metrics=metrics, samples=samples)


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
    """Appends one JSON object per line, flushed (and with ``sync``, fsynced) as it is written, so
    a run killed at any point keeps every line it wrote (issue 26).

    Record kinds: ``session`` (first line: environment), ``method`` (one per trained method:
    loss curve, timings, memory, provenance), ``check`` (one per check item) and ``end`` (last
    line; a file without one is a run that was killed).
    """

    def __init__(self, path: str | Path, *, session: dict[str, Any] | None = None, sync: bool = False) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.sync = sync
        self._file: TextIO = self.path.open("w", encoding="utf-8")
        self.write(
            {
                "kind": "session",
                "schema": SCHEMA_VERSION,
                "started": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                "argv": sys.argv,
                "pid": os.getpid(),
                "env": environment(),
                **(session or {}),
            }
        )

    def write(self, record: dict[str, Any]) -> None:
        self._file.write(json.dumps(_jsonable(record), ensure_ascii=False, sort_keys=True) + "\n")
        self._file.flush()
        if self.sync:
            os.fsync(self._file.fileno())

    def close(self, end: dict[str, Any] | Literal[False] | None = None) -> None:
        """Closes with an ``end`` record holding ``end``'s fields; ``end=False`` leaves it out."""
        if not self._file.closed:
            if end is not False:
                self.write({"kind": "end", "env": environment(), **(end or {})})
            self._file.close()


def write_results(path: str | Path, records: "list[dict[str, Any]]", *, session: dict[str, Any],
                  end: dict[str, Any] | None = None) -> None:
    """The whole results file at once, from the controlling process only (issue 14): written
    beside ``path`` and moved over it, so a kill while writing leaves the journal whole (issue 26)."""
    path = Path(path)
    partial = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    writer = ResultsWriter(partial, session=session)
    try:
        for record in records:
            writer.write(record)
        writer.close(end)
        with partial.open("rb") as handle:
            os.fsync(handle.fileno())
        os.replace(partial, path)
    finally:
        writer.close(False)
        partial.unlink(missing_ok=True)


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

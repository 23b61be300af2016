"""Clusters of methods that train together, and ``--peftcheck-shard i/N`` over them (issue 14).

A cluster is a method plus every method its checks name (throughput ``reference``,
``memory_footprint.relative_to``, ``peak_memory.reference``, ``co_resident.adapters``,
``reference_for``), closed transitively: the items of one cluster run in one process, so no
method trains twice. xdist's scheduler and the CI shards both split the run along them.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import math
import zlib
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

__all__ = ["Shard", "parse_shard", "clusters", "scope_of", "assign", "merge_shards"]


@dataclasses.dataclass(frozen=True)
class Shard:
    """Shard ``index`` (1-based) of ``count``."""

    index: int
    count: int

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"


def parse_shard(text: str) -> Shard:
    """``2/4`` -> Shard(2, 4); the index counts from 1, as CI matrices do."""
    index, sep, count = text.partition("/")
    try:
        shard = Shard(int(index), int(count))
    except ValueError:
        shard = None
    if not sep or shard is None or not 1 <= shard.index <= shard.count:
        raise argparse.ArgumentTypeError(f"--peftcheck-shard: got {text!r}, expected I/N with 1 <= I <= N, e.g. 1/4")
    return shard


def clusters(loaded: Any) -> dict[str, tuple[str, ...]]:
    """Method -> the sorted methods of its cluster, for one LoadedSuite."""
    from peftcheck.checks.registry import get_check, parse_params

    spec = loaded.spec
    parent = {m: m for m in spec.methods}

    def find(m: str) -> str:
        while parent[m] != m:
            parent[m] = parent[parent[m]]
            m = parent[m]
        return m

    def join(a: str, b: str) -> None:
        if b in parent:
            parent[find(a)] = find(b)

    for method, mspec in spec.methods.items():
        for other in mspec.reference_for:
            join(method, other)
        for name, raw in spec.expectations(method).items():
            try:
                params, _ = parse_params(get_check(name), raw if isinstance(raw, dict) else {})
            except Exception:  # documented boundary: collection reports bad params; here only grouping
                continue
            for names in params.named_methods().values():
                for other in names:
                    join(method, other)
    members: dict[str, list[str]] = {}
    for m in spec.methods:
        members.setdefault(find(m), []).append(m)
    return {m: tuple(sorted(members[find(m)])) for m in spec.methods}


@functools.lru_cache(maxsize=256)
def _file_clusters(path: str, mtime_ns: int) -> dict[tuple[str, str], tuple[str, ...]]:
    """Keyed by modification time too: an edited suite is read again (pytester, long sessions)."""
    from peftcheck.loader import load_suite

    loaded = load_suite(Path(path))
    return {(loaded.spec.suite, m): group for m, group in clusters(loaded).items()}


def scope_of(nodeid: str, rootdir: str | Path) -> str | None:
    """``suites/x.yaml::suite::lora::merge`` -> ``suites/x.yaml::suite::lora+qlora`` (its cluster);
    None for a node that is not a peftcheck check item."""
    parts = nodeid.split("::")
    if len(parts) != 4 or not parts[0].endswith((".yaml", ".yml")):
        return None
    try:
        path = Path(rootdir) / parts[0]
        group = _file_clusters(str(path), path.stat().st_mtime_ns).get((parts[1], parts[2]))
    except Exception:  # documented boundary: a suite that does not load errs at collection, not here
        group = None
    return "::".join([*parts[:2], "+".join(group or (parts[2],))])


def _train_time(store: Any, suite: str, method: str, env: Mapping[str, Any]) -> float | None:
    from peftcheck.baseline import as_float

    match = store.lookup(suite, env) if store is not None else None
    entry = match.method(method) if match is not None else None
    samples = ((entry or {}).get("metrics") or {}).get("train_time_s", {}).get("samples") or []
    values = [v for v in (as_float(s) for s in samples) if v is not None and math.isfinite(v)]
    return sum(values) / len(values) if values else None


def assign(
    items: Sequence[Any], shard: Shard, *, rootdir: str | Path, store: Any = None, env: Mapping[str, Any] | None = None
) -> tuple[list[Any], list[Any]]:
    """(kept, deselected) for ``shard``: whole clusters, balanced by their recorded train time
    (largest first onto the least loaded shard); clusters without a baseline weigh the mean of
    those with one. Other items go by a stable hash of their node id. Every shard computes the
    same partition from the same collection and baselines, so together they cover each item once."""
    groups: dict[str, list[Any]] = {}
    other: list[Any] = []
    for item in items:
        scope = scope_of(item.nodeid, rootdir)
        (groups.setdefault(scope, []) if scope else other).append(item)
    weights: dict[str, float | None] = {}
    for scope in groups:
        _, suite, members = scope.split("::")
        times = [_train_time(store, suite, m, env or {}) for m in members.split("+")]
        weights[scope] = sum(t for t in times if t is not None) if any(t is not None for t in times) else None
    known = [w for w in weights.values() if w is not None]
    fallback = sum(known) / len(known) if known else 1.0
    load = [0.0] * shard.count
    owner: dict[str, int] = {}
    for scope in sorted(groups, key=lambda s: (-(weights[s] if weights[s] is not None else fallback), s)):
        target = min(range(shard.count), key=lambda i: (load[i], i))
        owner[scope] = target
        load[target] += weights[scope] if weights[scope] is not None else fallback
    mine = shard.index - 1
    kept, dropped = [], []
    for item in items:
        scope = scope_of(item.nodeid, rootdir)
        index = owner[scope] if scope else zlib.crc32(item.nodeid.encode()) % shard.count
        (kept if index == mine else dropped).append(item)
    return kept, dropped


def merge_shards(runs: Iterable[tuple[str, Sequence[Mapping[str, Any]]]]) -> list[tuple[str, list[Mapping[str, Any]]]]:
    """Results files of one sharded run (same shard count and environment) as one run; other
    files stay runs of their own (a nox matrix compares them side by side)."""
    from peftcheck.baseline import env_key

    merged: dict[tuple[int, str], tuple[list[str], list[Mapping[str, Any]]]] = {}
    result: list[tuple[str, list[Mapping[str, Any]]]] = []
    for source, records in runs:
        session = next((r for r in records if r.get("kind") == "session"), {})
        shard = session.get("shard")
        if not isinstance(shard, Mapping):
            result.append((source, list(records)))
            continue
        key = (int(shard.get("count", 0)), env_key(session.get("env") or {}))
        if key not in merged:
            merged[key] = ([], [])
            result.append((f"shards of {key[0]}", merged[key][1]))  # filled in below
            merged[key][1].append({**session, "shard": None, "merged": []})
        sources, into = merged[key]
        sources.append(source)
        into[0]["merged"].append({"source": source, "shard": f"{shard.get('index')}/{shard.get('count')}"})  # type: ignore[index]
        into.extend(r for r in records if r.get("kind") in ("method", "check"))
    for (count, _), (sources, into) in merged.items():
        into.append({"kind": "end", "env": into[0].get("env")})
        index = next(i for i, (name, recs) in enumerate(result) if recs is into)
        result[index] = (" + ".join(sources), into)
    return result

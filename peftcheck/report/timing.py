"""Where a run's time went (issue 17): per method, per suite and the slowest items, from records."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from peftcheck.baseline import as_float

__all__ = ["MethodTiming", "SuiteTiming", "SlowItem", "SLOWEST", "seconds", "method_timing", "suite_timing",
           "slowest"]

SLOWEST = 10  # items in the report's list of the slowest


@dataclasses.dataclass(frozen=True)
class MethodTiming:
    """A method's item time; its first item also pays the preparation."""

    method: str
    prepare_s: float | None  # adapter, training, evaluations before and after; older files lack it
    train_s: float | None  # Trainer's loop, a part of prepare_s
    checks_s: float | None  # total_s less prepare_s: unknown where prepare_s is
    total_s: float  # the method's items, as pytest timed their calls


@dataclasses.dataclass(frozen=True)
class SuiteTiming:
    """A suite's time: each figure summed over the methods that know it."""

    prepare_s: float | None
    train_s: float | None
    checks_s: float | None
    total_s: float
    slowest: MethodTiming | None  # the method whose items took longest; None where none was timed

    def share(self, timing: MethodTiming) -> float | None:
        return timing.total_s / self.total_s if self.total_s > 0 else None


@dataclasses.dataclass(frozen=True)
class SlowItem:
    """One of the slowest items; ``run`` is named only where the report has several runs."""

    nodeid: str
    seconds: float
    outcome: str
    anchor: str
    run: str | None = None


def seconds(value: Any) -> float | None:
    """A duration from a record; None where it is missing or no duration (NaN, negative)."""
    number = as_float(value)
    return number if number is not None and math.isfinite(number) and number >= 0 else None


def method_timing(name: str, record: Mapping[str, Any], durations: Iterable[float | None]) -> MethodTiming:
    """From the method record and its items' durations."""
    total = sum(d for d in durations if d is not None)
    prepare = seconds(record.get("prepare_time_s"))
    # clamped: a retrained (evicted) method's record keeps only its first preparation
    checks = None if prepare is None else max(0.0, total - prepare)
    return MethodTiming(name, prepare, seconds(record.get("train_time_s")), checks, total)


def _known(values: Iterable[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return sum(known) if known else None


def suite_timing(timings: Sequence[MethodTiming]) -> SuiteTiming:
    top = max(timings, key=lambda t: t.total_s, default=None)
    return SuiteTiming(
        _known(t.prepare_s for t in timings), _known(t.train_s for t in timings),
        _known(t.checks_s for t in timings), sum(t.total_s for t in timings),
        top if top is not None and top.total_s > 0 else None,
    )  # fmt: skip


def slowest(items: Iterable[SlowItem], n: int = SLOWEST) -> list[SlowItem]:
    """The ``n`` longest, longest first; equal times keep the run's order."""
    return sorted(items, key=lambda item: -item.seconds)[:n]

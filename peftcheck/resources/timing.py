"""Speed judged as ratios measured in the same run: interleaved rounds, median of ratios.

Neighbours on a shared machine slow every arm of a round alike, so the ratio within one round
is far steadier than any one time; the median over rounds drops the rounds a burst hit unevenly.
The order of the arms rotates each round so warm caches favour none. While a caller says the
result is undecided (an interval straddles a bound), more rounds are taken, up to a limit.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import math
import statistics
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

__all__ = ["Timings", "interleaved", "median_interval", "torch_threads"]


def median_interval(values: Sequence[float], *, z: float = 1.96) -> tuple[float, float]:
    """Distribution-free ~95% confidence interval of the median (order statistics)."""
    ordered = sorted(values)
    n = len(ordered)
    k = max(0, math.floor((n - z * math.sqrt(n)) / 2))
    return ordered[k], ordered[n - 1 - k]


@contextlib.contextmanager
def torch_threads(count: int | None) -> Iterator[None]:
    """torch's intra-op threads set to ``count`` (None: unchanged) for the block, then restored.

    On a shared CPU one thread is far steadier: with two, each op waits for the slower thread,
    which a neighbour may have descheduled (tiny-opt forwards measured 3 to 100 ms that way)."""
    import torch

    before = torch.get_num_threads()
    if count is not None:
        torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@dataclasses.dataclass
class Timings:
    """Seconds per round of every arm (each sample is ``inner`` calls)."""

    times: dict[str, list[float]]
    inner: int

    @property
    def rounds(self) -> int:
        return len(next(iter(self.times.values())))

    def ratios(self, arm: str, reference: str, *, scale: float = 1.0, invert: bool = False) -> list[float]:
        """Per-round ``arm / reference`` times (or ``reference / arm`` with ``invert``), scaled."""
        pairs = zip(self.times[arm], self.times[reference])
        return [scale * (r / a if invert else a / r) for a, r in pairs]

    def per_call_s(self, arm: str) -> float:
        return statistics.median(self.times[arm]) / self.inner

    def summary(self, arm: str, reference: str, **kwargs: Any) -> dict[str, Any]:
        ratios = self.ratios(arm, reference, **kwargs)
        lo, hi = median_interval(ratios)
        return {
            "ratio_median": statistics.median(ratios), "ratio_ci95": [lo, hi], "rounds": len(ratios),
            "ratios": [round(r, 4) for r in ratios],
        }  # fmt: skip


def _time(func: Callable[[], Any], inner: int) -> float:
    started = time.perf_counter()
    for _ in range(inner):
        func()
    return time.perf_counter() - started


def interleaved(
    arms: dict[str, Callable[[], Any]],
    *,
    rounds: int,
    warmup: int = 1,
    max_rounds: int | None = None,
    undecided: Callable[[Timings], bool] | None = None,
    min_sample_s: float = 0.02,
) -> Timings:
    """Time every arm once per round, in an order that rotates each round.

    Each sample repeats a call until it lasts about ``min_sample_s`` (timer resolution and
    scheduler ticks). After ``rounds``, rounds are added while ``undecided(timings)`` holds,
    up to ``max_rounds``."""
    names = list(arms)
    for _ in range(warmup):
        for func in arms.values():
            func()
    single = statistics.median(min(_time(f, 1) for f in arms.values()) for _ in range(3))
    timings = Timings({name: [] for name in names}, max(1, math.ceil(min_sample_s / max(single, 1e-9))))
    limit = max(max_rounds or rounds, rounds)
    enabled = gc.isenabled()
    gc.collect()
    gc.disable()
    try:
        while True:
            for _ in range(rounds):
                shift = timings.rounds % len(names)
                for name in names[shift:] + names[:shift]:
                    timings.times[name].append(_time(arms[name], timings.inner))
            if undecided is None or not undecided(timings) or timings.rounds + rounds > limit:
                return timings
    finally:
        if enabled:
            gc.enable()

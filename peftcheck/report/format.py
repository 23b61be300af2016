"""How numbers, deltas and outcomes read in the report (shared by the HTML and Markdown renderers)."""

from __future__ import annotations

import math

from peftcheck.progress import format_seconds

__all__ = ["number", "signed", "percent", "duration", "share", "SYMBOLS", "STATUS_SYMBOLS"]

SYMBOLS = {
    "passed": "✓",
    "failed": "✗",
    "error": "!",
    "skipped": "–",
    "xfailed": "x",
    "xpassed": "X",
}
STATUS_SYMBOLS = {
    "regressed": "▲ regressed",
    "improved": "▼ improved",
    "unchanged": "= unchanged",
    "changed": "≠ changed",
    "new": "new",
    "missing": "missing",
    "not_compared": "not compared",
}


def number(value: float | None, unit: str | None = None) -> str:
    """4 significant digits, thousands separated, the unit after it: ``1,234 tokens/s``."""
    if value is None:
        return "—"
    if math.isnan(value) or math.isinf(value):
        text = str(value)
    elif value == 0:
        text = "0"
    elif abs(value) >= 1e15 or abs(value) < 1e-3:
        text = f"{value:.3e}"
    elif abs(value) >= 1000:
        text = f"{value:,.0f}"
    else:
        text = f"{value:.4g}"
    return f"{text} {unit}" if unit and unit != "ratio" else text


def signed(value: float | None) -> str:
    if value is None:
        return ""
    return ("+" if value > 0 else "") + number(value) if value else "±0"


def percent(value: float | None) -> str:
    if value is None or math.isnan(value):
        return ""
    return f"{value:+.1%}"


def duration(value: float | None) -> str:
    """``4.2s``, ``3m07s``, ``1h05m``: as the terminal's progress lines say it; ``—`` where unknown."""
    if value is None or not math.isfinite(value):
        return "—"
    return "<0.1s" if 0 < value < 0.05 else format_seconds(value)  # not "0.0s": it did take time


def share(value: float | None) -> str:
    """A part of a whole: ``62%``, ``<1%`` for a part too small to round to one."""
    if value is None or math.isnan(value):
        return "—"
    return "<1%" if 0 < value < 0.005 else f"{value:.0%}"

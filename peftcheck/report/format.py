"""How numbers, deltas and outcomes read in the report (shared by the HTML and Markdown renderers)."""

from __future__ import annotations

import math

__all__ = ["number", "signed", "percent", "SYMBOLS", "STATUS_SYMBOLS"]

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

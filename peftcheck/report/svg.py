"""Inline SVG plots (loss curves, bars) built as escaped markup: no plotting library, no network."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

from markupsafe import Markup, escape

from peftcheck.report.format import number

__all__ = ["BarRow", "loss_chart", "bar_chart", "COLORS"]

COLORS = {
    "current": "#2563eb",
    "baseline": "#6b7280",
    "regressed": "#dc2626",
    "improved": "#16a34a",
    "unchanged": "#2563eb",
    "changed": "#d97706",
    "new": "#2563eb",
    "missing": "#9ca3af",
    "not_compared": "#2563eb",
}


def _range(values: Sequence[float]) -> tuple[float, float]:
    low, high = min(values), max(values)
    if low == high:
        pad = abs(low) * 0.05 or 0.5
        return low - pad, high + pad
    pad = (high - low) * 0.05
    return low - pad, high + pad


def _finite(points: Sequence[tuple[float, float]] | None) -> list[tuple[float, float]]:
    return [(x, y) for x, y in points or () if math.isfinite(x) and math.isfinite(y)]


def loss_chart(
    curve: Sequence[tuple[float, float]],
    baseline: Sequence[tuple[float, float]] | None = None,
    *,
    label: str = "loss",
    width: int = 360,
    height: int = 190,
) -> Markup:
    """Training loss per step, the baseline's curve dashed behind it."""
    now, then = _finite(curve), _finite(baseline)
    if not now and not then:
        return Markup('<p class="empty">no loss curve recorded</p>')
    left, right, top, bottom = 52, 10, 22, 26
    xs = [x for x, _ in now + then]
    ys = [y for _, y in now + then]
    x0, x1 = (min(xs), max(xs)) if min(xs) != max(xs) else (min(xs) - 1, max(xs) + 1)
    y0, y1 = _range(ys)

    def px(x: float) -> float:
        return left + (x - x0) / (x1 - x0) * (width - left - right)

    def py(y: float) -> float:
        return top + (y1 - y) / (y1 - y0) * (height - top - bottom)

    def line(points: list[tuple[float, float]], css: str) -> str:
        if len(points) == 1:
            x, y = points[0]
            return f'<circle class="{css}" cx="{px(x):.1f}" cy="{py(y):.1f}" r="2.5"/>'
        coords = " ".join(f"{px(x):.1f},{py(y):.1f}" for x, y in points)
        return f'<polyline class="{css}" points="{coords}"/>'

    parts = [
        f'<svg class="chart loss" xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" role="img" aria-label="{escape(label)}">',
        f"<title>{escape(label)}</title>",
    ]
    for i in range(4):
        value = y0 + (y1 - y0) * i / 3
        parts.append(
            f'<line class="grid" x1="{left}" x2="{width - right}" y1="{py(value):.1f}" y2="{py(value):.1f}"/>'
            f'<text class="tick" x="{left - 4}" y="{py(value) + 3:.1f}" text-anchor="end">{escape(number(value))}</text>'
        )
    parts.append(
        f'<text class="tick" x="{left}" y="{height - 8}">step {escape(number(x0))}</text>'
        f'<text class="tick" x="{width - right}" y="{height - 8}" text-anchor="end">{escape(number(x1))}</text>'
    )
    if then:
        parts.append(line(then, "baseline-line"))
    if now:
        parts.append(line(now, "current-line"))
    legend = ([("current-line", "this run")] if now else []) + ([("baseline-line", "baseline")] if then else [])
    for i, (css, text) in enumerate(legend):
        x = left + i * 90
        parts.append(
            f'<line class="{css}" x1="{x}" x2="{x + 18}" y1="10" y2="10"/>'
            f'<text class="legend" x="{x + 22}" y="14">{escape(text)}</text>'
        )
    parts.append("</svg>")
    return Markup("".join(parts))


@dataclasses.dataclass(frozen=True)
class BarRow:
    """One method's value of a metric, its baseline, and how it compares."""

    label: str
    value: float | None
    baseline: float | None = None
    status: str = "unchanged"


def bar_chart(rows: Sequence[BarRow], *, title: str, unit: str | None = None, width: int = 480) -> Markup:
    """Horizontal bars, one per method; the baseline is the outlined bar behind each."""
    values = [v for r in rows for v in (r.value, r.baseline) if v is not None and math.isfinite(v)]
    if not values:
        return Markup("")
    label_w, value_w, row_h, top = 110, 190, 22, 24
    area = width - label_w - value_w
    scale = max(max(values), 0.0) or 1.0
    height = top + row_h * len(rows) + 6
    parts = [
        f'<svg class="chart bars" xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" role="img" aria-label="{escape(title)}">',
        f"<title>{escape(title)}</title>",
        f'<text class="chart-title" x="0" y="14">{escape(title)}</text>',
    ]
    for i, row in enumerate(rows):
        y = top + i * row_h
        parts.append(
            f'<text class="bar-label" x="{label_w - 6}" y="{y + 14}" text-anchor="end">{escape(row.label)}</text>'
        )
        if row.baseline is not None and math.isfinite(row.baseline):
            w = max(row.baseline, 0.0) / scale * area
            parts.append(f'<rect class="baseline-bar" x="{label_w}" y="{y + 2}" width="{w:.1f}" height="{row_h - 6}"/>')
        text = number(row.value, unit)
        if row.value is not None and math.isfinite(row.value):
            w = max(row.value, 0.0) / scale * area
            color = COLORS.get(row.status, COLORS["current"])
            parts.append(
                f'<rect class="bar {escape(row.status)}" x="{label_w}" y="{y + 5}" width="{w:.1f}" '
                f'height="{row_h - 12}" fill="{color}"/>'
            )
        if row.baseline is not None:
            text += f" (was {number(row.baseline)})"
        parts.append(f'<text class="bar-value" x="{label_w + area + 6}" y="{y + 14}">{escape(text)}</text>')
    parts.append("</svg>")
    return Markup("".join(parts))

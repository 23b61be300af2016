"""Inline SVG plots (peftcheck.report.svg)."""

from __future__ import annotations

import math
import xml.etree.ElementTree as ET

from peftcheck.report.svg import BarRow, bar_chart, loss_chart

SVG = "{http://www.w3.org/2000/svg}"


def test_loss_chart_draws_this_run_over_the_baseline() -> None:
    svg = ET.fromstring(str(loss_chart([(1, 3.0), (2, 2.5), (3, 2.0)], [(1, 3.0), (3, 1.5)], label="loss")))
    lines = {p.get("class"): p.get("points") for p in svg.iter(f"{SVG}polyline")}
    assert set(lines) == {"current-line", "baseline-line"}
    assert len(lines["current-line"].split()) == 3


def test_loss_chart_edge_cases() -> None:
    assert "no loss curve" in str(loss_chart([], None))
    single = ET.fromstring(str(loss_chart([(5, 1.0)])))
    assert single.find(f"{SVG}circle") is not None
    flat = ET.fromstring(str(loss_chart([(1, math.nan), (2, 2.0), (3, 2.0), (4, math.inf)])))
    assert len(flat.find(f"{SVG}polyline").get("points").split()) == 2  # type: ignore[union-attr]


def test_bar_chart_escapes_labels_and_shows_the_baseline() -> None:
    text = str(bar_chart([BarRow("<b>x</b>", 10.0, 8.0, "regressed"), BarRow("y", None, 5.0)], title="t <i>", unit="MiB"))
    svg = ET.fromstring(text)  # well-formed: the labels did not open elements
    assert "&lt;b&gt;x&lt;/b&gt;" in text and "<b>" not in text
    assert len([r for r in svg.iter(f"{SVG}rect") if r.get("class") == "baseline-bar"]) == 2
    assert "10 MiB (was 8)" in text
    assert str(bar_chart([BarRow("a", None)], title="t")) == ""

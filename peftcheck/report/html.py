"""The HTML renderer: one self-contained page (inline CSS, SVG and script; nothing fetched)."""

from __future__ import annotations

import base64
import functools
import hashlib
import os
from importlib import resources
from pathlib import Path

import jinja2
from markupsafe import Markup

from peftcheck.baseline import MetricSpecs, write_atomic
from peftcheck.report import format as fmt
from peftcheck.report.model import Report, SuiteReport
from peftcheck.report.svg import BarRow, bar_chart, loss_chart

__all__ = ["render_html", "write_html", "suite_bars"]

_TEMPLATES = "templates"


def _asset(name: str) -> str:
    return resources.files("peftcheck.report").joinpath(_TEMPLATES, name).read_text(encoding="utf-8")


@functools.cache
def _environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("peftcheck.report", _TEMPLATES),
        autoescape=True,  # everything from a model, a dataset or a suite is text, never markup
        undefined=jinja2.ChainableUndefined,
        trim_blocks=False,
    )
    env.filters.update(
        number=fmt.number,
        signed=fmt.signed,
        percent=fmt.percent,
        duration=fmt.duration,
        share=fmt.share,
        symbol=lambda outcome: fmt.SYMBOLS.get(outcome, "?"),
        status_symbol=lambda status: fmt.STATUS_SYMBOLS.get(status, status),
    )
    env.globals.update(loss_chart=loss_chart, suite_bars=suite_bars)
    return env


def suite_bars(suite: SuiteReport) -> list[Markup]:
    """One bar chart per time, memory or throughput metric of the suite (device-bound metrics)."""
    specs = MetricSpecs()
    names: dict[str, str | None] = {}
    for m in suite.methods:
        for c in m.metrics:
            if not specs.spec(c.metric, c.unit).portable:
                names.setdefault(c.metric, c.unit)
    charts = []
    for name, unit in names.items():
        rows = []
        for m in suite.methods:
            c = m.metric(name)
            if c is not None:
                rows.append(BarRow(m.method, c.current, c.baseline, c.status))
        better = specs.spec(name, unit).direction
        title = f"{name}" + (f" ({better} is better)" if better != "none" else "")
        charts.append(bar_chart(rows, title=title, unit=unit))
    return [c for c in charts if c]


def render_html(report: Report) -> str:
    """The report as one HTML document."""
    script = _asset("report.js")
    digest = base64.b64encode(hashlib.sha256(script.encode("utf-8")).digest()).decode("ascii")
    template = _environment().get_template("report.html.j2")
    return template.render(
        report=report,
        css=Markup(_asset("report.css")),  # package files, trusted; inside <style> entities would break
        script=Markup(script),
        script_hash=f"sha256-{digest}",
    )


def write_html(report: Report, path: str | os.PathLike[str]) -> Path:
    """Render and write atomically (a reader never sees half a page)."""
    return write_atomic(Path(path), render_html(report))

"""The Markdown summary: short enough for a pull-request comment, problems first."""

from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import Any

import jinja2

from peftcheck.baseline import write_atomic
from peftcheck.report import format as fmt
from peftcheck.report.model import Report

__all__ = ["render_markdown", "write_markdown", "md_text", "MAX_ROWS"]

MAX_ROWS = 15  # per table; the HTML report has the rest
MAX_TEXT = 180  # characters of one message
MAX_FOLD = 10  # items listed under one group of items with one cause (issue 26); the HTML report lists all
_SPECIAL = str.maketrans({
    "&": "&amp;", "<": "&lt;", ">": "&gt;", "|": "\\|", "`": "\\`", "[": "\\[", "]": "\\]",
    "*": "\\*", "\\": "\\\\", "\r": " ", "\n": " ",
})


def md_text(value: Any) -> str:
    """Text as inert Markdown: no HTML, no links, no table breaks, on one line."""
    if value is None:
        return ""
    text = str(value)
    if len(text) > MAX_TEXT:
        text = text[: MAX_TEXT - 1] + "…"
    return text.translate(_SPECIAL)


class _Trusted(str):
    """Markdown the template builds itself (links to anchors); not escaped again."""


def _finalize(value: Any) -> str:
    return value if isinstance(value, _Trusted) else md_text(value)


@functools.cache
def _environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("peftcheck.report", "templates"),
        autoescape=False,
        finalize=_finalize,  # every {{ }} goes through md_text: the summary is read on GitHub
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )
    env.filters.update(
        number=fmt.number,
        signed=fmt.signed,
        percent=fmt.percent,
        duration=fmt.duration,
        share=fmt.share,
        symbol=lambda outcome: fmt.SYMBOLS.get(outcome, "?"),
        status_symbol=lambda status: fmt.STATUS_SYMBOLS.get(status, status),
        trusted=_Trusted,  # a macro's output: its own {{ }} went through md_text already
    )
    return env


def render_markdown(report: Report, *, html_path: str | None = None) -> str:
    """The summary; ``html_path`` is named as where the full report is."""
    template = _environment().get_template("summary.md.j2")
    return template.render(report=report, html_path=html_path, max_rows=MAX_ROWS, max_fold=MAX_FOLD)


def write_markdown(report: Report, path: str | os.PathLike[str], *, html_path: str | None = None) -> Path:
    return write_atomic(Path(path), render_markdown(report, html_path=html_path))

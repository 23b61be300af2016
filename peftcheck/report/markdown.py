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
    )
    return env


# one line per suite (issue 17); kept here, rendered with the same escaping as the summary
_TIME_LINES = """\
{% for suite in timed[:max_rows] %}
- **{{ suite.title }}** took {{ suite.timing.total_s|duration }}; slowest method: \
{{ suite.timing.slowest.method }} ({{ suite.timing.slowest.total_s|duration }}, \
{{ suite.timing.share(suite.timing.slowest)|share }})
{% endfor %}
{% if timed|length > max_rows %}
- …and {{ timed|length - max_rows }} more suite run(s) in the HTML report
{% endif %}
"""


def render_markdown(report: Report, *, html_path: str | None = None) -> str:
    """The summary; ``html_path`` is named as where the full report is."""
    env = _environment()
    text = env.get_template("summary.md.j2").render(report=report, html_path=html_path, max_rows=MAX_ROWS)
    timed = [s for s in report.suites if s.timing.slowest is not None]
    if not timed:
        return text
    lines = env.from_string(_TIME_LINES).render(timed=timed, max_rows=MAX_ROWS)
    body, _, hint = text.rpartition("\n\n")  # the hint is the last paragraph, on one line
    return f"{body}\n\n{lines}\n{hint}"


def write_markdown(report: Report, path: str | os.PathLike[str], *, html_path: str | None = None) -> Path:
    return write_atomic(Path(path), render_markdown(report, html_path=html_path))

"""The report and baseline options, written once for the pytest plugin and the CLI."""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

__all__ = [
    "UPDATE_MODES",
    "add_options",
    "parse_output_path",
    "output_path",
    "parse_baseline_dir",
    "parse_update_mode",
]

UPDATE_MODES = ("all", "missing")


def parse_output_path(text: str) -> Path:
    """A file to write (the HTML report, the Markdown summary)."""
    if not text.strip():
        raise argparse.ArgumentTypeError(f"{text!r}: expected a file path, e.g. reports/index.html")
    path = Path(text)
    if path.is_dir() or text.endswith(("/", "\\")):
        raise argparse.ArgumentTypeError(f"{text!r} is a directory; name the file, e.g. {path / 'index.html'}")
    return path


def parse_baseline_dir(text: str) -> Path:
    """The baseline store: a directory (created on the first update)."""
    if not text.strip():
        raise argparse.ArgumentTypeError(f"{text!r}: expected a directory, e.g. baselines")
    path = Path(text)
    if path.exists() and not path.is_dir():
        raise argparse.ArgumentTypeError(f"{text!r} is a file; the baseline store is a directory")
    return path


def parse_update_mode(text: str) -> str:
    if text not in UPDATE_MODES:
        raise argparse.ArgumentTypeError(
            f"{text!r}: expected 'missing' (record baselines that do not exist yet) or 'all' "
            "(also replace existing ones)"
        )
    return text


def add_options(
    addoption: Callable[..., Any],
    *,
    prefix: str,
    dest_prefix: str = "",
    report_flags: Sequence[str] | None = None,
    baseline_default: str = "baselines/ under the rootdir; a relative DIR is under the rootdir too",
) -> None:
    """Add --<prefix>report, summary, baseline and update-baseline with ``addoption``.

    A relative report or summary FILE is under the current directory (under pytest: the
    directory it was run from, like --peftcheck-results). Under pytest a relative baseline DIR
    is under the rootdir, since baselines belong to the project; in the CLI, the current directory.
    """
    addoption(
        *(report_flags or [f"{prefix}report"]),
        dest=f"{dest_prefix}report",
        type=parse_output_path,
        default=None,
        metavar="FILE",
        help="write a self-contained HTML report (no network fetches) to FILE; a relative FILE is "
        "under the current directory (default: none).",
    )
    addoption(
        f"{prefix}summary",
        dest=f"{dest_prefix}summary",
        type=parse_output_path,
        default=None,
        metavar="FILE",
        help="write a short Markdown summary for a pull-request comment to FILE; a relative FILE "
        "is under the current directory (default: none).",
    )
    addoption(
        f"{prefix}baseline",
        dest=f"{dest_prefix}baseline",
        type=parse_baseline_dir,
        default=None,
        metavar="DIR",
        help=f"baseline store, one JSON file per environment and suite (default: {baseline_default}).",
    )
    addoption(
        f"{prefix}update-baseline",
        dest=f"{dest_prefix}update_baseline",
        type=parse_update_mode,
        default=None,
        metavar="{all,missing}",
        help="write this run's measurements into the baseline store: 'missing' adds what has no "
        "baseline yet, 'all' also appends this run to existing entries as one more sample (a changed "
        "method fingerprint starts its entry again); methods that did not run are kept "
        "(default: never write).",
    )


def output_path(config: Any, value: str | Path) -> Path:
    """A file peftcheck writes: a relative path is under the directory pytest was run from.

    Not the rootdir: ``pytest /some/where/suite.yaml`` would write into the suite's folder
    (issue 17)."""
    return Path(config.invocation_params.dir) / value

"""Reading a suite file: its structure (``spec``), then its expectations against the check
registry. Here rather than in spec.py, which the checks' modules import (issue 13's cycle)."""

from __future__ import annotations

from pathlib import Path

from peftcheck.artifact import resolve_artifacts
from peftcheck.checks import validate_expectations
from peftcheck.errors import SuiteError
from peftcheck.spec import LoadedSuite, parse_suite_text

__all__ = ["load_suite", "load_suite_text"]


def load_suite_text(text: str, *, path: str = "<string>") -> LoadedSuite:
    """Parse and validate a suite from YAML text; every failure is a located SuiteError."""
    loaded = resolve_artifacts(parse_suite_text(text, path=path))  # artifact folders: JSON only, no torch
    validate_expectations(loaded)
    return loaded


def load_suite(path: str | Path) -> LoadedSuite:
    """Read one suite file."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise SuiteError(f"cannot read suite: {exc.strerror}", file=str(path)) from None
    return load_suite_text(text, path=str(path))

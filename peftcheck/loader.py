"""Reading a suite file: its structure (``spec``), then its expectations against the check
registry. Here rather than in spec.py, which the checks' modules import (issue 13's cycle)."""

from __future__ import annotations

from pathlib import Path

from peftcheck.artifact import resolve_artifacts
from peftcheck.checks import validate_expectations
from peftcheck.errors import SuiteError
from peftcheck.spec import LoadedSuite, parse_suite_text

__all__ = ["load_suite", "load_suite_text", "check_yields_items"]


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


def check_yields_items(loaded: LoadedSuite) -> None:
    """A suite that checks nothing is a mistake, not a pass: `pytest` would say "no tests ran"
    and exit 5, `validate` "ok" (issue 26). Raises a SuiteError at the suite's `expect`. Not part
    of load_suite: a suite loaded to drive checks one by one (the tests, the CLI's list) may
    name none."""
    spec = loaded.spec
    if any(spec.expectations(method) for method in spec.methods):
        return
    named = [*spec.expect, *(c for m in spec.methods.values() for c in m.expect)]
    why = ("every check it names is turned off (false) for every method" if named
           else "no check is named, under `expect` or a method's `expect`")  # fmt: skip
    raise SuiteError(f"the suite yields no check item: {why}", file=loaded.path,
                     line=loaded.line_of("expect") or loaded.line_of("suite"), field="expect",
                     hint="name at least one check, e.g. `expect: {trainable_ratio: {max: 0.1}}`")  # fmt: skip

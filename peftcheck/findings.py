"""`peftcheck findings`: every shipped finding (a suite's strict xfail, a reproduction's in tests/)
with the versions it is keyed to and what a run made of it (issue 24).

A run on new releases (``nox -s latest``) is a report on upstream, not a red run: each finding
either still reproduces (with the figure measured), is fixed (a strict XPASS: close its range at
the version named), no longer runs (an error: the check cannot measure it any more), or was not
keyed in that run (other versions or another CPU kind), with the item's own outcome.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import xml.etree.ElementTree as ET
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

__all__ = ["Finding", "shipped", "from_junit", "status", "render", "add_parser"]

STATUSES = ("reproduces", "fixed", "error", "not keyed", "not run")


@dataclasses.dataclass
class Finding:
    where: str  # suite file::suite::method::check, or a test's node id
    reason: str
    keys: str  # the versions and CPU flags it is keyed to, as the xfail says them
    status: str = "not run"
    detail: str = ""


def shipped(paths: Sequence[str]) -> tuple[list[Finding], dict[tuple[str, str, str], Finding]]:
    """The findings of the suites under ``paths``, and an index by (suite, method, check)."""
    from peftcheck.checks.registry import split_params
    from peftcheck.cli import _suite_files
    from peftcheck.loader import load_suite

    found, index = [], {}
    for path in _suite_files(paths):
        spec = load_suite(path).spec
        for method in spec.methods:
            for check, raw in spec.expectations(method).items():
                _, xfail = split_params(dict(raw))
                if xfail is None:
                    continue
                keys = ", ".join(xfail.conditions()) or "always"
                finding = Finding(f"{path}::{spec.suite}::{method}::{check}", xfail.reason, keys)
                found.append(finding)
                index[(spec.suite, method, check)] = finding
    return found, index


def status(record: dict[str, Any] | None) -> tuple[str, str]:
    """What one check record says about the finding on its item: (status, detail)."""
    if record is None:
        return "not run", ""
    outcome, message = str(record.get("outcome")), str(record.get("message") or "")
    value = record.get("value")
    figure = f"{value:.4g} {record.get('unit') or ''}".strip() if isinstance(value, (int, float)) else ""
    if record.get("xfail"):
        if outcome == "xfailed":
            return "reproduces", "; ".join(p for p in (figure, message) if p)
        if outcome == "xpassed":
            return "fixed", message
    if outcome == "error":
        return "error", message
    return "not keyed", f"the item {outcome} here" + (f": {figure}" if figure else "")


def from_junit(path: Path) -> list[Finding]:
    """The reproductions in tests/ (strict xfails whose reason says ``upstream``) of a junit file."""
    found = []
    for case in ET.parse(path).getroot().iter("testcase"):
        where = f"{case.get('classname')}::{case.get('name')}"
        skipped, failure = case.find("skipped"), case.find("failure")
        if skipped is not None and skipped.get("type") == "pytest.xfail" and "upstream" in (skipped.get("message") or ""):
            found.append(Finding(where, skipped.get("message") or "", "", "reproduces"))
        elif failure is not None and (failure.get("message") or "").startswith("[XPASS(strict)]") and "upstream" in (failure.get("message") or ""):
            message = (failure.get("message") or "").removeprefix("[XPASS(strict)] ")
            found.append(Finding(where, message, "", "fixed", message.rpartition("; ")[2]))
    return found


def render(findings: Iterable[Finding], env: dict[str, Any] | None) -> str:
    """A Markdown page: the run's versions, a count per status, then one row per finding."""
    findings = list(findings)
    versions = ", ".join(f"{k} {v}" for k, v in sorted(((env or {}).get("versions") or {}).items()) if v)
    counts = ", ".join(f"{sum(f.status == s for f in findings)} {s}" for s in STATUSES if any(f.status == s for f in findings))
    lines = ["# Findings", "", f"Run on: {versions or 'unknown versions'}", "", f"{len(findings)} findings: {counts or 'none'}", "",
             "| finding | keyed to | status | in this run |", "|---|---|---|---|"]  # fmt: skip
    for f in findings:
        cells = (f"`{f.where}`<br>{f.reason}", f.keys or "—", f.status, f.detail or "—")
        lines.append("| " + " | ".join(c.replace("|", "\\|").replace("\n", " ") for c in cells) + " |")
    return "\n".join(lines) + "\n"


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "findings", help="every shipped finding with its versions and its status in a run",
        description="List the suites' strict xfails (and, with --junit, the reproductions in tests/) with the "
        "versions they are keyed to and what a run made of each: reproduces, fixed (XPASS: close the range), "
        "error, not keyed (other versions or CPU), not run. Exit status 0 (a report, not a verdict), 2 on bad input.",
    )  # fmt: skip
    parser.add_argument("paths", nargs="*", default=["suites"], metavar="PATH", help="suite files or folders (default: suites)")
    parser.add_argument("--results", type=Path, action="append", default=[], metavar="FILE",
                        help="a results file of the run (repeatable; default: reports/results.jsonl if present)")
    parser.add_argument("--junit", type=Path, action="append", default=[], metavar="FILE",
                        help="a junit XML of the test command, for the reproductions in tests/")
    parser.add_argument("-o", "--output", type=Path, metavar="FILE", help="write the Markdown page here instead of stdout")
    parser.set_defaults(func=run)
    return parser


def run(args: argparse.Namespace) -> int:
    from peftcheck.baseline import write_atomic
    from peftcheck.record import read_records

    results = args.results or [p for p in (Path("reports/results.jsonl"),) if p.is_file()]
    for path in [*results, *args.junit]:
        if not path.is_file():
            print(f"peftcheck findings: {path}: no such file", file=sys.stderr)
            return 2
    found, index = shipped(args.paths)
    env = None
    for path in results:
        for record in read_records(path):
            if record.get("kind") == "session":
                env = record.get("env") or env
            key = (str(record.get("suite")), str(record.get("method")), str(record.get("check")))
            if record.get("kind") == "check" and key in index:
                index[key].status, index[key].detail = status(record)
    for path in args.junit:
        found += from_junit(path)
    page = render(found, env)
    if args.output is None:
        sys.stdout.write(page)
    else:
        print(f"wrote {write_atomic(args.output, page)}")
    return 0

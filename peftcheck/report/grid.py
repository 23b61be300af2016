"""The method × check grid of one run (issue 13): a Markdown page, one row per method and one
column per check, each cell pass / fail / not applicable / strict xfail, with the skip reasons
and the xfail reasons (the upstream findings, with their figures) listed under the table.
``peftcheck grid RESULTS -o docs/sweep.md`` writes docs/sweep.md from the sweep's results."""

from __future__ import annotations

import argparse
import collections
import sys
from pathlib import Path
from typing import Any

from peftcheck.report.markdown import _SPECIAL

__all__ = ["render_grid", "add_parser"]

CELL = {"passed": "✓", "xpassed": "✓", "failed": "✗", "error": "✗", "skipped": "–"}


def _text(value: Any) -> str:
    return " ".join(str(value or "").split()).translate(_SPECIAL)


def render_grid(records: list[dict[str, Any]], *, title: str) -> str:
    """The grid of the check records in ``records`` (a results file's), as Markdown."""
    session = next((r for r in records if r.get("kind") == "session"), {})
    checks = [r for r in records if r.get("kind") == "check"]
    methods = list(dict.fromkeys(f"{r['suite']}/{r['method']}" for r in checks))
    names = list(dict.fromkeys(r["check"] for r in checks))
    findings: dict[str, int] = {}  # xfail reason -> its number
    cells: dict[tuple[str, str], str] = {}
    skips: dict[str, dict[str, list[str]]] = collections.defaultdict(lambda: collections.defaultdict(list))
    count: collections.Counter[str] = collections.Counter()
    for r in checks:
        method, xfail = f"{r['suite']}/{r['method']}", r.get("xfail")
        if xfail and r["outcome"] in ("failed", "xfailed"):
            number = findings.setdefault(_text(xfail.get("reason")), len(findings) + 1)
            cells[(method, r["check"])], kind = f"xf{number}", "upstream (strict xfail)"
        else:
            cells[(method, r["check"])] = CELL.get(r["outcome"], "?")
            kind = {"✓": "green", "–": "not applicable", "✗": "red"}.get(cells[(method, r["check"])], r["outcome"])
            if r["outcome"] == "skipped":
                skips[method][_text(str(r.get("message")).removeprefix("not applicable: "))].append(r["check"])
        count[kind] += 1
    env = session.get("env") or {}
    versions = ", ".join(f"{k} {v}" for k, v in (env.get("versions") or {}).items() if v)
    cpu = f"{env.get('cpu_model') or 'unknown'}, {env.get('cpu_count', '?')} cores (flags {', '.join(env.get('cpu_flags') or []) or 'not recorded'})"
    lines = [f"# {title}", "", f"**{len(methods)} methods × {len(names)} checks: "
             + ", ".join(f"{n} {kind}" for kind, n in count.most_common()) + ".**", "",
             f"Measured with {versions}, Python {env.get('python', '?')}; CPU: {_text(cpu)}. Written by "
             f"`peftcheck grid` from the results of `pytest {' '.join(sorted({r['suite_file'] for r in checks}))}"
             " --peftcheck-results RESULTS`.", "",
             "| method | " + " | ".join(f"`{n}`" for n in names) + " |", "|---|" + "---|" * len(names)]  # fmt: skip
    lines += [f"| {m} | " + " | ".join(cells.get((m, n), " ") for n in names) + " |" for m in methods]
    lines += ["", "✓ pass, ✗ fail, – not applicable (reasons below), xf*n* strict xfail of upstream finding *n*.",
              "", "## Upstream findings", ""]  # fmt: skip
    lines += [f"{number}. {reason}" for reason, number in findings.items()]
    lines += ["", "## Not applicable, per method", ""]
    for method in methods:
        if skips[method]:
            parts = "; ".join(f"{', '.join(f'`{c}`' for c in cs)}: {reason}" for reason, cs in skips[method].items())
            lines.append(f"- **{method}**: {parts}")
    return "\n".join(lines) + "\n"


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "grid", help="a method x check grid (Markdown) of one run's results",
        description="Write the method x check grid of a results file: every cell pass, fail, not applicable "
        "(with the reason) or a strict xfail (with the finding). Exit status 0, 2 on a missing file.",
    )  # fmt: skip
    parser.add_argument("results", type=Path, metavar="RESULTS", help="a results file (pytest --peftcheck-results)")
    parser.add_argument("-o", "--output", type=Path, metavar="FILE", help="write here instead of stdout")
    parser.add_argument("--title", default="Method × check grid", help="the page's heading")
    parser.set_defaults(func=run)
    return parser


def run(args: argparse.Namespace) -> int:
    from peftcheck.baseline import write_atomic
    from peftcheck.record import read_records

    if not args.results.is_file():
        print(f"peftcheck grid: {args.results}: no such file", file=sys.stderr)
        return 2
    page = render_grid(read_records(args.results), title=args.title)
    if args.output is None:
        sys.stdout.write(page)
    else:
        print(f"wrote {write_atomic(args.output, page)}")
    return 0

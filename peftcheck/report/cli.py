"""``peftcheck report RESULTS... -o FILE``: the report from saved results files."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from peftcheck.report.options import add_options

__all__ = ["add_parser", "run", "parse_results_file"]

EXIT_OK, EXIT_PROBLEMS, EXIT_USAGE = 0, 1, 2


def parse_results_file(text: str) -> Path:
    path = Path(text)
    if not path.is_file():
        raise argparse.ArgumentTypeError(f"{text!r}: no such results file (pytest writes reports/results.jsonl)")
    return path


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``report`` subcommand to ``peftcheck``'s subparsers."""
    parser = subparsers.add_parser(
        "report",
        help="write the HTML report (and Markdown summary) from saved results files",
        description="Write one self-contained HTML report from one or more results files (for "
        "example one per nox session), compared with the baseline store. Exit status: 0 nothing "
        "failed or regressed, 1 something did, 2 bad arguments.",
    )
    parser.add_argument("results", nargs="+", type=parse_results_file, metavar="RESULTS",
                        help="results files written by pytest (--peftcheck-results); the shards of one "
                        "--peftcheck-shard run are merged into one run")
    add_options(parser.add_argument, prefix="--", report_flags=["-o", "--output"],
                baseline_default="./baselines when it exists")
    parser.set_defaults(func=run)
    return parser


def run(args: argparse.Namespace) -> int:
    """Run ``peftcheck report``; returns the exit status."""
    from peftcheck.record import read_records
    from peftcheck.report.publish import publish
    from peftcheck.shard import merge_shards

    if args.report is None and args.summary is None and args.update_baseline is None:
        print("peftcheck report: nothing to write; give -o FILE, --summary FILE or --update-baseline",
              file=sys.stderr)
        return EXIT_USAGE
    baseline = args.baseline
    if baseline is None and Path("baselines").is_dir():
        baseline = Path("baselines")
    if args.update_baseline and baseline is None:
        baseline = Path("baselines")
    # the shards of one CI matrix (--peftcheck-shard) are one run; other files stay runs of their own
    runs = merge_shards((str(path), read_records(path)) for path in args.results)
    published = publish(runs, html=args.report, summary=args.summary, baseline=baseline,
                        update=args.update_baseline)
    for line in published.lines():
        print(line)
    return EXIT_PROBLEMS if published.report.status == "failed" else EXIT_OK

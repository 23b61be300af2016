"""``peftcheck matrix RESULTS... -o FILE``: one compatibility page from the results files of
several version cells (one per nox ``matrix`` session).

Rows are suite / method / check, columns are version cells (the peft, transformers,
bitsandbytes, adapters and torch versions a results file was measured with), and each cell is
pass / fail / skip / error with its value. "Newer" is the componentwise order of the versions: a
column is newer than another when no package in both is older and one is newer. A check that
passes in one column and fails in a newer one is a *flip*; the first failing column after a pass
is highlighted, and so is the first passing column after a failure (fixed).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as _dt
import functools
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["AXES", "Column", "MatrixCell", "Row", "Flip", "Matrix", "build_matrix", "render_html",
           "render_text", "write_html", "add_parser", "run"]  # fmt: skip

AXES = ("peft", "transformers", "bitsandbytes", "adapters", "torch")  # what a column is keyed by
BAD = ("failed", "error")
_NOT_RUN = {"not-installable": "not installable", "import-failed": "import failed", "no-results": "no results"}
EXIT_OK, EXIT_FLIPS, EXIT_USAGE = 0, 1, 2


@functools.total_ordering
class _Version:
    """A version for ordering: packaging's when it parses, the dotted numbers otherwise."""

    def __init__(self, text: str) -> None:
        self.text = text
        try:
            from packaging.version import Version

            self.key: Any = (0, Version(text.split("+")[0]))
        except Exception:  # noqa: BLE001 - an unparsable version still orders, after the parsable ones
            self.key = (1, text)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _Version) and self.key == other.key

    def __lt__(self, other: "_Version") -> bool:
        return self.key < other.key


def _public(version: str | None) -> str | None:
    """The version without its local label: torch 2.13.0+cpu and 2.13.0 are one release."""
    return version.split("+")[0] if version else version


@dataclasses.dataclass
class Column:
    """One version cell: the versions it ran with, where its records came from, how it went."""

    versions: dict[str, str | None]
    files: list[str]
    status: str = "ran"  # ran | not-installable | import-failed | no-results
    reason: str | None = None
    cell: str | None = None
    note: str = ""
    install_s: float | None = None
    run_s: float | None = None
    python: str | None = None
    device: str | None = None
    suites: list[str] | None = None  # the suite files the cell ran (its cell record), None: unknown
    counts: dict[str, int] = dataclasses.field(default_factory=dict)

    @property
    def key(self) -> tuple[str | None, ...]:
        return tuple(self.versions.get(a) for a in AXES)

    @property
    def label(self) -> str:
        short = {"transformers": "tf", "bitsandbytes": "bnb"}
        return " · ".join(f"{short.get(a, a)} {self.versions[a]}" for a in AXES[:-1] if self.versions.get(a))

    @property
    def ran(self) -> bool:
        return self.status == "ran"

    @property
    def status_text(self) -> str:
        return _NOT_RUN.get(self.status, self.status)

    def order(self) -> tuple[Any, ...]:
        return tuple((v is not None, _Version(v) if v else _Version("0")) for v in self.key)

    def newer_than(self, other: "Column") -> bool:
        """No package present in both is older here, and at least one is newer."""
        newer = False
        for a in AXES:
            mine, theirs = self.versions.get(a), other.versions.get(a)
            if mine is None or theirs is None:
                continue
            if _Version(mine) < _Version(theirs):
                return False
            newer = newer or _Version(theirs) < _Version(mine)
        return newer


@dataclasses.dataclass
class MatrixCell:
    outcome: str | None  # None: the check did not run in this column
    value: float | None = None
    unit: str | None = None
    bound: str | None = None
    message: str = ""
    xfail: str | None = None
    flip: str | None = None  # "regressed" | "fixed" | None
    flip_from: str | None = None  # label of the column it flipped from
    finding: str | None = None  # what the record says of a shipped finding (peftcheck.findings.status)

    @property
    def text(self) -> str:
        if self.outcome is None:
            return "not run"
        return {"passed": "pass", "failed": "fail", "skipped": "skip", "error": "error"}.get(self.outcome, self.outcome)


@dataclasses.dataclass
class Row:
    suite: str
    method: str
    check: str
    cells: list[MatrixCell]

    @property
    def anchor(self) -> str:
        import re

        return "row-" + "-".join(re.sub(r"[^A-Za-z0-9_-]+", "_", p) for p in (self.suite, self.method, self.check))


@dataclasses.dataclass(frozen=True)
class Flip:
    suite: str
    method: str
    check: str
    kind: str  # regressed | fixed
    was: str  # label of the column where it passed (regressed) or failed (fixed)
    now: str  # label of the first column where it fails (regressed) or passes (fixed)
    message: str


@dataclasses.dataclass
class Matrix:
    columns: list[Column]
    rows: list[Row]
    flips: list[Flip]
    generated: str
    varying: list[str]  # the axes whose version differs between columns

    @property
    def regressions(self) -> list[Flip]:
        return [f for f in self.flips if f.kind == "regressed"]

    @property
    def flip_groups(self) -> list[tuple[Flip, list[str]]]:
        """Flips of one method between the same two columns, with the checks that flipped."""
        groups: dict[tuple[str, str, str, str, str], tuple[Flip, list[str]]] = {}
        for f in self.flips:
            groups.setdefault((f.suite, f.method, f.kind, f.was, f.now), (f, []))[1].append(f.check)
        return list(groups.values())

    @property
    def finding_rows(self) -> list[Row]:
        """The rows that carry a shipped finding (a strict xfail) in some column (issue 24)."""
        return [r for r in self.rows if any(c.xfail for c in r.cells)]

    @property
    def wall_s(self) -> float:
        return sum((c.install_s or 0) + (c.run_s or 0) for c in self.columns)


def _column_of(path: str, records: list[dict[str, Any]]) -> tuple[Column, list[dict[str, Any]]]:
    session = next((r for r in records if r.get("kind") == "session"), {})
    env = session.get("env") or {}
    versions = {a: (env.get("versions") or {}).get(a) for a in AXES}
    column = Column(versions, [path], python=env.get("python"), device=env.get("device"))
    for cell in (r for r in records if r.get("kind") == "cell"):
        column.status = str(cell.get("status") or "ran")
        column.reason, column.cell, column.note = cell.get("reason"), cell.get("cell"), str(cell.get("note") or "")
        column.install_s, column.run_s = cell.get("install_s"), cell.get("run_s")
        column.suites = list(cell["suites"]) if cell.get("suites") else None
    checks = [r for r in records if r.get("kind") == "check"]
    return column, checks


Items = dict[tuple[str, str, str], dict[str, Any]]  # (suite, method, check) -> check record


def _merge_columns(runs: Sequence[tuple[str, list[dict[str, Any]]]]) -> list[tuple[Column, Items]]:
    merged: dict[tuple[str | None, ...], tuple[Column, Items]] = {}
    for path, records in runs:
        if not any(r.get("kind") == "session" for r in records):
            warnings.warn(f"{path}: no session record (not a results file?); left out", stacklevel=3)
            continue
        column, checks = _column_of(path, records)
        if column.key in merged:  # several files of one cell (e.g. suites run apart): one column
            known, items = merged[column.key]
            known.files.append(path)
            if column.status != "ran":
                known.status, known.reason = column.status, column.reason
            for attr in ("cell", "note", "install_s", "run_s", "python", "device"):
                if getattr(column, attr) and not getattr(known, attr):
                    setattr(known, attr, getattr(column, attr))
        else:
            known, items = merged.setdefault(column.key, (column, {}))
        for r in checks:  # a later file's record of the same item wins
            items[(str(r.get("suite")), str(r.get("method")), str(r.get("check")))] = r
    return sorted(merged.values(), key=lambda pair: pair[0].order())


def _cell(record: dict[str, Any] | None, column: Column, suite_files: set[str]) -> MatrixCell:
    if record is None:
        # the cell ran and broke: every item of the suites it runs errs (``suite_files``: the row's
        # suite's files, as other columns recorded them; a suite the cell does not run stays "not run")
        ran = column.suites is None or not suite_files or bool(suite_files & set(column.suites))
        if column.status in ("import-failed", "no-results") and ran:
            return MatrixCell("error", message=f"{column.status_text}: {column.reason or ''}".strip())
        return MatrixCell(None, message=f"{column.status_text}: {column.reason}" if column.reason else "")
    from peftcheck.findings import status

    xfail = record.get("xfail")
    value = record.get("value")
    return MatrixCell(
        _legacy_outcome(record), value if isinstance(value, (int, float)) else None,
        record.get("unit"), record.get("bound"), str(record.get("message") or ""),
        str(xfail.get("reason")) if isinstance(xfail, dict) else None, finding=status(record)[0],
    )  # fmt: skip


def _legacy_outcome(record: dict[str, Any]) -> str:
    """Records since issue 14 say xfailed / xpassed; the matrix keeps judging the check's own
    verdict (a known failure is a failure at its version boundary) and shows the xfail beside it."""
    outcome = str(record.get("outcome"))
    return {"xfailed": "failed", "xpassed": "passed"}.get(outcome, outcome)


def _mark_flips(row: Row, columns: list[Column]) -> list[Flip]:
    """Highlight each failing cell that is the first failure above a passing column (and fixes)."""
    flips = []
    for kind, before, after in (("regressed", ("passed",), BAD), ("fixed", BAD, ("passed",))):
        for j, cell in enumerate(row.cells):
            if cell.outcome not in after:
                continue
            earlier = [i for i in range(len(columns)) if columns[j].newer_than(columns[i])]
            good = [i for i in earlier if row.cells[i].outcome in before]
            # first: no other cell of the same kind lies between a good column and this one
            for i in good:
                between = [k for k in earlier if columns[k].newer_than(columns[i]) and row.cells[k].outcome in after]
                if not between:
                    cell.flip, cell.flip_from = kind, columns[i].label
                    message = cell.message if kind == "regressed" else row.cells[i].message
                    was, now = columns[i].label, columns[j].label
                    flips.append(Flip(row.suite, row.method, row.check, kind, was, now, message))
                    break
    return flips


def build_matrix(runs: Sequence[tuple[str, list[dict[str, Any]]]]) -> Matrix:
    """Merge ``(path, records)`` pairs into the matrix: one column per distinct version cell."""
    merged = _merge_columns(runs)
    columns = [c for c, _ in merged]
    order: dict[tuple[str, str, str], int] = {}
    for _, items in merged:
        for key in items:
            order.setdefault(key, len(order))
    suites = {k[0]: i for i, k in reversed(list(enumerate(order)))}  # first appearance of a suite
    keys = sorted(order, key=lambda k: (suites[k[0]], order[k]))
    files: dict[str, set[str]] = {}  # suite -> the files its records came from
    for _, items in merged:
        for record in items.values():
            if record.get("suite_file"):
                files.setdefault(str(record.get("suite")), set()).add(str(record["suite_file"]))
    rows, flips = [], []
    for key in keys:
        row = Row(*key, cells=[_cell(items.get(key), column, files.get(key[0], set())) for column, items in merged])
        flips += _mark_flips(row, columns)
        rows.append(row)
    for column, items in merged:
        for record in items.values():
            outcome = _legacy_outcome(record)
            column.counts[outcome] = column.counts.get(outcome, 0) + 1
    varying = [a for a in AXES if len({_public(c.versions.get(a)) for c in columns}) > 1]
    now = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    return Matrix(columns, rows, flips, now, varying)


@functools.cache
def _environment() -> Any:
    import jinja2

    from peftcheck.report import format as fmt

    env = jinja2.Environment(
        loader=jinja2.PackageLoader("peftcheck", "matrix_templates"),
        autoescape=True,  # messages come from models, datasets and exceptions: text, never markup
        undefined=jinja2.StrictUndefined,
    )
    env.filters.update(number=fmt.number)
    return env


def render_html(matrix: Matrix) -> str:
    """The matrix as one self-contained HTML page (inline CSS, no script, nothing fetched)."""
    return _environment().get_template("matrix.html.j2").render(m=matrix, axes=AXES)


def write_html(matrix: Matrix, path: str | Path) -> Path:
    from peftcheck.baseline import write_atomic

    return write_atomic(Path(path), render_html(matrix))


def render_text(matrix: Matrix) -> list[str]:
    """The closing note: the cells, their wall time, and every flip."""
    lines = [f"peftcheck matrix: {len(matrix.columns)} cell(s), {len(matrix.rows)} check(s)"]
    for c in matrix.columns:
        counts = ", ".join(f"{n} {k}" for k, n in sorted(c.counts.items()))
        wall = f"install {c.install_s or 0:.0f}s + run {c.run_s or 0:.0f}s" if c.install_s is not None else ""
        state = counts if c.ran else f"{c.status_text}: {c.reason}"
        lines.append(f"  {c.label or '?'}: {state}" + (f" ({wall})" if wall else ""))
    lines.append(f"  total wall time {matrix.wall_s:.0f}s")
    if not matrix.flips:
        lines.append("no check flips between versions")
    for f, checks in matrix.flip_groups:
        was, now = ("passes", "fails") if f.kind == "regressed" else ("fails", "passes")
        lines.append(f"  {f.kind}: {f.suite}/{f.method}: {', '.join(checks)} {was} in [{f.was}], first {now} in [{f.now}]")
    return lines


def parse_results_file(text: str) -> Path:
    path = Path(text)
    if not path.is_file():
        raise argparse.ArgumentTypeError(
            f"{text!r}: no such results file (nox -s matrix writes reports/matrix/*.jsonl)"
        )
    return path


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``matrix`` subcommand to ``peftcheck``'s subparsers."""
    parser = subparsers.add_parser(
        "matrix", help="merge results of several version cells into one compatibility page",
        description="Merge results files written under different peft/transformers/bitsandbytes "
        "versions (nox -s matrix) into one self-contained HTML page. Exit status: 0 no check "
        "flips from pass to fail in a newer cell, 1 one does, 2 bad arguments.",
    )  # fmt: skip
    parser.add_argument("results", nargs="+", type=parse_results_file, metavar="RESULTS",
                        help="results files (pytest --peftcheck-results), one or more per version cell")
    parser.add_argument("-o", "--output", type=Path, default=Path("reports/matrix/index.html"), metavar="FILE",
                        help="the HTML page to write (default: reports/matrix/index.html)")
    parser.set_defaults(func=run)
    return parser


def run(args: argparse.Namespace) -> int:
    """Run ``peftcheck matrix``; returns the exit status."""
    from peftcheck.record import read_records

    runs = [(str(path), read_records(path)) for path in args.results]
    matrix = build_matrix(runs)
    if not matrix.columns:
        print("peftcheck matrix: the results files hold no session records", file=sys.stderr)
        return EXIT_USAGE
    written = write_html(matrix, args.output)
    for line in render_text(matrix):
        print(line)
    print(f"wrote {written}")
    return EXIT_FLIPS if matrix.regressions else EXIT_OK

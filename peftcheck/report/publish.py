"""From results files to the report, the summary and baseline updates, in that order."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from peftcheck.baseline import BaselineStore, UpdateMode, UpdateNote, collect_entries
from peftcheck.report.html import write_html
from peftcheck.report.markdown import write_markdown
from peftcheck.report.model import Report, build_report

__all__ = ["Published", "publish", "unused_baselines"]

Run = tuple[str, Sequence[Mapping[str, Any]]]
MAX_LINES = 10  # regressions named in the terminal; the report has all of them


@dataclasses.dataclass
class Published:
    """What a publish wrote, and the lines that tell the user about it."""

    report: Report
    html: Path | None
    summary: Path | None
    updates: list[UpdateNote]
    unused: list[str] = dataclasses.field(default_factory=list)

    def lines(self) -> list[str]:
        report = self.report
        lines = []
        if report.baseline_root is not None:
            counts: dict[str, int] = {}
            for suite in report.suites:
                for method in suite.methods:
                    for c in method.metrics:
                        counts[c.status] = counts.get(c.status, 0) + 1
            words = {"regressed": "regressed", "improved": "improved", "changed": "changed",
                     "unchanged": "unchanged", "new": "without a baseline value"}
            shown = ", ".join(f"{counts[s]} {w}" for s, w in words.items() if counts.get(s))
            lines.append(f"baseline {report.baseline_root}: {shown or 'no metrics compared'}")
            for suite in report.suites:
                if suite.baseline is None:
                    lines.append(f"  {suite.title}: no baseline yet")
                elif not suite.baseline.exact:
                    lines.append(f"  {suite.title}: {suite.baseline.note}")
        groups = report.regression_groups  # newly failing items with one cause: one line (issue 26)
        for g in groups[:MAX_LINES]:
            p = g.head
            if g.single:
                lines.append(f"REGRESSION {p.suite}::{p.method}::{p.what}: {p.text.splitlines()[0]}")
            else:
                first = g.first.nodeid if g.first is not None else ""
                lines.append(f"REGRESSION {g.count} items {p.kind} with one {g.noun}: "
                             f"{(g.message.splitlines() or [''])[0]} (first: {first or '?'})")
        if hidden := sum(g.count for g in groups[MAX_LINES:]):
            lines.append(f"...and {hidden} more regression(s) in the report")
        if self.html:
            lines.append(f"report: {self.html}")
        if self.summary:
            lines.append(f"summary: {self.summary}")
        lines += [f"baseline update: {note}" for note in self.updates]
        lines += [f"baseline not used by this run: {text}" for text in self.unused]
        if report.suites:
            lines.append(report.hint)
        return lines


def publish(
    runs: Sequence[Run],
    *,
    html: Path | None = None,
    summary: Path | None = None,
    baseline: Path | None = None,
    update: UpdateMode | None = None,
) -> Published:
    """Compare the runs with the baseline store, write the report files, then update the store.

    The comparison comes first so that a report written with ``update`` still shows what changed
    against the baselines that were there before.
    """
    store = BaselineStore(baseline) if baseline is not None else None
    report = build_report(runs, store=store)
    notes: list[UpdateNote] = []
    if store is not None and update is not None:
        notes = store.update(collect_entries(r for _, records in runs for r in records), update)
    report.updates = notes
    unused = unused_baselines(store, report) if store is not None else []
    if html is not None:
        write_html(report, html)
    if summary is not None:
        write_markdown(report, summary, html_path=str(html) if html else None)
    return Published(report, html, summary, notes, unused)


def unused_baselines(store: BaselineStore, report: Report) -> list[str]:
    """Baselines of this run's environments that nothing in it compared with: files of suites
    that did not run, and methods of the files it used that did not run (issue 14). Said, never
    judged: a -k run leaves most of them out on purpose."""
    used: dict[Path, set[str]] = {}
    for suite in report.suites:
        if suite.baseline is not None:
            used.setdefault(Path(suite.baseline.path), set()).update(m.method for m in suite.methods)
    lines = []
    for key in sorted({suite.run.env_key for suite in report.suites}):
        for path in sorted((store.root / key).glob("*.json")):
            data = store.read(path)
            if data is None:
                continue
            if path not in used:
                lines.append(f"{path} (suite {data.get('suite') or path.stem} did not run)")
            elif missing := sorted(set(data.get("methods") or {}) - used[path]):
                lines.append(f"{path}: {', '.join(missing)} (did not run)")
    return lines

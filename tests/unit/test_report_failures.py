"""Failing items grouped by cause (peftcheck.report.failures): one row per error in the HTML report,
the Markdown summary and the terminal summary, not one per item (issue 26)."""

from __future__ import annotations

import types
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest

from peftcheck.baseline import BaselineStore, collect_entries
from peftcheck.record import CheckRecord
from peftcheck.report import build_report
from peftcheck.report.failures import cause, elide, group, summary_lines
from peftcheck.report.html import render_html
from peftcheck.report.markdown import MAX_FOLD, render_markdown
from peftcheck.report.publish import Published
from peftcheck.session import Session

ENV = {"python": "3.11.7", "device": "cpu", "versions": {"torch": "2.13.0", "transformers": "5.24.0", "peft": "0.21.2"}}
SUITES, METHODS, CHECKS = ("qlora-opt", "qlora-llama"), ("qlora", "qlora_gc", "dora"), [f"c{i}" for i in range(47)]
ALREADY = ("RuntimeError: Tried to register an operator (bitsandbytes::int8_mixed_scaled_mm(Tensor A, Tensor CA, "
           "Tensor CB, Tensor SCA, Tensor SCB, Tensor? outlier_cols=None, Tensor? bias=None) -> (Tensor, Tensor?)) "
           "with the same name and overload name multiple times. Each overload's schema should only be registered "
           "with a single call to def(). Duplicate registration: registered at {tmp}/bnb_ops.py:25. Original "
           "registration: registered at /home/ci/work/.venv/lib/python3.11/site-packages/bitsandbytes/_ops.py:25 "
           "(library at 0x7f3a{n:08x})")  # fmt: skip
IMPORT = "ValueError: Target modules {'q_proj'} not found in the base model: /home/ci/work/models/tiny/config.json"
MEASURED = "loss decreased by 0.0% (from 3.435 to 3.434)"


def check(suite: str, method: str, name: str, outcome: str, message: str) -> dict[str, Any]:
    return {"kind": "check", "suite": suite, "suite_file": f"suites/{suite}.yaml", "method": method, "check": name,
            "nodeid": f"suites/{suite}.yaml::{suite}::{method}::{name}", "outcome": outcome, "message": message}


def broken_run() -> list[dict[str, Any]]:
    """One item with an error of its own first, then 278 items with one registration error (each
    with its own pytest tmp path and address) and a failed measurement among them, in a method of
    its own: the report lists suites, methods, then checks, in the order they came."""
    keys = [(s, m, c) for s in SUITES for m in METHODS for c in CHECKS][:278]
    items = [check(s, m, c, "error", ALREADY.format(tmp=f"/tmp/pytest-of-ci/pytest-{n % 7}/test_{c}{n}0", n=n))
             for n, (s, m, c) in enumerate(keys)]
    items.insert(100, check("qlora-opt", "lora", "loss_decrease", "failed", MEASURED))
    return [{"kind": "session", "env": ENV}, check("tiny", "ia3", "trainable_ratio", "error", IMPORT), *items,
            {"kind": "end", "env": ENV, "interrupted": False}]


class Rows(HTMLParser):
    """The rows of the page's failing-items table: class, data-count, text, listed items."""

    def __init__(self) -> None:
        super().__init__()
        self.rows: list[dict[str, Any]] = []
        self._table = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attributes = dict(attrs)
        if tag == "table":
            self._table = "failures" in (attributes.get("class") or "")
        elif self._table and tag == "tr" and self.rows is not None:
            self.rows.append({"class": attributes.get("class"), "count": attributes.get("data-count"), "text": "",
                              "items": 0})
        elif self._table and tag == "li":
            self.rows[-1]["items"] += 1

    def handle_endtag(self, tag: str) -> None:
        if tag == "table":
            self._table = False

    def handle_data(self, data: str) -> None:
        if self._table and self.rows:
            self.rows[-1]["text"] += data


def failure_rows(page: str) -> list[dict[str, Any]]:
    parser = Rows()
    parser.feed(page)
    return parser.rows[1:]  # the header row first


def test_the_report_model_has_one_group_per_cause_in_the_order_they_first_came() -> None:
    report = build_report([("broken.jsonl", broken_run())])
    assert len(report.failures) == 280
    groups = report.failure_groups
    assert [g.count for g in groups] == [1, 278, 1]  # the first item's own error first, as it came
    shared = groups[1]
    assert shared.cause is not None and shared.cause.outcome == "error" and shared.cause.check is None
    assert shared.first is not None and shared.first.nodeid == "suites/qlora-opt.yaml::qlora-opt::qlora::c0"
    assert shared.across("suite", "suites") == "2 suites" and shared.across("what", "checks") == "47 checks"
    assert "registered at <tmp>. Original" in shared.message
    assert "<site-packages>/bitsandbytes/_ops.py:… (library at 0x…)" in shared.message
    assert "/tmp/pytest-of" not in shared.message and "/home/ci" not in shared.message
    assert [g.head.what for g in groups if g.single] == ["trainable_ratio", "loss_decrease"]


def test_the_html_report_shows_one_row_of_278_and_the_two_others_as_they_were() -> None:
    page = render_html(build_report([("broken.jsonl", broken_run())]))
    rows = failure_rows(page)
    assert len(rows) == 3
    single_error, shared, measured = rows
    assert shared["class"] == "group" and shared["count"] == "278" and shared["items"] == 278
    assert "278 items with this error (first: suites/qlora-opt.yaml::qlora-opt::qlora::c0)" in shared["text"]
    assert "registered at <tmp>" in shared["text"] and "2 suites3 methods47 checks" in shared["text"]
    assert single_error["class"] is None and IMPORT in single_error["text"]  # one item: as it is, paths and all
    assert measured["class"] is None and MEASURED in measured["text"]
    section = page[page.index('id="failures"'):page.index('<p class="hint">')]
    assert "/tmp/pytest-of" not in section and "0x7f3a" not in section and section.count("<details") == 1
    assert "Failing items (280)" in page


def test_the_markdown_summary_shows_one_row_of_278_and_lists_a_few_behind_a_fold() -> None:
    text = render_markdown(build_report([("broken.jsonl", broken_run())]))
    table = [line for line in text.splitlines() if line.startswith("| ") and "suite | method" not in line]
    assert len(table) == 3
    assert table[0] == f"| tiny | ia3 | error: trainable_ratio | {IMPORT} |"
    assert table[1].startswith("| 2 suites | 3 methods | error: 47 checks | **278 items** with one error: "
                               "RuntimeError: Tried to register an operator (bitsandbytes::int8_mixed_scaled_mm(")
    assert table[1].endswith("… |")  # a message is cut at md_text's length
    assert table[2] == f"| qlora-opt | lora | failed: loss_decrease | {MEASURED} |"
    fold = text[text.index("<details>"):text.index("</details>")]
    assert fold.startswith("<details><summary>278 items with one error: RuntimeError: Tried to register")
    assert fold.count("\n- ") == MAX_FOLD + 1 and f"- …and {278 - MAX_FOLD} more in the HTML report" in fold
    assert "- qlora-opt · qlora · c0 (first: suites/qlora-opt.yaml::qlora-opt::qlora::c0)" in fold
    assert "/tmp/pytest-of" not in text and "0x7f3a" not in text
    assert text.startswith("### ❌ peftcheck: failed — 280 failing item(s)\n")


def test_the_terminal_says_the_shared_error_once() -> None:
    records = [CheckRecord.from_dict(r) for r in broken_run() if r["kind"] == "check"]
    lines = summary_lines(records)
    assert len(lines) == 2
    assert lines[0].startswith("peftcheck: 278 items failed with one error: RuntimeError: Tried to register an ")
    assert lines[0].endswith("… (first: suites/qlora-opt.yaml::qlora-opt::qlora::c0)")
    assert "/tmp/pytest-of" not in lines[0]
    assert lines[1] == "peftcheck: 2 other failing item(s), each with a message of its own"


def test_session_summarize_writes_the_lines_after_the_results_path() -> None:
    checks = [(n, CheckRecord.from_dict(r)) for n, r in enumerate(broken_run()) if r["kind"] == "check"]
    session = types.SimpleNamespace(written=True, results_path=Path("reports/results.jsonl"), reused=None, stopped=None,
                                    publisher=None, checks=checks[::-1])  # an xdist controller's arrival order
    said: list[str] = []
    Session.summarize(session, types.SimpleNamespace(write_line=said.append))  # type: ignore[arg-type]
    assert said[0] == "peftcheck: results written to reports/results.jsonl"
    assert said[1].startswith("peftcheck: 278 items failed with one error: ") and len(said) == 3
    assert said[1].endswith("(first: suites/qlora-opt.yaml::qlora-opt::qlora::c0)")  # collection order, not arrival


def test_failing_items_each_with_their_own_message_add_no_terminal_lines() -> None:
    records = [CheckRecord.from_dict(check("s", "m", c, "error", f"KeyError: {c!r}")) for c in ("a", "b")]
    assert summary_lines(records) == []
    assert summary_lines([]) == []


def item(outcome: str, message: str, name: str = "loss_decrease") -> Any:
    return types.SimpleNamespace(outcome=outcome, check=name, message=message, nodeid=f"s::m::{name}")


@pytest.mark.parametrize(("a", "b"), [
    (item("error", "RuntimeError: Tried to register an operator (bitsandbytes::int8_mixed_scaled_mm)"),
     item("error", "RuntimeError: Tried to register an operator (bitsandbytes::int8_vectorwise_quant)")),
    (item("error", "RuntimeError: expected 3 dims, got 4"), item("error", "RuntimeError: expected 2 dims, got 4")),
    (item("error", "CUDA out of memory. Tried to allocate 2.00 GiB"),
     item("error", "CUDA out of memory. Tried to allocate 20.00 GiB")),  # an error's numbers are part of it
    (item("failed", "loss decreased by 0.0% (from 3.435 to 3.434)"),
     item("failed", "loss decreased by 0.1% (from 3.436 to 3.433)")),  # measured figures are the item's own
    (item("failed", "12 base tensors changed", "base_frozen"), item("failed", "12 base tensors changed", "merge")),
    (item("failed", "RuntimeError: x"), item("error", "RuntimeError: x")),
])  # fmt: skip
def test_distinct_causes_are_not_merged(a: Any, b: Any) -> None:
    assert cause(a) != cause(b)
    assert [g.count for g in group([a, b], lambda i: i)] == [1, 1]


def test_equal_causes_merge_whatever_their_paths_and_addresses() -> None:
    a = item("error", 'OSError: no file /tmp/pytest-of-ci/pytest-3/t0/adapter.bin (File "/home/a/x/y.py", line 12)')
    b = item("error", 'OSError: no file /tmp/pytest-of-ci/pytest-9/t7/adapter.bin (File "/srv/b/x/y.py", line 80)',
             "merge")
    same = item("failed", MEASURED), item("failed", MEASURED)
    assert [g.count for g in group([a, *same, b], lambda i: i)] == [2, 2]
    assert cause(a) == cause(b) and cause(a).message == 'OSError: no file <tmp> (File "…/x/y.py", line …)'  # type: ignore[union-attr]
    assert cause(item("passed", "")) is None and cause(item("skipped", "no GPU")) is None


@pytest.mark.parametrize(("message", "elided"), [
    ("registered at /dev/null:241.", "registered at /dev/null:…."),
    ("see /home/ci/work/peftcheck/checks/core.py:88: boom", "see …/checks/core.py:…: boom"),
    ("in /usr/lib/python3/dist-packages/torch/library.py", "in <site-packages>/torch/library.py"),
    ("wrote /var/folders/x1/T/tmpab12/adapter", "wrote <tmp>"),
    ("at /home/ci/work/model.safetensors.", "at …/work/model.safetensors."),
    ("object at 0x7f3a2b4c5d60>", "object at 0x…>"),
    ("https://huggingface.co/hf-internal-testing/tiny-random-gpt2 and 1/2 of suites/tiny.yaml:12",
     "https://huggingface.co/hf-internal-testing/tiny-random-gpt2 and 1/2 of suites/tiny.yaml:12"),
])  # fmt: skip
def test_elide_drops_what_differs_between_machines(message: str, elided: str) -> None:
    assert elide(message) == elided


def baseline_store(tmp_path: Path, run: list[dict[str, Any]]) -> BaselineStore:
    """A store in which every item of ``run`` passed."""
    passed = [{**r, "outcome": "passed", "message": ""} for r in run if r["kind"] == "check"]
    methods = [{"kind": "method", "suite": s, "suite_file": f"suites/{s}.yaml", "method": m, "status": "trained",
                "fingerprint": "f", "env": ENV, "metrics": {}}
               for s, m in dict.fromkeys((r["suite"], r["method"]) for r in passed)]
    store = BaselineStore(tmp_path / "baselines")
    store.update(collect_entries([{"kind": "session", "env": ENV}, *methods, *passed]), "missing")
    return store


def test_newly_failing_items_with_one_cause_are_one_regression_row(tmp_path: Path) -> None:
    run = broken_run()
    report = build_report([("broken.jsonl", run)], store=baseline_store(tmp_path, run))
    assert len(report.regressions) == 280 and report.failures == []
    assert [g.count for g in report.regression_groups] == [1, 278, 1]
    text = render_markdown(report)
    assert "| 2 suites | 3 methods | newly failing: 47 checks | **278 items** with one error: RuntimeError:" in text
    lines = Published(report, None, None, []).lines()
    shared = [line for line in lines if line.startswith("REGRESSION 278 items newly failing with one error: ")]
    assert len(shared) == 1 and shared[0].endswith("(first: suites/qlora-opt.yaml::qlora-opt::qlora::c0)")
    assert sum(line.startswith("REGRESSION ") for line in lines) == 3

"""The Markdown summary (peftcheck.report.markdown): short, problems first, inert text."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from peftcheck.baseline import BaselineStore, collect_entries
from peftcheck.record import read_records
from peftcheck.report import build_report
from peftcheck.report.markdown import MAX_ROWS, md_text, render_markdown

FIXTURES = Path(__file__).parents[2] / "fixtures" / "results"
GITHUB_COMMENT_LIMIT = 65_536


def records(name: str) -> list[dict[str, Any]]:
    return read_records(FIXTURES / f"{name}.jsonl")


@pytest.fixture
def store(tmp_path: Path) -> BaselineStore:
    store = BaselineStore(tmp_path / "baselines")
    store.update(collect_entries(records("baseline")), "missing")
    return store


def test_the_regressed_summary_leads_with_regressions(store: BaselineStore) -> None:
    text = render_markdown(build_report([("r", records("regressed"))], store=store), html_path="reports/index.html")
    assert text.startswith("### ❌ peftcheck: failed — 17 regression(s), 4 other failing item(s)\n")
    assert text.index("#### Regressions against the baseline") < text.index("#### Failing items")
    assert "| quotes | lora | regression: final_loss | final_loss = 3.434 nats vs baseline 2.95 nats" in text
    # 17 regressions in 13 rows: ia3's three errors are one, as are two pairs of equal measurements (issue 26)
    assert "| tiny | ia3 | newly failing: 3 checks | **3 items** with one error: training failed: RuntimeError:" in text
    assert "| quotes | 2 methods | newly failing: loss_decrease | **2 items** with one message: loss decreased" in text
    assert "more in the HTML report" not in text
    assert text.rstrip().endswith("Full report: reports/index.html")


def test_the_rerun_summary_is_one_line_of_news(store: BaselineStore) -> None:
    text = render_markdown(build_report([("r", records("rerun"))], store=store))
    assert text.startswith("### ✅ peftcheck: passed\n")
    assert "Nothing regressed against the baseline." in text
    assert len(text) < 400


def test_model_text_is_inert(store: BaselineStore) -> None:
    text = render_markdown(build_report([("r", records("regressed"))], store=store))
    assert "<script>" not in text and "<img" not in text
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in text


def test_hundreds_of_items_still_fit_a_comment(store: BaselineStore) -> None:
    base = records("regressed")
    run = [r for r in base if r["kind"] == "session"]
    for i in range(30):  # each item's message its own: one row per item, none grouped (issue 26)
        run += [{**r, "suite": f"{r['suite']}-{i}", **({"message": f"{r['message']} ({i}, {r['method']}, {r['check']})"}
                                                        if r["kind"] == "check" else {})}
                for r in base if r["kind"] in ("method", "check")]
    text = render_markdown(build_report([("big", run)], store=store))
    assert len(text) < 12_000 < GITHUB_COMMENT_LIMIT
    assert len(re.findall(r"^\| (quotes|tiny)-", text, re.M)) == MAX_ROWS  # these suites have no baseline
    assert "no baseline yet for 60 suite run(s): quotes-0, tiny-0, quotes-1, tiny-1, quotes-2, …" in text
    assert f"…and {420 - MAX_ROWS} more in the HTML report." in text
    assert len(re.findall(r"^- \*\*(quotes|tiny)-\d+\*\* took ", text, re.M)) == MAX_ROWS
    assert f"- …and {60 - MAX_ROWS} more suite run(s) in the HTML report" in text


@given(st.text())
def test_md_text_breaks_no_table_and_opens_no_tag(value: str) -> None:
    text = md_text(value)
    assert "\n" not in text and "<" not in text
    assert "|" not in text.replace("\\|", "")
    assert len(text) <= 2 * 180


def test_each_suite_says_its_time_and_slowest_method_before_the_hint() -> None:
    def check(suite: str, method: str, duration: float | None) -> dict[str, Any]:
        return {"kind": "check", "suite": suite, "method": method, "check": "a", "outcome": "passed",
                "duration_s": duration}

    run = [{"kind": "session", "env": {}}, check("s*", "lora", 187.0), check("s*", "ia3", 20.0),
           check("t", "lora", None)]  # t: no durations recorded, so no line
    text = render_markdown(build_report([("r", run)]), html_path="index.html")
    lines = text.rstrip().splitlines()
    assert lines[-3:] == [
        "- **s\\*** took 3m27s; slowest method: lora (3m07s, 90%)",
        "",
        "Nothing regressed against the baseline. Full report: index.html",
    ]
    assert text.count(" took ") == 1

"""The HTML report (peftcheck.report.html): self-contained, escaped, complete, quick."""

from __future__ import annotations

import base64
import copy
import hashlib
import re
import time
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from markupsafe import escape

from peftcheck.baseline import BaselineStore, collect_entries
from peftcheck.record import read_records
from peftcheck.report import build_report
from peftcheck.report.html import render_html, write_html

FIXTURES = Path(__file__).parents[2] / "fixtures" / "results"


def records(name: str) -> list[dict[str, Any]]:
    return read_records(FIXTURES / f"{name}.jsonl")


def many(base: list[dict[str, Any]], copies: int) -> list[dict[str, Any]]:
    """The fixture's suites repeated under new names: hundreds of items."""
    out = [r for r in base if r["kind"] == "session"]
    for i in range(copies):
        out += [{**r, "suite": f"{r['suite']}-{i}"} for r in base if r["kind"] in ("method", "check")]
    return out


@pytest.fixture
def store(tmp_path: Path) -> BaselineStore:
    store = BaselineStore(tmp_path / "baselines")
    store.update(collect_entries(records("baseline")), "missing")
    return store


@pytest.fixture
def page(store: BaselineStore) -> str:
    return render_html(build_report([("regressed.jsonl", records("regressed"))], store=store))


class Tags(HTMLParser):
    """Every start tag and every attribute name of a page."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[str] = []
        self.attributes: set[str] = set()
        self.script_text: list[str] = []
        self._in_script = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        self.attributes |= {name for name, _ in attrs}
        self._in_script = tag == "script"

    def handle_endtag(self, tag: str) -> None:
        self._in_script = False

    def handle_data(self, data: str) -> None:
        if self._in_script:
            self.script_text.append(data)


def parse(page: str) -> Tags:
    tags = Tags()
    tags.feed(page)
    return tags


def test_text_from_models_datasets_and_suites_is_escaped(page: str) -> None:
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "<script>alert(1)" not in page
    assert "<img src=x" not in page
    parsed = parse(page)
    assert parsed.tags.count("script") == 1 and "img" not in parsed.tags
    assert not any(name.startswith("on") for name in parsed.attributes)


def test_the_page_is_self_contained(page: str) -> None:
    urls = set(re.findall(r"https?://[^\s\"'<>)]+", page))
    assert urls <= {"http://www.w3.org/2000/svg"}
    parsed = parse(page)
    assert not {"link", "img", "iframe", "object", "embed"} & set(parsed.tags)
    assert "src" not in parsed.attributes
    assert all(href.startswith("#") for href in re.findall(r'href="([^"]*)"', page))
    assert "@import" not in page and "url(" not in page


def test_the_content_security_policy_allows_only_the_inline_script(page: str) -> None:
    policy = re.search(r'http-equiv="Content-Security-Policy" content="([^"]+)"', page)
    assert policy is not None and "default-src 'none'" in policy.group(1)
    script = "".join(parse(page).script_text)
    digest = base64.b64encode(hashlib.sha256(script.encode()).digest()).decode()
    assert f"'sha256-{digest}'" in policy.group(1)


def test_the_page_has_every_section(page: str) -> None:
    for needle in (
        'id="summary"', 'id="regressions"', 'id="failures"', 'class="matrix"', 'class="diff"',
        'class="chart loss"', 'class="baseline-line"', 'class="chart bars"', 'class="samples"',
        'class="provenance"', 'id="environment"', "cpu-torch2.13.0-transformers5.24.0-peft0.21.2-bnbnone",
    ):
        assert needle in page, needle
    summary = page.index('id="summary"')
    assert summary < page.index('id="regressions"') < page.index('id="failures"') < page.index('class="matrix"')
    assert page.count('class="status-regressed') == 6
    assert "<title>peftcheck report — failed, 17 regression(s)</title>" in page
    assert "synthetic (random weights: not a quality measure)" in page


def test_a_rerun_page_says_nothing_regressed(store: BaselineStore) -> None:
    page = render_html(build_report([("rerun.jsonl", records("rerun"))], store=store))
    assert 'data-status="passed"' in page and 'id="regressions"' not in page
    assert 'class="status-regressed' not in page


def test_hundreds_of_items_render_quickly_into_a_small_page(store: BaselineStore, tmp_path: Path) -> None:
    big = many(records("regressed"), 20)
    report = build_report([("big.jsonl", big)], store=store)
    assert sum(len(m.cells) for s in report.suites for m in s.methods) >= 400
    started = time.perf_counter()
    path = write_html(report, tmp_path / "big.html")
    assert time.perf_counter() - started < 5  # on two shared CPU cores; about 0.3 s alone
    assert path.stat().st_size < 3_000_000


def test_write_html_leaves_no_temporary_file(page: str, store: BaselineStore, tmp_path: Path) -> None:
    out = write_html(build_report([("r", records("rerun"))], store=store), tmp_path / "out" / "index.html")
    assert [p.name for p in out.parent.iterdir()] == ["index.html"]


@given(st.text(min_size=1, max_size=40))
def test_any_text_in_a_sample_or_message_stays_text(text: str) -> None:
    run = copy.deepcopy(records("regressed"))
    for record in run:
        if record["kind"] == "method":
            record["samples"] = [{"prompt": text, "before": text, "after": text}]
            record["error"] = text
            record["model"]["source"] = text
        elif record["kind"] == "check":
            record["message"] = text
            record["bound"] = text
    page = render_html(build_report([(text, run)]))
    plain = render_html(build_report([("x", records("regressed"))]))
    assert sorted(set(parse(page).tags)) == sorted(set(parse(plain).tags))
    assert parse(page).tags.count("script") == 1
    if text.strip() and "\r" not in text:
        assert str(escape(text)) in page


def timed_run() -> list[dict[str, Any]]:
    """lora records its preparation; ia3 comes from an older file that does not."""

    def check(method: str, check: str, duration: float, nodeid: str | None = None) -> dict[str, Any]:
        return {"kind": "check", "suite": "s", "method": method, "check": check, "outcome": "passed",
                "nodeid": nodeid or f"s.yaml::s::{method}::{check}", "duration_s": duration}

    return [
        {"kind": "session", "env": {}},
        check("lora", "a", 190.2), check("lora", "b", 4.2), check("lora", "c", 3.0),
        check("ia3", "a", 8.0), check("ia3", "<b>x</b>", 1.5, nodeid="s.yaml::<b>x</b>"),
        {"kind": "method", "suite": "s", "method": "lora", "status": "trained", "prepare_time_s": 187.0,
         "train_time_s": 150.0},
        {"kind": "method", "suite": "s", "method": "ia3", "status": "trained", "train_time_s": 5.0},
    ]


def test_the_time_table_shows_each_methods_share() -> None:
    page = render_html(build_report([("timed.jsonl", timed_run())]))
    table = page[page.index('<table class="timing">'):]
    table = table[: table.index("</table>")]
    assert "<th>prepare</th><th>of which training</th><th>checks</th><th>total</th><th>share</th>" in table
    num = '<td class="num">{}</td>'.format
    assert ("<tr><td>lora</td>" + "".join(map(num, ("3m07s", "2m30s", "10.4s", "3m17s", "95%")))) in table
    assert ("<tr><td>ia3</td>" + "".join(map(num, ("—", "5.0s", "—", "9.5s", "5%")))) in table
    assert ("<tfoot><tr><th>suite</th>" + "".join(map(num, ("3m07s", "2m35s", "10.4s", "3m27s", "100%")))) in table


def test_the_slowest_items_are_listed_before_the_environment() -> None:
    page = render_html(build_report([("timed.jsonl", timed_run())]))
    assert page.index('id="time"') < page.index('id="environment"')
    listed = re.findall(r"<li><strong>([^<]+)</strong> <a href=\"#([^\"]+)\"><code>([^<]+)</code>", page)
    assert [(t, code) for t, _, code in listed] == [
        ("3m10s", "s.yaml::s::lora::a"), ("8.0s", "s.yaml::s::ia3::a"), ("4.2s", "s.yaml::s::lora::b"),
        ("3.0s", "s.yaml::s::lora::c"), ("1.5s", "s.yaml::&lt;b&gt;x&lt;/b&gt;")]
    assert all(f'id="{anchor}"' in page for _, anchor, _ in listed)  # each links to its cell
    assert "<b>x</b>" not in page
    assert '<a href="#suite-s">s</a></td><td class="num">3m27s</td><td>lora (3m17s, 95%)</td>' in page


@pytest.mark.parametrize(("seconds", "text"), [
    (None, "—"), (0.0, "0.0s"), (0.01, "<0.1s"), (4.21, "4.2s"), (59.9, "59.9s"), (187.0, "3m07s"),
    (3900.0, "1h05m"), (float("nan"), "—"),
])  # fmt: skip
def test_durations_read_like_the_terminals(seconds: float | None, text: str) -> None:
    from peftcheck.report.format import duration

    assert duration(seconds) == text


def test_a_check_replayed_from_the_check_cache_says_so() -> None:
    run = records("regressed")
    checks = [r for r in run if r["kind"] == "check"]
    replayed = {**checks[0], "from_cache": True}
    page = render_html(build_report([("r.jsonl", [r if r is not checks[0] else replayed for r in run])]))
    cell = page[page.index(f'id="{_cell_anchor(replayed)}"'):]
    assert "from the check cache" in cell[: cell.index("</td>")]
    assert page.count("from the check cache") == 1  # the others were measured in the run


def _cell_anchor(record: dict[str, Any]) -> str:
    from peftcheck.report.model import _cell

    return _cell(record, {}).anchor

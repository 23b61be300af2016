"""The HTML report in a real browser: headless Chromium loads it, runs its script, draws it."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest

from peftcheck.baseline import BaselineStore, collect_entries
from peftcheck.record import read_records
from peftcheck.report import build_report
from peftcheck.report.html import write_html

FIXTURES = Path(__file__).parents[2] / "fixtures" / "results"
BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable", "chrome-headless-shell")


def find_chromium() -> str | None:
    configured = os.environ.get("PEFTCHECK_CHROMIUM")
    if configured:
        return configured
    return next((path for name in BROWSERS if (path := shutil.which(name))), None)


CHROMIUM = find_chromium()
pytestmark = pytest.mark.skipif(
    CHROMIUM is None,
    reason="headless Chromium not found: apt-get install chromium (or set PEFTCHECK_CHROMIUM to a binary)",
)


def chromium(page: Path, tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    assert CHROMIUM is not None
    command = [
        CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--hide-scrollbars",
        f"--user-data-dir={tmp_path / 'profile'}", "--enable-logging=stderr", "--v=0",
        "--virtual-time-budget=5000", *args, page.as_uri(),
    ]
    return subprocess.run(command, capture_output=True, text=True, timeout=120, check=True)


class Elements(HTMLParser):
    """Every element and attribute name of a serialized DOM."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[str] = []
        self.attributes: set[str] = set()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        self.attributes |= {name for name, _ in attrs}


def records(name: str) -> list[dict[str, Any]]:
    return read_records(FIXTURES / f"{name}.jsonl")


@pytest.fixture
def regressed_page(tmp_path: Path) -> Path:
    store = BaselineStore(tmp_path / "baselines")
    store.update(collect_entries(records("baseline")), "missing")
    return write_html(build_report([("regressed.jsonl", records("regressed"))], store=store), tmp_path / "index.html")


def test_the_report_renders_with_its_script_and_without_injected_markup(regressed_page: Path, tmp_path: Path) -> None:
    done = chromium(regressed_page, tmp_path, "--dump-dom")
    dom = done.stdout
    assert re.search(r'<html[^>]*data-js="ready"', dom), "the inline script did not run (CSP hash?)"
    assert "Content Security Policy" not in done.stderr, done.stderr
    elements = Elements()
    elements.feed(dom)  # the DOM after the browser ran the page: what it made of the fixture's markup
    assert "img" not in elements.tags and elements.tags.count("script") == 1
    assert not {name for name in elements.attributes if name.startswith("on") or name == "data-pwned"}
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in dom
    assert 'id="only-problems"' in dom and re.search(r'id="only-problems"(?![^>]*disabled)', dom)
    assert '<span id="status" class="banner failed">failed</span>' in dom
    for needle in ('id="regressions"', 'class="matrix"', 'class="diff"', 'class="chart loss"',
                   'class="baseline-line"', 'class="chart bars"', 'class="samples"', 'id="environment"'):
        assert needle in dom, needle
    # ia3's three errors are one row, its items behind a closed fold (issue 26)
    assert re.search(r'<tr class="group" data-count="3">.*?<details class="items"><summary>', dom)


def test_problems_only_view(regressed_page: Path, tmp_path: Path) -> None:
    link = regressed_page.with_name("link.html")  # chromium takes a file URL; the hash picks the view
    link.write_text(f'<meta http-equiv="refresh" content="0; url={regressed_page.name}#problems">', encoding="utf-8")
    dom = chromium(link, tmp_path, "--dump-dom").stdout
    assert re.search(r'<body[^>]*class="only-problems"', dom), dom[:500]


def test_the_screenshot_is_not_blank(regressed_page: Path, tmp_path: Path) -> None:
    shot = tmp_path / "report.png"
    chromium(regressed_page, tmp_path, "--window-size=1280,2400", f"--screenshot={shot}")
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert shot.stat().st_size > 60_000  # a blank 1280x2400 page compresses to under 10 kB


def test_hundreds_of_items_open_fast(tmp_path: Path) -> None:
    base = records("regressed")
    run = [r for r in base if r["kind"] == "session"]
    for i in range(25):
        run += [{**r, "suite": f"{r['suite']}-{i}"} for r in base if r["kind"] in ("method", "check")]
    page = write_html(build_report([("big.jsonl", run)]), tmp_path / "big.html")
    started = time.perf_counter()
    dom = chromium(page, tmp_path, "--dump-dom").stdout
    elapsed = time.perf_counter() - started
    assert dom.count('class="cell outcome-') >= 500
    assert 'data-js="ready"' in dom
    assert elapsed < 30, f"{elapsed:.1f} s to load {page.stat().st_size} bytes"  # about 2 s alone

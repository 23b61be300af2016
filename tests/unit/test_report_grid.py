"""`peftcheck grid`: the method x check page of one run (issue 13)."""

from __future__ import annotations

import json
from pathlib import Path

from peftcheck.cli import main
from peftcheck.report.grid import render_grid

SESSION = {"kind": "session", "env": {"versions": {"peft": "0.21.2", "transformers": "5.24.0"}, "python": "3.11",
                                      "cpu_model": "AMD EPYC", "cpu_count": 2, "cpu_flags": ["avx2"]}}  # fmt: skip


def _check(method: str, check: str, outcome: str, **extra: object) -> dict:
    return {"kind": "check", "suite": "s", "suite_file": "suites/s.yaml", "method": method, "check": check,
            "outcome": outcome, **extra}  # fmt: skip


RECORDS = [
    SESSION,
    _check("lora", "merge", "passed"),
    _check("lora", "save", "failed", message="dropped a tensor"),
    _check("prompt", "merge", "skipped", message="not applicable: adds virtual tokens | no weights"),
    _check("prompt", "save", "failed", xfail={"reason": "upstream: a | b, 512 trainable"}),
    _check("prefix", "save", "failed", xfail={"reason": "upstream: a | b, 512 trainable"}),
    _check("prefix", "merge", "error", message="Traceback"),
]


def test_every_cell_says_what_happened() -> None:
    page = render_grid(RECORDS, title="Grid")
    rows = {line.split(" | ")[0].lstrip("| "): line for line in page.splitlines() if line.startswith("| s/")}
    assert rows["s/lora"] == "| s/lora | ✓ | ✗ |"
    assert rows["s/prompt"] == "| s/prompt | – | xf1 |"
    assert rows["s/prefix"] == "| s/prefix | ✗ | xf1 |"  # an error is red too
    assert "**3 methods × 2 checks: 2 red, 2 upstream (strict xfail), 1 green, 1 not applicable.**" in page
    # one finding for one reason, escaped so a | cannot break the table
    assert page.count("upstream: a \\| b, 512 trainable") == 1 and "1. upstream: a \\| b" in page
    assert "- **s/prompt**: `merge`: adds virtual tokens \\| no weights" in page
    assert "peft 0.21.2, transformers 5.24.0" in page and "AMD EPYC, 2 cores (flags avx2)" in page


def test_the_command_writes_the_page(tmp_path: Path) -> None:
    results = tmp_path / "results.jsonl"
    results.write_text("".join(json.dumps(r) + "\n" for r in RECORDS))
    out = tmp_path / "grid.md"
    assert main(["grid", str(results), "-o", str(out), "--title", "Sweep"]) == 0
    assert out.read_text().startswith("# Sweep\n") and "| s/lora | ✓ | ✗ |" in out.read_text()
    assert main(["grid", str(tmp_path / "missing.jsonl")]) == 2

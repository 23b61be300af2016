"""peftcheck.matrix: merging results of version cells, flips in the componentwise version order,
escaping and the self-contained page, and the `peftcheck matrix` command."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from peftcheck.cli import main
from peftcheck.matrix import build_matrix, render_html, render_text

OLD = {"peft": "0.13.2", "transformers": "4.46.3", "bitsandbytes": "0.44.1", "torch": "2.13.0"}
MID = {"peft": "0.17.1", "transformers": "4.57.6", "bitsandbytes": "0.50.2", "torch": "2.13.0"}
NEW = {"peft": "0.21.2", "transformers": "5.24.0", "bitsandbytes": "0.50.2", "torch": "2.13.0"}
# older bitsandbytes with newer peft/transformers: neither newer nor older than MID
SIDE = {"peft": "0.21.2", "transformers": "5.24.0", "bitsandbytes": "0.45.5", "torch": "2.13.0"}


def check(method: str, name: str, outcome: str, value: float | None = 1.0, **extra: Any) -> dict[str, Any]:
    return {"kind": "check", "suite": "matrix", "method": method, "check": name, "outcome": outcome,
            "xfail": None, "value": value, "bound": "<= 1", "unit": "ratio", "message": f"{name} {outcome}",
            **extra}  # fmt: skip


def run(versions: dict[str, str], *checks: dict[str, Any], cell: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    records = [{"kind": "session", "env": {"versions": versions, "python": "3.11.7"}}, *checks]
    return records + ([{"kind": "cell", **cell}] if cell else [])


def outcomes(matrix: Any, method: str, name: str) -> list[str | None]:
    row = next(r for r in matrix.rows if (r.method, r.check) == (method, name))
    return [c.outcome for c in row.cells]


# (case, runs as (versions, outcome of lora/loss_decrease), expected flips as (kind, was, now))
FLIP_CASES = [
    ("pass everywhere", [(OLD, "passed"), (MID, "passed"), (NEW, "passed")], []),
    ("regressed once", [(OLD, "passed"), (MID, "failed"), (NEW, "failed")], [("regressed", "0.13.2", "0.17.1")]),
    ("fixed", [(OLD, "failed"), (MID, "passed"), (NEW, "passed")], [("fixed", "0.13.2", "0.17.1")]),
    ("error counts as failing", [(OLD, "passed"), (NEW, "error")], [("regressed", "0.13.2", "0.21.2")]),
    ("skip is neither", [(OLD, "passed"), (MID, "skipped"), (NEW, "failed")], [("regressed", "0.13.2", "0.21.2")]),
    ("incomparable cells do not flip", [(MID, "passed"), (SIDE, "failed")], []),
    ("comparable through an older cell", [(OLD, "passed"), (SIDE, "failed")], [("regressed", "0.13.2", "0.21.2")]),
    ("back and forth", [(OLD, "passed"), (MID, "failed"), (NEW, "passed")],
     [("regressed", "0.13.2", "0.17.1"), ("fixed", "0.17.1", "0.21.2")]),
]  # fmt: skip


@pytest.mark.parametrize("case, cells, expected", FLIP_CASES, ids=[c[0] for c in FLIP_CASES])
def test_flips_follow_the_componentwise_version_order(case: str, cells: Any, expected: Any) -> None:
    runs = [(f"r{i}.jsonl", run(v, check("lora", "loss_decrease", o))) for i, (v, o) in enumerate(cells)]
    matrix = build_matrix(list(reversed(runs)))  # argument order must not matter
    got = [(f.kind, f.was.split()[1], f.now.split()[1]) for f in matrix.flips]
    assert sorted(got) == sorted(expected)
    row = matrix.rows[0]
    highlighted = [c.flip for c in row.cells if c.flip]
    assert sorted(highlighted) == sorted(kind for kind, _, _ in expected)


def test_columns_are_ordered_oldest_first_and_label_their_versions() -> None:
    matrix = build_matrix([("new", run(NEW, check("lora", "x", "passed"))), ("old", run(OLD, check("lora", "x", "passed")))])
    assert [c.versions["peft"] for c in matrix.columns] == ["0.13.2", "0.21.2"]
    assert matrix.columns[0].label == "peft 0.13.2 · tf 4.46.3 · bnb 0.44.1"
    assert matrix.varying == ["peft", "transformers", "bitsandbytes"]
    declared = run({**OLD, "torch": "2.13.0+cpu"}, check("lora", "x", "passed"))  # a local label is no new release
    assert "torch" not in build_matrix([("a", declared), ("b", run(NEW, check("lora", "x", "passed")))]).varying


def test_files_of_one_version_cell_merge_into_one_column() -> None:
    a = run(MID, check("lora", "x", "passed"))
    b = run(MID, check("houlsby", "y", "skipped", None), cell={"cell": "mid", "status": "ran", "install_s": 3, "run_s": 7})
    matrix = build_matrix([("a.jsonl", a), ("b.jsonl", b)])
    assert len(matrix.columns) == 1
    column = matrix.columns[0]
    assert column.files == ["a.jsonl", "b.jsonl"] and column.cell == "mid" and matrix.wall_s == 10
    assert column.counts == {"passed": 1, "skipped": 1}


def test_a_check_missing_from_a_cell_is_not_run_and_never_flips() -> None:
    matrix = build_matrix([("o", run(OLD, check("lora", "x", "passed"), check("qlora", "x", "passed"))),
                           ("n", run(NEW, check("lora", "x", "passed")))])  # fmt: skip
    assert outcomes(matrix, "qlora", "x") == ["passed", None]
    assert matrix.flips == []


def test_a_cell_whose_import_failed_errs_on_every_row_and_flips() -> None:
    broken = run(NEW, cell={"cell": "new", "status": "import-failed", "reason": "ImportError: cannot import name 'Cache'"})
    matrix = build_matrix([("o", run(OLD, check("prefix", "loss_decrease", "passed"))), ("n", broken)])
    assert outcomes(matrix, "prefix", "loss_decrease") == ["passed", "error"]
    assert [f.kind for f in matrix.flips] == ["regressed"]
    assert "cannot import name" in matrix.flips[0].message
    assert matrix.columns[1].status_text == "import failed"


def test_an_import_failed_cell_errs_only_on_the_suites_it_runs() -> None:
    # a historic cell that runs suites/historic.yaml alone must not turn the matrix suite's rows red
    broken = run(NEW, cell={"cell": "new", "status": "import-failed", "reason": "ModuleNotFoundError",
                            "suites": ["suites/historic.yaml"]})  # fmt: skip
    old = run(OLD, check("prefix", "loss_decrease", "passed", suite_file="suites/matrix.yaml"),
              {**check("lora_bias", "merge", "passed", suite_file="suites/historic.yaml"), "suite": "historic"})
    matrix = build_matrix([("o", old), ("n", broken)])
    assert outcomes(matrix, "prefix", "loss_decrease") == ["passed", None]
    assert outcomes(matrix, "lora_bias", "merge") == ["passed", "error"]
    assert [(f.method, f.kind) for f in matrix.flips] == [("lora_bias", "regressed")]


def test_a_cell_that_cannot_install_is_listed_with_its_reason_and_runs_nothing() -> None:
    skipped = run({"peft": "0.21.2", "transformers": "5.24.0", "adapters": "1.3.0", "torch": "2.13.0"},
                  cell={"cell": "x", "status": "not-installable", "reason": "adapters 1.3.0 depends on transformers~=4.57.6"})  # fmt: skip
    matrix = build_matrix([("o", run(OLD, check("lora", "x", "passed"))), ("s", skipped)])
    assert outcomes(matrix, "lora", "x") == ["passed", None]
    assert matrix.flips == []
    html = render_html(matrix)
    assert "not installable" in html and "depends on transformers~=4.57.6" in html
    assert any("not installable" in line for line in render_text(matrix))


def test_xfail_shows_and_still_counts_as_failing() -> None:
    xf = check("lora", "target_coverage", "failed", xfail={"reason": "peft ignores fc_in"})
    matrix = build_matrix([("o", run(OLD, check("lora", "target_coverage", "passed"))), ("n", run(NEW, xf))])
    assert [f.kind for f in matrix.flips] == ["regressed"]
    assert "xfail: peft ignores fc_in" in render_html(matrix)


HOSTILE = '<script>alert("x")</script><img src=x onerror=alert(1)>'


def test_everything_from_results_is_escaped() -> None:
    evil = check(HOSTILE, HOSTILE, "failed", message=HOSTILE, bound=HOSTILE, unit=HOSTILE)
    versions = {**NEW, "peft": HOSTILE}
    matrix = build_matrix([("o", run(OLD, check(HOSTILE, HOSTILE, "passed"))),
                           ("n", run(versions, evil, cell={"cell": HOSTILE, "note": HOSTILE, "reason": HOSTILE}))])  # fmt: skip
    html = render_html(matrix)
    assert "<script" not in html and "<img" not in html
    assert "&lt;script&gt;" in html


def test_the_page_is_self_contained() -> None:
    matrix = build_matrix([("o", run(OLD, check("lora", "x", "passed"))), ("n", run(NEW, check("lora", "x", "failed")))])
    html = render_html(matrix)
    assert "default-src 'none'" in html
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:|//)""", html)
    assert "<script" not in html and "<link" not in html
    assert "first failing" in html and 'class="failed regressed"' in html


def _write(path: Path, records: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def test_cli_writes_the_page_and_exits_1_on_a_regression(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    old = _write(tmp_path / "old.jsonl", run(OLD, check("lora", "x", "passed")))
    new = _write(tmp_path / "new.jsonl", run(NEW, check("lora", "x", "failed")))
    out = tmp_path / "page" / "index.html"
    assert main(["matrix", str(old), str(new), "-o", str(out)]) == 1
    assert out.read_text(encoding="utf-8").startswith("<!DOCTYPE html>")
    text = capsys.readouterr().out
    assert "regressed: matrix/lora: x passes in [peft 0.13.2" in text and "first fails in [peft 0.21.2" in text
    assert main(["matrix", str(old), "-o", str(out)]) == 0


def test_cli_rejects_a_missing_file_and_a_file_without_sessions(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["matrix", str(tmp_path / "nope.jsonl")])
    assert exc.value.code == 2
    assert "no such results file" in capsys.readouterr().err
    empty = _write(tmp_path / "empty.jsonl", [])
    with pytest.warns(UserWarning, match="no session record"):
        assert main(["matrix", str(empty), "-o", str(tmp_path / "x.html")]) == 2


def test_flips_of_one_method_between_the_same_cells_are_listed_together() -> None:
    old = run(OLD, check("qlora", "a", "failed"), check("qlora", "b", "failed"), check("lora", "a", "passed"))
    new = run(NEW, check("qlora", "a", "passed"), check("qlora", "b", "passed"), check("lora", "a", "failed"))
    matrix = build_matrix([("o", old), ("n", new)])
    groups = [(f.method, f.kind, checks) for f, checks in matrix.flip_groups]
    assert groups == [("qlora", "fixed", ["a", "b"]), ("lora", "regressed", ["a"])]

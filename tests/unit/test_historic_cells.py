"""The historic-bug cells of noxfile.py: affected/fixed pairs that select what their suites have."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

from peftcheck.loader import load_suite

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def noxfile():
    pytest.importorskip("nox")
    spec = importlib.util.spec_from_file_location("peftcheck_noxfile", ROOT / "noxfile.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the file runs
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        del sys.modules[spec.name]


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in text.split("."))


def _historic(noxfile) -> list:
    return [c for c in noxfile.CELLS if "historic" in c.tags]


def test_cell_ids_are_unique(noxfile):
    ids = [c.id for c in noxfile.CELLS]
    assert len(ids) == len(set(ids))


def test_historic_cells_come_in_affected_fixed_pairs(noxfile):
    cells = _historic(noxfile)
    assert len(cells) >= 6 and len(cells) % 2 == 0
    for affected, fixed in zip(cells[::2], cells[1::2]):
        # only the fix differs between the two columns
        assert affected.transformers == fixed.transformers, (affected.id, fixed.id)
        assert _version(affected.peft) < _version(fixed.peft), (affected.id, fixed.id)
        assert (affected.suites, affected.keyword) == (fixed.suites, fixed.keyword)
        assert affected.keyword, f"{affected.id}: a historic cell runs only what its bug is about"
        assert "affected" in affected.note and "fixed" in fixed.note
        assert affected.note.split()[0].startswith("peft#") and fixed.note.split()[0].startswith("peft#")


def test_historic_keywords_name_methods_of_their_suites(noxfile):
    for cell in _historic(noxfile):
        methods = {m for path in cell.suites for m in load_suite(ROOT / path).spec.methods}
        words = [w for w in cell.keyword.replace("(", " ").replace(")", " ").split()
                 if w not in ("and", "or", "not")]  # fmt: skip
        assert any(w in methods for w in words), f"{cell.id}: -k {cell.keyword!r} names no method of {cell.suites}"


def test_historic_cells_are_tagged_for_nox(noxfile):
    for cell, tags in zip(noxfile.CELLS, noxfile._TAGS):
        assert tags[0] == "matrix"
        assert ("historic" in tags) == ("historic" in cell.tags)


def test_historic_suite_loads():
    spec = load_suite(ROOT / "suites" / "historic.yaml").spec
    assert spec.methods["lora_bias"].kwargs["lora_bias"] is True
    # the bug needs a scaling other than 1 and a base layer with a bias (tiny-llama has none)
    kwargs = spec.methods["lora_bias"].kwargs
    assert kwargs["lora_alpha"] / kwargs["r"] != 1
    assert spec.model == "tiny-opt"

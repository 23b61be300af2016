"""The tested set (constraints.txt, issue 24): complete, inside pyproject's ranges, and installed."""

from __future__ import annotations

import os
import sys

import pytest

from helpers import ROOT
from peftcheck.tested import DECISIVE, Difference, differences, notice, out_of_range, read_pins

CONSTRAINTS = ROOT / "constraints.txt"


def _requirements() -> list[str]:
    if sys.version_info < (3, 11):
        pytest.skip("reading pyproject.toml needs tomllib (Python 3.11+)")
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    return [*project["dependencies"], *(r for extra in project["optional-dependencies"].values() for r in extra)]


def test_every_decisive_package_is_pinned() -> None:
    pins = read_pins(CONSTRAINTS)
    assert [p for p in DECISIVE if p.lower() not in pins] == []


def test_every_pin_satisfies_the_pyproject_ranges() -> None:
    requirements = _requirements()
    assert out_of_range(read_pins(CONSTRAINTS), requirements) == []
    # the check can fail: a pin below a range is named with the range it breaks
    planted = {**read_pins(CONSTRAINTS), "peft": "0.12.0"}
    assert [b for b in out_of_range(planted, requirements) if b.startswith("peft")] == ["peft==0.12.0 breaks peft>=0.13"]


def test_the_environment_is_the_tested_set() -> None:
    """Red where the tests run on other versions than constraints.txt pins, unless the run says it
    means to (PEFTCHECK_UNPINNED=1: `nox -s latest` and the matrix cells), where it skips naming them."""
    found = differences(read_pins(CONSTRAINTS))
    if found and os.environ.get("PEFTCHECK_UNPINNED"):
        pytest.skip(f"PEFTCHECK_UNPINNED: not the tested set: {', '.join(d.describe() for d in found)}")
    assert found == [], notice(found)


def test_a_local_build_label_is_the_same_release_and_another_version_is_named() -> None:
    import torch

    here = torch.__version__
    assert differences({"torch": here.split("+")[0] + "+cu130"}, ("torch",)) == []
    assert differences({"torch": "0.0.1"}, ("torch",)) == [Difference("torch", here, "0.0.1")]
    assert notice(differences({"torch": "0.0.1"}, ("torch",))).startswith(f"peftcheck: this environment is not the tested set (constraints.txt): torch {here} (tested 0.0.1)")

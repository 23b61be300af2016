"""The tested set: the versions in ``constraints.txt`` that the shipped suites' verdicts hold for.

The project's own runs (README, CI) install with ``-c constraints.txt``; anyone else may run other
versions, and a run says so up front and in its report, since a finding's xfail range or a bound
was verified on the tested set and not on what is installed (issue 24).
"""

from __future__ import annotations

import dataclasses
import os
import re
from importlib import metadata
from pathlib import Path

__all__ = ["DECISIVE", "Difference", "constraints_path", "read_pins", "differences", "notice", "out_of_range"]

# Packages whose version decides a result (a kernel, a default, a bug); the rest of the lock only
# makes the install repeatable. Each must be pinned (tests/unit/test_constraints.py).
DECISIVE = (
    "torch", "transformers", "peft", "bitsandbytes", "trl", "accelerate", "datasets", "tokenizers",
    "evaluate", "safetensors", "huggingface-hub", "numpy", "gguf", "pytest", "hypothesis", "pytest-xdist",
)  # fmt: skip

_PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;#]+)")


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def constraints_path() -> Path | None:
    """``$PEFTCHECK_CONSTRAINTS``, else the checkout's ``constraints.txt`` (beside ``peftcheck/``);
    None where neither exists (peftcheck installed from a wheel into someone's environment)."""
    named = os.environ.get("PEFTCHECK_CONSTRAINTS")
    path = Path(named) if named else Path(__file__).resolve().parents[1] / "constraints.txt"
    return path if path.is_file() else None


def read_pins(path: Path) -> dict[str, str]:
    """Canonical package name -> pinned version, for every ``name==version`` line."""
    pins = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        if match := _PIN.match(line.strip()):
            pins[_canonical(match.group(1))] = match.group(2)
    return pins


def _installed(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


@dataclasses.dataclass(frozen=True)
class Difference:
    package: str
    installed: str | None
    tested: str

    def describe(self) -> str:
        here = self.installed or "not installed"
        return f"{self.package} {here} (tested {self.tested})"


def differences(pins: dict[str, str] | None = None, packages: tuple[str, ...] = DECISIVE) -> list[Difference]:
    """The decisive packages installed at another version than the tested set pins. A local build
    label (``2.13.0+cpu``) is the same release. Empty where no tested set is found."""
    if pins is None:
        path = constraints_path()
        if path is None:
            return []
        pins = read_pins(path)
    found = []
    for package in packages:
        tested = pins.get(_canonical(package))
        if tested is None:
            continue
        installed = _installed(package)
        if installed is None or installed.split("+")[0] != tested.split("+")[0]:
            found.append(Difference(package, installed, tested))
    return found


def notice(found: list[Difference]) -> str | None:
    """One line for the top of a run, or None when the environment is the tested set."""
    if not found:
        return None
    return ("peftcheck: this environment is not the tested set (constraints.txt): "
            + ", ".join(d.describe() for d in found)
            + "; the shipped findings and bounds were verified on the tested set (`peftcheck findings` lists them)")


def out_of_range(pins: dict[str, str], requirements: list[str]) -> list[str]:
    """The pins that break a requirement (``"peft>=0.13"``, as pyproject.toml lists them), each
    said as ``peft==0.12.0 breaks peft>=0.13``; a requirement on an unpinned package is skipped."""
    from packaging.requirements import Requirement

    broken = []
    for text in requirements:
        requirement = Requirement(text)
        pinned = pins.get(_canonical(requirement.name))
        if pinned is not None and not requirement.specifier.contains(pinned.split("+")[0], prereleases=True):
            broken.append(f"{requirement.name}=={pinned} breaks {text}")
    return broken

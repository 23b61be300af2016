"""Generated fixtures the shipped suites read: suites/artifacts.yaml's adapter folders (issue 15)."""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def pytest_collect_file(file_path: Path, parent: object) -> None:
    """Write fixtures/adapters/ (once per installed versions) before artifacts.yaml is collected."""
    if file_path.name == "artifacts.yaml" and file_path.parent == Path(__file__).parent:
        sys.path.insert(0, str(ROOT / "fixtures"))
        try:
            import make_adapters
        finally:
            sys.path.remove(str(ROOT / "fixtures"))
        make_adapters.ensure()

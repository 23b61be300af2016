"""Generated fixtures the shipped suites read: suites/artifacts.yaml's adapter folders (issue 15)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


def _asked_for(file_path: Path, config: Any) -> bool:
    """Whether the run's arguments reach ``file_path``: pytest hands every file of a directory to
    this hook, also where the command line named one sibling (``pytest suites/quotes.yaml``)."""
    for arg in config.args:
        for start in (config.invocation_params.dir, config.rootpath):
            target = (Path(start) / arg.split("::")[0]).resolve()
            if target == file_path or target in file_path.parents:
                return True
    return False


def pytest_collect_file(file_path: Path, parent: Any) -> None:
    """Write fixtures/adapters/ (once per installed versions) before artifacts.yaml is collected."""
    if (file_path.name == "artifacts.yaml" and file_path.parent == Path(__file__).parent
            and _asked_for(file_path.resolve(), parent.config)):  # fmt: skip
        sys.path.insert(0, str(ROOT / "fixtures"))
        try:
            import make_adapters
        finally:
            sys.path.remove(str(ROOT / "fixtures"))
        make_adapters.ensure()

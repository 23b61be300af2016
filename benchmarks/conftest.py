"""Fixtures of the pytest-benchmark speed benchmarks: the resources suite, trained once.

Not collected by the default test run (testpaths are tests/ and suites/). Run them with

    PEFTCHECK_DATA_DIR=/work/shared/data pytest benchmarks/ --benchmark-autosave
    pytest benchmarks/ --bench-tiny            # tiny-opt on the fixture corpus: a smoke run
    pytest-benchmark compare                   # or --benchmark-compare against a saved run
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("peftcheck-bench", "peftcheck benchmarks")
    group.addoption(
        "--bench-suite", dest="bench_suite", default=str(ROOT / "suites" / "resources.yaml"), metavar="FILE",
        help="suite whose methods are benchmarked (default: suites/resources.yaml)",
    )  # fmt: skip
    group.addoption(
        "--bench-tiny", dest="bench_tiny", action="store_true", default=False,
        help="swap in tiny-opt and the fixture corpus (a quick smoke run; default: off)",
    )  # fmt: skip
    group.addoption(
        "--bench-threads", dest="bench_threads", type=int, default=1, metavar="N",
        help="torch threads while timing; 1 is steadiest on a shared CPU (default: 1)",
    )  # fmt: skip
    group.addoption(
        "--bench-rounds", dest="bench_rounds", type=int, default=10, metavar="N",
        help="pytest-benchmark rounds per benchmark, after one warm-up round (default: 10)",
    )  # fmt: skip


@dataclasses.dataclass
class Bench:
    """The trained methods of one suite and the timing settings."""

    pipeline: Any
    loaded: Any
    threads: int
    rounds: int

    def artifact(self, method: str) -> Any:
        if method not in self.loaded.spec.methods:
            pytest.skip(f"the suite has no method {method!r}")
        return self.pipeline.artifact(self.loaded, method)


@pytest.fixture(scope="session")
def bench(request: pytest.FixtureRequest) -> Any:
    import yaml

    from peftcheck.cache import Pipeline
    from peftcheck.spec import load_suite_text

    path = Path(request.config.getoption("bench_suite"))
    raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    raw["expect"] = {}
    for method in raw["methods"].values():
        method.pop("expect", None)
    if request.config.getoption("bench_tiny"):
        raw["model"] = "tiny-opt"
        raw["data"] = {"dataset": str(ROOT / "fixtures" / "tiny_corpus.jsonl"), "split": "train[:32]",
                       "text_field": "text", "max_length": 24}  # fmt: skip
    loaded = load_suite_text(yaml.safe_dump(raw, sort_keys=False), path=str(path))
    pipeline = Pipeline(progress=lambda line: None, max_live=len(raw["methods"]))
    yield Bench(pipeline, loaded, request.config.getoption("bench_threads"), request.config.getoption("bench_rounds"))
    pipeline.close()

"""--peftcheck-shard I/N: whole method clusters per shard, every item in exactly one (issue 14);
and no_regression ordered after its method's other checks. Collection only: nothing trains."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from helpers import tiny_suite

pytest_plugins = ["pytester"]

LORA = {"peft": "LoraConfig", "r": 2, "target_modules": ["q_proj", "v_proj"]}
# a: alone; b <- c (throughput reference) and c <- d (memory_footprint.relative_to): one cluster
# {b, c, d}; e names f through co_resident's adapters: {e, f}; g alone
METHODS = {
    "a": LORA,
    "b": LORA,
    "c": {**LORA, "expect": {"throughput": {"reference": "b", "min_ratio": 0.1}}},
    "d": {**LORA, "expect": {"memory_footprint": {"relative_to": "c", "max_ratio": 2.0}}},
    "e": {**LORA, "expect": {"co_resident": {"adapters": ["f"]}}},
    "f": LORA,
    "g": LORA,
}
CLUSTERS = [{"a"}, {"b", "c", "d"}, {"e", "f"}, {"g"}]


def write(pytester: pytest.Pytester) -> None:
    expect = {"no_regression": {}, "trainable_ratio": {"max": 0.5}, "base_frozen": {}}  # no_regression first
    suite = tiny_suite(METHODS, expect=expect)
    pytester.makefile(".yaml", tiny=yaml.safe_dump(suite, sort_keys=False))
    pytester.makepyfile(test_plain="import pytest\n\n@pytest.mark.parametrize('n', range(5))\ndef test_n(n):\n    pass\n")


def collected(pytester: pytest.Pytester, *args: str) -> list[str]:
    result = pytester.runpytest("--collect-only", "-q", *args)
    assert result.ret == 0, result.stdout.str()
    return [line for line in result.stdout.lines if "::" in line and not line.startswith(("peftcheck", " "))]


def test_shards_cover_every_item_once_and_never_split_a_cluster(pytester: pytest.Pytester) -> None:
    write(pytester)
    everything = collected(pytester)
    assert len(everything) == 7 * 3 + 3 + 5
    shards = [collected(pytester, "--peftcheck-shard", f"{i}/3") for i in (1, 2, 3)]
    assert sorted(sum(shards, [])) == sorted(everything)  # every item, exactly once
    for cluster in CLUSTERS:
        owners = {i for i, shard in enumerate(shards) for nodeid in shard
                  if nodeid.startswith("tiny.yaml") and nodeid.split("::")[2] in cluster}
        assert len(owners) == 1, (cluster, owners)
    assert all(shards), "three shards over four clusters: none is empty"


def test_shards_balance_by_the_baselines_train_times(pytester: pytest.Pytester) -> None:
    from peftcheck.baseline import env_key
    from peftcheck.record import environment

    write(pytester)
    # g trains for 100 s, every other method 1 s: g gets a shard of its own
    methods = {m: {"fingerprint": "x", "metrics": {"train_time_s": {"unit": "s", "samples": [100.0 if m == "g" else 1.0]}}}
               for m in METHODS}
    path = pytester.path / "baselines" / env_key(environment()) / "tiny.json"
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({"schema": 1, "suite": "tiny", "env": {}, "methods": methods}), encoding="utf-8")
    shards = [collected(pytester, "--peftcheck-shard", f"{i}/2") for i in (1, 2)]
    heavy = next(s for s in shards if any("::g::" in n for n in s))
    assert {n.split("::")[2] for n in heavy if "::" in n and n.startswith("tiny.yaml")} == {"g"}


def test_no_regression_runs_after_its_methods_other_checks(pytester: pytest.Pytester) -> None:
    write(pytester)
    for method in METHODS:
        checks = [n.split("::")[3] for n in collected(pytester) if n.startswith(f"tiny.yaml::tiny::{method}::")]
        assert checks[-1] == "no_regression" and len(checks) == len(set(checks)), checks


@pytest.mark.parametrize("value", ["0/2", "3/2", "1", "a/b", "1/0"])
def test_bad_shards_are_quoted(pytester: pytest.Pytester, value: str) -> None:
    result = pytester.runpytest("--peftcheck-shard", value)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([f"*--peftcheck-shard: got {value!r}, expected I/N with 1 <= I <= N*"])


def test_report_merges_the_shards_of_one_run(tmp_path: Path) -> None:
    from peftcheck.cli import main
    from peftcheck.report.model import build_report
    from peftcheck.shard import merge_shards

    env = {"python": "3.11", "versions": {"torch": "2.13.0"}}
    files = []
    for index, method in ((1, "a"), (2, "b")):
        records = [
            {"kind": "session", "env": env, "shard": {"index": index, "count": 2}},
            {"kind": "method", "suite": "tiny", "suite_file": "tiny.yaml", "method": method, "status": "trained",
             "metrics": {"final_loss": {"value": 1.0, "unit": "nats"}}},
            {"kind": "check", "suite": "tiny", "suite_file": "tiny.yaml", "method": method, "check": "base_frozen",
             "nodeid": f"tiny.yaml::tiny::{method}::base_frozen", "outcome": "passed"},
            {"kind": "end", "env": env},
        ]
        files.append(tmp_path / f"shard{index}.jsonl")
        files[-1].write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    from peftcheck.record import read_records

    runs = merge_shards((str(f), read_records(f)) for f in files)
    assert len(runs) == 1
    report = build_report(runs)
    assert [(s.title, [m.method for m in s.methods]) for s in report.suites] == [("tiny", ["a", "b"])]
    assert main(["report", *map(str, files), "-o", str(tmp_path / "r.html")]) == 0
    page = (tmp_path / "r.html").read_text(encoding="utf-8")
    assert "tiny (run 1)" not in page and "tiny (run 2)" not in page  # one run, not two

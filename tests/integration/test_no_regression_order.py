"""no_regression compares what its method's other checks measured, whatever their order in the
suite (issue 14): it runs after them and reads their Measurements through the Session."""

from __future__ import annotations

import json

import pytest
import yaml

from helpers import tiny_suite

pytest_plugins = ["pytester"]

LORA = {"peft": "LoraConfig", "r": 2, "target_modules": ["q_proj", "v_proj"]}


def test_no_regression_listed_first_still_sees_the_merge_figures(pytester: pytest.Pytester) -> None:
    from peftcheck.baseline import env_key
    from peftcheck.record import environment

    # listed before merge_equivalence, and told to compare only the figure that check returns
    expect = {"no_regression": {"metrics": ["merge_max_abs_diff"]}, "merge_equivalence": {}}
    pytester.makefile(".yaml", tiny=yaml.safe_dump(tiny_suite({"lora": LORA}, expect=expect), sort_keys=False))
    baseline = {"schema": 1, "suite": "tiny", "env": {}, "methods": {"lora": {"fingerprint": "x", "metrics": {
        "merge_max_abs_diff": {"unit": "logits", "samples": [1.0]}}}}}  # fmt: skip
    path = pytester.path / "baselines" / env_key(environment()) / "tiny.json"
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps(baseline), encoding="utf-8")
    result = pytester.runpytest("-p", "no:cacheprovider", "-v")
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines(["*::lora::merge_equivalence PASSED*", "*::lora::no_regression PASSED*"])
    records = [json.loads(line) for line in (pytester.path / "reports" / "results.jsonl").open(encoding="utf-8")]
    check = next(r for r in records if r.get("check") == "no_regression")
    [merge] = [c for c in check["details"]["comparisons"] if c["metric"] == "merge_max_abs_diff"]
    assert merge["current"] is not None and merge["current"] < 1e-3 and merge["status"] != "missing"
    method = next(r for r in records if r["kind"] == "method")
    assert method["metrics"]["merge_max_abs_diff"]["value"] == merge["current"]  # the Session merged it in

"""Baseline store and tolerance-aware comparison (peftcheck.baseline) and the no_regression check."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from peftcheck.baseline import (
    BaselineStore,
    MetricSpec,
    MetricSpecs,
    Samples,
    Tolerance,
    collect_entries,
    compare_metric,
    compare_metrics,
    dumps_readable,
    env_key,
    parse_gate,
    parse_tolerance,
)
from peftcheck.checks import NotApplicable
from peftcheck.checks.regression import NoRegressionParams, no_regression
from peftcheck.record import read_records

FIXTURES = Path(__file__).parents[2] / "fixtures" / "results"
ENV = {
    "device": "cpu",
    "versions": {"torch": "2.13.0+cpu", "transformers": "5.24.0", "peft": "0.21.2", "bitsandbytes": None},
}


def env(**versions: str | None) -> dict[str, Any]:
    return {**ENV, "versions": {**ENV["versions"], **versions}}


# --- tolerances --------------------------------------------------------------------------------

VALID_TOLERANCES = [
    (0.05, Tolerance("absolute", 0.05)),
    (0, Tolerance("absolute", 0.0)),
    ("0.05", Tolerance("absolute", 0.05)),
    ("1e-3", Tolerance("absolute", 0.001)),
    ("10%", Tolerance("relative", 0.10)),
    (" 2.5 % ", Tolerance("relative", 0.025)),
    ("3sigma", Tolerance("noise", 3.0)),
    ("2σ", Tolerance("noise", 2.0)),
    ("3sigma>=20%", Tolerance("noise", 3.0, 0.20)),
]


@pytest.mark.parametrize(("text", "expected"), VALID_TOLERANCES)
def test_parse_tolerance(text: Any, expected: Tolerance) -> None:
    assert parse_tolerance(text) == expected


@pytest.mark.parametrize("text", ["", "-1", -0.5, "ten", "10 percent", "%", "3 sigmas", float("nan"), True, "-5%"])
def test_parse_tolerance_rejects_and_quotes_the_input(text: Any) -> None:
    with pytest.raises(ValueError, match=repr(text).replace("(", r"\(").replace(")", r"\)")[:6]):
        parse_tolerance(text)


@pytest.mark.parametrize("tolerance", [t for _, t in VALID_TOLERANCES])
def test_tolerance_str_parses_back(tolerance: Tolerance) -> None:
    assert parse_tolerance(str(tolerance)) == tolerance


def test_parse_gate() -> None:
    assert parse_gate("peak_rss_mib:10%") == ("peak_rss_mib", Tolerance("relative", 0.1))
    with pytest.raises(ValueError, match="'peak_rss_mib'"):
        parse_gate("peak_rss_mib")


def test_specs_from_raw_names_the_bad_metric() -> None:
    with pytest.raises(ValueError, match=r"final_loss: tolerance 'lots'"):
        MetricSpecs.from_raw({"final_loss": "lots"})
    with pytest.raises(ValueError, match=r"my_score: direction 'up'"):
        MetricSpecs.from_raw(direction={"my_score": "up"})


def test_defaults_and_fallbacks_know_direction() -> None:
    specs = MetricSpecs()
    assert specs.spec("final_loss").direction == "lower"
    assert specs.spec("tokens_per_s").direction == "higher"
    assert specs.spec("tokens_per_s").portable is False
    assert specs.spec("merged_latency_s", "s").direction == "lower"  # unknown name: by unit
    assert specs.spec("footprint_4bit_mib", "MiB").direction == "lower"
    assert specs.spec("rouge_l", None).direction == "higher"
    assert specs.spec("samples_per_s", None).direction == "higher"
    assert specs.spec("mystery", None).direction == "none"
    overridden = MetricSpecs.from_raw({"final_loss": "0.5"}, {"mystery": "higher"})
    assert overridden.spec("final_loss").tolerance == Tolerance("absolute", 0.5)
    assert overridden.spec("mystery").direction == "higher"


# --- comparison --------------------------------------------------------------------------------

LOWER_ABS = MetricSpec("lower", Tolerance("absolute", 0.1))
HIGHER_REL = MetricSpec("higher", Tolerance("relative", 0.1))
NEUTRAL = MetricSpec("none", Tolerance("absolute", 0.0))

COMPARISONS = [
    # spec, current, baseline samples, status
    (LOWER_ABS, 2.0, [2.0], "unchanged"),
    (LOWER_ABS, 2.1, [2.0], "unchanged"),  # exactly at the tolerance
    (LOWER_ABS, 2.2, [2.0], "regressed"),
    (LOWER_ABS, 1.8, [2.0], "improved"),
    (HIGHER_REL, 95.0, [100.0], "unchanged"),
    (HIGHER_REL, 80.0, [100.0], "regressed"),
    (HIGHER_REL, 120.0, [100.0], "improved"),
    (NEUTRAL, 5.0, [4.0], "changed"),
    (NEUTRAL, 4.0, [4.0], "unchanged"),
    (LOWER_ABS, math.nan, [2.0], "regressed"),  # a diverged loss
    (LOWER_ABS, 2.0, [math.nan], "improved"),
    (LOWER_ABS, math.nan, [math.nan], "unchanged"),
    (LOWER_ABS, math.inf, [2.0], "regressed"),
    (LOWER_ABS, math.inf, [math.inf], "unchanged"),
    (LOWER_ABS, 2.0, [], "new"),
    (LOWER_ABS, None, [2.0], "missing"),
]


@pytest.mark.parametrize(("spec", "current", "samples", "status"), COMPARISONS)
def test_compare_metric(spec: MetricSpec, current: float | None, samples: list[float], status: str) -> None:
    assert compare_metric("m", current, samples, spec=spec).status == status


def test_noise_aware_tolerance_uses_the_samples_spread() -> None:
    spec = MetricSpec("lower", Tolerance("noise", 3.0, 0.01))
    samples = [10.0, 11.0, 12.0]  # mean 11, stdev 1: allowed 3
    assert compare_metric("t", 13.9, samples, spec=spec).status == "unchanged"
    regressed = compare_metric("t", 14.5, samples, spec=spec)
    assert regressed.status == "regressed" and regressed.allowed == pytest.approx(3.0)
    assert compare_metric("t", 7.5, samples, spec=spec).status == "improved"
    floor = compare_metric("t", 11.2, [11.0, 11.0, 11.0], spec=spec)  # no spread: the 1% floor
    assert floor.status == "regressed" and floor.allowed == pytest.approx(0.11)


@pytest.mark.parametrize("samples", [[11.0], [11.0, 11.5]])
def test_noise_aware_needs_three_samples_to_judge(samples: list[float]) -> None:
    spec = MetricSpec("lower", Tolerance("noise", 3.0, 0.5))
    slower = compare_metric("t", 40.0, samples, spec=spec)  # 3.5x: shown, not judged
    assert slower.status == "changed" and "needs 3" in slower.note
    assert compare_metric("t", 12.0, samples, spec=spec).status == "unchanged"


def test_time_is_not_compared_across_device_classes() -> None:
    result = compare_metric("train_time_s", 50.0, [5.0], spec=MetricSpecs().spec("train_time_s"), same_device=False)
    assert result.status == "not_compared"


def test_describe_names_field_value_baseline_and_tolerance() -> None:
    text = compare_metric("final_loss", 3.4, [2.95], spec=MetricSpecs().spec("final_loss"), unit="nats").describe()
    assert "final_loss = 3.4 nats" in text and "baseline 2.95 nats" in text and "tolerance 1%" in text


def test_compare_metrics_only_and_ignore() -> None:
    current = {"a_loss": {"value": 1.0}, "b_loss": {"value": 2.0}}
    baseline = {"a_loss": {"samples": [1.0]}, "c_loss": {"samples": [3.0]}}
    statuses = {c.metric: c.status for c in compare_metrics(current, baseline, ignore=["c_loss"])}
    assert statuses == {"a_loss": "unchanged", "b_loss": "new"}
    assert [c.metric for c in compare_metrics(current, baseline, only=["b_loss"])] == ["b_loss"]


@given(st.lists(st.floats(-1e6, 1e6), min_size=1, max_size=6), st.floats(0, 10))
def test_a_value_inside_its_baseline_samples_never_regresses_noise_aware(values: list[float], k: float) -> None:
    spec = MetricSpec("lower", Tolerance("noise", max(k, 1.0), 0.0))
    mean = Samples(tuple(values)).mean
    assert compare_metric("x", mean, values, spec=spec).status == "unchanged"


# --- environment key and nearest match ---------------------------------------------------------


def test_env_key_strips_local_versions_and_names_the_device() -> None:
    assert env_key(ENV) == "cpu-torch2.13.0-transformers5.24.0-peft0.21.2-bnbnone"
    cuda = {**ENV, "device": "cuda", "device_name": "NVIDIA H100 80GB HBM3"}
    assert env_key(cuda).startswith("cuda-nvidia-h100-80gb-hbm3-torch2.13.0")
    assert env_key({}) == "cpu-torchnone-transformersnone-peftnone-bnbnone"  # before torch is imported


def _store_with(tmp_path: Path, *envs: dict[str, Any]) -> BaselineStore:
    store = BaselineStore(tmp_path / "baselines")
    for environment in envs:
        records = [
            {"kind": "session", "env": environment},
            {"kind": "method", "suite": "s", "method": "lora", "status": "trained", "fingerprint": "f",
             "metrics": {"final_loss": {"value": 2.0, "unit": "nats"}}},
        ]
        store.update(collect_entries(records), "missing")
    return store


def test_lookup_prefers_the_exact_environment(tmp_path: Path) -> None:
    store = _store_with(tmp_path, ENV, env(peft="0.20.0"))
    match = store.lookup("s", ENV)
    assert match is not None and match.exact and match.note.startswith("exact")


def test_lookup_falls_back_to_the_nearest_and_says_why(tmp_path: Path) -> None:
    store = _store_with(tmp_path, env(peft="0.15.0"), env(peft="0.20.0"), env(torch="2.11.0"))
    match = store.lookup("s", ENV)
    assert match is not None and not match.exact
    assert match.key == env_key(env(peft="0.20.0"))  # a peft minor is nearer than a torch minor
    assert "peft 0.21.2 here, 0.20.0 in the baseline" in match.note


def test_lookup_prefers_the_same_device_class(tmp_path: Path) -> None:
    gpu = {**ENV, "device": "cuda", "device_name": "H100"}
    store = _store_with(tmp_path, gpu, env(transformers="4.50.0"))
    match = store.lookup("s", ENV)
    assert match is not None and match.same_device and match.key == env_key(env(transformers="4.50.0"))
    other = _store_with(tmp_path / "other", gpu).lookup("s", ENV)
    assert other is not None and not other.same_device and "device cpu here" in other.note


def test_lookup_without_a_store(tmp_path: Path) -> None:
    assert BaselineStore(tmp_path / "absent").lookup("s", ENV) is None


# --- updates -----------------------------------------------------------------------------------


def _fixture(name: str) -> list[dict[str, Any]]:
    return read_records(FIXTURES / f"{name}.jsonl")


def test_update_missing_writes_once_and_keeps_what_exists(tmp_path: Path) -> None:
    store = BaselineStore(tmp_path)
    first = store.update(collect_entries(_fixture("baseline")), "missing")
    assert sorted(n.action for n in first) == ["added"] * 4
    path = first[0].path
    before = path.read_text(encoding="utf-8")
    again = store.update(collect_entries(_fixture("regressed")), "missing")
    assert {n.action for n in again} == {"kept"}
    assert path.read_text(encoding="utf-8") == before  # nothing overwritten


def test_update_all_replaces_and_says_what_moved(tmp_path: Path) -> None:
    store = BaselineStore(tmp_path)
    store.update(collect_entries(_fixture("baseline")), "missing")
    notes = {(n.suite, n.method): n for n in store.update(collect_entries(_fixture("regressed")), "all")}
    assert notes["quotes", "lora"].action == "replaced"
    assert "final_loss 2.95→3.434 regressed" in notes["quotes", "lora"].detail
    assert ("tiny", "ia3") not in notes  # its training failed: the old entry is kept as it was
    data = json.loads(store.path(env_key(_fixture("baseline")[0]["env"]), "tiny").read_text())
    assert data["methods"]["ia3"]["metrics"]["final_loss"]["samples"] == [6.5]


def test_a_partial_run_keeps_the_other_methods(tmp_path: Path) -> None:
    store = BaselineStore(tmp_path)
    store.update(collect_entries(_fixture("baseline")), "missing")
    only_lora = [r for r in _fixture("rerun") if r.get("method") in (None, "lora")]
    store.update(collect_entries(only_lora), "all")
    data = json.loads(store.path(env_key(ENV | {"device_name": "x86_64"}), "quotes").read_text())
    assert set(data["methods"]) == {"lora", "prompt"}


def test_a_run_of_some_checks_keeps_the_others_outcomes(tmp_path: Path) -> None:
    store = BaselineStore(tmp_path)
    store.update(collect_entries(_fixture("baseline")), "missing")
    some = [r for r in _fixture("rerun") if r["kind"] != "check" or r["check"] == "no_regression"]
    store.update(collect_entries(some), "all")
    data = json.loads(next(tmp_path.rglob("quotes.json")).read_text(encoding="utf-8"))
    checks = data["methods"]["lora"]["checks"]
    assert checks["no_regression"]["outcome"] == "passed" and checks["loss_decrease"]["outcome"] == "passed"


def test_several_runs_give_several_samples(tmp_path: Path) -> None:
    files = collect_entries(_fixture("baseline") + _fixture("rerun"))
    entry = next(iter(files.values()))["methods"]["lora"]
    assert entry["metrics"]["train_time_s"]["samples"] == [12.5, 13.375]
    assert entry["checks"]["no_regression"]["outcome"] == "passed"  # the latest run's outcome


def test_an_unreadable_baseline_is_skipped_with_a_warning_and_not_overwritten(tmp_path: Path) -> None:
    store = BaselineStore(tmp_path)
    path = store.path(env_key(ENV | {"device_name": "x86_64"}), "quotes")
    path.parent.mkdir(parents=True)
    path.write_text("{not json", encoding="utf-8")
    with pytest.warns(UserWarning, match="unreadable baseline"):
        assert store.lookup("quotes", ENV) is None
    with pytest.warns(UserWarning):
        notes = store.update(collect_entries(_fixture("baseline")), "all")
    assert {n.action for n in notes if n.suite == "quotes"} == {"skipped"}
    assert path.read_text(encoding="utf-8") == "{not json"


def test_writes_are_atomic_and_leave_no_temporary_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = BaselineStore(tmp_path)
    store.update(collect_entries(_fixture("baseline")), "missing")
    path = next(tmp_path.rglob("quotes.json"))
    before = path.read_text(encoding="utf-8")

    def fail(*args: Any) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", fail)
    with pytest.raises(OSError, match="disk full"):
        store.update(collect_entries(_fixture("regressed")), "all")
    assert path.read_text(encoding="utf-8") == before
    assert [p.name for p in path.parent.iterdir()] == sorted(p.name for p in path.parent.iterdir() if p.suffix == ".json")


def test_baseline_files_are_sorted_readable_json(tmp_path: Path) -> None:
    store = BaselineStore(tmp_path)
    store.update(collect_entries(_fixture("baseline")), "missing")
    text = next(tmp_path.rglob("quotes.json")).read_text(encoding="utf-8")
    data = json.loads(text)
    assert text == dumps_readable(data)
    assert '"samples": [2.95]' in text  # short lists stay on one line in a review diff
    assert list(data) == sorted(data)


@given(st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=5), inner, max_size=4),
    max_leaves=20,
))
def test_dumps_readable_round_trips(value: Any) -> None:
    assert json.loads(dumps_readable(value)) == value


# --- the no_regression check -------------------------------------------------------------------


class FakeContext:
    """What no_regression reads from a CheckContext, without training anything."""

    def __init__(self, record: dict[str, Any], baseline: Path | None) -> None:
        from types import SimpleNamespace

        self.suite = SimpleNamespace(spec=SimpleNamespace(suite=record["suite"]), path="suite.yaml")
        self.method = record["method"]
        self._record = record
        self._options = {"peftcheck_baseline": str(baseline) if baseline else None}

    def method_record(self) -> dict[str, Any]:
        return self._record

    def option(self, name: str) -> Any:
        return self._options.get(name)

    def env(self) -> dict[str, Any]:
        return self._record["env"]


def _method_record(run: str, suite: str = "quotes", method: str = "lora") -> dict[str, Any]:
    return next(r for r in _fixture(run) if r["kind"] == "method" and (r["suite"], r["method"]) == (suite, method))


def _run_check(record: dict[str, Any], baseline: Path | None, **params: Any) -> Any:
    return no_regression(FakeContext(record, baseline), NoRegressionParams(**params))


@pytest.fixture
def recorded(tmp_path: Path) -> Path:
    BaselineStore(tmp_path).update(collect_entries(_fixture("baseline")), "missing")
    return tmp_path


def test_no_regression_skips_without_a_baseline_and_says_how_to_record_one(tmp_path: Path) -> None:
    with pytest.raises(NotApplicable, match="--peftcheck-update-baseline missing"):
        _run_check(_method_record("rerun"), tmp_path)
    failed = _run_check(_method_record("rerun"), tmp_path, require_baseline=True)
    assert not failed.passed and "no baseline for suite 'quotes'" in failed.message


def test_no_regression_passes_an_unchanged_rerun(recorded: Path) -> None:
    result = _run_check(_method_record("rerun"), recorded)
    assert result.passed and result.value == 0.0
    assert "6 metric(s) within tolerance" in result.message
    assert result.details["exact"] is True


def test_no_regression_fails_the_planted_regression_naming_everything(recorded: Path) -> None:
    result = _run_check(_method_record("regressed"), recorded)
    assert not result.passed and result.value == 2.0
    assert "final_loss = 3.434 nats vs baseline 2.95 nats" in result.message
    assert "tolerance 1%" in result.message and "eval_perplexity" in result.message
    assert {c["metric"] for c in result.details["comparisons"] if c["status"] == "regressed"} == {
        "final_loss", "eval_perplexity"}
    json.dumps(result.details)  # goes into the results file


def test_no_regression_params_override_and_select(recorded: Path) -> None:
    loose = _run_check(_method_record("regressed"), recorded, tolerance={"final_loss": 1, "eval_perplexity": "50%"})
    assert loose.passed
    only = _run_check(_method_record("regressed"), recorded, metrics=["peak_rss_mib"])
    assert only.passed and "1 metric(s)" in only.message
    ignored = _run_check(_method_record("regressed"), recorded, ignore=["final_loss"])
    assert not ignored.passed and "final_loss" not in ignored.message.split("\n", 1)[1]
    absent = _run_check(_method_record("rerun"), recorded, metrics=["footprint_mib"])
    assert not absent.passed and "footprint_mib: named in `metrics` but not recorded" in absent.message


def test_no_regression_fails_when_training_failed(recorded: Path) -> None:
    result = _run_check(_method_record("regressed", "tiny", "ia3"), recorded)
    assert not result.passed and "training failed" in result.message


def test_no_regression_params_are_validated_in_the_suite() -> None:
    from peftcheck.errors import SuiteError
    from peftcheck.loader import load_suite_text

    text = """\
suite: s
model: tiny-opt
data: {dataset: x.jsonl}
methods:
  lora: {peft: LoraConfig}
expect:
  no_regression:
    tolerance: {final_loss: lots}
"""
    with pytest.raises(SuiteError, match=r"s.yaml:8 expect.no_regression.tolerance.*final_loss: tolerance 'lots'"):
        load_suite_text(text, path="s.yaml")

"""The artifact cache (issue 14): hits on a bound-only change, misses on a training change, a bad
entry is a warning and a retrain, resource figures are never served from it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from helpers import load, run_check, tiny_suite
from peftcheck.artifact_cache import ArtifactCache, CacheWarning, model_difference
from peftcheck.cache import Pipeline

LORA = {"peft": "LoraConfig", "r": 4, "lora_alpha": 8, "target_modules": ["q_proj", "v_proj"]}
IA3 = {"peft": "IA3Config", "target_modules": ["k_proj", "down_proj"], "feedforward_modules": ["down_proj"]}


def _suite(*, lora: dict[str, Any] | None = None, bound: float = 0.05, **methods: Any) -> Any:
    return load(tiny_suite(
        {"lora": {**LORA, **(lora or {})}, **methods}, model="tiny-llama",
        expect={"loss_decrease": {"min_relative": bound}},
        train={"max_steps": 4, "learning_rate": 2e-2, "per_device_train_batch_size": 8, "seed": 0},
    ))  # fmt: skip


def _run(suite: Any, root: Path, *methods: str, mode: str = "on") -> dict[str, Any]:
    """A fresh pipeline (a new run) over ``methods``: their artifacts and records."""
    pipeline = Pipeline(progress=lambda line: None, cache=ArtifactCache(root, mode))
    return {m: pipeline.artifact(suite, m) for m in methods}


def _trained(artifact: Any) -> dict[str, Any]:
    return {n: p.detach().clone() for n, p in artifact.model.named_parameters() if p.requires_grad}


def test_bound_only_change_hits_and_learning_rate_change_misses(tmp_path: Path) -> None:
    cold = _run(_suite(ia3=IA3), tmp_path, "lora", "ia3")
    assert [a.record["from_cache"] for a in cold.values()] == [False, False]
    assert all(a.record["cache"]["stored"] for a in cold.values()), [a.record["cache"] for a in cold.values()]

    warm = _run(_suite(ia3=IA3, bound=0.5), tmp_path, "lora", "ia3")  # only a bound changed
    for name, artifact in warm.items():
        assert artifact.record["from_cache"], artifact.record["cache"]
        assert artifact.train.loss_curve == cold[name].train.loss_curve
        assert artifact.record["metrics"]["eval_perplexity"] == cold[name].record["metrics"]["eval_perplexity"]
        assert model_difference(cold[name].model, artifact.model) is None
        assert artifact.initial_trainable.keys() == cold[name].initial_trainable.keys()

    changed = _run(_suite(ia3=IA3, lora={"train": {"learning_rate": 1e-2}}), tmp_path, "lora", "ia3")
    assert not changed["lora"].record["from_cache"]  # its learning rate changed: retrained
    assert changed["ia3"].record["from_cache"]  # the other method's did not
    assert changed["lora"].train.loss_curve != cold["lora"].train.loss_curve


def test_resource_figures_are_never_served_from_the_cache(tmp_path: Path) -> None:
    cold = _run(_suite(), tmp_path, "lora")["lora"].record
    warm = _run(_suite(), tmp_path, "lora")["lora"].record
    assert warm["from_cache"]
    for name in ("train_time_s", "tokens_per_s", "peak_rss_mib"):
        assert name in cold["metrics"] and name not in warm["metrics"]  # nothing compares or stores them
    assert warm["train_time_s"] is None and warm["step_times_s"] == []
    assert warm["cache"]["recorded"]["train_time_s"] == cold["train_time_s"]  # said, as recorded then


def test_resource_checks_measure_on_a_hit(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A replayed figure would repeat the cold run's footprint; a live one sees the planted change."""
    import dataclasses

    import peftcheck.resources.footprint as footprint

    cache = ArtifactCache(tmp_path, "on")
    cold = run_check(Pipeline(progress=lambda line: None, cache=cache), _suite(), "lora", "memory_footprint", max_mib=1e4)
    real = footprint.footprint
    monkeypatch.setattr(footprint, "footprint", lambda model: dataclasses.replace(real(model), buffers_bytes=2**30))
    warm_pipeline = Pipeline(progress=lambda line: None, cache=cache)
    warm = run_check(warm_pipeline, _suite(), "lora", "memory_footprint", max_mib=1e4)
    assert warm_pipeline.artifact(_suite(), "lora").record["from_cache"]
    assert warm.value == pytest.approx(cold.value + 1024)


def _entry(root: Path) -> Path:
    (entry,) = [p.parent for p in root.rglob("manifest.json")]
    return entry


@pytest.mark.parametrize("damage", ["tampered key", "truncated adapter", "truncated meta"])
def test_a_damaged_entry_warns_and_retrains(tmp_path: Path, damage: str) -> None:
    cold = _run(_suite(), tmp_path, "lora")["lora"]
    entry = _entry(tmp_path)
    if damage == "tampered key":  # another run's key in this entry, its manifest consistent with it
        import hashlib

        key = json.loads((entry / "key.json").read_text())
        key["train"]["learning_rate"] = 1.0
        (entry / "key.json").write_text(json.dumps(key))
        manifest = json.loads((entry / "manifest.json").read_text())
        data = (entry / "key.json").read_bytes()
        manifest["files"]["key.json"] = {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
        (entry / "manifest.json").write_text(json.dumps(manifest))
    else:
        path = entry / ("adapter.safetensors" if "adapter" in damage else "meta.json")
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.warns(CacheWarning, match="unusable.*retraining"):
        again = _run(_suite(), tmp_path, "lora")["lora"]
    assert not again.record["from_cache"] and "unusable" in again.record["cache"]["warning"]
    assert again.train.loss_curve == cold.train.loss_curve  # retrained, deterministically
    assert _run(_suite(), tmp_path, "lora")["lora"].record["from_cache"]  # the retrain replaced the entry


def test_a_method_whose_reload_differs_is_not_cached(tmp_path: Path) -> None:
    """AdaLoRA's rank allocator writes rank_pattern into its config while training (state a
    rebuild does not restore); p-tuning's encoder is training-only state too, but rebuilt here."""
    adalora = {"peft": "AdaLoraConfig", "init_r": 6, "target_r": 2, "lora_alpha": 8, "target_modules": ["q_proj", "v_proj"]}
    cold = _run(_suite(adalora=adalora), tmp_path, "adalora")["adalora"]
    assert cold.record["cache"]["stored"] is False
    assert "rank_pattern" in cold.record["cache"]["reason"], cold.record["cache"]
    assert not _run(_suite(adalora=adalora), tmp_path, "adalora")["adalora"].record["from_cache"]


def test_model_difference_names_what_differs() -> None:
    """The planted difference: one element of one trained tensor."""
    import copy

    from helpers import tiny_llama
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(tiny_llama(), LoraConfig(r=2, target_modules=["q_proj"]))
    other = copy.deepcopy(model)
    assert model_difference(model, other) is None
    name, param = next((n, p) for n, p in other.named_parameters() if p.requires_grad)
    param.data.view(-1)[0] += 1e-6
    assert model_difference(model, other) == f"{name}: values differ"
    other = copy.deepcopy(model)
    next(p for p in other.parameters() if p.requires_grad).requires_grad_(False)
    assert "requires_grad" in (model_difference(model, other) or "")


@pytest.mark.parametrize("mode, reads, writes", [("off", False, False), ("read", True, False), ("write", False, True), ("on", True, True)])
def test_modes(tmp_path: Path, mode: str, reads: bool, writes: bool) -> None:
    first = _run(_suite(), tmp_path, "lora", mode=mode)["lora"].record
    assert (first["cache"] is not None and first["cache"].get("stored") is True) == writes
    _run(_suite(), tmp_path, "lora", mode="write")
    assert _run(_suite(), tmp_path, "lora", mode=mode)["lora"].record["from_cache"] == reads


def test_mode_from_environment_and_bad_values(monkeypatch: pytest.MonkeyPatch) -> None:
    import argparse

    from peftcheck.artifact_cache import parse_cache_mode
    from peftcheck.errors import PeftcheckError

    monkeypatch.setenv("PEFTCHECK_CACHE", "read")
    assert ArtifactCache.from_option(None).mode == "read"
    assert ArtifactCache.from_option("off").mode == "off"  # the flag wins
    monkeypatch.setenv("PEFTCHECK_CACHE", "yes")
    with pytest.raises(PeftcheckError, match="'yes'"):
        ArtifactCache.from_option(None)
    with pytest.raises(argparse.ArgumentTypeError, match="got 'maybe'"):
        parse_cache_mode("maybe")


# Checks whose measurement is a function of the trained artifact: a hit must give each the cold
# run's value (CI at 209ad02: on a hit label_masking read the cached rows as a dict and raised).
DETERMINISTIC = [
    ("trainable_ratio", {}), ("base_frozen", {}), ("loss_decrease", {}), ("eval_perplexity", {}),
    ("label_masking", {"min_fraction": 0.1, "max_fraction": 0.95}), ("merge_equivalence", {}),
    ("unmerge_restores", {}), ("disable_equals_base", {}), ("save_load_roundtrip", {}), ("init_identity", {}),
]  # fmt: skip


def test_a_hit_measures_what_the_cold_run_measured(tmp_path: Path) -> None:
    pairs = [("red:", " apple pie"), ("sky:", " blue rain"), ("cat:", " soft fur"), ("sea:", " salt wave")]
    rows = tmp_path / "pc.jsonl"
    rows.write_text("".join(json.dumps({"p": p, "c": c}) + "\n" for p, c in pairs * 8))
    suite = tiny_suite({"lora": LORA}, model="tiny-llama")
    suite["data"] = {"dataset": str(rows), "format": "prompt_completion", "prompt_field": "p", "completion_field": "c",
                     "split": "train[:24]", "eval_split": "train[-8:]", "max_length": 16}  # fmt: skip
    cache = ArtifactCache(tmp_path / "cache", "on")
    measured = {}
    for run in ("cold", "warm"):
        pipeline = Pipeline(progress=lambda line: None, cache=cache)
        loaded = load(suite)
        measured[run] = {name: run_check(pipeline, loaded, "lora", name, **params) for name, params in DETERMINISTIC}
        assert pipeline.artifact(loaded, "lora").record["from_cache"] == (run == "warm")
    for name, _ in DETERMINISTIC:
        cold, warm = measured["cold"][name], measured["warm"][name]
        assert (warm.passed, warm.value, warm.bound) == (cold.passed, cold.value, cold.bound), (name, cold, warm)
    assert measured["cold"]["label_masking"].passed, measured["cold"]["label_masking"].message

"""The artifact cache (issue 14): hits on a bound-only change, misses on a training change, a bad
entry is a warning and a retrain, resource figures are never served from it."""

from __future__ import annotations

import dataclasses
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


def test_a_method_whose_reload_differs_is_not_cached(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Planted: the config fields training wrote are not restored (as before AdaLoRA's
    rank_pattern was): the reload is not the trained model, so nothing is stored or served."""
    import peftcheck.artifact_cache as artifact_cache

    monkeypatch.setattr(artifact_cache, "restore_configs", lambda model, stored: None)
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


def _pc_suite(tmp_path: Path) -> dict[str, Any]:
    pairs = [("red:", " apple pie"), ("sky:", " blue rain"), ("cat:", " soft fur"), ("sea:", " salt wave")]
    rows = tmp_path / "pc.jsonl"
    rows.write_text("".join(json.dumps({"p": p, "c": c}) + "\n" for p, c in pairs * 8))
    suite = tiny_suite({"lora": LORA}, model="tiny-llama")
    suite["data"] = {"dataset": str(rows), "format": "prompt_completion", "prompt_field": "p", "completion_field": "c",
                     "split": "train[:24]", "eval_split": "train[-8:]", "max_length": 16}  # fmt: skip
    return suite


def _measure(cache: ArtifactCache, suite: dict[str, Any], checks: list[tuple[str, dict[str, Any]]]) -> dict[str, Any]:
    pipeline = Pipeline(progress=lambda line: None, cache=cache)
    loaded = load(suite)
    return {name: run_check(pipeline, loaded, "lora", name, **params) for name, params in checks}


def test_a_hit_measures_what_the_cold_run_measured(tmp_path: Path) -> None:
    import shutil

    cache = ArtifactCache(tmp_path / "cache", "on")
    suite = _pc_suite(tmp_path)
    cold = _measure(cache, suite, DETERMINISTIC)
    assert not any(m.from_cache for m in cold.values())
    assert cold["label_masking"].passed, cold["label_masking"].message
    shutil.rmtree(cache.root / "checks")  # the artifact from the cache, every check measured on it
    warm = _measure(cache, suite, DETERMINISTIC)
    replayed = _measure(cache, suite, DETERMINISTIC)  # the checks from the check cache
    for name, _ in DETERMINISTIC:
        # eval_perplexity reads the method's record (training's perplexities): it is never stored
        assert not warm[name].from_cache and replayed[name].from_cache == (name != "eval_perplexity"), name
        for again in (warm[name], replayed[name]):
            assert (again.passed, again.value, again.bound, again.message) == (
                cold[name].passed, cold[name].value, cold[name].bound, cold[name].message
            ), (name, cold[name], again)


def test_the_check_cache_reuses_only_what_the_artifact_and_parameters_decide(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import peftcheck.resources.footprint as footprint

    cache = ArtifactCache(tmp_path / "cache", "on")
    suite = _pc_suite(tmp_path)
    checks = [("loss_decrease", {"min_relative": 0.05}), ("memory_footprint", {"max_mib": 1e4}), ("eval_perplexity", {})]
    _measure(cache, suite, checks)
    bound = _measure(cache, suite, [("loss_decrease", {"min_relative": 0.5})])["loss_decrease"]
    assert not bound.from_cache  # another parameter: measured again, on the cached artifact
    warm = _measure(cache, suite, checks)
    assert warm["loss_decrease"].from_cache
    # a resource check, and one that read the method's record (eval_perplexity): measured every run
    assert not warm["memory_footprint"].from_cache and not warm["eval_perplexity"].from_cache
    real = footprint.footprint
    monkeypatch.setattr(footprint, "footprint", lambda model: dataclasses.replace(real(model), buffers_bytes=2**30))
    assert _measure(cache, suite, checks)["memory_footprint"].value == pytest.approx(warm["memory_footprint"].value + 1024)

    (entry,) = [e for e in (cache.root / "checks").rglob("loss_decrease-*.json")
                if json.loads(e.read_text())["key"]["params"]["min_relative"] == 0.05]  # fmt: skip
    stored = json.loads(entry.read_text())
    stored["key"]["params"]["min_relative"] = 0.5  # a tampered entry: never served
    entry.write_text(json.dumps(stored))
    with pytest.warns(CacheWarning, match="check cache entry .* is unusable"):
        again = _measure(cache, suite, checks)["loss_decrease"]
    assert not again.from_cache and again.value == warm["loss_decrease"].value

    off = _measure(ArtifactCache(tmp_path / "cache", "off"), suite, checks)["loss_decrease"]
    assert not off.from_cache


def test_adalora_is_cached_with_the_ranks_its_budget_left(tmp_path: Path) -> None:
    """AdaLoRA writes its budget's masks into the config (rank_pattern) while it trains: a hit
    restores them, so a save prunes to the trained ranks (it was not cached before)."""
    adalora = {"peft": "AdaLoraConfig", "init_r": 6, "target_r": 2, "target_modules": ["q_proj", "v_proj"],
               "tinit": 1, "tfinal": 1, "deltaT": 1}  # fmt: skip
    cold = _run(_suite(adalora=adalora), tmp_path, "adalora")["adalora"]
    assert cold.record["cache"]["stored"], cold.record["cache"]
    pattern = cold.model.peft_config["default"].rank_pattern
    assert pattern and any(not all(mask) for mask in pattern.values())  # the budget pruned some ranks
    warm = _run(_suite(adalora=adalora), tmp_path, "adalora")["adalora"]
    assert warm.record["from_cache"]
    assert warm.model.peft_config["default"].rank_pattern == pattern
    assert model_difference(cold.model, warm.model) is None


def test_the_check_key_follows_the_bytes_of_the_files_a_check_reads(tmp_path: Path) -> None:
    """forgetting reads data.unrelated, which the artifact's key does not hold: its bytes are in
    the check's key, so an edited file is measured again."""
    from types import SimpleNamespace

    from peftcheck.check_cache import CheckCache
    from peftcheck.checks.registry import get_check, parse_params

    unrelated = tmp_path / "unrelated.jsonl"
    unrelated.write_text('{"text": "two plus two is four"}\n')
    suite = _pc_suite(tmp_path)
    suite["data"].update(unrelated=str(unrelated), unrelated_split="train[:1]")
    ctx = SimpleNamespace(suite=load(suite))
    check = get_check("forgetting")
    params, _ = parse_params(check, {"max_ratio": 1.25})
    cache = CheckCache(ArtifactCache(tmp_path / "cache", "on"))
    before = cache.key(ctx, check, params, "a" * 64)
    assert cache.key(ctx, check, params, "a" * 64) == before
    unrelated.write_text('{"text": "two plus two is five"}\n')
    after = cache.key(ctx, check, params, "a" * 64)
    assert after["files"]["unrelated"] != before["files"]["unrelated"]
    assert cache.key(ctx, check, parse_params(check, {"max_ratio": 2.0})[0], "a" * 64)["params"] != after["params"]

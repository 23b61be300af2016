"""Merging checks pass on a sound adapter and fail on the defect each one names (planted)."""

from __future__ import annotations

import contextlib
from typing import Any

import pytest
import torch

from helpers import BNB_CPU_REPACKING, load, quiet_pipeline, run_check, tiny_suite
from peftcheck.checks import NotApplicable
from peftcheck.tolerances import Tolerance, tolerance_for

LORA = {"peft": "LoraConfig", "r": 4, "lora_alpha": 8, "target_modules": ["q_proj", "v_proj"]}
IA3 = {"peft": "IA3Config", "target_modules": ["k_proj", "fc2"], "feedforward_modules": ["fc2"]}
PROMPT = {"peft": "PromptTuningConfig", "num_virtual_tokens": 4}
MERGE_CHECKS = ("merge_equivalence", "unmerge_restores", "disable_equals_base")


@pytest.fixture(scope="module")
def sound() -> Any:
    """Tiny LoRA, IA3 and prompt tuning, trained once for every test of this module."""
    return quiet_pipeline(), load(tiny_suite({"lora": LORA, "ia3": IA3, "prompt": PROMPT}))


@pytest.mark.parametrize("method", ["lora", "ia3"])
def test_sound_adapter_passes_merge_checks_and_records_the_differences(sound: Any, method: str) -> None:
    pipeline, loaded = sound
    metrics: dict[str, Any] = {}  # each check returns its figures in its Measurement (issue 14)
    for check in MERGE_CHECKS:
        measurement = run_check(pipeline, loaded, method, check)
        assert measurement.passed, measurement.message
        metrics.update(measurement.metrics)
    merge = run_check(pipeline, loaded, method, "merge_equivalence")
    assert set(merge.details["comparisons"]) == {"merge_adapter", "merge_and_unload"}
    assert merge.details["effect_vs_base"]["max_abs"] > 1e-2  # the adapter does something
    assert merge.metrics["merge_max_abs_diff"] == metrics["merge_max_abs_diff"]
    assert "merge_max_abs_diff" not in pipeline.artifact(loaded, method).record["metrics"]
    assert 0 <= metrics["merge_max_abs_diff"]["value"] < 1e-3
    assert 0 <= metrics["merge_mean_abs_diff"]["value"] <= metrics["merge_max_abs_diff"]["value"]
    assert metrics["unmerge_weight_residue"]["value"] < 1e-5


def test_checks_leave_the_trained_model_untouched(sound: Any) -> None:
    pipeline, loaded = sound
    artifact = pipeline.artifact(loaded, "lora")
    before = {n: p.detach().clone() for n, p in artifact.model.named_parameters()}
    for check in (*MERGE_CHECKS, "adapter_switching"):
        run_check(pipeline, loaded, "lora", check)
    after = dict(artifact.model.named_parameters())
    assert before.keys() == after.keys()
    assert all(torch.equal(before[n], after[n]) for n in before)
    from peft.tuners.tuners_utils import BaseTunerLayer

    assert list(artifact.model.peft_config) == ["default"] and artifact.model.active_adapter == "default"
    layers = [m for m in artifact.model.modules() if isinstance(m, BaseTunerLayer)]
    assert layers and not any(layer.merged for layer in layers)


def test_prompt_learning_cannot_merge_and_is_skipped_with_the_reason(sound: Any) -> None:
    pipeline, loaded = sound
    for check in ("merge_equivalence", "unmerge_restores"):
        with pytest.raises(NotApplicable, match="virtual tokens; there are no weights to merge"):
            run_check(pipeline, loaded, "prompt", check)
    disabled = run_check(pipeline, loaded, "prompt", "disable_equals_base")
    assert disabled.passed, disabled.message


def _scaled_delta(monkeypatch: pytest.MonkeyPatch, scale: float) -> None:
    from peft.tuners.lora.layer import Linear

    real = Linear.get_delta_weight

    def planted(self: Any, adapter: str) -> Any:
        return real(self, adapter) * scale  # planted defect: the merged delta is off by a small scale

    monkeypatch.setattr(Linear, "get_delta_weight", planted)


def test_merge_off_by_a_small_scale_is_caught(sound: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    pipeline, loaded = sound
    assert run_check(pipeline, loaded, "lora", "merge_equivalence").passed
    _scaled_delta(monkeypatch, 1.01)
    measurement = run_check(pipeline, loaded, "lora", "merge_equivalence")
    assert not measurement.passed
    assert "merge_adapter vs adapter: max |Δlogit|" in measurement.message
    assert "merge_and_unload vs adapter" in measurement.message
    assert measurement.value > 1e-3


def _unmerge_residue(monkeypatch: pytest.MonkeyPatch, residue: float) -> None:
    from peft.tuners.lora.layer import Linear

    real = Linear.unmerge

    def planted(self: Any) -> None:
        adapters = list(self.merged_adapters)
        real(self)
        for adapter in adapters:  # planted defect: 1% of the delta stays in the base weight
            self.get_base_layer().weight.data += residue * self.get_delta_weight(adapter)

    monkeypatch.setattr(Linear, "unmerge", planted)


def test_unmerge_that_leaves_a_residue_is_caught(sound: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    pipeline, loaded = sound
    assert run_check(pipeline, loaded, "lora", "unmerge_restores").passed
    _unmerge_residue(monkeypatch, 0.01)
    measurement = run_check(pipeline, loaded, "lora", "unmerge_restores")
    assert not measurement.passed
    assert "is off the original" in measurement.message and "unmerged vs adapter" in measurement.message
    assert measurement.details["worst_tensor"].endswith(("q_proj.weight", "v_proj.weight"))


def test_adapter_whose_output_equals_the_base_is_caught() -> None:
    pipeline, loaded = quiet_pipeline(), load(tiny_suite({"lora": LORA}))
    artifact = pipeline.artifact(loaded, "lora")
    assert run_check(pipeline, loaded, "lora", "merge_equivalence").passed
    assert run_check(pipeline, loaded, "lora", "disable_equals_base").passed
    with torch.no_grad():  # planted defect: the trained adapter does nothing
        for name, param in artifact.model.named_parameters():
            if "lora_B" in name:
                param.zero_()
    artifact.memo.clear()
    merge = run_check(pipeline, loaded, "lora", "merge_equivalence")
    assert not merge.passed and "the merged model equals the base" in merge.message
    disable = run_check(pipeline, loaded, "lora", "disable_equals_base")
    assert not disable.passed and "disabling it proves nothing" in disable.message
    unmerge = run_check(pipeline, loaded, "lora", "unmerge_restores")
    assert not unmerge.passed and "nothing to unmerge" in unmerge.message


def test_disable_adapter_that_does_not_disable_is_caught(sound: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    from peft import PeftModel

    pipeline, loaded = sound
    assert run_check(pipeline, loaded, "lora", "disable_equals_base").passed
    # planted defect: disable_adapter() leaves the adapter active
    monkeypatch.setattr(PeftModel, "disable_adapter", lambda self: contextlib.nullcontext())
    measurement = run_check(pipeline, loaded, "lora", "disable_equals_base")
    assert not measurement.passed and "disabled vs base" in measurement.message


def test_sound_adapters_switch_exactly_and_mix_in_one_batch(sound: Any) -> None:
    pipeline, loaded = sound
    measurement = run_check(pipeline, loaded, "lora", "adapter_switching")
    assert measurement.passed, measurement.message
    assert measurement.details["mixed_batch"] == "matches the separate runs"
    assert measurement.details["adapters_apart"]["max_abs"] > 1e-2
    assert measurement.details["comparisons"]["mixed batch vs separate runs"]["max_abs"] == 0.0


def test_set_adapter_that_does_not_switch_is_caught(sound: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    from peft import PeftModel

    pipeline, loaded = sound
    monkeypatch.setattr(PeftModel, "set_adapter", lambda self, name, **kw: None)  # planted: no switch
    measurement = run_check(pipeline, loaded, "lora", "adapter_switching", mixed_batch=False)
    assert not measurement.passed and "second vs its own model" in measurement.message


def test_mixed_batch_that_ignores_adapter_names_is_caught(sound: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    from peft.tuners.lora.model import LoraModel

    pipeline, loaded = sound

    @contextlib.contextmanager
    def ignore(self: Any, *args: Any, **kwargs: Any) -> Any:
        yield  # planted defect: adapter_names dropped, every row runs the active adapter

    monkeypatch.setattr(LoraModel, "_enable_peft_forward_hooks", ignore)
    measurement = run_check(pipeline, loaded, "lora", "adapter_switching")
    assert not measurement.passed and "adapter_names was silently ignored" in measurement.message


def test_tolerance_table_is_keyed_by_dtype_quantization_and_method() -> None:
    fp32 = tolerance_for(dtype="float32", quantization="none", peft_type="LORA")
    bf16 = tolerance_for(dtype="bfloat16", quantization="none", peft_type="LORA")
    nf4 = tolerance_for(dtype="float32", quantization="nf4", peft_type="LORA")
    assert fp32.max_abs < bf16.max_abs and not fp32.by_distribution
    assert nf4.by_distribution and nf4.max_kl is not None and nf4.min_top1 is not None
    assert "table[nf4, *]" in nf4.source
    tighter = fp32.override(max_abs=1e-6, mean_abs=None)
    assert tighter.max_abs == 1e-6 and tighter.mean_abs == fp32.mean_abs and "overridden" in tighter.source
    with pytest.raises(KeyError, match="no tolerance"):
        tolerance_for(dtype="float64", quantization="none", peft_type="LORA")


def test_a_method_entry_of_the_table_wins_over_the_dtype_default(monkeypatch: pytest.MonkeyPatch) -> None:
    import peftcheck.tolerances

    table = dict(peftcheck.tolerances.TOLERANCES)
    table[("float32", "IA3")] = Tolerance(max_abs=1e-2, mean_abs=1e-3, weight_rtol=1e-4)
    monkeypatch.setattr(peftcheck.tolerances, "TOLERANCES", table)
    ia3 = tolerance_for(dtype="float32", quantization="none", peft_type="IA3")
    assert ia3.max_abs == 1e-2 and ia3.source == "table[float32, IA3]"
    assert tolerance_for(dtype="float32", quantization="none", peft_type="LORA").source == "table[float32, *]"


def test_tolerance_override_from_the_suite_is_applied(sound: Any) -> None:
    pipeline, loaded = sound
    measurement = run_check(pipeline, loaded, "lora", "merge_equivalence", max_abs=1e-12)
    assert not measurement.passed and "overridden by the suite" in measurement.bound


def test_differs_is_the_negation_of_equal() -> None:
    from peftcheck.checks.outputs import Diff

    tol = Tolerance(max_abs=1e-3, mean_abs=1e-4)
    assert not tol.differs(Diff(1e-4, 1e-5, 0.0, 1.0))
    assert tol.differs(Diff(1e-2, 1e-5, 0.0, 1.0)) and tol.differs(Diff(1e-4, 1e-3, 0.0, 1.0))
    dist = Tolerance(max_kl=0.01, min_top1=0.9)
    assert not dist.differs(Diff(5.0, 1.0, 0.001, 0.95))
    assert dist.differs(Diff(0.0, 0.0, 0.001, 0.5))


@BNB_CPU_REPACKING
@pytest.mark.quant
def test_quantized_base_is_judged_by_distribution_agreement() -> None:
    pytest.importorskip("bitsandbytes")
    loaded = load(tiny_suite({"nf4": {**LORA, "quantization": "nf4"}}, model="tiny-llama"))
    pipeline = quiet_pipeline()
    # random-weight fixture: near-uniform next-token distributions make top-1 ties common
    measurement = run_check(pipeline, loaded, "nf4", "merge_equivalence", min_top1=0.8)
    assert measurement.passed, measurement.message
    comparisons = measurement.details["comparisons"]
    assert set(comparisons) == {"merge_adapter", "merge_and_unload", "merged_into_dequantized"}
    assert comparisons["merged_into_dequantized"]["kl"] < 1e-6  # same float weights, same maths
    metrics = measurement.metrics
    assert {"merge_kl", "merge_top1_agreement"} <= set(metrics)
    assert run_check(pipeline, loaded, "nf4", "disable_equals_base").passed


def test_a_nan_base_weight_is_the_furthest_off_not_skipped() -> None:
    import copy

    from peftcheck.checks.outputs import weight_diff

    torch.manual_seed(0)
    reference = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Linear(4, 4))
    other = copy.deepcopy(reference)
    with torch.no_grad():
        other[1].weight[0, 0] = float("nan")  # planted: an unmerge that leaves a NaN in a base weight
    # issue 26: NaN > worst is False, so the tensor was skipped and the residue read 0
    assert weight_diff(reference, other) == (float("inf"), "1.weight", [])
    assert weight_diff(reference, copy.deepcopy(reference)) == (0.0, None, [])

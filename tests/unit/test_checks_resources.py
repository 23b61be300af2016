"""The resource checks pass on sound adapters and fail on the defect each one names (planted)."""

from __future__ import annotations

import os
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest

import peftcheck.methods
import peftcheck.models
from helpers import BNB_CPU_REPACKING, load, quiet_pipeline, run_check, tiny_suite
from peftcheck.checks import NotApplicable
from peftcheck.errors import SuiteError
from peftcheck.resources import peak

LORA = {"peft": "LoraConfig", "r": 4, "lora_alpha": 8, "target_modules": ["q_proj", "v_proj"]}
QLORA = {**LORA, "target_modules": "all-linear", "quantization": "nf4"}
INT8 = {**LORA, "quantization": "int8"}
MIB = 2**20


@pytest.fixture(scope="module")
def quantized() -> Any:
    """LoRA on the fp32 tiny-opt, on its nf4 and on its int8 quantization, trained once."""
    return quiet_pipeline(), load(tiny_suite({"lora": LORA, "qlora": QLORA, "int8": INT8}))


def _planted_apply(monkeypatch: pytest.MonkeyPatch, method: str, plant: Any) -> None:
    real = peftcheck.methods.apply_method

    def planted(model: Any, config: Any, **kwargs: Any) -> Any:
        peft_model = real(model, config, **kwargs)
        if kwargs["name"] == method:
            plant(peft_model)
        return peft_model

    monkeypatch.setattr(peftcheck.methods, "apply_method", planted)


# -- footprint and quantization ----------------------------------------------------------------


@BNB_CPU_REPACKING
def test_sound_footprints_hold_and_are_recorded(quantized: Any) -> None:
    pipeline, loaded = quantized
    lora = run_check(pipeline, loaded, "lora", "memory_footprint", max_ratio=1.05)
    assert lora.passed and 1.0 < lora.value < 1.05, lora.message
    # tiny-opt: 65,536 of its 132k weights are Linear; nf4 stores them in 4 of 32 bits
    qlora = run_check(pipeline, loaded, "qlora", "memory_footprint", max_ratio=0.7, max_mib=1)
    assert qlora.passed and qlora.details["by_dtype_mib"]["uint8"] > 0, qlora.message
    int8 = run_check(pipeline, loaded, "int8", "memory_footprint", part="base", max_ratio=0.7)
    assert int8.passed and int8.details["by_dtype_mib"]["int8"] > 0, int8.message
    relative = run_check(pipeline, loaded, "qlora", "memory_footprint", max_ratio=1.0, relative_to="int8")
    assert relative.passed and relative.unit == "ratio to int8", relative.message
    metrics = qlora.metrics
    assert metrics["footprint_mib"]["unit"] == "MiB" and metrics["footprint_mib"]["value"] > 0
    assert metrics["footprint_ratio_to_base"]["value"] == pytest.approx(qlora.value)


def test_footprint_bounds_fail_when_exceeded(quantized: Any) -> None:
    pipeline, loaded = quantized
    measurement = run_check(pipeline, loaded, "lora", "memory_footprint", max_mib=0.1)
    assert not measurement.passed and "> 0.1 MiB" in measurement.message


def test_adapter_carrying_a_dense_copy_is_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    # planted defect: the adapter keeps a 1 MiB fp32 buffer (say, a dense copy of a weight delta)
    _planted_apply(monkeypatch, "lora", lambda m: m.register_buffer("dense_delta", torch.ones(MIB // 4)))
    pipeline, loaded = quiet_pipeline(), load(tiny_suite({"lora": LORA}))
    measurement = run_check(pipeline, loaded, "lora", "memory_footprint", max_ratio=1.05)
    assert not measurement.passed and measurement.value > 2, measurement.message


@BNB_CPU_REPACKING
def test_sound_quantization_saves_what_it_should(quantized: Any) -> None:
    pipeline, loaded = quantized
    for method, bits in (("qlora", 4), ("int8", 8)):
        measurement = run_check(pipeline, loaded, method, "quantization_savings", margin=0.05)
        assert measurement.passed, measurement.message
        assert measurement.details["bits"] == bits and measurement.details["quantized"] == 12
        assert measurement.details["adapter_dtypes"] == ["float32"]
    with pytest.raises(NotApplicable, match="not quantized"):
        run_check(pipeline, loaded, "lora", "quantization_savings")


def test_quantization_that_skips_the_linears_is_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    real = peftcheck.models._quantization_config

    def planted(quantization: str, dtype: Any) -> Any:
        config = real(quantization, dtype)
        if config is not None:  # planted defect: nf4 requested, every Linear silently left fp32
            config.llm_int8_skip_modules = ["q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2", "lm_head"]
        return config

    monkeypatch.setattr(peftcheck.models, "_quantization_config", planted)
    pipeline, loaded = quiet_pipeline(), load(tiny_suite({"qlora": QLORA}))
    savings = run_check(pipeline, loaded, "qlora", "quantization_savings")
    assert not savings.passed and savings.details["quantized"] == 0 and savings.value < 0.05
    assert "12 of 12 Linear weights not quantized" in savings.message
    footprint = run_check(pipeline, loaded, "qlora", "memory_footprint", max_ratio=0.7)
    assert not footprint.passed and footprint.value > 1.0


@BNB_CPU_REPACKING
def test_adapter_upcast_out_of_16_32_bit_is_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    def upcast(peft_model: Any) -> None:  # planted defect: LoRA weights in float64
        for name, param in peft_model.named_parameters():
            if "lora_" in name:
                param.data = param.data.to(torch.float64)

    _planted_apply(monkeypatch, "qlora", upcast)
    pipeline, loaded = quiet_pipeline(), load(tiny_suite({"qlora": {**QLORA, "train": {"max_steps": 1}}}))
    measurement = run_check(pipeline, loaded, "qlora", "quantization_savings")
    assert not measurement.passed and "float64" in measurement.message
    assert len(measurement.details["adapter_not_allowed"]) == 20  # capped; every LoRA weight


# -- peak memory ---------------------------------------------------------------------------------


def test_phase_meter_peak_is_not_polluted_by_an_earlier_phase() -> None:
    import torch

    meter = peak.PhaseMeter("cpu")
    with meter.phase("big"):
        big = torch.ones(192 * MIB // 4)
        del big
    with meter.phase("small"):
        small = torch.ones(48 * MIB // 4)
        del small
    phases = meter.summary()["phases"]
    assert phases["big"]["peak_mib"] > 180
    assert 44 < phases["small"]["peak_mib"] < 100, phases["small"]  # not 192 from "big"


def test_phase_meter_sampling_fallback(monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    monkeypatch.setattr(peak, "_reset_high_water_mark", lambda: False)
    meter = peak.PhaseMeter("cpu")
    with meter.phase("hold"):
        held = torch.ones(64 * MIB // 4)
        time.sleep(0.05)
        del held
    assert meter.phases["hold"]["meter"] == "RSS sampled every 1 ms"
    assert meter.phases["hold"]["peak_mib"] > 56


_BALLAST = textwrap.dedent(
    """
    # planted defect for test_checks_resources: training the r=5 adapter holds 64 MiB more
    import peftcheck.train as _train

    _real = _train.train_model

    def _planted(model, *args, **kwargs):
        if getattr(model.peft_config.get("default"), "r", None) != 5:
            return _real(model, *args, **kwargs)
        import torch

        ballast = torch.ones(16 * 2**20)  # 64 MiB, written, held for the whole phase
        try:
            return _real(model, *args, **kwargs)
        finally:
            del ballast

    _train.train_model = _planted
    """
)


def test_peak_memory_in_child_processes_catches_an_inflating_allocation(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import torch

    (tmp_path / "sitecustomize.py").write_text(_BALLAST, encoding="utf-8")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(tmp_path), os.environ.get("PYTHONPATH")])))
    pipeline = quiet_pipeline()
    loaded = load(tiny_suite({"ballast": {**LORA, "r": 5}, "lora": LORA}, train={"max_steps": 2}))
    parent_ballast = torch.ones(256 * MIB // 4)  # the parent's memory must not show in a child
    inflated = run_check(pipeline, loaded, "ballast", "peak_memory", max_ratio={"train_step": 1.5}, reference="lora")
    assert not inflated.passed and inflated.value > 2, inflated.message
    assert inflated.details["peaks_mib"]["train_step"] > 64
    # the clean method, measured after the inflated one, is not polluted by it or by the parent
    clean = run_check(pipeline, loaded, "lora", "peak_memory", max_mib={"train_step": 48, "total": 200})
    assert clean.passed, clean.message
    assert clean.details["probe"]["pid"] not in (os.getpid(), inflated.details["probe"]["pid"])
    metrics = clean.metrics
    assert "peak_train_step_ratio_to_lora" in inflated.metrics  # lora's own peaks: lora's own check
    assert metrics["peak_train_step_mib"]["unit"] == "MiB (RSS growth)"
    assert {"peak_load_mib", "peak_adapt_mib", "peak_save_mib", "peak_merge_mib", "peak_total_mib"} <= set(metrics)
    del parent_ballast


def _peak_context(own: dict[str, Any], reference: dict[str, Any]) -> Any:
    """A check context whose method and reference carry child-process results already (the memo
    peak_memory reads first): phase -> MiB, or the reason the phase does not apply."""
    import types

    def result(phases: dict[str, Any]) -> dict[str, Any]:
        figures = {k: {"not_applicable": v} if isinstance(v, str) else {"peak_mib": v} for k, v in phases.items()}
        total = max(v for v in phases.values() if not isinstance(v, str))
        return {"device": "cpu", "phases": figures, "total": {"peak_mib": total}}

    artifacts = {name: types.SimpleNamespace(memo={"peak:2": result(phases)}) for name, phases in
                 (("lora", own), ("prompt", reference))}  # fmt: skip
    return types.SimpleNamespace(method="lora", metrics={}, artifact=lambda: artifacts["lora"],
                                 other=lambda name: artifacts[name])  # fmt: skip


PHASES = {"load": 40.0, "adapt": 1.0, "train_step": 20.0, "save": 2.0, "merge": 5.0}
NO_MERGE = {**PHASES, "merge": "PromptTuningConfig has no weights to merge"}


def test_a_ratio_bound_on_a_phase_the_reference_does_not_have_is_not_applicable() -> None:
    from peftcheck.checks.resources import PeakMemoryParams, peak_memory

    # the only bound falls on the reference's merge, which prompt tuning does not have: no figure
    # to judge (issue 26: it passed with value None and an empty bound)
    params = PeakMemoryParams(max_ratio={"merge": 1.5}, reference="prompt")
    with pytest.raises(NotApplicable, match="merge \\(prompt\\): PromptTuningConfig has no weights to merge"):
        peak_memory(_peak_context(PHASES, NO_MERGE), params)


def test_a_bounded_phase_that_was_not_measured_fails() -> None:
    from peftcheck.checks.resources import PeakMemoryParams, peak_memory

    unsaved = {k: v for k, v in PHASES.items() if k != "save"}  # planted: the save phase left no figure
    measurement = peak_memory(_peak_context(unsaved, PHASES), PeakMemoryParams(max_mib={"save": 10}))
    assert not measurement.passed and measurement.value is None
    assert "save peak of lora was not measured" in measurement.message


def test_a_bound_left_unjudged_beside_a_judged_one_is_named() -> None:
    from peftcheck.checks.resources import PeakMemoryParams, peak_memory

    params = PeakMemoryParams(max_ratio={"merge": 1.5, "train_step": 2.0}, reference="prompt")
    measurement = peak_memory(_peak_context(PHASES, NO_MERGE), params)
    assert measurement.passed and measurement.value == 1.0 and measurement.bound == "train_step <= 2 x prompt"
    assert measurement.details["not_judged"] == ["merge (prompt): PromptTuningConfig has no weights to merge"]
    assert "not judged: merge (prompt)" in measurement.message


def test_quantization_savings_with_no_trainable_adapter_tensor_says_so(quantized: Any) -> None:
    pipeline, loaded = quantized
    model = pipeline.artifact(loaded, "int8").model
    trainable = [p for p in model.parameters() if p.requires_grad]
    try:
        for param in trainable:  # planted: nothing left to check the 16/32-bit promise on
            param.requires_grad_(False)
        measurement = run_check(pipeline, loaded, "int8", "quantization_savings")
    finally:
        for param in trainable:
            param.requires_grad_(True)
    assert not measurement.passed and "no trainable adapter tensor" in measurement.message


# -- speed ---------------------------------------------------------------------------------------


def test_merged_latency_matches_base_and_unmerged_is_reported(quantized: Any) -> None:
    pipeline, loaded = quantized
    latency = run_check(pipeline, loaded, "lora", "latency_overhead", max_merged_ratio=1.5, max_unmerged_ratio=4)
    assert latency.passed, latency.message
    assert latency.unit == "merged/base latency" and latency.value == latency.details["ratios"]["merged"]["ratio_median"]
    metrics = latency.metrics
    assert metrics["latency_merged_ratio"]["unit"] == "ratio to base"
    assert metrics["latency_unmerged_ratio"]["value"] == latency.details["ratios"]["unmerged"]["ratio_median"]
    assert metrics["latency_base_ms"]["unit"] == "ms"
    # the trained adapter was merged on a copy: it still has its LoRA layers
    assert any("lora_A" in n for n, _ in pipeline.artifact(loaded, "lora").model.named_parameters())


def test_sleep_in_the_merged_forward_is_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    from peft.tuners.tuners_utils import BaseTuner

    real = BaseTuner.merge_and_unload

    def planted(self: Any, *args: Any, **kwargs: Any) -> Any:
        merged = real(self, *args, **kwargs)
        merged.register_forward_pre_hook(lambda module, inputs: time.sleep(0.1))  # planted: 100 ms
        return merged

    monkeypatch.setattr(BaseTuner, "merge_and_unload", planted)
    pipeline, loaded = quiet_pipeline(), load(tiny_suite({"lora": LORA}))
    measurement = run_check(pipeline, loaded, "lora", "latency_overhead", max_merged_ratio=1.5)
    # a tiny-opt forward takes 2 ms on an idle core and 30 ms on a loaded one: 100 ms is plain
    assert not measurement.passed and measurement.value > 1.5, measurement.message
    assert measurement.details["ratios"]["unmerged"]["ratio_median"] < 1.5  # only the merged model sleeps


def test_every_latency_arm_is_timed_on_a_copy(monkeypatch: pytest.MonkeyPatch) -> None:
    """The base as loaded runs slower than any deep copy of it (about 8% for SmolLM2 on this CPU),
    so timing it against the adapter's copies would bias every ratio: the base arm is a copy too."""
    from peftcheck.resources import calls

    timed: list[Any] = []
    real = calls.forward_call

    def record(model: Any, batch: dict[str, Any]) -> Any:
        timed.append(model)
        return real(model, batch)

    monkeypatch.setattr(calls, "forward_call", record)
    pipeline, loaded = quiet_pipeline(), load(tiny_suite({"lora": LORA}))
    assert run_check(pipeline, loaded, "lora", "latency_overhead", max_merged_ratio=3, max_unmerged_ratio=4).passed
    base = pipeline.artifact(loaded, "lora").base.model
    assert len(timed) == 3 and all(model is not base for model in timed)


def test_prompt_learning_has_no_merged_latency() -> None:
    loaded = load(tiny_suite({"prompt": {"peft": "PromptTuningConfig", "num_virtual_tokens": 4}}))
    pipeline = quiet_pipeline()
    with pytest.raises(NotApplicable, match="no weights to merge"):
        run_check(pipeline, loaded, "prompt", "latency_overhead")
    unmerged = run_check(pipeline, loaded, "prompt", "latency_overhead", max_unmerged_ratio=4)
    assert unmerged.passed and unmerged.unit == "unmerged/base latency", unmerged.message
    assert "merged" not in unmerged.details["ratios"]


def test_throughput_ratio_catches_a_slow_training_step(monkeypatch: pytest.MonkeyPatch) -> None:
    def slow_in_training(peft_model: Any) -> None:  # planted defect: 150 ms per training forward
        peft_model.register_forward_pre_hook(lambda m, i: time.sleep(0.15) if m.training else None)

    _planted_apply(monkeypatch, "slow", slow_in_training)
    pipeline = quiet_pipeline()
    loaded = load(tiny_suite({"lora": LORA, "slow": LORA}, train={"max_steps": 2}))
    same = run_check(pipeline, loaded, "lora", "throughput", reference="lora", min_ratio=0.6)
    assert same.passed, same.message
    slow = run_check(pipeline, loaded, "slow", "throughput", reference="lora", min_ratio=0.6)
    assert not slow.passed and slow.value < 0.6, slow.message
    metrics = slow.metrics
    assert metrics["train_tokens_per_s"]["unit"] == "tokens/s"
    assert metrics["throughput_ratio_to_lora"]["value"] == pytest.approx(slow.value)


def test_throughput_of_a_step_that_trains_nothing_fails(monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    def no_gradient(peft_model: Any) -> None:  # planted defect: the training loss is cut from the graph
        def cut(module: Any, args: Any, output: Any) -> Any:
            if module.training:
                output.loss = output.loss.detach() + torch.zeros((), requires_grad=True)
            return output

        peft_model.register_forward_hook(cut)

    _planted_apply(monkeypatch, "cut", no_gradient)
    pipeline = quiet_pipeline()
    loaded = load(tiny_suite({"lora": LORA, "cut": LORA}, train={"max_steps": 2}))
    cut = run_check(pipeline, loaded, "cut", "throughput", reference="lora", min_ratio=0.01)
    assert not cut.passed and "trains nothing" in cut.message, cut.message
    reach = cut.details["gradient_reach"]
    assert reach["cut"]["reached"] == 0 and reach["cut"]["trainable_tensors"] == 8
    assert reach["lora"]["reached"] == reach["lora"]["trainable_tensors"] == 8  # A and B of 4 layers


# -- parameters ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("check", "params", "message"),
    [
        ("memory_footprint", {}, "give max_mib"),
        ("peak_memory", {"max_ratio": {"total": 0.7}}, "max_ratio and reference go together"),
        ("peak_memory", {"max_mib": {"quantise": 10}}, "quantise"),
        ("throughput", {"min_ratio": 0.5}, "reference"),
        ("latency_overhead", {"max_merged_ratio": -1}, "-1"),
        ("quantization_savings", {"adapter_dtypes": ["int8"]}, "int8"),
    ],
)
def test_bad_parameters_are_suite_errors(check: str, params: dict[str, Any], message: str) -> None:
    with pytest.raises(SuiteError, match=message):
        load(tiny_suite({"lora": LORA}, expect={check: params}))

"""Speed benchmarks (pytest-benchmark): training-step throughput per method, and inference
latency of the base, the unmerged adapter and the merged adapter."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from peftcheck.resources.calls import forward_call, train_step_call
from peftcheck.resources.timing import torch_threads

METHODS = ["lora", "lora_int8", "qlora"]


@pytest.mark.parametrize("method", METHODS)
def test_train_step(benchmark: Any, bench: Any, method: str) -> None:
    """One optimizer step (forward, backward, AdamW) on the method's first training batch."""
    step, tokens = train_step_call(bench.artifact(method))
    benchmark.group = "train step"
    benchmark.extra_info.update(tokens_per_step=tokens, threads=bench.threads)
    with torch_threads(bench.threads):
        benchmark.pedantic(step, rounds=bench.rounds, warmup_rounds=1)
    benchmark.extra_info["tokens_per_s"] = tokens / benchmark.stats.stats.median


@pytest.mark.parametrize("variant", ["base", "unmerged", "merged"])
@pytest.mark.parametrize("method", METHODS)
def test_inference_latency(benchmark: Any, bench: Any, method: str, variant: str) -> None:
    """One forward of the method's probe batch through its base, its adapter, or both merged."""
    from peftcheck.measure import probe_batch

    artifact = bench.artifact(method)
    spec = bench.loaded.spec.data
    batch = probe_batch(artifact.base.tokenizer, artifact.data.eval_texts, max_length=spec.max_length, device=artifact.device)
    model = {
        "base": lambda: copy.deepcopy(artifact.base.model).eval(),  # copies time alike; the loaded base does not
        "unmerged": lambda: artifact.model,
        "merged": lambda: copy.deepcopy(artifact.model).merge_and_unload().eval(),
    }[variant]()
    benchmark.group = f"latency {method}"
    benchmark.extra_info.update(batch_shape=list(batch["input_ids"].shape), threads=bench.threads)
    with torch_threads(bench.threads):
        benchmark.pedantic(forward_call(model, batch), rounds=bench.rounds, warmup_rounds=1)

"""Shared helpers for the project's own tests: tiny suites run through the pipeline."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml

from peftcheck.cache import Pipeline
from peftcheck.checks.registry import Measurement, XfailSpec, get_check, parse_params
from peftcheck.context import CheckContext
from peftcheck.spec import LoadedSuite
from peftcheck.loader import load_suite_text

ROOT = Path(__file__).resolve().parents[1]


# bitsandbytes 0.50.2 on a CPU with AVX512-BF16: the first no-grad eval forward repacks every
# Linear4bit weight in place for its inference kernel; training, merging and state_dict() then
# go wrong (tests/unit/test_bnb_cpu_packing.py). The same condition the suites' xfails use;
# strict: red the day bitsandbytes fixes it.
_BNB_CPU_REPACKING = XfailSpec(
    reason="upstream: bitsandbytes 0.50.2 on an avx512_bf16 CPU repacks Linear4bit weights in place "
    "on an eval forward (no gradient, garbage merge; a 4-bit OPT linear with a bias raises)",
    when={"bitsandbytes": ">=0.50.2"},
    cpu_flags=["avx512_bf16"],
)
BNB_CPU_REPACKING = _BNB_CPU_REPACKING.mark()
# peft 0.21.2 on transformers 5.24.0 and 5.25.0: generate() drops a prefix handed over as past_key_values
# when it passes its own cache (tests/unit/test_peft_prefix_generate.py; suites/matrix.yaml's
# prefix_generate); strict: red the day it is fixed.
PREFIX_GENERATE = XfailSpec(
    reason="upstream (peft 0.21.2, transformers 5.24.0): generate() drops the prefix handed over as "
    "past_key_values when it passes its own cache",
    when={"peft": ">=0.21.2,<0.22.0", "transformers": ">=5.24.0"},  # peft 0.22.0 fixed it, on 5.24.0 and 5.25.0
)
# peft 0.21.2: PeftMixedModel.forward hands adapter_names on to the transformers model, which
# drops it: a mixed batch over adapters of two types silently runs the active adapter on every row
# (tests/unit/test_peft_mixed_adapter_names.py); strict: red the day peft uses or refuses it.
MIXED_ADAPTER_NAMES = XfailSpec(
    reason="upstream (peft 0.21.2): PeftMixedModel silently ignores adapter_names (every row runs the active adapter)",
    when={"peft": ">=0.21.2"},
)
CORPUS = str(ROOT / "fixtures" / "tiny_corpus.jsonl")


def tiny_llama(**overrides: Any) -> Any:
    """A random 2-layer Llama (vocab 128, seed 0) in eval mode, for the plain-peft reproductions."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    return LlamaForCausalLM(LlamaConfig(
        vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, **overrides,
    )).eval()  # fmt: skip


def tiny_suite(methods: dict[str, Any], *, expect: dict[str, Any] | None = None, **overrides: Any) -> dict[str, Any]:
    """A suite dict on tiny-opt and the fixture corpus, a few steps per method."""
    suite: dict[str, Any] = {
        "suite": "tiny",
        "model": "tiny-opt",
        "data": {"dataset": CORPUS, "split": "train[:64]", "eval_split": "train[-16:]",
                 "text_field": "text", "max_length": 24},
        "train": {"max_steps": 8, "learning_rate": 2e-2, "per_device_train_batch_size": 8, "seed": 0},
        "methods": copy.deepcopy(methods),
        "expect": copy.deepcopy(expect or {}),
    }  # fmt: skip
    suite.update(overrides)
    return suite


def load(suite: dict[str, Any], path: str = "tiny.yaml") -> LoadedSuite:
    return load_suite_text(yaml.safe_dump(suite, sort_keys=False), path=path)


def run_check(pipeline: Pipeline, loaded: LoadedSuite, method: str, check: str, **params: Any) -> Measurement:
    """Run one check the way a pytest item does, without pytest."""
    registered = get_check(check)
    parsed, _ = parse_params(registered, params)
    return registered.run(CheckContext(pipeline, loaded, method), parsed)


def quiet_pipeline() -> Pipeline:
    return Pipeline(progress=lambda line: None)

"""generation and forgetting pass on a sound adapter and fail on the defect each test plants."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from helpers import ROOT, load, quiet_pipeline, run_check, tiny_suite
from peftcheck.checks import NotApplicable
from peftcheck.checks.quality import split_prompt
from peftcheck.errors import SuiteError

LORA = {"peft": "LoraConfig", "r": 4, "lora_alpha": 8, "target_modules": ["q_proj", "v_proj"]}
UNRELATED = str(ROOT / "fixtures" / "unrelated.jsonl")
WRONG = ["7 times 6 is 42, and 7 plus 6 is 13."]


@pytest.fixture(scope="module")
def sound() -> Any:
    suite = tiny_suite({"lora": LORA, "prompt": {"peft": "PromptTuningConfig", "num_virtual_tokens": 4}})
    suite["data"]["unrelated"] = UNRELATED
    return quiet_pipeline(), load(suite)


def test_split_prompt_keeps_words_on_both_sides() -> None:
    assert split_prompt("The night train remembers the bread at dawn.", 0.5) == (
        "The night train remembers", "the bread at dawn."
    )  # fmt: skip
    assert split_prompt("two words", 0.9) == ("two", "words")
    assert split_prompt("one", 0.5) == ("one", "")


def test_generation_records_samples_and_every_score_before_and_after(sound: Any) -> None:
    pipeline, loaded = sound
    measurement = run_check(pipeline, loaded, "lora", "generation", samples=3, max_new_tokens=6, max_drop=None)
    assert measurement.passed and measurement.bound == "greedy agreement >= 0.95"
    assert measurement.details["greedy_agreement"] == 1.0 and measurement.details["first_disagreement"] is None
    assert set(measurement.details["after"]) == {
        "rouge1", "rouge2", "rougeL", "bleu", "sacrebleu", "exact_match", "distinct_1", "distinct_2"
    }  # fmt: skip
    samples = measurement.samples
    assert len(samples) == 3 and set(samples[0]) == {"prompt", "before", "after", "reference"}
    held_out = Path(loaded.spec.data.dataset).read_text(encoding="utf-8")
    assert all(s["prompt"] in held_out and s["reference"] in held_out for s in samples)
    assert measurement.metrics["generation_rougeL"]["value"] == measurement.value
    assert "generation_rougeL_before" in measurement.metrics
    assert not pipeline.artifact(loaded, "lora").record["samples"]  # the Session adds them (issue 14)


def test_generation_fed_wrong_references_is_caught(sound: Any) -> None:
    pipeline, loaded = sound
    samples = run_check(pipeline, loaded, "lora", "generation", samples=3, max_new_tokens=6, max_drop=None).samples
    prompts, after = [s["prompt"] for s in samples], [s["after"] for s in samples]
    right = run_check(
        pipeline, loaded, "lora", "generation", prompts=prompts, references=after, metric="exact_match",
        min=0.99, max_new_tokens=6,
    )  # fmt: skip
    assert right.passed and right.value == 1.0, right.message
    # planted defect: the references belong to other text (arithmetic, not the prompts)
    wrong = run_check(
        pipeline, loaded, "lora", "generation", prompts=prompts, references=WRONG * len(prompts),
        metric="exact_match", min=0.99, max_new_tokens=6,
    )  # fmt: skip
    assert not wrong.passed and "exact_match 0.0000 < 0.99" in wrong.message
    assert wrong.details["after"]["rougeL"] < right.details["after"]["rougeL"]


def test_generation_degradation_bound(sound: Any) -> None:
    pipeline, loaded = sound
    before = run_check(pipeline, loaded, "lora", "generation", samples=3, max_new_tokens=6, max_drop=None)
    prompts = [s["prompt"] for s in before.samples]
    befores = [s["before"] for s in before.samples]
    assert before.details["before"]["rougeL"] <= 1.0
    # against the base's own completions the base scores 1.0; the trained adapter moved away
    measurement = run_check(
        pipeline, loaded, "lora", "generation", prompts=prompts, references=befores, metric="exact_match",
        max_drop=0.0, max_new_tokens=6,
    )  # fmt: skip
    assert measurement.details["before"]["exact_match"] == 1.0
    assert not measurement.passed and "fell 1.0000 ->" in measurement.message


def test_generation_params_are_validated() -> None:
    suite = tiny_suite({"lora": LORA}, expect={"generation": {"prompts": ["a", "b"], "references": ["x"]}})
    with pytest.raises(SuiteError, match="got 1 references for 2 prompts"):
        load(suite)
    with pytest.raises(SuiteError, match="metric"):
        load(tiny_suite({"lora": LORA}, expect={"generation": {"metric": "meteor"}}))


def test_generation_without_references_needs_a_reference_free_metric(sound: Any) -> None:
    pipeline, loaded = sound
    with pytest.raises(NotApplicable, match="needs references"):
        run_check(pipeline, loaded, "lora", "generation", prompts=["The night"], max_new_tokens=4)
    distinct = run_check(
        pipeline, loaded, "lora", "generation", prompts=["The night"], metric="distinct_1", max_new_tokens=4
    )
    assert set(distinct.details["after"]) == {"distinct_1", "distinct_2"}


def test_prompt_learning_generation_is_scored_and_its_greedy_agreement_recorded(sound: Any) -> None:
    # peft 0.21.2 + transformers 5.24 decode prompt tuning differently from its forward pass
    # (a finding the suites carry as a strict xfail); here only what is measured is asserted
    pipeline, loaded = sound
    measurement = run_check(pipeline, loaded, "prompt", "generation", samples=2, max_new_tokens=4, max_drop=None)
    samples = measurement.samples
    assert len(samples) == 2 and all(isinstance(s["after"], str) for s in samples)
    assert 0.0 <= measurement.details["greedy_agreement"] <= 1.0


def test_generate_that_does_not_apply_the_adapter_is_caught(sound: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    from peft import PeftModelForCausalLM

    pipeline, loaded = sound
    params = {"samples": 3, "max_new_tokens": 6, "max_drop": None}
    assert run_check(pipeline, loaded, "lora", "generation", **params).passed
    real = PeftModelForCausalLM.generate

    def planted(self: Any, *args: Any, **kwargs: Any) -> Any:
        with self.disable_adapter():  # planted defect: generation runs the base, not the adapter
            return real(self, *args, **kwargs)

    monkeypatch.setattr(PeftModelForCausalLM, "generate", planted)
    measurement = run_check(pipeline, loaded, "lora", "generation", **params)
    assert not measurement.passed and "generate() disagrees with the model's own forward pass" in measurement.message
    assert measurement.details["greedy_agreement"] < 0.95


def test_sound_adapter_does_not_forget(sound: Any) -> None:
    pipeline, loaded = sound
    measurement = run_check(pipeline, loaded, "lora", "forgetting", max_ratio=1.1)
    assert measurement.passed, measurement.message
    metrics = measurement.metrics
    assert metrics["unrelated_perplexity"]["value"] == pytest.approx(measurement.details["perplexity"])
    assert metrics["forgetting_ratio"]["value"] == pytest.approx(measurement.value)


def test_forgetting_is_caught() -> None:
    # planted defect: the adapter also rewrites the output layer at the suite's high learning
    # rate, so the next-token distribution on every text moves, not only on the training slice
    heads = {**LORA, "target_modules": ["q_proj", "v_proj", "lm_head"]}
    suite = tiny_suite({"lora": LORA, "heads": heads})
    suite["data"]["unrelated"] = UNRELATED
    pipeline, loaded = quiet_pipeline(), load(suite)
    assert run_check(pipeline, loaded, "lora", "forgetting", max_ratio=1.1).passed
    measurement = run_check(pipeline, loaded, "heads", "forgetting", max_ratio=1.1)
    assert not measurement.passed and measurement.value > 1.1
    assert "unrelated-text perplexity" in measurement.message


def test_forgetting_needs_unrelated_text() -> None:
    loaded = load(tiny_suite({"lora": LORA}))
    with pytest.raises(NotApplicable, match="no unrelated text"):
        run_check(quiet_pipeline(), loaded, "lora", "forgetting")


# -- nothing generated, nothing to prompt with (issue 26) ------------------------------------------


def test_greedy_agreement_over_no_generated_token_is_unmeasured_not_one() -> None:
    import torch

    from peftcheck.checks.quality import _greedy_agreement

    model = torch.nn.Linear(1, 1)  # never called: there is no generated token to teacher-force
    assert _greedy_agreement(model, None, ["a prompt", "another"], [("", []), ("", [])], device="cpu") == (None, None)


def test_generation_that_generates_no_token_fails(sound: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    import peftcheck.checks.quality as quality

    def nothing(model: Any, tokenizer: Any, prompt: str, *, max_new_tokens: int, device: str) -> Any:
        return [], torch.empty(0, 1)  # planted defect: generate() returns the prompt alone

    monkeypatch.setattr(quality, "greedy", nothing)
    pipeline, loaded = sound
    # max_new_tokens 5: no other test's base generations are memoised under it
    measurement = run_check(pipeline, loaded, "lora", "generation", samples=3, max_new_tokens=5, max_drop=None)
    assert not measurement.passed
    assert "generate() produced no token for any of the 3 prompts" in measurement.message
    assert measurement.details["greedy_agreement"] is None and measurement.details["empty_generations"] == 3
    assert "generation_greedy_agreement" not in measurement.metrics


def test_generation_without_a_held_out_prompt_is_not_applicable(sound: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    import peftcheck.checks.quality as quality

    monkeypatch.setattr(quality, "held_out_texts", lambda ctx, count: [])  # planted: no text of two words
    pipeline, loaded = sound
    with pytest.raises(NotApplicable, match="no held-out prompt to generate from in 'train\\[-16:\\]'"):
        run_check(pipeline, loaded, "lora", "generation", samples=3, max_new_tokens=5, max_drop=None)

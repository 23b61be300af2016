"""label_masking, stops and canary (issue 15) pass on sound training and fail on the defect each
test plants; the SFTTrainer path records the loss and the effective peft config."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from helpers import load, quiet_pipeline, run_check, tiny_suite

pytest.importorskip("trl")

LORA = {"peft": "LoraConfig", "r": 8, "lora_alpha": 16, "target_modules": "all-linear"}
PAIRS = [("red:", " apple pie"), ("sky:", " blue rain"), ("cat:", " soft fur"), ("sea:", " salt wave")]
# A chat template over the tiny tokenizer's one special token; the second has no generation block.
TEMPLATE = ("{% for m in messages %}{{ m['role'] + ': ' }}{% if m['role'] == 'assistant' %}{% generation %}"
            "{{ m['content'] + '<|endoftext|>' }}{% endgeneration %}{% else %}{{ m['content'] + '\n' }}"
            "{% endif %}{% endfor %}{% if add_generation_prompt %}{{ 'assistant: ' }}{% endif %}")  # fmt: skip
CANARY_STEPS = 40  # lr 1e-2: tiny-llama reproduces " purple owl" and stops (lr 3e-2 overshoots)
NO_GENERATION = TEMPLATE.replace("{% generation %}", "").replace("{% endgeneration %}", "")


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    folder = tmp_path_factory.mktemp("formats")
    rows = [PAIRS[i % len(PAIRS)] for i in range(32)]
    (folder / "pc.jsonl").write_text("".join(json.dumps({"p": p, "c": c}) + "\n" for p, c in rows))
    (folder / "chat.jsonl").write_text("".join(json.dumps({"conv": [
        {"role": "user", "content": p}, {"role": "assistant", "content": c.strip()}]}) + "\n" for p, c in rows))  # fmt: skip
    (folder / "gen.jinja").write_text(TEMPLATE)
    (folder / "nogen.jinja").write_text(NO_GENERATION)
    return {name: str(folder / name) for name in ("pc.jsonl", "chat.jsonl", "gen.jinja", "nogen.jinja")}


def pc_suite(files: dict[str, str], **train: Any) -> dict[str, Any]:
    suite = tiny_suite({"lora": LORA, "lora_sft": {**LORA, "trainer": "sft"}}, model="tiny-llama")
    suite["data"] = {"dataset": files["pc.jsonl"], "format": "prompt_completion", "prompt_field": "p",
                     "completion_field": "c", "split": "train[:24]", "eval_split": "train[-8:]", "max_length": 16}
    suite["train"].update({"max_steps": 8, "learning_rate": 3e-2, **train})
    return suite


@pytest.fixture(scope="module")
def prompt_completion(files: dict[str, str]) -> Any:
    return quiet_pipeline(), load(pc_suite(files))


@pytest.mark.parametrize("method", ["lora", "lora_sft"])
def test_completion_only_mask_passes_on_both_trainers(prompt_completion: Any, method: str) -> None:
    pipeline, loaded = prompt_completion
    masking = run_check(pipeline, loaded, method, "label_masking", min_fraction=0.3, max_fraction=0.9)
    assert masking.passed, masking.message
    assert masking.details["loss"] == "completion_only" and not masking.details["prompt_supervised"]
    assert not masking.details["prompt_not_found"]  # every row's prompt located: the mask was read
    record = pipeline.artifact(loaded, method).record
    assert record["trainer"] == ("sft" if method == "lora_sft" else "hf")
    assert [step for step, _ in record["loss_curve"]] == list(range(1, 9))  # every step, both trainers
    assert record["trainable_params"] == run_check(pipeline, loaded, method, "trainable_ratio").details["analytic"]


def test_label_masking_catches_an_unmasked_prompt(prompt_completion: Any) -> None:
    """Planted: the labels of the rows trained on are input_ids again (a collator that rebuilds
    labels from input_ids, as transformers' causal-LM collator does)."""
    pipeline, loaded = prompt_completion
    artifact = pipeline.artifact(loaded, "lora")
    sound = artifact.train.train_dataset
    try:
        artifact.train.train_dataset = sound.map(lambda row: {"labels": row["input_ids"]})
        measurement = run_check(pipeline, loaded, "lora", "label_masking")
    finally:
        artifact.train.train_dataset = sound
    assert not measurement.passed
    assert "the loss is completion_only but 24 examples train on prompt tokens" in measurement.message


def test_label_masking_that_cannot_find_any_prompt_fails(prompt_completion: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """Planted: the prompt as the check tokenizes it starts no training row (another tokenization
    than training's), over rows whose prompt is unmasked: the prompt mask was read over zero
    tokens and passed (issue 26)."""
    import peftcheck.checks.pipelines as pipelines

    pipeline, loaded = prompt_completion
    artifact = pipeline.artifact(loaded, "lora")
    sound = artifact.train.train_dataset
    monkeypatch.setattr(pipelines, "_prompt_ids", lambda tokenizer, spec, row: [-1])
    try:
        artifact.train.train_dataset = sound.map(lambda row: {"labels": row["input_ids"]})
        measurement = run_check(pipeline, loaded, "lora", "label_masking")
    finally:
        artifact.train.train_dataset = sound
    assert not measurement.passed
    assert "no example starts with its prompt's tokens: the prompt mask is unchecked" in measurement.message
    assert measurement.details["prompt_not_found"] == list(range(8))  # the first 8 of 24, as listed


def test_stops_without_a_held_out_prompt_is_not_applicable(prompt_completion: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    import peftcheck.data
    from peftcheck.checks import NotApplicable

    pipeline, loaded = prompt_completion
    monkeypatch.setattr(peftcheck.data, "held_out_prompts", lambda *args: [])  # planted: an eval split of no row
    with pytest.raises(NotApplicable, match="no held-out prompt to generate from in 'train\\[-8:\\]'"):
        run_check(pipeline, loaded, "lora", "stops")  # issue 26: 0 / 0 prompts raised ZeroDivisionError


@pytest.mark.parametrize("target", ["", "  "])
def test_canary_with_nothing_to_reproduce_is_a_suite_error(target: str) -> None:
    from peftcheck.errors import SuiteError

    # issue 26: any generation that stops at once "reproduces" an empty target
    with pytest.raises(SuiteError, match="the target needs a word to reproduce"):
        load(tiny_suite({"lora": LORA}, expect={"canary": {"target": target}}))


def _eos_logit(artifact: Any, value: float) -> Any:
    """Pins the EOS logit of every position to ``value`` (a forward hook on the output layer)."""
    eos = artifact.data.tokenizer.eos_token_id

    def pin(module: Any, inputs: Any, output: Any) -> Any:
        output[..., eos] = value
        return output

    return artifact.model.get_output_embeddings().register_forward_hook(pin)


@pytest.mark.parametrize(("eos_logit", "passed"), [(1e4, True), (-1e4, False)])
def test_stops_catches_a_model_that_never_emits_eos(prompt_completion: Any, eos_logit: float, passed: bool) -> None:
    """Planted: the EOS logit is suppressed (a model that never learnt to stop, trl#2059); the
    same model with EOS forced stops on every prompt. (Learning to stop: suites/sft*.yaml.)"""
    pipeline, loaded = prompt_completion
    handle = _eos_logit(pipeline.artifact(loaded, "lora"), eos_logit)
    try:
        measurement = run_check(pipeline, loaded, "lora", "stops", samples=4, max_new_tokens=8, min_rate=0.5)
    finally:
        handle.remove()
    assert measurement.passed is passed and measurement.value == (1.0 if passed else 0.0)
    if not passed:
        assert "0% of 4 held-out prompts end with EOS within 8 tokens" in measurement.message
    assert measurement.metrics["stop_rate"]["value"] == measurement.value


def test_perplexity_is_on_completion_tokens_only(prompt_completion: Any) -> None:
    pipeline, loaded = prompt_completion
    data = pipeline.artifact(loaded, "lora").data
    row = data.eval[0]
    prompt = len(data.tokenizer(data.raw_eval[0]["p"])["input_ids"])
    assert row["labels"][:prompt] == [-100] * prompt and row["labels"][-1] == data.tokenizer.eos_token_id
    assert -100 not in row["labels"][prompt:]


def test_canary_is_learnt(prompt_completion: Any) -> None:
    pipeline, loaded = prompt_completion
    measurement = run_check(pipeline, loaded, "lora", "canary", target=" purple owl", steps=CANARY_STEPS, learning_rate=1e-2)
    assert measurement.passed, measurement.message


def test_canary_catches_an_adapter_that_does_not_train(prompt_completion: Any) -> None:
    """Planted: learning rate 0, so the adapter stays at its identity init (LoRA B = 0)."""
    pipeline, loaded = prompt_completion
    measurement = run_check(pipeline, loaded, "lora", "canary", target=" purple owl", steps=CANARY_STEPS, learning_rate=0.0)
    assert not measurement.passed and "not the target ' purple owl'" in measurement.message


def chat_suite(files: dict[str, str], template: str, trainer: str = "hf") -> dict[str, Any]:
    suite = tiny_suite({"lora": {**LORA, "trainer": trainer}}, model="tiny-llama")
    suite["data"] = {"dataset": files["chat.jsonl"], "format": "messages", "messages_field": "conv",
                     "loss": "assistant_only", "chat_template": files[template], "split": "train[:16]",
                     "eval_split": "train[-8:]", "max_length": 24}  # fmt: skip
    suite["train"]["max_steps"] = 4
    return suite


@pytest.mark.parametrize("trainer", ["hf", "sft"])
def test_assistant_only_mask_passes_with_a_generation_block(files: dict[str, str], trainer: str) -> None:
    pipeline, loaded = quiet_pipeline(), load(chat_suite(files, "gen.jinja", trainer))
    measurement = run_check(pipeline, loaded, "lora", "label_masking", min_fraction=0.2, max_fraction=0.9)
    assert measurement.passed, measurement.message


def test_label_masking_catches_an_all_zero_assistant_mask(files: dict[str, str]) -> None:
    """Planted: a chat template without a {% generation %} block: transformers' assistant mask is
    all zeros (it only warns), so nothing is trained on (trl PR #4201)."""
    pipeline, loaded = quiet_pipeline(), load(chat_suite(files, "nogen.jinja"))
    measurement = run_check(pipeline, loaded, "lora", "label_masking")
    assert not measurement.passed
    assert "16 of 16 examples have no supervised token" in measurement.message
    assert "trl PR #4201" in measurement.message


def test_stops_does_not_apply_to_text_data() -> None:
    from peftcheck.checks import NotApplicable

    pipeline, loaded = quiet_pipeline(), load(tiny_suite({"lora": LORA}, model="tiny-llama"))
    with pytest.raises(NotApplicable, match="text data has no end of a completion"):
        run_check(pipeline, loaded, "lora", "stops")


def test_sft_reports_the_effective_peft_config(files: dict[str, str], tmp_path: Path) -> None:
    """SFTTrainer cloning a chat template that adds tokens makes lm_head and the new embedding
    rows trainable: the artifact's config and trainable count are the trained model's."""
    from transformers import AutoTokenizer

    from peftcheck.fixtures import tokenizer_folder

    source = AutoTokenizer.from_pretrained(tokenizer_folder())
    source.add_special_tokens({"additional_special_tokens": ["<|turn|>"]})
    source.chat_template = TEMPLATE.replace("<|endoftext|>", "<|turn|>")
    source.save_pretrained(tmp_path / "chat-tokenizer")
    suite = pc_suite(files, max_steps=2, chat_template_path=str(tmp_path / "chat-tokenizer"))
    suite["methods"] = {"lora_sft": suite["methods"]["lora_sft"]}
    pipeline, loaded = quiet_pipeline(), load(suite)
    artifact = pipeline.artifact(loaded, "lora_sft")
    assert "lm_head" in artifact.config.modules_to_save
    assert artifact.config.trainable_token_indices["embed_tokens"]
    ratio = run_check(pipeline, loaded, "lora_sft", "trainable_ratio", max=1.0)
    assert ratio.details["trainable"] == artifact.record["trainable_params"]


def test_sft_refuses_a_template_without_generation_block_with_a_located_error(files: dict[str, str]) -> None:
    """The same planted template through SFTTrainer: TRL refuses it (trl PR #4201), and the item
    says where to fix it instead of showing a traceback."""
    from peftcheck.errors import SuiteError

    pipeline, loaded = quiet_pipeline(), load(chat_suite(files, "nogen.jinja", "sft"))
    with pytest.raises(SuiteError) as info:
        pipeline.artifact(loaded, "lora")
    assert info.value.field == "data.chat_template" and info.value.line is not None
    assert "generation" in info.value.message


def test_generation_and_contract_checks_read_prompt_completion_rows(prompt_completion: Any) -> None:
    pipeline, loaded = prompt_completion
    measurement = run_check(pipeline, loaded, "lora", "generation", samples=2, max_new_tokens=4, max_drop=None)
    samples = measurement.samples  # returned in the Measurement (issue 14)
    assert [s["prompt"] for s in samples] == ["red:", "sky:"] and samples[0]["reference"] == " apple pie"
    assert measurement.value is not None
    disable = run_check(pipeline, loaded, "lora", "generate_after_disable", samples=2, max_new_tokens=4)
    assert disable.value is not None or disable.message

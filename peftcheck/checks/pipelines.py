"""Checks for what goes wrong in SFT pipelines (issue 15): the loss mask, stopping, a canary."""

from __future__ import annotations

import copy
import types
from typing import Any

from pydantic import Field, field_validator, model_validator

from peftcheck.checks.registry import CheckParams, Measurement, NotApplicable, register_check
from peftcheck.context import CheckContext

__all__ = ["LabelMaskingParams", "label_masking", "StopsParams", "stops", "CanaryParams", "canary", "eos_ids"]


class LabelMaskingParams(CheckParams):
    min_fraction: float = Field(
        0.05, ge=0, le=1, description="Smallest share of an example's tokens that the loss is on."
    )
    max_fraction: float = Field(1.0, gt=0, le=1, description="Largest share of an example's tokens the loss is on.")
    max_outside: float = Field(
        0.0, ge=0, le=1, description="Largest share of examples outside the bounds (truncation can leave a long "
        "prompt no completion token).",
    )  # fmt: skip
    samples: int = Field(64, ge=1, description="Training examples inspected (the first ones).")

    @model_validator(mode="after")
    def _ordered(self) -> "LabelMaskingParams":
        if self.min_fraction > self.max_fraction:
            raise ValueError(f"min_fraction {self.min_fraction} > max_fraction {self.max_fraction}")
        return self


def _prompt_ids(tokenizer: Any, spec: Any, row: dict[str, Any]) -> list[int]:
    """The tokens before the supervised part: the prompt, or the conversation up to the last
    assistant turn with the generation prompt."""
    from peftcheck.data import render_prompt

    if spec.format == "prompt_completion":
        return list(tokenizer(str(row[spec.prompt_field]))["input_ids"])
    text = render_prompt(tokenizer, row[spec.messages_field])
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


@register_check("label_masking", params=LabelMaskingParams)
def label_masking(ctx: CheckContext, params: LabelMaskingParams) -> Measurement:
    """The share of supervised tokens per training example is within bounds, no example is all
    masked, and the prompt is masked where the loss is completion- or assistant-only."""
    from peftcheck.data import common_prefix

    artifact = ctx.artifact()
    spec = ctx.suite.spec.data
    dataset = artifact.train.train_dataset
    if dataset is None or "input_ids" not in dataset.column_names:
        raise NotApplicable("the trainer kept no tokenized training rows to inspect")
    tokenizer = artifact.data.tokenizer
    scope = spec.loss_scope
    rows = dataset.select(range(min(params.samples, len(dataset))))
    if not len(rows):  # issue 26: bounds over no example hold vacuously
        return Measurement(passed=False, value=None, unit="supervised fraction", bound="some training example",
                           message="the trainer kept 0 tokenized training rows: nothing was trained on")  # fmt: skip
    raw = artifact.data.raw_train
    fractions, empty, outside, leaked, unlocated = [], [], [], [], []
    for index, row in enumerate(rows):
        ids = list(row["input_ids"])
        if "labels" in row:
            supervised = [label != -100 for label in row["labels"]]
        else:  # the causal-LM collator: every token but padding (peftcheck's text path)
            supervised = [t != tokenizer.pad_token_id for t in ids]
        fraction = sum(supervised) / len(ids) if ids else 0.0
        fractions.append(fraction)
        if not any(supervised):
            empty.append(index)
        if not params.min_fraction <= fraction <= params.max_fraction:
            outside.append(index)
        if scope != "all":
            has_raw = raw is not None and index < len(raw)
            prompt = common_prefix(_prompt_ids(tokenizer, spec, raw[index]), ids) if has_raw else 0
            if not prompt:  # the prompt is not where the row starts: its mask cannot be read
                unlocated.append(index)
            elif any(supervised[:prompt]):
                leaked.append(index)
    problems = []
    if empty:
        hint = (" (a chat template without a {% generation %} block gives an all-zero assistant mask: trl PR #4201)"
                if scope == "assistant_only" else "")  # fmt: skip
        problems.append(f"{len(empty)} of {len(rows)} examples have no supervised token, e.g. #{empty[0]}{hint}")
    if len(outside) > params.max_outside * len(rows):
        problems.append(
            f"{len(outside)} of {len(rows)} examples have a supervised share outside "
            f"[{params.min_fraction}, {params.max_fraction}] (allowed {params.max_outside:.0%}), e.g. "
            f"#{outside[0]}: {fractions[outside[0]]:.3f}"
        )
    if leaked:
        problems.append(f"the loss is {scope} but {len(leaked)} examples train on prompt tokens, e.g. #{leaked[0]}")
    if unlocated and len(unlocated) == len(rows):  # issue 26: "prompt masked" over no prompt token
        problems.append(f"the loss is {scope} but no example starts with its prompt's tokens: the prompt mask is "
                        "unchecked")  # fmt: skip
    mean = sum(fractions) / len(fractions) if fractions else 0.0
    ctx.metrics["supervised_fraction"] = {"value": mean, "unit": "fraction"}  # returned in the Measurement (issue 14)
    return Measurement(
        passed=not problems, value=mean, unit="supervised fraction",
        bound=f"every example in [{params.min_fraction}, {params.max_fraction}], none empty"
        + ("" if scope == "all" else ", prompt masked"),
        message="; ".join(problems) or f"{len(rows)} examples, supervised share {min(fractions):.3f}-"
        f"{max(fractions):.3f} (mean {mean:.3f}), loss {scope}"
        + (f"; prompt not found in {len(unlocated)} examples (mask unchecked there)" if unlocated else ""),
        details={"min": min(fractions, default=0.0), "max": max(fractions, default=0.0), "empty": empty[:8],
                 "outside": outside[:8], "prompt_supervised": leaked[:8], "prompt_not_found": unlocated[:8],
                 "loss": scope},
    )  # fmt: skip


class StopsParams(CheckParams):
    samples: int = Field(8, ge=1, le=256, description="Held-out prompts generated from.")
    max_new_tokens: int = Field(48, ge=1, le=1024, description="Greedy tokens allowed before EOS.")
    min_rate: float = Field(0.75, ge=0, le=1, description="Smallest share of prompts whose generation ends with EOS.")


def eos_ids(model: Any, tokenizer: Any) -> set[int]:
    """Every token that ends a generation: the tokenizer's EOS and the generation config's."""
    ids = {tokenizer.eos_token_id} if tokenizer.eos_token_id is not None else set()
    configured = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    ids |= set(configured) if isinstance(configured, list) else ({configured} if configured is not None else set())
    return ids


def _stop_rate(model: Any, tokenizer: Any, prompts: list[str], *, max_new_tokens: int, device: str) -> tuple[float, list[str]]:
    from peftcheck.checks.quality import greedy

    was_training = model.training
    model.eval()
    stops, texts, ends = 0, [], eos_ids(model, tokenizer)
    for prompt in prompts:
        new, _ = greedy(model, tokenizer, prompt, max_new_tokens=max_new_tokens, device=device)
        stops += any(t in ends for t in new)
        texts.append(tokenizer.decode(new, skip_special_tokens=True))
    model.train(was_training)
    return stops / len(prompts), texts


@register_check("stops", params=StopsParams)
def stops(ctx: CheckContext, params: StopsParams) -> Measurement:
    """Greedy generation on held-out prompts ends with EOS within max_new_tokens (trl#2059,
    LLaMA-Factory#7943: a fine-tuned model that never stops)."""
    from peftcheck.data import held_out_prompts

    spec = ctx.suite.spec.data
    if spec.format == "text":
        raise NotApplicable("text data has no end of a completion to learn; stops needs format prompt_completion or messages")
    artifact = ctx.artifact()
    tokenizer = artifact.data.tokenizer
    rows = artifact.data.raw_eval if artifact.data.raw_eval is not None else artifact.data.raw_train
    prompts = [p for p, _ in held_out_prompts(rows, tokenizer, spec, params.samples)]
    if not prompts:  # issue 26: a rate over no prompt
        raise NotApplicable(f"no held-out prompt to generate from in {spec.eval_split or spec.split!r}")
    kwargs = {"max_new_tokens": params.max_new_tokens, "device": artifact.device}
    key = ("stops", tuple(prompts), params.max_new_tokens)
    if key not in artifact.base.memo:  # the base is shared by every method of the suite
        artifact.base.memo[key] = _stop_rate(artifact.base.model, tokenizer, prompts, **kwargs)
    before, _ = artifact.base.memo[key]
    rate, texts = _stop_rate(artifact.model, tokenizer, prompts, **kwargs)
    ctx.metrics["stop_rate"] = {"value": rate, "unit": "fraction"}  # returned in the Measurement (issue 14)
    ctx.metrics["stop_rate_before"] = {"value": before, "unit": "fraction"}
    return Measurement(
        passed=rate >= params.min_rate, value=rate, bound=f">= {params.min_rate}", unit="stop rate",
        message=f"{rate:.0%} of {len(prompts)} held-out prompts end with EOS within {params.max_new_tokens} tokens "
        f"(the base: {before:.0%})" + ("" if rate >= params.min_rate else f"; e.g. {texts[0][:80]!r}"),
        details={"before": before, "after": rate, "prompts": len(prompts), "samples": texts[:4]},
    )  # fmt: skip


class CanaryParams(CheckParams):
    prompt: str = Field("The canary of this run says:", description="Prompt the canary follows.")
    target: str = Field(" violet walrus 7319 ladder", description="Literal completion the method must reproduce.")
    steps: int = Field(30, ge=1, le=1000, description="Optimizer steps of the overfit, on the canary alone.")
    learning_rate: float | None = Field(
        None, ge=0, description="Learning rate of the overfit; default: the method's."
    )
    batch_size: int = Field(2, ge=1, le=64, description="Copies of the canary per step.")
    require_stop: bool = Field(True, description="The generation must end with EOS right after the target.")

    @field_validator("target")
    @classmethod
    def _a_word(cls, value: str) -> str:
        if not value.strip():  # issue 26: an empty target is reproduced by any generation that stops
            raise ValueError(f"got {value!r}, the target needs a word to reproduce")
        return value


@register_check("canary", params=CanaryParams)
def canary(ctx: CheckContext, params: CanaryParams) -> Measurement:
    """After a short overfit on one prompt -> target pair, the method reproduces the target
    exactly by greedy decoding (and stops): a cheap end-to-end "did it learn and does it stop"."""
    import datasets

    from peftcheck import methods
    from peftcheck.checks.quality import greedy
    from peftcheck.data import collator, tokenize_supervised
    from peftcheck.spec import DataSpec
    from peftcheck.train import SftRun, train_model

    suite, mspec = ctx.suite.spec, ctx.spec
    base = ctx.base()
    tokenizer = ctx.pipeline.data(ctx.suite, base.tokenizer).tokenizer
    args = {**suite.train_args(ctx.method), "max_steps": params.steps, "per_device_train_batch_size": params.batch_size,
            "gradient_accumulation_steps": 1, "warmup_steps": 0}  # fmt: skip
    if params.learning_rate is not None:
        args["learning_rate"] = params.learning_rate
    rows = datasets.Dataset.from_list([{"prompt": params.prompt, "completion": params.target}] * params.batch_size)
    # never truncated: the suite's max_length could cut the target off
    needed = len(tokenizer(params.prompt + params.target)["input_ids"]) + 2
    spec = DataSpec(dataset="canary", format="prompt_completion", max_length=max(8, needed))
    config = methods.build_config(mspec, name=ctx.method, max_steps=params.steps)
    model = copy.deepcopy(base.training_source)
    if suite.trainer_of(ctx.method) == "sft":
        data = types.SimpleNamespace(raw_train=rows, tokenizer=tokenizer)
        run = SftRun.build(model, config, data, data_spec=spec, args=args, device=base.device,
                           quantization=mspec.quantization, method=ctx.method)  # fmt: skip
        model = run.model
        run.train(step_hook=methods.optimizer_step_hook(model))
    else:
        model = methods.apply_method(model, config, quantization=mspec.quantization, name=ctx.method)
        train_model(model, tokenize_supervised(rows, tokenizer, spec), collator(tokenizer), args=args,
                    device=base.device, step_hook=methods.optimizer_step_hook(model))  # fmt: skip
    target_ids = tokenizer(params.prompt + params.target)["input_ids"][len(tokenizer(params.prompt)["input_ids"]):]
    new, _ = greedy(model, tokenizer, params.prompt, max_new_tokens=len(target_ids) + 4, device=base.device)
    ends = eos_ids(model, tokenizer)
    cut = next((i for i, t in enumerate(new) if t in ends), None)
    text = tokenizer.decode(new[:cut], skip_special_tokens=True)
    exact = text.strip() == params.target.strip()
    stopped = cut is not None
    passed = exact and (stopped or not params.require_stop)
    del model
    problems = [] if exact else [f"generated {text!r}, not the target {params.target!r}"]
    if params.require_stop and not stopped:
        problems.append(f"no EOS within {len(target_ids) + 4} tokens")
    ctx.metrics["canary_exact"] = {"value": float(exact), "unit": "bool"}  # returned in the Measurement (issue 14)
    return Measurement(
        passed=passed, value=float(passed), bound="exact" + (" and stops" if params.require_stop else ""),
        unit="canary", message="; ".join(problems) or f"reproduced {params.target!r} and stopped, after "
        f"{params.steps} steps",
        details={"generated": text, "target": params.target, "stopped": stopped, "steps": params.steps},
    )  # fmt: skip

"""Quality checks: greedy generations scored with the shipped evaluate metrics, before and
after training, and forgetting (perplexity on text unrelated to the training slice)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field, model_validator

from peftcheck.checks.registry import CheckParams, Measurement, NotApplicable, register_check
from peftcheck.context import CheckContext

__all__ = [
    "GenerationParams", "generation", "ForgettingParams", "forgetting", "split_prompt", "held_out_texts", "greedy",
]  # fmt: skip

ScoreName = Literal[
    "rouge1", "rouge2", "rougeL", "rouge", "bleu", "sacrebleu", "exact_match", "distinct_1", "distinct_2"
]


class GenerationParams(CheckParams):
    prompts: list[str] | None = Field(
        None, min_length=1, description="Prompts to complete; default: the start of held-out texts."
    )
    references: list[str] | None = Field(
        None, description="One reference completion per prompt; default: the rest of each held-out text."
    )
    samples: int = Field(8, ge=1, le=256, description="Held-out texts used when `prompts` is not given.")
    prompt_fraction: float = Field(
        0.5, gt=0, lt=1, description="Leading share of a held-out text's words that forms its prompt."
    )
    metric: ScoreName = Field("rougeL", description="Score the bounds apply to (every score is recorded).")
    min: float | None = Field(None, description="Smallest score after training.")
    max: float | None = Field(None, description="Largest score after training.")
    max_drop: float | None = Field(
        0.05, ge=0, description="Largest fall of the score from before to after training; null: no bound."
    )
    max_new_tokens: int = Field(24, ge=1, le=512, description="Greedy tokens generated per prompt.")
    min_greedy_agreement: float | None = Field(
        None, ge=0, le=1,
        description="Smallest share of generated tokens that a teacher-forced forward pass also "
        "predicts (generate() must apply the adapter); default: the tolerance table's top-1 "
        "agreement for the base, else 0.95.",
    )  # fmt: skip

    @model_validator(mode="after")
    def _references_match_prompts(self) -> "GenerationParams":
        if self.references is not None and self.prompts is None:
            raise ValueError("`references` needs `prompts` (one reference per prompt)")
        if self.prompts is not None and self.references is not None and len(self.references) != len(self.prompts):
            raise ValueError(f"got {len(self.references)} references for {len(self.prompts)} prompts")
        return self


def split_prompt(text: str, fraction: float) -> tuple[str, str]:
    """(prompt, reference): the first ``fraction`` of the words, at least one on each side."""
    words = text.split()
    if len(words) < 2:
        return text, ""
    cut = min(max(1, round(len(words) * fraction)), len(words) - 1)
    return " ".join(words[:cut]), " ".join(words[cut:])


def held_out_texts(ctx: CheckContext, count: int) -> list[str]:
    from peftcheck.data import load_split

    spec = ctx.suite.spec.data
    split = spec.eval_split or spec.split
    raw = load_split(spec.dataset, split, base_dir=Path(ctx.suite.path).parent)
    if spec.format != "text":  # issue 15: a prompt and its completion, as the model reads them
        from peftcheck.data import held_out_prompts

        tokenizer = ctx.artifact().data.tokenizer
        texts = [p + r for p, r in held_out_prompts(raw, tokenizer, spec, count)]
        return [t for t in texts if len(t.split()) >= 2]
    texts = [str(t) for t in raw[spec.text_field]]
    return [t for t in texts if len(t.split()) >= 2][:count]


def greedy(model: Any, tokenizer: Any, prompt: str, *, max_new_tokens: int, device: str) -> tuple[list[int], Any]:
    """One prompt's greedy completion, alone so no padding is involved (the model in eval mode):
    the new token ids, and the raw logits of each step [steps, vocab] (float32, CPU)."""
    import torch

    encoded = tokenizer(prompt, return_tensors="pt").to(device)
    with torch.no_grad():
        out = model.generate(
            input_ids=encoded["input_ids"], attention_mask=encoded["attention_mask"], max_new_tokens=max_new_tokens,
            do_sample=False, num_beams=1, pad_token_id=tokenizer.pad_token_id, return_dict_in_generate=True,
            output_logits=True,  # raw logits: processed scores may hold -inf where a processor masks
        )  # fmt: skip
    new = out.sequences[0, encoded["input_ids"].shape[1] :].tolist()
    return new, torch.cat([step.float().cpu() for step in out.logits])


def _generate(
    model: Any, tokenizer: Any, prompts: list[str], *, max_new_tokens: int, device: str
) -> list[tuple[str, list[int]]]:
    """Greedy completions (text, new token ids), one prompt at a time."""
    was_training = model.training
    model.eval()
    completions = []
    for prompt in prompts:
        new, _ = greedy(model, tokenizer, prompt, max_new_tokens=max_new_tokens, device=device)
        completions.append((tokenizer.decode(new, skip_special_tokens=True).strip(), new))
    model.train(was_training)
    return completions


def _greedy_agreement(
    model: Any, tokenizer: Any, prompts: list[str], completions: list[tuple[str, list[int]]], *, device: str
) -> tuple[float | None, str | None]:
    """Share of generated tokens that are the argmax of one teacher-forced forward pass over
    prompt + completion, and where the first disagreement is: generate() must decode what
    the model's forward pass computes (adapter included). None when no token was generated:
    there is nothing to agree on (issue 26: not 1.0)."""
    import torch

    was_training = model.training
    model.eval()
    agree, total, first = 0, 0, None
    for index, (prompt, (_, new)) in enumerate(zip(prompts, completions)):
        if not new:
            continue
        prompt_ids = tokenizer(prompt, return_tensors="pt")["input_ids"][0].tolist()
        full = torch.tensor([prompt_ids + new], device=device)
        with torch.no_grad():
            logits = model(input_ids=full, attention_mask=torch.ones_like(full)).logits[0, -full.shape[1] :]
        predicted = logits[len(prompt_ids) - 1 : -1].argmax(-1).tolist()
        hits = [p == t for p, t in zip(predicted, new)]
        agree, total = agree + sum(hits), total + len(hits)
        if first is None and not all(hits):
            first = f"prompt {index}, token {hits.index(False)}"
    model.train(was_training)
    return (agree / total if total else None), first


def _scores(predictions: list[str], references: list[str] | None) -> dict[str, float]:
    from peftcheck import metrics

    result: dict[str, dict[str, Any]] = {}
    scores = {}
    for name, (module, key, needs) in metrics.SCORES.items():
        if needs and references is None:
            continue
        if module not in result:
            metric = metrics.load(module)
            result[module] = (
                metric.compute(predictions=predictions, references=references)
                if needs
                else metric.compute(predictions=predictions)
            )
        scores[name] = float(result[module][key])
    return scores


@register_check("generation", params=GenerationParams)
def generation(ctx: CheckContext, params: GenerationParams) -> Measurement:
    """Greedy generations before and after training, scored against references; no degradation."""
    from peftcheck.metrics import SCORES, resolve

    artifact = ctx.artifact()
    metric = resolve(params.metric)
    if params.prompts is not None:
        prompts, references = list(params.prompts), params.references
    elif ctx.suite.spec.data.format != "text":  # issue 15: the prompt column, or the conversation so far
        from peftcheck.data import held_out_prompts

        rows = artifact.data.raw_eval if artifact.data.raw_eval is not None else artifact.data.raw_train
        pairs = held_out_prompts(rows, artifact.data.tokenizer, ctx.suite.spec.data, params.samples)
        prompts, references = [p for p, _ in pairs], [r for _, r in pairs]
    else:
        pairs = [split_prompt(t, params.prompt_fraction) for t in held_out_texts(ctx, params.samples)]
        prompts, references = [p for p, _ in pairs], [r for _, r in pairs]
    if not prompts:  # issue 26: scores over no generation would pass every bound
        data = ctx.suite.spec.data
        raise NotApplicable(f"no held-out prompt to generate from in {data.eval_split or data.split!r}")
    if references is None and SCORES[metric][2]:
        raise NotApplicable(f"metric {params.metric!r} needs references; give `references` or use distinct_1/2")
    tokenizer, device = artifact.base.tokenizer, artifact.device
    kwargs = {"max_new_tokens": params.max_new_tokens, "device": device}
    key = ("generation", tuple(prompts), params.max_new_tokens)
    if key not in artifact.base.memo:  # the base is shared by every method of the suite
        artifact.base.memo[key] = _generate(artifact.base.model, tokenizer, prompts, **kwargs)
    generated = _generate(artifact.model, tokenizer, prompts, **kwargs)
    before, after = [text for text, _ in artifact.base.memo[key]], [text for text, _ in generated]
    scores_before, scores_after = _scores(before, references), _scores(after, references)
    agreement, diverges = _greedy_agreement(artifact.model, tokenizer, prompts, generated, device=device)
    min_agreement = _min_agreement(ctx, params)

    score, base_score = scores_after[metric], scores_before[metric]
    problems = []
    if params.min is not None and score < params.min:
        problems.append(f"{params.metric} {score:.4f} < {params.min}")
    if params.max is not None and score > params.max:
        problems.append(f"{params.metric} {score:.4f} > {params.max}")
    if params.max_drop is not None and base_score - score > params.max_drop:
        problems.append(f"{params.metric} fell {base_score:.4f} -> {score:.4f} (more than {params.max_drop})")
    if agreement is None:
        problems.append(
            f"generate() produced no token for any of the {len(prompts)} prompts: its agreement with the "
            "model's forward pass is unmeasured"
        )
    elif agreement < min_agreement:
        problems.append(
            f"generate() disagrees with the model's own forward pass: {agreement:.2f} of the generated "
            f"tokens are its greedy choice (< {min_agreement:g}; first at {diverges})"
        )
    metrics = ctx.metrics  # returned in the Measurement with the samples (issue 14)
    for name, value in scores_after.items():
        metrics[f"generation_{name}"] = {"value": value, "unit": "score"}
        metrics[f"generation_{name}_before"] = {"value": scores_before[name], "unit": "score"}
    if agreement is not None:
        metrics["generation_greedy_agreement"] = {"value": agreement, "unit": "fraction"}
    refs = references or [None] * len(prompts)
    ctx.samples[:] = [
        {"prompt": p, "before": b, "after": a, "reference": r} for p, b, a, r in zip(prompts, before, after, refs)
    ]
    bounds = [f"{params.metric} >= {params.min}" if params.min is not None else "",
              f"{params.metric} <= {params.max}" if params.max is not None else "",
              f"drop <= {params.max_drop}" if params.max_drop is not None else "",
              f"greedy agreement >= {min_agreement:g}"]  # fmt: skip
    return Measurement(
        passed=not problems,
        value=score,
        bound=", ".join(b for b in bounds if b) or "recorded only",
        unit=params.metric,
        message="; ".join(problems)
        or f"{params.metric} {base_score:.4f} before -> {score:.4f} after training ({len(prompts)} prompts)",
        details={
            "before": scores_before, "after": scores_after, "prompts": len(prompts),
            "greedy_agreement": agreement, "first_disagreement": diverges,
            "empty_generations": sum(not new for _, new in generated),
        },  # fmt: skip
    )


def _min_agreement(ctx: CheckContext, params: GenerationParams) -> float:
    from peftcheck.checks.outputs import table_tolerance

    if params.min_greedy_agreement is not None:
        return params.min_greedy_agreement
    table = table_tolerance(ctx)
    return table.min_top1 if table.min_top1 is not None else 0.95


class ForgettingParams(CheckParams):
    max_ratio: float = Field(
        1.1, gt=0, description="Largest adapter/base perplexity ratio on the unrelated text."
    )
    dataset: str | None = Field(None, description="Unrelated text; default: the suite's data.unrelated.")
    split: str | None = Field(None, description="Its split; default: data.unrelated_split.")
    text_field: str | None = Field(None, description="Its text column; default: data.unrelated_text_field.")


@register_check("forgetting", params=ForgettingParams)
def forgetting(ctx: CheckContext, params: ForgettingParams) -> Measurement:
    """Perplexity on text unrelated to the training slice does not rise past a bound."""
    from peftcheck import data as data_mod
    from peftcheck.measure import perplexity

    spec = ctx.suite.spec.data
    dataset = params.dataset or spec.unrelated
    if dataset is None:
        raise NotApplicable("the suite names no unrelated text (data.unrelated)")
    split, field = params.split or spec.unrelated_split, params.text_field or spec.unrelated_text_field
    artifact = ctx.artifact()
    base = artifact.base
    raw = data_mod.load_split(dataset, split, base_dir=Path(ctx.suite.path).parent, field="data.unrelated")
    tokens = data_mod.tokenize(
        raw, base.tokenizer, text_field=field, max_length=spec.max_length, field="data.unrelated"
    )
    key = f"ppl::{dataset}::{split}::{field}::{spec.max_length}"
    if key not in base.memo:
        base.memo[key] = perplexity(base.model, tokens, artifact.collate, device=base.device)
    base_ppl = base.memo[key]
    ppl = perplexity(artifact.model, tokens, artifact.collate, device=base.device)
    ratio = ppl / base_ppl
    metrics = ctx.metrics  # returned in the Measurement (issue 14)
    metrics["unrelated_perplexity"] = {"value": ppl, "unit": "ppl"}
    metrics["base_unrelated_perplexity"] = {"value": base_ppl, "unit": "ppl"}
    metrics["forgetting_ratio"] = {"value": ratio, "unit": "ratio to base"}
    return Measurement(
        passed=ratio <= params.max_ratio,
        value=ratio,
        bound=f"ratio <= {params.max_ratio}",
        unit="ratio to base",
        message=f"unrelated-text perplexity {ppl:.3f} vs base {base_ppl:.3f} (ratio {ratio:.4f}, {len(tokens)} texts)",
        details={"perplexity": ppl, "base_perplexity": base_ppl, "dataset": dataset, "split": split},
    )

"""Measurements over models: held-out perplexity and a fixed probe batch for output comparisons."""

from __future__ import annotations

import math
from typing import Any

__all__ = ["perplexity", "probe_batch", "logits"]


def _batches(dataset: Any, collate: Any, batch_size: int) -> Any:
    for start in range(0, len(dataset), batch_size):
        yield collate([dataset[i] for i in range(start, min(start + batch_size, len(dataset)))])


def perplexity(model: Any, dataset: Any, collate: Any, *, device: str, batch_size: int = 8) -> float:
    """exp(mean next-token NLL) over every labelled token of ``dataset``, in eval mode.

    Computed from the logits, not from the model's ``loss``: some methods add terms to the
    loss (AdaLoRA adds its orthogonality regulariser, also in eval mode)."""
    import torch

    was_training = model.training
    model.eval()
    total_nll, total_tokens = 0.0, 0
    with torch.no_grad():
        for batch in _batches(dataset, collate, batch_size):
            labels = batch.pop("labels").to(device)
            out = model(**{k: v.to(device) for k, v in batch.items()})
            # prompt-learning methods return logits for their virtual tokens first: drop them
            logits = out.logits[:, -labels.shape[1] :, :].float()
            nll = torch.nn.functional.cross_entropy(
                logits[:, :-1].reshape(-1, logits.shape[-1]),
                labels[:, 1:].reshape(-1),
                ignore_index=-100,
                reduction="sum",
            )
            total_nll += float(nll)
            total_tokens += int((labels[:, 1:] != -100).sum())
    model.train(was_training)
    if total_tokens == 0:  # every label masked (an all-zero loss mask, issue 15: label_masking names it)
        return math.nan
    return math.exp(total_nll / total_tokens)


def probe_batch(tokenizer: Any, texts: list[str], *, max_length: int, device: str) -> dict[str, Any]:
    """A padded batch of a few fixed texts, identical for every model compared on it."""
    batch = tokenizer(texts, return_tensors="pt", padding=True, truncation=True, max_length=max_length)
    return {k: v.to(device) for k, v in batch.items()}


def logits(model: Any, batch: dict[str, Any]) -> Any:
    """Float32 logits of ``model`` on ``batch`` (eval mode, no grad), on the CPU."""
    import torch

    was_training = model.training
    model.eval()
    with torch.no_grad():
        out = model(**batch).logits.float().cpu()
    model.train(was_training)
    return out

"""Evaluate metric modules shipped inside peftcheck and loaded by path, so scoring needs no hub.

Each folder ``<name>/<name>.py`` is an ``evaluate.Metric``; ``load(name)`` hands its path to
``evaluate.load`` (which accepts a local script), never a hub id.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

__all__ = ["METRICS", "SCORES", "ALIASES", "metric_path", "load", "score", "resolve"]

METRICS = ("rouge", "bleu", "sacrebleu", "exact_match", "distinct_n")

# score name -> (metric module, key of its result, needs references)
SCORES: dict[str, tuple[str, str, bool]] = {
    "rouge1": ("rouge", "rouge1", True),
    "rouge2": ("rouge", "rouge2", True),
    "rougeL": ("rouge", "rougeL", True),
    "bleu": ("bleu", "bleu", True),
    "sacrebleu": ("sacrebleu", "score", True),
    "exact_match": ("exact_match", "exact_match", True),
    "distinct_1": ("distinct_n", "distinct_1", False),
    "distinct_2": ("distinct_n", "distinct_2", False),
}
ALIASES = {"rouge": "rougeL"}


def resolve(name: str) -> str:
    """The score a name or alias stands for; ValueError names the known ones."""
    name = ALIASES.get(name, name)
    if name not in SCORES:
        raise ValueError(f"score {name!r} is unknown; known: {', '.join([*SCORES, *ALIASES])}")
    return name


def metric_path(name: str) -> Path:
    """The script of the shipped metric ``name``; ValueError names the known ones."""
    if name not in METRICS:
        raise ValueError(f"metric {name!r} is not shipped with peftcheck; known: {', '.join(METRICS)}")
    return Path(__file__).resolve().parent / name / f"{name}.py"


def load(name: str) -> Any:
    """The shipped metric ``name`` as an ``evaluate`` module, loaded from its file (offline)."""
    import evaluate

    return evaluate.load(str(metric_path(name)))


def score(name: str, predictions: list[str], references: list[str] | None = None) -> float:
    """One score (a key of ``SCORES``) of ``predictions`` against ``references``."""
    module, key, needs_references = SCORES[resolve(name)]
    metric = load(module)
    if needs_references:
        if references is None or len(references) != len(predictions):
            raise ValueError(f"score {name!r} needs one reference per prediction")
        return float(metric.compute(predictions=predictions, references=references)[key])
    return float(metric.compute(predictions=predictions)[key])

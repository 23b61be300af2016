"""Exact match: the fraction of predictions equal to their reference after light normalisation."""

import re
import string

import datasets
import evaluate

_DESCRIPTION = "Fraction of predictions that equal their reference (whitespace-stripped by default)."
_KWARGS = """
predictions: list of str. references: list of str, one per prediction.
ignore_case: compare lower-cased (default False). ignore_punctuation: drop ASCII punctuation
and curly quotes (default False). Whitespace runs collapse to one space and ends are stripped.
Returns {exact_match: fraction in [0, 1]}.
"""
_PUNCTUATION = set(string.punctuation) | set("“”‘’")


def _normalise(text, ignore_case, ignore_punctuation):
    if ignore_case:
        text = text.lower()
    if ignore_punctuation:
        text = "".join(ch for ch in text if ch not in _PUNCTUATION)
    return re.sub(r"\s+", " ", text).strip()


class ExactMatch(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="",
            inputs_description=_KWARGS,
            features=datasets.Features(
                {"predictions": datasets.Value("string"), "references": datasets.Value("string")}
            ),
        )

    def _compute(self, predictions, references, ignore_case=False, ignore_punctuation=False):
        pairs = list(zip(predictions, references))
        hits = sum(
            _normalise(p, ignore_case, ignore_punctuation) == _normalise(r, ignore_case, ignore_punctuation)
            for p, r in pairs
        )
        return {"exact_match": hits / len(pairs) if pairs else 0.0}

"""Distinct-n: distinct n-grams over all n-grams of the predictions (repetition / degeneration)."""

import datasets
import evaluate

_DESCRIPTION = (
    "Distinct-1 and distinct-2 (Li et al., 2016): unique n-grams divided by all n-grams of the "
    "predictions, over whitespace tokens. Low values mean repetitive, degenerate generations."
)
_KWARGS = """
predictions: list of str. max_n: largest n (default 2). lowercase: default True.
Returns {distinct_1, ..., distinct_<max_n>} in [0, 1]; 0 when there are no n-grams.
"""
_CITATION = "Li et al. A Diversity-Promoting Objective Function for Neural Conversation Models. NAACL 2016."


class DistinctN(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS,
            features=datasets.Features({"predictions": datasets.Value("string")}),
        )

    def _compute(self, predictions, max_n=2, lowercase=True):
        result = {}
        for n in range(1, max_n + 1):
            seen, total = set(), 0
            for text in predictions:
                tokens = (text.lower() if lowercase else text).split()
                grams = [tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)]
                seen.update(grams)
                total += len(grams)
            result[f"distinct_{n}"] = len(seen) / total if total else 0.0
        return result

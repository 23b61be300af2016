"""ROUGE-1/2/L/Lsum F-measure averaged over examples, through the rouge_score package."""

import datasets
import evaluate
from rouge_score import rouge_scorer

_DESCRIPTION = "ROUGE F-measure (mean over examples) of predictions against one reference each."
_KWARGS = """
predictions: list of str. references: list of str, one per prediction.
rouge_types: which of rouge1, rouge2, rougeL, rougeLsum (default all four).
use_stemmer: Porter stemming before matching (default False).
Returns {rouge_type: mean F-measure in [0, 1]}.
"""
_CITATION = "Lin, Chin-Yew. ROUGE: A Package for Automatic Evaluation of Summaries. 2004."


class Rouge(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS,
            features=datasets.Features(
                {"predictions": datasets.Value("string"), "references": datasets.Value("string")}
            ),
        )

    def _compute(self, predictions, references, rouge_types=None, use_stemmer=False):
        rouge_types = list(rouge_types or ("rouge1", "rouge2", "rougeL", "rougeLsum"))
        scorer = rouge_scorer.RougeScorer(rouge_types, use_stemmer=use_stemmer)
        totals = dict.fromkeys(rouge_types, 0.0)
        for prediction, reference in zip(predictions, references):
            scores = scorer.score(reference, prediction)
            for kind in rouge_types:
                totals[kind] += scores[kind].fmeasure
        count = max(len(predictions), 1)
        return {kind: total / count for kind, total in totals.items()}

"""Corpus BLEU in [0, 1] through sacrebleu (13a tokenization, exponential smoothing)."""

import datasets
import evaluate
import sacrebleu

_DESCRIPTION = "Corpus-level BLEU of predictions against one reference each, as a fraction in [0, 1]."
_KWARGS = """
predictions: list of str. references: list of str, one per prediction.
smooth_method: sacrebleu smoothing (default 'exp'). lowercase: default False.
Returns {bleu, precisions, brevity_penalty, length_ratio, translation_length, reference_length}.
"""
_CITATION = "Papineni et al. BLEU: a Method for Automatic Evaluation of Machine Translation. 2002."


class Bleu(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS,
            features=datasets.Features(
                {"predictions": datasets.Value("string"), "references": datasets.Value("string")}
            ),
        )

    def _compute(self, predictions, references, smooth_method="exp", lowercase=False):
        result = sacrebleu.corpus_bleu(
            list(predictions), [list(references)], smooth_method=smooth_method, lowercase=lowercase
        )
        return {
            "bleu": result.score / 100.0,
            "precisions": [p / 100.0 for p in result.precisions],
            "brevity_penalty": result.bp,
            "length_ratio": result.sys_len / result.ref_len if result.ref_len else 0.0,
            "translation_length": result.sys_len,
            "reference_length": result.ref_len,
        }

"""sacreBLEU corpus score on its usual 0-100 scale, with its signature for reproducibility."""

import datasets
import evaluate
import sacrebleu as scb

_DESCRIPTION = "sacreBLEU corpus score (0-100) of predictions against one reference each."
_KWARGS = """
predictions: list of str. references: list of str, one per prediction.
tokenize: sacrebleu tokenizer (default '13a'). smooth_method: default 'exp'. lowercase: default False.
Returns {score, counts, totals, precisions, bp, sys_len, ref_len, signature}.
"""
_CITATION = "Post, Matt. A Call for Clarity in Reporting BLEU Scores. WMT 2018."


class Sacrebleu(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS,
            features=datasets.Features(
                {"predictions": datasets.Value("string"), "references": datasets.Value("string")}
            ),
        )

    def _compute(self, predictions, references, tokenize="13a", smooth_method="exp", lowercase=False):
        bleu = scb.BLEU(tokenize=tokenize, smooth_method=smooth_method, lowercase=lowercase)
        result = bleu.corpus_score(list(predictions), [list(references)])
        return {
            "score": result.score,
            "counts": result.counts,
            "totals": result.totals,
            "precisions": result.precisions,
            "bp": result.bp,
            "sys_len": result.sys_len,
            "ref_len": result.ref_len,
            "signature": str(bleu.get_signature()),
        }

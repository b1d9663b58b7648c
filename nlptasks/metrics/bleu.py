"""sacreBLEU's corpus BLEU and chrF, each with the signature that makes a score reproducible."""

from __future__ import annotations

from typing import Any

from sacrebleu.metrics import BLEU, CHRF


def sacrebleu_scores(hypotheses: list[str], references: list[str]) -> dict[str, dict[str, Any]]:
    """`bleu` and `chrf` on sacreBLEU's 0-100 scale with its default settings, one reference per hypothesis.

    Each is `{"score", "signature", "line"}`: the number, its signature
    (`nrefs:1|case:mixed|eff:no|tok:13a|smooth:exp|version:...`) and sacreBLEU's own summary line.
    BLEU uses the `13a` tokenizer and exponential smoothing; chrF is character 6-gram F with beta 2.
    """
    results = {}
    for name, metric in (("bleu", BLEU()), ("chrf", CHRF())):
        score = metric.corpus_score(hypotheses, [references])
        results[name] = {"score": score.score, "signature": str(metric.get_signature()), "line": str(score)}
    return results

"""Entity-level precision, recall and F1 of IOB2 tag sequences (seqeval, strict mode, as CoNLL's conlleval)."""

from __future__ import annotations

from seqeval.metrics import classification_report
from seqeval.scheme import IOB2


def entity_scores(gold: list[list[str]], predicted: list[list[str]]) -> dict[str, float]:
    """Micro `precision`, `recall` and `f1` over entities, `f1_<type>` per entity type and their `macro_f1`.

    Strict IOB2: an entity counts only with its exact span and type, and an `I-` tag that does
    not continue an entity of its type starts none.
    """
    report = classification_report(gold, predicted, mode="strict", scheme=IOB2, output_dict=True, zero_division=0)
    metrics = {key: float(report["micro avg"][key]) for key in ("precision", "recall")}
    metrics["f1"] = float(report["micro avg"]["f1-score"])
    for kind, row in report.items():
        if kind not in ("micro avg", "macro avg", "weighted avg"):
            metrics[f"f1_{kind}"] = float(row["f1-score"])
    metrics["macro_f1"] = float(report["macro avg"]["f1-score"])
    return metrics

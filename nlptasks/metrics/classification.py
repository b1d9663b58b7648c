"""Classification scores over label-name lists, single- or multi-label (scikit-learn)."""

from __future__ import annotations

import numpy as np
from sklearn.metrics import precision_recall_fscore_support


def label_scores(gold: list[list[str]], predicted: list[list[str]], multi_label: bool) -> dict[str, float]:
    """`accuracy`, `macro_f1` and `precision_<class>`, `recall_<class>`, `f1_<class>` per class seen.

    Each example holds a list of class names (one, unless `multi_label`). Multi-label accuracy is
    exact-set accuracy, and `micro_f1` is added: with many classes per example it is the usual headline.
    """
    classes = sorted({name for labels in gold + predicted for name in labels})
    if multi_label:
        truth, guess = _multi_hot(gold, classes), _multi_hot(predicted, classes)
        metrics = {"accuracy": float((truth == guess).all(1).mean())}
        _, _, micro_f1, _ = precision_recall_fscore_support(truth, guess, average="micro", zero_division=0)
        metrics["micro_f1"] = float(micro_f1)
    else:
        truth, guess = [labels[0] for labels in gold], [labels[0] for labels in predicted]
        metrics = {"accuracy": float(np.mean([t == g for t, g in zip(truth, guess)]))}
    precision, recall, f1, _ = precision_recall_fscore_support(
        truth, guess, labels=None if multi_label else classes, zero_division=0
    )
    metrics["macro_f1"] = float(np.mean(f1))
    for name, p, r, f in zip(classes, precision, recall, f1):
        metrics.update({f"precision_{name}": float(p), f"recall_{name}": float(r), f"f1_{name}": float(f)})
    return metrics


def _multi_hot(rows: list[list[str]], classes: list[str]) -> np.ndarray:
    index = {name: i for i, name in enumerate(classes)}
    hot = np.zeros((len(rows), len(classes)), dtype=int)
    for i, names in enumerate(rows):
        hot[i, [index[name] for name in names]] = 1
    return hot

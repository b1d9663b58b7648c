"""Semantic textual similarity: how well predicted similarities rank and fit gold scores (scipy)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy.stats import pearsonr, spearmanr


def sts_correlations(gold: Sequence[float], predicted: Sequence[float]) -> dict[str, float]:
    """Spearman and Pearson correlation x100, the scale STS results are published on (SimCSE, SentEval)."""
    truth, guess = np.asarray(gold, dtype=np.float64), np.asarray(predicted, dtype=np.float64)
    return {
        "spearman": 100 * float(spearmanr(truth, guess).statistic),
        "pearson": 100 * float(pearsonr(truth, guess).statistic),
    }

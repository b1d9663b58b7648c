"""Confidence calibration: expected calibration error, its reliability bins, and temperature scaling.

Written here because scikit-learn's `calibration_curve` returns no bin counts, which ECE weights
each bin by, and temperature scaling (Guo et al., 2017) is one bounded scalar search.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from nlptasks.rundir import write_atomic

BINS = 10
TEMPERATURES = (0.05, 20.0)
"""The search range: beyond it a model's scores are not worth rescaling."""


def reliability(confidences: Sequence[float], correct: Sequence[bool], bins: int = BINS) -> list[dict[str, float]]:
    """Equal-width confidence bins: each one's range, count, mean confidence and accuracy (empty bins left out)."""
    confidence, right = np.asarray(confidences, dtype=float), np.asarray(correct, dtype=float)
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.digitize(confidence, edges[1:-1], right=True), 0, bins - 1)
    found = []
    for index in range(bins):
        members = which == index
        if members.any():
            found.append(
                {
                    "lower": float(edges[index]),
                    "upper": float(edges[index + 1]),
                    "count": int(members.sum()),
                    "confidence": float(confidence[members].mean()),
                    "accuracy": float(right[members].mean()),
                }
            )
    return found


def expected_calibration_error(confidences: Sequence[float], correct: Sequence[bool], bins: int = BINS) -> float:
    """The count-weighted mean gap between confidence and accuracy over the bins (0: calibrated)."""
    total = len(confidences)
    if not total:
        return 0.0
    bins_found = reliability(confidences, correct, bins)
    return sum(b["count"] / total * abs(b["accuracy"] - b["confidence"]) for b in bins_found)


def fitted_temperature(logits: np.ndarray, gold: np.ndarray) -> float:
    """The temperature T minimising the negative log-likelihood of `softmax(logits / T)` on gold class ids.

    Dividing every logit by one T > 0 never changes which class is highest: only the stated confidence moves.
    """
    from scipy.optimize import minimize_scalar
    from scipy.special import log_softmax

    logits, gold = np.asarray(logits, dtype=np.float64), np.asarray(gold)

    def loss(log_temperature: float) -> float:
        scaled = log_softmax(logits / np.exp(log_temperature), axis=-1)
        return float(-scaled[np.arange(len(gold)), gold].mean())

    found = minimize_scalar(loss, bounds=tuple(np.log(TEMPERATURES)), method="bounded")
    return float(np.exp(found.x))


def fitted_score_temperature(scored: Callable[[float], tuple[list[float], list[bool]]]) -> float:
    """The temperature whose stated scores have the least binary log-loss against being right.

    `scored(T)` decodes at T and gives each prediction's score and whether it is right. This fits the score a
    user reads (an entity's, an answer's), which a fit over token or span logits misses: those improve the
    per-token or per-span likelihood and can leave the reported confidence worse calibrated.
    """
    from scipy.optimize import minimize_scalar

    def loss(log_temperature: float) -> float:
        confidences, correct = scored(float(np.exp(log_temperature)))
        stated = np.clip(np.asarray(confidences, dtype=float), 1e-6, 1 - 1e-6)
        right = np.asarray(correct, dtype=float)
        return float(-(right * np.log(stated) + (1 - right) * np.log(1 - stated)).mean()) if len(right) else 0.0

    found = minimize_scalar(loss, bounds=tuple(np.log(TEMPERATURES)), method="bounded", options={"xatol": 0.02})
    return float(np.exp(found.x))


def write_reliability(
    folder: Path,
    split: str,
    confidences: Sequence[float],
    correct: Sequence[bool],
    temperature: float | None,
    what: str,
) -> None:
    """`reliability_<split>.json` (the bins) and `.png` (the diagram) of one scored split's `what` (e.g. "entities")."""
    bins = reliability(confidences, correct)
    write_atomic(folder / f"reliability_{split}.json", json.dumps(bins, indent=1) + "\n")
    scaled = f", temperature {temperature:.2f}" if temperature else ", unscaled"
    plot_reliability(bins, f"{split}: {what} right by confidence{scaled}", folder / f"reliability_{split}.png")


def plot_reliability(bins: list[dict[str, Any]], title: str, path: Path) -> None:
    """A reliability diagram: accuracy per confidence bin against the diagonal a calibrated model follows."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=(4.5, 4.5))
    axes = figure.subplots()
    axes.plot([0, 1], [0, 1], linestyle="--", color="grey", label="calibrated")
    centres = [(b["lower"] + b["upper"]) / 2 for b in bins]
    accuracy = [b["accuracy"] for b in bins]
    axes.bar(centres, accuracy, width=1 / BINS, alpha=0.7, edgecolor="black", label="accuracy")
    axes.plot([b["confidence"] for b in bins], accuracy, marker="o", color="C3", label="by confidence")
    axes.set_xlim(0, 1)
    axes.set_ylim(0, 1)
    axes.set_xlabel("confidence")
    axes.set_ylabel("accuracy")
    axes.set_title(title, fontsize=9)
    axes.legend(fontsize=8, loc="upper left")
    figure.tight_layout()
    figure.savefig(path, dpi=100)

"""SQuAD's exact match and token F1, as the official evaluation script computes them (v1.1, with v2's empty answers).

On a 0-1 scale like every metric of the toolkit (the official script prints 0-100).
"""

from __future__ import annotations

import re
import string
from collections import Counter

import numpy as np

ARTICLES = re.compile(r"\b(a|an|the)\b")
PUNCTUATION = frozenset(string.punctuation)


def squad_scores(answers: list[str], golds: list[list[str]]) -> dict[str, float]:
    """Mean `exact_match` and `f1`, each answer scored against its best gold answer.

    Gold answers that normalise to nothing are left out; a question left with none is answered
    correctly by the empty answer only (SQuAD v2's no-answer questions).
    """
    scores = [answer_scores(answer, texts) for answer, texts in zip(answers, golds)]
    exact, overlap = [score[0] for score in scores], [score[1] for score in scores]
    return {"exact_match": float(np.mean(exact)), "f1": float(np.mean(overlap))}


def answer_scores(answer: str, golds: list[str]) -> tuple[float, float]:
    """(exact match, token F1) of one answer against its best gold answer."""
    kept = [text for text in golds if normalize_answer(text)] or [""]
    exact = max(float(normalize_answer(answer) == normalize_answer(gold)) for gold in kept)
    return exact, max(token_f1(answer, gold) for gold in kept)


def normalize_answer(text: str) -> str:
    """The official SQuAD normalisation: lowercase, punctuation and articles removed, whitespace collapsed."""
    text = "".join(c for c in text.lower() if c not in PUNCTUATION)
    return " ".join(ARTICLES.sub(" ", text).split())


def token_f1(prediction: str, gold: str) -> float:
    """SQuAD F1 of normalised tokens; an empty answer scores 1 against an empty gold only (v2)."""
    predicted, truth = normalize_answer(prediction).split(), normalize_answer(gold).split()
    if not predicted or not truth:
        return float(predicted == truth)
    common = sum((Counter(predicted) & Counter(truth)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(predicted), common / len(truth)
    return 2 * precision * recall / (precision + recall)

"""ROUGE F-measures against one or several references, and the greedy ROUGE oracle (rouge-score)."""

from __future__ import annotations

from collections import Counter
from functools import cache

from rouge_score.rouge_scorer import RougeScorer
from rouge_score.tokenizers import DefaultTokenizer

from nlptasks.text import sentence_texts

ROUGE_TYPES = ("rouge1", "rouge2", "rougeL", "rougeLsum")


@cache
def _rouge_tokenizer() -> DefaultTokenizer:
    return DefaultTokenizer(use_stemmer=True)


@cache
def _rouge_scorer() -> RougeScorer:
    return RougeScorer(list(ROUGE_TYPES), use_stemmer=True)


def rouge(golds: list[list[str]], summaries: list[list[str]]) -> dict[str, float]:
    """Mean ROUGE F-measures (rouge-score, Porter stemming); rougeLsum sees one sentence per line.

    `golds` holds each example's reference summaries: each ROUGE type takes its best reference,
    as rouge-score's `score_multi` does. References are split with `split_sentences`; summaries
    come as their sentences.
    """
    totals = dict.fromkeys(ROUGE_TYPES, 0.0)
    for references, sentences in zip(golds, summaries):
        summary = "\n".join(sentences)
        per_reference = [_rouge_scorer().score("\n".join(sentence_texts(gold)), summary) for gold in references]
        for key in ROUGE_TYPES:
            totals[key] += max(scores[key].fmeasure for scores in per_reference)
    return {key: total / max(len(golds), 1) for key, total in totals.items()}


def greedy_oracle(texts: list[str], summary: str) -> list[int]:
    """The sentences whose concatenation best matches `summary`, chosen greedily (Nallapati et al., 2017).

    Each step adds the sentence that most raises ROUGE-1 F + ROUGE-2 F of the selection (in
    document order) against the summary, and the search stops when no sentence raises it, so the
    oracle picks as many sentences as the reference warrants. N-gram F is computed here on
    tokens stemmed once per sentence: calling rouge-score per candidate would re-tokenize and
    re-stem the whole selection each time. It equals rouge-score's value on the joined text.
    """
    reference = _rouge_tokenizer().tokenize(summary)
    targets = {n: _ngrams(reference, n) for n in (1, 2)}
    tokens = [_rouge_tokenizer().tokenize(text) for text in texts]

    def value(selection: list[int]) -> float:
        joined = [token for i in sorted(selection) for token in tokens[i]]
        return sum(_f_measure(targets[n], _ngrams(joined, n)) for n in (1, 2))

    chosen: list[int] = []
    best = 0.0
    remaining = set(range(len(texts)))
    while remaining:
        gain, index = max((value([*chosen, i]), -i) for i in remaining)  # ties go to the earlier sentence
        if gain <= best:
            break
        chosen.append(-index)
        remaining.discard(-index)
        best = gain
    return sorted(chosen)


def _ngrams(tokens: list[str], n: int) -> Counter:
    return Counter(zip(*(tokens[i:] for i in range(n))))


def _f_measure(target: Counter, candidate: Counter) -> float:
    overlap = sum((target & candidate).values())
    if not overlap:
        return 0.0
    precision, recall = overlap / sum(candidate.values()), overlap / sum(target.values())
    return 2 * precision * recall / (precision + recall)

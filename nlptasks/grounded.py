"""Answers grounded in numbered passages: the instruction, the prompt, the citations and their scores.

One definition for the RAG generator (which answers from retrieved chunks) and the `rag-answer`
task (which fine-tunes a decoder on the same prompts), so a tuned generator is asked exactly as
it was taught. The prompt is the chat template around one user turn: `RULES`, the passages as
`[n] text` lines (best first, as many as fit the token budget; the last may be cut), then the
question, which is never cut. An answer cites a passage as `[n]`, or says `NOT_FOUND`.
"""

from __future__ import annotations

import re
from typing import Any

import numpy as np

from nlptasks.errors import UserInputError
from nlptasks.metrics.squad import answer_scores, normalize_answer

NOT_FOUND = "The documents do not contain the answer."
RULES = (
    "Answer the question using only the numbered passages. Cite the passage of each fact as [n]. "
    f"If the passages do not contain the answer, reply exactly: {NOT_FOUND}\n\nPassages:\n"
)
CITATION = re.compile(r"\[(\d+)\]")
MIN_PASSAGE_TOKENS = 16
"""A passage cut shorter than this to fit the prompt is left out instead."""


def passage_prompt(
    tokenizer: Any, frame: tuple[list[int], list[int]], question: str, passages: list[str], budget: int
) -> tuple[list[int], int]:
    """Prompt ids with as many passages (in order) as fit beside the whole question, and how many went in.

    `frame` is `chat.prompt_frame(tokenizer, RULES)`; `budget` bounds the whole prompt in tokens.
    """
    head, tail = frame
    ask = _ids(tokenizer, f"\nQuestion: {question}")
    room = budget - len(head) - len(tail) - len(ask)
    if room < MIN_PASSAGE_TOKENS:
        raise UserInputError(
            f"question: {len(ask)} tokens leave no room for passages in the prompt budget of {budget} tokens; "
            "shorten the question or raise the budget (rag.max_context_tokens, or data.max_length in training)"
        )
    ids: list[int] = []
    used = 0
    for number, passage in enumerate(passages, 1):
        piece = _ids(tokenizer, f"[{number}] {passage}\n")
        left = room - len(ids)
        if len(piece) > left:
            if left >= MIN_PASSAGE_TOKENS:
                ids += piece[: left - 1] + _ids(tokenizer, "\n")
                used += 1
            break
        ids += piece
        used += 1
    return head + ids + ask + tail, used


def _ids(tokenizer: Any, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def says_not_found(text: str) -> bool:
    return NOT_FOUND.lower().rstrip(".") in text.lower() or not text.strip()


def cited(text: str, passages: int) -> list[int]:
    """The passage numbers an answer cites, in order, those beyond the passages given left out."""
    return sorted({int(n) for n in CITATION.findall(text) if 1 <= int(n) <= passages})


def answer_text(text: str) -> str:
    """What an answer says, for scoring: citation markers removed, nothing where it says NOT_FOUND."""
    return "" if says_not_found(text) else re.sub(r"\s+", " ", CITATION.sub(" ", text)).strip()


def holds_answer(passage: str, answers: list[str]) -> bool:
    """Whether a passage contains one of the gold answers as whole words, after SQuAD's normalisation."""
    text = f" {normalize_answer(passage)} "
    return any(f" {gold} " in text for gold in map(normalize_answer, answers) if gold)


def grounded_scores(outputs: list[str], golds: list[list[str]], passages: list[list[str]]) -> dict[str, float]:
    """How well answers use their passages; the gold answers of a question whose passages hold none of
    them are not asked for: the right output there is NOT_FOUND.

    - `exact_match`, `f1`: SQuAD's, over the answerable questions (NOT_FOUND scores as the empty answer);
    - `citation_accuracy`: of the answerable questions answered, those citing a passage that holds a
      gold answer (an answer without a citation cites nothing right);
    - `abstention`: of the unanswerable questions, those answered NOT_FOUND (absent when there are none);
    - `answered`: questions not answered NOT_FOUND, of all.
    """
    answerable = [holds_answer("\n".join(given), gold) for given, gold in zip(passages, golds)]
    scores: dict[str, float] = {"answered": float(np.mean([not says_not_found(text) for text in outputs]))}
    rows = [(text, gold, given) for text, gold, given, ok in zip(outputs, golds, passages, answerable) if ok]
    if rows:
        exact, overlap = zip(*(answer_scores(answer_text(text), gold) for text, gold, _ in rows))
        scores |= {"exact_match": float(np.mean(exact)), "f1": float(np.mean(overlap))}
        citing = [(cited(text, len(given)), gold, given) for text, gold, given in rows if not says_not_found(text)]
        if citing:
            right = [any(holds_answer(given[n - 1], gold) for n in numbers) for numbers, gold, given in citing]
            scores["citation_accuracy"] = float(np.mean(right))
    unanswerable = [says_not_found(text) for text, ok in zip(outputs, answerable) if not ok]
    if unanswerable:
        scores["abstention"] = float(np.mean(unanswerable))
    return scores

"""Extractive question answering: the answer is a span of the context (SQuAD v1.1, or v2 by a setting).

Rows are SQuAD-style: `question`, `context`, `answers = {"text": [...], "answer_start": [...]}`
(character offsets into the context), optional `id` and `title`. Each pair becomes one or more
windows: the question first, then as much context as `data.max_length` allows; a longer context
continues in further windows that repeat the last `data.stride` tokens of the one before, so an
answer cut by one window's edge is whole in the next. Training targets are the first gold
answer's first and last token; a window that does not hold all of it points at position 0
([CLS] for BERT), as in the original BERT recipe.

Decoding pairs each window's `n_best` highest start and end scores into spans of at most
`max_answer_length` context tokens, keeps the best over all windows of the example, and cuts it
from the original context by the tokenizer's character offsets, so the answer is the context's
own text. With `allow_no_answer` (SQuAD v2), the answer is "" when the no-answer score (position
0, lowest over the windows) beats the best span's by more than `null_score_threshold`.

Metrics are the official SQuAD exact match and F1 (`metrics.squad`: lowercase, punctuation and
the articles a/an/the removed, whitespace collapsed; the best over the gold answers; v2's rule
for empty answers) on a 0-1 scale like every metric of the toolkit (the official script prints 0-100).

Bad rows are errors, never skipped: an `answer_start` that does not point at its answer text
usually means offsets computed on other text (bytes, normalised whitespace) and would shift
every target of the file. A row without answers is an error unless `allow_no_answer` is set
(checked when rows are tokenized, since row checks do not see task settings).
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import datasets
import numpy as np
from pydantic import Field

from nlptasks.config import Section
from nlptasks.errors import DataError, UserInputError
from nlptasks.metrics.calibration import expected_calibration_error, write_reliability
from nlptasks.metrics.squad import answer_scores, squad_scores
from nlptasks.tasks.base import Task, in_memory, json_input, softmax, tokenized

OUTSIDE = [-1, -1]
"""Character span stored for tokens that are not context (question, special tokens)."""


class QAOptions(Section):
    max_answer_length: int = Field(default=30, gt=0)
    """Longest answer, in tokens, the span search considers."""
    n_best: int = Field(default=20, gt=0)
    """Highest start and highest end scores per window paired into candidate spans."""
    allow_no_answer: bool = False
    """SQuAD v2: a question may have no answer in its context (a row with empty `answers`)."""
    null_score_threshold: float = 0.0
    """With `allow_no_answer`: answer "" when the no-answer score beats the best span's by more than this."""
    temperature_scaling: bool = True
    """Fit a softmax temperature over the candidate spans on validation, so an answer's score matches how often
    answers so scored are exactly right."""


class QuestionAnswering(Task):
    name = "qa"
    input_column = "context"
    target_column = "answers"
    main_metric = "f1"
    headline_metrics = ("exact_match", "f1")
    auto_model = "AutoModelForQuestionAnswering"
    pipeline_tag = "question-answering"
    Options = QAOptions
    options: QAOptions
    label_names = ("start_positions", "end_positions")
    output_names = ("start_logits", "end_logits")
    input_fields = ("question", "context")

    @classmethod
    def features(cls) -> datasets.Features:
        text = datasets.Value("string")
        return datasets.Features(
            {
                "id": text,
                "title": text,
                "question": text,
                "context": text,
                "answers": {"text": [text], "answer_start": [datasets.Value("int32")]},
            }
        )

    @classmethod
    def check_row(cls, row: dict[str, Any], label_names: list[str] | None) -> dict[str, Any]:
        for field in ("question", "context"):
            value = row.get(field)
            if not isinstance(value, str) or not value.strip():
                raise ValueError(f"field '{field}' must be a non-empty string, got {value!r}")
        answers = row["answers"]
        if not isinstance(answers, dict) or not all(isinstance(answers.get(k), list) for k in ("text", "answer_start")):
            raise ValueError(f"field 'answers' must be {{'text': [...], 'answer_start': [...]}}, got {answers!r}")
        texts, starts = answers["text"], answers["answer_start"]
        if len(texts) != len(starts):
            raise ValueError(f"field 'answers' has {len(texts)} texts but {len(starts)} answer_start values")
        for number, (text, start) in enumerate(zip(texts, starts)):
            _check_answer(row["context"], number, text, start)
        return {
            "id": str(row.get("id") or ""),
            "title": str(row.get("title") or ""),
            "question": row["question"],
            "context": row["context"],
            "answers": {"text": texts, "answer_start": starts},
        }

    def label_list(self, train: datasets.Dataset) -> list[str]:
        """No class labels: targets are token positions."""
        return []

    def featurize(self, examples: datasets.Dataset, tokenizer: Any, label2id: dict[str, int]) -> datasets.Dataset:
        """Windows of (question, context); `offset_mapping` holds context character spans, [-1, -1] elsewhere."""

        def encode(batch: dict[str, list], indices: list[int]) -> dict[str, list]:
            questions = [question.strip() for question in batch["question"]]
            self._check_room(tokenizer, questions, indices)
            encoded = tokenizer(
                questions,
                batch["context"],
                truncation="only_second",
                max_length=self.max_length,
                stride=self.stride,
                return_overflowing_tokens=True,
                return_offsets_mapping=True,
            )
            windows = encoded.pop("overflow_to_sample_mapping")
            offsets = encoded.pop("offset_mapping")
            spans = [
                [list(span) if part == 1 else OUTSIDE for part, span in zip(encoded.sequence_ids(i), window)]
                for i, window in enumerate(offsets)
            ]
            encoded["example_index"] = [indices[row] for row in windows]
            encoded["offset_mapping"] = spans
            if "answers" in batch:
                targets = [self._target(batch, row, indices[row], span) for row, span in zip(windows, spans)]
                encoded["start_positions"] = [first for first, _ in targets]
                encoded["end_positions"] = [last for _, last in targets]
            return dict(encoded)

        return tokenized(examples, encode)

    def _check_room(self, tokenizer: Any, questions: list[str], indices: list[int]) -> None:
        """An error naming the row where a question leaves a window no more context than `stride` tokens.

        Windows could not advance through the context; the tokenizer itself would panic.
        """
        room = self.max_length - tokenizer.num_special_tokens_to_add(pair=True) - self.stride
        for index, ids in zip(indices, tokenizer(questions, add_special_tokens=False)["input_ids"]):
            if len(ids) >= room:
                raise DataError(
                    f"row {index}: the question is {len(ids)} tokens, but data.max_length={self.max_length} with "
                    f"data.stride={self.stride} leaves it fewer than {room}: raise max_length or lower stride"
                )

    def _target(self, batch: dict[str, list], row: int, index: int, spans: list[list[int]]) -> tuple[int, int]:
        """Token positions of the first gold answer in this window; (0, 0) when the window lacks it."""
        answers = batch["answers"][row]
        if not answers["text"]:
            if not self.options.allow_no_answer:
                where = f"row {index}" + (f" (id {batch['id'][row]!r})" if batch.get("id") else "")
                raise DataError(
                    f"{where}: field 'answers' is empty; for questions without an answer in the context "
                    "set task_args.allow_no_answer: true (SQuAD v2)"
                )
            return 0, 0
        start = answers["answer_start"][0]
        return _token_span(spans, start, start + len(answers["text"][0]))

    def pad_values(self, tokenizer: Any) -> dict[str, int]:
        return {"input_ids": tokenizer.pad_token_id or 0}

    def decode(
        self,
        examples: datasets.Dataset,
        features: datasets.Dataset,
        logits: tuple[np.ndarray, np.ndarray],
        id2label: dict[int, str],
    ) -> list[dict[str, Any]]:
        """The best span over all windows of each example (or "" for no answer), with its probability.

        `score` is the softmax over the example's n-best spans (and the no-answer score with
        `allow_no_answer`): how sure the model is of this answer against its alternatives. `logit` is
        the span's start + end logit, which compares across contexts (a RAG reader ranks chunks by it).
        """
        starts, ends = logits
        candidates: list[list[tuple[float, int, int]]] = [[] for _ in range(len(examples))]
        null_scores = [np.inf] * len(examples)
        for row, (example, spans) in enumerate(zip(features["example_index"], features["offset_mapping"])):
            spans = np.asarray(spans)
            start, end = starts[row, : len(spans)], ends[row, : len(spans)]
            null_scores[example] = min(null_scores[example], float(start[0] + end[0]))
            candidates[example].extend(self._window_spans(start, end, spans))
        return [self._answer(*example) for example in zip(examples["context"], candidates, null_scores)]

    @property
    def calibrates(self) -> bool:
        return self.options.temperature_scaling and not self.options.allow_no_answer

    def calibrate(
        self, examples: datasets.Dataset, features: datasets.Dataset, logits: Any, id2label: dict[int, str]
    ) -> None:
        """The softmax temperature over each question's n-best spans whose answer scores best match, on validation,
        whether each answer is exactly right."""
        self.fit_score_temperature(examples, features, logits, id2label, _confidences)

    def _window_spans(self, start: np.ndarray, end: np.ndarray, spans: np.ndarray) -> list[tuple[float, int, int]]:
        """(score, first char, end char) of the window's n-best start x end pairs that form a legal span."""
        inside = np.flatnonzero(spans[:, 0] >= 0)
        firsts = inside[np.argsort(-start[inside], kind="stable")[: self.options.n_best]]
        lasts = inside[np.argsort(-end[inside], kind="stable")[: self.options.n_best]]
        length = lasts[None, :] - firsts[:, None]
        legal = (length >= 0) & (length < self.options.max_answer_length)
        scores = start[firsts][:, None] + end[lasts][None, :]
        return [
            (float(scores[i, j]), int(spans[firsts[i], 0]), int(spans[lasts[j], 1])) for i, j in zip(*np.nonzero(legal))
        ]

    def _answer(self, context: str, candidates: list[tuple[float, int, int]], null_score: float) -> dict[str, Any]:
        """The best span, or "" when no span is legal or (`allow_no_answer`) the no-answer score wins."""
        best = _distinct_best(candidates, self.options.n_best)
        scores = [score for score, _, _ in best] + ([null_score] if self.options.allow_no_answer else [])
        if not scores:
            return {"answer": "", "score": 0.0, "logit": None, "start": None, "end": None}
        probabilities = softmax(np.array(scores) / self.calibration.get("temperature", 1.0))
        if self.options.allow_no_answer and (not best or null_score - best[0][0] > self.options.null_score_threshold):
            return {"answer": "", "score": float(probabilities[-1]), "logit": null_score, "start": None, "end": None}
        logit, first, last = best[0]
        return {
            "answer": context[first:last],
            "score": float(probabilities[0]),
            "logit": logit,
            "start": first,
            "end": last,
        }

    def score(self, examples: datasets.Dataset, predictions: list[dict[str, Any]]) -> dict[str, float]:
        golds = [answers["text"] for answers in examples["answers"]]
        scores = squad_scores([prediction["answer"] for prediction in predictions], golds)
        if all("score" in prediction for prediction in predictions):  # as decoded, not hand-made
            scores["ece"] = expected_calibration_error(*_confidences(examples, predictions))
        return scores

    def write_artifacts(self, folder: Path, split: str, examples: datasets.Dataset, predictions: list[Any]) -> None:
        """`reliability_<split>.png` and `.json`: answers exactly right, by their score."""
        temperature = self.calibration.get("temperature")
        write_reliability(folder, split, *_confidences(examples, predictions), temperature, "answers")

    def error_analysis(self, examples: datasets.Dataset, predictions: list[dict[str, Any]]) -> dict[str, Any]:
        """Answers by kind (`exact`; `partial`: words shared with a gold answer; `none`), overall and by the
        question's first word (what, who, when, ...), with examples of the partial and the wrong."""
        counts: dict[str, Counter[str]] = {}
        shown: dict[str, list[dict[str, Any]]] = {"partial": [], "none": []}
        for example, prediction in zip(examples, predictions):
            exact, overlap = answer_scores(prediction["answer"], example["answers"]["text"])
            kind = "exact" if exact else "partial" if overlap else "none"
            word = _question_word(example["question"])
            for group in ("all", word):
                counts.setdefault(group, Counter())[kind] += 1
            if kind in shown and len(shown[kind]) < ERROR_EXAMPLES:
                shown[kind].append(
                    {
                        "question": example["question"],
                        "answer": prediction["answer"],
                        "gold": example["answers"]["text"],
                    }
                )
        by_word = {word: dict(found) for word, found in sorted(counts.items(), key=lambda item: -sum(item[1].values()))}
        return {"by_question_word": by_word, "examples": shown}

    def examples_from_texts(self, texts: list[str | dict[str, str]]) -> datasets.Dataset:
        """Each input is `{"question": ..., "context": ...}`, as a dict or its JSON text."""
        rows = []
        for number, value in enumerate(texts, 1):
            try:
                rows.append(json_input(value, self.input_fields))
            except ValueError as err:
                raise UserInputError(f"input {number}: {err}") from None
        return in_memory({field: [row[field] for row in rows] for field in self.input_fields})

    def empty_prediction(self) -> dict[str, Any]:
        """No question and no context: no answer, not even the empty no-answer one."""
        return {"question": "", "answer": None, "score": None, "start": None, "end": None}

    def present(self, example: dict[str, Any], prediction: dict[str, Any]) -> dict[str, Any]:
        shown = {"id": example["id"]} if example.get("id") else {}
        shown.update(question=example["question"], **prediction)
        if "answers" in example:
            shown["gold"] = example["answers"]["text"]
        return shown

    def text_columns(self) -> tuple[str, ...]:
        return ("question", "context")

    def input_text(self, example: dict[str, Any]) -> str:
        return f"{example['question']}\t{example['context']}"


def _confidences(examples: datasets.Dataset, predictions: list[dict[str, Any]]) -> tuple[list[float], list[bool]]:
    """Each answer's score and whether it is exactly right (SQuAD's normalisation)."""
    right = [
        answer_scores(p["answer"], answers["text"])[0] == 1.0 for p, answers in zip(predictions, examples["answers"])
    ]
    return [p["score"] for p in predictions], right


def _check_answer(context: str, number: int, text: Any, start: Any) -> None:
    if not isinstance(text, str) or not text.strip():
        raise ValueError(f"field 'answers.text': answer {number} must be a non-empty string, got {text!r}")
    if isinstance(start, bool) or not isinstance(start, int) or not 0 <= start < len(context):
        raise ValueError(
            f"field 'answers.answer_start': answer {number} starts at {start!r}, "
            f"not a character position of the context (0-{len(context) - 1})"
        )
    found = context[start : start + len(text)]
    if found != text:
        raise ValueError(
            f"field 'answers.answer_start': answer {number} {text!r} is not at character {start} "
            f"of the context, which has {found!r} there"
        )


def _distinct_best(candidates: list[tuple[float, int, int]], count: int) -> list[tuple[float, int, int]]:
    """The `count` best distinct character spans, best first: overlapping windows propose one span more than once."""
    best: dict[tuple[int, int], float] = {}
    for score, first, last in sorted(candidates, key=lambda candidate: -candidate[0]):
        best.setdefault((first, last), score)
        if len(best) == count:
            break
    return [(score, first, last) for (first, last), score in best.items()]


def _token_span(spans: list[list[int]], start: int, end: int) -> tuple[int, int]:
    """First and last token overlapping characters [start, end); (0, 0) unless the window holds all of them."""
    inside = [i for i, (first, _) in enumerate(spans) if first >= 0]
    if not inside or spans[inside[0]][0] > start or spans[inside[-1]][1] < end:
        return 0, 0
    first = next(i for i in inside if spans[i][1] > start)
    last = next(i for i in reversed(inside) if spans[i][0] < end)
    return (first, last) if first <= last else (0, 0)


QUESTION_WORDS = ("what", "which", "who", "whom", "whose", "when", "where", "why", "how")
ERROR_EXAMPLES = 5
"""Examples kept per kind of error."""


def _question_word(question: str) -> str:
    """The question's wh-word (its first one among the first three words), else `other`."""
    for word in question.lower().split()[:3]:
        if word.strip("?,.") in QUESTION_WORDS:
            return word.strip("?,.")
    return "other"

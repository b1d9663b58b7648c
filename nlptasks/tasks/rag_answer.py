"""Grounded answering: a decoder reads numbered passages and a question, and writes a short answer citing
`[n]`, or says the passages do not hold it (the RAG generator's job, learnt: `nlptasks rag tune` writes
these rows from the user's questions and the passages the index retrieves for them).

Rows: `question`, `passages` (a list of texts, best first), `answer` (the target: `Denver Broncos [1]`,
or `grounded.NOT_FOUND`) and optionally `answers`, the gold answers scoring uses (else `answer`).
The prompt is `grounded.passage_prompt`'s, the RAG generator's own: as many passages as fit
`data.max_length` beside the whole question, so a long passage is cut, never the question.

Metrics (`grounded.grounded_scores`): SQuAD exact match and F1 over the questions whose passages hold
a gold answer, how often those answers cite a passage that holds it, and how often the others are
answered NOT_FOUND.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import datasets

from nlptasks.chat import prompt_frame
from nlptasks.errors import RecipeError, UserInputError
from nlptasks.grounded import RULES, answer_text, grounded_scores, passage_prompt
from nlptasks.tasks.base import Generation, in_memory, nonblank
from nlptasks.tasks.seq2seq import Seq2SeqOptions, Seq2SeqTask, gen_len, unpadded


class RagAnswerOptions(Seq2SeqOptions):
    prefix: str = RULES
    """The instruction before the passages; the RAG generator asks a tuned model with its run's own."""
    max_target_length: int = 48


class RagAnswer(Seq2SeqTask):
    name = "rag-answer"
    input_column = "question"
    target_column = "answer"
    main_metric = "f1"
    encoder_decoder_pipeline = "text2text-generation"
    headline_metrics = ("exact_match", "f1", "citation_accuracy", "abstention", "answered")
    input_fields = ("question", "passages")
    Options = RagAnswerOptions
    options: RagAnswerOptions

    @classmethod
    def features(cls) -> datasets.Features:
        text = datasets.Value("string")
        return datasets.Features(
            {"question": text, "passages": datasets.Sequence(text), "answer": text, "answers": datasets.Sequence(text)}
        )

    @classmethod
    def check_row(cls, row: dict[str, Any], label_names: list[str] | None) -> dict[str, Any]:
        passages = row.get("passages")
        if not isinstance(passages, list) or not passages:
            raise ValueError(f"field 'passages' must be a non-empty list of texts, got {passages!r}")
        answers = row.get("answers")
        if answers is not None and (not isinstance(answers, list) or not all(isinstance(a, str) for a in answers)):
            raise ValueError(f"field 'answers' must be a list of texts, got {answers!r}")
        answer = row.get("answer")
        return {
            "question": nonblank(row.get("question"), "question"),
            "passages": [nonblank(text, f"passages[{i}]") for i, text in enumerate(passages)],
            "answer": None if answer is None else nonblank(answer, "answer"),
            "answers": answers,
        }

    def use_model_family(self, family: str) -> None:
        super().use_model_family(family)
        if not self.decoder_only:
            raise RecipeError(
                f"model: rag-answer fine-tunes the chat decoder the RAG pipeline asks (e.g. smollm2-135m-instruct), "
                f"and this is an {family} model"
            )

    def text_columns(self) -> tuple[str, ...]:
        return ("question", "passages", "answer")

    def sources(self, batch: dict[str, list], indices: list[int]) -> list[str]:
        return [
            "".join(f"[{n}] {text}\n" for n, text in enumerate(passages, 1)) + f"\nQuestion: {question}"
            for question, passages in zip(batch["question"], batch["passages"])
        ]

    def targets(self, batch: dict[str, list], indices: list[int]) -> list[str] | None:
        return batch.get("answer")

    def input_encoder(self, tokenizer: Any) -> Callable[[dict[str, list], list[int]], dict[str, list]]:
        frame = prompt_frame(tokenizer, self.options.prefix)

        def encode(batch: dict[str, list], indices: list[int]) -> dict[str, list]:
            rows = zip(batch["question"], batch["passages"])
            return unpadded([passage_prompt(tokenizer, frame, q, p, self.max_length)[0] for q, p in rows])

        return encode

    def examples_from_sources(self, sources: list[str]) -> datasets.Dataset:
        raise UserInputError("predict: a rag-answer input is a JSON object with `question` and `passages`")

    def examples_from_texts(self, texts: list[str | dict[str, Any]]) -> datasets.Dataset:
        """Each input is `{"question": ..., "passages": [...]}`, as a dict or its JSON text."""
        rows = []
        for number, value in enumerate(texts, 1):
            try:
                row = json.loads(value) if isinstance(value, str) else value
                if not isinstance(row, dict):
                    raise ValueError("expected a JSON object with `question` and `passages`")
                rows.append(self.check_row(row, None))
            except ValueError as err:
                raise UserInputError(f"input {number}: {err}") from None
        return in_memory({field: [row[field] for row in rows] for field in self.input_fields})

    def score(self, examples: datasets.Dataset, predictions: list[Generation]) -> dict[str, float]:
        golds = [
            answers or [answer_text(answer)]
            for answers, answer in zip(_column(examples, "answers"), examples["answer"])
        ]
        outputs = [prediction.text for prediction in predictions]
        return grounded_scores(outputs, golds, examples["passages"]) | {"gen_len": gen_len(predictions)}

    def empty_prediction(self) -> dict[str, Any]:
        return {"question": "", "answer": ""}

    def present(self, example: dict[str, Any], prediction: Generation) -> dict[str, Any]:
        shown = {"question": example["question"], "answer": prediction.text}
        if example.get("answer") is not None:
            shown["gold"] = example["answer"]
        return shown


def _column(examples: datasets.Dataset, name: str) -> list[Any]:
    return examples[name] if name in examples.column_names else [None] * len(examples)

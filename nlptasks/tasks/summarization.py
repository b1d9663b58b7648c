"""Abstractive summarization: the model writes a summary of a document (DialogSum dialogues).

Rows: `document`, `summary`, and optionally `references`, several gold summaries of the same
document (DialogSum's test split has three; its `summary` is the first of them). Training uses
`summary`; scoring uses `references` where a row has them, else `summary`.

Metrics: ROUGE-1/2/L/Lsum F-measures on a 0-1 scale through `metrics.rouge`, as the extractive
task's (rouge-score, Porter stemming; for Lsum the generated summary and the reference are split
into one sentence per line), so both tasks score alike. With several references each ROUGE type
takes its best reference, as rouge-score's `score_multi` does, and examples are averaged.
`gen_len` is the mean generated length in tokens.
"""

from __future__ import annotations

from typing import Any

import datasets

from nlptasks.metrics.rouge import ROUGE_TYPES, rouge
from nlptasks.tasks.base import Generation, in_memory
from nlptasks.tasks.seq2seq import Seq2SeqTask, gen_len
from nlptasks.tasks.summary_rows import SUMMARY_FEATURES, check_summary_row, gold_summaries, length_report
from nlptasks.text import sentence_texts


class Summarization(Seq2SeqTask):
    name = "summarization"
    input_column = "document"
    target_column = "summary"
    main_metric = "rougeL"
    encoder_decoder_pipeline = "summarization"
    headline_metrics = (*ROUGE_TYPES, "gen_len")

    @classmethod
    def features(cls) -> datasets.Features:
        return SUMMARY_FEATURES

    @classmethod
    def check_row(cls, row: dict[str, Any], label_names: list[str] | None) -> dict[str, Any]:
        return check_summary_row(row)

    def text_columns(self) -> tuple[str, ...]:
        return ("document", "summary")

    def sources(self, batch: dict[str, list], indices: list[int]) -> list[str]:
        return batch["document"]

    def targets(self, batch: dict[str, list], indices: list[int]) -> list[str] | None:
        return batch.get("summary")

    def examples_from_sources(self, sources: list[str]) -> datasets.Dataset:
        return in_memory({"document": sources})

    def score(self, examples: datasets.Dataset, predictions: list[Generation]) -> dict[str, float]:
        """Mean best-reference ROUGE F-measures and `gen_len` (see the module docstring)."""
        summaries = [sentence_texts(prediction.text) for prediction in predictions]
        return rouge(gold_summaries(examples), summaries) | {"gen_len": gen_len(predictions)}

    def error_analysis(self, examples: datasets.Dataset, predictions: list[Generation]) -> dict[str, Any]:
        return {"length": length_report([prediction.text for prediction in predictions], gold_summaries(examples))}

    def empty_prediction(self) -> dict[str, Any]:
        """Nothing to summarize: no summary is generated."""
        return {"document": "", "summary": ""}

    def present(self, example: dict[str, Any], prediction: Generation) -> dict[str, Any]:
        shown = {"document": example["document"], "summary": prediction.text}
        if example.get("summary") is not None:
            shown["gold"] = example["summary"]
        return shown

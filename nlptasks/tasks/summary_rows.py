"""The rows both summarization tasks read: a document, its summary, optionally several references.

Not a task: the extractive and abstractive tasks share their data here, so neither imports the other.
"""

from __future__ import annotations

from typing import Any

import datasets

from nlptasks.tasks.base import nonblank

SUMMARY_FEATURES = datasets.Features(
    {
        "document": datasets.Value("string"),
        "summary": datasets.Value("string"),
        "references": datasets.Sequence(datasets.Value("string")),
    }
)


def check_summary_row(row: dict[str, Any]) -> dict[str, Any]:
    """A document with its summary and, optionally, a non-empty list of reference summaries."""
    checked = {field: nonblank(row[field], field) for field in ("document", "summary")}
    references = row.get("references")
    if references is not None:
        if not isinstance(references, list) or not references:
            raise ValueError(f"field 'references' must be a non-empty list of summaries, got {references!r}")
        references = [nonblank(text, f"references[{i}]") for i, text in enumerate(references)]
    return {**checked, "references": references}


def gold_summaries(examples: datasets.Dataset) -> list[list[str]]:
    """Each example's reference summaries: its `references` where it has them, else its `summary`."""
    references = examples["references"] if "references" in examples.column_names else [None] * len(examples)
    return [several or [summary] for several, summary in zip(references, examples["summary"])]

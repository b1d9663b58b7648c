"""The rows both summarization tasks read: a document, its summary, optionally several references.

Not a task: the extractive and abstractive tasks share their data here, so neither imports the other.
"""

from __future__ import annotations

from typing import Any

import datasets
import numpy as np

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


def length_report(outputs: list[str], golds: list[list[str]]) -> dict[str, Any]:
    """Summary length against reference length in words, overall and by quarter of reference length:
    whether a model writes too much or too little, and whether it follows longer references at all."""
    written = np.asarray([len(text.split()) for text in outputs], dtype=float)
    wanted = np.asarray([np.mean([len(text.split()) for text in references]) for references in golds])
    if not len(written):
        return {}
    edges = np.unique(np.percentile(wanted, [0, 25, 50, 75, 100]))
    which = np.clip(np.searchsorted(edges, wanted, side="right") - 1, 0, max(len(edges) - 2, 0))
    quarters = [
        {
            "reference_words": f"{edges[index]:.0f}-{edges[min(index + 1, len(edges) - 1)]:.0f}",
            "count": int((which == index).sum()),
            "summary_words": float(written[which == index].mean()),
            "mean_reference_words": float(wanted[which == index].mean()),
        }
        for index in sorted(set(which.tolist()))
    ]
    return {
        "summary_words": float(written.mean()),
        "reference_words": float(wanted.mean()),
        "ratio": float(written.mean() / wanted.mean()),
        "by_reference_length": quarters,
    }

"""What a finished run reports besides its metrics: its cost, and the Markdown summary."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import datasets
import torch

from nlptasks import heap
from nlptasks.recipe import Recipe
from nlptasks.rundir import folder_megabytes
from nlptasks.tasks import headline_scores
from nlptasks.training.settings import resolve_precision


def summary(recipe: Recipe, metrics: dict[str, dict[str, float]], folder: Path | None = None) -> str:
    """A short Markdown page: what ran, how long it took, the headline metrics (no model: an untrained method),
    and each scored split's error analysis found in `folder` (`errors_<split>.json`) as tables."""
    train = metrics["train"]
    lines = [
        f"# {recipe.task} · {recipe.model} · {recipe.method}",
        "",
        recipe.description,
        "",
        f"- trainable parameters: {int(train.get('trainable_parameters', 0)):,} of "
        f"{int(train.get('total_parameters', 0)):,}, saved model {train.get('model_megabytes', 0):.1f} MB, "
        f"peak RSS {train.get('peak_rss_megabytes', 0):.0f} MB",
        f"- training: {train.get('train_runtime', 0):.0f} s, {train.get('train_samples_per_second', 0):.1f} samples/s, "
        f"precision {resolve_precision(recipe.train.precision)}",
        *_skipped_line(train),
        "",
        "| split | metric | value |",
        "|---|---|---|",
    ]
    for split, values in metrics.items():
        if split != "train":
            shown = headline_scores(recipe.task, values)
            lines += [f"| {split} | {name} | {value:.4f} |" for name, value in shown.items()]
    for path in sorted(folder.glob("errors_*.json")) if folder else []:
        lines += ["", f"## Errors: {path.stem.removeprefix('errors_')}", *error_tables(json.loads(path.read_text()))]
    return "\n".join(lines) + "\n"


def error_tables(errors: dict[str, Any]) -> list[str]:
    """Markdown for any task's error analysis: a table per set of rows, a line per number, examples left out."""
    lines = []
    for name, value in errors.items():
        if name == "examples":
            continue
        if rows := _rows(name, value):
            columns = list(dict.fromkeys(key for row in rows for key in row if key != "examples"))
            lines += ["", f"{name}:", "", "| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
            lines += ["| " + " | ".join(_cell(row.get(column, 0)) for column in columns) + " |" for row in rows]
        elif isinstance(value, dict):
            lines += error_tables(value)
        elif isinstance(value, int | float):
            lines.append(f"- {name}: {_cell(value)}")
    return lines


def _rows(name: str, value: Any) -> list[dict[str, Any]] | None:
    """Table rows: a list of dicts as it is, or a mapping of names to dicts as rows led by the name."""
    if isinstance(value, list) and all(isinstance(row, dict) for row in value):
        return value
    if isinstance(value, dict) and value and all(isinstance(row, dict) for row in value.values()):
        return [{name.removeprefix("by_"): key, **row} for key, row in value.items()]
    return None


def _cell(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _skipped_line(train: dict[str, float]) -> list[str]:
    skipped = {key.removeprefix("skipped_rows_"): int(v) for key, v in train.items() if key.startswith("skipped_rows_")}
    if not skipped:
        return []
    counts = ", ".join(f"{split} {count}" for split, count in skipped.items())
    return [f"- bad rows skipped (`data.bad_rows: skip`, each in logs/train.log): {counts}"]


def footprint(model: torch.nn.Module, saved: Path) -> dict[str, float]:
    """What a run costs besides time: parameters trained and in all, saved model size, the run's peak RSS.

    The saved size is the run's `model/` folder: an adapter run's is the adapter and heads only.
    """
    trainable, total = parameter_counts(model)
    return {
        "trainable_parameters": trainable,
        "total_parameters": total,
        "model_megabytes": folder_megabytes(saved),
        "peak_rss_megabytes": heap.peak_rss_megabytes(),
    }


def parameter_counts(model: torch.nn.Module) -> tuple[int, int]:
    """(trainable, total) weights."""
    counts = [(_count(p), p.requires_grad) for p in model.parameters()]
    return sum(n for n, trains in counts if trains), sum(n for n, _ in counts)


def _count(parameter: torch.nn.Parameter) -> int:
    """Weights a parameter stands for: a 4-bit tensor packs two per byte, its quantization state knows the shape."""
    quantized = getattr(parameter, "quant_state", None)
    return quantized.shape.numel() if quantized is not None else parameter.numel()


def skipped_rows(splits: datasets.DatasetDict) -> dict[str, int]:
    """`skipped_rows_<split>` for each split that lost bad rows to `data.bad_rows: skip`."""
    return {f"skipped_rows_{split}": count for split, count in getattr(splits, "skipped_rows", {}).items()}

"""What a finished run reports besides its metrics: its cost, and the Markdown summary."""

from __future__ import annotations

from pathlib import Path

import datasets
import torch

from nlptasks import heap
from nlptasks.recipe import Recipe
from nlptasks.rundir import folder_megabytes
from nlptasks.tasks import headline_scores
from nlptasks.training.settings import resolve_precision


def summary(recipe: Recipe, metrics: dict[str, dict[str, float]]) -> str:
    """A short Markdown page: what ran, how long it took, and the headline metrics (no model: an untrained method)."""
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
    return "\n".join(lines) + "\n"


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

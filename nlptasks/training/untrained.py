"""Methods with nothing to train (Lead-k, TextRank) run through the same recipe, data and metrics."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import datasets

from nlptasks.recipe import Recipe
from nlptasks.rundir import RunDir, write_atomic
from nlptasks.tasks.base import Task
from nlptasks.training.evaluation import record_split
from nlptasks.training.summary import skipped_rows, summary

log = logging.getLogger("nlptasks")


def run_untrained_method(
    recipe: Recipe,
    task: Task,
    method: Callable[[datasets.Dataset], list[Any]],
    splits: datasets.DatasetDict,
    run_dir: RunDir,
    main: bool,
) -> dict[str, dict[str, float]]:
    """A method with nothing to train (Lead-k, TextRank): splits scored and recorded as after training.

    The run directory has no `model/`; `load` rebuilds the method from the recipe.
    """
    log.info("'%s' is an untrained method of %s: no model to build or train", recipe.model, task.name)
    metrics: dict[str, dict[str, float]] = {"train": skipped_rows(splits)}
    for split in [s for s in recipe.eval.splits if s in splits]:
        started = time.perf_counter()
        predictions = method(splits[split])
        written = run_dir if main and recipe.eval.write_predictions else None
        metrics[split] = record_split(task, splits[split], predictions, started, written, split)
    if main:
        run_dir.write_metrics(metrics)
        write_atomic(run_dir.summary, summary(recipe, metrics, run_dir.root))
    return metrics

"""Scoring during and after training, always through the task's own decoding, as `predict` decodes."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterable
from typing import Any

import datasets
import numpy as np
from transformers import Trainer

from nlptasks.models import generation
from nlptasks.recipe import Recipe
from nlptasks.rundir import RunDir, write_atomic
from nlptasks.tasks.base import Task

log = logging.getLogger("nlptasks")


def evaluate_split(
    trainer: Trainer,
    task: Task,
    examples: datasets.Dataset,
    features: datasets.Dataset,
    run_dir: RunDir | None,
    split: str,
) -> dict[str, float]:
    """Score one split through the task's decoding; write its predictions when a run dir is given."""
    started = time.perf_counter()
    log.info("scoring %s: %s examples", split, f"{len(examples):,}")
    outputs = task_outputs(task, trainer.processing_class, trainer.predict(features).predictions)
    id2label = trainer.model.config.id2label
    predictions = task.decode(examples, features, outputs, id2label)
    written = run_dir if trainer.is_world_process_zero() else None
    metrics = record_split(task, examples, predictions, started, written, split)
    if "temperature" in task.calibration:
        metrics["ece_unscaled"] = _unscaled_ece(task, examples, features, outputs, id2label)
    return metrics


def _unscaled_ece(
    task: Task, examples: datasets.Dataset, features: datasets.Dataset, outputs: Any, id2label: dict[int, str]
) -> float:
    """The calibration error of the same predictions' scores before temperature scaling: what the scaling bought."""
    scaled = task.calibration
    task.calibration = {key: value for key, value in scaled.items() if key != "temperature"}
    try:
        return task.score(examples, task.decode(examples, features, outputs, id2label))["ece"]
    finally:
        task.calibration = scaled


def record_split(
    task: Task, examples: datasets.Dataset, predictions: list[Any], started: float, run_dir: RunDir | None, split: str
) -> dict[str, float]:
    """Metrics of one split's predictions, timed from `started`; predictions written when a run dir is given."""
    metrics = task.score(examples, predictions)
    metrics["samples_per_second"] = len(examples) / (time.perf_counter() - started)
    if run_dir is not None:
        run_dir.write_predictions(split, (task.present(example, p) for example, p in zip(examples, predictions)))
        task.write_artifacts(run_dir.root, split, examples, predictions)
        if errors := task.error_analysis(examples, predictions):
            write_atomic(run_dir.root / f"errors_{split}.json", json.dumps(errors, indent=1, ensure_ascii=False) + "\n")
    return metrics


def metric_function(
    task: Task, tokenizer: Any, examples: datasets.Dataset, features: datasets.Dataset, id2label: dict[int, str]
) -> Any:
    def compute(prediction: Any) -> dict[str, float]:
        outputs = task_outputs(task, tokenizer, prediction.predictions)
        return task.score(examples, task.decode(examples, features, outputs, id2label))

    return compute


def task_outputs(task: Task, tokenizer: Any, predictions: Any) -> Any:
    """What the task's `decode` reads from the Trainer's predictions: logits, or a generating task's `Generation`s."""
    if task.generates:
        return generation.generations(tokenizer, predictions)
    return first_outputs(predictions, len(task.output_names))


def first_outputs(predictions: Any, count: int = 1) -> np.ndarray | tuple[np.ndarray, ...]:
    """Logits, when a model also returns hidden states or other extras.

    The Trainer gives a model's outputs (loss dropped) as a tuple in output order; a task that
    reads several outputs (QA: start and end logits) gets the first `count` as a tuple.
    """
    if not isinstance(predictions, tuple):
        return predictions
    return predictions[0] if count == 1 else predictions[:count]


def calibrate(trainer: Trainer, task: Task, examples: datasets.Dataset, features: datasets.Dataset) -> None:
    """Tune the task's decision settings on validation; the model config carries them to `predict`."""
    logits = first_outputs(trainer.predict(features).predictions, len(task.output_names))
    task.calibrate(examples, features, logits, trainer.model.config.id2label)
    trainer.model.config.task_calibration = task.calibration
    log.info("calibrated on validation: %s", task.calibration)


def score_before_training(
    trainer: Trainer, task: Task, recipe: Recipe, splits: datasets.DatasetDict, features: dict[str, datasets.Dataset]
) -> dict[str, dict[str, float]]:
    """With `eval.before_training`: the splits scored by the model as built, as `<split>_untrained`."""
    if not recipe.eval.before_training:
        return {}
    scores = {
        f"{split}_untrained": evaluate_split(trainer, task, splits[split], features[split], None, split)
        for split in recipe.eval.splits
        if split in splits
    }
    log.info("before training: %s", scores)
    return scores


def unseen_labels(task: Task, examples: datasets.Dataset, known: Iterable[str]) -> list[str]:
    """Labels in `examples` outside `known` (a model's classes), which it could never predict or score."""
    return sorted(set(task.label_list(examples)) - set(known))

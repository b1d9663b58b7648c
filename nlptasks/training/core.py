"""The run itself: claim the folder, load the data, build the model, train, score, publish."""

from __future__ import annotations

import contextlib
import logging
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import datasets
import torch
from transformers import TrainerCallback, TrainingArguments, set_seed

from nlptasks import adapters, catalog, heap, models, sharding
from nlptasks.console import logging_to
from nlptasks.data import load_splits, pad_batch
from nlptasks.engines.ctranslate2 import check_convertible
from nlptasks.errors import DataError
from nlptasks.modelcard import write_model_card
from nlptasks.models import generation
from nlptasks.recipe import Recipe, changed_settings, dump_recipe
from nlptasks.rundir import Claim, RunDir, claim, last_complete_checkpoint, write_atomic
from nlptasks.tasks import task_for
from nlptasks.tasks.base import Task, lengths_of, sorted_by_length
from nlptasks.training import tracking
from nlptasks.training.callbacks import callbacks
from nlptasks.training.cpu import prepare_for_cpu_training
from nlptasks.training.evaluation import (
    calibrate,
    evaluate_split,
    metric_function,
    score_before_training,
    unseen_labels,
)
from nlptasks.training.settings import adaptation, resolve_precision, training_arguments
from nlptasks.training.summary import footprint, parameter_counts, skipped_rows, summary
from nlptasks.training.trainer import TaskTrainer
from nlptasks.training.untrained import run_untrained_method

log = logging.getLogger("nlptasks")


@dataclass
class RunResult:
    run_dir: Path
    metrics: dict[str, dict[str, float]]
    recipe: Recipe = field(repr=False)


def run(recipe: Recipe, overwrite: bool = False, callbacks: Sequence[TrainerCallback] = ()) -> RunResult:
    """Train and evaluate a recipe in its run directory, resuming the same recipe's last checkpoint if any.

    A folder holding another recipe's run is refused unless `overwrite` (see `rundir.claim`). `callbacks`
    join the Trainer's own (a search's pruning, for one).
    """
    sharding.share_cpu_threads(on_cpu=not torch.cuda.is_available())
    task = checked_task(recipe)
    args = training_arguments(recipe, RunDir(recipe.run_dir), task)
    with args.main_process_first(local=False, desc="run directory"):
        held = claim(recipe.run_dir, partial(changed_settings, recipe=recipe), overwrite, args.process_index == 0)
    try:
        with (
            contextlib.redirect_stdout(sys.stderr),  # the Trainer prints its log lines; stdout carries results
            logging_to(held.run_dir.logs / "train.log"),
            tracking.tracked(recipe, held.run_dir, args.process_index == 0) as finish,
        ):
            metrics = _train_and_evaluate(recipe, task, args, held, callbacks)
            finish(metrics)
            return RunResult(held.run_dir.root, metrics, recipe)
    finally:
        held.release()


def checked_task(recipe: Recipe) -> Task:
    """The recipe's task, once everything checkable without loading data or weights is checked:
    its task options, that its model and dataset names resolve, its `model_args`."""
    task = task_for(recipe)
    catalog.check_model(recipe.model, recipe.model_args)
    tracking.check_integrations(recipe)
    if recipe.data.name and not recipe.data.train_file:
        catalog.check_dataset(recipe.data.name)
    if recipe.data.train_name:
        catalog.check_dataset(recipe.data.train_name)
    return task


def _train_and_evaluate(
    recipe: Recipe, task: Task, args: TrainingArguments, held: Claim, extra_callbacks: Sequence[TrainerCallback]
) -> dict[str, dict[str, float]]:
    run_dir = held.run_dir
    main = args.process_index == 0
    heap.reset_peak_rss()
    if main:
        write_atomic(run_dir.recipe, dump_recipe(recipe))
    precision = resolve_precision(recipe.train.precision)
    log.info("%s: process %d of %d, precision %s", run_dir.root, args.process_index, args.world_size, precision)
    set_seed(recipe.train.seed)

    with args.main_process_first(desc="data"):
        splits = load_splits(recipe.data, task)
        splits["train"] = task.training_examples(splits["train"])
    log.info("data: %s examples", ", ".join(f"{name} {len(split):,}" for name, split in splits.items()))
    if (untrained := task.untrained_method(recipe.model)) is not None:
        metrics = run_untrained_method(recipe, task, untrained, splits, run_dir, main)
        held.commit()
        return metrics

    trainer, features, resume_from = _trainer(recipe, task, args, held, splits, extra_callbacks)
    before = score_before_training(trainer, task, recipe, splits, features) if not resume_from else {}
    started = time.perf_counter()
    outcome = trainer.train(resume_from_checkpoint=resume_from)
    train_metrics = {**outcome.metrics, "wall_seconds": time.perf_counter() - started, **skipped_rows(splits)}
    metrics = {"train": train_metrics, **before}
    if task.calibrates and "validation" in splits and not getattr(trainer.model, "scores_are_paths", False):
        calibrate(trainer, task, splits["validation"], features["validation"])

    if task.generates and recipe.generation.engine != "transformers":
        _publish_model(trainer, run_dir)
        with args.main_process_first(local=False, desc="generation engine"):
            trainer.generator = _generator(trainer, task, recipe, run_dir)
    for split in [s for s in recipe.eval.splits if s in splits]:
        written = run_dir if recipe.eval.write_predictions else None
        metrics[split] = evaluate_split(trainer, task, splits[split], features[split], written, split)
    if trainer.is_world_process_zero():
        if trainer.generator is None:
            _publish_model(trainer, run_dir)
        metrics["train"].update(footprint(trainer.model, run_dir.model))
        run_dir.write_metrics(metrics)
        write_model_card(run_dir.model, recipe, task, metrics)
        write_atomic(run_dir.summary, summary(recipe, metrics, run_dir.root))
        held.commit()
    return metrics


def _publish_model(trainer: TaskTrainer, run_dir: RunDir) -> None:
    """The trained model and tokenizer as the run's `model/` (by the main process only)."""
    if trainer.is_world_process_zero():
        tokenizer = trainer.processing_class
        run_dir.publish_model(lambda folder: (adapters.save(trainer.model, folder), tokenizer.save_pretrained(folder)))


def _generator(trainer: TaskTrainer, task: Task, recipe: Recipe, run_dir: RunDir) -> Any:
    """The recipe's generation engine over the trained model; QLoRA's over its saved adapter on a dequantized base,
    as `predict` loads it, since a 4-bit base does not convert."""
    model = models.load(run_dir.model, task, quantized=True)[0] if recipe.method == "qlora" else trainer.model
    return generation.generator(model, trainer.processing_class, recipe.generation, lambda: run_dir.model)


def _trainer(
    recipe: Recipe,
    task: Task,
    args: TrainingArguments,
    held: Claim,
    splits: datasets.DatasetDict,
    extra_callbacks: Sequence[TrainerCallback],
) -> tuple[TaskTrainer, dict[str, datasets.Dataset], str | None]:
    """The Trainer over the built model, the tokenized splits, and the checkpoint to resume from, if any."""
    labels = _labels(task, splits)
    model, tokenizer, resume_from = _model(recipe, task, args, held.run_dir, splits, labels)
    inference_attention = _for_cpu_training(model, recipe, args)
    label2id = {label: i for i, label in enumerate(labels)}
    with args.main_process_first(desc="tokenization"):
        features = {name: task.featurize(split, tokenizer, label2id) for name, split in splits.items()}
    features.update({name: sorted_by_length(split) for name, split in features.items() if name != "train"})
    trainer = TaskTrainer(
        model=model,
        args=args,
        train_dataset=features["train"],
        eval_dataset=features["validation"] if args.eval_strategy != "no" else None,
        data_collator=partial(pad_batch, pad_values=task.pad_values(tokenizer)),
        compute_metrics=metric_function(
            task, tokenizer, splits["validation"], features["validation"], model.config.id2label
        ),
        processing_class=tokenizer,
        callbacks=[*callbacks(recipe, held.run_dir, args, held), *extra_callbacks],
        compute_loss_func=task.loss_function(splits["train"], label2id),
        lengths=lengths_of(features["train"]) if recipe.train.group_by_length else None,
        generates=task.generates,
        train_collator=task.training_collator(tokenizer),
        scaled_adafactor=recipe.train.optimizer == "adafactor",
        head_learning_rate=recipe.train.head_learning_rate,
        decay_ratio=recipe.train.decay_ratio,
        batch_dump=held.run_dir.logs,
        read_outputs=task.output_names,
        inference_attention=inference_attention,
    )
    return trainer, features, resume_from


def _for_cpu_training(model: torch.nn.Module, recipe: Recipe, args: TrainingArguments) -> str | None:
    """Cheaper dropout and unfused attention on a CPU (`training.cpu`); the attention evaluation switches back to,
    if changed. A compiled model is left as it is: inductor fuses dropout and attention itself."""
    if args.device.type != "cpu" or recipe.train.compile:
        return None
    return prepare_for_cpu_training(model, recipe.data.max_length)


def _model(
    recipe: Recipe,
    task: Task,
    args: TrainingArguments,
    run_dir: RunDir,
    splits: datasets.DatasetDict,
    labels: list[str],
) -> tuple[Any, Any, str | None]:
    """(model, tokenizer, checkpoint to resume from): a resumed run keeps the tokenizer its checkpoint learnt."""
    method = adaptation(recipe)
    adapters.serve_large_blocks_by_mmap_for_4bit(method)
    with args.main_process_first(desc="model"):  # a tokenizer learnt from the data is learnt once, by the main process
        model, tokenizer = models.build(recipe.model, recipe.model_args, task, labels, splits["train"], method)
    model = task.wrap_model(model)
    trained, total = parameter_counts(model)
    log.info("model: %s, %s: %s of %s parameters trained", recipe.model, recipe.method, f"{trained:,}", f"{total:,}")
    if names := getattr(splits, "label_names", None):  # saved in config.json: what a file's integer label means
        model.config.data_label_names = names
    checkpoint = last_complete_checkpoint(run_dir) if recipe.train.resume else None
    resume_from = str(checkpoint) if checkpoint else None
    if resume_from:
        log.info("resuming from %s", resume_from)
        if method is None:  # the ids its weights learnt, should the data's tokenizer differ now
            tokenizer = models.load_tokenizer(resume_from, catalog.family_of(resume_from))
    if task.generates:
        generation.configure(model, recipe.generation)
        if recipe.generation.engine == "ctranslate2":
            check_convertible(model.config)
    return model, tokenizer, resume_from


def _labels(task: Task, splits: datasets.DatasetDict) -> list[str]:
    """The training split's labels; a label only other splits have is an error, not a crash mid-run."""
    labels = task.label_list(splits["train"])
    for name, split in splits.items():
        if unseen := unseen_labels(task, split, labels):
            raise DataError(f"data: the {name} split has labels the train split never has: {unseen}")
    return labels

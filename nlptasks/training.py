"""The one training core: a recipe in, a run directory out, for every task and model family.

It is the `transformers` Trainer (accelerate underneath), so `accelerate launch` / `torchrun`
give multi-process training with no code here. What this module adds is what the Trainer
leaves to each example script: data and labels from the recipe, length-grouped batches with
dynamic padding, evaluation through the task's own decoding, resume, and the run directory.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import logging
import math
import shutil
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import datasets
import numpy as np
import torch
from torch.utils.data import DataLoader, Sampler
from transformers import EarlyStoppingCallback, Trainer, TrainerCallback, TrainingArguments, set_seed
from transformers.integrations import TensorBoardCallback
from transformers.optimization import Adafactor, get_wsd_schedule
from transformers.trainer_pt_utils import LengthGroupedSampler
from transformers.trainer_utils import SchedulerType

from nlptasks import adapters, catalog, heap, models
from nlptasks.data import load_splits, pad_batch
from nlptasks.errors import DataError, TrainingDiverged
from nlptasks.models import generation
from nlptasks.recipe import Recipe, changed_settings, dump_recipe
from nlptasks.rundir import Claim, RunDir, claim, finished_save, folder_megabytes, write_atomic
from nlptasks.tasks import headline_scores, task_for
from nlptasks.tasks.base import Task, lengths_of, sorted_by_length

log = logging.getLogger("nlptasks")


@dataclass
class RunResult:
    run_dir: Path
    metrics: dict[str, dict[str, float]]
    recipe: Recipe = field(repr=False)


class TaskTrainer(Trainer):
    """The Trainer plus what the core adds: length-grouped training batches and, for tasks that
    generate text, generation at evaluation and prediction.

    Lengths are computed once at tokenization: the stock `group_by_length` recomputes them by
    iterating the dataset and also shuffles evaluation order, which would break mapping
    predictions back to examples.

    A generating task's prediction step returns the evaluation loss (teacher-forced, from the
    labels), the generated token ids in place of logits (through the same `generate_ids` as
    `predict`), and the labels (unread, but the Trainer computes metrics only when it has them).
    `Seq2SeqTrainer` does as much for encoder-decoders, but keeps a decoder's prompt in its output
    and is not what `predict` runs; one shared function keeps both decoding alike.

    A task may batch training examples differently from evaluation's padded rows (packed into one
    sequence): `train_collator` then builds the training batches only.

    A non-finite loss stops training at once, naming the step and writing its batch to `batch_dump`'s
    folder: the stock Trainer filters NaN out of the logged loss and trains on, and every later step
    is wasted on NaN weights.
    """

    def __init__(
        self,
        *args: Any,
        lengths: list[int] | None = None,
        generates: bool = False,
        train_collator: Callable[[list[dict[str, Any]]], dict[str, Any]] | None = None,
        scaled_adafactor: bool = False,
        decay_ratio: float = 0.0,
        batch_dump: Path | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.lengths = lengths
        self.generates = generates
        self.train_collator = train_collator
        self.scaled_adafactor = scaled_adafactor
        self.decay_ratio = decay_ratio
        self.batch_dump = batch_dump

    def training_step(
        self, model: torch.nn.Module, inputs: dict[str, Any], num_items_in_batch: torch.Tensor | int | None = None
    ) -> torch.Tensor:
        loss = super().training_step(model, inputs, num_items_in_batch)
        if not torch.isfinite(loss).all():
            raise TrainingDiverged(self._divergence(loss, inputs))
        return loss

    def _divergence(self, loss: torch.Tensor, inputs: dict[str, Any]) -> str:
        """Where it happened and what was fed in: the batch's tensors (and texts, where decodable) go to a file."""
        step = self.state.global_step + 1
        tensors = {name: value.tolist() for name, value in inputs.items() if isinstance(value, torch.Tensor)}
        texts = []
        if "input_ids" in inputs and hasattr(self.processing_class, "batch_decode"):
            texts = self.processing_class.batch_decode(inputs["input_ids"], skip_special_tokens=True)
        where = ""
        if self.batch_dump is not None:
            path = self.batch_dump / f"diverged-step-{step}.json"
            write_atomic(path, json.dumps({"step": step, "loss": loss.item(), "texts": texts, "batch": tensors}) + "\n")
            where = f", written to {path}"
        size = len(next(iter(tensors.values()), []))
        first = f"; its first input: {texts[0][:200]!r}" if texts else ""
        return (
            f"training diverged: the loss is {loss.item()} at step {step} (epoch {self.state.epoch or 0:.2f}), "
            f"on a batch of {size} examples{where}{first}. Checkpoints saved before it are intact. "
            "Try a lower train.learning_rate, keep train.max_grad_norm above 0, or train.precision bf16/fp32 over fp16."
        )

    def create_optimizer(self, model: Any = None) -> torch.optim.Optimizer:
        """The Trainer's `optim="adafactor"` takes equal steps for every weight; T5's scales each by its RMS."""
        if not self.scaled_adafactor:
            return super().create_optimizer(model)
        if self.optimizer is None:
            trainable = [p for p in self.model.parameters() if p.requires_grad]
            self.optimizer = Adafactor(
                trainable,
                lr=self.args.learning_rate,
                relative_step=False,
                scale_parameter=True,
                weight_decay=self.args.weight_decay,
            )
        return self.optimizer

    def create_scheduler(
        self, num_training_steps: int, optimizer: torch.optim.Optimizer | None = None
    ) -> torch.optim.lr_scheduler.LRScheduler:
        """`warmup_stable_decay` is told its decay as a share of the steps, as warmup is, not as a count."""
        if self.lr_scheduler is None and self.args.lr_scheduler_type == SchedulerType.WARMUP_STABLE_DECAY:
            self.lr_scheduler = get_wsd_schedule(
                optimizer or self.optimizer,
                num_warmup_steps=self.args.get_warmup_steps(num_training_steps),
                num_decay_steps=math.ceil(self.decay_ratio * num_training_steps),
                num_training_steps=num_training_steps,
            )
        return super().create_scheduler(num_training_steps, optimizer)

    def get_train_dataloader(self) -> DataLoader:
        if self.train_collator is None:
            return super().get_train_dataloader()
        evaluation_collator, self.data_collator = self.data_collator, self.train_collator
        try:
            return super().get_train_dataloader()
        finally:
            self.data_collator = evaluation_collator

    def _get_train_sampler(self, train_dataset: datasets.Dataset | None = None) -> Sampler | None:
        if self.lengths is None:
            return super()._get_train_sampler(train_dataset)
        return LengthGroupedSampler(
            self.args.train_batch_size * self.args.gradient_accumulation_steps, lengths=self.lengths
        )

    def predict(
        self, test_dataset: datasets.Dataset, ignore_keys: list[str] | None = None, metric_key_prefix: str = "test"
    ) -> Any:
        """Outputs only: every caller decodes and scores them itself, and the metric function
        decodes validation's features, so it would misalign on any other split."""
        validation_metrics, self.compute_metrics = self.compute_metrics, None
        try:
            return super().predict(test_dataset, ignore_keys, metric_key_prefix)
        finally:
            self.compute_metrics = validation_metrics

    def prediction_step(
        self,
        model: torch.nn.Module,
        inputs: dict[str, torch.Tensor | Any],
        prediction_loss_only: bool,
        ignore_keys: list[str] | None = None,
    ) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
        if not self.generates or prediction_loss_only:
            return super().prediction_step(model, inputs, prediction_loss_only, ignore_keys)
        loss, _, _ = super().prediction_step(model, inputs, True, ignore_keys)
        inputs = self._prepare_inputs(inputs)
        return loss, generation.generate_ids(self.model, inputs), inputs.get("labels")


class CSVLogCallback(TrainerCallback):
    """Every logged value as a `step,epoch,name,value` row: one file, readable by any tool.

    Rows are appended as they come, so a killed run can leave a torn last row and rows past the
    checkpoint it resumes from; training (re)starts by keeping only whole rows up to its start step.
    """

    def __init__(self, path: Path) -> None:
        self.path = path

    def on_train_begin(self, args: TrainingArguments, state: Any, control: Any, **kwargs: Any) -> None:
        if not state.is_world_process_zero or not self.path.exists():
            return
        with self.path.open(newline="") as handle:
            rows = list(csv.reader(handle))
        kept = [row for row in rows[1:] if len(row) == 4 and row[0].isdigit() and int(row[0]) <= state.global_step]
        buffer = io.StringIO()
        csv.writer(buffer).writerows(rows[:1] + kept)
        write_atomic(self.path, buffer.getvalue())

    def on_log(
        self, args: TrainingArguments, state: Any, control: Any, logs: dict[str, Any] | None = None, **kwargs: Any
    ) -> None:
        if not state.is_world_process_zero or not logs:
            return
        new = not self.path.exists()
        with self.path.open("a", newline="") as handle:
            writer = csv.writer(handle)
            if new:
                writer.writerow(["step", "epoch", "name", "value"])
            for name, value in logs.items():
                if isinstance(value, int | float):
                    writer.writerow([state.global_step, f"{state.epoch or 0:.4f}", name, value])


class TrimFreedMemory(TrainerCallback):
    """Return the heap's free pages to the OS (glibc's `malloc_trim`) every `every` training steps and
    evaluation batches.

    Tensors of every size, as length-grouped batches make them, fragment glibc's heap: freed blocks
    stay resident because new ones do not fit them, and a long run's heap grows to many times its
    live memory. A trim costs page faults when the pages are used again, which is why it is not done
    every step.
    """

    def __init__(self, every: int) -> None:
        self.every = every
        self.calls = 0
        self.trim = heap.malloc_trim()

    def on_step_end(self, args: TrainingArguments, state: Any, control: Any, **kwargs: Any) -> None:
        self._tick()

    def on_prediction_step(self, args: TrainingArguments, state: Any, control: Any, **kwargs: Any) -> None:
        self._tick()

    def _tick(self) -> None:
        self.calls += 1
        if self.trim is not None and self.calls % self.every == 0:
            self.trim(0)


def last_complete_checkpoint(run_dir: RunDir) -> Path | None:
    """The newest checkpoint whose save finished; newer, half-written ones are removed.

    A save cut short (killed, disk full) lacks `trainer_state.json` or holds it torn.
    `get_last_checkpoint` takes the highest number regardless, and resume fails.
    """
    for checkpoint in run_dir.numbered_checkpoints():
        if finished_save(checkpoint):
            return checkpoint
        log.warning("removing %s: its save never finished", checkpoint)
        shutil.rmtree(checkpoint, ignore_errors=True)
    return None


class CommitOnSave(TrainerCallback):
    """The first checkpoint commits an `--overwrite`: the run it replaces is no longer needed."""

    def __init__(self, claim: Claim) -> None:
        self.claim = claim

    def on_save(self, args: TrainingArguments, state: Any, control: Any, **kwargs: Any) -> None:
        if state.is_world_process_zero:
            self.claim.commit()


def run(recipe: Recipe, overwrite: bool = False) -> RunResult:
    """Train and evaluate a recipe in its run directory, resuming the same recipe's last checkpoint if any.

    A folder holding another recipe's run is refused unless `overwrite` (see `rundir.claim`).
    """
    task = checked_task(recipe)
    args = training_arguments(recipe, RunDir(recipe.run_dir), task)
    with args.main_process_first(local=False, desc="run directory"):
        held = claim(recipe.run_dir, partial(changed_settings, recipe=recipe), overwrite, args.process_index == 0)
    try:
        with _logging_to(held.run_dir.logs / "train.log"):
            return _train_and_evaluate(recipe, task, args, held)
    finally:
        held.release()


def checked_task(recipe: Recipe) -> Task:
    """The recipe's task, once everything checkable without loading data or weights is checked:
    its task options, that its model and dataset names resolve."""
    task = task_for(recipe)
    catalog.check_model(recipe.model)
    if recipe.data.name and not recipe.data.train_file:
        catalog.check_dataset(recipe.data.name)
    if recipe.data.train_name:
        catalog.check_dataset(recipe.data.train_name)
    return task


def _train_and_evaluate(recipe: Recipe, task: Task, args: TrainingArguments, held: Claim) -> RunResult:
    run_dir = held.run_dir
    heap.reset_peak_rss()
    if args.process_index == 0:
        write_atomic(run_dir.recipe, dump_recipe(recipe))
    log.info(
        "%s: process %d of %d, precision %s",
        run_dir.root,
        args.process_index,
        args.world_size,
        resolve_precision(recipe.train.precision),
    )
    set_seed(recipe.train.seed)

    with args.main_process_first(desc="data"):
        splits = load_splits(recipe.data, task)
        splits["train"] = task.training_examples(splits["train"])
    log.info("data: %s examples", ", ".join(f"{name} {len(split):,}" for name, split in splits.items()))
    untrained = task.untrained_method(recipe.model)
    if untrained is not None:
        result = _run_untrained(recipe, task, untrained, splits, run_dir, main=args.process_index == 0)
        held.commit()
        return result
    labels = _labels(task, splits)
    adaptation = _adaptation(recipe)
    adapters.serve_large_blocks_by_mmap_for_4bit(adaptation)
    with args.main_process_first(desc="model"):  # a tokenizer learnt from the data is learnt once, by the main process
        model, tokenizer = models.build(recipe.model, recipe.model_args, task, labels, splits["train"], adaptation)
    model = task.wrap_model(model)
    trained, total = parameter_counts(model)
    log.info("model: %s, %s: %s of %s parameters trained", recipe.model, recipe.method, f"{trained:,}", f"{total:,}")
    if names := getattr(splits, "label_names", None):  # saved in config.json: what a file's integer label means
        model.config.data_label_names = names
    checkpoint = last_complete_checkpoint(run_dir) if recipe.train.resume else None
    resume_from = str(checkpoint) if checkpoint else None
    if resume_from and adaptation is None:  # the ids its weights learnt, should the data's tokenizer differ now
        tokenizer = models.load_tokenizer(resume_from, catalog.family_of(resume_from))
    if task.generates:
        generation.configure(model, recipe.generation)
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
        compute_metrics=_metric_function(
            task, tokenizer, splits["validation"], features["validation"], model.config.id2label
        ),
        processing_class=tokenizer,
        callbacks=[*_callbacks(recipe, run_dir, args), CommitOnSave(held)],
        compute_loss_func=task.loss_function(splits["train"], label2id),
        lengths=lengths_of(features["train"]) if recipe.train.group_by_length else None,
        generates=task.generates,
        train_collator=task.training_collator(tokenizer),
        scaled_adafactor=recipe.train.optimizer == "adafactor",
        decay_ratio=recipe.train.decay_ratio,
        batch_dump=run_dir.logs,
    )
    if resume_from:
        log.info("resuming from %s", resume_from)
    untrained = _score_untrained(trainer, task, recipe, splits, features) if not resume_from else {}
    started = time.perf_counter()
    outcome = trainer.train(resume_from_checkpoint=resume_from)
    train_metrics = {**outcome.metrics, "wall_seconds": time.perf_counter() - started, **skipped_rows(splits)}
    metrics = {"train": train_metrics, **untrained}
    if task.calibrates and "validation" in splits:
        _calibrate(trainer, task, splits["validation"], features["validation"])

    for split in [s for s in recipe.eval.splits if s in splits]:
        metrics[split] = evaluate_split(
            trainer, task, splits[split], features[split], run_dir if recipe.eval.write_predictions else None, split
        )
    if trainer.is_world_process_zero():
        run_dir.publish_model(lambda folder: (adapters.save(trainer.model, folder), tokenizer.save_pretrained(folder)))
        metrics["train"].update(footprint(trainer.model, run_dir.model))
        run_dir.write_metrics(metrics)
        write_atomic(run_dir.summary, summary(recipe, metrics))
        held.commit()
    return RunResult(run_dir.root, metrics, recipe)


def _score_untrained(
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


def _adaptation(recipe: Recipe) -> adapters.Adaptation | None:
    if recipe.method == "full":
        return None
    return adapters.Adaptation(
        recipe.adapter,
        quantized=recipe.method == "qlora",
        compute_dtype=torch.bfloat16 if resolve_precision(recipe.train.precision) == "bf16" else torch.float32,
        gradient_checkpointing=recipe.train.gradient_checkpointing,
    )


def _run_untrained(
    recipe: Recipe,
    task: Task,
    method: Callable[[datasets.Dataset], list[Any]],
    splits: datasets.DatasetDict,
    run_dir: RunDir,
    main: bool,
) -> RunResult:
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
        write_atomic(run_dir.summary, summary(recipe, metrics))
    return RunResult(run_dir.root, metrics, recipe)


def skipped_rows(splits: datasets.DatasetDict) -> dict[str, int]:
    """`skipped_rows_<split>` for each split that lost bad rows to `data.bad_rows: skip`."""
    return {f"skipped_rows_{split}": count for split, count in getattr(splits, "skipped_rows", {}).items()}


def _calibrate(trainer: Trainer, task: Task, examples: datasets.Dataset, features: datasets.Dataset) -> None:
    """Tune the task's decision settings on validation; the model config carries them to `predict`."""
    logits = _first(trainer.predict(features).predictions)
    task.calibrate(examples, features, logits, trainer.model.config.id2label)
    trainer.model.config.task_calibration = task.calibration
    log.info("calibrated on validation: %s", task.calibration)


def _labels(task: Task, splits: datasets.DatasetDict) -> list[str]:
    """The training split's labels; a label only other splits have is an error, not a crash mid-run."""
    labels = task.label_list(splits["train"])
    for name, split in splits.items():
        if unseen := unseen_labels(task, split, labels):
            raise DataError(f"data: the {name} split has labels the train split never has: {unseen}")
    return labels


def unseen_labels(task: Task, examples: datasets.Dataset, known: Iterable[str]) -> list[str]:
    """Labels in `examples` outside `known` (a model's classes), which it could never predict or score."""
    return sorted(set(task.label_list(examples)) - set(known))


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
    predictions = task.decode(examples, features, outputs, trainer.model.config.id2label)
    return record_split(
        task, examples, predictions, started, run_dir if trainer.is_world_process_zero() else None, split
    )


def record_split(
    task: Task, examples: datasets.Dataset, predictions: list[Any], started: float, run_dir: RunDir | None, split: str
) -> dict[str, float]:
    """Metrics of one split's predictions, timed from `started`; predictions written when a run dir is given."""
    metrics = task.score(examples, predictions)
    metrics["samples_per_second"] = len(examples) / (time.perf_counter() - started)
    if run_dir is not None:
        run_dir.write_predictions(split, (task.present(example, p) for example, p in zip(examples, predictions)))
        task.write_artifacts(run_dir.root, split, examples, predictions)
    return metrics


def training_arguments(recipe: Recipe, run_dir: RunDir, task: Task) -> TrainingArguments:
    train = recipe.train
    precision = resolve_precision(train.precision)
    evaluating = train.eval_strategy != "no"
    return TrainingArguments(
        output_dir=str(run_dir.checkpoints),
        num_train_epochs=train.epochs,
        max_steps=train.max_steps,
        per_device_train_batch_size=train.batch_size,
        per_device_eval_batch_size=train.eval_batch_size,
        gradient_accumulation_steps=train.gradient_accumulation_steps,
        learning_rate=train.learning_rate,
        weight_decay=train.weight_decay,
        warmup_steps=train.warmup_ratio,
        lr_scheduler_type=train.lr_scheduler,
        **({"optim": "sgd"} if train.optimizer == "sgd" else {}),
        max_grad_norm=train.max_grad_norm,
        seed=train.seed,
        bf16=precision == "bf16",
        fp16=precision == "fp16",
        use_cpu=not torch.cuda.is_available(),
        eval_strategy=train.eval_strategy,
        eval_steps=train.eval_steps,
        save_strategy=train.eval_strategy if evaluating else "epoch",
        save_steps=train.eval_steps,
        save_total_limit=train.save_total_limit,
        load_best_model_at_end=evaluating,
        metric_for_best_model=train.metric_for_best_model or task.main_metric,
        greater_is_better=(train.metric_for_best_model or task.main_metric) != "loss",
        logging_steps=train.logging_steps,
        report_to="none",
        dataloader_num_workers=train.num_workers,
        activation_checkpointing=train.gradient_checkpointing,
        label_names=list(task.label_names),
    )


def resolve_precision(choice: str) -> str:
    """`auto` means bf16 where the hardware computes it natively, else fp32 (fp16 only on request)."""
    if choice != "auto":
        return choice
    if torch.cuda.is_available():
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    return "bf16" if _cpu_has_native_bf16() else "fp32"


def _cpu_has_native_bf16() -> bool:
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def _metric_function(
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
    return _first(predictions, len(task.output_names))


def _first(predictions: Any, count: int = 1) -> np.ndarray | tuple[np.ndarray, ...]:
    """Logits, when a model also returns hidden states or other extras.

    The Trainer gives a model's outputs (loss dropped) as a tuple in output order; a task that
    reads several outputs (QA: start and end logits) gets the first `count` as a tuple.
    """
    if not isinstance(predictions, tuple):
        return predictions
    return predictions[0] if count == 1 else predictions[:count]


def _callbacks(recipe: Recipe, run_dir: RunDir, args: TrainingArguments) -> list[TrainerCallback]:
    callbacks: list[TrainerCallback] = [CSVLogCallback(run_dir.logs / "metrics.csv")]
    if args.process_index == 0:
        from torch.utils.tensorboard import SummaryWriter

        callbacks.append(TensorBoardCallback(tb_writer=SummaryWriter(log_dir=str(run_dir.logs / "tensorboard"))))
    if recipe.train.early_stopping_patience:
        callbacks.append(EarlyStoppingCallback(early_stopping_patience=recipe.train.early_stopping_patience))
    if recipe.train.trim_memory_every:
        callbacks.append(TrimFreedMemory(recipe.train.trim_memory_every))
    return callbacks


@contextlib.contextmanager
def _logging_to(path: Path) -> Iterator[None]:
    """Send this run's full log to its own file while it runs; the console keeps showing warnings only.

    The handler goes when the run ends, so nothing a process logs later lands in a finished run's file.
    """
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    loggers = [logging.getLogger(name) for name in ("nlptasks", "transformers")]
    for logger in loggers:
        for console in logger.handlers:
            if console.level == logging.NOTSET:
                console.setLevel(logging.WARNING)
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
    try:
        yield
    finally:
        for logger in loggers:
            logger.removeHandler(handler)
        handler.close()


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

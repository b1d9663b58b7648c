"""The Trainer as every task needs it: what the stock one leaves to each example script."""

from __future__ import annotations

import contextlib
import inspect
import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import datasets
import torch
from torch.utils.data import DataLoader, Sampler
from transformers import Trainer
from transformers.optimization import Adafactor, get_wsd_schedule
from transformers.trainer_pt_utils import LengthGroupedSampler
from transformers.trainer_utils import SchedulerType

from nlptasks.errors import TrainingDiverged
from nlptasks.models import generation
from nlptasks.rundir import write_atomic
from nlptasks.training.cpu import attention_implementation

EXTRA_OUTPUTS = (
    "cache",
    "past_key_values",
    "hidden_states",
    "attentions",
    "encoder_last_hidden_state",
    "encoder_hidden_states",
    "encoder_attentions",
    "decoder_hidden_states",
    "decoder_attentions",
    "cross_attentions",
)
"""Model outputs besides the task's that evaluation would otherwise gather for the whole split: an
encoder-decoder's cache and encoder states are megabytes per row (T5's QA head: ~4 MB a window)."""


def loss_counts_items(trainer: Trainer, model: torch.nn.Module, inputs: dict[str, Any]) -> bool:
    """Whether the loss `trainer.compute_loss` gives for `inputs` is divided by `num_items_in_batch`:
    the same batch scored with two counts, dropout off."""
    training = model.training
    model.eval()
    try:
        with torch.no_grad():
            one, two = (trainer.compute_loss(model, inputs, num_items_in_batch=torch.tensor(n)) for n in (1, 2))
    finally:
        model.train(training)
    return not torch.allclose(one.float(), two.float())


def keeps_chosen_logits(model: torch.nn.Module, inputs: dict[str, Any]) -> bool:
    """Whether `model` (under LoRA, the wrapped model) gives its stock loss for `at_labelled_positions(inputs)`,
    scored once, dropout off.

    Most of transformers' causal LMs (Llama, GPT-2, Qwen2, Mistral, ...) take a mask as `logits_to_keep` and pass
    `shift_labels` to their loss; an encoder-decoder's unshifted loss, or a model computing its own, does not.
    """
    unwrapped = model.get_base_model() if hasattr(model, "get_base_model") else model
    if not {"logits_to_keep", "labels"} <= set(inspect.signature(unwrapped.forward).parameters):
        return False
    training = model.training
    model.eval()
    try:
        with torch.no_grad():
            stock, kept = (model(**batch).loss for batch in (inputs, at_labelled_positions(inputs)))
    except (RuntimeError, ValueError, TypeError):
        return False
    finally:
        model.train(training)
    return kept is not None and torch.allclose(stock.float(), kept.float(), rtol=1e-2)


def at_labelled_positions(inputs: dict[str, Any]) -> dict[str, Any]:
    """A causal LM's inputs asking for logits only where the next token is learnt.

    A decoder learns its target's tokens only (the prompt's labels are -100), yet its stock loss projects
    every prompt position onto the whole vocabulary: for a 640-token RAG prompt and a 10-token answer, a
    fifth of SmolLM2's training compute and most of its logits memory. The kept positions' labels come
    flattened in `shift_labels`, which the model's own loss reads as it would its shifted `labels`, so the
    loss, its reduction over `num_items_in_batch` and the gradient are unchanged.
    """
    labels = inputs["labels"]
    next_labels = torch.nn.functional.pad(labels[:, 1:], (0, 1), value=-100)
    learnt = next_labels != -100
    return {**inputs, "logits_to_keep": learnt, "shift_labels": next_labels[learnt]}


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
    and is not what `predict` runs; one shared function keeps both decoding alike. `generator` is
    what decodes: the model being trained, until the final scoring sets its CTranslate2 conversion.

    A task may batch training examples differently from evaluation's padded rows (packed into one
    sequence): `train_collator` then builds the training batches only.

    Evaluation gathers only the outputs the task reads (`read_outputs`), and `predict` (scoring a
    split after training) skips a generating task's teacher-forced loss pass, which nothing reads and
    which holds full-vocabulary logits for the batch.

    With gradient accumulation, the loss of each batch is scaled to the whole step by asking the model
    once whether it divides by the Trainer's `num_items_in_batch` (`loss_counts_items`): the stock
    Trainer assumes so of any model whose `forward` takes `**kwargs`, though BERT's heads, the
    project's own models and its loss functions average each batch alone, and their gradients came
    out `gradient_accumulation_steps` times too large.

    A causal LM's logits are projected only at the positions whose next token it learns
    (`at_labelled_positions`), once the first batch shows the model's loss is the same that way
    (`keeps_chosen_logits`).

    Where training unfused the attention (`training.cpu`), evaluation computes it with `inference_attention`.

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
        head_learning_rate: float | None = None,
        decay_ratio: float = 0.0,
        batch_dump: Path | None = None,
        read_outputs: tuple[str, ...] = ("logits",),
        inference_attention: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.lengths = lengths
        self.generates = generates
        self.train_collator = train_collator
        self.scaled_adafactor = scaled_adafactor
        self.head_learning_rate = head_learning_rate
        self.decay_ratio = decay_ratio
        self.batch_dump = batch_dump
        self.read_outputs = read_outputs
        self.inference_attention = inference_attention
        self.outputs_only = False
        self.generator: Any = None
        self.counts_items: bool | None = None
        self.logits_at_labels: bool | None = None

    def compute_loss(
        self,
        model: torch.nn.Module,
        inputs: dict[str, Any],
        return_outputs: bool = False,
        num_items_in_batch: torch.Tensor | int | None = None,
    ) -> torch.Tensor | tuple[torch.Tensor, Any]:
        if self._may_keep_logits(inputs):
            if self.logits_at_labels is None:
                self.logits_at_labels = keeps_chosen_logits(model, inputs)
            if self.logits_at_labels:
                inputs = at_labelled_positions(inputs)
        return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)

    def _may_keep_logits(self, inputs: dict[str, Any]) -> bool:
        """A batch whose labels the model's own loss reads, in one replica (DataParallel would split the flat
        `shift_labels` unlike the mask) and not already cut by context parallelism."""
        return (
            "labels" in inputs
            and "shift_labels" not in inputs
            and self.compute_loss_func is None
            and self.label_smoother is None
            and self.model_accepts_loss_kwargs
            and self.args.n_gpu <= 1
            and self.logits_at_labels is not False
        )

    def training_step(
        self, model: torch.nn.Module, inputs: dict[str, Any], num_items_in_batch: torch.Tensor | int | None = None
    ) -> torch.Tensor:
        if self.args.gradient_accumulation_steps > 1:
            if num_items_in_batch is not None and self.counts_items is None:
                self.counts_items = loss_counts_items(self, model, self._prepare_inputs(inputs))
            self.loss_is_scaled_for_ga = self.counts_items if num_items_in_batch is not None else None
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
        """The Trainer's optimizer, or T5's Adafactor (`scaled_adafactor`), with the head at its own rate.

        The Trainer's `optim="adafactor"` takes equal steps for every weight; T5's scales each by its RMS.
        """
        if self.optimizer is None and self.scaled_adafactor:
            trainable = [p for p in self.model.parameters() if p.requires_grad]
            self.optimizer = Adafactor(
                trainable,
                lr=self.args.learning_rate,
                relative_step=False,
                scale_parameter=True,
                weight_decay=self.args.weight_decay,
            )
        elif self.optimizer is None:
            super().create_optimizer(model)
            if self.head_learning_rate is not None:
                _give_head_its_rate(self.optimizer, self.model, self.head_learning_rate)
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
        self.outputs_only = True
        try:
            return super().predict(test_dataset, ignore_keys, metric_key_prefix)
        finally:
            self.compute_metrics = validation_metrics
            self.outputs_only = False

    def evaluation_loop(self, *args: Any, **kwargs: Any) -> Any:
        attention = self.inference_attention
        with attention_implementation(self.model, attention) if attention else contextlib.nullcontext():
            return super().evaluation_loop(*args, **kwargs)

    def prediction_step(
        self,
        model: torch.nn.Module,
        inputs: dict[str, torch.Tensor | Any],
        prediction_loss_only: bool,
        ignore_keys: list[str] | None = None,
    ) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
        ignore_keys = [*(ignore_keys or []), *(name for name in EXTRA_OUTPUTS if name not in self.read_outputs)]
        if not self.generates or prediction_loss_only:
            return super().prediction_step(model, inputs, prediction_loss_only, ignore_keys)
        loss = None if self.outputs_only else super().prediction_step(model, inputs, True, ignore_keys)[0]
        inputs = self._prepare_inputs(inputs)
        return loss, generation.generate_ids(self.generator or self.model, inputs), inputs.get("labels")


def _give_head_its_rate(optimizer: torch.optim.Optimizer, model: torch.nn.Module, rate: float) -> None:
    """Move the weights outside the pretrained backbone (`base_model`; under LoRA, the wrapped model's) into
    groups of their own at `rate`, before the scheduler reads each group's starting rate."""
    unwrapped = model.get_base_model() if hasattr(model, "get_base_model") else model
    backbone = {id(weight) for weight in unwrapped.base_model.parameters()}
    for group in list(optimizer.param_groups):
        head = [weight for weight in group["params"] if id(weight) not in backbone]
        if head:
            group["params"] = [weight for weight in group["params"] if id(weight) in backbone]
            optimizer.add_param_group({**{k: v for k, v in group.items() if k != "params"}, "params": head, "lr": rate})

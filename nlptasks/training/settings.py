"""What a recipe's `train` section and method become for the Trainer and for peft."""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import TrainingArguments

from nlptasks import adapters
from nlptasks.recipe import Recipe
from nlptasks.rundir import RunDir
from nlptasks.tasks.base import Task


def training_arguments(recipe: Recipe, run_dir: RunDir, task: Task) -> TrainingArguments:
    train = recipe.train
    precision = resolve_precision(train.precision)
    evaluating = train.eval_strategy != "no"
    return TrainingArguments(
        output_dir=str(run_dir.checkpoints),
        run_name=run_dir.root.name,
        num_train_epochs=train.epochs,
        max_steps=train.max_steps,
        per_device_train_batch_size=train.batch_size,
        per_device_eval_batch_size=train.eval_batch_size,
        gradient_accumulation_steps=train.gradient_accumulation_steps,
        learning_rate=train.learning_rate,
        weight_decay=train.weight_decay,
        warmup_steps=train.warmup_ratio,
        lr_scheduler_type=train.lr_scheduler,
        optim="sgd" if train.optimizer == "sgd" else "adamw_torch_fused",
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
        report_to=[name for name in train.report_to if name != "tensorboard"] or "none",
        dataloader_num_workers=train.num_workers,
        activation_checkpointing=train.gradient_checkpointing,
        torch_compile=train.compile,
        label_names=list(task.label_names),
    )


def adaptation(recipe: Recipe) -> adapters.Adaptation | None:
    if recipe.method == "full":
        return None
    return adapters.Adaptation(
        recipe.adapter,
        quantized=recipe.method == "qlora",
        compute_dtype=torch.bfloat16 if resolve_precision(recipe.train.precision) == "bf16" else torch.float32,
        gradient_checkpointing=recipe.train.gradient_checkpointing,
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

"""What happens around the training steps: the CSV log, TensorBoard, early stopping, heap trimming,
and committing an `--overwrite` at the first checkpoint."""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

from transformers import EarlyStoppingCallback, TrainerCallback, TrainingArguments
from transformers.integrations import TensorBoardCallback

from nlptasks import heap
from nlptasks.recipe import Recipe
from nlptasks.rundir import Claim, RunDir, write_atomic


def callbacks(recipe: Recipe, run_dir: RunDir, args: TrainingArguments, held: Claim) -> list[TrainerCallback]:
    """The callbacks a recipe asks for; TensorBoard in the main process only."""
    callbacks: list[TrainerCallback] = [CSVLogCallback(run_dir.logs / "metrics.csv"), CommitOnSave(held)]
    if args.process_index == 0 and "tensorboard" in recipe.train.report_to:
        from torch.utils.tensorboard import SummaryWriter

        callbacks.append(TensorBoardCallback(tb_writer=SummaryWriter(log_dir=str(run_dir.logs / "tensorboard"))))
    if recipe.train.early_stopping_patience:
        callbacks.append(EarlyStoppingCallback(early_stopping_patience=recipe.train.early_stopping_patience))
    if recipe.train.trim_memory_every:
        callbacks.append(TrimFreedMemory(recipe.train.trim_memory_every))
    return callbacks


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
    evaluation batches, and after any step or batch that leaves resident memory `growth` bytes above
    what the last trim left.

    Tensors of every size, as length-grouped batches make them, fragment glibc's heap: freed blocks
    stay resident because new ones do not fit them, and a long run's heap grows to many times its
    live memory. A trim costs page faults when the pages are used again, which is why it is not done
    every step; the growth bound catches the steps (the longest batches) that would otherwise leave
    gigabytes of freed pages resident until the next scheduled trim.
    """

    def __init__(self, every: int, growth: int = 2**30) -> None:
        self.every = every
        self.growth = growth
        self.calls = 0
        self.trim = heap.malloc_trim()
        self.left_by_last_trim = heap.resident_bytes()

    def on_step_end(self, args: TrainingArguments, state: Any, control: Any, **kwargs: Any) -> None:
        self._tick()

    def on_prediction_step(self, args: TrainingArguments, state: Any, control: Any, **kwargs: Any) -> None:
        self._tick()

    def _tick(self) -> None:
        self.calls += 1
        if self.trim is None:
            return
        if self.calls % self.every == 0 or heap.resident_bytes() > self.left_by_last_trim + self.growth:
            self.trim(0)
            self.left_by_last_trim = heap.resident_bytes()


class CommitOnSave(TrainerCallback):
    """The first checkpoint commits an `--overwrite`: the run it replaces is no longer needed."""

    def __init__(self, claim: Claim) -> None:
        self.claim = claim

    def on_save(self, args: TrainingArguments, state: Any, control: Any, **kwargs: Any) -> None:
        if state.is_world_process_zero:
            self.claim.commit()

"""The one training core: a recipe in, a run directory out, for every task and model family.

It is the `transformers` Trainer (accelerate underneath), so `accelerate launch` / `torchrun`
give multi-process training with no code here. What this package adds is what the Trainer
leaves to each example script: data and labels from the recipe, length-grouped batches with
dynamic padding, evaluation through the task's own decoding, resume, and the run directory.

    core.py        the run: claim the folder, data, model, train, score, publish
    trainer.py     the Trainer subclass (length grouping, generation at evaluation, divergence stop)
    callbacks.py   CSV/TensorBoard logs, early stopping, heap trimming, `--overwrite` commit
    evaluation.py  scoring through the task's decoding, calibration on validation
    settings.py    the recipe as TrainingArguments, the precision, the adapter method
    summary.py     parameter counts, footprint, `summary.md`
    untrained.py   methods with nothing to train (Lead-k, TextRank)
"""

from nlptasks.training.core import RunResult, checked_task, run
from nlptasks.training.evaluation import unseen_labels

__all__ = ["RunResult", "checked_task", "run", "unseen_labels"]

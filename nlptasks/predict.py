"""Prediction from a run directory: raw text in, JSON-ready answers out, in bounded memory.

Inputs stream through in chunks, so `predict` on a million lines holds one chunk at a time.
Within a chunk, features are batched shortest first so padding stays small.
"""

from __future__ import annotations

import inspect
import itertools
import json
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import datasets
import numpy as np
import torch

from nlptasks import models
from nlptasks.data import pad_batch
from nlptasks.errors import UserInputError
from nlptasks.recipe import Recipe, load_recipe
from nlptasks.rundir import RunDir
from nlptasks.tasks import task_for
from nlptasks.tasks.base import sorted_by_length


class Predictor:
    def __init__(self, run_dir: str | Path, batch_size: int = 64, chunk_size: int = 1024) -> None:
        self.run_dir = RunDir(Path(run_dir))
        if not self.run_dir.recipe.is_file() or not self.run_dir.model.is_dir():
            raise UserInputError(f"{run_dir}: not a finished run directory (needs recipe.yaml and model/)")
        self.recipe: Recipe = load_recipe(self.run_dir.recipe)
        self.task = task_for(self.recipe)
        self.model, self.tokenizer = models.load(self.run_dir.model, self.task)
        self.model.eval()
        self.id2label = self.model.config.id2label
        self.label2id = {label: i for i, label in self.id2label.items()}
        self.batch_size = batch_size
        self.chunk_size = chunk_size
        self._inputs = set(inspect.signature(self.model.forward).parameters)

    def predict(self, texts: str | Iterable[str]) -> list[dict[str, Any]]:
        """Predictions for one text or many, in input order."""
        return list(self.stream([texts] if isinstance(texts, str) else texts))

    def stream(self, texts: Iterable[str]) -> Iterator[dict[str, Any]]:
        iterator = iter(texts)
        while chunk := list(itertools.islice(iterator, self.chunk_size)):
            examples = self.task.examples_from_texts(chunk)
            yield from self._predict_examples(examples)

    def score(self, examples: datasets.Dataset) -> dict[str, float]:
        """The task's metrics on labelled examples."""
        return self.task.score(examples, self._decode(examples))

    def _predict_examples(self, examples: datasets.Dataset) -> Iterator[dict[str, Any]]:
        for example, prediction in zip(examples, self._decode(examples)):
            yield self.task.present(example, prediction)

    def _decode(self, examples: datasets.Dataset) -> list[Any]:
        features = sorted_by_length(self.task.featurize(examples, self.tokenizer, self.label2id))
        return self.task.decode(examples, features, self.logits(features), self.id2label)

    @torch.inference_mode()
    def logits(self, features: datasets.Dataset) -> np.ndarray:
        """Logits for every feature in order, padded to a common length for token tasks."""
        columns = [c for c in features.column_names if c in self._inputs and c != "labels"]
        rows = features.select_columns(columns)
        pad_values = self.task.pad_values(self.tokenizer)
        outputs: list[np.ndarray] = []
        for start in range(0, len(rows), self.batch_size):
            batch = pad_batch(list(rows.select(range(start, min(start + self.batch_size, len(rows))))), pad_values)
            outputs.extend(self.model(**batch).logits.float().numpy())
        return _stack_padded(outputs)


def _stack_padded(arrays: list[np.ndarray]) -> np.ndarray:
    if arrays[0].ndim == 1:
        return np.stack(arrays)
    length = max(a.shape[0] for a in arrays)
    stacked = np.zeros((len(arrays), length, arrays[0].shape[-1]), dtype=np.float32)
    for i, array in enumerate(arrays):
        stacked[i, : array.shape[0]] = array
    return stacked


def read_texts(lines: Iterable[str], source: str) -> Iterator[str]:
    """Texts from lines: a JSON object with a `text` field, or the line itself."""
    for number, line in enumerate(lines, 1):
        line = line.rstrip("\n")
        if not line.strip():
            continue
        if line.lstrip().startswith("{"):
            try:
                yield json.loads(line)["text"]
            except (json.JSONDecodeError, KeyError, TypeError):
                raise UserInputError(f"{source}:{number}: expected a JSON object with a 'text' field") from None
        else:
            yield line

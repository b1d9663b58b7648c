"""The Python API; the CLI is a thin layer over these functions.

import nlptasks
result = nlptasks.run("ner/minilm", {"train.epochs": 1}, model="minilm-l6")
predictor = nlptasks.load(result.run_dir)
predictor.predict("Angela Merkel visited Paris.")
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from nlptasks import training
from nlptasks.data import load_splits
from nlptasks.errors import UserInputError
from nlptasks.predict import Predictor
from nlptasks.recipe import DataConfig, Recipe, load_recipe
from nlptasks.training import RunResult


def run(
    recipe: str | Path | dict[str, Any] | Recipe, overrides: dict[str, Any] | None = None, **settings: Any
) -> RunResult:
    """Train and evaluate a recipe (a shipped name, a path, a dict or a Recipe).

    `overrides` uses dotted keys (`{"train.epochs": 1}`); keyword settings use `__` for the dot
    (`train__epochs=1`), so both spellings of the CLI's `--set` are available.
    """
    merged = {**(overrides or {}), **{key.replace("__", "."): value for key, value in settings.items()}}
    if isinstance(recipe, Recipe):
        recipe = recipe.model_dump(mode="json")
    return training.run(load_recipe(recipe, merged))


def load(run_dir: str | Path, **options: Any) -> Predictor:
    """A predictor for a finished run directory."""
    return Predictor(run_dir, **options)


def evaluate(run_dir: str | Path, split: str = "test", file: str | Path | None = None) -> dict[str, float]:
    """Metrics of a finished run on one of its recipe's splits, or on a labelled file (as `test`)."""
    predictor = Predictor(run_dir)
    data = predictor.recipe.data
    if file is not None:
        data = DataConfig(
            test_file=Path(file),
            max_length=data.max_length,
            stride=data.stride,
            text_column=data.text_column,
            label_column=data.label_column,
            columns=data.columns,
        )
        split = "test"
    splits = load_splits(data, predictor.task)
    if split not in splits:
        raise UserInputError(f"split '{split}' is not in the run's data; it has {sorted(splits)}")
    return predictor.score(splits[split])

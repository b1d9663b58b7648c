"""Experiment tracking beyond the run directory: the Trainer's integrations (`train.report_to`) checked
before any work, and an MLflow run that holds the whole run, not only its training loop.

The Trainer's `MLflowCallback` logs training and validation losses and metrics into an MLflow run it
finds active; the run is opened here, around training, so that the final scores of every split, the
recipe and the run's reports (summary, model card, error analysis, reliability diagrams) land in the
same MLflow run after the Trainer is done with it. A resumed training process files a new MLflow run
that names the one it continues, since MLflow refuses to change a logged parameter (epochs, for one).
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from nlptasks.errors import RecipeError
from nlptasks.recipe import Recipe, flat_settings
from nlptasks.rundir import RunDir, write_atomic

log = logging.getLogger("nlptasks")
PACKAGES = {"mlflow": "mlflow-skinny", "wandb": "wandb", "comet_ml": "comet-ml", "clearml": "clearml"}
"""Integration -> the pip package it needs, where the names differ or a hint helps."""
RUN_RECORD = "mlflow.json"
"""In `logs/`: the MLflow run the last training process filed, which a resumed one names as its parent."""
Finish = Callable[[dict[str, dict[str, float]]], None]


def check_integrations(recipe: Recipe) -> None:
    """Fail before any work when a `train.report_to` integration's package is not installed."""
    from transformers.integrations import get_available_reporting_integrations

    available = set(get_available_reporting_integrations()) | {"tensorboard"}
    for name in recipe.train.report_to:
        if name not in available:
            raise RecipeError(
                f"train.report_to: '{name}' needs its package: pip install {PACKAGES.get(name, name)}"
                + (" (or the project's `track` extra)" if name == "mlflow" else "")
            )


@contextmanager
def tracked(recipe: Recipe, run_dir: RunDir, main: bool) -> Iterator[Finish]:
    """Around a run: where MLflow is asked for (main process only), an active MLflow run for the Trainer's
    callback to log into; yields the function that files the final metrics and reports before it closes."""
    if not main or "mlflow" not in recipe.train.report_to:
        yield lambda metrics: None
        return
    import mlflow

    uri = _tracking_uri(recipe)
    mlflow.set_tracking_uri(uri)
    mlflow.set_experiment(recipe.train.experiment or os.environ.get("MLFLOW_EXPERIMENT_NAME") or recipe.task)
    record = run_dir.logs / RUN_RECORD
    previous = json.loads(record.read_text()) if record.is_file() else {}
    with mlflow.start_run(run_name=run_dir.root.name) as active:
        write_atomic(record, json.dumps({"run_id": active.info.run_id, "tracking_uri": uri}) + "\n")
        mlflow.set_tags(
            {
                "nlptasks.run_dir": str(run_dir.root.resolve()),
                "nlptasks.task": recipe.task,
                "nlptasks.model": recipe.model,
                "nlptasks.method": recipe.method,
                **({"nlptasks.resumes": previous["run_id"]} if previous.get("tracking_uri") == uri else {}),
            }
        )
        mlflow.log_params(
            {f"recipe.{key}": value for key, value in flat_settings(recipe.model_dump(mode="json")).items()}
        )
        log.info("tracking: MLflow run %s in %s", active.info.run_id, uri)
        yield lambda metrics: _file_results(mlflow, run_dir, metrics)


def _tracking_uri(recipe: Recipe) -> str:
    """The configured store; a file store (which MLflow keeps only on request now) is allowed when asked for."""
    uri = recipe.train.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{Path.cwd() / 'mlflow.db'}"
    if uri.startswith("file:") or "://" not in uri:
        os.environ["MLFLOW_ALLOW_FILE_STORE"] = "true"
    return uri


def _file_results(mlflow: Any, run_dir: RunDir, metrics: dict[str, dict[str, float]]) -> None:
    """Every split's final metrics as `<split>_<metric>`, and the run's reports as artifacts."""
    mlflow.log_metrics(
        {
            _metric_key(f"{split}_{name}"): float(value)
            for split, values in metrics.items()
            for name, value in values.items()
            if isinstance(value, int | float)
        }
    )
    reports = [run_dir.recipe, run_dir.metrics, run_dir.summary, run_dir.model / "README.md"]
    reports += sorted(run_dir.root.glob("errors_*.json")) + sorted(run_dir.root.glob("reliability_*"))
    for path in reports:
        if path.is_file():
            mlflow.log_artifact(str(path), artifact_path="model" if path.parent == run_dir.model else None)


def _metric_key(name: str) -> str:
    """MLflow takes letters, digits and `_-. /` in names; a label's other characters become `_`."""
    return re.sub(r"[^\w\-. /]", "_", name)

"""Hyperparameter search over any recipe with Optuna: every trial a normal run directory, the best recipe a
file `nlptasks run` takes as it is.

    <output>/study.db            Optuna's storage (SQLite): a killed search continues from it, and several
                                 processes (`workers`) share it
    <output>/trials/trial-NNN/   one run directory per trial (`nlptasks compare <output>/trials/*`)
    <output>/best.yaml           the best trial's recipe, running into <output>/best
    <output>/trials.md, .csv     every trial: state, validation metric, parameters, test scores, time
    <output>/history.png         the metric per trial and the best so far; importance.png, what mattered

Trials are scored on the recipe's validation metric (`train.metric_for_best_model`, else the task's), never
on test. The TPE sampler proposes; a pruner (median, or Hyperband) stops a trial whose validation score at an
evaluation falls behind the other trials' at the same evaluation, so evaluate more than once per trial
(`--set train.eval_strategy=steps train.eval_steps=N`) for pruning to save time. A trial that a kill left
running is marked failed once its heartbeat stops and retried under its own folder, where it resumes from
its last checkpoint.
"""

from __future__ import annotations

import contextlib
import csv
import io
import logging
import os
import subprocess
import sys
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import model_validator
from transformers import TrainerCallback

from nlptasks import catalog, sharding, training
from nlptasks.config import Section, validate_section
from nlptasks.errors import RecipeError, TrainingDiverged, UserInputError
from nlptasks.recipe import Recipe, dump_recipe, flat_settings, load_recipe
from nlptasks.rundir import write_atomic
from nlptasks.tasks import headline_scores, task_for

log = logging.getLogger("nlptasks")
STUDY = "nlptasks-tune"
SEARCH_FILE = "search.yaml"
"""In the output folder: the searched recipe, space, trial count and pruner, which worker processes read."""
HEARTBEAT_SECONDS = 30
PRUNERS = ("median", "hyperband", "none")


class Parameter(Section):
    """One searched setting: `choices`, or a `low`-`high` range (integers when both are, `log` for a log scale)."""

    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = None
    choices: list[Any] | None = None

    @model_validator(mode="after")
    def _a_range_or_choices(self) -> Parameter:
        if (self.choices is None) == (self.low is None or self.high is None):
            raise ValueError("give either choices: [...] or both low and high")
        if self.low is not None and self.high is not None and self.low > self.high:
            raise ValueError(f"low {self.low} is above high {self.high}")
        return self

    @property
    def integers(self) -> bool:
        return all(isinstance(value, int) for value in (self.low, self.high))

    def suggest(self, trial: Any, key: str) -> Any:
        if self.choices is not None:
            return trial.suggest_categorical(key, self.choices)
        if self.integers:
            return trial.suggest_int(key, self.low, self.high, step=int(self.step or 1), log=self.log)
        return trial.suggest_float(key, self.low, self.high, step=self.step, log=self.log)

    def holds(self, value: Any) -> bool:
        if self.choices is not None:
            return value in self.choices
        return self.low <= value <= self.high and (not self.integers or isinstance(value, int))


def default_space(recipe: Recipe) -> dict[str, Parameter]:
    """What usually matters for the recipe's kind of training, centred on the recipe's own values.

    Pretrained weights take small learning rates, LoRA and weights trained from scratch larger ones; an
    adapter's rank and scale are searched with it.
    """
    train = recipe.train
    family = catalog.model_family(recipe.model)
    if recipe.method != "full":
        rates = (5e-5, 5e-3)
    elif family is not None and family.fresh:
        rates = (1e-4, 1e-2)
    else:
        rates = (1e-5, 3e-4)
    space = {
        "train.learning_rate": Parameter(low=rates[0], high=rates[1], log=True),
        "train.batch_size": Parameter(
            choices=sorted({max(1, train.batch_size // 2), train.batch_size, train.batch_size * 2})
        ),
        "train.warmup_ratio": Parameter(low=0.0, high=0.2),
        "train.epochs": Parameter(choices=sorted({max(1.0, train.epochs / 2), train.epochs, train.epochs * 2})),
    }
    if recipe.method != "full":
        space["adapter.r"] = Parameter(choices=[4, 8, 16, 32])
        space["adapter.alpha"] = Parameter(choices=[8, 16, 32, 64])
    return space


def read_space(path: Path, recipe: Recipe) -> dict[str, Parameter]:
    """The default space changed by a YAML file of `dotted.key: {low, high, log, step} | {choices}`; `key: null`
    drops a default. Each key must be a recipe setting, checked by setting it as a trial would."""
    try:
        entries = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError) as err:
        raise UserInputError(f"--space {path}: cannot read it ({err})") from None
    if not isinstance(entries, dict):
        raise UserInputError(
            f"--space {path}: expected a mapping of recipe keys to ranges, got {type(entries).__name__}"
        )
    space = default_space(recipe)
    for key, entry in entries.items():
        if entry is None:
            space.pop(key, None)
        else:
            space[key] = validate_section(Parameter, entry, f"{path}: {key}")
    return space


def checked_space(recipe: Recipe, space: dict[str, Parameter]) -> None:
    """Every key a recipe setting that takes the searched values (an unknown key fails with "did you mean")."""
    base = recipe.model_dump(mode="json")
    for key, parameter in space.items():
        values = parameter.choices if parameter.choices is not None else [parameter.low, parameter.high]
        for value in values:
            try:
                load_recipe(base, {key: value})
            except RecipeError as err:
                raise RecipeError(f"search space, {key} = {value!r}: {err}") from None


@dataclass
class TuneResult:
    best_recipe: Path
    best_value: float
    best_params: dict[str, Any]
    trials: int


def tune(
    recipe: Recipe,
    trials: int,
    output: Path,
    space: dict[str, Parameter] | None = None,
    pruner: str = "median",
    workers: int = 1,
) -> TuneResult:
    """Run the search until the study holds `trials` finished trials (those of earlier, killed runs count).

    `workers` > 1 runs that many processes on the shared storage, each with its share of the cores and its
    own sampler seed (the recipe's `train.seed` plus its index), so they propose different trials.
    """
    if pruner not in PRUNERS:
        raise UserInputError(f"--pruner {pruner}: choose one of {', '.join(PRUNERS)}")
    training.checked_task(recipe)
    if "validation" not in recipe.eval.splits:
        raise RecipeError("tune scores trials on validation: add it to eval.splits")
    space = space if space is not None else default_space(recipe)
    checked_space(recipe, space)
    output.mkdir(parents=True, exist_ok=True)
    search = {
        "recipe": recipe.model_dump(mode="json"),
        "space": {key: parameter.model_dump(exclude_defaults=True) for key, parameter in space.items()},
        "trials": trials,
        "pruner": pruner,
    }
    study = _study(recipe, space, output, pruner, worker_index=0)  # before the workers, which continue it
    write_atomic(output / SEARCH_FILE, yaml.safe_dump(search, sort_keys=False))
    helpers = _start_workers(output, workers)
    _search(study, recipe, space, trials, output)
    for helper in helpers:
        if helper.wait() != 0:
            log.warning("tune: worker process %s exited with status %d", helper.args, helper.returncode)
    return _report(study, recipe, output)


def _search(study: Any, recipe: Recipe, space: dict[str, Parameter], trials: int, output: Path) -> None:
    """One process's share of the search: trials until the study holds `trials` finished ones."""
    import optuna

    metric = recipe.train.metric_for_best_model or task_for(recipe).main_metric
    finished = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
    remaining = trials - len(study.get_trials(deepcopy=False, states=finished))
    if remaining <= 0:
        return
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study.optimize(
        lambda trial: _objective(trial, recipe, space, metric, output),
        n_trials=remaining,  # this process's bound; the callback counts every process's trials
        callbacks=[optuna.study.MaxTrialsCallback(trials, states=finished)],
        catch=(RuntimeError, TrainingDiverged),
    )


def _start_workers(output: Path, workers: int) -> list[subprocess.Popen]:
    """`workers - 1` more processes on the search (`python -m nlptasks.tune OUTPUT INDEX`), each, and this one,
    with its share of the cores."""
    if workers <= 1:
        return []
    import torch

    share = max(1, sharding.usable_cores() // workers)
    torch.set_num_threads(share)
    env = {**os.environ, "OMP_NUM_THREADS": str(share)}
    return [
        subprocess.Popen([sys.executable, "-m", "nlptasks.tune", str(output), str(index)], env=env)
        for index in range(1, workers)
    ]


def _study(recipe: Recipe, space: dict[str, Parameter], output: Path, pruner: str, worker_index: int) -> Any:
    """The search's study, created or continued; a folder holding another recipe's search is refused.

    A new study's first trial is the recipe as written (its values that lie in the space), so the search
    reports the recipe beside what it found, and never ends worse than it on validation.
    """
    import optuna

    with _experimental_features():
        storage = optuna.storages.RDBStorage(
            f"sqlite:///{output.resolve() / 'study.db'}",
            heartbeat_interval=HEARTBEAT_SECONDS,
            grace_period=3 * HEARTBEAT_SECONDS,
            failed_trial_callback=optuna.storages.RetryFailedTrialCallback(max_retry=1),
        )
    pruners = {
        "median": optuna.pruners.MedianPruner(n_startup_trials=3),
        "hyperband": optuna.pruners.HyperbandPruner(min_resource=1),
        "none": optuna.pruners.NopPruner(),
    }
    direction = "minimize" if (recipe.train.metric_for_best_model or "") == "loss" else "maximize"
    study = optuna.create_study(
        study_name=STUDY,
        storage=storage,
        sampler=optuna.samplers.TPESampler(seed=recipe.train.seed + worker_index),
        pruner=pruners[pruner],
        direction=direction,
        load_if_exists=True,
    )
    searched = dump_recipe(recipe)
    if "recipe" not in study.user_attrs:
        study.set_user_attr("recipe", searched)
        study.enqueue_trial(_recipe_values(recipe, space))
    elif study.user_attrs["recipe"] != searched:
        raise UserInputError(f"{output}: holds a search over another recipe; choose another --output")
    return study


@contextlib.contextmanager
def _experimental_features() -> Iterator[None]:
    """Optuna's heartbeat and retry, stable for years, still warn that they are experimental."""
    import optuna

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        yield


def _recipe_values(recipe: Recipe, space: dict[str, Parameter]) -> dict[str, Any]:
    settings = flat_settings(recipe.model_dump(mode="json"))
    return {
        key: settings[key] for key, parameter in space.items() if key in settings and parameter.holds(settings[key])
    }


class ReportToTrial(TrainerCallback):
    """Each evaluation's validation score to the trial, by evaluation count (comparable across batch sizes);
    stops the run when the pruner says so."""

    def __init__(self, trial: Any, metric: str) -> None:
        self.trial = trial
        self.metric = metric
        self.evaluations = 0

    def on_evaluate(
        self, args: Any, state: Any, control: Any, metrics: dict[str, float] | None = None, **kwargs: Any
    ) -> None:
        import optuna

        value = (metrics or {}).get(f"eval_{self.metric}")
        if value is None:
            return
        self.evaluations += 1
        self.trial.set_user_attr("steps", [state.global_step, state.max_steps])
        self.trial.report(value, self.evaluations)
        if self.trial.should_prune():
            raise optuna.TrialPruned(f"validation {self.metric} {value:.4f} at evaluation {self.evaluations}")


def _objective(trial: Any, recipe: Recipe, space: dict[str, Parameter], metric: str, output: Path) -> float:
    import optuna

    params = {key: parameter.suggest(trial, key) for key, parameter in space.items()}
    with _experimental_features():
        retried = optuna.storages.RetryFailedTrialCallback.retried_trial_number(
            trial.study.get_trials(deepcopy=False)[trial.number]
        )
    folder = output / "trials" / f"trial-{retried if retried is not None else trial.number:03d}"
    trial.set_user_attr("run_dir", str(folder))
    trial_recipe = load_recipe(recipe.model_dump(mode="json"), {**params, "output_dir": str(folder)})
    result = training.run(trial_recipe, callbacks=[ReportToTrial(trial, metric)])
    scores = {
        split: headline_scores(recipe.task, values) for split, values in result.metrics.items() if split != "train"
    }
    trial.set_user_attr("scores", scores)
    trial.set_user_attr("train_seconds", result.metrics["train"].get("wall_seconds"))
    return result.metrics["validation"][metric]


def _report(study: Any, recipe: Recipe, output: Path) -> TuneResult:
    """best.yaml, the trials table and plots, from the study as stored (every process's trials)."""
    import optuna

    finished = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    if not finished:
        raise UserInputError(f"{output}: no trial finished; see each trial's logs/train.log under {output / 'trials'}")
    best = study.best_trial
    best_recipe = load_recipe(recipe.model_dump(mode="json"), {**best.params, "output_dir": str(output / "best")})
    write_atomic(output / "best.yaml", dump_recipe(best_recipe))
    rows = _trial_rows(study)
    write_atomic(output / "trials.csv", _csv(rows))
    write_atomic(output / "trials.md", _markdown(rows, best.number))
    _plot(study, output)
    return TuneResult(output / "best.yaml", best.value, best.params, len(study.trials))


def _trial_rows(study: Any) -> list[dict[str, Any]]:
    rows = []
    for trial in study.trials:
        scores = trial.user_attrs.get("scores", {})
        row = {
            "trial": trial.number,
            "state": trial.state.name.lower(),
            "value": trial.value if trial.value is not None else "",
            **trial.params,
            **{f"{split} {name}": value for split, values in scores.items() for name, value in values.items()},
            "steps": "{} of {}".format(*trial.user_attrs["steps"]) if "steps" in trial.user_attrs else "",
            "seconds": round(trial.duration.total_seconds()) if trial.duration else "",
            "run_dir": trial.user_attrs.get("run_dir", ""),
        }
        rows.append(row)
    return rows


def _csv(rows: list[dict[str, Any]]) -> str:
    columns = list(dict.fromkeys(key for row in rows for key in row))
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, columns)
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def _markdown(rows: list[dict[str, Any]], best: int) -> str:
    columns = [key for key in dict.fromkeys(key for row in rows for key in row) if key != "run_dir"]
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        cells = [_cell(row.get(column, "")) for column in columns]
        lines.append("| " + " | ".join(f"**{c}**" if row["trial"] == best and c else c for c in cells) + " |")
    return "\n".join(lines) + "\n"


def _cell(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _plot(study: Any, output: Path) -> None:
    """history.png (each trial's validation score, the best so far) and, with two finished trials or more,
    importance.png (Optuna's fANOVA importance of each parameter)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import optuna

    scored = [t for t in study.trials if t.value is not None]
    figure, axes = plt.subplots(figsize=(6, 3.5))
    axes.scatter([t.number for t in scored], [t.value for t in scored], label="trial")
    best = max if study.direction == optuna.study.StudyDirection.MAXIMIZE else min
    running = [best(t.value for t in scored[: i + 1]) for i in range(len(scored))]
    axes.step([t.number for t in scored], running, where="post", color="tab:red", label="best so far")
    axes.set_xlabel("trial")
    axes.set_ylabel("validation metric")
    axes.legend()
    figure.tight_layout()
    figure.savefig(output / "history.png", dpi=120)
    plt.close(figure)
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    if len(complete) < 2 or not complete[0].params:
        return
    importances = optuna.importance.get_param_importances(study)
    figure, axes = plt.subplots(figsize=(6, 0.5 + 0.4 * len(importances)))
    axes.barh(list(importances)[::-1], list(importances.values())[::-1])
    axes.set_xlabel("importance (fANOVA)")
    figure.tight_layout()
    figure.savefig(output / "importance.png", dpi=120)
    plt.close(figure)


def _worker(output: Path, index: int) -> None:
    """A worker process's search, from the settings the first process wrote."""
    search = yaml.safe_load((output / SEARCH_FILE).read_text())
    recipe = load_recipe(search["recipe"])
    space = {key: validate_section(Parameter, entry, key) for key, entry in search["space"].items()}
    study = _study(recipe, space, output, search["pruner"], worker_index=index)
    _search(study, recipe, space, search["trials"], output)


if __name__ == "__main__":
    _worker(Path(sys.argv[1]), int(sys.argv[2]))

"""Side-by-side reports of finished runs: one table of metrics and costs, learning curves, per-class scores.

`compare(["runs/ner-bilstm", "ner/minilm"], "report/")` reads run directories as they are and
runs recipes first. The report is `report.md` (the source), `report.html` (the same, rendered by
`markdown`, plots inline) and PNGs beside them.
"""

from __future__ import annotations

import csv
import html
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nlptasks import api
from nlptasks.errors import UserInputError
from nlptasks.recipe import Recipe, load_recipe, parse_overrides
from nlptasks.rundir import RunDir, write_atomic
from nlptasks.tasks import TASKS, headline_scores

REPORT_SPLITS = ("test", "validation")
"""The split a run's metrics are reported on: the first of these it has."""
COSTS = (
    ("train_runtime", "train s", "{:.0f}"),
    ("train_samples_per_second", "samples/s", "{:.1f}"),
    ("trainable_parameters", "trainable params", "{:,.0f}"),
    ("peak_rss_megabytes", "peak RSS MB", "{:,.0f}"),
    ("model_megabytes", "model MB", "{:.1f}"),
)
PER_CLASS_PREFIX = "f1_"
"""Per-class (classification) and per-entity-type (NER) F1 keys in metrics.json."""


@dataclass
class FinishedRun:
    name: str
    folder: Path
    recipe: Recipe
    metrics: dict[str, dict[str, float]]

    @property
    def split(self) -> str | None:
        return next((split for split in REPORT_SPLITS if split in self.metrics), None)

    @property
    def scores(self) -> dict[str, float]:
        return self.metrics.get(self.split, {}) if self.split else {}

    @property
    def selection_metric(self) -> str:
        """The validation metric that picked the run's best checkpoint."""
        return self.recipe.train.metric_for_best_model or TASKS[self.recipe.task].main_metric


def compare(
    sources: Sequence[str | Path], output: str | Path, overrides: list[str] | None = None, overwrite: bool = False
) -> Path:
    """Run the recipes among `sources` (`overwrite`: their run directories afresh), read the run directories,
    and write the report into `output`."""
    if not sources:
        raise UserInputError("compare: give at least one run directory or recipe")
    runs = [_finished_run(source, overrides, overwrite) for source in sources]
    folder = Path(output)
    folder.mkdir(parents=True, exist_ok=True)
    curves = {run.folder: _curves(run) for run in runs}
    plots = [plot for wanted in ("loss", "eval") if (plot := _plot_curves(runs, curves, wanted, folder))]
    text = _report(runs, plots)
    write_atomic(folder / "report.md", text)
    write_atomic(folder / "report.html", _html(text))
    return folder


def _finished_run(source: str | Path, overrides: list[str] | None, overwrite: bool) -> FinishedRun:
    path = Path(source)
    if not (path / "recipe.yaml").is_file():
        path = api.run(str(source), parse_overrides(overrides), overwrite=overwrite).run_dir
    run = RunDir.read(path)
    if not run.metrics.is_file():
        raise UserInputError(f"compare: {path} has no metrics.json (an unfinished run?)")
    return FinishedRun(path.name, run.root, load_recipe(run.recipe), run.read_metrics())


def _report(runs: list[FinishedRun], plots: list[Path]) -> str:
    lines = ["# Comparison", "", _metrics_table(runs), ""]
    per_class = _per_class_table(runs)
    if per_class:
        lines += ["## Per class / entity type (F1)", "", per_class, ""]
    errors = _errors_table(runs)
    if errors:
        lines += ["## Errors (each run's report split, `errors_<split>.json`)", "", errors, ""]
    for plot in plots:
        lines += [f"![{plot.stem}]({plot.name})", ""]
    lines += ["## Runs", ""]
    lines += [f"- `{run.name}`: `{run.folder}` ({run.recipe.description or run.recipe.task})" for run in runs]
    return "\n".join(lines) + "\n"


def _metrics_table(runs: list[FinishedRun]) -> str:
    """A row per run: its task's headline metrics (a column each, across the runs' tasks) and its costs."""
    metric_names = list(dict.fromkeys(name for run in runs for name in headline_scores(run.recipe.task, run.scores)))
    header = ["run", "task", "model", "method", "split", *metric_names, *(label for _, label, _ in COSTS)]
    rows = []
    for run in runs:
        train = run.metrics.get("train", {})
        rows.append(
            [run.name, run.recipe.task, run.recipe.model, run.recipe.method, run.split or "–"]
            + [_number(run.scores.get(name), "{:.4f}") for name in metric_names]
            + [_number(train.get(key), style) for key, _, style in COSTS]
        )
    return _table(header, rows)


def _per_class_table(runs: list[FinishedRun]) -> str:
    classes = list(dict.fromkeys(k for run in runs for k in run.scores if k.startswith(PER_CLASS_PREFIX)))
    if not classes:
        return ""
    rows = [
        [name.removeprefix(PER_CLASS_PREFIX)] + [_number(run.scores.get(name), "{:.4f}") for run in runs]
        for name in classes
    ]
    return _table(["class", *(run.name for run in runs)], rows)


def _errors_table(runs: list[FinishedRun]) -> str:
    """Every count and score of the runs' error analyses, a row each, a column per run."""
    found = {}
    for run in runs:
        path = run.folder / f"errors_{run.split}.json"
        found[run.name] = flat_numbers(json.loads(path.read_text())) if path.is_file() else {}
    keys = list(dict.fromkeys(key for numbers in found.values() for key in numbers))
    if not keys:
        return ""
    rows = [[key] + [_number(found[run.name].get(key), "{:.4g}") for run in runs] for key in keys]
    return _table(["error", *(run.name for run in runs)], rows)


def flat_numbers(value: Any, prefix: str = "") -> dict[str, float]:
    """The numbers in an error analysis by dotted path (`by_type.LOC.missed`); a row of a list is named by its
    texts (`bleu_by_source_length.0-10.bleu`, `confused.neg / pos.count`); examples left out."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return {prefix: float(value)}
    if isinstance(value, list):
        value = {
            " / ".join(v for v in row.values() if isinstance(v, str)): {
                k: v for k, v in row.items() if not isinstance(v, str)
            }
            for row in value
            if isinstance(row, dict)
        }
    if not isinstance(value, dict):
        return {}
    numbers: dict[str, float] = {}
    for key, item in value.items():
        if key != "examples":
            numbers.update(flat_numbers(item, f"{prefix}.{key}" if prefix else str(key)))
    return numbers


def _number(value: float | None, style: str) -> str:
    return "–" if value is None else style.format(value)


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows])


def _curves(run: FinishedRun) -> dict[str, list[tuple[float, float]]]:
    """(epoch, value) series from the run's `logs/metrics.csv`: the training loss and the validation
    metrics worth a curve (the model-selection metric and the task's headline metrics)."""
    path = RunDir(run.folder).logs / "metrics.csv"
    series: dict[str, list[tuple[float, float]]] = {}
    if not path.is_file():
        return series
    metrics = (run.selection_metric, *TASKS[run.recipe.task].headline_metrics)
    wanted = {"loss", *(f"eval_{name}" for name in metrics)}
    with path.open(encoding="utf-8") as handle:
        for row in csv.DictReader(handle):
            if row["name"] in wanted and row["epoch"] and row["value"]:
                series.setdefault(row["name"], []).append((float(row["epoch"]), float(row["value"])))
    return series


def _plot_curves(
    runs: list[FinishedRun], curves: dict[Path, dict[str, list[tuple[float, float]]]], wanted: str, folder: Path
) -> Path | None:
    """One PNG of every run's training loss, or of its main validation metric, against epochs.

    Drawn on a bare `Figure`: pyplot (and its global backend) stays the caller's, inline plots in notebooks too.
    """
    from matplotlib.figure import Figure

    figure = Figure(figsize=(7, 4))
    axes = figure.subplots()
    drawn = False
    for run in runs:
        series = curves[run.folder]
        key = "loss" if wanted == "loss" else _main_eval_key(run, series)
        if key in series:
            epochs, values = zip(*series[key])
            axes.plot(epochs, values, marker="" if wanted == "loss" else "o", label=f"{run.name} ({key})")
            drawn = True
    if not drawn:
        return None
    axes.set_xlabel("epoch")
    axes.set_ylabel("training loss" if wanted == "loss" else "validation metric")
    axes.legend(fontsize=8)
    axes.grid(alpha=0.3)
    path = folder / ("learning_curves.png" if wanted == "loss" else "validation_curves.png")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    return path


def _main_eval_key(run: FinishedRun, series: dict[str, Any]) -> str:
    wanted = f"eval_{run.selection_metric}"
    return wanted if wanted in series else next((name for name in series if name.startswith("eval_")), "")


def _html(markdown_text: str) -> str:
    import markdown

    body = markdown.markdown(markdown_text, extensions=["tables"])
    style = (
        "body{font-family:sans-serif;max-width:72em;margin:2em auto}table{border-collapse:collapse}"
        "td,th{border:1px solid #ccc;padding:.25em .6em;text-align:right}img{max-width:100%}"
    )
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape('nlptasks comparison')}</title>"
        f"<style>{style}</style></head><body>{body}</body></html>\n"
    )

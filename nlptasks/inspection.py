"""`nlptasks inspect`: what a recipe's data holds, read as `run` reads it, before any training.

The splits come from `load_splits` with the recipe's data settings (rows failing the task's checks
are listed with their reason, as `bad_rows: skip` would drop them) and the tokenizer from the model
the recipe builds. Each task says what is special about its data (`Task.input_text`, `label_counts`,
`data_problems`, `cut_targets`); everything else is the same for every task: lengths against
`max_length`, inputs that become several windows, labels only evaluation splits have, and
duplicates within and across splits, exact and after normalising case, whitespace and punctuation.
"""

from __future__ import annotations

import json
import re
import tempfile
import unicodedata
from collections import Counter
from itertools import combinations
from pathlib import Path
from typing import Any

import datasets
import numpy as np

from nlptasks import catalog, models
from nlptasks.data import load_splits, row_errors
from nlptasks.recipe import Recipe
from nlptasks.tasks import task_for
from nlptasks.tasks.base import Task
from nlptasks.training.evaluation import unseen_labels

EXAMPLES = 3
"""Examples shown per finding."""
PERCENTILES = (50, 90, 95, 99)
UNBOUNDED = 10**6
"""A `max_length` no input reaches: the tokenizer's own length of every input, uncut."""


def inspect_data(recipe: Recipe, timed_steps: int = 0) -> dict[str, Any]:
    """The report on a recipe's data (JSON-ready); `warnings` lists what deserves a look before training."""
    task = task_for(recipe)
    skipping = recipe.data.model_copy(update={"bad_rows": "skip"})
    splits = load_splits(skipping, task)
    bad_rows = row_errors(skipping, task)
    labels = task.label_list(splits["train"])
    _, tokenizer = models.build(recipe.model, recipe.model_args, task, labels, splits["train"])
    uncut = task_for(recipe.model_copy(update={"data": recipe.data.model_copy(update={"max_length": UNBOUNDED})}))
    uncut.use_model_family(catalog.resolve_model(recipe.model).family)
    label2id = {label: i for i, label in enumerate(labels)}
    report: dict[str, Any] = {"recipe": recipe.name or "", "max_length": recipe.data.max_length, "splits": {}}
    for name, split in splits.items():
        known = labels if name != "train" else None
        report["splits"][name] = _split_report(task, uncut, split, tokenizer, label2id, known)
        errors = bad_rows.get(name, [])
        report["splits"][name]["bad_rows"] = {"count": len(errors), "examples": errors[:EXAMPLES]}
    report["leakage"] = leakage({name: [task.input_text(row) for row in split] for name, split in splits.items()})
    if timed_steps:
        report["time"] = _timed_steps(recipe, timed_steps, len(splits["train"]))
    report["warnings"] = warnings(report)
    return report


def _split_report(
    task: Task,
    uncut: Task,
    split: datasets.Dataset,
    tokenizer: Any,
    label2id: dict[str, int],
    train_labels: list[str] | None,
) -> dict[str, Any]:
    """One split: rows, labels, lengths in tokens against `max_length`, windows, cut targets, suspect rows."""
    counts = task.label_counts(split)
    lengths = _lengths(uncut, split, tokenizer, label2id)
    windows = Counter(task.featurize(split, tokenizer, label2id)["example_index"])
    problems = task.data_problems(split)
    report = {
        "rows": len(split),
        "labels": dict(counts.most_common()),
        "imbalance": max(counts.values()) / min(counts.values()) if counts else None,
        "length_tokens": _percentiles(lengths),
        "length_histogram": _histogram(lengths),
        "over_max_length": int(sum(length > task.max_length for length in lengths)),
        "several_windows": sum(1 for count in windows.values() if count > 1),
        "cut_targets": task.cut_targets(split, tokenizer),
        "problems": {kind: {"count": len(rows), "examples": rows[:EXAMPLES]} for kind, rows in problems.items()},
    }
    if train_labels is not None:
        report["unseen_labels"] = unseen_labels(task, split, train_labels)
    return report


def _lengths(uncut: Task, split: datasets.Dataset, tokenizer: Any, label2id: dict[str, int]) -> list[int]:
    """Each input's length in tokens as the task encodes it (special tokens, prompt, question), never cut."""
    from transformers.utils import logging as transformers_logging

    verbosity = transformers_logging.get_verbosity()
    transformers_logging.set_verbosity_error()  # "longer than the model's maximum": that is what is measured
    try:
        features = uncut.featurize(split, tokenizer, label2id)
    finally:
        transformers_logging.set_verbosity(verbosity)
    lengths = [0] * len(split)
    for example, ids in zip(features["example_index"], features["input_ids"]):
        lengths[example] = max(lengths[example], len(ids))
    return lengths


def _percentiles(lengths: list[int]) -> dict[str, float]:
    if not lengths:
        return {}
    values = np.asarray(lengths)
    shares = {f"p{p}": float(np.percentile(values, p)) for p in PERCENTILES}
    return {**shares, "max": int(values.max()), "mean": float(values.mean())}


def _histogram(lengths: list[int], bins: int = 20) -> list[list[float]]:
    """[left edge, count] per bin."""
    if not lengths:
        return []
    counts, edges = np.histogram(lengths, bins=bins)
    return [[float(edge), int(count)] for edge, count in zip(edges, counts)]


def normalised(text: str) -> str:
    """The text with case, runs of whitespace and punctuation gone: how near-duplicates are matched."""
    kept = "".join(" " if unicodedata.category(char).startswith("P") else char for char in text.casefold())
    return re.sub(r"\s+", " ", kept).strip()


def leakage(texts: dict[str, list[str]]) -> dict[str, Any]:
    """Duplicated inputs within each split and shared across each pair of splits, exact and normalised."""
    found: dict[str, Any] = {}
    for kind, key in (("exact", lambda text: text), ("normalised", normalised)):
        keyed = {split: [key(text) for text in values] for split, values in texts.items()}
        within = {split: _repeats(values, texts[split]) for split, values in keyed.items()}
        across = {
            f"{first}-{second}": _shared(keyed[first], keyed[second], texts[second])
            for first, second in combinations(texts, 2)
        }
        found[kind] = {"within": within, "across": across}
    return found


def _repeats(keys: list[str], texts: list[str]) -> dict[str, Any]:
    """Rows repeating an earlier row of the same split."""
    seen: set[str] = set()
    repeated = []
    for key, text in zip(keys, texts):
        if key in seen:
            repeated.append(text)
        seen.add(key)
    return {"count": len(repeated), "examples": repeated[:EXAMPLES]}


def _shared(first: list[str], second: list[str], texts: list[str]) -> dict[str, Any]:
    """Rows of the second split whose input is also in the first."""
    known = set(first)
    shared = [text for key, text in zip(second, texts) if key in known]
    return {"count": len(shared), "examples": shared[:EXAMPLES]}


def _timed_steps(recipe: Recipe, steps: int, train_rows: int) -> dict[str, float]:
    """Seconds per training step from `steps` real steps in a scratch folder, and what an epoch would take."""
    from nlptasks import training

    with tempfile.TemporaryDirectory(prefix="nlptasks-inspect-") as scratch:
        trial = recipe.model_copy(
            update={
                "output_dir": Path(scratch),
                "train": recipe.train.model_copy(update={"max_steps": steps, "eval_strategy": "no"}),
                "eval": recipe.eval.model_copy(update={"splits": []}),
            }
        )
        result = training.run(trial)
    per_step = result.metrics["train"]["train_runtime"] / steps
    per_epoch = -(-train_rows // (recipe.train.batch_size * recipe.train.gradient_accumulation_steps))
    return {"seconds_per_step": per_step, "steps_per_epoch": per_epoch, "seconds_per_epoch": per_step * per_epoch}


def warnings(report: dict[str, Any]) -> list[str]:
    """What the report holds that could silently change a run's results."""
    found = []
    for name, split in report["splits"].items():
        if split["bad_rows"]["count"]:
            first = split["bad_rows"]["examples"][0]
            found.append(f"{name}: {split['bad_rows']['count']} rows fail the task's checks, e.g. {first}")
        if split["over_max_length"]:
            over, windowed = split["over_max_length"], split["several_windows"]
            found.append(
                f"{name}: {over} of {split['rows']} inputs exceed max_length {report['max_length']} "
                f"({windowed} read in several windows, {over - windowed} cut)"
            )
        if split["cut_targets"]:
            found.append(f"{name}: {split['cut_targets']} targets are cut by task_args.max_target_length")
        if split.get("unseen_labels"):
            found.append(f"{name}: labels the train split never has: {', '.join(split['unseen_labels'])}")
        if split["imbalance"] and split["imbalance"] >= 10:
            found.append(f"{name}: the most frequent label is {split['imbalance']:.0f}x the rarest")
        found += [f"{name}: {problem['count']} rows with {kind}" for kind, problem in split["problems"].items()]
    for kind, places in report["leakage"].items():
        within = places["within"].items()
        found += [f"{split}: {dup['count']} {kind} duplicate inputs" for split, dup in within if dup["count"]]
        found += [
            f"{pair.split('-')[1]}: {dup['count']} inputs also in {pair.split('-')[0]} ({kind})"
            for pair, dup in places["across"].items()
            if dup["count"]
        ]
    return found


def markdown(report: dict[str, Any]) -> str:
    """The report as Markdown: warnings first, then one table row per split."""
    lines = [f"# Data report: {report['recipe']}", "", "## Warnings", ""]
    lines += [f"- {warning}" for warning in report["warnings"]] or ["- none"]
    lines += [
        "",
        f"## Splits (max_length {report['max_length']})",
        "",
        "| split | rows | bad rows | tokens p50 / p95 / max | over max_length | several windows | cut targets "
        "| labels |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, split in report["splits"].items():
        length = split["length_tokens"]
        labels = ", ".join(f"{label} {count}" for label, count in list(split["labels"].items())[:8])
        tokens = f"{length.get('p50', 0):.0f} / {length.get('p95', 0):.0f} / {length.get('max', 0)}"
        cells = [split["rows"], split["bad_rows"]["count"], tokens, split["over_max_length"], split["several_windows"]]
        lines.append(f"| {name} | " + " | ".join(map(str, cells)) + f" | {split['cut_targets']} | {labels} |")
    if "time" in report:
        time = report["time"]
        lines += [
            "",
            f"Training: {time['seconds_per_step']:.2f} s per step, {time['steps_per_epoch']} steps and about "
            f"{time['seconds_per_epoch'] / 60:.1f} minutes per epoch.",
        ]
    return "\n".join(lines) + "\n"


def write_report(report: dict[str, Any], folder: Path) -> list[Path]:
    """`report.json`, `report.md` and one length histogram PNG per split into `folder`; the paths written."""
    from matplotlib.figure import Figure

    folder.mkdir(parents=True, exist_ok=True)
    written = [folder / "report.json", folder / "report.md"]
    written[0].write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n")
    written[1].write_text(markdown(report))
    for name, split in report["splits"].items():
        if not split["length_histogram"]:
            continue
        figure = Figure(figsize=(6, 3.5))
        axes = figure.subplots()
        edges, counts = zip(*split["length_histogram"])
        axes.bar(edges, counts, width=(edges[1] - edges[0]) if len(edges) > 1 else 1, align="edge")
        axes.axvline(report["max_length"], color="red", linestyle="--", label=f"max_length {report['max_length']}")
        axes.set_xlabel("input length in tokens")
        axes.set_ylabel(f"{name} inputs")
        axes.legend(fontsize=8)
        figure.tight_layout()
        path = folder / f"lengths_{name}.png"
        figure.savefig(path, dpi=100)
        written.append(path)
    return written

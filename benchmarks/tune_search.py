"""What a pruned hyperparameter search finds against the shipped recipe, and what pruning saved.

    NLPTASKS_DATA_DIR=../shared/data .venv/bin/python benchmarks/tune_search.py --results

runs `nlptasks tune classification/minilm --trials 12` (the median pruner; the default space with epochs at
most the recipe's 2, so that 12 trials fit an hour on 2 cores) with validation scored every `--eval-steps`
steps so the pruner has evaluations to act on. The study's first trial is the
shipped recipe's own values, so the table sets the recipe (trial 0) beside the search's best, both under the
same evaluation schedule. Pruning's saving is counted in training steps: each pruned trial's planned steps
less the steps it ran, priced at the search's measured seconds per step. A killed run continues its study.
"""

from __future__ import annotations

import argparse
import csv
import platform
import time
from datetime import date
from pathlib import Path

import torch
from common import publish

import nlptasks

SPACE = "train.epochs: {choices: [1.0, 2.0]}\n"
"""The default space's change: no 4-epoch trials."""


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--recipe", default="classification/minilm")
    parser.add_argument("--trials", type=int, default=12)
    parser.add_argument("--eval-steps", type=int, default=50)
    parser.add_argument("--train-samples", type=int, help="train on this many sentences (data.max_train_samples)")
    parser.add_argument("--output", default="runs/benchmarks/tune-sst2")
    parser.add_argument("--results", action="store_true", help="append the table to RESULTS.md")
    args = parser.parse_args()

    overrides = {"train.eval_strategy": "steps", "train.eval_steps": args.eval_steps}
    if args.train_samples:
        overrides["data.max_train_samples"] = args.train_samples
    space = Path(args.output).with_suffix(".space.yaml")
    space.parent.mkdir(parents=True, exist_ok=True)
    space.write_text(SPACE)
    started = time.perf_counter()
    result = nlptasks.tune(args.recipe, args.trials, args.output, space=space, overrides=overrides)
    elapsed = time.perf_counter() - started
    rows = list(csv.DictReader((Path(args.output) / "trials.csv").open()))
    publish(_table(args, rows, result, elapsed), args.results)


def _steps(row: dict[str, str]) -> tuple[int, int]:
    """(steps run by its last evaluation, steps planned) of a trial."""
    ran, planned = row["steps"].split(" of ")
    return int(ran), int(planned)


def _table(
    args: argparse.Namespace, rows: list[dict[str, str]], result: nlptasks.api.TuneResult, elapsed: float
) -> str:
    complete = [row for row in rows if row["state"] == "complete"]
    pruned = [row for row in rows if row["state"] == "pruned"]
    seconds = sum(float(row["seconds"] or 0) for row in rows)
    steps = {row["trial"]: _steps(row) for row in complete + pruned if row["steps"]}
    rate = sum(float(row["seconds"]) for row in complete) / max(sum(steps[row["trial"]][0] for row in complete), 1)
    saved_steps = sum(planned - ran for ran, planned in (steps[row["trial"]] for row in pruned))
    best = next(row for row in rows if row["trial"] == str(_best_trial(rows)))
    shipped = rows[0]
    params = [key for key in rows[0] if key.startswith(("train.", "adapter."))]
    lines = [
        f"## Hyperparameter search (issue 27), {date.today()}",
        "",
        f"Machine: {platform.machine()}, {torch.get_num_threads()} torch threads, torch {torch.__version__}. "
        f"Command: `NLPTASKS_DATA_DIR=../shared/data .venv/bin/python benchmarks/tune_search.py --trials {args.trials} "
        f"--eval-steps {args.eval_steps}"
        + (f" --train-samples {args.train_samples}" if args.train_samples else "")
        + f" --results` (`nlptasks tune {args.recipe}`, the default space with epochs 1 or 2, median pruner, "
        f"validation every {args.eval_steps} steps"
        + (f", the first {args.train_samples:,} training sentences" if args.train_samples else "")
        + ").",
        "",
        "| trial | " + " | ".join(params) + " | validation | test accuracy | state | seconds |",
        "|---|" + "---|" * (len(params) + 4),
    ]
    for name, row in (("recipe as shipped (trial 0)", shipped), (f"best (trial {best['trial']})", best)):
        cells = [_rounded(row.get(key, "")) for key in params]
        value, test = _rounded(row["value"]), _rounded(row.get("test accuracy", ""))
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {value} | {test} | {row['state']} | {row['seconds']} |")
    lines += [
        "",
        f"{len(rows)} trials: {len(complete)} complete, {len(pruned)} pruned; {seconds / 60:.1f} min of trials, "
        f"{elapsed / 60:.1f} min in all. Pruning skipped {saved_steps:,} training steps, about "
        f"{saved_steps * rate / 60:.1f} min at the search's {rate:.2f} s per step (evaluations included).",
    ]
    return "\n".join(lines) + "\n"


def _rounded(cell: str) -> str:
    """A CSV number to 4 significant digits; other cells as they are."""
    try:
        return f"{float(cell):.4g}"
    except ValueError:
        return cell


def _best_trial(rows: list[dict[str, str]]) -> int:
    complete = [row for row in rows if row["state"] == "complete"]
    return int(max(complete, key=lambda row: float(row["value"]))["trial"])


if __name__ == "__main__":
    main()

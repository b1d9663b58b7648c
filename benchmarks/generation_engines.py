"""Test-split decoding by CTranslate2 (fp32, int8) against transformers' `generate`: one run, same settings.

A run of the recipe is trained (with `--set` overrides, e.g. fewer epochs) unless `--run` names one.
Each side decodes the first `--examples` test rows in its own process, so its time and peak RSS are
its own: the run through transformers, the run with `generation.engine: ctranslate2` (its fp32
conversion), and its `nlptasks export --format ctranslate2 --quantize int8` folder.

    NLPTASKS_DATA_DIR=../shared/data .venv/bin/python benchmarks/generation_engines.py translation/t5 --results
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from datetime import date
from pathlib import Path

from common import measured_child, publish


def decode(folder: str, engine: str, examples: int, batch_size: int) -> dict[str, float]:
    from nlptasks.data import load_splits
    from nlptasks.predict import Predictor

    predictor = Predictor(folder, batch_size=batch_size, generation={"engine": engine})
    rows = load_splits(predictor.recipe.data, predictor.task)["test"]
    rows = rows.select(range(min(examples, len(rows))))
    predictor.score(rows.select(range(2)))  # warm-up: first-call allocations, lazy imports
    start = time.perf_counter()
    metrics = predictor.score(rows)
    rate = len(rows) / (time.perf_counter() - start)
    return {"per_second": rate, "metric": metrics[predictor.task.main_metric], "gen_len": metrics["gen_len"]}


def trained_run(recipe: str, workdir: Path, overrides: list[str]) -> Path:
    """The run, trained in a child process: a child inherits its parent's peak RSS through exec, so
    training in this process would set every side's measured peak to the training's."""
    run_dir = workdir / f"engines-{recipe.replace('/', '-')}"
    if not (run_dir / "metrics.json").is_file():
        settings = [f"output_dir={run_dir}", "eval.splits=[]", *overrides]
        nlptasks_cli("run", recipe, *(arg for item in settings for arg in ("--set", item)))
    return run_dir


def nlptasks_cli(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "nlptasks", *args], check=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("recipe", help="a generating recipe, e.g. translation/t5 or summarization/smollm2")
    parser.add_argument("--run", type=Path, help="a finished run of the recipe (default: train one)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="training overrides")
    parser.add_argument("--examples", type=int, default=200, help="test rows decoded by each side")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--workdir", type=Path, default=Path("runs/benchmarks"))
    parser.add_argument("--child", nargs=2, metavar=("FOLDER", "ENGINE"), help=argparse.SUPPRESS)
    parser.add_argument("--results", action="store_true", help="append the table to benchmarks/RESULTS.md")
    args = parser.parse_args()
    if args.child:
        print(json.dumps(decode(*args.child, args.examples, args.batch_size)))
        return

    run_dir = args.run or trained_run(args.recipe, args.workdir, args.set)
    int8 = run_dir.parent / f"{run_dir.name}-ct2-int8"
    if not (int8 / "export.json").is_file():
        nlptasks_cli("export", str(run_dir), "--format", "ctranslate2", "--quantize", "int8", "--output", str(int8))
    sides = {
        "transformers": (run_dir, "transformers"),
        "ctranslate2 fp32": (run_dir, "ctranslate2"),
        "ctranslate2 int8": (int8, "ctranslate2"),
    }
    measured = {}
    for name, (folder, engine) in sides.items():
        command = [sys.executable, __file__, args.recipe, "--examples", str(args.examples), "--batch-size",
                   str(args.batch_size), "--child", str(folder), engine]  # fmt: skip
        measured[name] = measured_child(command, name)
    base = measured["transformers"][0]["per_second"]
    options = [*(f"--set {item}" for item in args.set), *([f"--run {args.run}"] if args.run else [])]
    options += [f"--examples {args.examples}", f"--batch-size {args.batch_size}"]
    lines = [
        f"### Decoding engines: {args.recipe} ({date.today()})",
        "",
        f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores. Command: "
        f"`NLPTASKS_DATA_DIR=../shared/data .venv/bin/python benchmarks/generation_engines.py {args.recipe} "
        f"{' '.join(options)} --results`. Run `{run_dir}`; "
        f"the first {args.examples} test rows, batch {args.batch_size}, the recipe's `generation` settings.",
        "",
        "| engine | examples/s | × transformers | main metric | gen_len | peak RSS MB |",
        "|---|---|---|---|---|---|",
        *(
            f"| {name} | {result['per_second']:.2f} | {result['per_second'] / base:.2f} | {result['metric']:.4f} "
            f"| {result['gen_len']:.1f} | {rss / 2**20:.0f} |"
            for name, (result, rss) in measured.items()
        ),
        "",
    ]
    publish("\n".join(lines), args.results)


if __name__ == "__main__":
    main()

"""Prediction through ONNX Runtime exports (fp32, int8) vs the PyTorch run and `transformers.pipeline`.

One trained MiniLM run per task (trained here unless `--run` names one) is exported with
`nlptasks export --format onnx` and `--quantize int8`. Every side predicts the same inputs once,
after a warm-up: the run through PyTorch, both exports, and the pipeline at each `--pipeline-batch`
(its best is the reference). Agreement is with the PyTorch run's outputs (the class, each word's
tag, the answer text); the metric is `nlptasks eval` of each folder on the test split (SQuAD: validation).

    NLPTASKS_DATA_DIR=../shared/data .venv/bin/python benchmarks/export_vs_pipeline.py --task classification --results
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import time
from collections.abc import Callable
from datetime import date
from pathlib import Path
from typing import Any

from common import publish

TRAINING = {
    "classification": ("classification/minilm", {"train.epochs": 1}),
    "ner": ("ner/minilm", {"train.epochs": 1, "data.max_train_samples": 6000}),
    "qa": ("qa/minilm", {"train.max_steps": 300, "train.batch_size": 16, "data.max_length": 256, "data.stride": 64}),
}
PIPELINES = {"classification": "text-classification", "ner": "token-classification", "qa": "question-answering"}
HEADLINE = {"classification": "accuracy", "ner": "f1", "qa": "f1"}
SPLIT = {"classification": "test", "ner": "test", "qa": "validation"}
"""The split scored and predicted: the SQuAD dev split has no test part."""


def trained_run(task: str, workdir: Path) -> Path:
    import nlptasks

    recipe, settings = TRAINING[task]
    run_dir = workdir / f"export-bench-{task}"
    if not (run_dir / "metrics.json").is_file():
        nlptasks.run(recipe, {"output_dir": str(run_dir), "train.eval_strategy": "no", "eval.splits": [], **settings})
    return run_dir


def exports(run_dir: Path) -> dict[str, Path]:
    import nlptasks

    folders = {}
    for quantize in (None, "int8"):
        folder = run_dir.parent / f"{run_dir.name}-onnx-{quantize or 'fp32'}"
        if not (folder / "model.onnx").is_file():
            nlptasks.export(run_dir, folder, format="onnx", quantize=quantize)
        folders[f"ONNX {quantize or 'fp32'}"] = folder
    return folders


def test_inputs(task: str, count: int) -> list[Any]:
    """Held-out inputs as `predict` reads them (texts; QA's question and context), cycled to `count`."""
    from nlptasks import catalog

    name = {"classification": "sst2", "ner": "conll2003", "qa": "squad_v1_dev_split"}[task]
    path = catalog.local_dataset_folder(name) / f"{SPLIT[task]}.jsonl"
    rows = [json.loads(line) for line in path.open(encoding="utf-8")]
    if task == "classification":
        inputs = [row["text"] for row in rows]
    elif task == "ner":
        inputs = [" ".join(row["tokens"]) for row in rows]
    else:
        inputs = [{"question": row["question"], "context": row["context"]} for row in rows]
    return list(itertools.islice(itertools.cycle(inputs), count))


COMPARED = {"classification": "label", "ner": "tags", "qa": "answer"}
"""What must agree between sides: the class, each word's tag, the answer text."""


def agreeing(task: str, ours: list[dict[str, Any]], theirs: list[dict[str, Any]]) -> float:
    """Share of labels alike: one per input, one per word for NER (a sentence is many labels)."""
    field = COMPARED[task]
    pairs = [(a[field], b[field]) for a, b in zip(ours, theirs)]
    if task == "ner":
        pairs = [pair for a, b in pairs for pair in zip(a, b, strict=True)]
    return sum(a == b for a, b in pairs) / len(pairs)


def timed(function: Callable[[list[Any]], list[Any]], inputs: list[Any]) -> tuple[list[Any], float]:
    function(inputs[:64])  # warm-up: first-call allocations, lazy imports, ONNX Runtime's first-shape plans
    started = time.perf_counter()
    outputs = function(inputs)
    return outputs, len(inputs) / (time.perf_counter() - started)


def pipeline_side(task: str, run_dir: Path, batch: int) -> Callable[[list[Any]], list[Any]]:
    from transformers import pipeline

    model = str(run_dir / "model")
    runner = pipeline(PIPELINES[task], model=model, tokenizer=model, device=-1)
    if task == "qa":
        return lambda inputs: runner(
            question=[i["question"] for i in inputs], context=[i["context"] for i in inputs], batch_size=batch
        )
    return lambda inputs: runner(inputs, batch_size=batch)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", choices=sorted(TRAINING), default="classification")
    parser.add_argument("--run", type=Path, help="a finished full fine-tuning run of the task (default: train one)")
    parser.add_argument("--inputs", type=int, default=2000)
    parser.add_argument("--batch-size", type=int, default=64, help="nlptasks' predict batch size")
    parser.add_argument("--pipeline-batch", type=int, nargs="+", default=[1, 16, 64])
    parser.add_argument("--eval-samples", type=int, help="score this many test rows (default: the whole split)")
    parser.add_argument("--workdir", type=Path, default=Path("runs/benchmarks"))
    parser.add_argument("--results", action="store_true", help="append the table to benchmarks/RESULTS.md")
    args = parser.parse_args()

    import torch

    import nlptasks

    run_dir = args.run or trained_run(args.task, args.workdir)
    folders = {"PyTorch": run_dir, **exports(run_dir)}
    inputs = test_inputs(args.task, args.inputs)
    throughput, outputs = {}, {}
    for name, folder in folders.items():
        predictor = nlptasks.load(folder, batch_size=args.batch_size)
        outputs[name], throughput[name] = timed(predictor.predict, inputs)
    for batch in args.pipeline_batch:
        _, throughput[f"pipeline, batch {batch}"] = timed(pipeline_side(args.task, run_dir, batch), inputs)
    best = max(value for name, value in throughput.items() if name.startswith("pipeline"))

    overrides = {"data.max_eval_samples": args.eval_samples} if args.eval_samples else None
    metric = HEADLINE[args.task]
    scores = {
        name: nlptasks.evaluate(folder, SPLIT[args.task], overrides=overrides)[metric]
        for name, folder in folders.items()
    }
    agreement = {name: agreeing(args.task, predicted, outputs["PyTorch"]) for name, predicted in outputs.items()}
    graph = {
        name: (folder / "model.onnx").stat().st_size / 2**20 for name, folder in folders.items() if name != "PyTorch"
    }

    def row(name: str, value: float) -> str:
        cells = ["", "", ""]
        if name in folders:
            cells = [f"{agreement[name]:.2%}", f"{scores[name]:.4f}", f"{graph[name]:.0f}" if name in graph else ""]
        return f"| {name} | {value:.1f} | {value / best:.2f} | " + " | ".join(cells) + " |"

    lines = [
        f"### {args.task}: ONNX Runtime exports vs PyTorch and `transformers.pipeline` ({date.today()})",
        "",
        f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch threads "
        f"{torch.get_num_threads()}. Command: `NLPTASKS_DATA_DIR=../shared/data .venv/bin/python "
        f"benchmarks/export_vs_pipeline.py --task {args.task} --inputs {args.inputs} --results`. Run "
        f"`{run_dir}` ({TRAINING[args.task][0]}), {args.inputs} {SPLIT[args.task]} inputs (cycled); {metric} on "
        f"{args.eval_samples or 'all'} {SPLIT[args.task]} rows.",
        "",
        f"| side | inputs/s | × best pipeline | labels as PyTorch | {SPLIT[args.task]} {metric} | graph MB |",
        "|---|---|---|---|---|---|",
        *(row(name, value) for name, value in throughput.items()),
        "",
    ]
    publish("\n".join(lines), args.results)


if __name__ == "__main__":
    main()

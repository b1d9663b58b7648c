"""Training and evaluation: nlptasks vs a plain `transformers.Trainer` script, same model, data, batch, epochs, seed.

The plain scripts are written the way the official examples are: `run_ner.py` (first-subword
labels, `DataCollatorForTokenClassification`) and `run_glue.py` (`DataCollatorWithPadding`), both
with dynamic padding, random batches and `--use_cpu` (`--bf16` where the CPU computes it natively,
their best setting; `--fp32` elsewhere). Each side runs in its own process, so peak RSS is its own.

    NLPTASKS_DATA_DIR=../shared/data .venv/bin/python benchmarks/vs_plain_trainer.py --task ner --fp32
    NLPTASKS_DATA_DIR=../shared/data .venv/bin/python benchmarks/vs_plain_trainer.py --task classification --fp32

Prints a table and the ratios; `--results` appends it to benchmarks/RESULTS.md. `--compile` adds a third side,
nlptasks with `train.compile: true`, and reads its start-up (the first steps) apart from its later speed.
`--rounds 2` runs each side twice, the order reversed in the second round, and reports medians: on a machine whose
speed drifts between minutes, one round's ratio can swing by the drift.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from datetime import date
from pathlib import Path

from common import matmul_peak_flops, measured_child, publish


def plain_ner(args: argparse.Namespace) -> dict[str, float]:
    """The NER baseline: what `run_ner.py` does, condensed."""
    import numpy as np
    from seqeval.metrics import f1_score
    from transformers import AutoModelForTokenClassification, AutoTokenizer, DataCollatorForTokenClassification

    raw, location = plain_start(args, "conll2003")
    labels = sorted({tag for tags in raw["train"]["ner_tags"] for tag in tags})
    label2id = {label: i for i, label in enumerate(labels)}
    tokenizer = AutoTokenizer.from_pretrained(location)

    def tokenize_and_align(batch: dict) -> dict:
        encoded = tokenizer(batch["tokens"], truncation=True, max_length=128, is_split_into_words=True)
        all_labels = []
        for i, tags in enumerate(batch["ner_tags"]):
            previous, row = None, []
            for word in encoded.word_ids(i):
                row.append(-100 if word is None or word == previous else label2id[tags[word]])
                previous = word
            all_labels.append(row)
        encoded["labels"] = all_labels
        return encoded

    tokenized = raw.map(tokenize_and_align, batched=True, remove_columns=raw["train"].column_names)
    model = AutoModelForTokenClassification.from_pretrained(
        location, num_labels=len(labels), id2label=dict(enumerate(labels)), label2id=label2id
    )
    train, output = plain_train(args, model, tokenized, DataCollatorForTokenClassification(tokenizer), tokenizer)
    predicted = np.argmax(output.predictions, axis=-1)
    gold_tags, predicted_tags = [], []
    for p_row, l_row in zip(predicted, output.label_ids):
        keep = l_row != -100
        gold_tags.append([labels[i] for i in l_row[keep]])
        predicted_tags.append([labels[i] for i in p_row[keep]])
    return {
        "train_samples_per_second": train["train_samples_per_second"],
        "train_runtime": train["train_runtime"],
        "total_flos": train["total_flos"],
        "eval_samples_per_second": output.metrics["test_samples_per_second"],
        "test_metric": f1_score(gold_tags, predicted_tags),
    }


def plain_classification(args: argparse.Namespace) -> dict[str, float]:
    """The classification baseline: what `run_glue.py` does, condensed."""
    import numpy as np
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, DataCollatorWithPadding

    raw, location = plain_start(args, "sst2")
    tokenizer = AutoTokenizer.from_pretrained(location)
    tokenized = raw.map(
        lambda batch: tokenizer(batch["text"], truncation=True, max_length=128), batched=True, remove_columns=["text"]
    ).rename_column("label", "labels")
    model = AutoModelForSequenceClassification.from_pretrained(location, num_labels=2)
    train, output = plain_train(args, model, tokenized, DataCollatorWithPadding(tokenizer), tokenizer)
    return {
        "train_samples_per_second": train["train_samples_per_second"],
        "train_runtime": train["train_runtime"],
        "total_flos": train["total_flos"],
        "eval_samples_per_second": output.metrics["test_samples_per_second"],
        "test_metric": float((np.argmax(output.predictions, axis=-1) == output.label_ids).mean()),
    }


def plain_start(args: argparse.Namespace, dataset: str) -> tuple[object, str]:
    """What both plain scripts begin with: the seed, the train and test JSON Lines, the model's folder."""
    import datasets
    from transformers import set_seed

    from nlptasks import catalog

    set_seed(args.seed)
    folder = catalog.local_dataset_folder(dataset)
    raw = datasets.load_dataset("json", data_files={s: str(folder / f"{s}.jsonl") for s in ("train", "test")})
    return raw, catalog.resolve_model(args.model).location


def plain_train(
    args: argparse.Namespace, model: object, tokenized: object, collator: object, tokenizer: object
) -> tuple:
    """The examples' Trainer: train, then predict the test split; (training metrics, prediction output)."""
    from transformers import Trainer, TrainingArguments

    arguments = TrainingArguments(
        output_dir=str(args.workdir / "plain"),
        num_train_epochs=args.epochs,
        per_device_train_batch_size=args.batch_size,
        per_device_eval_batch_size=128,
        learning_rate=args.learning_rate,
        seed=args.seed,
        bf16=args.bf16,
        use_cpu=True,
        eval_strategy="no",
        save_strategy="no",
        report_to="none",
        logging_steps=100,
    )
    trainer = Trainer(
        model=model,
        args=arguments,
        train_dataset=tokenized["train"],
        data_collator=collator,
        processing_class=tokenizer,
    )
    train = trainer.train().metrics
    return train, trainer.predict(tokenized["test"])


def toolkit(args: argparse.Namespace, compiled: bool = False) -> dict[str, float]:
    from transformers import TrainerCallback

    from nlptasks import training
    from nlptasks.recipe import load_recipe

    class StepClock(TrainerCallback):
        """When each optimizer step ended: a compiled model's start-up shows in its first steps."""

        def __init__(self) -> None:
            self.ends: list[float] = []

        def on_train_begin(self, *_: object, **__: object) -> None:
            self.started = time.perf_counter()

        def on_step_end(self, *_: object, **__: object) -> None:
            self.ends.append(time.perf_counter())

    clock = StepClock()
    recipe = load_recipe(
        RECIPES[args.task],
        {
            "model": args.model,
            "output_dir": str(args.workdir / "nlptasks"),
            "train.epochs": args.nlptasks_epochs or args.epochs,
            "train.batch_size": args.batch_size,
            "train.learning_rate": args.nlptasks_learning_rate or args.learning_rate,
            "train.seed": args.seed,
            "train.warmup_ratio": 0.0,
            "train.eval_strategy": "no",
            "train.resume": False,
            "train.precision": "bf16" if args.bf16 else "fp32",
            "eval.splits": ["test"],
            "train.group_by_length": args.group_by_length,
            "train.weight_decay": 0.0,
            "train.compile": compiled,
        },
    )
    result = training.run(recipe, overwrite=True, callbacks=[clock])
    train = result.metrics["train"]
    first, later = clock.ends[FIRST_STEPS - 1] - clock.started, clock.ends[-1] - clock.ends[FIRST_STEPS - 1]
    return {
        "first_steps_seconds": first,
        "later_samples_per_second": (len(clock.ends) - FIRST_STEPS) * args.batch_size / later,
        "train_samples_per_second": train["train_samples_per_second"],
        "train_runtime": train["train_runtime"],
        "total_flos": train["total_flos"],
        "eval_samples_per_second": result.metrics["test"]["samples_per_second"],
        "test_metric": result.metrics["test"][METRICS[args.task]],
    }


RECIPES = {"ner": "ner/minilm", "classification": "classification/minilm"}
METRICS = {"ner": "f1", "classification": "accuracy"}
PLAIN = {"ner": plain_ner, "classification": plain_classification}
DATA = {"ner": "CoNLL-2003 train (14,041 sentences)", "classification": "SST-2 train (6,920 sentences)"}
SIDES = ("plain-trainer", "nlptasks", "nlptasks-compiled")
FIRST_STEPS = 10
"""Steps a compiled model's start-up is read over: its first compilation, and the recompilation for dynamic shapes
that the second batch length brings."""


def measure(side: str, args: argparse.Namespace) -> dict[str, float]:
    """Run one side in a child process; its own peak RSS comes from the kernel (wait4), not a running max."""
    command = [
        sys.executable,
        __file__,
        "--side",
        side,
        "--task",
        args.task,
        "--epochs",
        str(args.epochs),
        "--batch-size",
        str(args.batch_size),
        "--learning-rate",
        str(args.learning_rate),
        "--seed",
        str(args.seed),
        "--model",
        args.model,
        "--workdir",
        str(args.workdir),
    ] + ([] if args.bf16 else ["--fp32"])
    command += ["--nlptasks-epochs", str(args.nlptasks_epochs)] if args.nlptasks_epochs else []
    command += ["--nlptasks-learning-rate", str(args.nlptasks_learning_rate)] if args.nlptasks_learning_rate else []
    command += [] if args.group_by_length else ["--no-group-by-length"]
    metrics, peak = measured_child(command, side)
    return {**metrics, "peak_rss_gb": peak / 2**30}


def measure_rounds(args: argparse.Namespace) -> tuple[dict[str, dict[str, float]], list[float]]:
    """Each side `args.rounds` times, in reversed order every other round, so that a machine drifting over the
    command slows both sides alike; per side the median of each figure, and each round's training ratio."""
    sides = [side for side in SIDES if args.compile or side != "nlptasks-compiled"]
    runs: dict[str, list[dict[str, float]]] = {side: [] for side in sides}
    for round_number in range(args.rounds):
        for side in sides if round_number % 2 == 0 else reversed(sides):
            runs[side].append(measure(side, args))
    ratios = [
        ours["train_samples_per_second"] / plain["train_samples_per_second"]
        for plain, ours in zip(runs["plain-trainer"], runs["nlptasks"], strict=True)
    ]
    return {side: median_figures(done) for side, done in runs.items()}, ratios


def median_figures(runs: list[dict[str, float]]) -> dict[str, float]:
    return {key: statistics.median(run[key] for run in runs) for key in runs[0]}


def report(results: dict[str, dict[str, float]], args: argparse.Namespace, peak: float, ratios: list[float]) -> str:
    plain, ours = results["plain-trainer"], results["nlptasks"]
    train_ratio = ours["train_samples_per_second"] / plain["train_samples_per_second"]
    eval_ratio = ours["eval_samples_per_second"] / plain["eval_samples_per_second"]
    flags = ("" if args.bf16 else " --fp32") + ("" if args.group_by_length else " --no-group-by-length")
    flags += f" --nlptasks-epochs {args.nlptasks_epochs}" if args.nlptasks_epochs else ""
    flags += f" --nlptasks-learning-rate {args.nlptasks_learning_rate}" if args.nlptasks_learning_rate else ""
    flags += " --compile" if args.compile else ""
    flags += f" --rounds {args.rounds}" if args.rounds > 1 else ""
    epochs = f"{args.epochs} epochs" + (f" (nlptasks: {args.nlptasks_epochs})" if args.nlptasks_epochs else "")
    lines = [
        f"### {args.task}: nlptasks vs plain Trainer ({date.today()})",
        "",
        f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, no GPU. Command: "
        f"`NLPTASKS_DATA_DIR=../shared/data .venv/bin/python benchmarks/vs_plain_trainer.py --task {args.task} "
        f"--epochs {args.epochs}{flags} --results`. Model `{args.model}`, {DATA[args.task]}, {epochs}, batch "
        f"{args.batch_size}, lr {args.learning_rate}"
        + (f" (nlptasks: {args.nlptasks_learning_rate})" if args.nlptasks_learning_rate else "")
        + f", seed {args.seed}, {'bf16' if args.bf16 else 'fp32'}.",
        "",
        "| side | train samples/s | train s | eval samples/s | training GFLOP/s (share of matmul peak) "
        f"| test {METRICS[args.task]} | peak RSS GB |",
        "|---|---|---|---|---|---|---|",
    ]
    for side, m in results.items():
        achieved = m["total_flos"] / m["train_runtime"]
        lines.append(
            f"| {side} | {m['train_samples_per_second']:.1f} | {m['train_runtime']:.0f} | "
            f"{m['eval_samples_per_second']:.1f} | {achieved / 1e9:.1f} ({achieved / peak:.0%}) | "
            f"{m['test_metric']:.4f} | {m['peak_rss_gb']:.2f} |"
        )
    lines += [
        "",
        f"nlptasks / plain Trainer: training **{train_ratio:.2f}×**, evaluation **{eval_ratio:.2f}×**. Matmul "
        f"peak measured here (2048² {'bf16' if args.bf16 else 'fp32'} matmuls): {peak / 1e9:.0f} GFLOP/s. "
        "Training FLOPs are the Trainer's `total_flos` (6 × parameters × tokens, padding included): an estimate.",
        "",
    ]
    if len(ratios) > 1:
        lines += [
            f"Each figure is the median of {len(ratios)} rounds, the sides' order reversed every other round; the "
            f"training ratio per round: {', '.join(f'{ratio:.2f}×' for ratio in ratios)}.",
            "",
        ]
    if compiled := results.get("nlptasks-compiled"):
        lines += [
            f"Compiled (`train.compile: true`): the first {FIRST_STEPS} steps take "
            f"{compiled['first_steps_seconds']:.0f} s against {ours['first_steps_seconds']:.0f} s eager "
            "(the compilations); after them "
            f"{compiled['later_samples_per_second']:.1f} against {ours['later_samples_per_second']:.1f} samples/s "
            f"(**{compiled['later_samples_per_second'] / ours['later_samples_per_second']:.2f}×**).",
            "",
        ]
    if args.nlptasks_epochs:
        reached = "equal or better" if ours["test_metric"] >= plain["test_metric"] else "a worse"
        lines += [
            f"Time to the metrics above: nlptasks {ours['train_runtime']:.0f} s ({args.nlptasks_epochs} epochs, "
            f"{reached} metric) vs the plain script {plain['train_runtime']:.0f} s ({args.epochs} epochs): "
            f"**{plain['train_runtime'] / ours['train_runtime']:.2f}× less training time**.",
            "",
        ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", choices=RECIPES, default="ner")
    parser.add_argument("--side", choices=SIDES)
    parser.add_argument("--epochs", type=float, default=1.0)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--learning-rate", type=float, default=5e-5)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--model", default="minilm-l6")
    parser.add_argument("--fp32", dest="bf16", action="store_false")
    parser.add_argument(
        "--no-group-by-length",
        dest="group_by_length",
        action="store_false",
        help="nlptasks side: random batches like the plain script (isolates that lever)",
    )
    parser.add_argument(
        "--nlptasks-epochs",
        type=float,
        help="nlptasks side: train this long (time to an equal metric: grouped batches learn less per epoch)",
    )
    parser.add_argument(
        "--nlptasks-learning-rate",
        type=float,
        help="nlptasks side: this learning rate (length-grouped batches learn less per step at the plain script's)",
    )
    parser.add_argument(
        "--compile", action="store_true", help="also run the nlptasks side with train.compile (torch.compile)"
    )
    parser.add_argument(
        "--rounds", type=int, default=1, help="run each side this many times, alternating order; report medians"
    )
    parser.add_argument("--workdir", type=Path, default=Path("runs/benchmarks"))
    parser.add_argument("--results", action="store_true", help="append the table to benchmarks/RESULTS.md")
    args = parser.parse_args()
    if args.side:
        started = time.perf_counter()
        if args.side == "plain-trainer":
            metrics = PLAIN[args.task](args)
        else:
            metrics = toolkit(args, compiled=args.side == "nlptasks-compiled")
        metrics["wall_seconds"] = time.perf_counter() - started
        print(json.dumps(metrics))
        return
    results, ratios = measure_rounds(args)
    text = report(results, args, matmul_peak_flops(args.bf16), ratios)
    publish(text, args.results)


if __name__ == "__main__":
    main()

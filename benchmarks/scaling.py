"""Cost growth in the dataset size: tokenization and training time, and peak memory, at 1x, 4x and 16x.

MiniLM NER on the first `--base` CoNLL-2003 train sentences repeated 1, 4 and 16 times, one epoch,
each size in its own process so its peak RSS is its own (from the kernel). Time per example should stay flat
(linear cost) and peak RSS should not follow the data: splits are memory-mapped Arrow files,
tokenized once and cached, never whole corpora in Python lists.

    NLPTASKS_DATA_DIR=../shared/data .venv/bin/python benchmarks/scaling.py --base 500 --results
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import sys
import time
from datetime import date
from pathlib import Path

from common import measured_child, publish

FACTORS = (1, 4, 16)


def one_size(train_file: Path, workdir: Path) -> dict[str, float]:
    """Tokenize (fresh cache) and train one epoch on `train_file`; in the child process."""
    import nlptasks
    from nlptasks import catalog, models
    from nlptasks.data import load_splits
    from nlptasks.recipe import load_recipe
    from nlptasks.tasks import task_for

    overrides = {
        "output_dir": str(workdir / train_file.stem),
        "data.train_file": str(train_file),
        "data.validation_file": str(train_file),
        "data.max_eval_samples": 64,
        "train.epochs": 1,
        "train.eval_strategy": "no",
        "train.early_stopping_patience": None,
        "train.resume": False,
        "eval.splits": [],
    }
    recipe = load_recipe("ner/minilm", overrides)
    task = task_for(recipe)
    train = load_splits(recipe.data, task)["train"]
    tokenizer = models.load_tokenizer(catalog.resolve_model(recipe.model).location, "encoder")
    labels = task.label_list(train)
    started = time.perf_counter()
    task.featurize(train, tokenizer, {label: i for i, label in enumerate(labels)})
    tokenize_seconds = time.perf_counter() - started
    metrics = nlptasks.run(recipe, overwrite=True).metrics["train"]  # tokenizes again: a fresh process, a fresh cache
    return {
        "examples": len(train),
        "tokenize_seconds": tokenize_seconds,
        "train_seconds": metrics["train_runtime"],
        **resident_megabytes(),
    }


def resident_megabytes() -> dict[str, float]:
    """Resident memory now, split: anonymous (heap, tensors) vs file-backed (memory-mapped Arrow, libraries).

    Peak RSS counts both; only the anonymous part is memory the run holds, the kernel can drop file pages.
    """
    status = Path("/proc/self/status")
    if not status.is_file():
        return {}
    fields = dict(line.split(":", 1) for line in status.read_text().splitlines() if ":" in line)
    return {f"{key}_mb": int(fields[key].split()[0]) / 1024 for key in ("RssAnon", "RssFile") if key in fields}


def measure(train_file: Path, workdir: Path) -> dict[str, float]:
    command = [sys.executable, __file__, "--child", str(train_file), "--workdir", str(workdir)]
    env = {**os.environ, "HF_DATASETS_CACHE": str(workdir / "hf-cache" / train_file.stem)}  # tokenized afresh
    metrics, peak = measured_child(command, train_file.name, env)
    return {**metrics, "peak_rss_mb": peak / 2**20}


def conll_train_file(base: int, factor: int, folder: Path) -> Path:
    """The same `base` sentences `factor` times: only the dataset's size changes, not its longest sentence,
    which sets the activations' peak (the first 1,000 sentences' longest is shorter than the full set's)."""
    from nlptasks import catalog

    source = catalog.local_dataset_folder("conll2003") / "train.jsonl"
    path = folder / f"conll-train-{base}x{factor}.jsonl"
    with source.open(encoding="utf-8") as rows, path.open("w", encoding="utf-8") as out:
        out.writelines(list(itertools.islice(rows, base)) * factor)
    return path


def report(results: dict[int, dict[str, float]], base: int) -> str:
    first = results[FACTORS[0]]
    lines = [
        f"### Cost growth in the dataset size ({date.today()})",
        "",
        f"Machine: {os.cpu_count()} cores, fp32 unless the CPU has native bf16. Command: "
        f"`NLPTASKS_DATA_DIR=../shared/data .venv/bin/python benchmarks/scaling.py --base {base} --results`. "
        f"MiniLM NER, the first {base:,} CoNLL-2003 train sentences repeated, one epoch.",
        "",
        "| size | examples | tokenize s | per 1k examples | train s | per 1k examples | peak RSS MB "
        "| at the end: anonymous / file-backed MB |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for factor, m in results.items():
        per = {key: 1000 * m[key] / m["examples"] for key in ("tokenize_seconds", "train_seconds")}
        lines.append(
            f"| {factor}× | {m['examples']:,} | {m['tokenize_seconds']:.2f} | {per['tokenize_seconds']:.3f} | "
            f"{m['train_seconds']:.0f} | {per['train_seconds']:.1f} | {m['peak_rss_mb']:.0f} | "
            f"{m.get('RssAnon_mb', float('nan')):.0f} / {m.get('RssFile_mb', float('nan')):.0f} |"
        )
    last = results[FACTORS[-1]]
    growth = last["peak_rss_mb"] / first["peak_rss_mb"]
    time_ratio = (last["train_seconds"] / last["examples"]) / (first["train_seconds"] / first["examples"])
    lines += [
        "",
        f"At {FACTORS[-1]}× the data: training time per example ×{time_ratio:.2f} of the 1× run's (1.00 = linear), "
        f"peak RSS ×{growth:.2f}.",
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base", type=int, default=500, help="sentences at 1x")
    parser.add_argument("--workdir", type=Path, default=Path("runs/benchmarks/scaling"))
    parser.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--results", action="store_true", help="append the table to benchmarks/RESULTS.md")
    args = parser.parse_args()
    if args.child:
        print(json.dumps(one_size(args.child, args.workdir)))
        return
    args.workdir.mkdir(parents=True, exist_ok=True)
    results = {factor: measure(conll_train_file(args.base, factor, args.workdir), args.workdir) for factor in FACTORS}
    text = report(results, args.base)
    publish(text, args.results)


if __name__ == "__main__":
    main()

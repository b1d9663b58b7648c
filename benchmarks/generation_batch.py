"""Evaluation batch size for generation: time, peak RSS and the metric of one finished run's decoding.

Each batch size decodes the first `--examples` rows of a split in its own process, so each peak RSS
is its own (from the kernel). Beam search keeps every beam's cross-attention keys and values, so
memory grows with the batch; the metric must not change.

    NLPTASKS_DATA_DIR=../shared/data .venv/bin/python benchmarks/generation_batch.py RUN_DIR --batch-sizes 128 32 16
"""

from __future__ import annotations

import argparse
import json
import sys
import time

from common import measured_child, publish


def decode(run_dir: str, split: str, examples: int, batch_size: int) -> dict[str, float]:
    from nlptasks.data import load_splits
    from nlptasks.predict import Predictor

    predictor = Predictor(run_dir, batch_size=batch_size)
    rows = load_splits(predictor.recipe.data, predictor.task)[split]
    rows = rows.select(range(min(examples, len(rows))))
    start = time.perf_counter()
    metrics = predictor.score(rows)
    return {"seconds": time.perf_counter() - start, "metric": metrics[predictor.task.main_metric]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir")
    parser.add_argument("--split", default="validation")
    parser.add_argument("--examples", type=int, default=128)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[128, 32, 16])
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--results", action="store_true", help="append the table to RESULTS.md")
    args = parser.parse_args()
    if args.child:
        print(json.dumps(decode(args.run_dir, args.split, args.examples, args.child)))
        return
    lines = [
        f"`benchmarks/generation_batch.py {args.run_dir} --split {args.split} --examples {args.examples}`",
        "",
        "| batch | seconds | peak RSS MB | main metric |",
        "|---|---|---|---|",
    ]
    for batch in args.batch_sizes:
        command = [sys.executable, __file__, args.run_dir, "--split", args.split, "--examples", str(args.examples)]
        result, peak = measured_child([*command, "--child", str(batch)], f"batch {batch}")
        lines.append(f"| {batch} | {result['seconds']:.1f} | {peak / 2**20:.0f} | {result['metric']:.4f} |")
    publish("\n".join(lines), args.results)


if __name__ == "__main__":
    main()

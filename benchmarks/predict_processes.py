"""Sharded `predict`: `torchrun --nproc_per_node 2` at one thread each vs one process at two threads.

Both sides run `nlptasks predict RUN --file F --output OUT` on the same file (SST-2 test sentences,
cycled to `--inputs`) with the same batch and chunk sizes, and must write the same bytes. The run is a
classification run given as argument, or a MiniLM SST-2 run trained briefly here (as
`predict_vs_pipeline.py` does). Wall seconds are whole commands: start-up (imports, loading the model,
the process group) included, measured alone on a one-line file and shown beside them.

    NLPTASKS_DATA_DIR=../shared/data .venv/bin/python benchmarks/predict_processes.py [RUN_DIR] --results
"""

from __future__ import annotations

import argparse
import os
import platform
import shlex
import subprocess
import sys
import time
from datetime import date
from pathlib import Path

from common import publish
from predict_vs_pipeline import classifier_run, sst2_sentences

BIN = Path(sys.executable).parent


def sides(run_dir: Path, source: Path, output: Path, batch: int, chunk: int) -> dict[str, tuple[list[str], str]]:
    """Each side's command and its threads per process (OMP_NUM_THREADS), writing `output` with a side suffix."""
    predict = ["-m", "nlptasks", "predict", str(run_dir), "--file", str(source)]
    sizes = ["--batch-size", str(batch), "--chunk-size", str(chunk)]
    torchrun = [str(BIN / "torchrun"), "--standalone", "--nproc_per_node", "2"]
    return {
        "1 process × 2 threads": ([sys.executable, *predict, "--output", f"{output}.one.jsonl", *sizes], "2"),
        "torchrun 2 processes × 1 thread": ([*torchrun, *predict, "--output", f"{output}.two.jsonl", *sizes], "1"),
    }


def timed(command: list[str], threads: str) -> float:
    """Wall seconds of one command, which must succeed."""
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": threads})
    if done.returncode != 0:
        raise SystemExit(f"{shlex.join(command)} failed:\n{done.stderr[-4000:]}")
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", nargs="?", type=Path, help="a classification run (default: train one briefly)")
    parser.add_argument("--inputs", type=int, default=4000)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--chunk-size", type=int, default=256, help="small enough that each process gets many chunks")
    parser.add_argument("--workdir", type=Path, default=Path("runs/benchmarks"))
    parser.add_argument("--results", action="store_true", help="append the table to benchmarks/RESULTS.md")
    args = parser.parse_args()

    run_dir = args.run or classifier_run(args.workdir)
    args.workdir.mkdir(parents=True, exist_ok=True)
    source, warm = args.workdir / "predict-processes-inputs.txt", args.workdir / "predict-processes-one-line.txt"
    source.write_text("".join(text.replace("\n", " ") + "\n" for text in sst2_sentences(args.inputs)), encoding="utf-8")
    warm.write_text("A triumph.\n", encoding="utf-8")
    output = args.workdir / "predict-processes"

    rows = []
    for name, (command, threads) in sides(run_dir, source, output, args.batch_size, args.chunk_size).items():
        startup = timed([part.replace(str(source), str(warm)) for part in command], threads)
        rows.append((name, command, threads, timed(command, threads), startup))
    one, two = (Path(f"{output}.{side}.jsonl").read_bytes() for side in ("one", "two"))
    base, base_steady = rows[0][3], rows[0][3] - rows[0][4]

    lines = [
        f"### Sharded predict: 2 processes vs 1 ({date.today()})",
        "",
        f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores "
        f"({len(os.sched_getaffinity(0))} usable). Command: `NLPTASKS_DATA_DIR=../shared/data .venv/bin/python "
        f"benchmarks/predict_processes.py {f'{args.run} ' if args.run else ''}--inputs {args.inputs} "
        f"--batch-size {args.batch_size} --chunk-size {args.chunk_size} --results`. "
        f"Classifier: `{run_dir}`; {args.inputs} SST-2 test sentences (cycled), fp32.",
        "",
        "| side | OMP_NUM_THREADS | wall s | start-up s | inputs/s | speed-up | past start-up: inputs/s, speed-up |",
        "|---|---|---|---|---|---|---|",
        *(
            f"| {name} | {threads} | {wall:.1f} | {startup:.1f} | {args.inputs / wall:.1f} | {base / wall:.2f} | "
            f"{args.inputs / max(wall - startup, 1e-9):.1f}, {base_steady / max(wall - startup, 1e-9):.2f} |"
            for name, _, threads, wall, startup in rows
        ),
        "",
        "Commands (`--output` files differ by side):",
        "",
        *(f"- `OMP_NUM_THREADS={threads} {shlex.join(command)}`" for _, command, threads, _, _ in rows),
        "",
        f"Outputs: {'byte for byte identical' if one == two else 'DIFFERENT'} ({len(one.splitlines())} lines). "
        "Start-up: the same command on a one-line file.",
        "",
    ]
    publish("\n".join(lines), args.results)


if __name__ == "__main__":
    main()

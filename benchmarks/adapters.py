"""Full fine-tuning vs LoRA vs QLoRA of one model on one task: what each costs and what it scores.

Each method runs `nlptasks run` in its own process, so peak RSS is that process's own (wait4),
with the shipped recipes and the same batch size and sequence length within a table.

    NLPTASKS_DATA_DIR=../shared/data .venv/bin/python benchmarks/adapters.py minilm-sst2 smollm2-sst2 --results

`--set key=value` applies to every run (e.g. `--set data.max_train_samples=500` for a quick look).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
from datetime import date
from pathlib import Path

from common import publish

SMOLLM2_SHARED = {"data.max_train_samples": 2000, "train.batch_size": 16, "data.max_length": 128}
TABLES: dict[str, dict[str, tuple[str, dict[str, object]]]] = {
    "minilm-sst2": {
        "full": ("classification/minilm", {}),
        "lora": ("classification/minilm-lora", {}),
        "qlora": ("classification/minilm-lora", {"method": "qlora"}),
    },
    "smollm2-sst2": {
        "full": ("classification/smollm2", SMOLLM2_SHARED),
        "lora": ("classification/smollm2-qlora", {**SMOLLM2_SHARED, "method": "lora"}),
        "qlora": ("classification/smollm2-qlora", SMOLLM2_SHARED),
    },
}
"""Per table, method → (recipe, settings over it). smollm2 trains on 2,000 SST-2 sentences: a row in under 15 min."""


def measure(recipe: str, settings: dict[str, object], common: list[str], output: Path) -> dict[str, float]:
    """One run in a child process: its metrics.json training figures, test accuracy, and the kernel's peak RSS."""
    shutil.rmtree(output, ignore_errors=True)
    sets = [f"{key}={json.dumps(value)}" for key, value in {**settings, "output_dir": str(output)}.items()] + common
    command = [sys.executable, "-m", "nlptasks", "run", recipe, *(arg for s in sets for arg in ("--set", s))]
    with tempfile.TemporaryFile("w+") as err:
        child = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=err, env=os.environ.copy())
        _, status, usage = os.wait4(child.pid, 0)
        if os.waitstatus_to_exitcode(status) != 0:
            err.seek(0)
            raise SystemExit(f"{recipe} {settings} failed:\n{err.read()[-4000:]}")
    metrics = json.loads((output / "metrics.json").read_text())
    return {**metrics["train"], "accuracy": metrics["test"]["accuracy"], "peak_rss_gb": usage.ru_maxrss / 2**20}


def report(table: str, results: dict[str, dict[str, float]], common: list[str]) -> str:
    full = results.get("full", {})
    extra = "".join(f" --set {item}" for item in common)
    lines = [
        f"### {table}: full fine-tuning vs LoRA vs QLoRA ({date.today()})",
        "",
        f"Machine: {platform.machine()}, {os.cpu_count()} cores, no GPU. Command: `NLPTASKS_DATA_DIR=../shared/data "
        f".venv/bin/python benchmarks/adapters.py {table}{extra} --results`. Settings per row: "
        + "; ".join(f"{method} = `{recipe}` {settings or ''}" for method, (recipe, settings) in TABLES[table].items()),
        "",
        "| method | trainable params | saved model MB | peak RSS GB (× full) | train samples/s | train s | test acc. |",
        "|---|---|---|---|---|---|---|",
    ]
    for method, m in results.items():
        ratio = f" ({m['peak_rss_gb'] / full['peak_rss_gb']:.2f}×)" if full else ""
        lines.append(
            f"| {method} | {m['trainable_parameters']:,.0f} of {m['total_parameters']:,.0f} | "
            f"{m['model_megabytes']:.1f} | {m['peak_rss_gb']:.2f}{ratio} | {m['train_samples_per_second']:.1f} | "
            f"{m['train_runtime']:.0f} | {m['accuracy']:.4f} |"
        )
    return "\n".join(lines + [""])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("tables", nargs="+", choices=TABLES)
    parser.add_argument("--methods", nargs="+", default=["full", "lora", "qlora"], choices=["full", "lora", "qlora"])
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="applies to every run")
    parser.add_argument("--workdir", type=Path, default=Path("runs/benchmarks/adapters"))
    parser.add_argument("--results", action="store_true", help="append the tables to benchmarks/RESULTS.md")
    args = parser.parse_args()
    for table in args.tables:
        results = {}
        for method in args.methods:
            recipe, settings = TABLES[table][method]
            results[method] = measure(recipe, settings, args.set, args.workdir / f"{table}-{method}")
            print(f"{table} {method}: {json.dumps(results[method])}", flush=True)
        text = report(table, results, args.set)
        publish(text, args.results)


if __name__ == "__main__":
    main()

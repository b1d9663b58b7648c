"""Batched prediction: `nlptasks` `Predictor` vs `transformers.pipeline`, same model and inputs, same outputs.

A MiniLM SST-2 classifier (trained briefly here, or `--run` an existing classification run) labels
the SST-2 test sentences, cycled to `--inputs`. The pipeline runs at batch size 1 (its default)
and at `--batch-size`. Outputs must agree: the same label for every input and scores within 1e-4.
Useful FLOP/s against this machine's matmul peak shows how much headroom is left to any side.

    NLPTASKS_DATA_DIR=../shared/data .venv/bin/python benchmarks/predict_vs_pipeline.py --results
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import time
from datetime import date
from pathlib import Path

from common import matmul_peak_flops, publish


def classifier_run(workdir: Path) -> Path:
    """A briefly trained MiniLM SST-2 run: throughput does not depend on how well it learnt."""
    import nlptasks

    run_dir = workdir / "predict-bench-minilm-sst2"
    if not (run_dir / "metrics.json").is_file():
        settings = {
            "output_dir": str(run_dir),
            "train.max_steps": 20,
            "data.max_train_samples": 640,
            "train.eval_strategy": "no",
            "train.early_stopping_patience": None,
            "eval.splits": [],
        }
        nlptasks.run("classification/minilm", settings)
    return run_dir


def sst2_sentences(count: int) -> list[str]:
    from nlptasks import catalog

    path = catalog.local_dataset_folder("sst2") / "test.jsonl"
    sentences = [json.loads(line)["text"] for line in path.open(encoding="utf-8")]
    return list(itertools.islice(itertools.cycle(sentences), count))


def useful_flops(predictor: object, texts: list[str]) -> float:
    """Forward FLOPs the inputs need, padding excluded: 2 x (weights outside the embeddings) x tokens.

    Attention's own products add about 1% at these lengths and are left out, so this is a floor.
    """
    weights = sum(p.numel() for name, p in predictor.model.named_parameters() if "embeddings" not in name)
    tokens = sum(map(len, predictor.tokenizer(texts, truncation=True)["input_ids"]))
    return 2.0 * weights * tokens


def timed(function: object, texts: list[str]) -> tuple[list[dict], float]:
    function(texts[:64])  # warm-up: first-call allocations and lazy imports
    started = time.perf_counter()
    outputs = function(texts)
    return outputs, len(texts) / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", type=Path, help="an existing classification run (default: train one briefly)")
    parser.add_argument("--inputs", type=int, default=2000)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--workdir", type=Path, default=Path("runs/benchmarks"))
    parser.add_argument("--results", action="store_true", help="append the table to benchmarks/RESULTS.md")
    args = parser.parse_args()

    from transformers import pipeline

    import nlptasks

    run_dir = args.run or classifier_run(args.workdir)
    texts = sst2_sentences(args.inputs)
    model_dir = str(run_dir / "model")
    classify = pipeline("text-classification", model=model_dir, tokenizer=model_dir, device=-1)
    predictor = nlptasks.load(run_dir, batch_size=args.batch_size)

    throughput, outputs = {}, {}
    for batch in (1, args.batch_size):
        outputs[f"pipeline, batch {batch}"], throughput[f"pipeline, batch {batch}"] = timed(
            lambda t, b=batch: classify(t, batch_size=b), texts
        )
    outputs["nlptasks"], throughput["nlptasks"] = timed(predictor.predict, texts)

    reference = outputs[f"pipeline, batch {args.batch_size}"]
    same_labels = sum(ours["label"] == theirs["label"] for ours, theirs in zip(outputs["nlptasks"], reference))
    score_gap = max(abs(ours["score"] - theirs["score"]) for ours, theirs in zip(outputs["nlptasks"], reference))
    flops, peak = useful_flops(predictor, texts), matmul_peak_flops(bf16=False)
    ratios = {name: throughput["nlptasks"] / value for name, value in throughput.items() if name != "nlptasks"}

    lines = [
        f"### Batched predict vs `transformers.pipeline` ({date.today()})",
        "",
        f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch threads "
        f"{__import__('torch').get_num_threads()}. Command: `NLPTASKS_DATA_DIR=../shared/data .venv/bin/python "
        f"benchmarks/predict_vs_pipeline.py --inputs {args.inputs} --batch-size {args.batch_size} --results`. "
        f"MiniLM-L6 SST-2 classifier, {args.inputs} SST-2 test sentences (cycled), fp32.",
        "",
        "| side | inputs/s | nlptasks × | useful GFLOP/s (share of matmul peak) |",
        "|---|---|---|---|",
        *(
            f"| {name} | {value:.1f} | {ratios.get(name, 1.0):.2f} | "
            f"{flops * value / len(texts) / 1e9:.1f} ({flops * value / len(texts) / peak:.0%}) |"
            for name, value in throughput.items()
        ),
        "",
        f"Outputs: the same label for {same_labels} of {len(texts)} inputs, largest score difference "
        f"{score_gap:.1e}. Useful FLOPs: 2 × weights outside the embeddings × input tokens, padding excluded "
        f"({flops / len(texts) / 1e6:.0f} MFLOP an input); fp32 matmul peak measured here (2048²): "
        f"{peak / 1e9:.0f} GFLOP/s.",
        "",
    ]
    text = "\n".join(lines)
    publish(text, args.results)


if __name__ == "__main__":
    main()

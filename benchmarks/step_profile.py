"""Where one training step's time goes: `torch.profiler`'s operator table for MiniLM token classification.

The step is what the Trainer runs for `ner/minilm`: forward, backward, gradient clipping at norm 1,
fused AdamW, gradients set to None, on batches of real shape (32 sentences of one padded length,
as length-grouped batches are). `--cpu-training` profiles the model as the training core sets it up
on a CPU (`nlptasks.training.cpu`) beside the stock one; `--compile` profiles the `torch.compile`d
model (dynamic shapes, compiled before the profile starts). All sides run in one process, on the
same batches.

    .venv/bin/python benchmarks/step_profile.py --lengths 12 24 40 --compile --results

Prints, per side, the mean step time at each length and the operators that take most of it.
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from collections.abc import Callable
from datetime import date
from functools import partial

import torch
from common import matmul_peak_flops, publish

LABELS = 9


def training_step(model: torch.nn.Module, optimizer: torch.optim.Optimizer, bf16: bool) -> Callable[[dict], None]:
    def step(batch: dict) -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = model(**batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def for_cpu_training(model: torch.nn.Module, longest_row: int) -> torch.nn.Module:
    from nlptasks.training.cpu import prepare_for_cpu_training

    prepare_for_cpu_training(model, longest_row)
    return model


def batch_of(length: int, size: int, generator: torch.Generator) -> dict:
    ids = torch.randint(1000, 20000, (size, length), generator=generator)
    return {
        "input_ids": ids,
        "attention_mask": torch.ones_like(ids),
        "labels": torch.randint(0, LABELS, (size, length), generator=generator),
    }


def mean_step_ms(step: Callable[[dict], None], batch: dict, repeats: int) -> float:
    step(batch)
    started = time.perf_counter()
    for _ in range(repeats):
        step(batch)
    return (time.perf_counter() - started) / repeats * 1000


def operator_table(step: Callable[[dict], None], batches: list[dict], rows: int) -> tuple[str, float]:
    """The top operators by their own time over one step per batch, as a Markdown table, and the total (ms)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as profiled:
        for batch in batches:
            step(batch)
    events = sorted(profiled.key_averages(), key=lambda event: event.self_cpu_time_total, reverse=True)
    total = sum(event.self_cpu_time_total for event in events)
    lines = ["| operator | calls a step | ms a step | share |", "|---|---|---|---|"]
    for event in events[:rows]:
        lines.append(
            f"| `{event.key}` | {event.count / len(batches):.0f} | "
            f"{event.self_cpu_time_total / 1000 / len(batches):.1f} | {event.self_cpu_time_total / total:.1%} |"
        )
    return "\n".join(lines), total / 1000 / len(batches)


def side(name: str, model: torch.nn.Module, batches: list[dict], args: argparse.Namespace) -> list[str]:
    optimizer = torch.optim.AdamW(model.parameters(), lr=5e-5, fused=True)
    step = training_step(model, optimizer, args.bf16)
    started = time.perf_counter()
    for batch in batches:
        step(batch)
    warm_up = time.perf_counter() - started
    times = {batch["input_ids"].shape[1]: mean_step_ms(step, batch, args.repeats) for batch in batches}
    table, total = operator_table(step, batches, args.rows)
    per_length = ", ".join(f"length {length}: {ms:.0f} ms" for length, ms in times.items())
    return [
        f"**{name}**: first step at each length {warm_up:.1f} s in all; then a step takes {per_length}. "
        f"Profiled: {total:.0f} ms a step over the lengths.",
        "",
        table,
        "",
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="minilm-l6")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lengths", type=int, nargs="+", default=[12, 24, 40])
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--rows", type=int, default=12)
    parser.add_argument("--compile", action="store_true", help="also profile the torch.compile'd model")
    parser.add_argument(
        "--cpu-training", action="store_true", help="also profile the model as the training core sets it up on a CPU"
    )
    parser.add_argument("--bf16", action="store_true", help="forward under bf16 autocast, as the Trainer's bf16")
    parser.add_argument("--results", action="store_true", help="append the tables to benchmarks/RESULTS.md")
    args = parser.parse_args()

    from transformers import AutoModelForTokenClassification
    from transformers.utils import logging

    from nlptasks import catalog

    logging.set_verbosity_error()
    location = catalog.resolve_model(args.model).location
    generator = torch.Generator().manual_seed(0)
    batches = [batch_of(length, args.batch_size, generator) for length in args.lengths]
    lengths = " ".join(map(str, args.lengths))
    precision = "bf16 autocast" if args.bf16 else "fp32"
    lines = [
        f"### One training step, profiled ({date.today()})",
        "",
        f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch threads "
        f"{torch.get_num_threads()}, {precision}; matmul peak measured here "
        f"{matmul_peak_flops(args.bf16) / 1e9:.0f} GFLOP/s. "
        f"Command: `.venv/bin/python benchmarks/step_profile.py --lengths {lengths}"
        f"{' --bf16' if args.bf16 else ''}{' --cpu-training' if args.cpu_training else ''}"
        f"{' --compile' if args.compile else ''} --results`. "
        f"`{args.model}` token classification, "
        f"{args.batch_size} sentences a batch; a step is forward, backward, clipping, fused AdamW.",
        "",
    ]
    sides = {"eager": lambda model: model}
    if args.cpu_training:
        sides["as trained on a CPU (`training.cpu`: cheaper dropout, unfused attention)"] = partial(
            for_cpu_training, longest_row=max(args.lengths)
        )
    if args.compile:
        sides["compiled (`torch.compile`, dynamic shapes)"] = lambda model: torch.compile(model, dynamic=True)
    for name, wrap in sides.items():
        torch.manual_seed(0)
        model = AutoModelForTokenClassification.from_pretrained(location, num_labels=LABELS).train()
        lines += side(name, wrap(model), batches, args)
    publish("\n".join(lines), args.results)


if __name__ == "__main__":
    main()

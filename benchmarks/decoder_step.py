"""One decoder training step with logits at every position vs at the learnt positions only.

A task that trains SmolLM2 (summarization, translation, RAG answers) learns the target's tokens and
not the prompt's, whose labels are -100. `TaskTrainer` asks the model for logits only where the next
token is learnt (`at_labelled_positions`); the stock loss projects every position onto the 49,152-word
vocabulary. Each side runs in its own process (its peak RSS is its own): bf16 autocast where the CPU
has it, `--batch` rows of `--prompt` prompt tokens and `--answer` answer tokens, forward and backward
without gradient checkpointing; the mean of `--steps` steps after one warm-up.

    .venv/bin/python benchmarks/decoder_step.py --prompt 640 --answer 12 --batch 4 --results
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from datetime import date

from common import measured_child, publish


def child(args: argparse.Namespace) -> None:
    import torch
    from transformers import AutoModelForCausalLM

    from nlptasks.catalog import resolve_model
    from nlptasks.training.settings import resolve_precision
    from nlptasks.training.trainer import at_labelled_positions

    model = AutoModelForCausalLM.from_pretrained(resolve_model("smollm2-135m-instruct").location).train()
    torch.manual_seed(0)
    ids = torch.randint(0, model.config.vocab_size, (args.batch, args.prompt + args.answer))
    labels = ids.clone()
    labels[:, : args.prompt] = -100
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels}
    if args.child == "kept":
        batch = at_labelled_positions(batch)
    bf16 = resolve_precision("auto") == "bf16"
    times = []
    for _ in range(args.steps + 1):
        started = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = model(**batch).loss
        loss.backward()
        model.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - started)
    print(json.dumps({"seconds": sum(times[1:]) / args.steps, "loss": loss.item(), "bf16": bf16}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prompt", type=int, default=640)
    parser.add_argument("--answer", type=int, default=12)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--child", choices=["all", "kept"], help=argparse.SUPPRESS)
    parser.add_argument("--results", action="store_true", help="append the table to RESULTS.md")
    args = parser.parse_args()
    if args.child:
        child(args)
        return
    shape = ["--prompt", str(args.prompt), "--answer", str(args.answer), "--batch", str(args.batch)]
    sides = {}
    for side in ("all", "kept"):
        command = [sys.executable, __file__, *shape, "--steps", str(args.steps), "--child", side]
        sides[side] = measured_child(command, side)
    command = " ".join(["benchmarks/decoder_step.py", *sys.argv[1:]])
    lines = [
        f"### SmolLM2 training step: logits at every position vs at the learnt ones ({date.today()})",
        "",
        f"Machine: {platform.processor() or platform.machine()}, "
        f"{'bf16' if sides['all'][0]['bf16'] else 'fp32'}. Command: `{command}`. Batch {args.batch} x "
        f"({args.prompt} prompt + {args.answer} answer tokens), forward and backward, mean of {args.steps} steps.",
        "",
        "| logits | s / step | peak RSS GB | loss |",
        "|---|---|---|---|",
    ]
    for side, name in (("all", "every position (stock)"), ("kept", "learnt positions only")):
        result, peak = sides[side]
        lines.append(f"| {name} | {result['seconds']:.2f} | {peak / 1e9:.2f} | {result['loss']:.4f} |")
    publish("\n".join([*lines, ""]), args.results)


if __name__ == "__main__":
    main()

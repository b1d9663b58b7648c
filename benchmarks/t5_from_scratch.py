"""Short T5-mini training runs on Multi30k en->de that compare how the output layer and optimizer are set up.

Each variant trains 300 steps (batch 64, 15 warm-up steps, then a constant rate, fp32, seed 0)
with a plain PyTorch loop and prints the mean training loss of the last 50 steps and the
validation loss on 400 pairs. A loop of its own, not the recipe, so that only the variant
changes: the question is which setup lets T5 learn from scratch under a fixed budget.

    NLPTASKS_DATA_DIR=../shared/data .venv/bin/python benchmarks/t5_from_scratch.py \
        tied small_embedding embed_lr adafactor

transformers 5 always ties T5's output layer to its embedding; `tie_word_embeddings=False` only
drops the d_model^-0.5 rescaling of the decoder output. `small_embedding` does that and starts
the shared embedding at std d_model^-0.5 instead of 1, so the logits start at the same scale.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import time
from pathlib import Path

import torch
from transformers import T5Config, T5ForConditionalGeneration
from transformers.optimization import Adafactor

from nlptasks.models.t5 import train_unigram_tokenizer

VARIANTS = ("tied", "small_embedding", "embed_lr", "adafactor")
FAST = ("shared.weight", "final_layer_norm")
"""`embed_lr`: the parameters that set the logits' scale in a tied T5, trained at 10x the rate."""


def pairs(split: str) -> list[dict[str, str]]:
    path = Path(os.environ.get("NLPTASKS_DATA_DIR", "../shared/data")) / "translation" / "multi30k" / f"{split}.jsonl"
    return [json.loads(line)["translation"] for line in path.open(encoding="utf-8")]


def build(variant: str, vocab: int) -> T5ForConditionalGeneration:
    config = T5Config(
        vocab_size=vocab, d_model=256, d_kv=64, d_ff=1024, num_layers=4, num_heads=4, dropout_rate=0.1,
        pad_token_id=0, eos_token_id=1, decoder_start_token_id=0, tie_word_embeddings=variant != "small_embedding",
    )  # fmt: skip
    torch.manual_seed(0)
    model = T5ForConditionalGeneration(config)
    if variant == "small_embedding":
        model.shared.weight.data.normal_(0.0, 256**-0.5)
    return model


def optimizer(variant: str, model: torch.nn.Module) -> torch.optim.Optimizer:
    if variant == "adafactor":
        return Adafactor(model.parameters(), lr=None, scale_parameter=True, relative_step=True, warmup_init=False)
    fast = [p for n, p in model.named_parameters() if variant == "embed_lr" and any(f in n for f in FAST)]
    rest = [p for n, p in model.named_parameters() if not (variant == "embed_lr" and any(f in n for f in FAST))]
    groups = [{"params": rest, "lr": 1e-3}] + ([{"params": fast, "lr": 1e-2}] if fast else [])
    return torch.optim.AdamW(groups, weight_decay=0.01)


def measure(variant: str, tokenizer, train: list[dict], validation: list[dict], steps: int) -> str:
    model = build(variant, len(tokenizer))
    opt = optimizer(variant, model)
    rates = [group["lr"] for group in opt.param_groups]

    def batch(rows: list[dict]) -> tuple[dict, torch.Tensor]:
        inputs = tokenizer([r["en"] for r in rows], padding=True, return_tensors="pt")
        labels = tokenizer([r["de"] for r in rows], padding=True, return_tensors="pt")["input_ids"]
        return inputs, labels.masked_fill(labels == tokenizer.pad_token_id, -100)

    order = list(range(len(train)))
    random.Random(0).shuffle(order)
    losses, start = [], time.time()
    model.train()
    for step in range(steps):
        if variant != "adafactor":
            for group, rate in zip(opt.param_groups, rates):
                group["lr"] = rate * min(1.0, (step + 1) / 15)
        inputs, labels = batch([train[i] for i in order[step * 64 : (step + 1) * 64]])
        loss = model(**inputs, labels=labels).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())
    model.eval()
    total = tokens = 0
    with torch.no_grad():
        for first in range(0, len(validation), 100):
            inputs, labels = batch(validation[first : first + 100])
            count = int((labels != -100).sum())
            total += model(**inputs, labels=labels).loss.item() * count
            tokens += count
    return (
        f"{variant}: train loss (last 50) {sum(losses[-50:]) / 50:.3f}  "
        f"validation loss {total / tokens:.3f}  {time.time() - start:.0f} s"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("variants", nargs="+", choices=VARIANTS)
    parser.add_argument("--steps", type=int, default=300)
    args = parser.parse_args()
    torch.set_num_threads(os.cpu_count() or 1)
    train, validation = pairs("train"), pairs("validation")[:400]
    tokenizer = train_unigram_tokenizer((text for row in train for text in (row["en"], row["de"])), 8000)
    for variant in args.variants:
        print(measure(variant, tokenizer, train, validation, args.steps), flush=True)


if __name__ == "__main__":
    main()

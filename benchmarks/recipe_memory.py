"""Peak resident memory of every shipped recipe over its heaviest phase, each recipe in a fresh process.

    OMP_NUM_THREADS=1 NLPTASKS_DATA_DIR=../shared/data .venv/bin/python benchmarks/recipe_memory.py --results

(or name recipes: `... recipe_memory.py summarization/t5 qa/t5`)

A training recipe runs through `nlptasks.run` as shipped, with its whole data (tokenizers learnt from
the training split, vocabularies and model sizes are the full run's), except that:

- training takes `--steps` optimizer steps: the training split's longest batches (token counts, as
  length grouping counts them) alternating with batches drawn at random. Step 1 is the batch a full
  run meets once per epoch: activations, attention and logits grow with a batch's tokens (attention
  with their square), and weights, gradients and optimizer state are all there from the first step.
  The random batches in between fragment the heap as a run's mixed lengths do, so the next long batch
  lands on a heap in a run's state, not a fresh one;
- a generating task's evaluated splits keep only their `train.eval_batch_size` longest examples (by
  characters): the last and widest batch of a full pass, at the recipe's batch size and decoding
  settings (the whole pass is the cost the benchmark cannot pay for every recipe). What a full pass adds
  beyond it is the generated ids the Trainer gathers, a few hundred KB. Other tasks score their splits
  whole, since what the Trainer gathers there (logits, and whatever else the model returns) grows with
  the split; `--cut-evaluation` cuts theirs too (for a model too slow to score a split whole here), and
  the row then gives what the whole split's gathered outputs would add, from the cut pass's own;
- a recipe that scores validation during training does so once, after the last step, then saves its
  checkpoint and loads the best one back, as a full run does at each evaluation and at its end.

Untrained methods (Lead, TextRank) run whole. A RAG recipe indexes the Cranfield corpus (1,400
abstracts) and answers one question. The peak is the kernel's (wait4's `ru_maxrss`); where it was
reached is the phase running in the main thread when the high-water mark last rose (sampled every
20 ms), with the batch's shape for training and evaluation steps.

What it leaves out is the heap a long run fragments between two trims (`train.trim_memory_every`, and
the growth bound of `TrimFreedMemory`), which a few steps cannot build up: full runs compared with
this measurement of the same recipe, on the same machine, peaked 13% and 24% above it (RESULTS.md,
"Recipe memory"), so read each figure with that margin.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from datetime import date
from pathlib import Path
from typing import Any

from common import measured_child, publish

SAMPLE_SECONDS = 0.02
PHASES = (
    ("generate", "generation"),
    ("prediction_step", "evaluation forward pass"),
    ("optimizer_step", "optimizer step"),
    ("clip_grad_norm_", "optimizer step (gradient clipping)"),
    ("training_step", "training step"),
    ("_save_checkpoint", "checkpoint"),
    ("publish_model", "model saved"),
    ("score", "scoring"),
    ("decode", "decoding outputs"),
    ("featurize", "tokenization"),
    ("build", "model build"),
    ("load_splits", "data loading"),
    ("build_index", "indexing"),
    ("ask", "RAG answer"),
)
"""Function names in the main thread's stack, innermost first wins, and the phase each stands for."""


class PhaseSampler(threading.Thread):
    """Reads the process's high-water mark every few ms and notes the phase whenever it rises."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.main = threading.main_thread().ident
        self.shape = ""
        self.gathered_bytes = 0
        """What evaluation's forward passes returned for the Trainer to gather (logits and the like)."""
        self.cut: dict[str, tuple[int, int]] = {}
        """`--cut-evaluation`: each evaluated split's examples kept, and its examples in all."""
        self.peak_kb = 0
        self.where = "start-up"

    def run(self) -> None:
        while True:
            high_water = _status_kilobytes("VmHWM")
            if high_water > self.peak_kb:
                self.peak_kb, self.where = high_water, self.phase()
            time.sleep(SAMPLE_SECONDS)

    def phase(self) -> str:
        frame = sys._current_frames().get(self.main)
        names = []
        while frame is not None:
            names.append(frame.f_code.co_name)
            frame = frame.f_back
        for name in names:
            for marker, phase in PHASES:
                if name == marker:
                    shown = self.shape if phase in ("training step", "evaluation forward pass", "generation") else ""
                    return f"{phase}{shown}"
        return names[0] if names else "?"


def _status_kilobytes(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def longest_first(sampler: PhaseSampler) -> None:
    """Training batches longest first; each step's and evaluation batch's shape noted for the sampler."""
    import torch
    from torch.utils.data import Sampler

    from nlptasks.tasks.base import lengths_of
    from nlptasks.training.trainer import TaskTrainer

    class LongestFirst(Sampler):
        """Batches of the longest examples, each followed by a batch of random ones."""

        def __init__(self, lengths: list[int], batch_size: int) -> None:
            longest = sorted(range(len(lengths)), key=lambda i: -lengths[i])
            shuffled = torch.randperm(len(lengths), generator=torch.Generator().manual_seed(0)).tolist()
            self.order = []
            for start in range(0, len(lengths), batch_size):
                self.order += longest[start : start + batch_size] + shuffled[start : start + batch_size]

        def __iter__(self) -> Any:
            return iter(self.order)

        def __len__(self) -> int:
            return len(self.order)

    original_sampler = TaskTrainer._get_train_sampler

    def sampler_of(trainer: TaskTrainer, train_dataset: Any = None) -> Any:
        dataset = train_dataset if train_dataset is not None else trainer.train_dataset
        if "input_ids" not in dataset.column_names:
            return original_sampler(trainer, train_dataset)
        batch_size = trainer.args.train_batch_size * trainer.args.gradient_accumulation_steps
        return LongestFirst(trainer.lengths or lengths_of(dataset), batch_size)

    def noting(method: Callable[..., Any]) -> Callable[..., Any]:
        def noted(trainer: TaskTrainer, model: Any, inputs: dict[str, Any], *args: Any, **kwargs: Any) -> Any:
            tensor = inputs.get("input_ids")
            if isinstance(tensor, torch.Tensor):
                sampler.shape = f", batch {'x'.join(str(n) for n in tensor.shape)}"
            return method(trainer, model, inputs, *args, **kwargs)

        return noted

    def gathering(method: Callable[..., Any]) -> Callable[..., Any]:
        def counted(*args: Any, **kwargs: Any) -> Any:
            loss, outputs, labels = method(*args, **kwargs)
            parts = outputs if isinstance(outputs, tuple | list) else [outputs]
            sampler.gathered_bytes += sum(part.nbytes for part in parts if isinstance(part, torch.Tensor))
            return loss, outputs, labels

        return counted

    TaskTrainer._get_train_sampler = sampler_of
    TaskTrainer.training_step = noting(TaskTrainer.training_step)
    TaskTrainer.prediction_step = gathering(noting(TaskTrainer.prediction_step))


def longest_evaluation_examples(sampler: PhaseSampler) -> None:
    """A generating task's evaluated splits (every task's with `--cut-evaluation`) cut to their
    `eval_batch_size` longest examples; train untouched."""
    from nlptasks.training import core

    loader = core.load_splits

    def longest(config: Any, task: Any, *args: Any, **kwargs: Any) -> Any:
        splits = loader(config, task, *args, **kwargs)
        if not task.generates and not os.environ.get("RECIPE_MEMORY_CUT_EVALUATION"):
            return splits
        keep = int(os.environ["RECIPE_MEMORY_EVAL_EXAMPLES"])
        for name in [name for name in splits if name != "train"]:
            sizes = [len(json.dumps(row, ensure_ascii=False)) for row in splits[name]]
            order = sorted(range(len(sizes)), key=lambda i: -sizes[i])[:keep]
            sampler.cut[name] = (len(order), len(sizes))
            splits[name] = splits[name].select(sorted(order))
        return splits

    core.load_splits = longest


def measure_training_recipe(name: str, steps: int, output: Path) -> None:
    import nlptasks
    from nlptasks.recipe import load_recipe

    recipe = load_recipe(name)
    os.environ["RECIPE_MEMORY_EVAL_EXAMPLES"] = str(recipe.train.eval_batch_size)
    overrides: dict[str, Any] = {"output_dir": str(output), "train.max_steps": steps}
    if recipe.train.eval_strategy != "no":
        overrides.update({"train.eval_strategy": "steps", "train.eval_steps": steps})
    nlptasks.run(name, overrides, overwrite=True)


def measure_rag_recipe(name: str, output: Path) -> None:
    from nlptasks import rag
    from nlptasks.rag.evaluate import _benchmark_folder, _cranfield

    corpus, queries = _cranfield(_benchmark_folder("cranfield"))
    rag.build_index(corpus(), output / "index", rag.load_settings(name, None))
    rag.RagPipeline(output / "index").ask(queries[0]["text"])


def child(name: str, steps: int) -> dict[str, Any]:
    sampler = PhaseSampler()
    sampler.start()
    longest_first(sampler)
    longest_evaluation_examples(sampler)
    with tempfile.TemporaryDirectory() as folder:
        if name.startswith("rag/"):
            measure_rag_recipe(name, Path(folder))
        else:
            measure_training_recipe(name, steps, Path(folder) / "run")
    time.sleep(2 * SAMPLE_SECONDS)
    return {"where": sampler.where + _whole_splits_would_add(sampler), "sampled_peak_mb": sampler.peak_kb / 1024}


def _whole_splits_would_add(sampler: PhaseSampler) -> str:
    """For `--cut-evaluation` of a task that does not generate: the gathered outputs of whole splits, at
    most (the cut keeps the longest examples, which return the most per example)."""
    if not os.environ.get("RECIPE_MEMORY_CUT_EVALUATION") or not sampler.cut or not sampler.gathered_bytes:
        return ""
    kept = sum(kept for kept, _ in sampler.cut.values())
    whole = sum(total for _, total in sampler.cut.values())
    extra = sampler.gathered_bytes / kept * (whole - kept)
    return f"; evaluation cut to {kept} of {whole} examples: whole splits would gather ≤ {extra / 2**20:.0f} MB more"


def shipped() -> list[str]:
    from nlptasks.recipe import shipped_recipes

    return [name for name, _ in shipped_recipes()]


def machine() -> str:
    import torch
    import transformers

    from nlptasks.training.settings import resolve_precision

    cores = os.cpu_count()
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    threads = os.environ.get("OMP_NUM_THREADS", str(cores))
    return (
        f"{platform.machine()}, {cores} cores, {memory:.0f} GiB, {threads} thread(s) per run, precision auto = "
        f"{resolve_precision('auto')}; torch {torch.__version__}, transformers {transformers.__version__}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("recipes", nargs="*", help="shipped recipe names (default: every one)")
    parser.add_argument("--steps", type=int, default=10, help="training steps on the longest batches")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--results", action="store_true", help="append the table to RESULTS.md")
    parser.add_argument(
        "--cut-evaluation", action="store_true", help="every task's evaluated splits to their longest eval batch"
    )
    args = parser.parse_args()
    if args.cut_evaluation:
        os.environ["RECIPE_MEMORY_CUT_EVALUATION"] = "1"  # read by the child processes
    if args.child:
        print(json.dumps(child(args.child, args.steps)))
        return
    names = args.recipes or shipped()
    lines = [
        f"## Recipe memory ({date.today().isoformat()})",
        "",
        f"Machine: {machine()}. Command: `OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', '')} "
        "NLPTASKS_DATA_DIR=../shared/data .venv/bin/python benchmarks/recipe_memory.py "
        f"--steps {args.steps}{' --cut-evaluation' if args.cut_evaluation else ''} --results`.",
        "",
        "| recipe | peak RSS | where it peaks |",
        "|---|---|---|",
    ]
    for name in names:
        lines.append(row(name, args.steps))
        print(lines[-1], file=sys.stderr, flush=True)
    publish("\n".join(lines), args.results)


def row(name: str, steps: int) -> str:
    """One recipe's table row; a recipe that cannot run here (a Hub model offline) says why instead."""
    command = [sys.executable, __file__, "--child", name, "--steps", str(steps)]
    try:
        result, peak = measured_child(command, name)
    except SystemExit as failure:
        lines = [line for line in str(failure).splitlines() if line.strip()]
        return f"| `{name}` | not measured | {lines[-1][:160] if lines else 'failed'} |"
    return f"| `{name}` | {peak / 2**30:.2f} GB | {result['where']} |"


if __name__ == "__main__":
    main()

"""Batch inference over the processes of `torchrun` or `accelerate launch`: one output, as one process writes it.

`predict --output` and `embed` cut the inputs into chunks of the predictor's `chunk_size` and give
chunk k to process k % N. Each process writes its predictions as JSON lines to
`OUT.parts/part-<rank>.jsonl`; once every process is done, process 0 reads the parts back chunk by
chunk in the same rotation, so the merged output is line for line what a single process writes,
and removes the folder. Across machines OUT must be on a filesystem that every node sees.

`eval` decodes one contiguous shard of the examples per process and scores the gathered
predictions on process 0, so the metrics are those of a single process: corpus-level metrics
(F1 over all entities, ROUGE, correlations) cannot be averaged from per-process scores.

A single process (no `WORLD_SIZE` above 1) takes none of these paths and touches no process group.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import shutil
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import torch

from nlptasks.errors import UserInputError
from nlptasks.rundir import replaced_atomically

if TYPE_CHECKING:
    import datasets
    from accelerate import PartialState

    from nlptasks.predict import Predictor

T = TypeVar("T")
Rows = Iterator[dict[str, Any]]


def world_size() -> int:
    """How many processes the launcher started (`WORLD_SIZE`, set by torchrun and accelerate launch); 1 without one."""
    return int(os.environ.get("WORLD_SIZE") or 1)


def share_cpu_threads(on_cpu: bool = True) -> int:
    """Cap torch's threads at this process's share of the cores it may run on; returns the thread count.

    Each process of a job on one machine otherwise starts a thread per core, and OpenMP threads
    spinning on cores that another process keeps busy slow every process down several times over.
    A count already within the share (an explicit smaller `OMP_NUM_THREADS`) is kept, so calling
    this again changes nothing; a single process, or one computing on a GPU, is left alone.
    """
    local = int(os.environ.get("LOCAL_WORLD_SIZE") or 1)
    if on_cpu and local > 1:
        share = max(1, usable_cores() // local)
        if torch.get_num_threads() > share:
            torch.set_num_threads(share)
    return torch.get_num_threads()


def usable_cores() -> int:
    """The cores this process may run on (its affinity mask under taskset or a container), not the machine's."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def processes() -> PartialState | None:
    """The job's process group when launched as several processes, else None.

    Set up the way training sets it up (gloo on a CPU-only machine, where a plain `PartialState()`
    would count one process), so the same launch command works for both. A single process never
    creates accelerate's process-wide state.
    """
    if world_size() <= 1:
        return None
    from accelerate import PartialState

    state = PartialState(cpu=not torch.cuda.is_available())
    share_cpu_threads()  # accelerate may have set threads from the physical cores; keep within this share
    return state


def is_main_process() -> bool:
    """Whether this process reports: the only one, or process 0 of several."""
    state = processes()
    return state is None or state.is_main_process


def single_process_only(what: str) -> None:
    """Stop (exit 2) before any work when `what` cannot be split among the launcher's processes."""
    if world_size() > 1:
        raise UserInputError(f"{what} (this is one of {world_size()} processes)")


def main_process_first() -> contextlib.AbstractContextManager[Any]:
    """Process 0 first, then the others: one process fills a shared cache (tokenized data) that the rest read."""
    state = processes()
    return contextlib.nullcontext() if state is None else state.main_process_first()


def own_chunks(texts: Iterable[T], size: int, rank: int, world: int) -> Iterator[list[T]]:
    """The chunks of `size` inputs whose number k has k % world == rank.

    The other chunks are read and skipped, not predicted: every process reads the whole input, so
    a bad line stops all of them with the same message instead of leaving some waiting for the rest.
    """
    iterator = iter(texts)
    for number in itertools.count():
        chunk = list(itertools.islice(iterator, size))
        if not chunk:
            return
        if number % world == rank:
            yield chunk


def shared_predictions(predictor: Predictor, texts: Iterable[Any], output: Path, write: Callable[[Rows], int]) -> int:
    """Predict `texts` and hand the predictions, in input order, to `write` (which writes `output`); returns its count.

    Under several processes each predicts its own chunks into `output`'s parts folder, and process 0
    alone calls `write` with the merged predictions; the others return 0 once `output` is in place.
    """
    state = processes()
    if state is None:
        return write(predictor.stream(texts))
    parts = parts_folder(output)
    rank, world, size = state.process_index, state.num_processes, predictor.chunk_size
    mine = (prediction for chunk in own_chunks(texts, size, rank, world) for prediction in predictor.stream(chunk))
    _write_part(mine, parts / f"part-{rank}.jsonl")
    state.wait_for_everyone()
    count = 0
    if state.is_main_process:
        count = write(json.loads(line) for line in merged_parts(parts, world, size))
        shutil.rmtree(parts)
    state.wait_for_everyone()
    return count


def parts_folder(output: Path) -> Path:
    """Where the processes of a job write their shares of `output`: `OUT.parts/` beside it."""
    return output.with_name(f"{output.name}.parts")


def _write_part(rows: Iterable[dict[str, Any]], part: Path) -> None:
    """This process's predictions as JSON lines; removed again if predicting fails, so no stale share is merged."""
    part.parent.mkdir(parents=True, exist_ok=True)
    try:
        with part.open("w", encoding="utf-8", newline="\n") as handle:
            handle.writelines(json_line(row) for row in rows)
    except BaseException:
        part.unlink(missing_ok=True)
        with contextlib.suppress(OSError):
            part.parent.rmdir()  # the last process out removes the folder; a non-empty one stays for the others
        raise


def merged_parts(parts: Path, world: int, size: int) -> Iterator[str]:
    """The parts' lines in input order: chunk k is the next `size` lines of part k % world.

    Every chunk but the last is full, so the first short (or empty) one ends the input. Lines left
    over in any part after that mean the parts do not come from one job, and stop the merge.
    """
    with contextlib.ExitStack() as stack:
        handles = [
            stack.enter_context((parts / f"part-{rank}.jsonl").open(encoding="utf-8", newline="\n"))
            for rank in range(world)
        ]
        for number in itertools.count():
            lines = list(itertools.islice(handles[number % world], size))
            yield from lines
            if len(lines) < size:
                break
        if leftover := [handle.name for handle in handles if handle.readline()]:
            raise RuntimeError(f"{parts}: lines past the end of the input in {leftover}; were the parts left over?")


def json_line(row: dict[str, Any]) -> str:
    """One prediction as `predict` prints it."""
    return json.dumps(row, ensure_ascii=False) + "\n"


def write_predictions(predictor: Predictor, texts: Iterable[Any], output: Path) -> int:
    """Predictions as JSON lines in `output`, in input order, written atomically; returns how many."""

    def write(rows: Rows) -> int:
        count = 0
        with replaced_atomically(output) as handle:
            for row in rows:
                handle.write(json_line(row))
                count += 1
        return count

    return shared_predictions(predictor, texts, output, write)


def score(predictor: Predictor, examples: datasets.Dataset) -> dict[str, float]:
    """The task's metrics on `examples`; under several processes each decodes a contiguous shard.

    The predictions are gathered in process order (so in example order) and scored once, on
    process 0, then sent to every process: all return the metrics a single process computes.
    """
    state = processes()
    if state is None:
        return predictor.score(examples)
    from accelerate.utils import broadcast_object_list, gather_object

    shard = examples.shard(num_shards=state.num_processes, index=state.process_index, contiguous=True)
    predictions = gather_object(list(predictor.decode(shard)) if len(shard) else [])
    metrics = [predictor.task.score(examples, predictions) if state.is_main_process else None]
    return broadcast_object_list(metrics)[0]

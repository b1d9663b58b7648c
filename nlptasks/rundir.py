"""The run directory: one place that knows its layout, and writes that never leave half a file.

    <run>/recipe.yaml            the fully resolved recipe
    <run>/metrics.json           {split: {metric: value}}
    <run>/predictions/<split>.jsonl
    <run>/model/                 the selected model and tokenizer (loads with bare transformers)
    <run>/checkpoints/           Trainer checkpoints, for resume
    <run>/logs/                  train.log, metrics.csv, TensorBoard events
    <run>/summary.md             the human summary

An exported model (`nlptasks export`) is a model folder with the run's `recipe.yaml` inside: it
reads as a run directory whose model is the folder itself.

A folder holds one run. A training process `claim`s it first: one writer at a time (a lock that
the kernel releases when its holder dies, so a killed run never leaves it stuck), resumed only
by the same recipe (settings that only extend training may change), and started afresh only on
request, with the old run moved aside until the new one has a checkpoint to show for itself.

Every file is written to a temporary name, flushed to disk and renamed, so a crash at any
moment leaves either the old file or the new one, never a torn one that reads as valid.
"""

from __future__ import annotations

import contextlib
import fcntl
import itertools
import json
import logging
import os
import shutil
import socket
import tempfile
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import IO, Any

import yaml

from nlptasks.errors import UserInputError

log = logging.getLogger("nlptasks")
CHECKPOINT_PREFIX = "checkpoint"


class RunDir:
    """The paths of one run directory. Constructing one reads, never changes, the disk."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.recipe = self.root / "recipe.yaml"
        self.metrics = self.root / "metrics.json"
        self.predictions = self.root / "predictions"
        self.model = published(self.root / "model")
        if not self.model.is_dir() and (self.root / "config.json").is_file():
            self.model = self.root  # an exported model (`nlptasks export`): weights and recipe.yaml side by side
        self.checkpoints = self.root / "checkpoints"
        self.logs = self.root / "logs"
        self.summary = self.root / "summary.md"

    @classmethod
    def read(cls, root: str | Path) -> RunDir:
        """A run directory for reading: while an `--overwrite` run has not yet committed, the run it replaces."""
        previous = _moved_aside(Path(root))
        return cls(previous if previous.is_dir() and not _committed(Path(root)) else Path(root))

    def create(self) -> RunDir:
        for folder in (self.root, self.predictions, self.checkpoints, self.logs):
            folder.mkdir(parents=True, exist_ok=True)
        return self

    def numbered_checkpoints(self) -> list[Path]:
        """The Trainer's `checkpoint-<step>` folders, newest first."""
        numbered = {
            int(step): folder
            for folder in self.checkpoints.glob(f"{CHECKPOINT_PREFIX}-*")
            if (step := folder.name.rsplit("-", 1)[1]).isdigit()
        }
        return [numbered[step] for step in sorted(numbered, reverse=True)]

    def complete_checkpoints(self) -> list[Path]:
        """Checkpoints whose save finished, newest first."""
        return [folder for folder in self.numbered_checkpoints() if finished_save(folder)]

    def read_metrics(self) -> dict[str, dict[str, float]]:
        return json.loads(self.metrics.read_text()) if self.metrics.is_file() else {}

    def write_metrics(self, metrics: dict[str, dict[str, float]]) -> None:
        write_atomic(self.metrics, json.dumps(metrics, indent=2, sort_keys=True) + "\n")

    def write_predictions(self, split: str, rows: Iterable[dict[str, Any]]) -> Path:
        path = self.predictions / f"{split}.jsonl"
        write_atomic(path, "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))
        return path

    def publish_model(self, save: Any) -> None:
        publish_folder(self.model, save)


class Claim:
    """A training process's hold on its run directory, from `claim` until `release`."""

    def __init__(self, run_dir: RunDir, lock: IO[str] | None, previous: Path | None) -> None:
        self.run_dir = run_dir
        self._lock = lock
        self._previous = previous

    def commit(self) -> None:
        """The new run has a checkpoint (or its results): the run an `--overwrite` moved aside can go."""
        if self._previous is not None:
            shutil.rmtree(self._previous, ignore_errors=True)
            log.info("removed the previous run kept at %s", self._previous)
            self._previous = None

    def release(self) -> None:
        if self._lock is not None:
            self._lock.close()
            self._lock = None


Differences = Callable[[dict[str, Any]], list[tuple[str, Any, Any]]]
"""(key, stored value, new value) for each setting a stored `recipe.yaml` has that the run may not change."""


def claim(root: Path, differences: Differences, overwrite: bool = False, main: bool = True) -> Claim:
    """Take `root` for training, or stop before changing anything in it.

    Stops (exit 2) when a live process holds the folder, or when the folder holds a run with a
    checkpoint or results whose recipe `differences` finds changed (each setting named) and
    `overwrite` is off. With `overwrite` the old contents move aside to `.<name>-previous` and are
    removed by `Claim.commit`; a run killed before that is undone by the next claim, and readers
    (`RunDir.read`) see the old run meanwhile. Only the main process of a distributed job (`main`)
    checks, moves and locks; the others follow it.
    """
    if not main:
        return Claim(RunDir(root).create(), None, None)
    _lock(root / LOCK_FILE, create=False)
    _finish_interrupted_overwrite(root)
    if not overwrite:
        _refuse_another_recipe(root, differences)
    previous = None
    if overwrite and root.is_dir() and any(root.iterdir()):
        previous = _moved_aside(root)
        root.rename(previous)
        log.warning(
            "%s: starting afresh (--overwrite); the previous run is kept at %s until the first checkpoint",
            root,
            previous,
        )
    run_dir = RunDir(root).create()
    return Claim(run_dir, _lock(root / LOCK_FILE, create=True), previous)


LOCK_FILE = ".lock"


def _lock(path: Path, create: bool) -> IO[str] | None:
    """Hold `path`'s lock (recording this process in it), or stop naming the process that holds it.

    Without `create` only checks: an existing lock file is tested and let go, a missing one is not made.
    """
    try:
        handle = open(path, "a+" if create else "r", encoding="utf-8")  # noqa: SIM115 - held until release
    except FileNotFoundError:
        return None
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        holder = handle.read().strip() or "unknown"
        handle.close()
        raise UserInputError(
            f"{path.parent}: in use by a run still going (process {holder}); wait for it to end, "
            "or give this run another output_dir"
        ) from None
    if not create:
        handle.close()
        return None
    handle.seek(0)
    handle.truncate()
    handle.write(f"pid {os.getpid()} on {socket.gethostname()}\n")
    handle.flush()
    return handle


def _refuse_another_recipe(root: Path, differences: Differences) -> None:
    stored_file = root / "recipe.yaml"
    if not stored_file.is_file() or not _committed(root):
        return  # a run that stopped before its first checkpoint has nothing another recipe could mix with
    try:
        stored = yaml.safe_load(stored_file.read_text(encoding="utf-8")) or {}
    except (yaml.YAMLError, UnicodeDecodeError) as err:
        raise UserInputError(f"{stored_file}: unreadable ({err}); --overwrite starts this folder afresh") from None
    changed = differences(stored)
    if changed:
        lines = "\n".join(f"  {key}: {old!r} there, {new!r} now" for key, old, new in changed)
        raise UserInputError(
            f"{root} holds a run of another recipe; resuming it would mix two runs. Settings that differ:\n{lines}\n"
            "Start that folder afresh with --overwrite (Python: overwrite=True), "
            "or keep it and run into another folder (--set output_dir=...)."
        )


def _finish_interrupted_overwrite(root: Path) -> None:
    """An `--overwrite` run ended before its first checkpoint: put the run it replaced back."""
    previous = _moved_aside(root)
    if not previous.is_dir():
        return
    if _committed(root):
        shutil.rmtree(previous, ignore_errors=True)
        return
    shutil.rmtree(root, ignore_errors=True)
    previous.rename(root)
    log.warning("%s: restored the run that an interrupted --overwrite had moved aside", root)


def _moved_aside(root: Path) -> Path:
    return root.with_name(f".{root.name}-previous")


def _committed(root: Path) -> bool:
    """Whether a run has anything to show: results, or a finished checkpoint to resume from."""
    run = RunDir(root)
    return run.metrics.is_file() or bool(run.complete_checkpoints())


def finished_save(checkpoint: Path) -> bool:
    """Whether a checkpoint's save completed: the Trainer writes `trainer_state.json` last."""
    try:
        json.loads((checkpoint / "trainer_state.json").read_text())
    except (OSError, ValueError):
        return False
    return True


def last_complete_checkpoint(run_dir: RunDir) -> Path | None:
    """The newest checkpoint whose save finished; newer, half-written ones are removed.

    A save cut short (killed, disk full) lacks `trainer_state.json` or holds it torn.
    `get_last_checkpoint` takes the highest number regardless, and resume fails.
    """
    for checkpoint in run_dir.numbered_checkpoints():
        if finished_save(checkpoint):
            return checkpoint
        log.warning("removing %s: its save never finished", checkpoint)
        shutil.rmtree(checkpoint, ignore_errors=True)
    return None


def publish_folder(target: Path, save: Any) -> None:
    """Save through `save(folder)` into a fresh folder beside `target`, then swap it in: never a half-written folder.

    Readers find the folder through `published`; the next publish puts it back in place.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    old = restore_interrupted(target)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        save(staging)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    if target.exists():
        target.rename(old)
    staging.rename(target)
    shutil.rmtree(old, ignore_errors=True)


def published(target: Path) -> Path:
    """The folder to read for `target`: itself, or the copy a publish killed between its two renames left."""
    old = _swapped_out(target)
    return old if old.is_dir() and not target.exists() else target


def _swapped_out(target: Path) -> Path:
    return target.with_name(f".{target.name}-old")


def restore_interrupted(target: Path) -> Path:
    """Put back the folder a publish killed between its two renames left only as `.<name>-old`; returns that name."""
    old = _swapped_out(target)
    if published(target) == old:
        old.rename(target)
    return old


def folder_megabytes(folder: Path) -> float:
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file()) / 2**20


def write_embeddings(rows: Iterable[tuple[str, list[float]]], path: Path, chunk: int = 4096) -> int:
    """(text, vector) rows to `.npy` (a float32 matrix) or `.parquet` (text, embedding), renamed in when complete."""
    import numpy as np

    descriptor, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    os.close(descriptor)
    count = 0
    try:
        if path.suffix == ".npy":
            vectors = np.asarray([vector for _, vector in rows], dtype=np.float32)
            with open(temporary, "wb") as handle:
                np.save(handle, vectors)
            count = len(vectors)
        else:
            import pyarrow as pa
            import pyarrow.parquet as pq

            schema = pa.schema([("text", pa.string()), ("embedding", pa.list_(pa.float32()))])
            with pq.ParquetWriter(temporary, schema) as writer:
                for batch in _chunks(iter(rows), chunk):
                    texts, vectors = zip(*batch)
                    writer.write_table(pa.table({"text": texts, "embedding": vectors}, schema=schema))
                    count += len(batch)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return count


def _chunks(rows: Any, size: int) -> Iterable[list[Any]]:
    while batch := list(itertools.islice(rows, size)):
        yield batch


def write_atomic(path: Path, text: str) -> None:
    with replaced_atomically(path) as handle:
        handle.write(text)


@contextlib.contextmanager
def replaced_atomically(path: Path) -> Iterator[IO[str]]:
    """A text handle on a temporary file beside `path`, renamed onto it once complete and synced.

    A failure or crash leaves the previous file or none, never a torn one.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(descriptor, "w", encoding="utf-8", newline="\n") as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise

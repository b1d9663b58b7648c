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

Every file is written to a temporary name, flushed to disk and renamed, so a crash at any
moment leaves either the old file or the new one, never a torn one that reads as valid.
"""

from __future__ import annotations

import itertools
import json
import os
import shutil
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any


class RunDir:
    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.recipe = self.root / "recipe.yaml"
        self.metrics = self.root / "metrics.json"
        self.predictions = self.root / "predictions"
        self.model = self.root / "model"
        restore_interrupted(self.model)
        if not self.model.is_dir() and (self.root / "config.json").is_file():
            self.model = self.root  # an exported model (`nlptasks export`): weights and recipe.yaml side by side
        self.checkpoints = self.root / "checkpoints"
        self.logs = self.root / "logs"
        self.summary = self.root / "summary.md"

    def create(self) -> RunDir:
        for folder in (self.root, self.predictions, self.checkpoints, self.logs):
            folder.mkdir(parents=True, exist_ok=True)
        return self

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


def publish_folder(target: Path, save: Any) -> None:
    """Save through `save(folder)` into a fresh folder beside `target`, then swap it in: never a half-written folder.

    Readers call `restore_interrupted` first (the next publish does too).
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


def restore_interrupted(target: Path) -> Path:
    """Put back the folder a publish killed between its two renames left only as `.<name>-old`; returns that name."""
    old = target.with_name(f".{target.name}-old")
    if old.is_dir() and not target.exists():
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
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise

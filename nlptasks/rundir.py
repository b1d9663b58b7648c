"""The run directory: one place that knows its layout, and writes that never leave half a file.

    <run>/recipe.yaml            the fully resolved recipe
    <run>/metrics.json           {split: {metric: value}}
    <run>/predictions/<split>.jsonl
    <run>/model/                 the selected model and tokenizer (loads with bare transformers)
    <run>/checkpoints/           Trainer checkpoints, for resume
    <run>/logs/                  train.log, metrics.csv, TensorBoard events
    <run>/summary.md             the human summary

Every file is written to a temporary name, flushed to disk and renamed, so a crash at any
moment leaves either the old file or the new one, never a torn one that reads as valid.
"""

from __future__ import annotations

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
    """Save through `save(folder)` into a fresh folder beside `target`, then swap it in: never a half-written folder."""
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    save(staging)
    old = target.with_name(f".{target.name}-old")
    if target.exists():
        target.rename(old)
    staging.rename(target)
    shutil.rmtree(old, ignore_errors=True)


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

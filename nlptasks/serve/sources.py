"""What one service serves: run directories, exported models and RAG indexes, each under a URL-safe name.

Everything is opened before the server listens, so a bad path stops `nlptasks serve` with exit 2
instead of answering 500 later.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from nlptasks.errors import UserInputError

NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*\Z")
"""A model or index name: one URL path segment that needs no escaping."""

Sources = str | Path | Iterable[str | Path] | Mapping[str, Any]
"""A path or `NAME=PATH` spec, several, or a mapping of names to paths, `Predictor`s or `RagPipeline`s."""


def open_sources(
    sources: Sources, batch_size: int = 64, overrides: list[str] | dict[str, Any] | None = None
) -> dict[str, Any]:
    """Each source opened under its name: a `Predictor` for a run or an export, a `RagPipeline` for an index.

    `overrides` (`--set`) reach every source that has the setting: `generation.*` every generating model
    and index, any other key every index (its query-time settings, e.g. `top_k`); a key no source takes
    is refused. A source given already opened (a `Predictor`, a `RagPipeline`) is served as it was opened.
    """
    from nlptasks.recipe import parse_overrides

    named = _named(sources)
    if not named:
        raise UserInputError("serve: nothing to serve; give run directories, exported models or RAG indexes")
    settings = parse_overrides(overrides)
    opened = {name: _open(target, batch_size, settings) for name, target in named.items()}
    for_indexes = [key for key in settings if not key.startswith("generation.")]
    if for_indexes and not any(is_index(source) for source in opened.values()):
        raise UserInputError(
            f"serve --set {for_indexes[0]}: models take generation.* settings only; "
            "other keys are a RAG index's query-time settings, and no index is served"
        )
    return opened


def _named(sources: Sources) -> dict[str, Any]:
    if isinstance(sources, str | Path):
        sources = [sources]  # one path, not its characters
    pairs = list(sources.items()) if isinstance(sources, Mapping) else [split_spec(s) for s in sources]
    named: dict[str, Any] = {}
    for name, target in pairs:
        if not NAME.match(name):
            raise UserInputError(
                f"serve: '{name}' is not a usable name (letters, digits, '.', '_', '-'); use NAME=PATH"
            )
        if name in named:
            raise UserInputError(f"serve: two sources named '{name}' ({named[name]}, {target}); name one NAME=PATH")
        named[name] = target
    return named


def split_spec(spec: str | Path) -> tuple[str, str | Path]:
    """`NAME=PATH` as its two parts; a bare path (one holding '=' included) is named after its folder."""
    text = str(spec)
    if "=" in text and not Path(text).exists():
        name, _, path = text.partition("=")
        return name, path
    return default_name(spec), spec


def default_name(path: str | Path) -> str:
    """A folder's name as a served name: characters a URL segment would escape become '-'."""
    return re.sub(r"[^A-Za-z0-9._-]+", "-", Path(path).resolve().name).lstrip("._-") or "model"


def _open(target: Any, batch_size: int, overrides: dict[str, Any]) -> Any:
    if not isinstance(target, str | Path):
        return target  # already open: a Predictor or a RagPipeline from Python
    path = Path(target)
    if not path.is_dir():
        raise UserInputError(f"serve: {path}: no such folder (a run directory, an exported model or a RAG index)")
    from nlptasks.rag.store import SETTINGS_FILE

    if (path / SETTINGS_FILE).is_file():
        from nlptasks.rag import RagPipeline  # the `rag` extra: only where an index is served

        return RagPipeline(path, overrides or None)
    from nlptasks.api import inference_overrides, load

    predictor = load(path, batch_size=batch_size)
    _, decoding = inference_overrides({key: value for key, value in overrides.items() if key.startswith("generation.")})
    if decoding and predictor.task.generates:
        predictor.set_generation(**decoding)
    return predictor


def is_index(source: Any) -> bool:
    """Whether an opened source is a RAG index (else a model), without importing the `rag` extra: where
    its pipeline module was never imported, no index can have been opened."""
    pipeline = sys.modules.get("nlptasks.rag.pipeline")
    return pipeline is not None and isinstance(source, pipeline.RagPipeline)

"""Build or update an index from documents; open one to search it and answer from it."""

from __future__ import annotations

import shutil
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from nlptasks.errors import RecipeError
from nlptasks.rag.documents import Chunk, Document, ReadReport, chunk_document, embedding_text, read_documents
from nlptasks.rag.generate import Generator, load_generator
from nlptasks.rag.retrieve import Hit, Retriever, embed, load_encoder
from nlptasks.rag.settings import BUILD_FIELDS, RagSettings, settings_of_index
from nlptasks.rag.store import SETTINGS_FILE, IndexFolder, saved_dim, saved_settings
from nlptasks.rundir import publish_folder, restore_interrupted

Pending = tuple[str, str, list[Chunk]]
"""A document's id, content hash and chunks, waiting to be embedded."""
EMBED_BATCH_CHUNKS = 512
"""Chunks embedded at a time while indexing: memory stays flat however many documents there are."""


@dataclass
class IndexReport:
    added: int = 0
    replaced: int = 0
    unchanged: int = 0
    removed: int = 0
    chunks: int = 0
    """Chunks in the index after the update."""
    read: ReadReport = field(default_factory=ReadReport)

    def as_json(self) -> dict[str, Any]:
        return {
            "documents_added": self.added,
            "documents_replaced": self.replaced,
            "documents_unchanged": self.unchanged,
            "documents_removed": self.removed,
            "chunks": self.chunks,
            "skipped_empty": self.read.skipped_empty,
            "skipped_files": self.read.skipped_files,
        }


def build_index(
    docs: Sequence[str | Path] | Iterable[Document],
    index_dir: str | Path,
    settings: RagSettings | None = None,
    prune: bool = False,
    progress: bool = False,
) -> IndexReport:
    """Add documents to the index at `index_dir` (created if absent); a changed document replaces its chunks.

    `docs` are paths (files or folders) or `Document`s. With `prune`, documents of the index not
    among `docs` are removed. The folder is swapped in whole when the update is complete.
    """
    folder = Path(index_dir)
    restore_interrupted(folder)
    settings = _settings_for_update(folder, settings or RagSettings())
    encoder = load_encoder(settings.encoder)
    _check_chunk_fits(encoder, settings)
    report = IndexReport()
    documents = _document_stream(docs, settings, report.read)

    def update(staging: Path) -> None:
        if folder.exists():
            shutil.copytree(folder, staging, dirs_exist_ok=True)
        index = IndexFolder(staging, settings, encoder.get_embedding_dimension())
        _apply(index, documents, encoder, settings, report, prune, progress)
        report.chunks = len(index.chunks)
        index.save()

    publish_folder(folder, update)
    return report


def _document_stream(
    docs: Sequence[str | Path] | Iterable[Document], settings: RagSettings, read: ReadReport
) -> Iterable[Document]:
    if isinstance(docs, str | Path):
        docs = [docs]
    if isinstance(docs, Sequence) and all(isinstance(item, str | Path) for item in docs):
        return read_documents(docs, settings.text_field, settings.id_field, read)
    return docs


def _settings_for_update(folder: Path, settings: RagSettings) -> RagSettings:
    if not (folder / SETTINGS_FILE).is_file():
        return settings
    saved = saved_settings(folder)
    changed = [name for name in BUILD_FIELDS if getattr(saved, name) != getattr(settings, name)]
    if changed:
        raise RecipeError(
            f"rag.{changed[0]}: the index at {folder} was built with {getattr(saved, changed[0])!r}, "
            f"not {getattr(settings, changed[0])!r}; use a new --index folder or the same setting"
        )
    return settings


def _check_chunk_fits(encoder: Any, settings: RagSettings) -> None:
    limit = encoder.max_seq_length
    if limit is not None and settings.chunk_tokens + 2 > limit:
        raise RecipeError(
            f"rag.chunk_tokens: {settings.chunk_tokens} tokens (+2 special) exceed the encoder's limit of "
            f"{limit}; the rest of each chunk would not be embedded"
        )


def _apply(
    index: IndexFolder,
    documents: Iterable[Document],
    encoder: Any,
    settings: RagSettings,
    report: IndexReport,
    prune: bool,
    progress: bool,
) -> None:
    from tqdm.auto import tqdm

    seen: set[str] = set()
    pending: list[Pending] = []
    bar = tqdm(desc="Embedding", unit="chunk", disable=not progress)
    for document in documents:
        seen.add(document.id)
        known = index.documents.get(document.id)
        if known is not None and known["hash"] == document.content_hash:
            report.unchanged += 1
            continue
        if known is not None:
            index.remove_document(document.id)
            report.replaced += 1
        else:
            report.added += 1
        chunks = chunk_document(document, encoder.tokenizer, settings.chunk_tokens, settings.chunk_overlap)
        pending.append((document.id, document.content_hash, chunks))
        if sum(len(c) for _, _, c in pending) >= EMBED_BATCH_CHUNKS:
            _embed_pending(index, pending, encoder, bar)
    _embed_pending(index, pending, encoder, bar)
    bar.close()
    if prune:
        for doc_id in sorted(set(index.documents) - seen):
            index.remove_document(doc_id)
            report.removed += 1


def _embed_pending(index: IndexFolder, pending: list[Pending], encoder: Any, bar: Any) -> None:
    texts = [embedding_text(chunk) for _, _, chunks in pending for chunk in chunks]
    vectors = embed(encoder, texts) if texts else np.zeros((0, index.dim), dtype=np.float32)
    offset = 0
    for doc_id, content_hash, chunks in pending:
        index.add_document(doc_id, content_hash, chunks, vectors[offset : offset + len(chunks)])
        offset += len(chunks)
    bar.update(len(texts))
    pending.clear()


def reembedded_index(source: RagPipeline, index_dir: str | Path, settings: RagSettings, progress: bool = False) -> None:
    """`source`'s chunks, as they are, in a new index at `index_dir` embedded by `settings.encoder` (a tuned
    copy of the source's encoder: the same tokenizer, so chunking would give the same chunks)."""
    from tqdm.auto import tqdm

    encoder = load_encoder(settings.encoder)
    folder = Path(index_dir)

    def build(staging: Path) -> None:
        index = IndexFolder(staging, settings, encoder.get_embedding_dimension())
        pending: list[Pending] = []
        bar = tqdm(desc="Embedding", unit="chunk", disable=not progress)
        for doc_id, entry in source.index.documents.items():
            pending.append((doc_id, entry["hash"], [source.index.chunks[i] for i in entry["chunks"]]))
            if sum(len(c) for _, _, c in pending) >= EMBED_BATCH_CHUNKS:
                _embed_pending(index, pending, encoder, bar)
        _embed_pending(index, pending, encoder, bar)
        bar.close()
        index.save()

    publish_folder(folder, build)


class RagPipeline:
    """An index opened for `search` and `ask`; safe to share between threads (one question at a time)."""

    def __init__(self, index_dir: str | Path, overrides: list[str] | dict[str, Any] | None = None) -> None:
        self.folder = Path(index_dir)
        restore_interrupted(self.folder)
        self.settings = settings_of_index(saved_settings(self.folder), overrides)
        self.index = IndexFolder(self.folder, self.settings, saved_dim(self.folder))
        self.retriever = Retriever(self.index, load_encoder(self.settings.encoder), self.settings)
        self._generator: Generator | None = None
        self._lock = threading.Lock()

    @property
    def size(self) -> int:
        return len(self.index.chunks)

    def search(self, query: str, top_k: int | None = None, mode: str | None = None) -> list[Hit]:
        return self.search_many([query], top_k, mode)[0]

    def search_many(self, queries: list[str], top_k: int | None = None, mode: str | None = None) -> list[list[Hit]]:
        with self._lock:
            return self.retriever.search(queries, top_k, mode)

    def search_modes(self, queries: list[str], top_k: int | None = None) -> dict[str, list[list[Hit]]]:
        """Dense, BM25 and hybrid hits for each query, each query embedded once (for benchmarks)."""
        with self._lock:
            return self.retriever.search_modes(queries, top_k)

    def ask(self, question: str, top_k: int | None = None) -> dict[str, Any]:
        """The answer with its numbered citations (document ids) and the passages it was given."""
        return self.answer(question, self.search(question, top_k))

    def answer(self, question: str, hits: list[Hit]) -> dict[str, Any]:
        """`ask` over passages found some other way (a benchmark's, with the gold passage taken out)."""
        with self._lock:
            answer = self.generator.answer(question, hits)
        return {"question": question, **answer, "passages": [hit.as_json() for hit in hits]}

    @property
    def generator(self) -> Generator:
        if self._generator is None:
            self._generator = load_generator(self.settings)
        return self._generator

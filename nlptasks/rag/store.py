"""The index folder: chunks, their dense vectors (FAISS or Qdrant) and a BM25 index, kept in step.

Layout: `rag.yaml` (the settings it was built with), `documents.json` (id -> content hash and
chunk ids), `chunks.jsonl`, `dense.faiss` or `qdrant/`, `bm25/`. An update is written into a
copy of the folder that is swapped in whole when complete, so a crash mid-update leaves the
previous index readable; only a Qdrant server is changed in place (its points are keyed by
chunk id, so rerunning the update repairs it).

FAISS is the embedded default (exact inner-product search, one file, no server, ~1 ms over
100k chunks here); LanceDB would add a columnar store we do not need. Qdrant is the way out
when one machine is not enough: the same code against its local mode or a server URL.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from nlptasks.errors import UserInputError
from nlptasks.rag.documents import Chunk, embedding_text
from nlptasks.rag.settings import RagRecipe, RagSettings
from nlptasks.recipe import dump_recipe, load_recipe
from nlptasks.rundir import write_atomic

SETTINGS_FILE = "rag.yaml"
BUILT_WITH = "the settings this index was built with (search and answer settings may be overridden)"


class DenseStore(Protocol):
    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None: ...

    def remove(self, ids: list[int]) -> None: ...

    def search(self, vectors: np.ndarray, k: int) -> list[list[tuple[int, float]]]:
        """Per query row, (chunk id, cosine) of the `k` nearest chunks, nearest first."""
        ...

    def save(self) -> None: ...


class FaissStore:
    def __init__(self, folder: Path, dim: int) -> None:
        import faiss

        self.path = folder / "dense.faiss"
        self.index = (
            faiss.read_index(str(self.path)) if self.path.exists() else faiss.IndexIDMap2(faiss.IndexFlatIP(dim))
        )

    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        self.index.add_with_ids(np.ascontiguousarray(vectors, dtype=np.float32), ids.astype(np.int64))

    def remove(self, ids: list[int]) -> None:
        if ids:
            self.index.remove_ids(np.asarray(ids, dtype=np.int64))

    def search(self, vectors: np.ndarray, k: int) -> list[list[tuple[int, float]]]:
        if self.index.ntotal == 0:
            return [[] for _ in vectors]
        scores, ids = self.index.search(np.ascontiguousarray(vectors, dtype=np.float32), min(k, self.index.ntotal))
        return [
            [(int(i), float(s)) for i, s in zip(row_ids, row_scores) if i >= 0]
            for row_ids, row_scores in zip(ids, scores)
        ]

    def save(self) -> None:
        import faiss

        faiss.write_index(self.index, str(self.path))


class QdrantStore:
    def __init__(self, folder: Path, dim: int, settings: RagSettings) -> None:
        from qdrant_client import QdrantClient, models

        self.models = models
        self.client = (
            QdrantClient(url=settings.qdrant_url) if settings.qdrant_url else QdrantClient(path=str(folder / "qdrant"))
        )
        self.collection = settings.collection
        if not self.client.collection_exists(self.collection):
            self.client.create_collection(
                self.collection, vectors_config=models.VectorParams(size=dim, distance=models.Distance.COSINE)
            )

    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        for first in range(0, len(ids), 512):
            self.client.upsert(
                self.collection,
                points=self.models.Batch(
                    ids=ids[first : first + 512].tolist(), vectors=vectors[first : first + 512].tolist()
                ),
            )

    def remove(self, ids: list[int]) -> None:
        if ids:
            self.client.delete(self.collection, points_selector=self.models.PointIdsList(points=ids))

    def search(self, vectors: np.ndarray, k: int) -> list[list[tuple[int, float]]]:
        return [
            [
                (int(point.id), float(point.score))
                for point in self.client.query_points(self.collection, query=vector.tolist(), limit=k).points
            ]
            for vector in vectors
        ]

    def save(self) -> None:
        self.client.close()


class SparseIndex:
    """BM25 (`bm25s`, English stop words, Snowball stemming) over the chunks' texts, rebuilt on each update."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder / "bm25"
        self.retriever: Any = None
        self.chunk_ids: list[int] = []
        if (self.folder / "chunk_ids.json").exists():
            import bm25s

            self.chunk_ids = json.loads((self.folder / "chunk_ids.json").read_text())
            if self.chunk_ids:
                self.retriever = bm25s.BM25.load(str(self.folder))

    def rebuild(self, chunks: dict[int, Chunk]) -> None:
        import bm25s

        self.chunk_ids = sorted(chunks)
        self.retriever = None
        if self.chunk_ids:
            self.retriever = bm25s.BM25()
            texts = [embedding_text(chunks[i]) for i in self.chunk_ids]
            self.retriever.index(
                bm25s.tokenize(texts, stopwords="en", stemmer=_stemmer(), show_progress=False), show_progress=False
            )
        shutil.rmtree(self.folder, ignore_errors=True)
        self.folder.mkdir(parents=True)
        if self.retriever is not None:
            self.retriever.save(str(self.folder))
        (self.folder / "chunk_ids.json").write_text(json.dumps(self.chunk_ids))

    def search(self, queries: list[str], k: int) -> list[list[tuple[int, float]]]:
        if self.retriever is None:
            return [[] for _ in queries]
        import bm25s

        tokens = bm25s.tokenize(queries, stopwords="en", stemmer=_stemmer(), show_progress=False)
        found, scores = self.retriever.retrieve(tokens, k=min(k, len(self.chunk_ids)), show_progress=False, n_threads=1)
        return [
            [(self.chunk_ids[int(p)], float(s)) for p, s in zip(row, row_scores) if s > 0]
            for row, row_scores in zip(found, scores)
        ]


def _stemmer() -> Any:
    import Stemmer

    return Stemmer.Stemmer("english")


class IndexFolder:
    """One index on disk, opened for searching or for an update."""

    def __init__(self, folder: Path, settings: RagSettings, dim: int) -> None:
        self.folder = folder
        self.settings = settings
        self.dim = dim
        documents = folder / "documents.json"
        self.documents: dict[str, dict[str, Any]] = json.loads(documents.read_text()) if documents.exists() else {}
        self.chunks: dict[int, Chunk] = {}
        if (folder / "chunks.jsonl").exists():
            with (folder / "chunks.jsonl").open(encoding="utf-8") as handle:
                for line in handle:
                    row = json.loads(line)
                    chunk_id = row.pop("id")
                    self.chunks[chunk_id] = Chunk(**row)
        self.dense: DenseStore = (
            FaissStore(folder, dim) if settings.store == "faiss" else QdrantStore(folder, dim, settings)
        )
        self.sparse = SparseIndex(folder)
        self.next_id = max(self.chunks, default=-1) + 1
        """The id of the next chunk added, counted here: taking the max on every add is quadratic in an ingest."""

    def remove_document(self, doc_id: str) -> None:
        ids = self.documents.pop(doc_id)["chunks"]
        self.dense.remove(ids)
        for chunk_id in ids:
            del self.chunks[chunk_id]

    def add_document(self, doc_id: str, content_hash: str, chunks: list[Chunk], vectors: np.ndarray) -> None:
        ids = np.arange(self.next_id, self.next_id + len(chunks))
        self.next_id += len(chunks)
        if len(chunks):
            self.dense.add(ids, vectors)
        self.chunks.update(zip(ids.tolist(), chunks))
        self.documents[doc_id] = {"hash": content_hash, "chunks": ids.tolist()}

    def save(self) -> None:
        """Rebuild BM25 over the chunks and write every file of the folder (a Qdrant store is closed)."""
        self.sparse.rebuild(self.chunks)
        self.dense.save()
        write_atomic(self.folder / "documents.json", json.dumps(self.documents))
        lines = (
            json.dumps({"id": i, **asdict(chunk)}, ensure_ascii=False) + "\n"
            for i, chunk in sorted(self.chunks.items())
        )
        write_atomic(self.folder / "chunks.jsonl", "".join(lines))
        write_atomic(self.folder / "meta.json", json.dumps({"dim": self.dim}))
        save_settings(self.folder, self.settings)


def save_settings(folder: Path, settings: RagSettings) -> None:
    """The index's `rag.yaml`; only query-time settings, or the models a tuned copy answers with, may change."""
    write_atomic(folder / SETTINGS_FILE, dump_recipe(RagRecipe(description=BUILT_WITH, rag=settings)))


def saved_settings(folder: Path) -> RagSettings:
    if not (folder / SETTINGS_FILE).is_file():
        raise UserInputError(
            f"--index {folder}: not an index folder (no {SETTINGS_FILE}); build one with `nlptasks rag index`"
        )
    return load_recipe(folder / SETTINGS_FILE, schema=RagRecipe).rag


def saved_dim(folder: Path) -> int:
    return int(json.loads((folder / "meta.json").read_text())["dim"])

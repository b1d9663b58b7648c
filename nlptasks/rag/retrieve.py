"""Finding chunks: dense, BM25, or both fused by reciprocal rank, optionally re-ranked."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from nlptasks.rag.documents import Chunk, embedding_text
from nlptasks.rag.settings import RagSettings
from nlptasks.rag.store import IndexFolder
from nlptasks.rundir import RunDir


@dataclass(frozen=True)
class Hit:
    chunk_id: int
    chunk: Chunk
    score: float
    """The ranking's own score: cosine (dense), BM25 (sparse), fused reciprocal ranks (hybrid), or the re-ranker's."""

    def as_json(self) -> dict[str, Any]:
        return {
            "doc_id": self.chunk.doc_id,
            "chunk_id": self.chunk_id,
            "position": self.chunk.position,
            "score": self.score,
            "text": self.chunk.text,
            "metadata": self.chunk.metadata,
        }


def encoder_location(name: str) -> str:
    """A run directory's saved model, a model alias's folder, or the name itself (a folder or Hub id)."""
    from nlptasks.catalog import model_family, resolve_model

    run = RunDir.read(Path(name).expanduser())
    if run.recipe.is_file() and run.model.is_dir():
        return str(run.model)
    return resolve_model(name).location if model_family(name) else name


def load_encoder(name: str) -> Any:
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(encoder_location(name), device=_device())


def _device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def embed(encoder: Any, texts: list[str], batch_size: int = 64, progress: bool = False) -> np.ndarray:
    """Unit-length float32 rows, so inner product is cosine."""
    vectors = encoder.encode(
        texts, batch_size=batch_size, normalize_embeddings=True, convert_to_numpy=True, show_progress_bar=progress
    )
    return np.asarray(vectors, dtype=np.float32).reshape(len(texts), -1)


class Retriever:
    def __init__(self, index: IndexFolder, encoder: Any, settings: RagSettings) -> None:
        self.index = index
        self.encoder = encoder
        self.settings = settings
        self._reranker: Any = None

    def search(self, queries: list[str], top_k: int | None = None, mode: str | None = None) -> list[list[Hit]]:
        """The best `top_k` chunks for each query, best first."""
        mode = mode or self.settings.retrieval
        return self.search_modes(queries, top_k, (mode,))[mode]

    def search_modes(
        self, queries: list[str], top_k: int | None = None, modes: tuple[str, ...] = ("dense", "sparse", "hybrid")
    ) -> dict[str, list[list[Hit]]]:
        """`search` in several modes at once: each query is embedded and BM25-scored once for all of them."""
        top_k = top_k or self.settings.top_k
        wanted = max(top_k, self.settings.candidates)
        dense = self._dense(queries, wanted) if {"dense", "hybrid"} & set(modes) else []
        sparse = self._sparse(queries, wanted) if {"sparse", "hybrid"} & set(modes) else []
        found = {}
        for mode in modes:
            if mode == "hybrid":
                rankings = [reciprocal_rank_fusion([d, s], self.settings.rrf_k) for d, s in zip(dense, sparse)]
            else:
                rankings = dense if mode == "dense" else sparse
            if self.settings.rerank != "none":
                rankings = [self._rerank(query, ranking[:wanted]) for query, ranking in zip(queries, rankings)]
            found[mode] = [[Hit(i, self.index.chunks[i], score) for i, score in r[:top_k]] for r in rankings]
        return found

    def _dense(self, queries: list[str], k: int) -> list[list[tuple[int, float]]]:
        found = self.index.dense.search(embed(self.encoder, queries), k)
        floor = self.settings.min_dense_score
        return found if floor is None else [[(i, s) for i, s in row if s >= floor] for row in found]

    def _sparse(self, queries: list[str], k: int) -> list[list[tuple[int, float]]]:
        found = self.index.sparse.search(queries, k)
        floor = self.settings.min_sparse_score
        return found if floor is None else [[(i, s) for i, s in row if s >= floor] for row in found]

    def _rerank(self, query: str, ranking: list[tuple[int, float]]) -> list[tuple[int, float]]:
        if not ranking:
            return ranking
        texts = [embedding_text(self.index.chunks[i]) for i, _ in ranking]
        if self.settings.rerank == "cross-encoder":
            scores = np.asarray(self._reranker_model().predict([(query, text) for text in texts]), dtype=np.float32)
        else:
            vectors = embed(self._reranker_model(), [query, *texts])
            scores = vectors[1:] @ vectors[0]
        order = np.argsort(-scores, kind="stable")
        return [(ranking[i][0], float(scores[i])) for i in order]

    def _reranker_model(self) -> Any:
        if self._reranker is None:
            if self.settings.rerank == "cross-encoder":
                from sentence_transformers import CrossEncoder

                self._reranker = CrossEncoder(encoder_location(self.settings.reranker), device=_device())
            else:
                self._reranker = load_encoder(self.settings.reranker)
        return self._reranker


def reciprocal_rank_fusion(rankings: list[list[tuple[int, float]]], k: int = 60) -> list[tuple[int, float]]:
    """Each id scores the sum of 1 / (k + rank) over the rankings that hold it (ranks from 1; Cormack et al., 2009)."""
    fused: dict[int, float] = {}
    for ranking in rankings:
        for rank, (chunk_id, _) in enumerate(ranking, 1):
            fused[chunk_id] = fused.get(chunk_id, 0.0) + 1.0 / (k + rank)
    return sorted(fused.items(), key=lambda item: -item[1])

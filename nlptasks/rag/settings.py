"""The `rag` recipe section: how documents are chunked and embedded, how chunks are found, who answers.

An index folder keeps the settings it was built with (`rag.yaml`); `ask`, `eval` and `serve`
read them back, and `--set` may change how the index is searched or answered but never how it
was built (the encoder, chunking, store), since that would search vectors of another space.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field, model_validator

from nlptasks.config import Section
from nlptasks.errors import RecipeError
from nlptasks.recipe import GenerationSettings, load_recipe, parse_overrides

BUILD_FIELDS = ("encoder", "chunk_tokens", "chunk_overlap", "store", "qdrant_url", "collection")
"""Settings fixed when an index is built: changing one means building a new index."""


class RagSettings(Section):
    encoder: str = "minilm-l6"
    """Dense encoder: a model alias, a SimCSE run directory, a sentence-transformers folder or Hub id."""
    chunk_tokens: int = Field(default=200, gt=8)
    """Longest chunk in encoder tokens; at most the encoder's own limit, else the rest would go unseen."""
    chunk_overlap: int = Field(default=32, ge=0)
    """Tokens of whole sentences repeated from the end of one chunk at the start of the next."""
    text_field: str = "text"
    """JSONL/CSV documents: the column holding the text (`title`, when present, is put in front)."""
    id_field: str | None = None
    """JSONL/CSV documents: the column holding the document id (unset: `id` or `_id` where present, else the line)."""

    store: Literal["faiss", "qdrant"] = "faiss"
    """`faiss`: exact search in a file beside the chunks; `qdrant`: a Qdrant collection (local or `qdrant_url`)."""
    qdrant_url: str | None = None
    """A Qdrant server (`http://host:6333`); unset: Qdrant's local mode in the index folder."""
    collection: str = "nlptasks"

    retrieval: Literal["dense", "sparse", "hybrid"] = "hybrid"
    """`sparse` is BM25; `hybrid` fuses the dense and BM25 rankings by reciprocal rank."""
    top_k: int = Field(default=5, gt=0, le=1000)
    candidates: int = Field(default=50, gt=0)
    """Hits each ranking contributes before fusion or re-ranking."""
    rrf_k: int = Field(default=60, gt=0)
    """Reciprocal rank fusion: a hit at rank r scores 1 / (rrf_k + r) in each ranking that has it."""
    min_dense_score: float | None = Field(default=None, ge=-1, le=1)
    """Drop dense hits below this cosine similarity."""
    min_sparse_score: float | None = Field(default=None, ge=0)
    """Drop BM25 hits below this score."""
    rerank: Literal["none", "cross-encoder", "bi-encoder"] = "none"
    reranker: str | None = None
    """The re-ranking model: a cross-encoder, or a (stronger) sentence-transformers bi-encoder."""

    generator: str = "smollm2-135m-instruct"
    """A decoder alias or Hub chat model that writes the answer, or a QA run directory that extracts it."""
    max_context_tokens: int = Field(default=1024, gt=64)
    """Prompt budget of the decoder (capped by its context length); chunks beyond it are cut, never the question."""
    reader_min_score: float | None = None
    """Extractive reader: answer "not found" when the best span's start+end logit is below this."""
    abstain_threshold: float | None = Field(default=None, gt=0, le=1)
    """Decoder generator: answer NOT_FOUND when the answer's `abstention_probability` reaches this; the answer
    itself is decoded greedily and may not begin as NOT_FOUND does. Unset: whichever greedy decoding reaches.
    `rag tune` fits it on its held-out prompts."""
    abstention_calibration: tuple[float, float, float] | None = None
    """(a, b, c): `abstention_probability` is sigmoid(a * log P(the reply begins as NOT_FOUND does) + b * the
    decoded answer's mean token log-probability + c), both read off the answer's own decoding steps, fitted
    by `rag tune`; unset: P(the reply begins as NOT_FOUND does) itself."""
    generation: GenerationSettings = GenerationSettings(max_new_tokens=128)

    @model_validator(mode="after")
    def _consistent(self) -> RagSettings:
        if self.chunk_overlap >= self.chunk_tokens:
            raise ValueError(f"chunk_overlap {self.chunk_overlap} must be below chunk_tokens {self.chunk_tokens}")
        if self.rerank != "none" and not self.reranker:
            raise ValueError(f"rerank: {self.rerank} needs a model in `reranker`")
        if self.qdrant_url and self.store != "qdrant":
            raise ValueError("qdrant_url is set but store is not qdrant")
        if self.abstain_threshold is not None and (self.generation.num_beams > 1 or self.generation.do_sample):
            raise ValueError(
                "abstain_threshold judges a greedy answer by its own decoding steps: set generation.num_beams: 1 "
                "and generation.do_sample: false, or abstain_threshold: null"
            )
        return self


class RagRecipe(Section):
    description: str = ""
    rag: RagSettings = RagSettings()


def load_settings(recipe: str | Path | None, overrides: list[str] | dict[str, Any] | None) -> RagSettings:
    """Settings from a RAG recipe (a file or a shipped name such as `rag/default`) or the defaults, with `--set`s."""
    source: str | Path | dict[str, Any] = recipe if recipe is not None else {}
    return load_recipe(source, _under_rag(overrides), schema=RagRecipe).rag


def settings_of_index(saved: RagSettings, overrides: list[str] | dict[str, Any] | None) -> RagSettings:
    """An index's own settings with query-time overrides; a build setting may not change."""
    merged = load_recipe({"rag": saved.model_dump(mode="json")}, _under_rag(overrides), schema=RagRecipe).rag
    changed = [name for name in BUILD_FIELDS if getattr(merged, name) != getattr(saved, name)]
    if changed:
        raise RecipeError(
            f"rag.{changed[0]}: fixed when the index was built ({getattr(saved, changed[0])!r}); "
            "build a new index to change it"
        )
    return merged


def _under_rag(overrides: list[str] | dict[str, Any] | None) -> dict[str, Any]:
    """`top_k=3` and `rag.top_k=3` both mean the `rag` section's key."""
    return {key if key.startswith("rag.") else f"rag.{key}": value for key, value in parse_overrides(overrides).items()}

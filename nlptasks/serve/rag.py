"""RAG indexes as routes of the one service: `POST /v1/rag/{name}/search` and `/ask`, `GET /v1/rag`.

With exactly one index served, the paths `nlptasks rag serve` had on its own (`POST /search`,
`POST /ask`, and the index's `chunks` and `documents` in `/health`) answer too, so its clients keep working.
A pipeline answers one question at a time under its own lock, so these routes run in FastAPI's
thread pool rather than through a batcher.
"""

# No `from __future__ import annotations`: FastAPI evaluates route annotations, which name local dependencies.

from typing import Annotated, Any, Literal

from fastapi import Depends, FastAPI, HTTPException
from pydantic import BaseModel, ConfigDict, Field

from nlptasks.errors import did_you_mean

MAX_QUERY_CHARS = 2_000


class SearchRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    query: str = Field(min_length=1, max_length=MAX_QUERY_CHARS)
    top_k: int | None = Field(default=None, gt=0, le=100)
    mode: Literal["dense", "sparse", "hybrid"] | None = None


class AskRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    question: str = Field(min_length=1, max_length=MAX_QUERY_CHARS)
    top_k: int | None = Field(default=None, gt=0, le=20)


def add_rag_routes(app: FastAPI, indexes: dict[str, Any]) -> None:
    """The routes of every served index, and the single-index paths where there is one."""

    def index_named(name: str) -> Any:
        if name not in indexes:
            served = ", ".join(indexes) or "none"
            raise HTTPException(404, f"no RAG index '{name}'{did_you_mean(name, indexes)}; served: {served}")
        return indexes[name]

    Index = Annotated[Any, Depends(index_named)]

    @app.get("/v1/rag", tags=["rag"])
    def list_indexes() -> dict[str, Any]:
        return {"indexes": [{"name": name, **describe(pipeline)} for name, pipeline in indexes.items()]}

    @app.post("/v1/rag/{name}/search", tags=["rag"])
    def search(request: SearchRequest, pipeline: Index) -> dict[str, Any]:
        return _search(pipeline, request)

    @app.post("/v1/rag/{name}/ask", tags=["rag"])
    def ask(request: AskRequest, pipeline: Index) -> dict[str, Any]:
        return pipeline.ask(request.question, request.top_k)

    if len(indexes) == 1:
        _add_single_index_paths(app, next(iter(indexes.values())))


def _add_single_index_paths(app: FastAPI, pipeline: Any) -> None:
    @app.post("/search", tags=["rag"], deprecated=True)
    def search_only_index(request: SearchRequest) -> dict[str, Any]:
        return _search(pipeline, request)

    @app.post("/ask", tags=["rag"], deprecated=True)
    def ask_only_index(request: AskRequest) -> dict[str, Any]:
        return pipeline.ask(request.question, request.top_k)


def _search(pipeline: Any, request: SearchRequest) -> dict[str, Any]:
    hits = pipeline.search(request.query, request.top_k, request.mode)
    return {"query": request.query, "hits": [hit.as_json() for hit in hits]}


def describe(pipeline: Any) -> dict[str, Any]:
    """An index's folder and size, for `/v1/rag` and the single-index `/health`."""
    return {"path": str(pipeline.folder), "chunks": pipeline.size, "documents": len(pipeline.index.documents)}

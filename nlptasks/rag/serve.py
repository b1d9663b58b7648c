"""The RAG pipeline over HTTP: `POST /search`, `POST /ask`, `GET /health` (FastAPI, served by uvicorn).

Requests are validated before any model runs: bodies over `MAX_BODY_BYTES` get 413, bad JSON
or fields 422, an unknown retrieval mode 422. The pipeline answers one request at a time (its
models are not thread-safe); FastAPI queues the rest in its worker threads.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from nlptasks.errors import UserInputError
from nlptasks.rag.pipeline import RagPipeline

MAX_BODY_BYTES = 16_384
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


def create_app(pipeline: RagPipeline) -> Any:
    from fastapi import FastAPI, Request
    from fastapi.responses import JSONResponse

    app = FastAPI(title="nlptasks RAG", version="1")

    @app.middleware("http")
    async def limit_body(request: Request, call_next: Any) -> Any:
        declared = request.headers.get("content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > MAX_BODY_BYTES):
            return JSONResponse({"detail": f"request body over {MAX_BODY_BYTES} bytes"}, status_code=413)
        if declared is None and request.method == "POST":
            body = b""
            async for chunk in request.stream():  # a chunked body is counted as it arrives, never held whole
                body += chunk
                if len(body) > MAX_BODY_BYTES:
                    return JSONResponse({"detail": f"request body over {MAX_BODY_BYTES} bytes"}, status_code=413)
            request._body = body  # what `request.body()` caches; Starlette replays it to the endpoint
        return await call_next(request)

    @app.exception_handler(UserInputError)
    async def bad_input(request: Request, err: UserInputError) -> Any:
        return JSONResponse({"detail": str(err)}, status_code=400)

    @app.get("/health")
    def health() -> dict[str, Any]:
        return {"status": "ok", "chunks": pipeline.size, "documents": len(pipeline.index.documents)}

    @app.post("/search")
    def search(request: SearchRequest) -> dict[str, Any]:
        hits = pipeline.search(request.query, request.top_k, request.mode)
        return {"query": request.query, "hits": [hit.as_json() for hit in hits]}

    @app.post("/ask")
    def ask(request: AskRequest) -> dict[str, Any]:
        return pipeline.ask(request.question, request.top_k)

    return app


def serve(pipeline: RagPipeline, host: str = "127.0.0.1", port: int = 8000) -> None:
    import uvicorn

    uvicorn.run(create_app(pipeline), host=host, port=port, log_level="info")

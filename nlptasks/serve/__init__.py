"""One HTTP service for trained runs, exported models and RAG indexes (FastAPI, served by uvicorn).

    nlptasks.serve(["runs/sst2", "qa=runs/qa-minilm", "index/"], port=8000, max_batch_size=32)

`POST /v1/models/{name}/predict`, `GET /v1/models`, `POST /v1/rag/{name}/search|ask`, `GET /health`,
`GET /metrics` (Prometheus), OpenAPI at `/docs`. Concurrent requests to one model are batched into
one forward pass (`batching`); bodies, inputs and input lengths are bounded (`settings`); SIGTERM
drains (`server`). The web framework is imported only when an app is built, so `import nlptasks`
stays light; it comes with the `serve` extra (`pip install nlptasks[serve]`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from nlptasks.serve.settings import ServeSettings
from nlptasks.serve.sources import Sources

if TYPE_CHECKING:
    from fastapi import FastAPI


def create_app(
    sources: Sources, settings: ServeSettings | None = None, overrides: list[str] | dict[str, Any] | None = None
) -> FastAPI:
    """The ASGI app serving `sources`: paths, `NAME=PATH` specs, or a mapping of names to paths,
    `Predictor`s or `RagPipeline`s. A model is named after its folder unless named. `overrides`
    (`{"generation.engine": "ctranslate2"}`, an index's `top_k`) reach every source with that setting."""
    from nlptasks.serve.app import create_app as build

    return build(sources, settings, overrides)


def serve(
    sources: Sources,
    host: str = "127.0.0.1",
    port: int = 8000,
    log_level: str = "info",
    overrides: list[str] | dict[str, Any] | None = None,
    **settings: Any,
) -> None:
    """Serve `sources` (as `create_app` reads them) until SIGTERM or Ctrl-C, which drain the requests in
    flight first. `settings` are `ServeSettings` fields (`max_batch_size=32`, `max_wait_ms=5`, ...)."""
    from nlptasks.serve.server import run

    run(create_app(sources, ServeSettings.of(**settings), overrides), host, port, log_level)


__all__ = ["ServeSettings", "create_app", "serve"]

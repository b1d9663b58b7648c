"""`nlptasks rag serve`: the one service of `nlptasks.serve`, started with a single index.

The index answers at `POST /v1/rag/<name>/search` and `/ask` (its folder's name), and at the paths
this command had before the service was shared, `POST /search`, `POST /ask` and `GET /health`
(with `chunks` and `documents`). Bodies stay bounded at `MAX_BODY_BYTES`, as questions are short.
"""

from __future__ import annotations

from typing import Any

from nlptasks.rag.pipeline import RagPipeline
from nlptasks.serve import ServeSettings
from nlptasks.serve import create_app as create_service
from nlptasks.serve import serve as run_service
from nlptasks.serve.sources import default_name

MAX_BODY_BYTES = 16_384


def create_app(pipeline: RagPipeline) -> Any:
    """The service app with this one index."""
    return create_service({default_name(pipeline.folder): pipeline}, ServeSettings(max_body_bytes=MAX_BODY_BYTES))


def serve(pipeline: RagPipeline, host: str = "127.0.0.1", port: int = 8000) -> None:
    run_service({default_name(pipeline.folder): pipeline}, host, port, max_body_bytes=MAX_BODY_BYTES)

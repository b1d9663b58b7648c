"""What every request passes before and after its route: the drain, the body limit, the metrics.

A pure ASGI middleware rather than Starlette's `BaseHTTPMiddleware`: it counts a body as it streams
in (a chunked body declares no length) and never holds it, and it sees the status of every answer,
the ones FastAPI's exception handlers give included, in one place for every route.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from nlptasks.serve.metrics import Metrics


@dataclass
class ServiceState:
    draining: bool = False
    """Set on SIGTERM: requests still arriving on open connections get 503 while those in flight finish."""


class BodyTooLarge(HTTPException):
    """Raised from `receive` once a body passes the limit; FastAPI passes HTTP exceptions raised while it
    reads a body on to its handler, which answers 413."""


class Guard:
    """Refuses while draining (503) and bodies over `max_body_bytes` (413); records every answer in `metrics`."""

    def __init__(
        self, app: ASGIApp, max_body_bytes: int, state: ServiceState, metrics: Metrics, names: set[str]
    ) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.state = state
        self.metrics = metrics
        self.names = names

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500  # unless an answer starts: an exception no handler took becomes a 500 outside

        async def observed(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self._guarded(scope, receive, observed)
        finally:
            self.metrics.record(_route(scope), self._model(scope), status, time.perf_counter() - started)

    async def _guarded(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.state.draining:
            await _answer(send, 503, "the server is shutting down")
            return
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.max_body_bytes):
            await _answer(send, 413, self._too_large())
            return
        await self.app(scope, self._counted(receive), send)

    def _counted(self, receive: Receive) -> Receive:
        """`receive` that raises `BodyTooLarge` as soon as the bytes so far pass the limit."""
        received = 0

        async def counted() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_body_bytes:
                    raise BodyTooLarge(413, self._too_large())
            return message

        return counted

    def _too_large(self) -> str:
        return f"request body over {self.max_body_bytes} bytes (--max-body-bytes)"

    def _model(self, scope: Scope) -> str:
        """The served model or index a request named; empty for other routes and for unknown names."""
        name = scope.get("path_params", {}).get("name")
        return name if name in self.names else ""


def _route(scope: Scope) -> str:
    route = scope.get("route")
    return getattr(route, "path", None) or "unmatched"


async def _answer(send: Send, status: int, detail: str) -> None:
    body = json.dumps({"detail": detail}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})

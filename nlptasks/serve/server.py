"""uvicorn running the app, with SIGTERM as a drain that ends in exit status 0.

uvicorn already stops accepting connections on SIGTERM and waits for the requests in flight, those
still waiting in a batch queue included: the batchers stop only at lifespan shutdown, which uvicorn
runs after the last connection closed. Two things are added here. Requests that still arrive on an
open keep-alive connection get 503 (`/health` too, so a load balancer stops sending). And the signal
is not raised again once the server has stopped, as uvicorn does so that the default handler ends
the process (exit 143): a server that drained cleanly exits 0.
"""

from __future__ import annotations

import signal
from types import FrameType
from typing import Any

import uvicorn


class DrainingServer(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, service: Any) -> None:
        super().__init__(config)
        self.service = service

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        self.service.draining = True
        if sig == signal.SIGTERM:
            self.should_exit = True
            return
        super().handle_exit(sig, frame)


def run(app: Any, host: str, port: int, log_level: str = "info") -> None:
    """Serve `app` until SIGTERM or Ctrl-C, draining first."""
    config = uvicorn.Config(app, host=host, port=port, log_level=log_level, lifespan="on")
    DrainingServer(config, app.state.service).run()

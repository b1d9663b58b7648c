"""The service's Prometheus metrics, in a registry of its own.

An app-own `CollectorRegistry` (not the process-global one) lets several apps live in one process
(tests, a notebook) without colliding, and `/metrics` shows this service's figures only. Label
values are bounded: a model label is a served name or empty, a route label a route template or
`unmatched`, so random paths or names cannot grow the registry.
"""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "nlptasks_requests", "HTTP requests answered", ["route", "model", "status"], registry=self.registry
        )
        self.errors = Counter(
            "nlptasks_request_errors",
            "Requests answered with an error: kind client (4xx) or server (5xx)",
            ["route", "model", "kind"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "nlptasks_request_latency_seconds", "Time to answer a request", ["route", "model"], registry=self.registry
        )
        self.batch_size = Histogram(
            "nlptasks_batch_size",
            "Inputs per gathered batch (one predict call)",
            ["model"],
            buckets=BATCH_BUCKETS,
            registry=self.registry,
        )
        self.inputs = Counter("nlptasks_inputs", "Inputs predicted", ["model"], registry=self.registry)
        self.queue_depth = Gauge(
            "nlptasks_queue_depth", "Inputs waiting for a forward pass", ["model"], registry=self.registry
        )

    def watch_queue(self, model: str, depth: Callable[[], float]) -> None:
        """Read a model's queue depth when scraped, so the gauge is never stale."""
        self.queue_depth.labels(model=model).set_function(depth)

    def batch_observer(self, model: str) -> Callable[[int], None]:
        """What a model's batcher calls with each gathered batch's size."""
        histogram, inputs = self.batch_size.labels(model=model), self.inputs.labels(model=model)

        def observe(size: int) -> None:
            histogram.observe(size)
            inputs.inc(size)

        return observe

    def record(self, route: str, model: str, status: int, seconds: float) -> None:
        self.requests.labels(route=route, model=model, status=str(status)).inc()
        self.latency.labels(route=route, model=model).observe(seconds)
        if status >= 400:
            self.errors.labels(route=route, model=model, kind="client" if status < 500 else "server").inc()

    def exposition(self) -> bytes:
        """The registry in Prometheus' text format."""
        return generate_latest(self.registry)

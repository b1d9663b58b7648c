"""Dynamic batching: concurrent requests to one model share its forward passes.

A request's inputs are cut into chunks of at most `max_batch_size`. A request queues one chunk at a
time and its next only once that one is answered, so the queue holds at most one chunk per request:
a request of thousands of inputs takes turns with the others (round-robin by construction) instead
of starving them. A batch is the oldest whole chunks that fit in `max_batch_size`, taken as soon as
it is full or `max_wait_ms` after the worker found the first of them waiting.

Forward passes run one at a time in the model's own thread, since a predictor is not thread-safe,
while the event loop goes on accepting and answering requests.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any


class Closed(Exception):
    """The batcher stopped (the server is shutting down) before this request's inputs were read."""


@dataclass(eq=False)
class _Chunk:
    inputs: list[Any]
    answer: asyncio.Future[list[Any]]


class Batcher:
    """Gathers concurrent `predict` calls on one model into `predict(list_of_inputs)` calls of its predictor."""

    def __init__(
        self,
        predict: Callable[[list[Any]], list[Any]],
        max_batch_size: int,
        max_wait_ms: float,
        name: str = "model",
        on_batch: Callable[[int], None] | None = None,
    ) -> None:
        self._predict = predict
        self.max_batch_size = max_batch_size
        self.max_wait_s = max_wait_ms / 1000
        self._on_batch = on_batch
        self._queue: deque[_Chunk] = deque()
        self._running: list[_Chunk] = []
        self._arrived: asyncio.Event | None = None
        self._worker: asyncio.Task[None] | None = None
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"predict-{name}")
        self.batches = 0
        """Forward passes so far; with `largest_batch`, what tests and `/metrics` read batching by."""
        self.largest_batch = 0

    @property
    def queued(self) -> int:
        """Inputs waiting for a forward pass."""
        return sum(len(chunk.inputs) for chunk in self._queue)

    async def predict(self, inputs: list[Any]) -> list[Any]:
        """The predictor's outputs for `inputs`, in their order, read in turns with other requests' inputs."""
        outputs: list[Any] = []
        for start in range(0, len(inputs), self.max_batch_size):
            outputs += await self._submit(inputs[start : start + self.max_batch_size])
        return outputs

    async def close(self) -> None:
        """Stop the worker, once the server has drained; whatever is still waiting is refused with `Closed`."""
        if self._worker is not None:
            self._worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._worker
        for chunk in [*self._running, *self._queue]:
            _settle(chunk, error=Closed("the server is shutting down"))
        self._queue.clear()
        self._thread.shutdown(wait=False, cancel_futures=True)

    async def _submit(self, inputs: list[Any]) -> list[Any]:
        self._start_worker()
        chunk = _Chunk(inputs, asyncio.get_running_loop().create_future())
        self._queue.append(chunk)
        self._arrived.set()
        return await chunk.answer

    def _start_worker(self) -> None:
        """Started on first use, in the serving event loop, so the batcher needs no lifespan hook to work."""
        if self._worker is None or self._worker.done():
            self._arrived = asyncio.Event()
            self._worker = asyncio.get_running_loop().create_task(self._work())

    async def _work(self) -> None:
        while True:
            await self._run(await self._next_batch())

    async def _next_batch(self) -> list[_Chunk]:
        while not self._queue:
            await self._arrival(None)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.max_wait_s
        while self.queued < self.max_batch_size and (left := deadline - loop.time()) > 0:
            await self._arrival(left)
        return self._take()

    async def _arrival(self, timeout: float | None) -> None:
        """Until another chunk is queued, or `timeout` seconds."""
        self._arrived.clear()
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self._arrived.wait(), timeout)

    def _take(self) -> list[_Chunk]:
        """The oldest whole chunks that fit one forward pass (a request that went away is dropped)."""
        batch: list[_Chunk] = []
        size = 0
        while self._queue and size + len(self._queue[0].inputs) <= self.max_batch_size:
            chunk = self._queue.popleft()
            if not chunk.answer.done():
                batch.append(chunk)
                size += len(chunk.inputs)
        return batch

    async def _run(self, batch: list[_Chunk]) -> None:
        if not batch:
            return
        self._running = batch  # what `close` must refuse should the worker stop mid-pass
        try:
            await self._answer(batch)
        finally:
            self._running = []

    async def _answer(self, batch: list[_Chunk]) -> None:
        """One forward pass for the batch, each chunk answered with its own slice of the outputs.

        Where the pass fails and the batch holds several requests' chunks, each is run again alone,
        so a bad input fails its own request only.
        """
        try:
            outputs = await self._forward([value for chunk in batch for value in chunk.inputs])
        except Exception as err:  # noqa: BLE001 - handed to the request it belongs to
            if len(batch) == 1:
                _settle(batch[0], error=err)
                return
            for chunk in batch:
                await self._answer([chunk])
            return
        start = 0
        for chunk in batch:
            _settle(chunk, outputs[start : start + len(chunk.inputs)])
            start += len(chunk.inputs)

    async def _forward(self, inputs: list[Any]) -> list[Any]:
        self.batches += 1
        self.largest_batch = max(self.largest_batch, len(inputs))
        if self._on_batch is not None:
            self._on_batch(len(inputs))
        outputs = await asyncio.get_running_loop().run_in_executor(self._thread, self._predict, inputs)
        if len(outputs) != len(inputs):
            raise RuntimeError(f"the predictor answered {len(outputs)} outputs for {len(inputs)} inputs")
        return outputs


def _settle(chunk: _Chunk, outputs: list[Any] | None = None, error: BaseException | None = None) -> None:
    """Answer a chunk's request, unless it went away (cancelled) or was answered already."""
    if chunk.answer.done():
        return
    if error is not None:
        chunk.answer.set_exception(error)
    else:
        chunk.answer.set_result(outputs)

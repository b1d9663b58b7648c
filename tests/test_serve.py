"""`nlptasks serve`: answers equal to `predict`, dynamic batching, limits, metrics, SIGTERM drain, flat memory.

Functional tests talk HTTP to the app served by uvicorn in a thread of this process; the drain and
the load test run `python -m nlptasks serve` as a child process on a free loopback port, as a
deployment would. Nothing leaves 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

import nlptasks
from nlptasks.errors import UserInputError

httpx = pytest.importorskip("httpx")
pytest.importorskip("fastapi", reason="the serve extra is not installed (bash scripts/setup.sh installs it)")
pytestmark = pytest.mark.usefixtures("one_thread")

from nlptasks.serve import ServeSettings, create_app  # noqa: E402
from nlptasks.serve.batching import Batcher  # noqa: E402

CONTEXT = "Ada Lovelace wrote the first program in London in 1843."
ROWS = {
    "classification": [{"text": t, "label": label} for t, label in [("great film", "pos"), ("dull plot", "neg")] * 8],
    "qa": [
        {"question": q, "context": CONTEXT, "answers": {"text": [a], "answer_start": [CONTEXT.index(a)]}}
        for q, a in [("Who wrote it?", "Ada Lovelace"), ("Where?", "London"), ("When?", "1843")] * 4
    ],
}
LIMITS = ServeSettings(max_batch_size=4, max_wait_ms=100, max_body_bytes=4096, max_inputs=8, max_input_chars=300)


def loopback_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def runs(tiny_bert: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A classification run and a QA run of the tiny BERT, two steps each: answers need not be good, only equal."""
    folder = tmp_path_factory.mktemp("serve-runs")
    for task, rows in ROWS.items():
        data = folder / f"{task}.jsonl"
        data.write_text("".join(json.dumps(row) + "\n" for row in rows))
        recipe = {
            "task": task,
            "model": str(tiny_bert),
            "output_dir": str(folder / task),
            "data": {f"{split}_file": str(data) for split in ("train", "validation", "test")} | {"max_length": 48},
            "train": {"max_steps": 2, "batch_size": 4, "eval_strategy": "no", "precision": "fp32"},
            "eval": {"splits": []},
        }
        nlptasks.run(recipe)
    return {task: folder / task for task in ROWS}


@pytest.fixture(scope="module")
def service(runs: dict[str, Path]) -> Iterator[tuple[str, Any]]:
    """The app on uvicorn in a thread: the classification run under its folder's name, the QA run as `reader`."""
    import uvicorn

    app = create_app([str(runs["classification"]), f"reader={runs['qa']}"], LIMITS)
    server = uvicorn.Server(uvicorn.Config(app, port=loopback_port(), log_level="error"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    yield f"http://127.0.0.1:{server.config.port}", app
    server.should_exit = True
    thread.join(timeout=30)


def predict(client: Any, model: str, inputs: Any) -> Any:
    return client.post(f"/v1/models/{model}/predict", json={"inputs": inputs})


def test_answers_are_what_predict_gives_for_texts_pairs_blanks_and_qa_objects(
    service: tuple[str, Any], runs: dict[str, Path]
) -> None:
    url, _ = service
    texts = ["great film", "", {"text": "dull plot", "text_pair": "a long evening"}, "{not json, just a text"]
    questions = [{"question": "Who wrote it?", "context": CONTEXT}, {"question": "When?", "context": CONTEXT}]
    with httpx.Client(base_url=url, timeout=60) as client:
        assert predict(client, "classification", texts).json() == {
            "outputs": nlptasks.load(runs["classification"]).predict(texts)
        }
        assert predict(client, "reader", questions).json() == {"outputs": nlptasks.load(runs["qa"]).predict(questions)}
        many = [f"text number {i}" for i in range(LIMITS.max_inputs)]  # two chunks of max_batch_size
        outputs = predict(client, "classification", many).json()["outputs"]
        assert [o["text"] for o in outputs] == many
        expected = nlptasks.load(runs["classification"]).predict(many)
        assert [o["label"] for o in outputs] == [o["label"] for o in expected]
        assert [o["score"] for o in outputs] == pytest.approx([o["score"] for o in expected], abs=1e-5)

        listed = {m["name"]: m for m in client.get("/v1/models").json()["models"]}
        assert listed["classification"]["task"] == "classification" and listed["reader"]["task"] == "qa"
        assert listed["classification"]["labels"] == ["neg", "pos"] and listed["reader"]["input_fields"] == [
            "question",
            "context",
        ]
        assert client.get("/health").json()["status"] == "ok"
        assert "/v1/models/{name}/predict" in client.get("/openapi.json").json()["paths"]


def test_set_is_refused_where_no_served_source_has_the_setting(runs: dict[str, Path]) -> None:
    from nlptasks.serve.sources import open_sources

    with pytest.raises(UserInputError, match="serve --set top_k: models take generation.* settings only"):
        open_sources([runs["classification"]], overrides=["top_k=3"])
    opened = open_sources([runs["classification"]], overrides=["generation.num_beams=2"])  # nothing it generates
    assert opened["classification"].predict("great film")[0]["label"] in {"pos", "neg"}


def test_concurrent_requests_share_forward_passes(service: tuple[str, Any]) -> None:
    url, app = service
    batcher = app.state.models["classification"].batcher
    with httpx.Client(base_url=url, timeout=60) as client, ThreadPoolExecutor(12) as pool:
        before, passes = _batched_passes(client.get("/metrics").text), batcher.batches
        answers = list(pool.map(lambda i: predict(client, "classification", [f"review {i}"]), range(12)))
        assert [a.json()["outputs"][0]["text"] for a in answers] == [f"review {i}" for i in range(12)]
        scraped = client.get("/metrics").text
    assert batcher.batches - passes < 12 and batcher.largest_batch <= LIMITS.max_batch_size
    assert _batched_passes(scraped) > before  # /metrics shows passes that read more than one input
    answered = 'nlptasks_requests_total{model="classification",route="/v1/models/{name}/predict",status="200"}'
    assert _sample(scraped, answered) >= 12
    for name in ("nlptasks_request_latency_seconds_bucket", "nlptasks_queue_depth", "nlptasks_request_errors_total"):
        assert name in scraped


def _batched_passes(scraped: str) -> float:
    """Forward passes of the classification model that read more than one input, from its histogram."""
    single = _sample(scraped, 'nlptasks_batch_size_bucket{le="1.0",model="classification"}')
    return _sample(scraped, 'nlptasks_batch_size_count{model="classification"}') - single


def _sample(scraped: str, series: str) -> float:
    match = re.search(re.escape(series) + r" (\S+)", scraped)
    assert match, f"{series} not in /metrics"
    return float(match.group(1))


def test_bad_requests_get_413_422_or_404_with_a_message_never_500(service: tuple[str, Any]) -> None:
    url, _ = service
    json_type = {"content-type": "application/json"}
    route = "/v1/models/classification/predict"
    with httpx.Client(base_url=url, timeout=60) as client:
        cases = {
            "body over the limit": (client.post("/v1/models/reader/predict", json={"inputs": ["x" * 5000]}), 413),
            "chunked body over the limit": (
                client.post(route, content=iter([b'{"inputs": ["', b"x" * 5000, b'"]}']), headers=json_type),
                413,
            ),
            "too many inputs": (predict(client, "classification", ["x"] * (LIMITS.max_inputs + 1)), 413),
            "input too long": (predict(client, "classification", ["x" * 301]), 422),
            "qa input too long": (predict(client, "reader", [{"question": "q" * 200, "context": "c" * 101}]), 422),
            "malformed JSON": (client.post(route, content=b"{no", headers=json_type), 422),
            "missing inputs": (client.post(route, json={"texts": ["x"]}), 422),
            "inputs not a list": (client.post(route, json={"inputs": "x"}), 422),
            "a number as input": (predict(client, "classification", [3]), 422),
            "unknown field": (predict(client, "classification", [{"text": "x", "label": "pos"}]), 422),
            "a string for QA": (predict(client, "reader", ["Who wrote it?"]), 422),
            "QA without context": (predict(client, "reader", [{"question": "Who?"}]), 422),
            "QA blank context": (predict(client, "reader", [{"question": "Who?", "context": " "}]), 422),
            "unknown model": (predict(client, "classificaton", ["x"]), 404),
        }
        for case, (answer, status) in cases.items():
            assert answer.status_code == status, (case, answer.text)
            assert answer.json()["detail"], case
        assert "did you mean 'classification'" in cases["unknown model"][0].json()["detail"]
        assert "inputs[0]: field 'context'" in cases["QA without context"][0].json()["detail"]
        assert predict(client, "classification", ["still fine"]).status_code == 200
        assert 'status="500"' not in client.get("/metrics").text


def test_a_bad_input_fails_its_own_request_only_and_a_draining_server_refuses_new_ones() -> None:
    """A fake predictor, in-process: the batch holding a bad input is re-run a request at a time."""

    def fake_predict(inputs: list[str]) -> list[dict[str, Any]]:
        if "bad" in inputs:
            raise UserInputError("input 'bad' is bad")
        return [{"text": text, "length": len(text)} for text in inputs]

    task = SimpleNamespace(name="classification", input_fields=("text",))
    app = create_app({"fake": SimpleNamespace(task=task, predict=fake_predict)}, LIMITS)

    async def scenario() -> list[Any]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://serve.test") as client:
            requests = [predict(client, "fake", ["good", "also good"]), predict(client, "fake", ["bad"])]
            answers = await asyncio.gather(*requests, predict(client, "fake", ["fine"]))
            app.state.service.draining = True
            return [*answers, await predict(client, "fake", ["late"]), await client.get("/health")]

    good, bad, fine, late, health = asyncio.run(scenario())
    assert app.state.models["fake"].batcher.largest_batch == 4  # all three requests shared the first pass
    assert good.json()["outputs"] == [{"text": "good", "length": 4}, {"text": "also good", "length": 9}]
    assert fine.json()["outputs"] == [{"text": "fine", "length": 4}]
    assert bad.status_code == 422 and bad.json()["detail"] == "input 'bad' is bad"
    assert late.status_code == 503 and health.status_code == 503


def test_a_large_request_takes_turns_with_small_ones() -> None:
    """Chunks of max_batch_size: a small request that arrives after a large one is answered before its end."""
    passes: list[list[str]] = []

    def slow_predict(inputs: list[str]) -> list[str]:
        time.sleep(0.01)
        passes.append(list(inputs))
        return [text.upper() for text in inputs]

    async def scenario() -> tuple[list[str], list[str]]:
        batcher = Batcher(slow_predict, max_batch_size=2, max_wait_ms=1)
        large = asyncio.ensure_future(batcher.predict([f"l{i}" for i in range(10)]))
        await asyncio.sleep(0.005)
        small = await batcher.predict(["s"])
        outputs = await large
        await batcher.close()
        return outputs, small

    large, small = asyncio.run(scenario())
    assert large == [f"L{i}" for i in range(10)] and small == ["S"]
    assert all(len(batch) <= 2 for batch in passes)
    assert next(i for i, b in enumerate(passes) if "s" in b) < next(i for i, b in enumerate(passes) if "l9" in b)


def start_server(run: Path, folder: Path, *options: str) -> tuple[subprocess.Popen, str]:
    """`python -m nlptasks serve RUN` on a free loopback port, its log in `folder`, once `/health` answers."""
    port = loopback_port()
    log = (folder / f"serve-{port}.log").open("w")
    command = [sys.executable, "-m", "nlptasks", "serve", str(run), "--port", str(port), *options]
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=os.environ.copy())
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        assert process.poll() is None, Path(log.name).read_text()[-3000:]
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return process, url
        except httpx.TransportError:
            time.sleep(0.2)
    process.kill()
    raise AssertionError(f"the server did not start:\n{Path(log.name).read_text()[-3000:]}")


def test_sigterm_drains_queued_requests_then_exits_0(runs: dict[str, Path], tmp_path: Path) -> None:
    """Five one-input requests never fill a pass of 8, so they wait in the queue (--max-wait-ms) when SIGTERM comes."""
    process, url = start_server(runs["classification"], tmp_path, "--max-batch-size", "8", "--max-wait-ms", "2000")
    route = f"{url}/v1/models/classification/predict"
    try:
        with ThreadPoolExecutor(5) as pool:
            sent = [pool.submit(httpx.post, route, json={"inputs": [f"queued {i}"]}, timeout=60) for i in range(5)]
            deadline = time.monotonic() + 30
            while _sample(httpx.get(f"{url}/metrics").text, 'nlptasks_queue_depth{model="classification"}') < 5:
                assert time.monotonic() < deadline, "the five requests never waited in the queue together"
                time.sleep(0.02)
            process.send_signal(signal.SIGTERM)
            time.sleep(0.3)
            with contextlib.suppress(httpx.ConnectError):  # refused once the listening socket is closed, else 503
                assert httpx.post(route, json={"inputs": ["late"]}, timeout=10).status_code == 503
            answers = [future.result() for future in sent]
        assert [a.status_code for a in answers] == [200] * 5
        assert [a.json()["outputs"][0]["text"] for a in answers] == [f"queued {i}" for i in range(5)]
        assert process.wait(timeout=60) == 0
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"{url}/health", timeout=5)
    finally:
        process.kill()


@pytest.mark.skipif(sys.platform != "linux", reason="resident memory of a child process via psutil on Linux")
def test_memory_stays_flat_over_ten_times_the_requests(runs: dict[str, Path], tmp_path: Path) -> None:
    import psutil

    process, url = start_server(runs["classification"], tmp_path)
    try:
        resident = {}
        with httpx.Client(base_url=url, timeout=60) as client, ThreadPoolExecutor(32) as pool:

            def phase(count: int, tag: str) -> float:
                started = time.monotonic()
                texts = (f"{tag} review {i} " + "word " * (i % 40) for i in range(count))
                assert set(pool.map(lambda text: predict(client, "classification", [text]).status_code, texts)) == {200}
                return time.monotonic() - started

            phase(50, "warm-up")
            seconds = {}
            for count in (50, 500):  # both phases bounded: 60 s a request, pytest's timeout overall
                seconds[count] = phase(count, str(count))
                resident[count] = psutil.Process(process.pid).memory_info().rss / 2**20
        growth = resident[500] - resident[50]
        print(
            f"RSS {resident[50]:.0f} MB after 50 requests ({seconds[50]:.1f} s), "
            f"{resident[500]:.0f} MB after 500 more ({seconds[500]:.1f} s)"
        )
        assert growth < max(30, 0.1 * resident[50]), resident
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=60) == 0

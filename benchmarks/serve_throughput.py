"""Serving throughput: offline `predict` vs `nlptasks serve` at 1, 8 and 32 concurrent clients.

The offline side is one `Predictor.predict` call over every input (the CLI `predict`'s batching).
The service runs as its own process (`python -m nlptasks serve RUN`) on a free loopback port, as it
is deployed, and asynchronous clients (one keep-alive connection each, `Connection`) send one input
per request, each client its next request once the last is answered. Requests/s equals inputs/s, one
input a request; latencies are per request as a client sees them; the mean batch is the service's
inputs per gathered batch (one `predict` call), read from its `/metrics`. The clients share the
machine with the server; the CPU seconds each side spent are reported, so on a small machine read the
service's figures as a floor.

    NLPTASKS_DATA_DIR=../shared/data .venv/bin/python benchmarks/serve_throughput.py RUN_DIR \\
        [--file inputs.jsonl] [--inputs 2000] [--clients 1 8 32] [--results]

Without `--file`, the inputs are the SST-2 test sentences of the offline data folder (cycled).
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import platform
import re
import resource
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path
from typing import Any

from common import publish


def read_inputs(path: Path | None, fields: tuple[str, ...], count: int) -> list[Any]:
    """`count` inputs as `nlptasks predict --file` reads them, cycled; the SST-2 test sentences by default."""
    from nlptasks import catalog
    from nlptasks.predict import read_texts

    if path is None:
        path = catalog.local_dataset_folder("sst2") / "test.jsonl"
    with path.open(encoding="utf-8") as lines:
        inputs = [value for value in read_texts(lines, str(path), fields) if value]
    if not inputs:
        raise SystemExit(f"{path}: no inputs")
    return list(itertools.islice(itertools.cycle(inputs), count))


def offline_rate(predictor: Any, inputs: list[Any]) -> float:
    """Inputs/s of one `predict` call over all inputs, after a warm-up call."""
    predictor.predict(inputs[:32])
    started = time.perf_counter()
    predictor.predict(inputs)
    return len(inputs) / (time.perf_counter() - started)


def start_service(run_dir: Path, max_batch_size: int, max_wait_ms: float, log: Any) -> tuple[subprocess.Popen, str]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    command = [sys.executable, "-m", "nlptasks", "serve", f"bench={run_dir}", "--port", str(port)]
    command += ["--max-batch-size", str(max_batch_size), "--max-wait-ms", str(max_wait_ms)]
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    import httpx

    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and process.poll() is None:
        try:
            httpx.get(f"{url}/health", timeout=2).raise_for_status()
            return process, url
        except httpx.HTTPError:
            time.sleep(0.2)
    process.kill()
    log.seek(0)
    raise SystemExit(f"the service did not start:\n{log.read()[-3000:]}")


class Connection:
    """One keep-alive HTTP/1.1 connection sending JSON posts: the load generator's client.

    A client library (httpx) spends ~2-3 ms of CPU per request, which on a small machine is taken from
    the server it measures; this one writes the request bytes and reads the answer by its length.
    """

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, host: str) -> None:
        self.reader, self.writer, self.host = reader, writer, host

    @classmethod
    async def open(cls, url: str) -> Connection:
        host, port = url.removeprefix("http://").split(":")
        return cls(*await asyncio.open_connection(host, int(port)), f"{host}:{port}")

    async def post(self, path: str, body: bytes) -> bytes:
        head = f"POST {path} HTTP/1.1\r\nHost: {self.host}\r\nContent-Type: application/json\r\n"
        self.writer.write(f"{head}Content-Length: {len(body)}\r\n\r\n".encode() + body)
        status, *headers = (await self.reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
        length = next(int(h.split(":")[1]) for h in headers if h.lower().startswith("content-length:"))
        answer = await self.reader.readexactly(length)
        if status.split()[1] != "200":
            raise SystemExit(f"the service answered {status}: {answer[:300]!r}")
        return answer

    def close(self) -> None:
        self.writer.close()


async def load(url: str, inputs: list[Any], clients: int) -> tuple[float, list[float]]:
    """Wall seconds and per-request latencies of `clients` clients sending every input once, one a request."""
    pending, latencies = iter(inputs), []
    connections = [await Connection.open(url) for _ in range(clients)]

    async def client_loop(connection: Connection) -> None:
        for value in pending:  # one iterator shared by the clients: each input is sent once
            started = time.perf_counter()
            await connection.post("/v1/models/bench/predict", json.dumps({"inputs": [value]}).encode())
            latencies.append(time.perf_counter() - started)

    started = time.perf_counter()
    try:
        await asyncio.gather(*(client_loop(connection) for connection in connections))
    finally:
        for connection in connections:
            connection.close()
    return time.perf_counter() - started, latencies


def batches(url: str) -> tuple[float, float]:
    """The service's gathered batches so far and the inputs they read."""
    import httpx

    scraped = httpx.get(f"{url}/metrics").text
    read = {m[0]: float(m[1]) for m in re.findall(r'nlptasks_batch_size_(count|sum)\{model="bench"\} (\S+)', scraped)}
    return read.get("count", 0.0), read.get("sum", 0.0)


def cpu_seconds(pid: int | None = None) -> float:
    """User and system CPU seconds a process has spent: the service's (`pid`) or this one's."""
    if pid is None:
        used = resource.getrusage(resource.RUSAGE_SELF)
        return used.ru_utime + used.ru_stime
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def measure_service(url: str, inputs: list[Any], clients: int, server: int) -> dict[str, float]:
    passes, read = batches(url)
    server_cpu, client_cpu = cpu_seconds(server), cpu_seconds()
    seconds, latencies = asyncio.run(load(url, inputs, clients))
    server_cpu, client_cpu = cpu_seconds(server) - server_cpu, cpu_seconds() - client_cpu
    passes_after, read_after = batches(url)
    cuts = statistics.quantiles(latencies, n=100) if len(latencies) > 1 else latencies * 99
    return {
        "requests/s": len(latencies) / seconds,
        "p50": cuts[49] * 1000,
        "p95": cuts[94] * 1000,
        "p99": cuts[98] * 1000,
        "batch": (read_after - read) / max(passes_after - passes, 1),
        "server_cpu_ms": server_cpu / len(latencies) * 1000,
        "client_cpu_ms": client_cpu / len(latencies) * 1000,
    }


def table(args: argparse.Namespace, offline: float, service: dict[int, dict[str, float]], count: int) -> str:
    command = " ".join(["benchmarks/serve_throughput.py", *sys.argv[1:]])
    lines = [
        f"### Serving throughput: offline predict vs `nlptasks serve` ({date.today()})",
        "",
        f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores. Command: `{command}`. "
        f"Run `{args.run_dir}`, {count} inputs, one a request; service `--max-batch-size {args.max_batch_size} "
        f"--max-wait-ms {args.max_wait_ms}`, clients in the benchmark's process.",
        "",
        "| side | clients | requests/s | inputs/s | p50 ms | p95 ms | p99 ms | mean batch | CPU ms a request: "
        "service / clients |",
        "|---|---|---|---|---|---|---|---|---|",
        f"| offline `predict` | - | - | {offline:.1f} | - | - | - | - | - |",
    ]
    for clients, row in service.items():
        lines.append(
            f"| service | {clients} | {row['requests/s']:.1f} | {row['requests/s']:.1f} | {row['p50']:.1f} | "
            f"{row['p95']:.1f} | {row['p99']:.1f} | {row['batch']:.1f} | "
            f"{row['server_cpu_ms']:.1f} / {row['client_cpu_ms']:.1f} |"
        )
    return "\n".join([*lines, ""])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dir", type=Path, help="a run directory or an exported model")
    parser.add_argument("--file", type=Path, help="inputs, one a line as `predict --file` reads (default: SST-2 test)")
    parser.add_argument("--inputs", type=int, default=2000, help="inputs per measurement (the file cycled)")
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--max-batch-size", type=int, default=32)
    parser.add_argument("--max-wait-ms", type=float, default=5.0)
    parser.add_argument("--results", action="store_true", help="append the table to benchmarks/RESULTS.md")
    args = parser.parse_args()

    import nlptasks

    predictor = nlptasks.load(args.run_dir)
    inputs = read_inputs(args.file, predictor.task.input_fields, args.inputs)
    offline = offline_rate(predictor, inputs)
    del predictor  # the service loads its own
    with tempfile.TemporaryFile("w+") as log:
        process, url = start_service(args.run_dir, args.max_batch_size, args.max_wait_ms, log)
        try:
            asyncio.run(load(url, inputs[:32], 8))  # warm-up: first-call allocations, lazy imports
            service = {clients: measure_service(url, inputs, clients, process.pid) for clients in args.clients}
        finally:
            process.send_signal(signal.SIGTERM)
            process.wait(timeout=120)
    publish(table(args, offline, service, len(inputs)), args.results)


if __name__ == "__main__":
    main()

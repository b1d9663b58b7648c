"""What every benchmark shares: measuring a side in its own process, and where its table goes."""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "RESULTS.md"


def measured_child(command: list[str], name: str, env: dict[str, str] | None = None) -> tuple[dict[str, Any], int]:
    """The JSON a child prints last, and its own peak RSS in bytes from the kernel (wait4), not a running max."""
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        child = subprocess.Popen(command, stdout=out, stderr=err, env=env or os.environ.copy())
        _, status, usage = os.wait4(child.pid, 0)
        out.seek(0), err.seek(0)
        if os.waitstatus_to_exitcode(status) != 0:
            raise SystemExit(f"{name} failed:\n{err.read()[-4000:]}")
        return json.loads(out.read().strip().splitlines()[-1]), usage.ru_maxrss * 1024


def publish(text: str, append: bool) -> None:
    """Print a table; with `--results`, append it to RESULTS.md."""
    print(text)
    if append:
        with RESULTS.open("a") as handle:
            handle.write("\n" + text)


def matmul_peak_flops(bf16: bool, size: int = 2048, repeats: int = 10) -> float:
    """This machine's dense matmul rate: the ceiling a model's achieved FLOP/s is read against."""
    import torch

    dtype = torch.bfloat16 if bf16 else torch.float32
    a, b = torch.randn(size, size, dtype=dtype), torch.randn(size, size, dtype=dtype)
    a @ b
    started = time.perf_counter()
    for _ in range(repeats):
        a @ b
    return 2 * size**3 * repeats / (time.perf_counter() - started)

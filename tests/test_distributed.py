"""The same CLI runs on two CPU processes (gloo) under either launcher users reach for."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

BIN = Path(sys.executable).parent
LAUNCHERS = {
    "torchrun": [str(BIN / "torchrun"), "--standalone", "--nproc_per_node", "2"],
    # What a multi-GPU user types; with no GPU present it runs the same DDP over gloo on the CPU.
    "accelerate": [
        *(str(BIN / "accelerate"), "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1"),
        *("--mixed_precision", "no", "--dynamo_backend", "no"),
    ],
}


@pytest.mark.slow
@pytest.mark.parametrize("launcher", sorted(LAUNCHERS))
def test_two_cpu_processes(launcher: str, tiny_bert: Path, ner_recipe, tmp_path: Path, free_port: int) -> None:
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump(ner_recipe(tiny_bert, tmp_path / "ddp", epochs=2)))
    port = (
        ["--main_process_port", str(free_port)] if launcher == "accelerate" else []
    )  # torchrun --standalone picks one
    command = [*LAUNCHERS[launcher], *port, "-m", "nlptasks", "run", str(recipe)]
    done = subprocess.run(
        command, capture_output=True, text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"}
    )
    assert done.returncode == 0, done.stderr[-3000:]
    metrics = json.loads((tmp_path / "ddp" / "metrics.json").read_text())
    assert {"validation", "test"} <= set(metrics)
    log = (tmp_path / "ddp" / "logs" / "train.log").read_text()
    assert "process 0 of 2" in log and "process 1 of 2" in log

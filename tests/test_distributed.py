"""`accelerate launch` runs the same CLI on several processes (2 CPU processes, gloo)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml


@pytest.mark.slow
def test_accelerate_launch_with_two_cpu_processes(tiny_bert: Path, ner_recipe, tmp_path: Path) -> None:
    launcher = Path(sys.executable).parent / "accelerate"
    if not launcher.exists() and shutil.which("accelerate") is None:
        pytest.skip("accelerate's launcher is not installed")
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump(ner_recipe(tiny_bert, tmp_path / "ddp", epochs=2)))
    command = [
        str(launcher),
        "launch",
        "--num_processes",
        "2",
        "--cpu",
        "--num_machines",
        "1",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
        "-m",
        "nlptasks",
        "run",
        str(recipe),
    ]
    done = subprocess.run(
        command, capture_output=True, text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"}
    )
    assert done.returncode == 0, done.stderr[-3000:]
    metrics = json.loads((tmp_path / "ddp" / "metrics.json").read_text())
    assert {"validation", "test"} <= set(metrics)
    log = (tmp_path / "ddp" / "logs" / "train.log").read_text()
    assert "process 0 of 2" in log and "process 1 of 2" in log

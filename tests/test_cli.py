"""The command line as a person reads it: a line per phase, library noise only with --verbose."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.usefixtures("one_thread")


def nlptasks_cli(*args: str) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "nlptasks", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=600, env=os.environ.copy())


def test_run_and_predict_print_their_phases_and_hide_library_noise_unless_verbose(
    tiny_bert: Path, ner_recipe, tmp_path: Path
) -> None:
    recipe = tmp_path / "tagger.yaml"
    recipe.write_text(yaml.safe_dump(ner_recipe(tiny_bert, tmp_path / "run", epochs=1)))
    trained = nlptasks_cli("run", str(recipe))
    assert trained.returncode == 0, trained.stderr
    for phase in ("data: train 64, validation 8, test 8 examples", "model: ", "parameters trained", "scoring test"):
        assert phase in trained.stderr
    assert "LOAD REPORT" not in trained.stderr and "Tokenizing" not in trained.stderr
    assert "'loss'" not in trained.stdout and trained.stdout.splitlines()[-1].startswith("run directory: ")
    assert "LOAD REPORT" in (tmp_path / "run" / "logs" / "train.log").read_text()  # kept where a developer looks

    quiet = nlptasks_cli("predict", str(tmp_path / "run"), "--text", "Angela Merkel visited Paris.")
    assert quiet.returncode == 0 and quiet.stdout.count("\n") == 1
    assert "Loading weights" not in quiet.stderr and "Tokenizing" not in quiet.stderr
    verbose = nlptasks_cli("predict", str(tmp_path / "run"), "--text", "Angela Merkel visited Paris.", "--verbose")
    assert verbose.returncode == 0 and verbose.stdout == quiet.stdout
    assert "Tokenizing" in verbose.stderr

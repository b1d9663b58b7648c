"""The same CLI runs on two CPU processes (gloo) under either launcher users reach for: training, and batch
inference whose output is the single process's, byte for byte."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

import nlptasks
from nlptasks import sharding
from nlptasks.cli import main

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


def launched(*arguments: str) -> subprocess.CompletedProcess[str]:
    """`nlptasks ARGUMENTS` as two torchrun processes of one thread each."""
    command = [*LAUNCHERS["torchrun"], "-m", "nlptasks", *arguments]
    return subprocess.run(
        command, capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"}
    )


def test_each_process_takes_its_share_of_the_cores(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(8)), raising=False)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(8)
        monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
        assert sharding.share_cpu_threads() == 8  # a single process keeps every core
        monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
        assert sharding.share_cpu_threads(on_cpu=False) == 8  # a GPU process leaves the CPU threads alone
        assert sharding.share_cpu_threads() == 4
        assert sharding.share_cpu_threads() == 4  # again: unchanged
        monkeypatch.setenv("LOCAL_WORLD_SIZE", "3")
        assert sharding.share_cpu_threads() == 2
        monkeypatch.setenv("LOCAL_WORLD_SIZE", "16")
        assert sharding.share_cpu_threads() == 1  # more processes than cores: still one thread each
        torch.set_num_threads(1)
        monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
        assert sharding.share_cpu_threads() == 1  # an explicit smaller OMP_NUM_THREADS is kept
    finally:
        torch.set_num_threads(threads)


@pytest.mark.parametrize("world", [1, 2, 3])
@pytest.mark.parametrize("size", [1, 3, 4])
def test_parts_merge_back_in_input_order(world: int, size: int, tmp_path: Path) -> None:
    for count in (0, 1, size * world, size * world * 2 + 1, 13):
        rows = [f"line {i}\n" for i in range(count)]
        for rank in range(world):
            chunks = sharding.own_chunks(rows, size, rank, world)
            (tmp_path / f"part-{rank}.jsonl").write_text("".join(line for chunk in chunks for line in chunk))
        assert list(sharding.merged_parts(tmp_path, world, size)) == rows


def test_parts_of_another_job_are_not_merged(tmp_path: Path) -> None:
    (tmp_path / "part-0.jsonl").write_text("a\nb\nc\n")
    (tmp_path / "part-1.jsonl").write_text("d\n")  # a short chunk ends the input, yet part-0 goes on
    with pytest.raises(RuntimeError, match="lines past the end of the input"):
        list(sharding.merged_parts(tmp_path, 2, 2))


def test_predict_refuses_what_processes_cannot_share(monkeypatch, capsys) -> None:
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert main(["predict", "any-run", "--output", "out.jsonl"]) == 2
    assert "several processes cannot share stdin; pass --file" in capsys.readouterr().err
    assert main(["predict", "any-run", "--text", "A triumph."]) == 2
    assert "several processes cannot share stdout; pass --output" in capsys.readouterr().err


@pytest.fixture(scope="module")
def runs(tiny_bert: Path, tmp_path_factory: pytest.TempPathFactory, one_thread: None) -> dict[str, Path]:
    """A classification run of the tiny model that tells the two labels apart, and a sentence-embedding run."""
    folder = tmp_path_factory.mktemp("runs")
    labelled = [("great film", "pos"), ("dull plot", "neg"), ("a fine cast", "pos"), ("long and boring", "neg")]
    (folder / "labelled.jsonl").write_text("".join(json.dumps({"text": t, "label": y}) + "\n" for t, y in labelled * 5))
    (folder / "sentences.txt").write_text("\n".join(text for text, _ in labelled * 4) + "\n")
    pairs = [("great film", "a fine film", 4.5), ("dull plot", "a fine cast", 1.0), ("a plot", "the plot", 4.0)]
    (folder / "pairs.jsonl").write_text(
        "".join(json.dumps(dict(zip(("sentence1", "sentence2", "score"), p))) + "\n" for p in pairs * 2)
    )
    train = {"max_steps": 2, "batch_size": 4, "eval_strategy": "no", "precision": "fp32"}
    classification = nlptasks.run(
        {
            "task": "classification",
            "model": str(tiny_bert),
            "output_dir": str(folder / "classification"),
            "data": {f"{split}_file": str(folder / "labelled.jsonl") for split in ("train", "validation", "test")},
            "train": {**train, "max_steps": 40, "learning_rate": 3e-3},
            "eval": {"splits": []},
        }
    )
    embedding = nlptasks.run(
        {
            "task": "sentence-embedding",
            "model": str(tiny_bert),
            "output_dir": str(folder / "embedding"),
            "task_args": {"pooling": "mean"},
            "data": {
                "train_file": str(folder / "sentences.txt"),
                "validation_file": str(folder / "pairs.jsonl"),
                "test_file": str(folder / "pairs.jsonl"),
                "txt_format": "lines",
            },
            "train": train,
            "eval": {"splits": []},
        }
    )
    return {"classification": classification.run_dir, "embedding": embedding.run_dir}


def inputs_file(folder: Path) -> Path:
    """Ten inputs, 2.5 chunks of four: a blank line, a JSON line and text beyond ASCII among them."""
    lines = ["great film", "dull plot", "", "a fine cast", '{"text": "long and boring"}', "déjà vu, naïve plot"]
    path = folder / "inputs.txt"
    path.write_text("\n".join([*lines, "great", "boring", "a plot", "the cast"]) + "\n", encoding="utf-8")
    return path


@pytest.mark.slow
def test_two_processes_predict_what_one_predicts(runs: dict[str, Path], tmp_path: Path) -> None:
    source, run = inputs_file(tmp_path), str(runs["classification"])
    assert (
        main(["predict", run, "--file", str(source), "--output", str(tmp_path / "one.jsonl"), "--chunk-size", "4"]) == 0
    )
    done = launched("predict", run, "--file", str(source), "--output", str(tmp_path / "two.jsonl"), "--chunk-size", "4")
    assert done.returncode == 0, done.stderr[-3000:]
    one, two = (tmp_path / "one.jsonl").read_bytes(), (tmp_path / "two.jsonl").read_bytes()
    assert two == one and len(one.splitlines()) == 10 and b'"empty": true' in one.splitlines()[2]
    assert not (tmp_path / "two.jsonl.parts").exists()
    assert done.stdout.strip() == f"10 predictions written to {tmp_path / 'two.jsonl'}"  # process 0 alone reports

    refused = launched("predict", run, "--file", str(source))
    assert refused.returncode != 0
    assert refused.stderr.count("several processes cannot share stdout") == 2  # each process, before any work
    assert "exitcode  : 2" in refused.stderr


@pytest.mark.slow
def test_two_processes_embed_what_one_embeds(runs: dict[str, Path], tmp_path: Path) -> None:
    source, run = inputs_file(tmp_path), str(runs["embedding"])
    assert main(["embed", run, "--file", str(source), "--output", str(tmp_path / "one.npy"), "--chunk-size", "4"]) == 0
    done = launched("embed", run, "--file", str(source), "--output", str(tmp_path / "two.npy"), "--chunk-size", "4")
    assert done.returncode == 0, done.stderr[-3000:]
    one, two = np.load(tmp_path / "one.npy"), np.load(tmp_path / "two.npy")
    assert two.shape == one.shape == (10, 32) and np.allclose(two, one, atol=1e-6)
    assert not two[2].any()  # the blank line's zero row, in place


@pytest.mark.slow
def test_two_processes_score_what_one_scores(runs: dict[str, Path], tmp_path: Path, capsys) -> None:
    positive = ["great film", "a fine cast", "fine film", "great cast", "a fine film"]
    negative = ["dull plot", "long and boring", "boring plot", "dull film", "long plot", "boring"]
    order = "ppnnpnnnpnp"  # no period: a shard out of place changes the scores
    rows = [{"text": (positive if k == "p" else negative).pop(), "label": "pos" if k == "p" else "neg"} for k in order]
    labelled = tmp_path / "labelled.jsonl"
    labelled.write_text("".join(json.dumps(row) + "\n" for row in rows))
    assert main(["eval", str(runs["classification"]), "--file", str(labelled)]) == 0
    single = json.loads(capsys.readouterr().out)
    assert single["f1_pos"] > 0 and single["f1_neg"] > 0  # the model predicts both labels
    done = launched("eval", str(runs["classification"]), "--file", str(labelled))
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads(done.stdout) == single  # printed once, by process 0

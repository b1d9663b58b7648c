"""One run directory per run: named after its recipe, resumed only by the same recipe, one writer at a time,
started afresh only on request and without losing the old run, each run's own peak memory."""

from __future__ import annotations

import json
import os
import resource
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

import nlptasks
from nlptasks.cli import main
from nlptasks.recipe import load_recipe, shipped_recipes

pytestmark = pytest.mark.usefixtures("one_thread")


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under `folder` by relative path, byte for byte."""
    return {str(path.relative_to(folder)): path.read_bytes() for path in sorted(folder.rglob("*")) if path.is_file()}


def wait_for(condition: Callable[[], bool], process: subprocess.Popen, seconds: float = 240) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert process.poll() is None, f"the run ended (exit {process.returncode}) before it could be caught"
        assert time.monotonic() < deadline, "timed out waiting for the run"
        time.sleep(0.02)


def start_run(recipe: dict, tmp_path: Path, *flags: str) -> subprocess.Popen:
    recipe_file = tmp_path / f"{len(list(tmp_path.glob('*.yaml')))}.yaml"
    recipe_file.write_text(yaml.safe_dump(recipe))
    command = [sys.executable, "-m", "nlptasks", "run", str(recipe_file), *flags]
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=os.environ.copy())


def test_every_shipped_recipe_has_a_run_directory_of_its_own() -> None:
    folders: dict[Path, str] = {}
    for name, _ in shipped_recipes():
        if name.startswith("rag/"):  # index settings, not training recipes
            continue
        folder = load_recipe(name).run_dir
        assert folder not in folders, f"{name} and {folders[folder]} both run into {folder}"
        folders[folder] = name
    assert load_recipe("ner/minilm-lora").run_dir == Path("runs/ner-minilm-lora")
    assert load_recipe("ner/minilm", {"output_dir": "elsewhere"}).run_dir == Path("elsewhere")


def test_a_recipe_file_names_its_run_and_a_base_it_extends_does_not(tmp_path: Path) -> None:
    (tmp_path / "base.yaml").write_text("name: base-run\ntask: ner\nmodel: bilstm\n")
    (tmp_path / "my-tagger.yaml").write_text("extends: base.yaml\nmethod: full\n")
    assert load_recipe(tmp_path / "my-tagger.yaml").run_dir == Path("runs/my-tagger")
    assert load_recipe(tmp_path / "base.yaml").run_dir == Path("runs/base-run")
    assert load_recipe({"task": "ner", "model": "bilstm", "method": "lora"}).run_dir == Path("runs/ner-bilstm-lora")


def test_another_recipe_in_a_used_folder_is_refused_naming_each_difference_and_changing_nothing(
    tiny_bert: Path, ner_recipe, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    recipe = ner_recipe(tiny_bert, tmp_path / "run", epochs=1)
    nlptasks.run(recipe)
    before = snapshot(tmp_path / "run")

    changed = {**recipe, "method": "lora", "train": {**recipe["train"], "learning_rate": 5e-4}}
    recipe_file = tmp_path / "changed.yaml"
    recipe_file.write_text(yaml.safe_dump(changed))
    assert main(["run", str(recipe_file)]) == 2
    message = capsys.readouterr().err
    assert "method: 'full' there, 'lora' now" in message
    assert "train.learning_rate: 0.001 there, 0.0005 now" in message
    assert "--overwrite" in message and "output_dir" in message
    assert snapshot(tmp_path / "run") == before

    extended = {**recipe, "train": {**recipe["train"], "epochs": 2, "logging_steps": 1}, "eval": {"splits": ["test"]}}
    result = nlptasks.run(extended)  # training longer and evaluating differently continue the same run
    assert "resuming from" in (result.run_dir / "logs" / "train.log").read_text()
    assert load_recipe(result.run_dir / "recipe.yaml").train.epochs == 2


def test_overwrite_replaces_the_run_and_a_kill_before_its_first_checkpoint_loses_nothing(
    tiny_bert: Path, ner_recipe, tmp_path: Path
) -> None:
    folder = tmp_path / "run"
    first = nlptasks.run(ner_recipe(tiny_bert, folder, epochs=1))
    finished = snapshot(folder)
    aside = tmp_path / ".run-previous"

    other = {**ner_recipe(tiny_bert, folder, epochs=50), "method": "lora"}
    process = start_run(other, tmp_path, "--overwrite")
    wait_for(lambda: aside.is_dir() and (folder / "recipe.yaml").is_file(), process)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert not list((folder / "checkpoints").glob("checkpoint-*")), "killed too late: it had a checkpoint"

    predictor = nlptasks.load(folder)  # readers see the old run while the new one has nothing to show
    assert predictor.recipe.method == "full" and predictor.predict("Angela Merkel visited Paris.")
    assert nlptasks.evaluate(folder, "test")["f1"] == pytest.approx(first.metrics["test"]["f1"])

    resumed = nlptasks.run(ner_recipe(tiny_bert, folder, epochs=1))  # the next claim puts the old run back
    assert not aside.exists()
    assert resumed.metrics["test"]["f1"] == pytest.approx(first.metrics["test"]["f1"])
    assert {name: finished[name] for name in ("model/model.safetensors", "recipe.yaml")} == {
        name: snapshot(folder)[name] for name in ("model/model.safetensors", "recipe.yaml")
    }

    replaced = nlptasks.run({**ner_recipe(tiny_bert, folder, epochs=1), "method": "lora"}, overwrite=True)
    assert not aside.exists() and load_recipe(folder / "recipe.yaml").method == "lora"
    assert (folder / "model" / "adapter_config.json").is_file() and not (
        folder / "model" / "model.safetensors"
    ).exists()
    assert json.loads((folder / "metrics.json").read_text()) == replaced.metrics


def test_a_second_process_on_a_folder_a_live_run_holds_stops_at_once_naming_it(
    tiny_bert: Path, ner_recipe, tmp_path: Path
) -> None:
    recipe = ner_recipe(tiny_bert, tmp_path / "run", epochs=200)
    holder = start_run(recipe, tmp_path)
    try:
        lock = tmp_path / "run" / ".lock"
        wait_for(lambda: lock.is_file() and "pid" in lock.read_text(), holder)
        started = time.monotonic()
        second = start_run(recipe, tmp_path)
        _, err = second.communicate(timeout=120)
        assert second.returncode == 2, err
        assert f"in use by a run still going (process pid {holder.pid} on" in err
        assert time.monotonic() - started < 60
        assert holder.poll() is None
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()


def test_each_run_in_a_process_reports_its_own_peak_memory(tiny_bert: Path, ner_recipe, tmp_path: Path) -> None:
    ballast = bytearray(1024 * 2**20)
    ballast[::4096] = b"x" * len(ballast[::4096])  # touch every page: 1 GB resident
    del ballast
    lifetime_peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**10
    metrics = nlptasks.run(ner_recipe(tiny_bert, tmp_path / "run", epochs=1)).metrics
    assert metrics["train"]["peak_rss_megabytes"] < lifetime_peak - 700


def test_a_file_evaluates_through_the_runs_own_data_settings_and_takes_data_overrides(
    tiny_bert: Path, ner_recipe, ner_files, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    recipe = ner_recipe(tiny_bert, tmp_path / "run", epochs=1)
    recipe["data"]["bad_rows"] = "skip"
    run_dir = nlptasks.run(recipe).run_dir
    stored = json.loads((run_dir / "metrics.json").read_text())["test"]

    with_bad_row = tmp_path / "mine.jsonl"
    rows = ner_files["test"].read_text().splitlines()
    with_bad_row.write_text("\n".join([*rows, json.dumps({"tokens": ["Mars"], "ner_tags": ["B-LOC", "O"]})]) + "\n")
    assert nlptasks.evaluate(run_dir, file=with_bad_row)["f1"] == pytest.approx(stored["f1"])  # skipped, as in training

    renamed = tmp_path / "renamed.jsonl"
    renamed.write_text(
        "".join(json.dumps({"words": r["tokens"], "tags": r["ner_tags"]}) + "\n" for r in map(json.loads, rows))
    )
    command = ["eval", str(run_dir), "--file", str(renamed), "--set", "data.columns={words: tokens, tags: ner_tags}"]
    capsys.readouterr()  # drop the training log
    assert main(command) == 0
    assert json.loads(capsys.readouterr().out)["f1"] == pytest.approx(stored["f1"])
    assert main(["eval", str(run_dir), "--set", "train.epochs=9"]) == 2
    assert "eval and predict take data.* and generation.* settings" in capsys.readouterr().err


@pytest.mark.slow(seconds=60)
def test_two_shipped_recipes_run_side_by_side_into_two_intact_run_directories(
    data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    """The sequence a new user types: full fine-tuning, then LoRA, then `compare` over both recipes."""
    monkeypatch.chdir(tmp_path)
    quick = ["train.max_steps=5", "data.max_train_samples=64", "data.max_eval_samples=16", "train.eval_strategy=no"]
    flags = [part for setting in quick for part in ("--set", setting)]
    assert main(["run", "ner/minilm", *flags]) == 0
    assert main(["run", "ner/minilm-lora", *flags]) == 0
    assert main(["compare", "ner/minilm", "ner/minilm-lora", *flags, "--output", "report"]) == 0
    capsys.readouterr()
    for name, method in (("ner-minilm", "full"), ("ner-minilm-lora", "lora")):
        folder = tmp_path / "runs" / name
        assert load_recipe(folder / "recipe.yaml").method == method
        assert (folder / "model" / "adapter_config.json").is_file() == (method == "lora")
        metrics = json.loads((folder / "metrics.json").read_text())
        assert metrics["test"]["f1"] == pytest.approx(nlptasks.evaluate(folder, "test")["f1"], abs=1e-6)
    assert "| ner-minilm-lora |" in (tmp_path / "report" / "report.md").read_text()

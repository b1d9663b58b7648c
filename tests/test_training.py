"""The training core end to end on tiny random models: run directory, reproducibility, resume."""

from __future__ import annotations

import csv
import errno
import json
import os
import signal
import subprocess
import sys
import time
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import safetensors.torch
import torch
import yaml
from transformers import TrainingArguments

import nlptasks
from nlptasks.cli import main
from nlptasks.errors import DataError, TrainingDiverged
from nlptasks.rundir import RunDir, publish_folder
from nlptasks.training import settings
from nlptasks.training.callbacks import TrimFreedMemory
from nlptasks.training.trainer import TaskTrainer

CONTRACT_FILES = (
    "recipe.yaml",
    "metrics.json",
    "summary.md",
    "predictions/validation.jsonl",
    "predictions/test.jsonl",
    "model/config.json",
    "model/model.safetensors",
    "logs/metrics.csv",
)


def test_a_run_writes_the_contracted_run_directory(tiny_bert: Path, ner_recipe, tmp_path: Path) -> None:
    result = nlptasks.run(ner_recipe(tiny_bert, tmp_path / "run"))
    for name in CONTRACT_FILES:
        assert (result.run_dir / name).is_file(), name
    metrics = json.loads((result.run_dir / "metrics.json").read_text())
    assert set(metrics) == {"train", "validation", "test"}
    assert {"f1", "precision", "recall", "f1_PER", "f1_LOC"} <= set(metrics["test"])
    resolved = yaml.safe_load((result.run_dir / "recipe.yaml").read_text())
    assert resolved["train"]["epochs"] == 2 and resolved["model"] == str(tiny_bert)
    assert not list(result.run_dir.glob("model/*.bin")), "only safetensors weights in model/"


def test_the_same_seed_reproduces_the_metrics(tiny_bert: Path, ner_recipe, tmp_path: Path) -> None:
    first = nlptasks.run(ner_recipe(tiny_bert, tmp_path / "a")).metrics
    second = nlptasks.run(ner_recipe(tiny_bert, tmp_path / "b")).metrics
    for split in ("validation", "test"):
        assert first[split]["f1"] == second[split]["f1"]
        assert first[split]["precision"] == second[split]["precision"]


def test_clipping_off_still_logs_the_gradient_norm(tiny_bert: Path, ner_recipe, tmp_path: Path) -> None:
    """`max_grad_norm: 0` trains without clipping (the notebooks show what clipping does); negative is refused."""
    run = nlptasks.run(ner_recipe(tiny_bert, tmp_path / "run", max_grad_norm=0))
    rows = [row.split(",") for row in (run.run_dir / "logs" / "metrics.csv").read_text().splitlines()]
    assert [float(row[3]) for row in rows if row[2] == "grad_norm"] and run.recipe.train.max_grad_norm == 0
    with pytest.raises(nlptasks.RecipeError, match="max_grad_norm"):
        nlptasks.load_recipe(ner_recipe(tiny_bert, tmp_path / "bad", max_grad_norm=-1))


def test_gradient_accumulation_takes_the_step_one_larger_batch_would(
    tiny_bert: Path, ner_recipe, tmp_path: Path
) -> None:
    """BERT's token head takes `**kwargs` but averages each batch alone: its loss must still be divided
    by the accumulation steps, or the gradient comes out that many times too large."""
    norms = []
    for batch_size, steps in ((8, 1), (4, 2)):
        recipe = ner_recipe(
            tiny_bert,
            tmp_path / f"{batch_size}x{steps}",
            batch_size=batch_size,
            gradient_accumulation_steps=steps,
            max_steps=1,
            max_grad_norm=0,
            logging_steps=1,
            group_by_length=False,
        )
        recipe["data"]["max_train_samples"] = 8
        run = nlptasks.run(recipe | {"eval": {"splits": []}})
        rows = [row.split(",") for row in (run.run_dir / "logs" / "metrics.csv").read_text().splitlines()]
        norms += [float(row[3]) for row in rows if row[2] == "grad_norm"]
    whole, accumulated = norms
    assert 0.8 < accumulated / whole < 1.25, norms


@pytest.mark.parametrize("lora", [False, True], ids=["full", "lora"])
def test_a_decoder_loss_projected_at_the_learnt_positions_only_is_the_stock_loss(
    tiny_llama: Path, lora: bool, tmp_path: Path
) -> None:
    """The prompt's positions get no logits, yet loss and gradient are those of the stock full-vocabulary loss,
    with and without `num_items_in_batch`, and through a LoRA wrapper."""
    import peft
    from transformers import LlamaForCausalLM

    model = LlamaForCausalLM.from_pretrained(tiny_llama)
    if lora:
        model = peft.get_peft_model(model, peft.LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    trainer = TaskTrainer(model=model, args=TrainingArguments(output_dir=str(tmp_path), report_to=[], use_cpu=True))
    torch.manual_seed(0)
    ids = torch.randint(0, 300, (3, 12))
    labels = ids.clone()
    labels[:, :7] = -100  # the prompts
    labels[1, 10:] = -100  # right padding
    attention = torch.ones_like(ids)
    attention[1, 10:] = 0
    batch = {"input_ids": ids, "attention_mask": attention, "labels": labels}
    weight = next(w for w in model.parameters() if w.requires_grad)

    def loss_and_gradient(compute: Any, items: torch.Tensor | None) -> tuple[float, torch.Tensor]:
        model.zero_grad()
        loss = compute(items)
        loss.backward()
        return loss.item(), weight.grad.clone()

    def stock_loss(items: torch.Tensor | None) -> torch.Tensor:
        return model(**batch, **({} if items is None else {"num_items_in_batch": items})).loss

    for items in (None, torch.tensor(6)):
        stock = loss_and_gradient(stock_loss, items)
        kept = loss_and_gradient(lambda n: trainer.compute_loss(model, dict(batch), num_items_in_batch=n), items)
        assert kept[0] == pytest.approx(stock[0], rel=1e-5)
        torch.testing.assert_close(kept[1], stock[1])
    _, outputs = trainer.compute_loss(model, dict(batch), return_outputs=True)
    assert trainer.logits_at_labels and outputs.logits.shape[0] == int((labels[:, 1:] != -100).sum())


def test_an_encoder_decoder_keeps_its_stock_loss(tmp_path: Path) -> None:
    """T5's loss does not shift its labels: asking it for logits at shifted positions would misalign them."""
    from transformers import T5Config, T5ForConditionalGeneration

    config = T5Config(vocab_size=64, d_model=16, d_kv=8, d_ff=32, num_layers=1, num_heads=2, decoder_start_token_id=0)
    model = T5ForConditionalGeneration(config).eval()
    trainer = TaskTrainer(model=model, args=TrainingArguments(output_dir=str(tmp_path), report_to=[], use_cpu=True))
    batch = {"input_ids": torch.randint(1, 64, (2, 6)), "labels": torch.randint(1, 64, (2, 4))}
    assert trainer.compute_loss(model, dict(batch)).item() == pytest.approx(model(**batch).loss.item(), rel=1e-5)
    assert trainer.logits_at_labels is False


OPTIMIZER_STATE = {
    "adamw": ({"fused": True}, 5e-5),
    "sgd": ({"momentum": 0}, 0.5),
    "adafactor": ({"relative_step": False, "scale_parameter": True}, 1e-2),
}


@pytest.mark.parametrize("optimizer", sorted(OPTIMIZER_STATE))
def test_the_optimizer_is_a_setting(optimizer: str, tiny_bert: Path, ner_recipe, tmp_path: Path) -> None:
    """AdamW in one fused kernel; SGD for the classic RNN lessons; Adafactor's RMS-scaled steps for T5 from scratch."""
    state, rate = OPTIMIZER_STATE[optimizer]
    run = nlptasks.run(ner_recipe(tiny_bert, tmp_path / "run", optimizer=optimizer, epochs=1, learning_rate=rate))
    [checkpoint] = (run.run_dir / "checkpoints").glob("checkpoint-*")
    groups = torch.load(checkpoint / "optimizer.pt", weights_only=True)["param_groups"]
    assert all(group.items() >= state.items() for group in groups), groups


def test_warmup_stable_decay_holds_the_rate_then_decays_it(tiny_bert: Path, ner_recipe, tmp_path: Path) -> None:
    """T5's recipe holds Adafactor's rate and anneals it over the last `decay_ratio` of the steps."""
    settings = {"optimizer": "adafactor", "learning_rate": 1e-2, "lr_scheduler": "warmup_stable_decay"}
    run = nlptasks.run(ner_recipe(tiny_bert, tmp_path / "run", epochs=4, decay_ratio=0.5, logging_steps=1, **settings))
    rows = [row.split(",") for row in (run.run_dir / "logs" / "metrics.csv").read_text().splitlines()[1:]]
    rates = [float(value) for _, _, name, value in rows if name == "learning_rate"]
    half = len(rates) // 2
    assert rates[:half] == [1e-2] * half and rates[half:] == sorted(rates[half:], reverse=True), rates
    assert rates[-1] < 1e-3, rates


@pytest.mark.parametrize("method", ["full", "lora", "qlora"])
def test_a_killed_run_resumes_to_the_same_final_metrics(
    tiny_bert: Path, ner_recipe, tmp_path: Path, method: str
) -> None:
    """An adapter run too: its checkpoints hold only adapters and heads (transformers#28531, qlora#50)."""
    settings = {"epochs": 12, "eval_strategy": "steps", "eval_steps": 8, "save_total_limit": 3}
    recipe = lambda folder: {**ner_recipe(tiny_bert, tmp_path / folder, **settings), "method": method}  # noqa: E731
    reference = nlptasks.run(recipe("reference")).metrics

    recipe_file = tmp_path / "killed.yaml"
    recipe_file.write_text(yaml.safe_dump(recipe("killed")))
    command = [sys.executable, "-m", "nlptasks", "run", str(recipe_file)]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=os.environ.copy())
    first_checkpoint = tmp_path / "killed" / "checkpoints" / "checkpoint-16" / "trainer_state.json"
    deadline = time.monotonic() + 240
    while not first_checkpoint.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert not (tmp_path / "killed" / "metrics.json").exists(), "the run finished before it could be killed"

    assert subprocess.run(command, capture_output=True, env=os.environ.copy()).returncode == 0
    resumed = json.loads((tmp_path / "killed" / "metrics.json").read_text())
    assert "resuming from" in (tmp_path / "killed" / "logs" / "train.log").read_text()
    for split in ("validation", "test"):
        assert resumed[split]["f1"] == pytest.approx(reference[split]["f1"], abs=1e-9)
    if method != "full":
        checkpoint = max((tmp_path / "killed" / "checkpoints").glob("checkpoint-*"), key=lambda c: int(c.name[11:]))
        assert not (checkpoint / "model.safetensors").exists() and (checkpoint / "adapter_model.safetensors").is_file()


def test_a_full_disk_during_a_save_keeps_the_previous_checkpoint_and_the_rerun_resumes_from_it(
    tiny_bert: Path, ner_recipe, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = {"epochs": 6, "eval_strategy": "steps", "eval_steps": 8, "save_total_limit": 2}
    reference = nlptasks.run(ner_recipe(tiny_bert, tmp_path / "reference", **settings)).metrics
    recipe = ner_recipe(tiny_bert, tmp_path / "full", **settings)
    saved = TaskTrainer._save_optimizer_and_scheduler

    def disk_fills_at_step_16(self: TaskTrainer, output_dir: str) -> None:
        if self.state.global_step == 16:
            (Path(output_dir) / "optimizer.pt").write_bytes(b"torn")
            raise OSError(errno.ENOSPC, "No space left on device")
        saved(self, output_dir)

    monkeypatch.setattr(TaskTrainer, "_save_optimizer_and_scheduler", disk_fills_at_step_16)
    with pytest.raises(OSError, match="No space left"):
        nlptasks.run(recipe)
    checkpoints = tmp_path / "full" / "checkpoints"
    assert (checkpoints / "checkpoint-8" / "trainer_state.json").is_file()
    assert not (checkpoints / "checkpoint-16" / "trainer_state.json").exists()
    assert not (tmp_path / "full" / "metrics.json").exists()

    monkeypatch.setattr(TaskTrainer, "_save_optimizer_and_scheduler", saved)
    resumed = nlptasks.run(recipe).metrics
    assert "resuming from" in (tmp_path / "full" / "logs" / "train.log").read_text()
    assert resumed["test"]["f1"] == pytest.approx(reference["test"]["f1"], abs=1e-9)
    logged = {run: logged_steps(tmp_path / run / "logs" / "metrics.csv") for run in ("reference", "full")}
    assert logged["full"] == logged["reference"], "rows logged after the checkpoint were kept, or rows lost"


def logged_steps(path: Path) -> list[tuple[int, str]]:
    with path.open(newline="") as handle:
        return sorted((int(row[0]), row[2]) for row in list(csv.reader(handle))[1:])


def test_a_non_finite_loss_stops_the_run_naming_the_step_and_the_batch(
    tiny_bert: Path, ner_recipe, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    compute_loss = TaskTrainer.compute_loss

    def diverges_at_step_3(self: TaskTrainer, *args: object, **kwargs: object) -> object:
        loss = compute_loss(self, *args, **kwargs)
        if self.state.global_step != 2:
            return loss
        return (loss[0] * float("nan"), *loss[1:]) if isinstance(loss, tuple) else loss * float("nan")

    monkeypatch.setattr(TaskTrainer, "compute_loss", diverges_at_step_3)
    with pytest.raises(TrainingDiverged, match=r"the loss is nan at step 3 \(epoch") as err:
        nlptasks.run(ner_recipe(tiny_bert, tmp_path / "run", epochs=4))
    dumped = json.loads((tmp_path / "run" / "logs" / "diverged-step-3.json").read_text())
    assert str(tmp_path / "run" / "logs" / "diverged-step-3.json") in str(err.value)
    assert len(dumped["batch"]["input_ids"]) == len(dumped["texts"]) == 8 and dumped["texts"][0] in str(err.value)
    assert not (tmp_path / "run" / "metrics.json").exists()


def test_bad_rows_skip_leaves_them_out_counts_them_and_logs_each(
    tiny_bert: Path, ner_recipe, ner_files, tmp_path: Path
) -> None:
    with ner_files["train"].open("a") as handle:
        handle.write(json.dumps({"tokens": ["Mars"], "ner_tags": ["B-PLANET", "O"]}) + "\n")
        handle.write(json.dumps({"tokens": ["Paris"], "ner_tags": ["LOC"]}) + "\n")
    recipe = ner_recipe(tiny_bert, tmp_path / "run", epochs=1)
    with pytest.raises(DataError, match=f"{ner_files['train']}:65: field 'ner_tags' has 2 tags"):
        nlptasks.run(recipe)
    recipe["data"]["bad_rows"] = "skip"
    result = nlptasks.run(recipe)
    assert result.metrics["train"]["skipped_rows_train"] == 2 and "skipped_rows_test" not in result.metrics["train"]
    assert (
        "bad rows skipped (`data.bad_rows: skip`, each in logs/train.log): train 2"
        in (result.run_dir / "summary.md").read_text()
    )
    assert f"{ner_files['train']}:66: field 'ner_tags'" in (result.run_dir / "logs" / "train.log").read_text()


def test_predict_and_eval_from_the_cli(
    tiny_bert: Path,
    ner_recipe,
    ner_files,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    run_dir = nlptasks.run(ner_recipe(tiny_bert, tmp_path / "run")).run_dir
    capsys.readouterr()  # drop the training log
    assert main(["predict", str(run_dir), "--text", "Angela Merkel visited Paris.", "--text", "Hi"]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [line["text"] for line in lines] == ["Angela Merkel visited Paris.", "Hi"]
    assert all("entities" in line for line in lines)

    import io

    monkeypatch.setattr(sys, "stdin", io.StringIO('{"text": "Siemens in Ohio"}\nplain line\n'))
    assert main(["predict", str(run_dir)]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 2

    assert main(["eval", str(run_dir), "--file", str(ner_files["test"])]) == 0
    scored = json.loads(capsys.readouterr().out)
    stored = json.loads((run_dir / "metrics.json").read_text())["test"]
    assert scored["f1"] == pytest.approx(stored["f1"])

    unseen = tmp_path / "unseen.jsonl"
    unseen.write_text(json.dumps({"tokens": ["Mars", "rover"], "ner_tags": ["B-PLANET", "O"]}) + "\n")
    assert main(["eval", str(run_dir), "--file", str(unseen)]) == 2
    assert f"{unseen}: labels the model was never trained on: ['B-PLANET', 'I-PLANET']" in capsys.readouterr().err

    assert main(["predict", str(tmp_path / "nowhere"), "--text", "x"]) == 2


@pytest.mark.slow(seconds=25)
def test_a_compiled_run_saves_and_predicts_like_an_eager_one(
    tiny_bert: Path, ner_recipe, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`train.compile` wraps the model the Trainer runs; what is saved and reloaded is the plain model.

    The graphs are captured as `torch.compile` captures them, but run eagerly instead of by inductor:
    the wrapping, saving and reloading are what this tests, and inductor's code generation takes a minute.
    The losses differ by the dropout masks alone: the eager run draws them as `training.cpu` does, the
    compiled one as torch does."""
    eager = nlptasks.run(ner_recipe(tiny_bert, tmp_path / "eager", epochs=1))
    monkeypatch.setattr(settings, "TrainingArguments", partial(TrainingArguments, torch_compile_backend="eager"))
    compiled = nlptasks.run(ner_recipe(tiny_bert, tmp_path / "compiled", epochs=1, compile=True))
    assert compiled.metrics["train"]["train_loss"] == pytest.approx(eager.metrics["train"]["train_loss"], rel=1e-2)
    weights = safetensors.torch.load_file(compiled.run_dir / "model" / "model.safetensors")
    assert weights.keys() == safetensors.torch.load_file(eager.run_dir / "model" / "model.safetensors").keys()
    [shown] = nlptasks.load(compiled.run_dir).predict("Angela Merkel visited Paris.")
    assert len(shown["tags"]) == 5


def test_the_decoder_family_runs_through_the_same_recipe(tiny_llama: Path, ner_recipe, tmp_path: Path) -> None:
    result = nlptasks.run(ner_recipe(tiny_llama, tmp_path / "llama", epochs=1))
    assert "f1" in result.metrics["test"]
    predictor = nlptasks.load(result.run_dir)
    [shown] = predictor.predict("Angela Merkel visited Paris.")
    assert len(shown["tags"]) == 5


def test_a_label_only_the_test_split_has_is_reported_before_training(tiny_bert: Path, ner_recipe, ner_files) -> None:
    with ner_files["test"].open("a") as handle:
        handle.write(json.dumps({"tokens": ["Mars"], "ner_tags": ["B-PLANET"]}) + "\n")
    with pytest.raises(
        nlptasks.DataError, match=r"test split has labels the train split never has: \['B-PLANET', 'I-PLANET'\]"
    ):
        nlptasks.run(ner_recipe(tiny_bert))


def test_a_model_folder_whose_swap_was_killed_between_its_renames_is_put_back(tmp_path: Path) -> None:
    (tmp_path / ".model-old").mkdir()
    (tmp_path / ".model-old" / "config.json").write_text("{}")
    assert (RunDir(tmp_path).model / "config.json").is_file()
    assert not (tmp_path / "model").exists(), "a reader moved folders on disk"

    def save_fails(folder: Path) -> None:
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        publish_folder(tmp_path / "model", save_fails)
    assert (tmp_path / "model" / "config.json").is_file()  # a failing save still leaves the previous model


def test_freed_heap_memory_is_handed_back_every_n_steps_and_evaluation_batches() -> None:
    trimmer = TrimFreedMemory(every=3)
    if sys.platform == "linux":
        assert trimmer.trim is not None  # glibc's malloc_trim, found
    calls: list[int] = []
    trimmer.trim = lambda pad: calls.append(pad) or 1
    for _ in range(4):
        trimmer.on_step_end(None, None, None)
    for _ in range(3):
        trimmer.on_prediction_step(None, None, None)
    assert calls == [0, 0]

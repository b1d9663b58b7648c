"""What keeps a run's memory bounded: the heap trimmed when it grows, evaluation gathering only what is read."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import (
    GenerationConfig,
    T5Config,
    T5ForConditionalGeneration,
    T5ForQuestionAnswering,
    TrainingArguments,
)

from nlptasks import heap
from nlptasks.training.callbacks import TrimFreedMemory
from nlptasks.training.trainer import TaskTrainer

pytestmark = pytest.mark.usefixtures("one_thread")
TINY_T5 = {
    "vocab_size": 32,
    "d_model": 16,
    "d_kv": 8,
    "d_ff": 32,
    "num_layers": 1,
    "num_heads": 2,
    "decoder_start_token_id": 0,
}


def test_a_step_that_leaves_resident_memory_grown_past_the_bound_is_trimmed_at_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    resident = [1000]
    monkeypatch.setattr(heap, "resident_bytes", lambda: resident[0])
    trimmer = TrimFreedMemory(every=10, growth=500)
    calls: list[int] = []
    trimmer.trim = lambda pad: calls.append(pad) or 1
    trimmer.on_step_end(None, None, None)
    resident[0] = 1600  # a long batch left 600 bytes of freed pages resident
    trimmer.on_step_end(None, None, None)
    assert calls == [0]
    trimmer.on_prediction_step(None, None, None)  # measured against what the trim left, not the start
    assert calls == [0]


def _trainer(model: torch.nn.Module, tmp_path: Path, **options: object) -> TaskTrainer:
    args = TrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to="none")
    return TaskTrainer(model=model, args=args, **options)


def test_evaluation_gathers_the_outputs_the_task_reads_not_an_encoder_decoders_cache(tmp_path: Path) -> None:
    model = T5ForQuestionAnswering(T5Config(**TINY_T5)).eval()
    trainer = _trainer(model, tmp_path, read_outputs=("start_logits", "end_logits"))
    batch = {"input_ids": torch.randint(2, 32, (2, 6)), "attention_mask": torch.ones(2, 6, dtype=torch.long)}
    _, outputs, _ = trainer.prediction_step(model, batch, prediction_loss_only=False)
    assert [output.shape for output in outputs] == [torch.Size([2, 6])] * 2  # no cache, no encoder states


def test_scoring_a_split_generates_without_the_teacher_forced_loss_pass(tmp_path: Path) -> None:
    model = T5ForConditionalGeneration(T5Config(**TINY_T5)).eval()
    model.generation_config = GenerationConfig(decoder_start_token_id=0, eos_token_id=1, max_new_tokens=3)
    trainer = _trainer(model, tmp_path, generates=True)
    batch = {
        "input_ids": torch.randint(2, 32, (2, 6)),
        "attention_mask": torch.ones(2, 6, dtype=torch.long),
        "labels": torch.randint(2, 32, (2, 4)),
    }
    loss, _, _ = trainer.prediction_step(model, batch, prediction_loss_only=False)
    assert loss is not None  # evaluation during training logs it
    trainer.outputs_only = True  # as `predict` sets it
    loss, generated, _ = trainer.prediction_step(model, batch, prediction_loss_only=False)
    assert loss is None and generated.shape[0] == 2

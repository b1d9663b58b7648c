"""`Predictor`: complete once built, whatever the run holds."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import nlptasks
from nlptasks.errors import UserInputError


def test_a_method_without_a_model_gives_a_complete_predictor(tmp_path: Path) -> None:
    rows = [{"document": f"A: I want a {thing}.\nB: Why?\nA: I need one.", "summary": thing} for thing in "xyz"]
    data = tmp_path / "dialogues.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for row in rows))
    recipe = {
        "task": "extractive-summarization",
        "model": "lead",
        "output_dir": str(tmp_path / "lead"),
        "data": {"train_file": str(data), "validation_file": str(data), "test_file": str(data)},
    }
    predictor = nlptasks.load(nlptasks.run(recipe).run_dir)
    assert predictor.model is None and predictor.adapters == [] and predictor.id2label == {}
    assert [s["index"] for s in predictor.predict(rows[0]["document"])[0]["sentences"]] == [0, 1, 2]
    with pytest.raises(UserInputError, match="untrained method; nothing decodes"):
        predictor.set_generation(num_beams=2)
    with pytest.raises(UserInputError, match="not an adapter run"):
        predictor.add_adapter(tmp_path / "lead")

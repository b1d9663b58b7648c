"""`nlptasks export --format onnx`: what the task contract does not cover (every encoder task exports there).

LoRA merged into an int8 graph from the CLI, and the exports that are refused with a reason.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import nlptasks
from nlptasks.cli import main
from nlptasks.engines.onnx import OnnxModel

pytestmark = pytest.mark.usefixtures("one_thread")

TEXTS = ["Angela Merkel visited Paris .", "Siemens opened a plant in Berlin", "nothing here", ""]


@pytest.fixture
def lora_ner_run(ner_recipe, tiny_bert: Path, tmp_path: Path) -> Path:
    recipe = ner_recipe(tiny_bert, tmp_path / "lora", epochs=3, learning_rate=5e-3)
    return nlptasks.run({**recipe, "method": "lora", "adapter": {"r": 4}}).run_dir


def test_a_lora_run_exports_from_the_cli_to_int8_and_tags_as_the_run_does(
    lora_ner_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    fp32, int8 = tmp_path / "fp32", tmp_path / "int8"
    assert main(["export", str(lora_ner_run), "--format", "onnx", "--output", str(fp32)]) == 0
    assert main(["export", str(lora_ner_run), "--format", "onnx", "--quantize", "int8", "--output", str(int8)]) == 0
    assert f"exported {lora_ner_run} to {int8}" in capsys.readouterr().out

    assert json.loads((int8 / "export.json").read_text())["quantize"] == "int8"
    assert (int8 / "model.onnx").stat().st_size < 0.5 * (fp32 / "model.onnx").stat().st_size
    assert nlptasks.load(fp32).recipe.method == "full" and not (fp32 / "adapter_config.json").exists()

    run, exported, quantized = (nlptasks.load(folder) for folder in (lora_ner_run, fp32, int8))
    assert isinstance(quantized.model, OnnxModel)
    exactly, scores = zip(*(_unscored(predictor.predict(TEXTS)) for predictor in (exported, run)))
    assert exactly[0] == exactly[1] and scores[0] == pytest.approx(scores[1], abs=1e-4)  # fp32 graph: same tags
    tags = [p["tags"] for p in run.predict(TEXTS)]
    agreeing = sum(a == b for p, q in zip(tags, [p["tags"] for p in quantized.predict(TEXTS)]) for a, b in zip(p, q))
    assert agreeing >= 0.9 * sum(map(len, tags))
    evaluated = nlptasks.evaluate(lora_ner_run, "test")
    assert nlptasks.evaluate(fp32, "test") == pytest.approx(evaluated, abs=1e-6)
    assert nlptasks.evaluate(int8, "test")["f1"] == pytest.approx(evaluated["f1"], abs=0.1)


def _unscored(predictions: list[dict]) -> tuple[list[dict], list[float]]:
    """Predictions without their entities' scores, and those scores: floats that another runtime rounds otherwise."""
    scores = [entity["score"] for prediction in predictions for entity in prediction["entities"]]
    bare = [
        {**p, "entities": [{k: v for k, v in e.items() if k != "score"} for e in p["entities"]]} for p in predictions
    ]
    return bare, scores


def test_exports_onnx_cannot_make_are_refused_with_the_reason(
    lora_ner_run: Path, ner_recipe, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    output = tmp_path / "out"
    assert main(["export", str(lora_ner_run), "--quantize", "int8", "--output", str(output)]) == 2
    assert "not offered for --format transformers" in capsys.readouterr().err

    onnx_export = nlptasks.export(lora_ner_run, tmp_path / "onnx", format="onnx")
    assert main(["export", str(onnx_export), "--format", "onnx", "--output", str(output)]) == 2
    assert "already an export (onnx)" in capsys.readouterr().err

    recurrent = {**ner_recipe("bilstm", tmp_path / "bilstm"), "model_args": {"hidden_size": 8, "embedding_dim": 8}}
    recurrent["train"] = {**recurrent["train"], "epochs": 1}
    run_dir = nlptasks.run(recurrent).run_dir
    assert main(["export", str(run_dir), "--format", "onnx", "--output", str(output)]) == 2
    assert "recurrent baseline" in capsys.readouterr().err and not output.exists()

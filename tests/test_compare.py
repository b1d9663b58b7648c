"""`nlptasks compare`: one report of finished runs and recipes, with costs, curves and per-type scores."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

import nlptasks
from nlptasks.cli import main

pytestmark = pytest.mark.usefixtures("one_thread")


def test_report_of_a_transformer_and_a_recurrent_baseline(
    ner_recipe, tiny_bert: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    bert = nlptasks.run(ner_recipe(tiny_bert, tmp_path / "ner-bert")).run_dir
    recipe = ner_recipe("bilstm", tmp_path / "ner-bilstm")
    recipe["model_args"] = {"hidden_size": 16, "embedding_dim": 16, "char_encoder": False}
    recipe_file = tmp_path / "bilstm.yaml"
    recipe_file.write_text(yaml.safe_dump(recipe))
    assert (
        main(["compare", str(bert), str(recipe_file), "--set", "train.epochs=1", "--output", str(tmp_path / "r")]) == 0
    )
    assert "report.md" in capsys.readouterr().out
    report = (tmp_path / "r" / "report.md").read_text()
    header, _, *rows = [line for line in report.splitlines() if line.startswith("|")][:4]
    assert "f1" in header and "samples/s" in header and "trainable params" in header and "peak RSS MB" in header
    bert_row = next(row for row in rows if row.startswith("| ner-bert "))
    f1 = json.loads((bert / "metrics.json").read_text())["test"]["f1"]
    assert f"{f1:.4f}" in bert_row and "| test |" in bert_row
    assert any(row.startswith("| ner-bilstm ") for row in rows)  # the recipe was run, then read
    assert "## Per class / entity type (F1)" in report and "| LOC |" in report
    errors = json.loads((bert / "errors_test.json").read_text())["by_type"]
    kind, count = next(iter(errors["LOC"].items()))
    assert f"| by_type.LOC.{kind} | {count} |" in report  # error kinds side by side, a column per run
    assert (tmp_path / "r" / "learning_curves.png").stat().st_size > 1000
    assert (tmp_path / "r" / "validation_curves.png").is_file()
    page = (tmp_path / "r" / "report.html").read_text()
    assert "<table>" in page and 'src="learning_curves.png"' in page


def test_compare_refuses_what_is_not_a_finished_run(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    (tmp_path / "half").mkdir()
    (tmp_path / "half" / "recipe.yaml").write_text("task: ner\nmodel: bilstm\n")
    assert main(["compare", str(tmp_path / "half"), "--output", str(tmp_path / "r")]) == 2
    assert "has no metrics.json" in capsys.readouterr().err

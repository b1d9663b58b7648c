"""`nlptasks inspect`: small files built to hold each problem, every finding counted exactly; every shipped
recipe's data read through it; unreadable data exits 2 and nothing is trained or written."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

import nlptasks
from nlptasks import catalog
from nlptasks.cli import main
from nlptasks.inspection import normalised
from nlptasks.recipe import load_recipe, shipped_recipes
from nlptasks.tasks import task_for

pytestmark = pytest.mark.usefixtures("one_thread")


def write_rows(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def recipe(task: str, model: Path | str, files: dict[str, Path], **sections: dict[str, Any]) -> dict[str, Any]:
    data = {f"{split}_file": str(path) for split, path in files.items()} | {"max_length": 16}
    return {"task": task, "model": str(model), "data": data | sections.pop("data", {}), **sections}


def write_recipe(folder: Path, settings: dict[str, Any]) -> Path:
    import yaml

    path = folder / "recipe.yaml"
    path.write_text(yaml.safe_dump(settings))
    return path


def test_classification_files_with_each_problem_are_counted_exactly(
    tiny_bert: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    long = " ".join(["word"] * 40)  # far over max_length 16: classification cuts it
    train = [
        {"text": "Great movie!", "label": "pos"},
        {"text": "great   movie", "label": "pos"},  # a normalised duplicate of the row above
        {"text": "Dull plot.", "label": "neg"},
        {"text": "Dull plot.", "label": "neg"},  # an exact duplicate
        {"text": long, "label": "pos"},
        {"text": "", "label": "neg"},  # fails the row checks: an empty text
    ]
    validation = [{"text": "Fine acting.", "label": "meh"}, {"text": "Dull plot.", "label": "neg"}]  # unseen; leak
    test = [{"text": "GREAT MOVIE.", "label": "pos"}]  # leaks into train once normalised
    files = {
        split: write_rows(tmp_path / f"{split}.jsonl", rows)
        for split, rows in (("train", train), ("validation", validation), ("test", test))
    }
    settings = recipe("classification", tiny_bert, files, data={"bad_rows": "error"})

    report = nlptasks.inspect(settings, output=tmp_path / "report")
    train_report, validation_report = report["splits"]["train"], report["splits"]["validation"]
    assert train_report["rows"] == 5 and train_report["bad_rows"]["count"] == 1
    assert (
        "train.jsonl:6" in train_report["bad_rows"]["examples"][0]
        and "'text'" in train_report["bad_rows"]["examples"][0]
    )
    assert train_report["labels"] == {"pos": 3, "neg": 2} and train_report["imbalance"] == 1.5
    assert (train_report["over_max_length"], train_report["several_windows"]) == (1, 0)
    assert train_report["length_tokens"]["max"] == 42  # 40 words and [CLS] [SEP], measured uncut
    assert validation_report["unseen_labels"] == ["meh"]
    leaks = report["leakage"]
    assert leaks["exact"]["within"]["train"]["count"] == 1 and leaks["normalised"]["within"]["train"]["count"] == 2
    assert leaks["exact"]["across"]["train-validation"] == {"count": 1, "examples": ["Dull plot."]}
    assert leaks["exact"]["across"]["train-test"]["count"] == 0
    assert leaks["normalised"]["across"]["train-test"] == {"count": 1, "examples": ["GREAT MOVIE."]}
    assert any("labels the train split never has: meh" in warning for warning in report["warnings"])
    assert {path.name for path in (tmp_path / "report").iterdir()} == {
        "report.json",
        "report.md",
        "lengths_train.png",
        "lengths_validation.png",
        "lengths_test.png",
    }
    assert not (tmp_path / "runs").exists()  # nothing trained, no run directory

    assert main(["inspect", str(write_recipe(tmp_path, settings))]) == 0
    shown = capsys.readouterr().out
    assert "## Warnings" in shown and "1 of 5 inputs exceed max_length 16 (0 read in several windows, 1 cut)" in shown


def test_ner_tags_that_are_not_iob2_and_windows_are_found(tiny_bert: Path, tmp_path: Path) -> None:
    rows = [
        {"tokens": ["Angela", "Merkel", "spoke"], "ner_tags": ["B-PER", "I-PER", "O"]},
        {"tokens": ["in", "Paris", "today"], "ner_tags": ["O", "I-LOC", "O"]},  # I- after O: not IOB2
        {"tokens": ["Bank", "of", "Paris"], "ner_tags": ["B-ORG", "I-ORG", "I-LOC"]},  # type changes mid-entity
        {"tokens": ["word"] * 30, "ner_tags": ["O"] * 30},  # two windows at max_length 16
    ]
    files = {split: write_rows(tmp_path / f"{split}.jsonl", rows) for split in ("train", "validation", "test")}
    report = nlptasks.inspect(recipe("ner", tiny_bert, files, data={"stride": 4}))
    train = report["splits"]["train"]
    assert train["labels"] == {"PER": 1, "LOC": 2, "ORG": 1}  # an I- that starts an entity counts as one
    assert train["problems"]["tags that are not IOB2"]["count"] == 2
    assert train["problems"]["tags that are not IOB2"]["examples"][0] == "row 2: O then I-LOC at word 2"
    assert (train["over_max_length"], train["several_windows"]) == (1, 1)
    assert report["leakage"]["exact"]["across"]["train-test"]["count"] == 4


def test_qa_answers_off_their_offsets_and_cut_summaries_are_reported(tiny_bert: Path, tmp_path: Path) -> None:
    context = "Ada Lovelace wrote the first program in 1843."
    rows = [
        {"question": "Who wrote it?", "context": context, "answers": {"text": ["Ada Lovelace"], "answer_start": [0]}},
        {"question": "When?", "context": context, "answers": {"text": ["1843"], "answer_start": [3]}},  # not there
    ]
    files = {split: write_rows(tmp_path / f"qa-{split}.jsonl", rows) for split in ("train", "validation", "test")}
    report = nlptasks.inspect(recipe("qa", tiny_bert, files, data={"max_length": 32, "stride": 8}))
    bad = report["splits"]["test"]["bad_rows"]
    assert bad["count"] == 1 and "'1843' is not at character 3" in bad["examples"][0]

    summaries = [{"document": "A long talk about the weather and the bank.", "summary": "They talk about many things."}]
    files = {
        split: write_rows(tmp_path / f"sum-{split}.jsonl", summaries * 3) for split in ("train", "validation", "test")
    }
    report = nlptasks.inspect(recipe("summarization", "t5-tiny", files, task_args={"max_target_length": 4}))
    assert report["splits"]["train"]["cut_targets"] == 3
    assert any("3 targets are cut by task_args.max_target_length" in warning for warning in report["warnings"])


def test_unreadable_data_exits_2_naming_file_and_line(tiny_bert: Path, tmp_path: Path, capsys) -> None:
    broken = tmp_path / "train.jsonl"
    broken.write_text('{"text": "fine", "label": "pos"}\n{"text": "no closing brace"\n')
    path = write_recipe(tmp_path, recipe("classification", tiny_bert, {"train": broken}))
    assert main(["inspect", str(path)]) == 2
    assert "train.jsonl:2" in capsys.readouterr().err


def test_normalising_ignores_case_whitespace_and_punctuation() -> None:
    assert normalised("  Great,   MOVIE!\t") == normalised("great movie") == "great movie"


SHIPPED = [name for name, _ in shipped_recipes() if not name.startswith("rag/")]


def shipped_data_configs() -> dict[tuple, str]:
    """One shipped recipe per distinct task and data setting: what `inspect` must read for all of them."""
    configs: dict[tuple, str] = {}
    for name in SHIPPED:
        loaded = load_recipe(name)
        key = (loaded.task, json.dumps(loaded.data.model_dump(mode="json"), sort_keys=True))
        configs.setdefault(key, name)
    return configs


@pytest.mark.slow
@pytest.mark.integration
@pytest.mark.parametrize("name", sorted(shipped_data_configs().values()))
def test_inspect_reads_every_shipped_recipes_data(name: str, data_dir: Path, tiny_bert: Path, tiny_llama: Path) -> None:
    """Each data setting through a tiny model of its kind (encoder, encoder-decoder, decoder), 100 rows a split."""
    loaded = load_recipe(name)
    model = str(tiny_bert)
    if task_for(loaded).generates:
        model = str(tiny_llama) if catalog.resolve_model(loaded.model).family == "decoder" else "t5-tiny"
    overrides = {"model": model, "method": "full", "data.max_train_samples": 100, "data.max_eval_samples": 100}
    report = nlptasks.inspect(name, {**overrides, "model_args": {}})
    assert all(split["rows"] > 0 for split in report["splits"].values()), report["splits"]

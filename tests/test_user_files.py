"""A user's own files: integer labels read as in training, a UTF-8 byte-order mark, blank lines in `predict`."""

from __future__ import annotations

import io
import json
import logging
import sys
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace

import datasets
import numpy as np
import pytest

import nlptasks
from nlptasks import api
from nlptasks.cli import main
from nlptasks.data import load_splits, read_rows
from nlptasks.predict import Predictor, read_texts
from nlptasks.recipe import DataConfig
from nlptasks.tasks import TASKS

pytestmark = pytest.mark.usefixtures("one_thread")

NAMES = ["LOC", "ABBR", "HUM"]
"""The training data's names file: not sorted, so a name's index differs from the model's id (ABBR, HUM, LOC)."""
QUESTIONS = [
    ("city river mountain", "LOC"),
    ("acronym abbreviation stands", "ABBR"),
    ("person writer author", "HUM"),
]
TAG_NAMES = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC"]
"""The NER names file, again in another order than the model's (O, B-LOC, I-LOC, B-PER, I-PER)."""
SENTENCES = [
    (["Angela", "Merkel", "visited", "Paris"], ["B-PER", "I-PER", "O", "B-LOC"]),
    (["John", "moved", "to", "New", "York"], ["B-PER", "O", "O", "B-LOC", "I-LOC"]),
]
TRAIN = {"batch_size": 8, "learning_rate": 3e-3, "precision": "fp32", "logging_steps": 4}


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def question_rows(names: list[str] | None, repeat: int) -> list[dict]:
    """The questions with labels as names, or as indices into `names`."""
    return [{"text": text, "label": names.index(label) if names else label} for text, label in QUESTIONS] * repeat


def sentence_rows(names: list[str] | None, repeat: int) -> list[dict]:
    return [
        {"tokens": tokens, "ner_tags": [names.index(tag) for tag in tags] if names else tags}
        for tokens, tags in SENTENCES
    ] * repeat


def run_on(folder: Path, task: str, model: Path, epochs: int, **data: object) -> Path:
    splits = {f"{split}_file": str(folder / f"{split}.jsonl") for split in ("train", "validation", "test")}
    recipe = {
        "task": task,
        "model": str(model),
        "output_dir": str(folder.parent / f"{task}-run"),
        "data": {**splits, "max_length": 32, "stride": 8, **data},
        "train": {"epochs": epochs, **TRAIN},
    }
    return nlptasks.run(recipe).run_dir


def run_on_integers(folder: Path, task: str, model: Path, rows: Callable[[int], list[dict]], names_file: str) -> Path:
    """A run trained on integer labels named by `names_file` beside its files (the SST-2/TREC layout)."""
    for split, repeat in (("train", 12 if task == "classification" else 16), ("validation", 2), ("test", 2)):
        write_jsonl(folder / f"{split}.jsonl", rows(repeat))
    names = NAMES if task == "classification" else TAG_NAMES
    (folder / names_file).write_text(json.dumps(names))
    return run_on(folder, task, model, epochs=8 if task == "classification" else 6)


@pytest.fixture(scope="module")
def question_run(tiny_bert: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("questions") / "training"
    return run_on_integers(folder, "classification", tiny_bert, lambda n: question_rows(NAMES, n), "labels.json")


@pytest.fixture(scope="module")
def tagger_run(tiny_bert: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("sentences") / "training"
    return run_on_integers(folder, "ner", tiny_bert, lambda n: sentence_rows(TAG_NAMES, n), "ner_tagss.json")


def test_integer_labels_in_a_users_file_mean_the_training_classes(question_run: Path, tmp_path: Path) -> None:
    config = json.loads((question_run / "model" / "config.json").read_text())
    assert config["data_label_names"] == NAMES and config["id2label"]["0"] == "ABBR"
    named = nlptasks.evaluate(question_run, file=write_jsonl(tmp_path / "named.jsonl", question_rows(None, 2)))
    assert named["accuracy"] == 1.0  # learnt: a label read in the model's id order would score below 1
    mine = write_jsonl(tmp_path / "mine" / "mine.jsonl", question_rows(NAMES, 2))
    predictor = nlptasks.load(question_run)
    assert predictor.label_names_for_files() == NAMES
    read = load_splits(DataConfig(test_file=mine), predictor.task, label_names=predictor.label_names_for_files())
    assert [labels[0] for labels in read["test"]["label"]] == [label for _, label in QUESTIONS] * 2
    assert nlptasks.evaluate(question_run, file=mine) == named


def test_eval_file_from_the_cli_reads_integer_labels_and_logs_the_mapping(
    question_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    mine = write_jsonl(tmp_path / "mine.jsonl", question_rows(NAMES, 2))
    capsys.readouterr()
    with caplog.at_level(logging.INFO, logger="nlptasks"):
        assert main(["eval", str(question_run), "--file", str(mine)]) == 0
    assert json.loads(capsys.readouterr().out)["accuracy"] == 1.0
    assert "integer labels read as the run's training classes: 0=LOC, 1=ABBR, 2=HUM" in caplog.text


def test_a_names_file_beside_the_users_file_wins(question_run: Path, tmp_path: Path) -> None:
    own = ["HUM", "LOC", "ABBR"]
    mine = write_jsonl(tmp_path / "mine.jsonl", question_rows(own, 2))
    (tmp_path / "labels.json").write_text(json.dumps(own))
    assert nlptasks.evaluate(question_run, file=mine)["accuracy"] == 1.0


def test_integer_tags_in_a_users_file_mean_the_training_tags(tagger_run: Path, tmp_path: Path) -> None:
    config = json.loads((tagger_run / "model" / "config.json").read_text())
    assert config["data_label_names"] == TAG_NAMES and config["id2label"]["1"] == "B-LOC"
    named = nlptasks.evaluate(tagger_run, file=write_jsonl(tmp_path / "named.jsonl", sentence_rows(None, 2)))
    assert named["f1"] > 0.5
    mine = write_jsonl(tmp_path / "mine" / "mine.jsonl", sentence_rows(TAG_NAMES, 2))
    predictor = nlptasks.load(tagger_run)
    read = load_splits(DataConfig(test_file=mine), predictor.task, label_names=predictor.label_names_for_files())
    assert read["test"]["ner_tags"] == [tags for _, tags in SENTENCES] * 2
    assert nlptasks.evaluate(tagger_run, file=mine) == named


def test_a_hub_dataset_records_what_its_class_ids_mean(monkeypatch: pytest.MonkeyPatch) -> None:
    classes = datasets.ClassLabel(names=NAMES)
    tags = datasets.Sequence(datasets.ClassLabel(names=TAG_NAMES))
    text, words = datasets.Value("string"), datasets.Sequence(datasets.Value("string"))
    hub = {
        "someone/questions": ({"text": ["city", "author"], "label": [0, 2]}, {"text": text, "label": classes}),
        "someone/sentences": (
            {"tokens": [["Paris"], ["Merkel"]], "ner_tags": [[3], [1]]},
            {"tokens": words, "ner_tags": tags},
        ),
    }

    def load_dataset(name: str, *args: object, **kwargs: object) -> datasets.DatasetDict:
        rows, features = hub[name]
        return datasets.DatasetDict({"train": datasets.Dataset.from_dict(rows, features=datasets.Features(features))})

    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    classification = TASKS["classification"](TASKS["classification"].Options(), max_length=32, stride=0)
    ner = TASKS["ner"](TASKS["ner"].Options(), max_length=32, stride=0)
    config = DataConfig(name="someone/questions", validation_fraction=0.5)
    assert load_splits(config, classification).label_names == NAMES
    config = DataConfig(name="someone/sentences", validation_fraction=0.5)
    assert load_splits(config, ner).label_names == TAG_NAMES


def _predictor(id2label: dict[int, str], recorded: list[str] | None = None) -> SimpleNamespace:
    config = SimpleNamespace(data_label_names=recorded) if recorded else SimpleNamespace()
    return SimpleNamespace(
        untrained=None, task=TASKS["classification"], model=SimpleNamespace(config=config), id2label=id2label
    )


def test_without_recorded_names_an_integer_is_the_models_class_unless_classes_are_integers() -> None:
    assert Predictor.label_names_for_files(_predictor({1: "pos", 0: "neg"})) == ["neg", "pos"]
    assert Predictor.label_names_for_files(_predictor({0: "0", 1: "1"})) is None
    assert Predictor.label_names_for_files(_predictor({0: "1", 1: "2"})) is None
    assert Predictor.label_names_for_files(_predictor({0: "a", 1: "b"}, recorded=["b", "a"])) == ["b", "a"]
    qa = SimpleNamespace(untrained=None, task=TASKS["qa"], model=None, id2label={0: "LABEL_0"})
    assert Predictor.label_names_for_files(qa) is None


BOM = "\ufeff"


@pytest.fixture(scope="module")
def csv_run(tiny_bert: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A classifier trained on CSV files saved with a byte-order mark, labels as names."""
    folder = tmp_path_factory.mktemp("spreadsheet")
    for split, repeat in (("train", 12), ("validation", 2), ("test", 2)):
        body = "".join(f"{text},{label}\n" for text, label in QUESTIONS * repeat)
        (folder / f"{split}.csv").write_text(BOM + "text,label\n" + body, encoding="utf-8")
    recipe = {
        "task": "classification",
        "model": str(tiny_bert),
        "output_dir": str(folder / "run"),
        "data": {f"{split}_file": str(folder / f"{split}.csv") for split in ("train", "validation", "test")},
        "train": {"epochs": 8, **TRAIN},
    }
    return nlptasks.run(recipe).run_dir


def test_a_csv_with_a_byte_order_mark_trains_and_evaluates(csv_run: Path, tmp_path: Path) -> None:
    metrics = json.loads((csv_run / "metrics.json").read_text())
    assert metrics["test"]["accuracy"] == 1.0
    model_order = sorted(name for _, name in QUESTIONS)  # no names file in training: the model's id order
    mine = tmp_path / "mine.csv"
    mine.write_text(BOM + "text,label\n" + "".join(f"{t},{model_order.index(n)}\n" for t, n in QUESTIONS))
    assert nlptasks.evaluate(csv_run, file=mine)["accuracy"] == 1.0


def test_a_csv_with_other_column_names_evaluates_mapped_by_set(
    csv_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    theirs = tmp_path / "theirs.csv"
    theirs.write_text("question,topic\n" + "".join(f"{t},{n}\n" for t, n in QUESTIONS))
    assert main(["eval", str(csv_run), "--file", str(theirs)]) == 2
    assert "missing field(s) ['text', 'label']; the row has ['question', 'topic']" in capsys.readouterr().err
    mapping = "data.columns={question: text, topic: label}"
    assert main(["eval", str(csv_run), "--file", str(theirs), "--set", mapping]) == 0
    assert json.loads(capsys.readouterr().out)["accuracy"] == 1.0
    assert (
        main(
            [
                "eval",
                str(csv_run),
                "--file",
                str(theirs),
                "--set",
                "data.text_column=question",
                "--set",
                "data.label_column=topic",
            ]
        )
        == 0
    )
    assert json.loads(capsys.readouterr().out)["accuracy"] == 1.0


@pytest.mark.parametrize(
    ("name", "content"),
    [
        ("rows.jsonl", '{"text": "a", "label": "x"}\n'),
        ("rows.json", '[{"text": "a", "label": "x"}]'),
        ("rows.csv", "text,label\na,x\n"),
        ("rows.tsv", "text\tlabel\na\tx\n"),
        ("rows.conll", "a B-X\n"),
    ],
)
def test_every_file_type_reads_the_same_with_a_byte_order_mark(tmp_path: Path, name: str, content: str) -> None:
    plain, marked = tmp_path / name, tmp_path / "marked" / name
    marked.parent.mkdir()
    plain.write_text(content, encoding="utf-8")
    marked.write_text(BOM + content, encoding="utf-8")
    assert [row for _, row in read_rows(marked)] == [row for _, row in read_rows(plain)]


def test_text_lines_and_a_names_file_read_the_same_with_a_byte_order_mark(tmp_path: Path) -> None:
    lines = tmp_path / "lines.txt"
    lines.write_text(BOM + "first\nsecond\n", encoding="utf-8")
    assert [row["text"] for _, row in read_rows(lines, text_lines=True)] == ["first", "second"]
    (tmp_path / "labels.json").write_text(BOM + json.dumps(NAMES), encoding="utf-8")
    rows = write_jsonl(tmp_path / "rows.jsonl", question_rows(NAMES, 1))
    task = TASKS["classification"](TASKS["classification"].Options(), max_length=32, stride=0)
    assert load_splits(DataConfig(test_file=rows), task)["test"]["label"] == [[label] for _, label in QUESTIONS]


def test_predict_input_loses_its_byte_order_mark_and_keeps_blank_lines() -> None:
    lines = io.StringIO(BOM + "first\n\n   \n" + '{"text": ""}\n' + "last\n")
    assert list(read_texts(lines, "<stdin>")) == ["first", "", "", "", "last"]
    fields = ("question", "context")
    assert list(read_texts(io.StringIO('\n{"question": "q", "context": "c"}\n'), "<stdin>", fields)) == [
        "",
        {"question": "q", "context": "c"},
    ]


def test_predict_keeps_one_output_per_input_line(
    csv_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    inputs = tmp_path / "inputs.txt"
    inputs.write_text(BOM + "city river mountain\n\n  \nperson writer author\n", encoding="utf-8")
    capsys.readouterr()
    assert main(["predict", str(csv_run), "--file", str(inputs)]) == 0
    printed = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    blank = {"text": "", "label": None, "score": None, "empty": True}
    assert [row.get("label") for row in printed] == ["LOC", None, None, "HUM"]
    assert printed[0]["text"] == "city river mountain" and printed[1] == printed[2] == blank

    monkeypatch.setattr(sys, "stdin", io.StringIO(BOM + "\nacronym abbreviation stands\n"))
    assert main(["predict", str(csv_run)]) == 0
    assert [json.loads(line).get("label") for line in capsys.readouterr().out.splitlines()] == [None, "ABBR"]

    predictor = nlptasks.load(csv_run, chunk_size=2)  # a chunk of blanks alone, and blanks across chunks
    shown = predictor.predict(["", " ", "person writer author", "", "city river mountain"])
    assert [row.get("label") for row in shown] == [None, None, "HUM", None, "LOC"]
    assert predictor.predict("") == [blank]


def test_a_blank_line_is_an_empty_ner_answer(tagger_run: Path) -> None:
    shown = nlptasks.load(tagger_run).predict(["Angela Merkel visited Paris", "", "John moved"])
    assert shown[1] == {"text": "", "entities": [], "tags": [], "empty": True}
    assert len(shown[0]["tags"]) == 4 and len(shown[2]["tags"]) == 2


def test_embed_writes_a_zero_row_for_a_blank_line(tiny_bert: Path, tmp_path: Path) -> None:
    sentences = tmp_path / "sentences.txt"
    sentences.write_text("\n".join(text for text, _ in QUESTIONS * 4) + "\n")
    (a, _), (b, _), (c, _) = QUESTIONS
    pairs = write_jsonl(
        tmp_path / "pairs.jsonl", [{"text": a, "text_pair": b, "score": 1.0}, {"text": a, "text_pair": c, "score": 2.0}]
    )
    recipe = {
        "task": "sentence-embedding",
        "model": str(tiny_bert),
        "output_dir": str(tmp_path / "run"),
        "task_args": {"pooling": "mean"},
        "data": {"train_file": str(sentences), "validation_file": str(pairs), "txt_format": "lines", "max_length": 32},
        "train": {"epochs": 1, **TRAIN},
        "eval": {"splits": ["validation"]},
    }
    run_dir = nlptasks.run(recipe).run_dir
    texts = tmp_path / "texts.txt"
    texts.write_text(BOM + "city river mountain\n\nperson writer author\n", encoding="utf-8")
    assert api.embed(run_dir, texts, tmp_path / "e.npy") == 3
    matrix = np.load(tmp_path / "e.npy")
    assert matrix.shape == (3, 32)
    assert np.allclose(np.linalg.norm(matrix, axis=1), [1.0, 0.0, 1.0], atol=1e-5)
    expected = nlptasks.load(run_dir).predict(["city river mountain", "person writer author"])
    assert np.allclose(matrix[[0, 2]], [row["embedding"] for row in expected], atol=1e-6)

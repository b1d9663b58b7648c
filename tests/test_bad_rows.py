"""Generated bad rows and files thrown at every loader: each either loads or fails naming file, line and field.

The property, for every task: a data file holding one good row and then a generated one either
yields rows the task's Arrow schema accepts, or raises `DataError` whose message starts with that
file and the generated row's line. Any other exception (a KeyError deep in a loader, an Arrow cast
error mid-`from_generator`) is the bug these tests exist to find.
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nlptasks.data import _checked_rows, load_splits, read_rows
from nlptasks.errors import DataError, UserInputError
from nlptasks.predict import read_texts
from nlptasks.recipe import DataConfig
from nlptasks.tasks import TASKS

GOOD_ROWS: dict[str, dict[str, Any]] = {
    "ner": {"tokens": ["EU", "rejects", "German", "call"], "ner_tags": ["B-ORG", "O", "B-MISC", "O"]},
    "classification": {"text": "a gorgeous, witty film", "label": "positive"},
    "extractive-summarization": {"document": "#P1#: Hi.\n#P2#: Hello there.", "summary": "They greet."},
    "qa": {
        "id": "q1",
        "question": "Who met Bob?",
        "context": "Ann met Bob in Paris.",
        "answers": {"text": ["Ann"], "answer_start": [0]},
    },
    "summarization": {"document": "#P1#: Hi.\n#P2#: Hello there.", "summary": "They greet.", "references": None},
    "translation": {"translation": {"en": "A dog runs.", "de": "Ein Hund rennt."}},
    "sentence-embedding": {"sentence1": "A man plays.", "sentence2": "A man is playing.", "score": 4.2},
    "rag-answer": {"question": "Who met Bob?", "passages": ["Ann met Bob.", "Paris."], "answer": "Ann [1]"},
}
EXTRA_FIELDS = ["text_pair", "id", "title", "references", "text_negative", "label", "en", "de"]

json_scalars = st.none() | st.booleans() | st.integers(-(2**40), 2**40) | st.floats() | st.text(max_size=12)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)


@st.composite
def mutated_rows(draw: st.DrawFn, task_name: str) -> dict[str, Any]:
    """The task's good row with fields dropped, replaced (at any depth) or added."""
    row = json.loads(json.dumps(GOOD_ROWS[task_name]))
    for field in draw(st.lists(st.sampled_from(sorted(row) + EXTRA_FIELDS), min_size=1, max_size=3)):
        action = draw(st.sampled_from(["drop", "replace", "replace inside"]))
        if action == "drop":
            row.pop(field, None)
        elif action == "replace" or not isinstance(row.get(field), dict | list) or not row[field]:
            row[field] = draw(json_values)
        else:
            inner = row[field]
            key = draw(st.sampled_from(sorted(inner) if isinstance(inner, dict) else range(len(inner))))
            inner[key] = draw(json_values)
    return row


def loads_or_names_the_line(task_name: str, path: Path, label_names: tuple[str, ...] | None) -> None:
    task = TASKS[task_name]
    try:
        rows = list(_checked_rows(str(path), task_name, label_names, (), (0, 0), False))
    except DataError as err:
        assert str(err).startswith(f"{path}:2: "), str(err)
        return
    for row in rows:
        task.features().encode_example(row)  # what `from_generator` does with each row


@pytest.mark.parametrize("task_name", sorted(GOOD_ROWS))
def test_every_task_has_a_good_row_that_loads(task_name: str, tmp_path: Path) -> None:
    assert sorted(GOOD_ROWS) == sorted(TASKS)
    path = tmp_path / "train.jsonl"
    path.write_text(json.dumps(GOOD_ROWS[task_name]) + "\n")
    assert len(list(_checked_rows(str(path), task_name, None, (), (0, 0), False))) == 1


@pytest.mark.parametrize("task_name", sorted(GOOD_ROWS))
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_a_generated_row_loads_or_is_reported_with_file_line_and_field(
    task_name: str, tmp_path: Path, data: st.DataObject
) -> None:
    row = data.draw(mutated_rows(task_name))
    label_names = data.draw(st.none() | st.just(("B-ORG", "O", "B-MISC", "I-ORG")))
    path = tmp_path / "train.jsonl"
    path.write_text(json.dumps(GOOD_ROWS[task_name]) + "\n" + json.dumps(row) + "\n")
    loads_or_names_the_line(task_name, path, label_names)


READERS = [".jsonl", ".json", ".csv", ".tsv", ".conll", ".txt"]


@pytest.mark.parametrize("suffix", READERS)
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(content=st.binary(max_size=200) | st.text(max_size=200).map(str.encode))
def test_any_file_content_reads_or_is_reported_with_the_file(suffix: str, tmp_path: Path, content: bytes) -> None:
    path = tmp_path / f"train{suffix}"
    path.write_bytes(content)
    try:
        rows = list(read_rows(path))
    except DataError as err:
        assert str(err).startswith(str(path)), str(err)
        return
    assert all(isinstance(where, str) and where.startswith(str(path)) and isinstance(row, dict) for where, row in rows)


@pytest.mark.parametrize(
    ("task_name", "field", "value"),
    [
        ("classification", "label", 1.5),
        ("classification", "label", {"name": "positive"}),
        ("classification", "label", [["positive"]]),
        ("sentence-embedding", "score", float("inf")),
        ("ner", "tokens", ["EU", "rejects", "German", " "]),
    ],
)
def test_values_the_schema_would_store_but_mean_nothing_are_refused(
    task_name: str, field: str, value: Any, tmp_path: Path
) -> None:
    path = tmp_path / "train.jsonl"
    path.write_text(json.dumps(GOOD_ROWS[task_name]) + "\n" + json.dumps({**GOOD_ROWS[task_name], field: value}) + "\n")
    with pytest.raises(DataError, match=f"^{path}:2: field '{field}'"):
        list(_checked_rows(str(path), task_name, None, (), (0, 0), False))


def test_predict_input_that_is_not_utf8_is_reported_with_its_source() -> None:
    lines = io.TextIOWrapper(io.BytesIO(b"fine text\n" + "caf\u00e9\n".encode("latin-1")), encoding="utf-8")
    with pytest.raises(UserInputError, match=r"^<stdin>: not UTF-8 text after line \d"):
        list(read_texts(lines, "<stdin>"))


def test_a_broken_label_names_file_beside_the_data_is_reported(tmp_path: Path) -> None:
    path = tmp_path / "train.jsonl"
    path.write_text(json.dumps({"text": "a fine film", "label": 0}) + "\n")
    classification = TASKS["classification"](TASKS["classification"].Options(), max_length=32, stride=8)
    (tmp_path / "labels.json").write_text('["negative", "positive"')
    with pytest.raises(DataError, match=r"labels.json: invalid JSON"):
        load_splits(DataConfig(train_file=path), classification)
    (tmp_path / "labels.json").write_text('["negative", 3]')
    with pytest.raises(DataError, match=r"labels.json: expected a JSON array of label names"):
        load_splits(DataConfig(train_file=path), classification)


def test_a_one_row_train_split_without_validation_is_reported(tmp_path: Path) -> None:
    path = tmp_path / "train.jsonl"
    path.write_text(json.dumps(GOOD_ROWS["ner"]) + "\n")
    with pytest.raises(DataError, match="the train split has one row"):
        load_splits(DataConfig(train_file=path), TASKS["ner"](TASKS["ner"].Options(), max_length=32, stride=8))

"""Data loading: every format reads; every bad row is reported with file, line and field."""

from __future__ import annotations

import json
from pathlib import Path

import datasets
import pytest
import torch

from nlptasks.data import load_splits, pad_batch, read_rows
from nlptasks.errors import DataError
from nlptasks.recipe import DataConfig
from nlptasks.tasks import NER, Classification
from nlptasks.tasks.base import lengths_of, sorted_by_length
from nlptasks.tasks.ner import NEROptions


def ner_task() -> NER:
    return NER(NEROptions(), max_length=32, stride=8)


def jsonl(path: Path, rows: list[object]) -> Path:
    path.write_text("".join((row if isinstance(row, str) else json.dumps(row)) + "\n" for row in rows))
    return path


def test_conll_columns_with_stray_blank_lines_and_docstart(tmp_path: Path) -> None:
    path = tmp_path / "train.conll"
    path.write_text("-DOCSTART- -X- O O\n\n\nEU NNP B-NP B-ORG\nrejects VBZ B-VP O\n\n\n\nPeter NNP B-NP B-PER\n")
    rows = [row for _, row in read_rows(path)]
    assert rows == [
        {"tokens": ["EU", "rejects"], "ner_tags": ["B-ORG", "O"]},
        {"tokens": ["Peter"], "ner_tags": ["B-PER"]},
    ]


def test_local_files_load_with_validation_carved_from_train(tmp_path: Path) -> None:
    train = jsonl(tmp_path / "train.jsonl", [{"tokens": ["a", "b"], "ner_tags": ["O", "B-X"]}] * 20)
    splits = load_splits(DataConfig(train_file=train, validation_fraction=0.25), ner_task())
    assert (len(splits["train"]), len(splits["validation"])) == (15, 5)


def test_csv_with_renamed_columns_and_integer_labels_with_names(tmp_path: Path) -> None:
    (tmp_path / "ratings.json").write_text('["bad", "good"]')
    path = tmp_path / "test.csv"
    path.write_text("review,rating\nGreat film,1\nDull,0\n")
    task = Classification(Classification.Options(), max_length=32, stride=0)
    splits = load_splits(DataConfig(test_file=path, text_column="review", label_column="rating"), task)
    assert splits["test"]["label"] == [["good"], ["bad"]] and splits["test"]["text"] == ["Great film", "Dull"]


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ('{"tokens": ["a", "b"], "ner_tags": ["O"]}', "field 'ner_tags' has 1 tags but 'tokens' has 2"),
        ('{"tokens": ["a"], "ner_tags": ["X-PER"]}', "tag 'X-PER' at position 0 is not IOB2"),
        ('{"tokens": ["a"]}', "missing field(s) ['ner_tags']"),
        ('{"tokens": [], "ner_tags": []}', "field 'tokens' must be a non-empty list"),
        ('{"tokens": ["a"], "ner_tags": [3]}', "integer tag 3 at position 0 has no name"),
        ('{"tokens": ["a"], "ner_tags": ["O"]', "invalid JSON"),
        ('["a", "b"]', "expected a JSON object"),
    ],
)
def test_bad_ner_rows_name_file_line_and_field(tmp_path: Path, line: str, expected: str) -> None:
    path = jsonl(tmp_path / "train.jsonl", ['{"tokens": ["ok"], "ner_tags": ["O"]}', line])
    with pytest.raises(DataError) as err:
        load_splits(DataConfig(train_file=path), ner_task())
    assert f"{path}:2" in str(err.value) and expected in str(err.value)


def test_non_utf8_and_unknown_suffix_and_empty_file(tmp_path: Path) -> None:
    latin = tmp_path / "train.jsonl"
    latin.write_bytes('{"tokens": ["café"], "ner_tags": ["O"]}\n'.encode("latin-1"))
    with pytest.raises(DataError, match="not UTF-8"):
        load_splits(DataConfig(train_file=latin), ner_task())
    odd = tmp_path / "train.parquetx"
    odd.write_text("x")
    with pytest.raises(DataError, match="unknown file type"):
        load_splits(DataConfig(train_file=odd), ner_task())
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n\n")
    with pytest.raises(DataError, match="no rows"):
        load_splits(DataConfig(train_file=empty), ner_task())


def test_a_changed_file_is_read_again_not_served_from_cache(tmp_path: Path) -> None:
    path = jsonl(tmp_path / "test.jsonl", [{"tokens": ["a"], "ner_tags": ["O"]}])
    assert load_splits(DataConfig(test_file=path), ner_task())["test"]["tokens"] == [["a"]]
    jsonl(path, [{"tokens": ["b", "c"], "ner_tags": ["O", "O"]}])
    assert load_splits(DataConfig(test_file=path), ner_task())["test"]["tokens"] == [["b", "c"]]


def test_pad_batch_pads_each_field_with_its_value_to_a_multiple() -> None:
    rows = [
        {"input_ids": [5, 6, 7], "labels": [1, -100, 2], "char_ids": [[1, 2], [3]], "example_index": 0},
        {"input_ids": [5], "labels": [1], "char_ids": [[4, 5, 6]], "example_index": 1},
    ]
    if not torch.cuda.is_available():  # a CPU pads to the longest only: rounding up is wasted compute there
        assert pad_batch(rows, pad_values={"input_ids": 0})["input_ids"].shape == (2, 3)
    batch = pad_batch(rows, pad_values={"input_ids": 0, "labels": -100}, multiple_of=8)
    assert batch["input_ids"].shape == (2, 8) and batch["input_ids"][1].tolist() == [5] + [0] * 7
    assert batch["labels"][1].tolist() == [1] + [-100] * 7
    assert batch["char_ids"].shape == (2, 8, 3) and batch["char_ids"][0, 1].tolist() == [3, 0, 0]
    assert torch.equal(batch["example_index"], torch.tensor([0, 1]))


def test_lengths_and_length_order_follow_a_selection_of_the_rows() -> None:
    features = datasets.Dataset.from_dict({"input_ids": [[1, 2, 3], [4], [5, 6], []]}).select([2, 0, 1, 3])
    assert lengths_of(features) == [2, 3, 1, 0]
    assert sorted_by_length(features)["input_ids"] == [[], [4], [5, 6], [1, 2, 3]]

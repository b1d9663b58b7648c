"""NER: subword alignment, windows over long inputs, decoding, and seqeval scoring by hand."""

from __future__ import annotations

from pathlib import Path

import datasets
import numpy as np
import pytest
from transformers import AutoTokenizer

from nlptasks.tasks.ner import NER, NEROptions, _entities, _repair_iob

LABELS = ["O", "B-LOC", "I-LOC", "B-PER", "I-PER"]
LABEL2ID = {label: i for i, label in enumerate(LABELS)}


@pytest.fixture(scope="module")
def tokenizer(minilm_dir: Path):
    return AutoTokenizer.from_pretrained(minilm_dir)


def examples(tokens: list[str], tags: list[str]) -> datasets.Dataset:
    return datasets.Dataset.from_dict({"tokens": [tokens], "ner_tags": [tags]})


def subword_words(tokenizer, words: list[str]) -> list[int | None]:
    return tokenizer(words, is_split_into_words=True).word_ids()


def test_first_subword_gets_the_label_and_continuations_are_ignored(tokenizer) -> None:
    task = NER(NEROptions(), max_length=32, stride=4)
    words = ["Schwarzenegger", "lives", "here"]
    features = task.featurize(examples(words, ["B-PER", "O", "O"]), tokenizer, LABEL2ID)
    labels, owners = features[0]["labels"], subword_words(tokenizer, words)
    pieces = [label for label, owner in zip(labels, owners) if owner == 0]
    assert len(pieces) > 1 and pieces[0] == LABEL2ID["B-PER"] and set(pieces[1:]) == {-100}
    assert labels[0] == -100 and labels[-1] == -100  # [CLS] and [SEP]
    assert features[0]["word_ids"][: len(pieces) + 2] == [-1, 0] + [-1] * (len(pieces) - 1) + [1]


def test_label_all_subwords_turns_b_into_i_on_continuations(tokenizer) -> None:
    task = NER(NEROptions(label_all_subwords=True), max_length=32, stride=4)
    words = ["Schwarzenegger", "lives"]
    features = task.featurize(examples(words, ["B-PER", "O"]), tokenizer, LABEL2ID)
    pieces = [label for label, owner in zip(features[0]["labels"], subword_words(tokenizer, words)) if owner == 0]
    assert pieces[0] == LABEL2ID["B-PER"] and set(pieces[1:]) == {LABEL2ID["I-PER"]}


def test_a_window_starting_inside_a_word_does_not_label_that_piece(tokenizer) -> None:
    words = ["Schwarzenegger", "visited", "U.S.", "and", "Paris"] * 4
    tags = ["B-PER", "O", "B-LOC", "O", "B-LOC"] * 4
    task = NER(NEROptions(), max_length=12, stride=3)
    features = task.featurize(examples(words, tags), tokenizer, LABEL2ID)
    for row in range(len(features)):
        encoded = tokenizer(
            words,
            is_split_into_words=True,
            truncation=True,
            max_length=12,
            stride=3,
            return_overflowing_tokens=True,
            return_offsets_mapping=True,
        )
        for position, word in enumerate(features[row]["word_ids"]):
            if word >= 0:
                assert encoded["offset_mapping"][row][position][0] == 0, (row, position)
    starts_inside = [row for row in range(len(features)) if features[row]["word_ids"][1] == -1]
    assert starts_inside, "the test needs a window that begins inside a word"


def test_long_inputs_become_overlapping_windows_and_no_word_is_dropped(tokenizer) -> None:
    words = [f"word{i}" for i in range(60)]
    tags = ["B-LOC" if i % 7 == 0 else "O" for i in range(60)]
    task = NER(NEROptions(), max_length=24, stride=6)
    data = examples(words, tags)
    features = task.featurize(data, tokenizer, LABEL2ID)
    assert len(features) > 3 and set(features["example_index"]) == {0}
    covered = {w for ids in features["word_ids"] for w in ids if w >= 0}
    assert covered == set(range(60))
    # Perfect logits at every labelled position decode back to the gold tags, across windows.
    logits = np.full((len(features), 24, len(LABELS)), -5.0)
    for row, ids in enumerate(features["word_ids"]):
        for position, word in enumerate(ids):
            if word >= 0:
                logits[row, position, LABEL2ID[tags[word]]] = 5.0
    assert task.decode(data, features, logits, dict(enumerate(LABELS))) == [tags]


def test_seqeval_scores_match_a_hand_computation() -> None:
    task = NER(NEROptions(), max_length=32, stride=4)
    gold = examples(["a"] * 6, ["B-PER", "I-PER", "O", "B-LOC", "O", "B-LOC"])
    # Predicted: the PER span right, the first LOC right, the second LOC missed, one spurious PER.
    predicted = [["B-PER", "I-PER", "B-PER", "B-LOC", "O", "O"]]
    metrics = task.score(gold, predicted)
    # 2 correct of 3 predicted, 2 correct of 3 gold.
    assert metrics["precision"] == pytest.approx(2 / 3) and metrics["recall"] == pytest.approx(2 / 3)
    assert metrics["f1"] == pytest.approx(2 / 3)
    assert metrics["f1_PER"] == pytest.approx(2 * 0.5 * 1 / 1.5)  # P 1/2, R 1/1
    assert metrics["f1_LOC"] == pytest.approx(2 * 1 * 0.5 / 1.5)  # P 1/1, R 1/2


def test_repair_and_entity_spans() -> None:
    assert _repair_iob(["I-PER", "I-PER", "O", "I-LOC", "B-LOC", "I-PER"]) == [
        "B-PER",
        "I-PER",
        "O",
        "B-LOC",
        "B-LOC",
        "B-PER",
    ]
    assert _entities(["B-PER", "I-PER", "O", "B-LOC", "B-LOC"]) == [("PER", 0, 1), ("LOC", 3, 3), ("LOC", 4, 4)]


def test_raw_text_predictions_carry_character_offsets() -> None:
    task = NER(NEROptions(), max_length=32, stride=4)
    text = "Dr. Angela Merkel visited Paris."
    example = task.examples_from_texts([text])[0]
    tags = ["O"] * len(example["tokens"])
    tags[example["tokens"].index("Angela")] = "B-PER"
    tags[example["tokens"].index("Merkel")] = "I-PER"
    tags[example["tokens"].index("Paris")] = "B-LOC"
    shown = task.present(example, tags)
    spans = [(e["type"], e["text"], text[e["start"] : e["end"]]) for e in shown["entities"]]
    assert spans == [("PER", "Angela Merkel", "Angela Merkel"), ("LOC", "Paris", "Paris")]


def test_error_kinds_per_entity_type_equal_a_hand_count() -> None:
    """Gold: PER 0-1, LOC 3, ORG 5-6, MISC 8. Predicted: PER 0-1 (exact), ORG 3 (wrong type), ORG 5 (wrong
    boundary), nothing at 8 (missed), LOC 10 (spurious)."""
    gold = ["B-PER", "I-PER", "O", "B-LOC", "O", "B-ORG", "I-ORG", "O", "B-MISC", "O", "O"]
    predicted = ["B-PER", "I-PER", "O", "B-ORG", "O", "B-ORG", "O", "O", "O", "O", "B-LOC"]
    examples = datasets.Dataset.from_dict({"tokens": [[f"w{i}" for i in range(len(gold))]], "ner_tags": [gold]})
    errors = NER(NEROptions(), max_length=32, stride=8).error_analysis(examples, [predicted])
    assert errors["by_type"] == {
        "LOC": {"wrong_type": 1, "spurious": 1},
        "MISC": {"missed": 1},
        "ORG": {"wrong_boundary": 1},
        "PER": {"exact": 1},
    }
    assert errors["examples"]["spurious"][0]["entity"] == [10, 10]

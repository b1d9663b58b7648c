"""T5 for the encoder tasks (NER, QA, classification): the Unigram tokenizer's word alignment and
offsets, the builder's tokenizer corpus, and tiny runs through `nlptasks.run`."""

from __future__ import annotations

import json
from pathlib import Path

import datasets
import numpy as np
import pytest
from conftest import SENTENCES
from test_qa import dataset, drink_rows, perfect_logits, qa, qa_recipe, row, write_jsonl
from transformers import T5ForQuestionAnswering, T5ForSequenceClassification, T5ForTokenClassification

import nlptasks
from nlptasks.errors import RecipeError
from nlptasks.models import t5
from nlptasks.models.t5 import train_unigram_tokenizer
from nlptasks.tasks.classification import Classification
from nlptasks.tasks.ner import NER, NEROptions

TINY_VOCAB = {"vocab_size": 120}
"""Pieces for tokenizers learnt from the tiny test texts (t5-tiny asks for 2,000, more than they hold)."""


pytestmark = pytest.mark.usefixtures("one_thread")


def ner_examples() -> datasets.Dataset:
    return datasets.Dataset.from_dict({"tokens": [w for w, _ in SENTENCES], "ner_tags": [t for _, t in SENTENCES]})


# --- the Unigram tokenizer on word-split input and on question-context pairs --------------------------------------


def test_ner_labels_each_words_first_piece_in_every_window_and_decodes_back_to_the_tags() -> None:
    examples = ner_examples()
    labels = NER(NEROptions(), 16, 2).label_list(examples)
    label2id = {label: i for i, label in enumerate(labels)}
    task = NER(NEROptions(), max_length=6, stride=2)  # every sentence needs several windows
    tokenizer = t5.train_unigram_tokenizer(task.corpus(examples), vocab_size=40)  # small: words split into pieces
    features = task.featurize(examples, tokenizer, label2id)
    assert len(features) > 2 * len(examples)
    logits = np.zeros((len(features), 6, len(labels)))
    for index, feature in enumerate(features):
        _, tags = SENTENCES[feature["example_index"]]
        for position, (word, label) in enumerate(zip(feature["word_ids"], feature["labels"])):
            assert (word >= 0) == (label != -100)  # first pieces only, and each carries its word's tag
            if word >= 0:
                assert label == label2id[tags[word]]
                logits[index, position, label] = 10.0
    assert task.decode(examples, features, logits, dict(enumerate(labels))) == [t for _, t in SENTENCES]


def test_qa_answers_come_from_the_contexts_own_characters_without_the_space_before_them() -> None:
    context = "Filler words keep coming here. " * 4 + "The treaty was signed in   Zürich in 1848."
    rows = [row("Where was the treaty signed?", context, "Zürich"), row("When?", context, "in 1848")]
    examples = dataset(rows)
    task = qa(max_length=24, stride=6)
    tokenizer = t5.train_unigram_tokenizer(task.corpus(examples), **TINY_VOCAB)
    features = task.featurize(examples, tokenizer, {})
    assert len(features) > 2 * len(rows)  # the answers lie in later windows
    predictions = task.decode(examples, features, perfect_logits(features), {})
    for prediction, expected in zip(predictions, ("Zürich", "in 1848")):
        assert prediction["answer"] == expected == context[prediction["start"] : prediction["end"]]


def test_a_tokenizer_is_learnt_once_per_text_and_size_and_read_back_identical(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The trainer is not deterministic: the processes of a distributed run must share the main one's tokenizer."""
    monkeypatch.setenv("NLPTASKS_CACHE", str(tmp_path))
    texts = [" ".join(words) for words, _ in SENTENCES]
    learnt = train_unigram_tokenizer(texts, **TINY_VOCAB)
    reread = train_unigram_tokenizer(iter(texts), **TINY_VOCAB)
    assert reread.get_vocab() == learnt.get_vocab() and len(list((tmp_path / "tokenizers").iterdir())) == 1
    for text in texts:
        ours, theirs = learnt(text, return_offsets_mapping=True), reread(text, return_offsets_mapping=True)
        assert ours["input_ids"] == theirs["input_ids"] and ours["offset_mapping"] == theirs["offset_mapping"]
    assert (reread.pad_token_id, reread.eos_token_id, reread.unk_token_id) == (0, 1, 2)
    train_unigram_tokenizer(texts[:-1], **TINY_VOCAB)
    train_unigram_tokenizer(texts, vocab_size=TINY_VOCAB["vocab_size"] + 10)
    assert len(list((tmp_path / "tokenizers").iterdir())) == 3  # other texts, other size: learnt anew


def test_the_builder_learns_its_tokenizer_from_each_tasks_text_columns(monkeypatch: pytest.MonkeyPatch) -> None:
    learnt_from: list[list[str]] = []

    def recording(texts, vocab_size: int):
        learnt_from.append(list(texts))
        return train_unigram_tokenizer(learnt_from[-1], vocab_size)

    monkeypatch.setattr(t5, "train_unigram_tokenizer", recording)
    drinks = dataset(drink_rows(4))
    sentences = datasets.Dataset.from_dict({"text": ["a truly great film", "a dull film"], "label": [["1"], ["0"]]})
    for task, examples in (
        (NER(NEROptions(), 16, 2), ner_examples()),
        (qa(), drinks),
        (Classification(Classification.Options(), 16, 0), sentences),
    ):
        _, tokenizer = t5.build(t5.FAMILY.aliases["t5-tiny"], TINY_VOCAB, task, {}, examples)
        assert all(tokenizer.unk_token_id not in tokenizer(text)["input_ids"] for text in learnt_from[-1])
    words = [w for tokens, _ in SENTENCES for w in tokens]
    assert learnt_from == [words, [*drinks["question"], *drinks["context"]], list(sentences["text"])]
    with pytest.raises(RecipeError, match="model_args.vocab_size: 8 pieces cannot hold every character"):
        t5.build(t5.FAMILY.aliases["t5-tiny"], {"vocab_size": 8}, NER(NEROptions(), 16, 2), {}, ner_examples())


# --- tiny runs ---------------------------------------------------------------------------------------------------


def test_t5_tiny_token_classifier_runs_end_to_end(ner_recipe, tmp_path: Path) -> None:
    recipe = ner_recipe("t5-tiny", epochs=3, learning_rate=3e-3) | {"model_args": TINY_VOCAB}
    result = nlptasks.run(recipe)
    assert {"precision", "recall", "f1"} <= set(result.metrics["test"])
    predictor = nlptasks.load(result.run_dir)
    assert type(predictor.model) is T5ForTokenClassification
    [shown] = predictor.predict("Angela Merkel visited Paris.")
    assert len(shown["tags"]) == 5
    assert all(e["text"] == "Angela Merkel visited Paris."[e["start"] : e["end"]] for e in shown["entities"])


def test_t5_tiny_span_extractor_runs_end_to_end(tmp_path: Path) -> None:
    files = {
        "train": write_jsonl(tmp_path / "train.jsonl", drink_rows(32)),
        "validation": write_jsonl(tmp_path / "validation.jsonl", drink_rows(8, seed=1)),
    }
    recipe = qa_recipe("t5-tiny", files, tmp_path / "run") | {"model_args": TINY_VOCAB}
    result = nlptasks.run(recipe)
    assert {"exact_match", "f1"} <= set(result.metrics["validation"])
    predictor = nlptasks.load(result.run_dir)
    assert type(predictor.model) is T5ForQuestionAnswering
    context = "Alice drinks tea. Bob drinks coffee."
    [shown] = predictor.predict({"question": "What does Bob drink?", "context": context})
    assert shown["answer"] == context[shown["start"] : shown["end"]] and not shown["answer"].startswith(" ")


def test_t5_tiny_sequence_classifier_learns_and_predicts(tmp_path: Path) -> None:
    rows = [{"text": "good fine great", "label": "pos"}, {"text": "bad awful poor", "label": "neg"}] * 16
    recipe = {
        "task": "classification",
        "model": "t5-tiny",
        "model_args": {"vocab_size": 40},
        "output_dir": str(tmp_path / "run"),
        "data": {"train_file": str(write_jsonl(tmp_path / "train.jsonl", rows)), "validation_fraction": 0.25},
        "train": {"epochs": 10, "batch_size": 8, "learning_rate": 3e-3, "precision": "fp32"},
    }
    result = nlptasks.run(recipe)
    assert result.metrics["validation"]["accuracy"] == 1.0
    predictor = nlptasks.load(result.run_dir)
    assert type(predictor.model) is T5ForSequenceClassification
    assert [shown["label"] for shown in predictor.predict(["good fine great", "bad awful poor"])] == ["pos", "neg"]
    saved = json.loads((result.run_dir / "model" / "config.json").read_text())
    assert saved["id2label"] == {"0": "neg", "1": "pos"}

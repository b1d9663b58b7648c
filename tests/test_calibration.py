"""Calibrated confidence: ECE on a hand count, temperature scaling on a deliberately over-confident classifier,
and a run that records both and predicts with its temperature."""

from __future__ import annotations

import json
from pathlib import Path

import datasets
import numpy as np
import pytest

import nlptasks
from nlptasks.metrics.calibration import expected_calibration_error, fitted_temperature, reliability
from nlptasks.tasks.classification import Classification, ClassificationOptions
from nlptasks.tasks.ner import NER, NEROptions

pytestmark = pytest.mark.usefixtures("one_thread")


def test_ece_is_the_count_weighted_gap_between_confidence_and_accuracy() -> None:
    confidences = [0.95, 0.95, 0.95, 0.95, 0.65, 0.65]  # two bins: 0.9-1.0 (4 rows) and 0.6-0.7 (2 rows)
    correct = [True, True, True, False, True, False]
    bins = reliability(confidences, correct)
    assert [(b["count"], b["accuracy"]) for b in bins] == [(2, 0.5), (4, 0.75)]
    assert expected_calibration_error(confidences, correct) == pytest.approx(4 / 6 * 0.2 + 2 / 6 * 0.15)
    assert expected_calibration_error([1.0, 0.0], [True, False]) == pytest.approx(0.0)


def over_confident(rows: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Three classes, right 70% of the time, with logits that claim ~99.9%."""
    generator = np.random.default_rng(seed)
    gold = generator.integers(0, 3, rows)
    guess = np.where(generator.random(rows) < 0.7, gold, (gold + generator.integers(1, 3, rows)) % 3)
    logits = generator.normal(0, 0.5, (rows, 3))
    logits[np.arange(rows), guess] += 8.0
    return logits, gold


def test_temperature_scaling_lowers_ece_of_an_over_confident_classifier_and_keeps_every_label() -> None:
    task = Classification(ClassificationOptions(), max_length=32, stride=0)
    id2label = {0: "a", 1: "b", 2: "c"}

    def split(seed: int) -> tuple[datasets.Dataset, datasets.Dataset, np.ndarray]:
        logits, gold = over_confident(600, seed)
        examples = datasets.Dataset.from_dict({"text": ["x"] * len(gold), "label": [[id2label[g]] for g in gold]})
        return examples, datasets.Dataset.from_dict({"example_index": list(range(len(gold)))}), logits

    validation, test = split(0), split(1)
    before = task.decode(*test, id2label)
    task.calibrate(*validation, id2label)
    after = task.decode(*test, id2label)
    assert 5 < task.calibration["temperature"] < 20  # the logits were inflated: the fit divides them back down
    assert [p["label"] for p in after] == [p["label"] for p in before]
    ece_before, ece_after = (task.score(test[0], predictions)["ece"] for predictions in (before, after))
    assert ece_before > 0.25 and ece_after < 0.05, (ece_before, ece_after)


def test_fitted_temperature_recovers_a_known_scale() -> None:
    generator = np.random.default_rng(2)
    logits = generator.normal(0, 2, (4000, 4))
    probabilities = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    gold = np.array([generator.choice(4, p=row) for row in probabilities])  # labels drawn from softmax(logits)
    assert fitted_temperature(logits * 3, gold) == pytest.approx(3, rel=0.1)


def test_a_run_records_ece_before_and_after_and_predicts_with_its_temperature(tiny_bert: Path, tmp_path: Path) -> None:
    rows = [
        {"text": f"{word} film number {n}", "label": label}
        for n in range(12)
        for word, label in (("great", "pos"), ("dull", "neg"))
    ]
    data = tmp_path / "rows.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for row in rows))
    settings = {
        "task": "classification",
        "model": str(tiny_bert),
        "output_dir": str(tmp_path / "run"),
        "data": {f"{split}_file": str(data) for split in ("train", "validation", "test")},
        "train": {"epochs": 2, "batch_size": 8, "learning_rate": 1e-3, "precision": "fp32"},
    }
    result = nlptasks.run(settings)
    test = result.metrics["test"]
    assert 0 <= test["ece"] <= 1 and 0 <= test["ece_unscaled"] <= 1
    temperature = json.loads((result.run_dir / "model" / "config.json").read_text())["task_calibration"]["temperature"]
    assert 0.05 <= temperature <= 20
    assert (result.run_dir / "reliability_test.png").is_file()
    confused = json.loads((result.run_dir / "errors_test.json").read_text())["confused"]
    assert "## Errors: test" in (result.run_dir / "summary.md").read_text()
    assert all(
        pair["gold"] != pair["predicted"] and min(pair["count"], 5) == len(pair["examples"]) for pair in confused
    )
    written = [json.loads(line) for line in (result.run_dir / "predictions" / "test.jsonl").open()]
    predicted = nlptasks.load(result.run_dir).predict([row["text"] for row in rows])
    assert [p["score"] for p in predicted] == pytest.approx([row["score"] for row in written], abs=1e-5)
    unscaled = nlptasks.run(
        {**settings, "output_dir": str(tmp_path / "off"), "task_args": {"temperature_scaling": False}}
    )
    assert "ece_unscaled" not in unscaled.metrics["test"]


def test_an_entitys_score_is_the_probability_of_its_words_tags_and_ece_counts_exact_entities() -> None:
    task = NER(NEROptions(), max_length=32, stride=0)
    id2label = {0: "O", 1: "B-PER", 2: "I-PER"}
    examples = datasets.Dataset.from_dict(
        {"tokens": [["Ada", "Lovelace", "wrote"]], "ner_tags": [["B-PER", "I-PER", "O"]]}
    )
    features = datasets.Dataset.from_dict({"example_index": [0], "word_ids": [[-1, 0, 1, 2, -1]]})
    probabilities = np.array([[0.2, 0.7, 0.1], [0.1, 0.1, 0.8], [0.9, 0.05, 0.05]])
    logits = np.log(np.pad(probabilities, ((1, 1), (0, 0)), constant_values=1 / 3))[None]
    [tagging] = task.decode(examples, features, logits, id2label)
    assert list(tagging) == ["B-PER", "I-PER", "O"]
    assert tagging.entity_scores() == pytest.approx([0.7 * 0.8])
    assert task.score(examples, [tagging])["ece"] == pytest.approx(1 - 0.56)  # one exact entity, scored 0.56
    [shown] = [task.present({"tokens": examples[0]["tokens"]}, tagging)["entities"]]
    assert shown == [{"type": "PER", "words": [0, 2], "score": pytest.approx(0.56), "text": "Ada Lovelace"}]


def test_an_ner_run_fits_a_temperature_and_scores_entities_with_it(ner_recipe, tiny_bert: Path) -> None:
    result = nlptasks.run(ner_recipe(tiny_bert, epochs=3, learning_rate=5e-3))
    test = result.metrics["test"]
    assert 0 <= test["ece"] <= 1 and 0 <= test["ece_unscaled"] <= 1
    calibration = json.loads((result.run_dir / "model" / "config.json").read_text())["task_calibration"]
    assert 0.05 <= calibration["temperature"] <= 20
    assert (result.run_dir / "reliability_test.png").is_file()
    written = [json.loads(line) for line in (result.run_dir / "predictions" / "test.jsonl").open()]
    predicted = nlptasks.load(result.run_dir).predict([" ".join(row["tokens"]) for row in written])
    assert [e["score"] for p in predicted for e in p["entities"]] == pytest.approx(
        [e["score"] for row in written for e in row["entities"]], abs=1e-5
    )
    assert all(0 < e["score"] <= 1 for row in written for e in row["entities"])


def test_a_qa_run_fits_a_temperature_over_its_candidate_spans_and_answers_with_it(
    tiny_bert: Path, tmp_path: Path
) -> None:
    context = "Ada Lovelace wrote the first program in London in 1843."
    pairs = [("Who wrote it?", "Ada Lovelace"), ("Where?", "London"), ("When?", "1843")] * 6
    rows = [
        {"question": q, "context": context, "answers": {"text": [a], "answer_start": [context.index(a)]}}
        for q, a in pairs
    ]
    data = tmp_path / "rows.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for row in rows))
    settings = {
        "task": "qa",
        "model": str(tiny_bert),
        "output_dir": str(tmp_path / "run"),
        "data": {f"{split}_file": str(data) for split in ("train", "validation", "test")} | {"max_length": 48},
        "train": {"epochs": 8, "batch_size": 6, "learning_rate": 3e-3, "precision": "fp32", "eval_strategy": "no"},
    }
    result = nlptasks.run(settings)
    test = result.metrics["test"]
    assert test["exact_match"] > 0.3, test  # it learnt some answers: right spans exist to fit the temperature on
    assert 0 <= test["ece"] <= 1 and 0 <= test["ece_unscaled"] <= 1
    calibration = json.loads((result.run_dir / "model" / "config.json").read_text())["task_calibration"]
    assert 0.05 <= calibration["temperature"] <= 20
    assert (result.run_dir / "reliability_test.png").is_file()
    written = [json.loads(line) for line in (result.run_dir / "predictions" / "test.jsonl").open()]
    predicted = nlptasks.load(result.run_dir).predict([{"question": q, "context": context} for q, _ in pairs])
    assert [p["score"] for p in predicted] == pytest.approx([row["score"] for row in written], abs=1e-5)

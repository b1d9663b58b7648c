"""Classification: single texts, pairs, multi-label with a tuned threshold, class weights, artifacts."""

from __future__ import annotations

import json
from pathlib import Path

import datasets
import numpy as np
import pytest
import torch

import nlptasks
from nlptasks.data import load_splits
from nlptasks.recipe import DataConfig
from nlptasks.tasks.classification import Classification, ClassificationOptions


def task(**options: object) -> Classification:
    return Classification(ClassificationOptions(**options), max_length=32, stride=0)


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def run_recipe(model: Path, tmp_path: Path, train_file: Path, **sections: dict) -> nlptasks.RunResult:
    settings = {"epochs": 20, "batch_size": 8, "learning_rate": 3e-3, "precision": "fp32", **sections.pop("train", {})}
    recipe = {
        "task": "classification",
        "model": str(model),
        "output_dir": str(tmp_path / "run"),
        "data": {"train_file": str(train_file), "validation_fraction": 0.25, **sections.pop("data", {})},
        "train": settings,
        **sections,
    }
    return nlptasks.run(recipe)


def test_a_single_text_model_learns_and_predicts_what_it_was_scored_on(tiny_bert: Path, tmp_path: Path) -> None:
    rows = [{"text": "good fine great", "label": "pos"}, {"text": "bad awful poor", "label": "neg"}] * 16
    result = run_recipe(tiny_bert, tmp_path, write_jsonl(tmp_path / "train.jsonl", rows))
    assert result.metrics["validation"]["accuracy"] == 1.0
    shown = nlptasks.load(result.run_dir).predict(["good fine great", "bad awful poor"])
    assert [row["label"] for row in shown] == ["pos", "neg"]
    assert all(0.5 < row["score"] <= 1.0 for row in shown)
    table = json.loads((result.run_dir / "confusion_validation.json").read_text())
    gold = [row["gold"] for row in map(json.loads, (result.run_dir / "predictions" / "validation.jsonl").open())]
    assert table["labels"] == ["neg", "pos"]
    assert table["matrix"] == [[gold.count("neg"), 0], [0, gold.count("pos")]]
    assert (result.run_dir / "confusion_validation.png").read_bytes()[:4] == b"\x89PNG"


def test_a_decoder_classifies_at_its_last_real_token_whatever_the_padding(tiny_llama: Path, tmp_path: Path) -> None:
    """SmolLM2's tokenizer has no pad token: the builder pads with EOS and tells the model, so a text scores
    the same alone and batched beside a longer one (Llama reads the last non-pad position)."""
    rows = [{"text": "good fine great", "label": "pos"}, {"text": "bad awful poor", "label": "neg"}] * 16
    result = run_recipe(tiny_llama, tmp_path, write_jsonl(tmp_path / "train.jsonl", rows))
    assert result.metrics["validation"]["accuracy"] == 1.0
    predictor = nlptasks.load(result.run_dir)
    assert predictor.model.config.pad_token_id == predictor.tokenizer.pad_token_id is not None
    short = "bad awful poor"
    [alone] = predictor.predict(short)
    [batched, _] = predictor.predict([short, "good fine great " * 6])
    assert alone["label"] == batched["label"] == "neg"
    assert batched["score"] == pytest.approx(alone["score"], abs=1e-5)


def test_sentence_pairs_reach_the_model_as_two_segments(tiny_bert: Path, tmp_path: Path) -> None:
    """Entailment-style rows: the label depends on whether the two sides agree, so both must be seen."""
    rows = [
        {"premise": "the cat sleeps", "hypothesis": "the cat sleeps", "gold": "same"},
        {"premise": "the cat sleeps", "hypothesis": "a dog barks", "gold": "different"},
        {"premise": "a dog barks", "hypothesis": "a dog barks", "gold": "same"},
        {"premise": "a dog barks", "hypothesis": "the cat sleeps", "gold": "different"},
    ] * 8
    data = {"columns": {"premise": "text", "hypothesis": "text_pair", "gold": "label"}}
    result = run_recipe(tiny_bert, tmp_path, write_jsonl(tmp_path / "pairs.jsonl", rows), data=data)
    assert result.metrics["validation"]["accuracy"] == 1.0
    predictor = nlptasks.load(result.run_dir)
    features = predictor.task.featurize(
        predictor.task.examples_from_texts(['{"text": "a dog barks", "text_pair": "the cat sleeps"}']),
        predictor.tokenizer,
        predictor.label2id,
    )
    assert set(features[0]["token_type_ids"]) == {0, 1}
    [shown] = predictor.predict('{"text": "a dog barks", "text_pair": "the cat sleeps"}')
    assert shown["label"] == "different" and shown["text_pair"] == "the cat sleeps"


def test_multi_label_trains_tunes_its_threshold_and_predicts_label_sets(tiny_bert: Path, tmp_path: Path) -> None:
    words = {"sport": "goal match", "money": "bank price", "food": "bread soup"}
    rows = [
        {"text": " ".join(words[name] for name in names), "label": list(names)}
        for names in [("sport",), ("money",), ("food",), ("sport", "money"), ("money", "food"), ("sport", "food")]
    ] * 8
    result = run_recipe(
        tiny_bert,
        tmp_path,
        write_jsonl(tmp_path / "multi.jsonl", rows),
        task_args={"multi_label": True},
        model_args={"hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0},
        train={"epochs": 40, "learning_rate": 1e-3},  # dropout or higher rates stall the tiny random BERT here
    )
    assert result.metrics["validation"]["accuracy"] >= 0.9  # exact label-set match
    assert {"macro_f1", "micro_f1", "f1_food"} <= set(result.metrics["validation"])
    predictor = nlptasks.load(result.run_dir)
    threshold = predictor.model.config.task_calibration["threshold"]
    assert 0 < threshold < 1 and predictor.task.calibration == {"threshold": threshold}
    [shown] = predictor.predict("goal match bread soup")
    assert sorted(shown["labels"]) == ["food", "sport"]
    assert all(score >= threshold for score in shown["scores"])


def test_multi_label_metrics_match_a_hand_count() -> None:
    examples = datasets.Dataset.from_dict({"text": ["a", "b", "c"], "label": [["x", "y"], ["x"], ["y"]]})
    predictions = [{"labels": ["x", "y"]}, {"labels": ["y"]}, {"labels": ["y"]}]
    metrics = task(multi_label=True).score(examples, predictions)
    # x: tp 1, fn 1, fp 0 -> F1 2/3; y: tp 2, fp 1 -> F1 0.8; exact sets: rows 1 and 3.
    assert metrics["accuracy"] == pytest.approx(2 / 3)
    assert metrics["f1_x"] == pytest.approx(2 / 3) and metrics["f1_y"] == pytest.approx(0.8)
    assert metrics["macro_f1"] == pytest.approx((2 / 3 + 0.8) / 2)
    assert metrics["micro_f1"] == pytest.approx(2 * 3 / (2 * 3 + 1 + 1))


def test_multi_label_string_cells_split_on_the_separator(tmp_path: Path) -> None:
    path = tmp_path / "train.csv"
    path.write_text('text,label\n"goal, bank",sport|money\nsoup,food\n')
    splits = load_splits(DataConfig(train_file=path, validation_file=path, test_file=path), task(multi_label=True))
    assert task(multi_label=True).label_list(splits["test"]) == ["food", "money", "sport"]


def test_several_labels_without_multi_label_is_a_clear_error(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "train.jsonl", [{"text": "goal bank", "label": ["sport", "money"]}])
    splits = load_splits(DataConfig(train_file=path, validation_file=path, test_file=path), task())
    with pytest.raises(nlptasks.DataError, match="set task_args.multi_label: true"):
        task().label_list(splits["test"])


def test_balanced_class_weights_scale_the_loss_by_inverse_frequency() -> None:
    train = datasets.Dataset.from_dict({"text": ["t"] * 4, "label": [["a"], ["a"], ["a"], ["b"]]})
    label2id = {"a": 0, "b": 1}
    loss = task(class_weights="balanced").loss_function(train, label2id)
    logits, labels = torch.tensor([[2.0, 0.0], [0.0, 1.0]]), torch.tensor([1, 0])
    weights = torch.tensor([4 / (2 * 3), 4 / (2 * 1)])  # n / (classes x count)
    expected = torch.nn.functional.cross_entropy(logits, labels, weight=weights)
    assert loss({"logits": logits}, labels).item() == pytest.approx(expected.item())
    assert task().loss_function(train, label2id) is None


def test_class_weights_naming_an_unknown_class_fail_with_the_classes() -> None:
    train = datasets.Dataset.from_dict({"text": ["t"], "label": [["a"]]})
    with pytest.raises(nlptasks.RecipeError, match=r"unknown classes \['c'\]; classes: \['a'\]"):
        task(class_weights={"c": 2.0}).loss_function(train, {"a": 0})


def test_a_hub_dataset_goes_through_the_same_row_checks(monkeypatch: pytest.MonkeyPatch) -> None:
    """Hub ClassLabel ids become names and other columns map like local files (no network: faked)."""
    names = datasets.ClassLabel(names=["negative", "positive"])
    fake = datasets.DatasetDict(
        {
            "train": datasets.Dataset.from_dict(
                {"sentence": ["fine", "bad"], "label": [1, 0], "idx": [0, 1]},
                features=datasets.Features(
                    {"sentence": datasets.Value("string"), "label": names, "idx": datasets.Value("int32")}
                ),
            )
        }
    )
    monkeypatch.setattr(datasets, "load_dataset", lambda *args, **kwargs: fake)
    splits = load_splits(DataConfig(name="someone/sentiment", text_column="sentence"), task())
    both = datasets.concatenate_datasets([splits["train"], splits["validation"]])
    assert sorted(zip(both["text"], both["label"])) == [("bad", ["negative"]), ("fine", ["positive"])]


def test_trec_on_the_hub_reads_like_the_offline_pack(monkeypatch: pytest.MonkeyPatch) -> None:
    """CogComp/trec calls the coarse label `coarse_label`; the offline pack calls it `label`."""
    coarse, fine = datasets.ClassLabel(names=["ABBR", "NUM"]), datasets.ClassLabel(names=["ABBR:exp", "NUM:date"])
    features = datasets.Features({"text": datasets.Value("string"), "coarse_label": coarse, "fine_label": fine})
    rows = {"text": ["What is NASA ?", "When was it ?"], "coarse_label": [0, 1], "fine_label": [0, 1]}
    fake = datasets.DatasetDict({"test": datasets.Dataset.from_dict(rows, features=features)})
    monkeypatch.setenv("NLPTASKS_DATA_DIR", "/nonexistent")
    monkeypatch.setattr(datasets, "load_dataset", lambda *args, **kwargs: fake)
    assert load_splits(DataConfig(name="trec"), task())["test"]["label"] == [["ABBR"], ["NUM"]]
    by_fine = load_splits(DataConfig(name="trec", label_column="fine_label"), task())
    assert by_fine["test"]["label"] == [["ABBR:exp"], ["NUM:date"]]


def test_plain_and_json_lines_both_predict(tiny_bert: Path) -> None:
    examples = task().examples_from_texts(["just text", '{"text": "a", "text_pair": "b"}', "{not json"])
    assert examples["text"] == ["just text", "a", "{not json"]
    assert examples["text_pair"] == [None, "b", None]


def test_probabilities_are_a_softmax_of_the_logits() -> None:
    examples = datasets.Dataset.from_dict({"text": ["a"]})
    features = datasets.Dataset.from_dict({"example_index": [0]})
    [prediction] = task().decode(examples, features, np.array([[0.0, np.log(3.0)]]), {0: "x", 1: "y"})
    assert prediction == {"label": "y", "score": pytest.approx(0.75)}

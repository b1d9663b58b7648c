"""Text classification: single sentences or sentence pairs; binary, multi-class or multi-label.

Labels are stored as a list of names per example for every variant, so one Arrow schema and
one featurizer serve all three (single-label rows hold one name). Inputs longer than
`data.max_length` are truncated (pairs: the longer side first): a sentence label rarely
hinges on its tail.

Multi-label models score each class with a sigmoid; the decision threshold is tuned on
validation after training (macro-F1) and saved with the model, so `predict` uses it too.
Single-label scores are calibrated the same way: a softmax temperature fitted on validation
(`temperature_scaling`) makes a stated 0.9 right about 90% of the time, without changing any label;
`ece` in the metrics and `reliability_<split>.png` show how far they are.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import datasets
import numpy as np
import torch
from pydantic import Field
from sklearn.metrics import confusion_matrix

from nlptasks.config import Section
from nlptasks.errors import DataError, RecipeError
from nlptasks.metrics.calibration import expected_calibration_error, fitted_temperature, write_reliability
from nlptasks.metrics.classification import label_scores
from nlptasks.rundir import write_atomic
from nlptasks.tasks.base import Task, softmax, text_or_json_row, text_pair_examples, tokenized

THRESHOLDS = np.round(np.arange(0.05, 0.96, 0.05), 2)
CONFUSED_PAIRS = 10
ERROR_EXAMPLES = 5


class ClassificationOptions(Section):
    multi_label: bool = False
    """Each example may carry several labels (a list in JSON, or names split by `label_separator`)."""
    label_separator: str = Field(default="|", min_length=1)
    """Splits a multi-label string cell (CSV/TSV) into names."""
    class_weights: Literal["none", "balanced"] | dict[str, float] = "none"
    """Loss weight per class: `balanced` is n / (classes x count), or give a weight per name."""
    threshold: float = Field(default=0.5, gt=0, lt=1)
    """Multi-label decision threshold before tuning (and where no validation split exists)."""
    temperature_scaling: bool = True
    """Single-label: fit a softmax temperature on validation after training, so scores match accuracy."""


class Classification(Task):
    name = "classification"
    input_column = "text"
    target_column = "label"
    main_metric = "accuracy"
    headline_metrics = ("accuracy", "macro_f1", "micro_f1")
    auto_model = "AutoModelForSequenceClassification"
    pipeline_tag = "text-classification"
    Options = ClassificationOptions
    options: ClassificationOptions
    integer_labels = True

    def __init__(self, options: ClassificationOptions, max_length: int, stride: int) -> None:
        super().__init__(options, max_length, stride)
        if options.multi_label:
            self.main_metric = "macro_f1"  # exact-set accuracy stays 0 for many epochs: a poor checkpoint signal

    @classmethod
    def features(cls) -> datasets.Features:
        return datasets.Features(
            {
                "text": datasets.Value("string"),
                "text_pair": datasets.Value("string"),
                "label": datasets.Sequence(datasets.Value("string")),
            }
        )

    @classmethod
    def check_row(cls, row: dict[str, Any], label_names: list[str] | None) -> dict[str, Any]:
        pair = row.get("text_pair")
        for field, text in (("text", row["text"]), ("text_pair", pair)):
            if (field == "text" or pair is not None) and (not isinstance(text, str) or not text.strip()):
                raise ValueError(f"field '{field}' must be a non-empty string, got {text!r}")
        raw = row["label"]
        labels = [_label_name(value, label_names) for value in (raw if isinstance(raw, list) else [raw])]
        if not labels:
            raise ValueError("field 'label' is an empty list")
        return {"text": row["text"], "text_pair": pair, "label": labels}

    def label_list(self, train: datasets.Dataset) -> list[str]:
        return sorted({name for labels in self._labels_of(train) for name in labels})

    def label_counts(self, examples: datasets.Dataset) -> Counter[str]:
        return Counter(name for labels in self._labels_of(examples) for name in labels)

    def input_text(self, example: dict[str, Any]) -> str:
        return "\t".join(text for text in (example["text"], example.get("text_pair")) if text)

    def featurize(self, examples: datasets.Dataset, tokenizer: Any, label2id: dict[str, int]) -> datasets.Dataset:
        def encode(batch: dict[str, list], indices: list[int]) -> dict[str, list]:
            pairs = batch.get("text_pair") or [None] * len(indices)
            has_pairs = any(pair is not None for pair in pairs)
            encoded = dict(
                tokenizer(
                    batch["text"],
                    [pair or "" for pair in pairs] if has_pairs else None,
                    truncation="longest_first" if has_pairs else True,
                    max_length=self.max_length,
                )
            )
            encoded["example_index"] = indices
            if "label" in batch:
                encoded["labels"] = [self._target(self._split(labels), label2id) for labels in batch["label"]]
            return encoded

        return tokenized(examples, encode)

    def pad_values(self, tokenizer: Any) -> dict[str, int]:
        return {"input_ids": tokenizer.pad_token_id or 0}

    def decode(
        self, examples: datasets.Dataset, features: datasets.Dataset, logits: np.ndarray, id2label: dict[int, str]
    ) -> list[dict[str, Any]]:
        predictions: list[dict[str, Any]] = [{}] * len(examples)
        if self.options.multi_label:
            threshold = self.calibration.get("threshold", self.options.threshold)
            for example, probs in zip(features["example_index"], _sigmoid(logits)):
                chosen = [i for i in np.argsort(-probs) if probs[i] >= threshold]
                predictions[example] = {
                    "labels": [id2label[int(i)] for i in chosen],
                    "scores": [float(probs[i]) for i in chosen],
                }
            return predictions
        temperature = self.calibration.get("temperature", 1.0)
        for example, probs in zip(features["example_index"], softmax(np.asarray(logits) / temperature)):
            best = int(probs.argmax())
            predictions[example] = {"label": id2label[best], "score": float(probs[best])}
        return predictions

    def score(self, examples: datasets.Dataset, predictions: list[dict[str, Any]]) -> dict[str, float]:
        gold = [self._split(labels) for labels in examples["label"]]
        predicted = [_predicted_labels(p) for p in predictions]
        scores = label_scores(gold, predicted, self.options.multi_label)
        if not self.options.multi_label:
            scores["ece"] = expected_calibration_error(*self._confidences(gold, predictions))
        return scores

    def error_analysis(self, examples: datasets.Dataset, predictions: list[dict[str, Any]]) -> dict[str, Any]:
        """The most confused (gold, predicted) label pairs, most frequent first, with example texts; single-label."""
        if self.options.multi_label:
            return {}
        confused: dict[tuple[str, str], list[str]] = {}
        for text, labels, prediction in zip(examples["text"], examples["label"], predictions):
            gold = self._split(labels)[0]
            if prediction["label"] != gold:
                confused.setdefault((gold, prediction["label"]), []).append(text)
        ranked = sorted(confused.items(), key=lambda item: -len(item[1]))[:CONFUSED_PAIRS]
        return {
            "confused": [
                {"gold": gold, "predicted": guess, "count": len(texts), "examples": texts[:ERROR_EXAMPLES]}
                for (gold, guess), texts in ranked
            ]
        }

    def _confidences(self, gold: list[list[str]], predictions: list[dict[str, Any]]) -> tuple[list[float], list[bool]]:
        """Each single-label prediction's score and whether its label is the gold one."""
        return [p["score"] for p in predictions], [p["label"] == labels[0] for p, labels in zip(predictions, gold)]

    @property
    def calibrates(self) -> bool:
        return self.options.multi_label or self.options.temperature_scaling

    def calibrate(
        self, examples: datasets.Dataset, features: datasets.Dataset, logits: Any, id2label: dict[int, str]
    ) -> None:
        """Multi-label: the one threshold with the best validation macro-F1 (ties: the one nearest 0.5).
        Single-label: the softmax temperature with the least validation log-loss."""
        if not self.options.multi_label:
            label2id = {label: i for i, label in id2label.items()}
            gold = [label2id[self._split(examples[example]["label"])[0]] for example in features["example_index"]]
            self.calibration = {"temperature": fitted_temperature(np.asarray(logits), np.asarray(gold))}
            return
        by_distance = sorted(THRESHOLDS, key=lambda t: abs(t - 0.5))
        scores = {}
        for threshold in by_distance:
            self.calibration = {"threshold": float(threshold)}
            scores[float(threshold)] = self.score(examples, self.decode(examples, features, logits, id2label))
        best = max(scores, key=lambda t: scores[t]["macro_f1"])
        self.calibration = {"threshold": best}

    def loss_function(self, train: datasets.Dataset, label2id: dict[str, int]) -> Callable[..., Any] | None:
        """Weighted cross-entropy, or binary cross-entropy per class for multi-label (any model family)."""
        multi_label = self.options.multi_label
        if self.options.class_weights == "none" and not multi_label:
            return None
        weights = None
        if self.options.class_weights != "none":
            weights = torch.tensor(self._class_weights(train, label2id), dtype=torch.float32)

        def loss(outputs: Any, labels: torch.Tensor, num_items_in_batch: Any = None) -> torch.Tensor:
            logits = outputs["logits"].float()
            weight = None if weights is None else weights.to(logits.device)
            if multi_label:
                return torch.nn.functional.binary_cross_entropy_with_logits(logits, labels.float(), pos_weight=weight)
            return torch.nn.functional.cross_entropy(logits, labels, weight=weight)

        return loss

    def write_artifacts(self, folder: Path, split: str, examples: datasets.Dataset, predictions: list[Any]) -> None:
        """`confusion_<split>.png` and `.json` (rows: gold, columns: predicted), and `reliability_<split>.png`
        and `.json` (accuracy per confidence bin); single-label only."""
        if self.options.multi_label:
            return
        confidences = self._confidences([self._split(labels) for labels in examples["label"]], predictions)
        write_reliability(folder, split, *confidences, self.calibration.get("temperature"), "labels")
        gold = [self._split(labels)[0] for labels in examples["label"]]
        guess = [p["label"] for p in predictions]
        classes = sorted(set(gold) | set(guess))
        counts = confusion_matrix(gold, guess, labels=classes)
        table = {"labels": classes, "matrix": counts.tolist()}
        write_atomic(folder / f"confusion_{split}.json", json.dumps(table, indent=1) + "\n")
        _plot_confusion(counts, classes, f"{split}: rows gold, columns predicted", folder / f"confusion_{split}.png")

    def examples_from_texts(self, texts: list[str]) -> datasets.Dataset:
        """Plain lines are single texts; a JSON object line gives `text` and `text_pair`."""
        rows = [text_or_json_row(text) for text in texts]
        return text_pair_examples(rows)

    def empty_prediction(self) -> dict[str, Any]:
        """No class and no score: a blank text is not evidence for any class."""
        if self.options.multi_label:
            return {"text": "", "labels": None, "scores": None}
        return {"text": "", "label": None, "score": None}

    def present(self, example: dict[str, Any], prediction: dict[str, Any]) -> dict[str, Any]:
        shown = {"text": example["text"]}
        if example.get("text_pair") is not None:
            shown["text_pair"] = example["text_pair"]
        shown.update(prediction)
        if "label" in example:
            gold = self._split(example["label"])
            shown["gold"] = gold if self.options.multi_label else gold[0]
        return shown

    def _labels_of(self, examples: datasets.Dataset) -> list[list[str]]:
        try:
            return [self._split(labels) for labels in examples["label"]]
        except ValueError as err:
            raise DataError(f"data: {err}") from None

    def _split(self, labels: list[str]) -> list[str]:
        """Multi-label string cells split into names; single-label rows must hold exactly one."""
        if not self.options.multi_label:
            if len(labels) != 1:
                raise ValueError(f"field 'label' holds {labels}; set task_args.multi_label: true for several labels")
            return labels
        return sorted({name.strip() for label in labels for name in label.split(self.options.label_separator)})

    def _target(self, labels: list[str], label2id: dict[str, int]) -> int | list[float]:
        if not self.options.multi_label:
            return label2id.get(labels[0], -100)
        hot = [0.0] * len(label2id)
        for name in labels:
            if name in label2id:
                hot[label2id[name]] = 1.0
        return hot

    def _class_weights(self, train: datasets.Dataset, label2id: dict[str, int]) -> list[float]:
        setting = self.options.class_weights
        if isinstance(setting, dict):
            unknown = sorted(set(setting) - set(label2id))
            if unknown:
                raise RecipeError(f"task_args.class_weights: unknown classes {unknown}; classes: {sorted(label2id)}")
            return [float(setting.get(name, 1.0)) for name in label2id]
        counts = Counter(name for labels in self._labels_of(train) for name in labels)
        if self.options.multi_label:
            return [(len(train) - counts[name]) / max(counts[name], 1) for name in label2id]
        return [len(train) / (len(label2id) * max(counts[name], 1)) for name in label2id]


def _label_name(value: Any, label_names: list[str] | None) -> str:
    """A class name from a name or an index into the names file beside the data."""
    if isinstance(value, bool) or not isinstance(value, str | int) or value == "":
        raise ValueError(f"field 'label' must be a class name or integer, got {value!r}")
    if label_names is not None and isinstance(value, int | str) and str(value).lstrip("-").isdigit():
        index = int(value)
        if not 0 <= index < len(label_names):
            raise ValueError(f"field 'label': {index} is outside the {len(label_names)} names given")
        return label_names[index]
    return str(value)


def _predicted_labels(prediction: dict[str, Any]) -> list[str]:
    return prediction["labels"] if "labels" in prediction else [prediction["label"]]


def _sigmoid(logits: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-logits))


def _plot_confusion(counts: np.ndarray, classes: list[str], title: str, path: Path) -> None:
    """Drawn on a bare `Figure`: pyplot (and its global backend) stays the caller's, inline plots in notebooks too."""
    from matplotlib.figure import Figure

    size = max(4.0, 0.35 * len(classes) + 2)
    figure = Figure(figsize=(size, size))
    axes = figure.subplots()
    axes.imshow(counts, cmap="Blues")
    axes.set(xticks=range(len(classes)), yticks=range(len(classes)), xlabel="predicted", ylabel="gold", title=title)
    axes.set_xticklabels(classes, rotation=90)
    axes.set_yticklabels(classes)
    if len(classes) <= 20:
        for (row, column), value in np.ndenumerate(counts):
            color = "white" if value > counts.max() / 2 else "black"
            axes.text(column, row, str(value), ha="center", va="center", color=color, fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=100)

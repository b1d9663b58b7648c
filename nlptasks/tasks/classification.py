"""Single-sentence text classification (binary or multi-class).

Inputs longer than `data.max_length` are truncated: a sentence label rarely hinges on its tail,
and the classification issue adds pairs, multi-label and class weights on this same module.
"""

from __future__ import annotations

from typing import Any

import datasets
import numpy as np
from sklearn.metrics import accuracy_score, precision_recall_fscore_support

from nlptasks.tasks.base import Task, softmax


class Classification(Task):
    name = "classification"
    input_column = "text"
    target_column = "label"
    main_metric = "accuracy"
    auto_model = "AutoModelForSequenceClassification"

    @classmethod
    def features(cls) -> datasets.Features:
        return datasets.Features({"text": datasets.Value("string"), "label": datasets.Value("string")})

    @classmethod
    def check_row(cls, row: dict[str, Any], label_names: list[str] | None) -> dict[str, Any]:
        text, label = row["text"], row["label"]
        if not isinstance(text, str) or not text.strip():
            raise ValueError(f"field 'text' must be a non-empty string, got {text!r}")
        if isinstance(label, bool) or label is None or label == "":
            raise ValueError(f"field 'label' must be a class name or integer, got {label!r}")
        if label_names is not None and isinstance(label, int | str) and str(label).lstrip("-").isdigit():
            index = int(label)
            if not 0 <= index < len(label_names):
                raise ValueError(f"field 'label': {index} is outside the {len(label_names)} names given")
            label = label_names[index]
        return {"text": text, "label": str(label)}

    def label_list(self, train: datasets.Dataset) -> list[str]:
        return sorted(set(train["label"]))

    def featurize(self, examples: datasets.Dataset, tokenizer: Any, label2id: dict[str, int]) -> datasets.Dataset:
        def encode(batch: dict[str, list], indices: list[int]) -> dict[str, list]:
            encoded = dict(tokenizer(batch["text"], truncation=True, max_length=self.max_length))
            encoded["example_index"] = indices
            if "label" in batch:
                encoded["labels"] = [label2id.get(label, -100) for label in batch["label"]]
            return encoded

        return examples.map(
            encode, batched=True, with_indices=True, remove_columns=examples.column_names, desc="Tokenizing"
        )

    def pad_values(self, tokenizer: Any) -> dict[str, int]:
        return {"input_ids": tokenizer.pad_token_id or 0}

    def decode(
        self, examples: datasets.Dataset, features: datasets.Dataset, logits: np.ndarray, id2label: dict[int, str]
    ) -> list[dict[str, Any]]:
        predictions: list[dict[str, Any]] = [{}] * len(examples)
        for example, probs in zip(features["example_index"], softmax(logits)):
            best = int(probs.argmax())
            predictions[example] = {"label": id2label[best], "score": float(probs[best])}
        return predictions

    def score(self, examples: datasets.Dataset, predictions: list[dict[str, Any]]) -> dict[str, float]:
        gold = examples["label"]
        predicted = [p["label"] for p in predictions]
        classes = sorted(set(gold) | set(predicted))
        precision, recall, f1, _ = precision_recall_fscore_support(gold, predicted, labels=classes, zero_division=0)
        metrics = {"accuracy": float(accuracy_score(gold, predicted)), "macro_f1": float(np.mean(f1))}
        for name, p, r, f in zip(classes, precision, recall, f1):
            metrics.update({f"precision_{name}": float(p), f"recall_{name}": float(r), f"f1_{name}": float(f)})
        return metrics

    def examples_from_texts(self, texts: list[str]) -> datasets.Dataset:
        return datasets.Dataset.from_dict({"text": texts})

    def present(self, example: dict[str, Any], prediction: dict[str, Any]) -> dict[str, Any]:
        shown = {"text": example["text"], **prediction}
        if "label" in example:
            shown["gold"] = example["label"]
        return shown

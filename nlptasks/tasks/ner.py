"""Named-entity recognition: word-level IOB2 tags, aligned to subwords through `word_ids`.

Long sentences are split into overlapping windows (`data.max_length`, `data.stride`); every
word is scored in each window that holds it and the scores are averaged, so no word is ever
dropped by truncation. Scored with seqeval, entity level, IOB2 strict.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import datasets
import numpy as np

from nlptasks.config import Section
from nlptasks.metrics.calibration import expected_calibration_error, write_reliability
from nlptasks.metrics.entities import entity_scores
from nlptasks.tasks.base import NOT_CHOSEN, Task, in_memory, softmax, tokenized
from nlptasks.text import WORD

ERROR_EXAMPLES = 5
"""Examples kept per kind of error."""

TAG = re.compile(r"^(O|[BI]-\S+)$")


class NEROptions(Section):
    label_all_subwords: bool = False
    """Train on every subword (continuations get I- tags) instead of on first subwords only."""
    temperature_scaling: bool = True
    """Fit a softmax temperature on validation after training, so entity scores match how often they are right."""


class Tagging(list):
    """A sentence's predicted tags, read as the list of them everywhere, with each word's probability of its tag."""

    def __init__(self, tags: list[str], probabilities: list[float]) -> None:
        super().__init__(tags)
        self.probabilities = probabilities

    def entity_scores(self) -> list[float]:
        """Per entity, in `_entities` order: the probability that each of its words has its tag (as if independent)."""
        return [float(np.prod(self.probabilities[first : last + 1])) for _, first, last in _entities(self)]


class NER(Task):
    name = "ner"
    input_column = "tokens"
    target_column = "ner_tags"
    main_metric = "f1"
    headline_metrics = ("f1", "precision", "recall", "macro_f1")
    auto_model = "AutoModelForTokenClassification"
    pipeline_tag = "token-classification"
    Options = NEROptions
    integer_labels = True
    split_into_words = True

    @classmethod
    def features(cls) -> datasets.Features:
        return datasets.Features({"tokens": [datasets.Value("string")], "ner_tags": [datasets.Value("string")]})

    @classmethod
    def check_row(cls, row: dict[str, Any], label_names: list[str] | None) -> dict[str, Any]:
        tokens, tags = row["tokens"], row["ner_tags"]
        if not isinstance(tokens, list) or not tokens or not all(isinstance(t, str) and t.strip() for t in tokens):
            raise ValueError("field 'tokens' must be a non-empty list of non-blank strings")
        if not isinstance(tags, list):
            raise ValueError(f"field 'ner_tags' must be a list, got {type(tags).__name__}")
        if len(tags) != len(tokens):
            raise ValueError(f"field 'ner_tags' has {len(tags)} tags but 'tokens' has {len(tokens)} tokens")
        names = [_tag_name(tag, label_names, position) for position, tag in enumerate(tags)]
        return {"tokens": tokens, "ner_tags": names}

    def label_counts(self, examples: datasets.Dataset) -> Counter[str]:
        """Entities per type: each `B-` tag, and each `I-` tag that starts one (as conlleval reads it)."""
        return Counter(kind for tags in examples["ner_tags"] for _, kind in _entity_starts(tags))

    def data_problems(self, examples: datasets.Dataset) -> dict[str, list[str]]:
        """Tag sequences that are not IOB2: an `I-X` after `O` or after another type's tag."""
        invalid = [
            f"row {row}: {tags[position - 1] if position else 'the start'} then {tags[position]} at word {position + 1}"
            for row, tags in enumerate(examples["ner_tags"], 1)
            for position, _ in _entity_starts(tags)
            if tags[position].startswith("I-")
        ]
        return {"tags that are not IOB2": invalid} if invalid else {}

    def label_list(self, train: datasets.Dataset) -> list[str]:
        types = {tag[2:] for tags in train["ner_tags"] for tag in tags if tag != "O"}
        return ["O"] + [f"{prefix}-{kind}" for kind in sorted(types) for prefix in "BI"]

    def featurize(self, examples: datasets.Dataset, tokenizer: Any, label2id: dict[str, int]) -> datasets.Dataset:
        def encode(batch: dict[str, list], indices: list[int]) -> dict[str, list]:
            encoded = tokenizer(
                batch["tokens"],
                is_split_into_words=True,
                truncation=True,
                max_length=self.max_length,
                stride=self.stride,
                return_overflowing_tokens=True,
                return_offsets_mapping=True,
            )
            windows = encoded.pop("overflow_to_sample_mapping")
            offsets = encoded.pop("offset_mapping")
            all_words = [encoded.word_ids(i) for i in range(len(windows))]
            encoded["example_index"] = [indices[row] for row in windows]
            encoded["word_ids"] = [_first_subwords(words, spans) for words, spans in zip(all_words, offsets)]
            if "ner_tags" in batch:
                encoded["labels"] = [
                    self._align(words, firsts, batch["ner_tags"][row], label2id)
                    for words, firsts, row in zip(all_words, encoded["word_ids"], windows)
                ]
            return dict(encoded)

        return tokenized(examples, encode)

    def _align(
        self, words: list[int | None], firsts: list[int], tags: list[str], label2id: dict[str, int]
    ) -> list[int]:
        """Label each word's first subword; other subwords get -100 (or I- tags with label_all_subwords)."""
        labels = []
        for word, first in zip(words, firsts):
            if first >= 0:
                labels.append(label2id[tags[first]])
            elif word is not None and self.options.label_all_subwords:
                labels.append(label2id[_inside(tags[word])])
            else:
                labels.append(-100)
        return labels

    def pad_values(self, tokenizer: Any) -> dict[str, int]:
        return {"input_ids": tokenizer.pad_token_id or 0, "labels": -100, "word_ids": -1}

    def decode(
        self, examples: datasets.Dataset, features: datasets.Dataset, logits: np.ndarray, id2label: dict[int, str]
    ) -> list[list[str]]:
        """Average each word's first-subword probabilities (at the fitted temperature) over the windows holding it,
        then argmax; each word keeps its averaged probability of the tag it ends with. A model that decoded its
        own path (a CRF) gives no probabilities: its tags come as plain lists, its entities without scores.

        `word_ids` of a feature holds the word index at first subwords only (-1 elsewhere).
        """
        logits = np.asarray(logits)
        probs = softmax(logits / self.calibration.get("temperature", 1.0))
        sums = [np.zeros((len(tokens), probs.shape[-1])) for tokens in examples["tokens"]]
        counts = [np.zeros(len(tokens)) for tokens in examples["tokens"]]
        decided = True  # every word's logits a decoded path's (0 on it, NOT_CHOSEN off it)
        for row, (example, word_ids) in enumerate(zip(features["example_index"], features["word_ids"])):
            words = np.asarray(word_ids)
            positions = np.flatnonzero(words >= 0)
            np.add.at(sums[example], words[positions], probs[row, positions])
            np.add.at(counts[example], words[positions], 1)
            decided = decided and bool(np.isin(logits[row, positions], (0.0, NOT_CHOSEN)).all())
        label2id = {label: i for i, label in id2label.items()}
        taggings = []
        for scores, seen in zip(sums, counts):
            tags = _repair_iob([id2label[int(i)] if n else "O" for i, n in zip(scores.argmax(-1), seen)])
            mean = scores / np.maximum(seen, 1)[:, None]
            taggings.append(
                Tagging(tags, [float(mean[w, label2id[t]]) if seen[w] else 1.0 for w, t in enumerate(tags)])
            )
        return [list(tagging) for tagging in taggings] if decided else taggings

    @property
    def calibrates(self) -> bool:
        return self.options.temperature_scaling

    def calibrate(
        self, examples: datasets.Dataset, features: datasets.Dataset, logits: Any, id2label: dict[int, str]
    ) -> None:
        """The softmax temperature whose entity scores best match, on validation, whether each entity is exact."""
        self.fit_score_temperature(examples, features, logits, id2label, _confidences)

    def score(self, examples: datasets.Dataset, predictions: list[list[str]]) -> dict[str, float]:
        """seqeval's entity scores, and for decoded `Tagging`s `ece`: how far predicted entities' scores are from
        how often they are exact."""
        scores = entity_scores(examples["ner_tags"], [list(tags) for tags in predictions])  # seqeval: lists only
        if all(isinstance(tags, Tagging) for tags in predictions):
            scores["ece"] = expected_calibration_error(*_confidences(examples, predictions))
        return scores

    def write_artifacts(self, folder: Path, split: str, examples: datasets.Dataset, predictions: list[Any]) -> None:
        """`reliability_<split>.png` and `.json`: predicted entities exactly right, by their score."""
        if not all(isinstance(tags, Tagging) for tags in predictions):
            return
        write_reliability(
            folder, split, *_confidences(examples, predictions), self.calibration.get("temperature"), "entities"
        )

    def error_analysis(self, examples: datasets.Dataset, predictions: list[list[str]]) -> dict[str, Any]:
        """Each gold and predicted entity by kind, per type: `exact`; `wrong_type` (same words, another type);
        `wrong_boundary` (overlapping a gold entity, other words); `missed` (a gold entity nothing overlaps);
        `spurious` (a predicted entity overlapping no gold one). Examples show the sentence's words."""
        counts: dict[str, Counter[str]] = {}
        examples_by_kind: dict[str, list[dict[str, Any]]] = {}
        for tokens, gold_tags, tags in zip(examples["tokens"], examples["ner_tags"], predictions):
            for kind, entity_type, words in entity_errors(_entities(gold_tags), _entities(tags)):
                counts.setdefault(entity_type, Counter())[kind] += 1
                if kind != "exact" and len(examples_by_kind.setdefault(kind, [])) < ERROR_EXAMPLES:
                    examples_by_kind[kind].append(
                        {"words": " ".join(tokens), "entity": words, "gold": gold_tags, "predicted": tags}
                    )
        by_type = {entity_type: dict(found) for entity_type, found in sorted(counts.items())}
        return {"by_type": by_type, "examples": examples_by_kind}

    def examples_from_texts(self, texts: list[str]) -> datasets.Dataset:
        words = [[m.group() for m in WORD.finditer(text)] or [text] for text in texts]
        spans = [[[m.start(), m.end()] for m in WORD.finditer(text)] or [[0, len(text)]] for text in texts]
        return in_memory({"text": texts, "tokens": words, "spans": spans})

    def empty_prediction(self) -> dict[str, Any]:
        """No words, so no tags and no entities."""
        return {"text": "", "entities": [], "tags": []}

    def present(self, example: dict[str, Any], prediction: list[str]) -> dict[str, Any]:
        entities = []
        scores = prediction.entity_scores() if isinstance(prediction, Tagging) else [None] * len(_entities(prediction))
        for (kind, first, last), score in zip(_entities(prediction), scores):
            entity: dict[str, Any] = {
                "type": kind,
                "words": [first, last + 1],
                **({"score": score} if score is not None else {}),
            }
            if "spans" in example:
                start, end = example["spans"][first][0], example["spans"][last][1]
                entity.update(text=example["text"][start:end], start=start, end=end)
            else:
                entity["text"] = " ".join(example["tokens"][first : last + 1])
            entities.append(entity)
        source = "text" if "text" in example else "tokens"
        shown: dict[str, Any] = {source: example[source], "entities": entities, "tags": list(prediction)}
        if "ner_tags" in example:
            shown["gold"] = example["ner_tags"]
        return shown


def _confidences(examples: datasets.Dataset, predictions: list[Tagging]) -> tuple[list[float], list[bool]]:
    """Each predicted entity's score and whether a gold entity has its type and words."""
    scores, exact = [], []
    for gold_tags, tagging in zip(examples["ner_tags"], predictions):
        gold = set(_entities(gold_tags))
        scores += tagging.entity_scores()
        exact += [entity in gold for entity in _entities(tagging)]
    return scores, exact


def _tag_name(tag: Any, label_names: list[str] | None, position: int) -> str:
    if isinstance(tag, int) and not isinstance(tag, bool):
        if label_names is None or not 0 <= tag < len(label_names):
            raise ValueError(
                f"field 'ner_tags': integer tag {tag} at position {position} has no name "
                "(use string tags, or a JSON list of names beside the file)"
            )
        tag = label_names[tag]
    if not isinstance(tag, str) or not TAG.match(tag):
        raise ValueError(f"field 'ner_tags': tag {tag!r} at position {position} is not IOB2 (O, B-TYPE, I-TYPE)")
    return tag


def _first_subwords(words: list[int | None], spans: list[tuple[int, int]]) -> list[int]:
    """The word index at each word's first subword, -1 elsewhere.

    A first subword starts a new word at character 0 of it: a window that begins inside a word
    (its first word-piece in the previous window) must not label or score that piece as the word.
    """
    firsts, previous = [], None
    for word, (start, _) in zip(words, spans):
        firsts.append(word if word is not None and word != previous and start == 0 else -1)
        previous = word
    return firsts


def _inside(tag: str) -> str:
    return "I-" + tag[2:] if tag.startswith("B-") else tag


def _repair_iob(tags: list[str]) -> list[str]:
    """An I-X that does not continue an X entity starts one: strict IOB2 would drop it entirely."""
    repaired = []
    for tag in tags:
        if tag.startswith("I-") and (not repaired or repaired[-1][2:] != tag[2:]):
            tag = "B-" + tag[2:]
        repaired.append(tag)
    return repaired


def _entities(tags: list[str]) -> list[tuple[str, int, int]]:
    """(type, first word, last word) of each IOB2 entity."""
    spans: list[tuple[str, int, int]] = []
    for position, tag in enumerate(tags):
        if tag.startswith("B-"):
            spans.append((tag[2:], position, position))
        elif tag.startswith("I-") and spans and spans[-1][0] == tag[2:] and spans[-1][2] == position - 1:
            spans[-1] = (spans[-1][0], spans[-1][1], position)
    return spans


def _entity_starts(tags: list[str]) -> Iterator[tuple[int, str]]:
    """(position, type) of each tag that begins an entity: a `B-`, or an `I-` not continuing its type."""
    for position, tag in enumerate(tags):
        previous = tags[position - 1] if position else "O"
        if tag.startswith("B-") or tag.startswith("I-") and previous[2:] != tag[2:]:
            yield position, tag[2:]


def entity_errors(
    gold: list[tuple[str, int, int]], predicted: list[tuple[str, int, int]]
) -> Iterator[tuple[str, str, list[int]]]:
    """(kind, entity type, [first, last] word) for each entity of one sentence; the type is the gold one's
    except for a spurious entity, which has only its predicted type."""

    def overlaps(a: tuple[str, int, int], b: tuple[str, int, int]) -> bool:
        return a[1] <= b[2] and b[1] <= a[2]

    for entity in gold:
        if entity in predicted:
            yield "exact", entity[0], [entity[1], entity[2]]
        elif any(p[1:] == entity[1:] for p in predicted):
            yield "wrong_type", entity[0], [entity[1], entity[2]]
        elif any(overlaps(p, entity) for p in predicted):
            yield "wrong_boundary", entity[0], [entity[1], entity[2]]
        else:
            yield "missed", entity[0], [entity[1], entity[2]]
    for entity in predicted:
        if not any(overlaps(entity, g) for g in gold):
            yield "spurious", entity[0], [entity[1], entity[2]]

"""Extractive summarization: score every sentence (or dialogue turn), keep the best few.

Model (BertSum-style, Liu & Lapata 2019, without the inter-sentence layers): the document is
`[CLS] s1 [SEP] [CLS] s2 [SEP] ...` and only the `[CLS]` positions carry a label (`keep` or
`skip`), every other position -100. That is plain token classification, so any
`AutoModelForTokenClassification` encoder trains and loads unchanged. Consecutive sentences are
packed whole into windows of `data.max_length` tokens and a sentence that does not fit starts the
next window: every sentence is scored exactly once, however long the document (`data.stride`
is not used). A single sentence longer than a window keeps its first `max_length - 2` tokens.

Labels come from a greedy ROUGE oracle against the `summary`. It is computed once per
example by `datasets.map`, whose cache keeps it on disk beside the split's Arrow files (keyed
by the split's fingerprint and the splitting mode), so later epochs, evaluations and runs on
the same data reuse it; in-memory datasets (tests, `predict`) compute it on each call.

Selection: highest score first, at most `k` sentences and `max_words` words, skipping a sentence
that shares a word trigram with one already chosen (trigram blocking), shown in document order.
The untrained baselines `lead`, `textrank` and `random` (chance) are model names of this task
(`untrained_method`): they score sentences without a model and share selection and metrics.
Scoring takes a row's `references` (several gold summaries, as in DialogSum's test split) where
it has them, like the abstractive task, so extractive and abstractive figures compare directly.

`predict` takes one document per text. Dialogue turns are lines: a JSON line `{"text": "A: hi\\nB: hello"}`
gives real line breaks, and a text without any line break has its literal two-character `\\n`
read as one (so `--text 'A: hi\\nB: hello'` works in a shell).
"""

from __future__ import annotations

import re
import zlib
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any, Literal

import datasets
import networkx
import numpy as np
from pydantic import Field, model_validator
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.metrics.pairwise import cosine_similarity

from nlptasks.config import Section
from nlptasks.errors import UserInputError
from nlptasks.metrics.rouge import ROUGE_TYPES, greedy_oracle, rouge
from nlptasks.tasks.base import Task, in_memory, softmax, tokenized
from nlptasks.tasks.summary_rows import SUMMARY_FEATURES, check_summary_row, gold_summaries, length_report
from nlptasks.text import Span, split_sentences, split_turns

LABELS = ["skip", "keep"]
WORD = re.compile(r"\w+")


class ExtractiveOptions(Section):
    split: Literal["turns", "sentences"] = "turns"
    """`turns`: one unit per non-blank line (dialogue turns); `sentences`: the rule-based splitter, for prose."""
    k: int | None = Field(default=3, gt=0)
    """Most sentences in a summary (None: only `max_words` bounds it)."""
    max_words: int | None = Field(default=None, gt=0)
    """Most words in a summary; a sentence that would overrun it is skipped (None: only `k` bounds it)."""
    trigram_blocking: bool = True
    """Skip a sentence sharing a word trigram with one already chosen (redundancy control, BertSum)."""
    pooling: Literal["marker", "mean"] = "marker"
    """`marker`: label and score each sentence at its `[CLS]` (BertSum); `mean`: every token of a sentence
    carries its label and its score is the mean over them (dense supervision, like mean-pooled encoders)."""

    @model_validator(mode="after")
    def _bounded(self) -> ExtractiveOptions:
        if self.k is None and self.max_words is None:
            raise ValueError("a summary needs a bound: set k, max_words or both")
        return self


class ExtractiveSummarization(Task):
    name = "extractive-summarization"
    input_column = "document"
    target_column = "summary"
    main_metric = "rouge1"
    headline_metrics = ROUGE_TYPES
    auto_model = "AutoModelForTokenClassification"
    pipeline_tag = "summarization"
    Options = ExtractiveOptions

    @classmethod
    def features(cls) -> datasets.Features:
        return SUMMARY_FEATURES

    @classmethod
    def check_row(cls, row: dict[str, Any], label_names: list[str] | None) -> dict[str, Any]:
        return check_summary_row(row)

    def label_list(self, train: datasets.Dataset) -> list[str]:
        return LABELS

    def spans(self, document: str) -> list[Span]:
        return split_turns(document) if self.options.split == "turns" else split_sentences(document)

    def sentences(self, document: str) -> list[str]:
        return [document[start:end] for start, end in self.spans(document)]

    def with_oracle(self, examples: datasets.Dataset) -> datasets.Dataset:
        """The examples with an `oracle` column: indices of the greedy ROUGE oracle's sentences."""
        return examples.map(_oracle_column, batched=True, fn_kwargs={"split": self.options.split}, desc="ROUGE oracle")

    def featurize(self, examples: datasets.Dataset, tokenizer: Any, label2id: dict[str, int]) -> datasets.Dataset:
        cls, sep = _markers(tokenizer)
        segments = "token_type_ids" in tokenizer.model_input_names
        if "summary" in examples.column_names:
            examples = self.with_oracle(examples)

        def encode(batch: dict[str, list], indices: list[int]) -> dict[str, list]:
            units = [self.sentences(document) for document in batch["document"]]
            flat = tokenizer(
                [text for texts in units for text in texts],
                add_special_tokens=False,
                truncation=True,
                max_length=self.max_length - 2,
            )["input_ids"]
            keys = ["input_ids", "attention_mask", "sentence_ids", "example_index"]
            keys += (["token_type_ids"] if segments else []) + (["labels"] if "oracle" in batch else [])
            encoded: dict[str, list] = {key: [] for key in keys}
            offset = 0
            for row, texts in enumerate(units):
                ids, offset = flat[offset : offset + len(texts)], offset + len(texts)
                keep = set(batch["oracle"][row]) if "oracle" in batch else None
                for window in _windows([len(piece) + 2 for piece in ids], self.max_length):
                    pieces = [ids[j] for j in window]
                    _add_window(encoded, pieces, window.start, (cls, sep), self.options.pooling, keep, label2id)
                    encoded["example_index"].append(indices[row])
            return encoded

        return tokenized(examples, encode)

    def pad_values(self, tokenizer: Any) -> dict[str, int]:
        return {"input_ids": tokenizer.pad_token_id or 0, "labels": -100, "sentence_ids": -1}

    def decode(
        self, examples: datasets.Dataset, features: datasets.Dataset, logits: np.ndarray, id2label: dict[int, str]
    ) -> list[dict[str, Any]]:
        """A sentence's score is its mean `keep` probability over the positions `sentence_ids` gives it (-1: none)."""
        keep = {label: int(i) for i, label in id2label.items()}["keep"]
        units = [self.sentences(document) for document in examples["document"]]
        totals, counts = [np.zeros(len(texts)) for texts in units], [np.zeros(len(texts)) for texts in units]
        for row, (example, sentence_ids) in enumerate(zip(features["example_index"], features["sentence_ids"])):
            ids = np.asarray(sentence_ids)
            positions = np.flatnonzero(ids >= 0)
            np.add.at(totals[example], ids[positions], softmax(logits[row, positions])[:, keep])
            np.add.at(counts[example], ids[positions], 1)
        return [self._prediction(texts, total / count) for texts, total, count in zip(units, totals, counts)]

    def _prediction(self, texts: list[str], scores: np.ndarray) -> dict[str, Any]:
        options = self.options
        indices = select(texts, scores, options.k, options.max_words, options.trigram_blocking)
        return {"indices": indices, "scores": [float(score) for score in scores]}

    def score(self, examples: datasets.Dataset, predictions: list[dict[str, Any]]) -> dict[str, float]:
        """Mean ROUGE F of the predictions, and of the oracle (`oracle_*`: the ceiling of selections for `summary`)."""
        units = [self.sentences(document) for document in examples["document"]]
        oracle = self.with_oracle(examples)["oracle"]
        golds = gold_summaries(examples)
        metrics = rouge(golds, [[t[i] for i in p["indices"]] for t, p in zip(units, predictions)])
        ceiling = rouge(golds, [[t[i] for i in chosen] for t, chosen in zip(units, oracle)])
        return metrics | {f"oracle_{key}": value for key, value in ceiling.items()}

    def error_analysis(self, examples: datasets.Dataset, predictions: list[dict[str, Any]]) -> dict[str, Any]:
        units = [self.sentences(document) for document in examples["document"]]
        chosen = [" ".join(texts[i] for i in p["indices"]) for texts, p in zip(units, predictions)]
        return {"length": length_report(chosen, gold_summaries(examples))}

    def examples_from_texts(self, texts: list[str]) -> datasets.Dataset:
        documents = [text if "\n" in text else text.replace("\\n", "\n") for text in texts]
        for number, document in enumerate(documents, 1):
            if not document.strip():
                raise UserInputError(f"predict: text {number} is empty; there is nothing to summarize")
        return in_memory({"document": documents})

    def empty_prediction(self) -> dict[str, Any]:
        """An empty document has no sentences to choose: an empty summary."""
        return {"document": "", "summary": "", "sentences": [], "num_sentences": 0}

    def present(self, example: dict[str, Any], prediction: dict[str, Any]) -> dict[str, Any]:
        """The chosen sentences with their index, character span in the document, and score."""
        document, spans, scores = example["document"], self.spans(example["document"]), prediction["scores"]
        chosen = [
            {"index": i, "start": start, "end": end, "text": document[start:end], "score": scores[i]}
            for i, (start, end) in ((i, spans[i]) for i in prediction["indices"])
        ]
        shown = {"document": document, "summary": "\n".join(c["text"] for c in chosen), "sentences": chosen}
        shown["num_sentences"] = len(spans)
        if "summary" in example:
            shown["gold"] = example["summary"]
        return shown

    def untrained_method(self, name: str) -> Callable[[datasets.Dataset], list[Any]] | None:
        scorer = UNTRAINED_SCORERS.get(name)
        return None if scorer is None else partial(self._predict_untrained, scorer)

    def _predict_untrained(
        self, scorer: Callable[[list[str]], np.ndarray], examples: datasets.Dataset
    ) -> list[dict[str, Any]]:
        units = [self.sentences(document) for document in examples["document"]]
        return [self._prediction(texts, scorer(texts)) for texts in units]


# ---------------------------------------------------------------- model inputs


def _markers(tokenizer: Any) -> tuple[int, int]:
    if tokenizer.cls_token_id is None or tokenizer.sep_token_id is None:
        raise UserInputError(
            "model: extractive summarization marks sentences with [CLS] ... [SEP] and this tokenizer has "
            "no CLS/SEP tokens; use a BERT-style encoder (e.g. minilm-l6)"
        )
    return tokenizer.cls_token_id, tokenizer.sep_token_id


def _windows(lengths: list[int], room: int) -> list[range]:
    """Consecutive sentences packed whole into windows of at most `room` tokens each."""
    windows, first, used = [], 0, 0
    for index, length in enumerate(lengths):
        if used and used + length > room:
            windows.append(range(first, index))
            first, used = index, 0
        used += length
    return windows + [range(first, len(lengths))] if lengths else windows


def _add_window(
    encoded: dict[str, list],
    pieces: list[list[int]],
    first: int,
    markers: tuple[int, int],
    pooling: str,
    keep: set[int] | None,
    label2id: dict[str, int],
) -> None:
    """One feature: `[CLS] piece [SEP]` per sentence; the sentence's index and label at its `[CLS]`
    (`marker` pooling) or at all its positions (`mean`), -1 and -100 elsewhere.

    Token types alternate per sentence (BertSum's interval segments) for models that have them.
    """
    cls, sep = markers
    row: dict[str, list[int]] = {key: [] for key in encoded if key != "example_index"}
    for j, piece in enumerate(pieces, first):
        width = len(piece) + 2
        owners = [j] * width if pooling == "mean" else [j] + [-1] * (width - 1)
        row["input_ids"] += [cls, *piece, sep]
        row["sentence_ids"] += owners
        if "token_type_ids" in row:
            row["token_type_ids"] += [j % 2] * width
        if keep is not None:
            label = label2id["keep" if j in keep else "skip"]
            row["labels"] += [label if owner >= 0 else -100 for owner in owners]
    row["attention_mask"] = [1] * len(row["input_ids"])
    for key, values in row.items():
        encoded[key].append(values)


# ---------------------------------------------------------------- selection and baselines


def select(
    texts: Sequence[str], scores: Sequence[float], k: int | None, max_words: int | None, trigram_blocking: bool
) -> list[int]:
    """Indices of the summary's sentences in document order: best score first, within the budget.

    A sentence that would overrun `max_words` or repeat a chosen trigram is skipped and the next
    one tried; when none fits the budget the single best sentence is the summary (never empty).
    Ties go to the earlier sentence.
    """
    chosen: list[int] = []
    words, seen = 0, set()
    for index in np.argsort(-np.asarray(scores, dtype=float), kind="stable"):
        if k is not None and len(chosen) == k:
            break
        length, grams = len(texts[index].split()), trigrams(texts[index])
        if (max_words is not None and words + length > max_words) or (trigram_blocking and grams & seen):
            continue
        chosen.append(int(index))
        words, seen = words + length, seen | grams
    return sorted(chosen) or [int(np.argmax(scores))]


def trigrams(text: str) -> set[tuple[str, ...]]:
    words = WORD.findall(text.lower())
    return set(zip(words, words[1:], words[2:]))


def lead_scores(texts: list[str]) -> np.ndarray:
    """Lead-k: earlier sentences score higher (news and dialogue openings state the topic)."""
    return 1.0 - np.arange(len(texts)) / len(texts)


def random_scores(texts: list[str]) -> np.ndarray:
    """Chance: random scores, seeded by the document so every run and `predict` repeat them."""
    return np.random.default_rng(zlib.crc32("\n".join(texts).encode())).random(len(texts))


def textrank_scores(texts: list[str]) -> np.ndarray:
    """TextRank (Mihalcea & Tarau, 2004): PageRank over sentences weighted by TF-IDF cosine similarity.

    Sentences sharing no word get no edge; a graph without edges ranks uniformly, which the
    tie-break of `select` turns into Lead-k.
    """
    try:
        vectors = TfidfVectorizer(stop_words="english").fit_transform(texts)
    except ValueError:  # no word left after stop words: nothing to build a graph from
        return lead_scores(texts)
    similarity = cosine_similarity(vectors)
    np.fill_diagonal(similarity, 0.0)
    ranks = networkx.pagerank(networkx.from_numpy_array(similarity), max_iter=500)
    return np.array([ranks[i] for i in range(len(texts))])


UNTRAINED_SCORERS: dict[str, Callable[[list[str]], np.ndarray]] = {
    "lead": lead_scores,
    "textrank": textrank_scores,
    "random": random_scores,
}
"""Model names that need no model: each scores a document's sentences directly."""


# ---------------------------------------------------------------- oracle labels


def _oracle_column(batch: dict[str, list], split: str) -> dict[str, list]:
    splitter = split_turns if split == "turns" else split_sentences
    units = [[document[start:end] for start, end in splitter(document)] for document in batch["document"]]
    return {"oracle": [greedy_oracle(texts, summary) for texts, summary in zip(units, batch["summary"])]}

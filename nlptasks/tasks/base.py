"""What a task module says: its columns, how rows become features, and how outputs become answers.

Everything else (loading, the model, training, evaluation loops, the run directory, predict) is
shared. Evaluation and `predict` run the same path: `featurize -> model -> decode`, so a
prediction on raw text is scored exactly as a validation example is.
"""

from __future__ import annotations

import json
import uuid
from abc import ABC, abstractmethod
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, NamedTuple

import datasets
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from datasets.table import InMemoryTable

from nlptasks.config import Section
from nlptasks.metrics.calibration import fitted_score_temperature

if TYPE_CHECKING:
    from nlptasks.recipe import Recipe


class NoOptions(Section):
    """A task without settings of its own."""


class Generation(NamedTuple):
    """One generated output as a generating task's `decode` receives it."""

    text: str
    """Detokenized, special tokens removed."""
    tokens: int
    """Tokens generated before the end of sequence (special tokens not counted)."""


class Task(ABC):
    name: ClassVar[str]
    input_column: ClassVar[str]
    target_column: ClassVar[str]
    main_metric: str
    """Validation metric used to pick the best checkpoint unless the recipe names another."""
    headline_metrics: ClassVar[tuple[str, ...]]
    """The metrics a run reports up front, in this order (`run`'s table, `summary.md`, `compare`); the
    per-class, per-type and diagnostic rest is in metrics.json. Metrics a run lacks are left out."""
    auto_model: ClassVar[str]
    """The `transformers` Auto class that gives any architecture this task's head."""
    pipeline_tag: ClassVar[str]
    """The Hub's task category for a model of this task (a model card's `pipeline_tag`)."""
    Options: ClassVar[type[Section]] = NoOptions
    label_names: ClassVar[tuple[str, ...]] = ("labels",)
    """Feature columns holding training targets: the Trainer's `label_names`, never inputs at predict."""
    output_names: ClassVar[tuple[str, ...]] = ("logits",)
    """Model outputs `decode` reads: one reaches it as an array, several as a tuple in this order."""
    model_outputs: ClassVar[tuple[str, ...]] = ()
    """The built model's outputs that `wrap_model`'s module reads, where it wraps one; empty: `output_names`.
    An ONNX export is of the built model, so the same wrapper runs over it."""
    split_into_words: ClassVar[bool] = False
    """Inputs are lists of words (tokenized as `is_split_into_words`), each word labelled: layers over
    words (a character CNN, a CRF) apply."""
    input_fields: ClassVar[tuple[str, ...]] = ("text",)
    """Fields of one raw `predict` input; with several, each input is a JSON object holding them."""
    integer_labels: ClassVar[bool] = False
    """Rows may give class labels as integers, named by a list of names (`check_row`'s `label_names`)."""
    generates: ClassVar[bool] = False
    """Outputs are generated text: evaluation and `predict` call the model's `generate` with the recipe's
    `generation` settings, and `decode` receives one `Generation` per feature instead of logits."""

    def __init__(self, options: Section, max_length: int, stride: int) -> None:
        self.options = options
        self.max_length = max_length
        self.stride = stride
        self.calibration: dict[str, float] = {}
        """Decision settings tuned on validation (see `calibrate`); saved in the model config."""

    @property
    def calibrates(self) -> bool:
        """Whether `calibrate` tunes anything, so the core spends a validation pass on it only then."""
        return False

    def calibrate(
        self, examples: datasets.Dataset, features: datasets.Dataset, logits: Any, id2label: dict[int, str]
    ) -> None:
        """Tune decision settings (a multi-label threshold, a no-answer margin) on validation logits."""
        return None

    def fit_score_temperature(
        self,
        examples: datasets.Dataset,
        features: datasets.Dataset,
        logits: Any,
        id2label: dict[int, str],
        confidences: Callable[[datasets.Dataset, list[Any]], tuple[list[float], list[bool]]],
    ) -> None:
        """`calibration["temperature"]`: the one whose decoded scores best match, on validation, whether each
        prediction is right (`confidences` of the examples and their predictions)."""

        def scored(temperature: float) -> tuple[list[float], list[bool]]:
            self.calibration = {"temperature": temperature}
            return confidences(examples, self.decode(examples, features, logits, id2label))

        self.calibration = {"temperature": fitted_score_temperature(scored)}

    def loss_function(self, train: datasets.Dataset, label2id: dict[str, int]) -> Callable[..., Any] | None:
        """A Trainer `compute_loss_func(outputs, labels, num_items_in_batch)`; None keeps the model's own loss."""
        return None

    def use_model_family(self, family: str) -> None:
        """Learn the family (`catalog.Family`) of the model about to be built or loaded, before `auto_model` is read.

        Most tasks treat every family alike; a text-to-text task reads a decoder-only model's
        inputs, labels and Auto class differently from an encoder-decoder's.
        """
        return None

    def training_examples(self, train: datasets.Dataset) -> datasets.Dataset:
        """The training split as this task learns from it (supervised SimCSE: the positive pairs only)."""
        return train

    def wrap_model(self, model: Any) -> Any:
        """The model as trained, evaluated and predicted with: the built or loaded one, or a module around it.

        A wrapper (SimCSE's pooling and contrastive loss) passes through `config` and saves what it
        wraps with its own `save_pretrained`.
        """
        return model

    def training_collator(self, tokenizer: Any) -> Callable[[list[dict[str, Any]]], dict[str, Any]] | None:
        """How training batches are built where they differ from evaluation's padded rows (packing); None: alike."""
        return None

    def write_artifacts(self, folder: Path, split: str, examples: datasets.Dataset, predictions: list[Any]) -> None:
        """Files beyond metrics and predictions a task writes for a scored split (plots, tables)."""
        return None

    @classmethod
    def check_recipe(cls, recipe: Recipe) -> None:
        """What this task needs of the recipe's other sections; a ValueError names the key, as a recipe error does."""
        return None

    @classmethod
    @abstractmethod
    def features(cls) -> datasets.Features:
        """Arrow schema of canonical rows."""

    @classmethod
    def shaped_row(cls, row: dict[str, Any]) -> dict[str, Any]:
        """The row in this task's own layout, for tasks whose data also comes in another (Hub) layout."""
        return row

    @classmethod
    @abstractmethod
    def check_row(cls, row: dict[str, Any], label_names: list[str] | None) -> dict[str, Any]:
        """A canonical row (only the task's columns, labels as names); ValueError names the field."""

    @abstractmethod
    def label_list(self, train: datasets.Dataset) -> list[str]:
        """Every label the model can output, in a stable order."""

    @abstractmethod
    def featurize(self, examples: datasets.Dataset, tokenizer: Any, label2id: dict[str, int]) -> datasets.Dataset:
        """Model inputs; each feature keeps `example_index` so outputs map back to examples."""

    @abstractmethod
    def pad_values(self, tokenizer: Any) -> dict[str, int]:
        """Padding value per list-valued feature (the rest pad with 0)."""

    @abstractmethod
    def decode(
        self, examples: datasets.Dataset, features: datasets.Dataset, logits: np.ndarray, id2label: dict[int, str]
    ) -> list[Any]:
        """One prediction per example from the logits of its features, in any feature order.

        Features map to examples through `example_index` only, so evaluation can batch them
        sorted by length. A generating task gets a list of `Generation`s, one per feature, as `logits`.
        """

    @abstractmethod
    def score(self, examples: datasets.Dataset, predictions: list[Any]) -> dict[str, float]:
        """Metrics of predictions against the examples' gold labels."""

    @abstractmethod
    def examples_from_texts(self, texts: list[str]) -> datasets.Dataset:
        """Raw input strings as examples (no gold labels) for `predict`."""

    @abstractmethod
    def present(self, example: dict[str, Any], prediction: Any) -> dict[str, Any]:
        """A JSON-ready prediction for one example, as `predict` prints it."""

    def empty_prediction(self) -> dict[str, Any]:
        """What `predict` answers for a blank input, which no model reads: the answer's shape with no content.

        Answering (rather than skipping) keeps output N aligned with input N; `predict` marks it `empty`.
        """
        return {field: "" for field in self.input_fields}

    def untrained_method(self, name: str) -> Callable[[datasets.Dataset], list[Any]] | None:
        """For a model name that needs no model or training (Lead-k, TextRank, BM25): examples -> predictions.

        The predictions are what `decode` returns, so the training core skips building and training
        and scores, records and `predict`s them like a trained model's. None for any other name.
        """
        return None

    def input_text(self, example: dict[str, Any]) -> str:
        """The example's input as one text: what a duplicate, or a leak across splits, is judged on."""
        value = example[self.input_column]
        return " ".join(value) if isinstance(value, list) else str(value)

    def label_counts(self, examples: datasets.Dataset) -> Counter[str]:
        """How often each label occurs (NER: entities per type); empty for a task without class labels."""
        return Counter()

    def data_problems(self, examples: datasets.Dataset) -> dict[str, list[str]]:
        """Rows that pass the row checks yet look wrong, by kind of problem: `row N: what` for each."""
        return {}

    def error_analysis(self, examples: datasets.Dataset, predictions: list[Any]) -> dict[str, Any]:
        """The split's errors by kind, with examples (`errors_<split>.json`); empty where the task has none."""
        return {}

    def cut_targets(self, examples: datasets.Dataset, tokenizer: Any) -> int:
        """Targets longer than training keeps (a generating task's target length); 0 where nothing is cut."""
        return 0

    def text_columns(self) -> tuple[str, ...]:
        """Columns whose text a word vocabulary is built from (the recurrent baselines)."""
        return (self.input_column,)

    def corpus(self, examples: datasets.Dataset) -> Iterator[str]:
        """Every text of the examples (a list-valued column: each item), to train a tokenizer on."""
        for column in self.text_columns():
            for value in examples[column]:
                yield from value if isinstance(value, list) else [value]


def tokenized(
    examples: datasets.Dataset, encode: Callable[[dict[str, list[Any]], list[int]], dict[str, Any]]
) -> datasets.Dataset:
    """Examples through a task's batched `encode(batch, indices)` into features, the example columns dropped.

    An in-memory dataset (what `predict` builds from texts) is never cached on disk, yet `map`
    dill-pickles `encode` and the tokenizer it closes over to fingerprint the result: a quarter of a
    second per call, whatever the number of texts. Such a dataset gets a fresh fingerprint instead.
    """
    fresh = {} if examples.cache_files else {"new_fingerprint": uuid.uuid4().hex}
    return examples.map(
        encode, batched=True, with_indices=True, remove_columns=examples.column_names, desc="Tokenizing", **fresh
    )


TEXT_PAIR_FEATURES = datasets.Features({"text": datasets.Value("string"), "text_pair": datasets.Value("string")})
"""A text, or a pair of them (`text_pair` None where there is none), typed even when no row has a pair."""


def text_pair_examples(rows: list[dict[str, Any]]) -> datasets.Dataset:
    """Rows of `text` and an optional `text_pair` (`text_or_json_row`'s) as `predict`'s examples."""
    return in_memory(
        {"text": [r["text"] for r in rows], "text_pair": [r.get("text_pair") for r in rows]}, TEXT_PAIR_FEATURES
    )


def in_memory(columns: dict[str, list[Any]], features: datasets.Features | None = None) -> datasets.Dataset:
    """`predict`'s inputs as a dataset, as `Dataset.from_dict(columns, features)` gives it.

    `from_dict` names a new dataset by pickling its whole state, three quarters of its cost and a few
    milliseconds of every one-input `predict` call; a dataset never cached on disk needs only a unique name.
    """
    if features is None:
        table = pa.Table.from_pydict(columns)
        features = datasets.Features.from_arrow_schema(table.schema)
    else:
        table = pa.Table.from_pydict(features.encode_batch(columns), schema=features.arrow_schema)
    info = datasets.DatasetInfo(features=features)
    return datasets.Dataset(InMemoryTable(table), info=info, fingerprint=uuid.uuid4().hex)


def lengths_of(features: datasets.Dataset) -> list[int]:
    """Token counts per feature, for length-grouped batching, counted by Arrow from its list offsets:
    reading every token list into Python costs a thousand times as much."""
    return pc.list_value_length(features.with_format("arrow")["input_ids"]).to_numpy().tolist()


def sorted_by_length(features: datasets.Dataset) -> datasets.Dataset:
    """The features shortest first (an index mapping, no copy): evaluation batches pad little."""
    return features.select(np.argsort(lengths_of(features), kind="stable"))


NOT_CHOSEN = -1e4
"""The logit a model gives every label off a path it decoded itself (a CRF's Viterbi path: 0 on the path), and
positions no pointer may choose: `decode` reads such outputs as decisions, not probabilities."""


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = np.exp(logits - logits.max(-1, keepdims=True))
    return shifted / shifted.sum(-1, keepdims=True)


def json_input(value: str | dict[str, Any], fields: tuple[str, ...]) -> dict[str, str]:
    """One raw input with several fields (a JSON object, or its text) as `{field: text}`.

    ValueError says what is wrong; callers add where (file:line, input number).
    """
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            value = None
    if not isinstance(value, dict):
        raise ValueError(f"expected a JSON object with the fields {list(fields)}")
    for field in fields:
        text = value.get(field)
        if not isinstance(text, str) or not text.strip():
            raise ValueError(f"field '{field}' must be a non-empty string, got {text!r}")
    return {field: value[field] for field in fields}


def nonblank(value: Any, field: str) -> str:
    """The value of a row's text field; ValueError naming the field unless it is non-blank text."""
    if not isinstance(value, str) or not value.strip():
        shown = repr(value) if not isinstance(value, str) else "blank text"
        raise ValueError(f"field '{field}' must be non-empty text, got {shown}")
    return value


def text_or_json_row(text: str | dict[str, Any]) -> dict[str, Any]:
    """A raw input as a row: a dict (from Python) or a JSON object line with a `text` field as it is,
    any other line as the text."""
    if isinstance(text, dict):
        if not isinstance(text.get("text"), str):
            raise ValueError(f"field 'text' must be a string, got {text.get('text')!r}")
        return text
    if text.lstrip().startswith("{"):
        try:
            row = json.loads(text)
        except json.JSONDecodeError:
            return {"text": text}
        if isinstance(row, dict) and isinstance(row.get("text"), str):
            return row
    return {"text": text}

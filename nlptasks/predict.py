"""Prediction from a run directory: raw text in, JSON-ready answers out, in bounded memory.

Inputs stream through in chunks, so `predict` on a million lines holds one chunk at a time.
Within a chunk, features are batched shortest first so padding stays small.
"""

from __future__ import annotations

import inspect
import itertools
import json
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import datasets
import numpy as np
import torch
from peft import PeftModel
from transformers import AutoConfig, GenerationConfig

from nlptasks import models, sharding
from nlptasks.adapters import base_model_of, is_adapter_folder
from nlptasks.attention import CrossAttention, cross_attention
from nlptasks.config import validate_section
from nlptasks.data import pad_batch
from nlptasks.engines.ctranslate2 import CTranslate2Model, is_ctranslate2_folder
from nlptasks.engines.onnx import OnnxModel
from nlptasks.errors import UserInputError
from nlptasks.models import generation
from nlptasks.recipe import GenerationSettings, Recipe, load_recipe
from nlptasks.rundir import RunDir
from nlptasks.tasks import task_for
from nlptasks.tasks.base import Task, json_input, lengths_of, sorted_by_length

CPU_BATCH_TOKENS = 512
"""A CPU forward pass's bound on rows x padded length: tokens per second peak at a few hundred tokens
a pass (activations that stay in cache), and fewer rows pad less where lengths differ, as in a
service's batch of whatever arrived together."""

MIN_BATCH_ROWS = 4
"""Rows a bounded batch may always take: long windows (QA's 384 tokens) still run several to a pass."""


def default_batch_tokens() -> int | None:
    """`CPU_BATCH_TOKENS` on a CPU; no bound on a GPU, which wants its batches large."""
    return None if torch.cuda.is_available() else CPU_BATCH_TOKENS


class Predictor:
    def __init__(
        self,
        run_dir: str | Path,
        batch_size: int = 64,
        chunk_size: int = 1024,
        generation: dict[str, Any] | None = None,
        max_batch_tokens: int | None | Literal["auto"] = "auto",
    ) -> None:
        """`max_batch_tokens` bounds the rows x padded length of an encoder's forward pass (`batch_bounds`);
        "auto" is `default_batch_tokens()`, None no bound. Generation batches by `batch_size` alone."""
        sharding.share_cpu_threads()
        self.run_dir = RunDir.read(run_dir)
        if not self.run_dir.recipe.is_file():
            raise UserInputError(f"{run_dir}: not a finished run directory (no recipe.yaml)")
        self.recipe: Recipe = load_recipe(self.run_dir.recipe)
        self.task = task_for(self.recipe)
        self.batch_size = batch_size
        self.chunk_size = chunk_size
        self.max_batch_tokens = default_batch_tokens() if max_batch_tokens == "auto" else max_batch_tokens
        self.untrained = self.task.untrained_method(self.recipe.model)
        """A method without a model (Lead-k, TextRank), or None: then the attributes below hold the model."""
        self.model: torch.nn.Module | None = None
        self.generator: Any = None
        """What decodes a generating task: the model, or its CTranslate2 conversion (`generation.engine`)."""
        self._scratch: tempfile.TemporaryDirectory | None = None
        self.tokenizer: Any = None
        self.id2label: dict[int, str] = {}
        self.label2id: dict[str, int] = {}
        self._inputs: set[str] = set()
        self._adapters: dict[str, _AdapterSettings] = {}
        if self.untrained is None:
            self._load_model()
        if (
            generation
            or self.task.generates
            and self.model is not None
            and self.recipe.generation.engine != "transformers"
        ):
            self.set_generation(**(generation or {}))

    def _load_model(self) -> None:
        if not self.run_dir.model.is_dir():
            raise UserInputError(f"{self.run_dir.root}: not a finished run directory (no model/)")
        name = self.run_dir.root.name
        model, self.tokenizer = models.load(
            self.run_dir.model, self.task, quantized=self.recipe.method == "qlora", adapter_name=name
        )
        self.model = self.task.wrap_model(model).eval()
        self.generator = self.model
        self._inputs = accepted_inputs(self.model)
        self.task.calibration = getattr(self.model.config, "task_calibration", None) or {}
        self.id2label = self.model.config.id2label
        self.label2id = {label: i for i, label in self.id2label.items()}
        if isinstance(self.model, PeftModel):
            self._adapters[name] = _AdapterSettings.of(self.run_dir.model)

    def set_generation(self, **settings: Any) -> None:
        """Decode from now on with the recipe's `generation` settings changed by these (`num_beams=1`, ...).

        Lets one trained model be compared under greedy, beam and sampling decoding without retraining.
        """
        if self.model is None:
            raise UserInputError(f"{self.run_dir.root}: '{self.recipe.model}' is an untrained method; nothing decodes")
        values = {**self.recipe.generation.model_dump(), **settings}
        chosen = validate_section(GenerationSettings, values, "generation")
        if isinstance(self.model, CTranslate2Model) and chosen.engine != "ctranslate2":
            raise UserInputError(
                f"{self.run_dir.root}: a CTranslate2 export decodes with generation.engine ctranslate2 only"
            )
        generation.configure(self.model, chosen)
        if chosen.engine == "transformers":
            self.generator = self.model
        else:
            source = self.generator if isinstance(self.generator, CTranslate2Model) else self.model
            self.generator = generation.generator(source, self.tokenizer, chosen, self._conversion_folder)

    def _conversion_folder(self) -> Path:
        """The run's own CTranslate2 conversion, or a scratch folder for one made now: a run is never written to."""
        if is_ctranslate2_folder(self.run_dir.model):
            return self.run_dir.model
        self._scratch = self._scratch or tempfile.TemporaryDirectory(prefix="nlptasks-ct2-")
        return Path(self._scratch.name)

    @property
    def adapters(self) -> list[str]:
        """Names of the adapters loaded over this predictor's base model; the active one first."""
        active = self.model.active_adapter if self._adapters else None
        return sorted(self._adapters, key=lambda name: name != active)

    def add_adapter(self, run_dir: str | Path, name: str | None = None) -> str:
        """Load another adapter run of the same task, labels and base model, sharing this predictor's base weights.

        Returns its name (the run directory's name unless given); `use_adapter` switches to it.
        """
        other = RunDir.read(run_dir)
        if not self._adapters:
            raise UserInputError(f"{self.run_dir.root}: not an adapter run (method lora or qlora): no base to share")
        if not (other.recipe.is_file() and is_adapter_folder(other.model)):
            raise UserInputError(f"{run_dir}: not an adapter run (no recipe.yaml and model/adapter_config.json)")
        recipe = load_recipe(other.recipe)
        name = name or other.root.name
        mismatch = {
            "task": (self.recipe.task, recipe.task),
            "method": (self.recipe.method, recipe.method),
            "base model": (base_model_of(self.run_dir.model), base_model_of(other.model)),
            "labels": (self.id2label, AutoConfig.from_pretrained(other.model).id2label),
        }
        for what, (mine, theirs) in mismatch.items():
            if mine != theirs:
                raise UserInputError(f"{run_dir}: its {what} ({theirs}) differs from {self.run_dir.root}'s ({mine})")
        if name in self._adapters:
            raise UserInputError(f"adapter name '{name}' is taken; pass another name")
        if isinstance(self.generator, CTranslate2Model):
            raise UserInputError(
                f"{run_dir}: adapters share one base under generation.engine transformers only; CTranslate2 runs each "
                "run's merged model (load it on its own)"
            )
        self.model.load_adapter(str(other.model), adapter_name=name)
        self._adapters[name] = _AdapterSettings.of(other.model)
        return name

    def use_adapter(self, name: str) -> None:
        """Predict with adapter `name` from now on, with its own decision settings and decoding."""
        if name not in self._adapters:
            raise UserInputError(f"no adapter '{name}'; loaded: {', '.join(self._adapters) or 'none'}")
        self.model.set_adapter(name)
        settings = self._adapters[name]
        self.task.calibration = settings.calibration
        if settings.generation is not None:
            self.model.get_base_model().generation_config = settings.generation

    def predict(self, texts: str | dict[str, str] | Iterable[str | dict[str, str]]) -> list[dict[str, Any]]:
        """Predictions for one input or many, in input order.

        An input is a text, or for tasks with several input fields (QA) a dict or JSON object of them:
        `{"question": ..., "context": ...}`.
        """
        return list(self.stream([texts] if isinstance(texts, str | dict) else texts))

    def stream(self, texts: Iterable[str | dict[str, str]]) -> Iterator[dict[str, Any]]:
        """One prediction per input, in input order, a chunk at a time.

        A blank text gets the task's empty answer marked `"empty": true` and never reaches the
        model, so output N is always input N (a blank line in a file included).
        """
        iterator = iter(texts)
        while chunk := list(itertools.islice(iterator, self.chunk_size)):
            filled = [text for text in chunk if not is_blank(text)]
            predictions = self._predict_examples(self.task.examples_from_texts(filled)) if filled else iter(())
            for text in chunk:
                yield {**self.task.empty_prediction(), "empty": True} if is_blank(text) else next(predictions)

    def label_names_for_files(self) -> list[str] | None:
        """What an integer label means in a data file with no names file beside it, for `load_splits(label_names=)`.

        The names the run's training data read its integers through (`data_label_names` in the model
        config), where it had them; else the model's classes in id order, unless a class is itself
        an integer ("0" stays "0" for a model trained on "0" and "1"). None for a task without classes.
        """
        if self.untrained is not None or not self.task.integer_labels:
            return None
        recorded = getattr(self.model.config, "data_label_names", None)
        if recorded:
            return list(recorded)
        names = [self.id2label[i] for i in sorted(self.id2label)]
        return None if any(name.strip().isdigit() for name in names) else names

    def score(self, examples: datasets.Dataset) -> dict[str, float]:
        """The task's metrics on labelled examples."""
        return self.task.score(examples, self.decode(examples))

    def _predict_examples(self, examples: datasets.Dataset) -> Iterator[dict[str, Any]]:
        for example, prediction in zip(examples, self.decode(examples)):
            yield self.task.present(example, prediction)

    def decode(self, examples: datasets.Dataset) -> list[Any]:
        """What the task's `score` reads: one prediction per example, in order."""
        if self.untrained is not None:
            return self.untrained(examples)
        features = sorted_by_length(self.task.featurize(examples, self.tokenizer, self.label2id))
        return self.task.decode(examples, features, self.outputs(features), self.id2label)

    def outputs(self, features: datasets.Dataset) -> Any:
        """What the task's `decode` reads: logits, or for a generating task one `Generation` per feature.

        Generation runs the model's saved generation config, i.e. the recipe's `generation` settings.
        """
        if not self.task.generates:
            return self.logits(features)
        return [
            generated
            for batch in self.batches(features)
            for generated in generation.generations(
                self.tokenizer, generation.generate_ids(self.generator, batch).numpy()
            )
        ]

    def cross_attention(self, text: str) -> CrossAttention:
        """What an encoder-decoder generates for `text` and where each generated token looked in the input."""
        return cross_attention(self, text)

    @torch.inference_mode()
    def logits(self, features: datasets.Dataset) -> np.ndarray | tuple[np.ndarray, ...]:
        """The task's model outputs for every feature in order, padded to a common length for token tasks.

        One output (`logits`) comes back as an array, several (QA: start and end logits) as a tuple.
        """
        outputs: dict[str, list[np.ndarray]] = {name: [] for name in self.task.output_names}
        for batch in self.batches(features):
            output = self.model(**batch)
            for name, kept in outputs.items():
                kept.extend(output[name].float().numpy())
        stacked = [_stack_padded(kept) for kept in outputs.values()]
        return stacked[0] if len(stacked) == 1 else tuple(stacked)

    def batches(self, features: datasets.Dataset) -> Iterator[dict[str, torch.Tensor]]:
        """Padded batches of the features' model inputs, in order (`model_batches`)."""
        max_tokens = None if self.task.generates else self.max_batch_tokens
        return model_batches(features, self.task, self.tokenizer, self._inputs, self.batch_size, max_tokens)


@dataclass(frozen=True)
class _AdapterSettings:
    """What an adapter run decides besides its weights: calibrated thresholds and decoding."""

    calibration: dict[str, Any]
    generation: GenerationConfig | None

    @classmethod
    def of(cls, model_dir: Path) -> _AdapterSettings:
        config = AutoConfig.from_pretrained(model_dir)
        has_generation = (model_dir / "generation_config.json").is_file()
        return cls(
            getattr(config, "task_calibration", None) or {},
            GenerationConfig.from_pretrained(model_dir) if has_generation else None,
        )


def model_batches(
    features: datasets.Dataset,
    task: Task,
    tokenizer: Any,
    accepted: set[str],
    batch_size: int,
    max_tokens: int | None = None,
) -> Iterator[dict[str, torch.Tensor]]:
    """Padded batches of the `accepted` feature columns (bookkeeping fields left out), in order,
    cut by `batch_bounds`.

    Labels are left out too, except for a generating task: a decoder's prompt ends where its labels begin.
    """
    wanted = [c for c in features.column_names if c in accepted]
    columns = [c for c in wanted if task.generates or c not in task.label_names]
    rows = features.select_columns(columns)
    pad_values = task.pad_values(tokenizer)
    lengths = lengths_of(features) if max_tokens is not None else [0] * len(rows)
    for start, end in batch_bounds(lengths, batch_size, max_tokens):
        block = rows[start:end]  # columns of plain lists: a `select` would build a dataset per batch
        yield pad_batch([dict(zip(block, values)) for values in zip(*block.values())], pad_values)


def batch_bounds(lengths: list[int], batch_size: int, max_tokens: int | None = None) -> Iterator[tuple[int, int]]:
    """(start, end) of consecutive batches over rows of these lengths: at most `batch_size` rows, and where
    `max_tokens` is set, rows x the batch's longest within it unless that leaves fewer than `MIN_BATCH_ROWS`."""
    start = 0
    while start < len(lengths):
        limit = min(start + batch_size, len(lengths))
        end, longest = start + 1, lengths[start]
        while end < limit:
            longest = max(longest, lengths[end])
            if max_tokens is not None and end - start >= MIN_BATCH_ROWS and (end + 1 - start) * longest > max_tokens:
                break
            end += 1
        yield start, end
        start = end


def accepted_inputs(model: Any) -> set[str]:
    """The feature columns a model takes: an ONNX graph's inputs, or a module's `forward` parameters."""
    if isinstance(model, OnnxModel | CTranslate2Model):
        return set(model.input_names)
    return set(inspect.signature(model.forward).parameters)


def _stack_padded(arrays: list[np.ndarray]) -> np.ndarray:
    """Per-feature outputs as one array, zero-padded along the token axis where lengths differ."""
    length = max(a.shape[0] for a in arrays)
    stacked = np.zeros((len(arrays), length, *arrays[0].shape[1:]), dtype=np.float32)
    for i, array in enumerate(arrays):
        stacked[i, : array.shape[0]] = array
    return stacked


def is_blank(text: str | dict[str, str]) -> bool:
    """An input with nothing to predict from: a text of whitespace only (a blank line)."""
    return isinstance(text, str) and not text.strip()


def read_texts(
    lines: Iterable[str], source: str, fields: tuple[str, ...] = ("text",)
) -> Iterator[str | dict[str, str]]:
    """Inputs from lines, one per line: a JSON object with a `text` field, or the line itself.

    A blank line is an input too (an empty text), so the predictions of a file line up with its lines.
    A byte-order mark before the first line (an editor's or spreadsheet's UTF-8) is not part of it.
    A task with several input `fields` (QA: question and context) takes one JSON object per line,
    checked here so a bad one is reported by its line before any prediction.
    """
    number = 0
    try:
        for number, line in enumerate(lines, 1):
            line = line.rstrip("\n").removeprefix("\ufeff") if number == 1 else line.rstrip("\n")
            yield _input(line, source, number, fields)
    except UnicodeDecodeError as err:  # decoded a block ahead: the bad byte is at or after the next line
        raise UserInputError(f"{source}: not UTF-8 text after line {number} ({err.reason})") from None


def _input(line: str, source: str, number: int, fields: tuple[str, ...]) -> str | dict[str, str]:
    if is_blank(line):
        return ""
    if len(fields) > 1:
        try:
            return json_input(line, fields)
        except ValueError as err:
            raise UserInputError(f"{source}:{number}: {err}") from None
    if line.lstrip().startswith("{"):
        try:
            return json.loads(line)["text"]
        except (json.JSONDecodeError, KeyError, TypeError):
            raise UserInputError(f"{source}:{number}: expected a JSON object with a 'text' field") from None
    return line

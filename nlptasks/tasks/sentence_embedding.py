"""Sentence embeddings trained with SimCSE (Gao et al., 2021) and scored on semantic textual similarity.

Training is contrastive with in-batch negatives (InfoNCE at a temperature, 0.05 by default):
- unsupervised: each sentence goes through the encoder twice; the two dropout masks are the
  only difference between a sentence and its positive, every other sentence is a negative;
- supervised: pairs (`text`, `text_pair`) are positives — from STS data, the pairs scoring at
  least `positive_threshold` — and an optional third column `text_negative` adds hard negatives.

The negatives are the batch, so `train.batch_size` is the number of negatives and gradient
accumulation cannot add any: a recipe asking for it is refused (no gradient cache here).
sentence-transformers' MultipleNegativesRankingLoss computes the same loss but only over its own
model class and trainer; the loss below is a few lines on the one training core instead.

Evaluation embeds both sentences of each STS pair and reports the Spearman (and Pearson)
correlation ×100 of their cosine similarity with the gold scores. Pooling: `cls_mlp` is [CLS]
through an MLP while training and [CLS] alone at evaluation (the paper's unsupervised setting),
`cls` is [CLS] alone, `mean` averages the real tokens (the choice for decoders, which have no
[CLS]). The run saves the encoder (LoRA merged in) with sentence-transformers' module files
beside it, so `SentenceTransformer(run/model)` and the RAG pipeline load it directly.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import datasets
import numpy as np
import torch
from peft import PeftModel
from pydantic import Field

from nlptasks.config import Section
from nlptasks.errors import DataError, RecipeError
from nlptasks.metrics.correlation import sts_correlations
from nlptasks.tasks.base import Task, text_or_json_row, text_pair_examples, tokenized

if TYPE_CHECKING:
    from nlptasks.recipe import Recipe

SIDES = ("", "pair_", "negative_")
"""Feature prefixes of the three texts a row may hold: the sentence, its positive, a hard negative."""


class SentenceEmbeddingOptions(Section):
    objective: Literal["unsupervised", "supervised"] = "unsupervised"
    pooling: Literal["cls_mlp", "cls", "mean"] = "cls_mlp"
    temperature: float = Field(default=0.05, gt=0)
    """InfoNCE temperature: cosine similarities are divided by it before the softmax."""
    positive_threshold: float = 4.0
    """Supervised: a scored pair is a positive from this score up (STS-B: 0-5); unscored pairs all are."""


class SentenceEmbedding(Task):
    name = "sentence-embedding"
    input_column = "text"
    target_column = "score"
    main_metric = "spearman"
    headline_metrics = ("spearman", "pearson")
    auto_model = "AutoModel"
    pipeline_tag = "sentence-similarity"
    model_outputs = ("last_hidden_state",)
    Options = SentenceEmbeddingOptions
    options: SentenceEmbeddingOptions

    def __init__(self, options: SentenceEmbeddingOptions, max_length: int, stride: int) -> None:
        super().__init__(options, max_length, stride)
        self.family = "encoder"
        self.dimension = 0
        """The embedding size, known once the model is wrapped."""

    @classmethod
    def check_recipe(cls, recipe: Recipe) -> None:
        """Negatives come from the batch: accumulating batches adds none (there is no gradient cache here)."""
        if recipe.train.gradient_accumulation_steps > 1:
            raise ValueError(
                f"train.gradient_accumulation_steps: {cls.name} draws its negatives from one batch, so "
                "accumulating batches adds none (no gradient cache here); raise train.batch_size instead"
            )

    @classmethod
    def features(cls) -> datasets.Features:
        text = datasets.Value("string")
        return datasets.Features(
            {"text": text, "text_pair": text, "text_negative": text, "score": datasets.Value("float32")}
        )

    def input_text(self, example: dict[str, Any]) -> str:
        return "\t".join(text for text in (example["text"], example.get("text_pair")) if text)

    @classmethod
    def shaped_row(cls, row: dict[str, Any]) -> dict[str, Any]:
        """STS layout (`sentence1`, `sentence2`, `score`) or ours; a plain sentence has neither pair nor score."""
        return {
            "text": row.get("text", row.get("sentence1")),
            "text_pair": row.get("text_pair", row.get("sentence2")),
            "text_negative": row.get("text_negative"),
            "score": row.get("score"),
        }

    @classmethod
    def check_row(cls, row: dict[str, Any], label_names: list[str] | None) -> dict[str, Any]:
        for field in ("text", "text_pair", "text_negative"):
            text = row[field]
            if (field == "text" or text is not None) and (not isinstance(text, str) or not text.strip()):
                raise ValueError(f"field '{field}' must be a non-empty string, got {text!r}")
        score = row["score"]
        number = isinstance(score, int | float) and not isinstance(score, bool)
        if score is not None and not (number and np.isfinite(score)):
            raise ValueError(f"field 'score' must be a finite number, got {score!r}")
        return row

    def label_list(self, train: datasets.Dataset) -> list[str]:
        return []

    def use_model_family(self, family: str) -> None:
        if family not in ("encoder", "decoder"):
            raise RecipeError(f"task sentence-embedding needs a transformer encoder or decoder, not a {family} model")
        if family == "decoder" and self.options.pooling != "mean":
            raise RecipeError(
                f"task_args.pooling: '{self.options.pooling}' reads a [CLS] token a decoder does not have; use mean"
            )
        self.family = family

    def training_examples(self, train: datasets.Dataset) -> datasets.Dataset:
        """Supervised: the positive pairs only (scored at least `positive_threshold`, or unscored)."""
        if self.options.objective == "unsupervised":
            return train
        threshold = self.options.positive_threshold
        positives = train.filter(
            lambda row: row["text_pair"] is not None and (row["score"] is None or row["score"] >= threshold),
            desc="Positive pairs",
        )
        if len(positives) == 0:
            raise DataError(
                f"data: supervised SimCSE needs pairs (text, text_pair) scoring at least {threshold}; "
                "the train split has none"
            )
        return positives

    def featurize(self, examples: datasets.Dataset, tokenizer: Any, label2id: dict[str, int]) -> datasets.Dataset:
        columns = {prefix: column for prefix, column in zip(SIDES, ("text", "text_pair", "text_negative"))}

        def encode(batch: dict[str, list], indices: list[int]) -> dict[str, list]:
            encoded: dict[str, list] = {"example_index": indices}
            for prefix, column in columns.items():
                texts = batch.get(column)
                if not texts or any(text is None for text in texts):
                    continue
                tokens = tokenizer(texts, truncation=True, max_length=self.max_length)
                encoded[f"{prefix}input_ids"] = tokens["input_ids"]
                encoded[f"{prefix}attention_mask"] = tokens["attention_mask"]
            scores = batch.get("score")
            if scores and all(score is not None for score in scores):
                encoded["labels"] = scores
            return encoded

        return tokenized(examples, encode)

    def pad_values(self, tokenizer: Any) -> dict[str, int]:
        return {f"{prefix}input_ids": tokenizer.pad_token_id or 0 for prefix in SIDES}

    def wrap_model(self, model: Any) -> ContrastiveEncoder:
        self.dimension = model.config.hidden_size
        return ContrastiveEncoder(model, self.options)

    def decode(
        self, examples: datasets.Dataset, features: datasets.Dataset, logits: np.ndarray, id2label: dict[int, str]
    ) -> list[dict[str, Any]]:
        """A pair's cosine similarity, or a single sentence's unit-length embedding."""
        predictions: list[dict[str, Any]] = [{}] * len(examples)
        paired = "pair_input_ids" in features.column_names
        for example, output in zip(features["example_index"], logits):
            predictions[example] = {"similarity": float(output[0])} if paired else {"embedding": output}
        return predictions

    def score(self, examples: datasets.Dataset, predictions: list[dict[str, Any]]) -> dict[str, float]:
        return sts_correlations(examples["score"], [p["similarity"] for p in predictions])

    def examples_from_texts(self, texts: list[str]) -> datasets.Dataset:
        """Plain lines are sentences to embed; a JSON object with `text` and `text_pair` asks for their similarity."""
        rows = [text_or_json_row(text) for text in texts]
        paired = [row for row in rows if row.get("text_pair")]
        if paired and len(paired) != len(rows):
            raise ValueError("mix of sentences and JSON pairs in one input: give one kind per call")
        return text_pair_examples(rows)

    def empty_prediction(self) -> dict[str, Any]:
        """The zero vector: a blank text means nothing, and its dot product with every embedding is 0.

        A row of zeros keeps `embed`'s matrix one row per input line; every real embedding has unit
        length, so a blank line's row is easy to find (`norm == 0`).
        """
        return {"text": "", "embedding": [0.0] * self.dimension}

    def present(self, example: dict[str, Any], prediction: dict[str, Any]) -> dict[str, Any]:
        if "similarity" in prediction:
            return {"text": example["text"], "text_pair": example["text_pair"], "similarity": prediction["similarity"]}
        return {"text": example["text"], "embedding": [round(float(v), 6) for v in prediction["embedding"]]}


class ContrastiveEncoder(torch.nn.Module):
    """An encoder (or decoder) that pools to one vector per text: InfoNCE while training, cosine or embeddings after.

    Training: positives from a second dropout pass (no `pair_input_ids`) or from the pair; the
    loss is cross-entropy over the similarity matrix / temperature with the diagonal as targets.
    Evaluation with pairs: `logits` are their cosine similarities (n, 1); a single text's
    `logits` are its unit-length embedding (n, hidden). `save_pretrained` saves the encoder only
    (the MLP is a training device) with sentence-transformers' module files.
    """

    def __init__(self, encoder: Any, options: SentenceEmbeddingOptions) -> None:
        super().__init__()
        self.encoder = encoder
        self.options = options
        hidden = encoder.config.hidden_size
        self.mlp = torch.nn.Sequential(torch.nn.Linear(hidden, hidden), torch.nn.Tanh())
        self.mlp.requires_grad_(options.pooling == "cls_mlp")  # unused otherwise: no idle parameters under DDP

    @property
    def config(self) -> Any:
        return self.encoder.config

    def gradient_checkpointing_enable(self, **kwargs: Any) -> None:
        self.encoder.gradient_checkpointing_enable(**kwargs)

    def embed(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        if self.options.pooling == "mean":
            mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
            return (hidden * mask).sum(1) / mask.sum(1).clamp(min=1)
        cls = hidden[:, 0]
        return self.mlp(cls) if self.options.pooling == "cls_mlp" and self.training else cls

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        pair_input_ids: torch.Tensor | None = None,
        pair_attention_mask: torch.Tensor | None = None,
        negative_input_ids: torch.Tensor | None = None,
        negative_attention_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        anchors = self.embed(input_ids, attention_mask)
        if pair_input_ids is None and not self.training:
            return {"logits": torch.nn.functional.normalize(anchors.float(), dim=-1)}
        if pair_input_ids is None:
            positives = self.embed(input_ids, attention_mask)  # the same sentences under new dropout masks
        else:
            positives = self.embed(pair_input_ids, pair_attention_mask)
        candidates = positives
        if negative_input_ids is not None:
            candidates = torch.cat([positives, self.embed(negative_input_ids, negative_attention_mask)])
        loss = info_nce(anchors, candidates, self.options.temperature)
        if self.training:
            return {"loss": loss}
        similarity = torch.nn.functional.cosine_similarity(anchors.float(), positives.float(), dim=-1)
        return {"loss": loss, "logits": similarity.unsqueeze(-1)}

    def save_pretrained(self, folder: Path, **kwargs: Any) -> None:
        """The encoder as a plain model, LoRA merged into a copy: sentence-transformers cannot read adapter folders."""
        encoder = self.encoder
        if isinstance(encoder, PeftModel):
            encoder = copy.deepcopy(encoder).merge_and_unload()
        encoder.save_pretrained(folder)
        write_sentence_transformers_modules(Path(folder), self.options.pooling, self.config.hidden_size)


def info_nce(anchors: torch.Tensor, candidates: torch.Tensor, temperature: float) -> torch.Tensor:
    """Cross-entropy of each anchor against every candidate; anchor i's positive is candidate i."""
    anchors = torch.nn.functional.normalize(anchors.float(), dim=-1)
    candidates = torch.nn.functional.normalize(candidates.float(), dim=-1)
    logits = anchors @ candidates.T / temperature
    return torch.nn.functional.cross_entropy(logits, torch.arange(len(anchors), device=logits.device))


def write_sentence_transformers_modules(folder: Path, pooling: str, dimension: int) -> None:
    """The files `SentenceTransformer(folder)` reads: the encoder, then pooling as trained, then normalisation."""
    modules = [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
        {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"},
    ]
    (folder / "modules.json").write_text(json.dumps(modules, indent=2))
    (folder / "1_Pooling").mkdir(exist_ok=True)
    (folder / "2_Normalize").mkdir(exist_ok=True)
    mode = {"pooling_mode_cls_token": pooling != "mean", "pooling_mode_mean_tokens": pooling == "mean"}
    (folder / "1_Pooling" / "config.json").write_text(json.dumps({"word_embedding_dimension": dimension, **mode}))

"""Text generation for every generating task and model family, in one place.

Evaluation inside training (`training.py`) and `predict` (`predict.py`) both run
`generate_ids` and then `generations`, so a validation score and a prediction come from the same
decoding. The settings are the recipe's `generation` section, written into the model's
`generation_config` by `configure` and saved with the model (`generation_config.json`), so a
run's `model/` generates the same way under bare `transformers`.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from transformers import GenerationConfig, PreTrainedModel

from nlptasks.errors import RecipeError
from nlptasks.recipe import GenerationSettings
from nlptasks.tasks.base import Generation

SPECIAL_TOKENS = ("bos_token_id", "eos_token_id", "pad_token_id", "decoder_start_token_id")
GENERATION_INPUTS = ("input_ids", "attention_mask")
"""Batch fields `generate` reads; labels and bookkeeping fields stay out."""


def configure(model: PreTrainedModel, settings: GenerationSettings) -> None:
    """Give the model a fresh generation config: its special tokens plus the recipe's settings, nothing else.

    Starting fresh keeps a checkpoint's own decoding defaults (a chat model's temperature, a
    summarizer's beam count) out, so the recipe is the one source of decoding settings.
    """
    if not model.can_generate():
        raise RecipeError(f"model: {type(model).__name__} cannot generate text; this task needs an encoder-decoder")
    tokens = {key: _special_token(model, key) for key in SPECIAL_TOKENS}
    values = {key: value for key, value in tokens.items() if value is not None}
    model.generation_config = GenerationConfig(**values, **settings.model_dump(exclude_none=True))


def _special_token(model: PreTrainedModel, key: str) -> int | None:
    value = getattr(model.generation_config, key, None)
    return value if value is not None else getattr(model.config, key, None)


@torch.inference_mode()
def generate_ids(model: PreTrainedModel, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """The new tokens only, (batch, longest output), under the model's generation config.

    An encoder-decoder's output starts with its decoder start token and a decoder's with the
    prompt (which must be left-padded so every prompt ends where generation starts): both are
    cut off, so every family returns just what it generated.
    """
    inputs = {key: batch[key] for key in GENERATION_INPUTS if key in batch}
    sequences = model.generate(**inputs)
    prompt_length = 1 if model.config.is_encoder_decoder else inputs["input_ids"].shape[1]
    return sequences[:, prompt_length:]


def generations(tokenizer: Any, ids: np.ndarray) -> list[Generation]:
    """Text and length of each row of generated ids.

    Negative ids (-100, the Trainer's padding when it joins batches of different lengths) read
    as padding; special tokens (end of sequence, padding) count toward neither text nor length.
    """
    ids = np.where(ids < 0, tokenizer.pad_token_id, ids)
    special = np.asarray(sorted(tokenizer.all_special_ids))
    lengths = (~np.isin(ids, special)).sum(axis=1)
    texts = tokenizer.batch_decode(ids, skip_special_tokens=True)
    return [Generation(text.strip(), int(length)) for text, length in zip(texts, lengths)]

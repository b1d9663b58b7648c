"""Text generation for every generating task and model family, in one place.

Evaluation inside training (`training/`) and `predict` (`predict.py`) both run
`generate_ids` and then `generations`, so a validation score and a prediction come from the same
decoding, whichever engine runs it (`generator`: transformers' `generate`, or CTranslate2). The
settings are the recipe's `generation` section, written into the model's `generation_config` by
`configure` and saved with the model (`generation_config.json`), so a run's `model/` generates
the same way under bare `transformers`.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from peft import PeftModel
from transformers import GenerationConfig, NoRepeatNGramLogitsProcessor, PreTrainedModel

from nlptasks.engines.ctranslate2 import CTranslate2Model, decoding_options
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
        raise RecipeError(
            f"model: {type(model).__name__} cannot generate text; this task needs an encoder-decoder or a causal LM"
        )
    if isinstance(model, PeftModel):  # its `generate` decodes with the wrapped model's config
        model = model.get_base_model()
    tokens = {key: _special_token(model, key) for key in SPECIAL_TOKENS}
    values = {key: value for key, value in tokens.items() if value is not None}
    decoding = settings.model_dump(exclude_none=True, exclude={"engine", "quantize"})
    model.generation_config = GenerationConfig(**values, **decoding)
    if isinstance(model, CTranslate2Model):
        decoding_options(model.generation_config, model.config.is_encoder_decoder)  # refused now, not mid-decoding


def generator(
    model: Any,
    tokenizer: Any,
    settings: GenerationSettings,
    folder: Callable[[], Path],
    batches_in_parallel: bool = True,
) -> Any:
    """What decodes for `settings.engine`: the model itself, or its CTranslate2 engine (in int8 with `quantize`).

    A transformers model is converted into `folder()` unless a conversion is there already;
    `batches_in_parallel=False` for a caller that decodes one input at a time (`CTranslate2Model`).
    """
    if settings.engine == "transformers":
        return model
    if isinstance(model, CTranslate2Model):
        engine = model.quantized(settings.quantize)
    else:
        engine = CTranslate2Model.of(model, tokenizer, folder(), settings.quantize, batches_in_parallel)
    configure(engine, settings)
    return engine


def _special_token(model: PreTrainedModel, key: str) -> int | None:
    value = getattr(model.generation_config, key, None)
    return value if value is not None else getattr(model.config, key, None)


@torch.inference_mode()
def generate_ids(model: PreTrainedModel, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """The new tokens only, (batch, longest output), under the model's generation config.

    An encoder-decoder reads the batch's inputs and its output starts with its decoder start
    token; a decoder reads its prompts left-padded (`left_padded_prompts`) and its output starts
    with them. Both are cut off, so every family returns just what it generated.
    """
    if model.config.is_encoder_decoder:
        return model.generate(**{key: batch[key] for key in GENERATION_INPUTS if key in batch})[:, 1:]
    prompts = left_padded_prompts(batch, model.generation_config.pad_token_id or 0)
    width = prompts["input_ids"].shape[1]
    return model.generate(**prompts, **_ngram_blocking_after(model, width))[:, width:]


@torch.inference_mode()
def scored_reply(model: Any, prompt: list[int]) -> tuple[list[int], torch.Tensor]:
    """A decoder's greedy reply to one prompt, under its generation config (`begin_suppress_tokens`
    included), with the log-probabilities the model itself gave each vocabulary token at each step
    (steps, vocabulary), before any logits processor: a caller judges the reply by them without a
    second pass. Beams and sampling are the caller's to refuse: a beam's steps are not its reply's."""
    if isinstance(model, CTranslate2Model):
        return model.scored_reply(prompt)
    ids = torch.tensor([prompt], device=model.device)
    out = model.generate(
        ids,
        attention_mask=torch.ones_like(ids),
        output_logits=True,
        return_dict_in_generate=True,
        **_ngram_blocking_after(model, len(prompt)),
    )
    return out.sequences[0, len(prompt) :].tolist(), torch.stack(out.logits, 1)[0].float().log_softmax(-1).cpu()


def _ngram_blocking_after(model: Any, prompt_width: int) -> dict[str, Any]:
    """`no_repeat_ngram_size` over the generated tokens only, as CTranslate2 and encoder-decoders apply it.

    transformers blocks a decoder's n-grams over the whole sequence, prompt included, so a summary
    could not repeat any three words of the dialogue it summarizes (`#Person1# said` included).
    """
    size = model.generation_config.no_repeat_ngram_size or 0
    if size == 0 or isinstance(model, CTranslate2Model):
        return {}
    config = copy.deepcopy(model.generation_config)
    config.no_repeat_ngram_size = 0
    return {"generation_config": config, "logits_processor": [GeneratedNoRepeatNGram(size, prompt_width)]}


class GeneratedNoRepeatNGram(NoRepeatNGramLogitsProcessor):
    """transformers' n-gram blocking over the tokens after the first `prompt_width` of each row."""

    def __init__(self, ngram_size: int, prompt_width: int) -> None:
        super().__init__(ngram_size)
        self.prompt_width = prompt_width

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        return super().__call__(input_ids[:, self.prompt_width :], scores)


def left_padded_prompts(batch: dict[str, torch.Tensor], pad_token_id: int) -> dict[str, torch.Tensor]:
    """A decoder's prompts, each moved to the right end of its row so that all end where generation starts.

    A row's prompt is its unpadded tokens before the first labelled one where the batch has labels
    (training and evaluation rows hold prompt and target), else all its unpadded tokens (`predict`).
    """
    in_prompt = batch["attention_mask"].bool()
    if "labels" in batch:
        in_prompt &= (batch["labels"] != -100).cumsum(dim=1) == 0
    width = int(in_prompt.sum(dim=1).max())
    input_ids = torch.full((len(in_prompt), width), pad_token_id, dtype=torch.long, device=in_prompt.device)
    attention_mask = torch.zeros_like(input_ids)
    for row, tokens in enumerate(in_prompt):
        prompt = batch["input_ids"][row][tokens]
        input_ids[row, width - len(prompt) :] = prompt
        attention_mask[row, width - len(prompt) :] = 1
    return {"input_ids": input_ids, "attention_mask": attention_mask}


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

"""Where an encoder-decoder looked: its cross-attention over an input, for heat maps in tutorials."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
from peft import PeftModel

from nlptasks.errors import UserInputError
from nlptasks.models import generation

if TYPE_CHECKING:
    from nlptasks.predict import Predictor


@dataclass(frozen=True)
class CrossAttention:
    """An encoder-decoder's output for one input and its attention over that input's tokens."""

    input_tokens: list[str]
    output_tokens: list[str]
    weights: np.ndarray
    """(output tokens, input tokens); each row sums to 1."""
    text: str


@torch.inference_mode()
def cross_attention(predictor: Predictor, text: str) -> CrossAttention:
    """What an encoder-decoder generates for `text` and where each generated token looked in the input.

    For attention heat maps: weights are (output tokens, input tokens), averaged over layers and heads.
    """
    model = predictor.model
    if model is not None and not isinstance(model, torch.nn.Module):
        raise UserInputError(
            f"cross_attention: {predictor.run_dir.root} is an export that returns no attention weights; "
            "ask the run it was exported from"
        )
    if model is None or not (predictor.task.generates and model.config.is_encoder_decoder):
        raise UserInputError("cross_attention: only an encoder-decoder model attends over an input it encoded")
    model = model.get_base_model() if isinstance(model, PeftModel) else model
    if model.config._attn_implementation not in (None, "eager"):
        model.set_attn_implementation("eager")  # fused kernels (sdpa, flash) never return their weights
    features = predictor.task.featurize(
        predictor.task.examples_from_texts([text]), predictor.tokenizer, predictor.label2id
    )
    [batch] = predictor.batches(features)
    inputs = {key: batch[key] for key in generation.GENERATION_INPUTS}
    generated = generation.generate_ids(predictor.model, inputs)
    layers = predictor.model(**inputs, labels=generated, output_attentions=True).cross_attentions
    per_layer = [layer.float().mean(1) if layer.dim() == 4 else layer.float() for layer in layers]  # heads averaged
    present = inputs["attention_mask"][0].bool()  # batches may be padded (to a multiple of 8 on a GPU)
    return CrossAttention(
        input_tokens=predictor.tokenizer.convert_ids_to_tokens(inputs["input_ids"][0][present].tolist()),
        output_tokens=predictor.tokenizer.convert_ids_to_tokens(generated[0].tolist()),
        weights=torch.stack(per_layer).mean(0)[0][:, present].numpy(),
        text=generation.generations(predictor.tokenizer, generated.numpy())[0].text,
    )

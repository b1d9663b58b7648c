"""Any pretrained encoder with layers around it for labelling tokens: `model_args` of a token-classification recipe.

- `char_encoder` (NER): an uncased encoder (MiniLM) never sees capitals, the strongest clue to a
  name; a character CNN over each word as written gives them back. Each word's character vector
  joins its first subword's state (the one the NER task labels; zeros elsewhere).
- `crf` (NER): a CRF scores whole tag sequences over the words' first subwords (no `I-PER` after `O`).
- `sentence_layers` (extractive summarization): BertSum's inter-sentence Transformer layers
  (Liu & Lapata, 2019) over the sentence markers' vectors, each with a sinusoidal encoding of its
  sentence's place in the document, so a sentence is scored beside the others and knows where it is.

The model is a `PreTrainedModel` registered with the Auto classes, its tokenizer the encoder's
own (plus character ids with `char_encoder`), so training, checkpoints, `load`, `predict`, `serve`
and ONNX export (without a CRF) treat it as any model.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import torch
from pydantic import Field
from torch import nn
from torchcrf import CRF
from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForTokenClassification,
    AutoTokenizer,
    PreTrainedConfig,
    PreTrainedModel,
)
from transformers.configuration_utils import SubConfigSpec
from transformers.modeling_outputs import TokenClassifierOutput

from nlptasks.config import Section, validate_section
from nlptasks.errors import RecipeError
from nlptasks.models.chars import CharIdsTokenizer, char_cnn_layers, char_cnn_vectors, char_vocabulary
from nlptasks.models.crf import Tagger, kept_first
from nlptasks.models.recurrent import init_recurrent_weights

if TYPE_CHECKING:
    from nlptasks.models import BuildRequest


class TaggerOptions(Section):
    """`model_args` that put layers around a pretrained encoder of a token-classification recipe."""

    char_encoder: bool = False
    """Add a character CNN vector of each word as written (case kept) to its first subword's state."""
    char_dim: int = Field(default=30, gt=0)
    """Size of the character embeddings."""
    char_hidden: int = Field(default=50, gt=0)
    """Filters of the character CNN (width 3, max-pooled over the word): the char vector size."""
    max_word_chars: int = Field(default=20, gt=0)
    """Characters of a word the character CNN reads (the first ones)."""
    crf: bool = False
    """Score whole tag sequences with a CRF over the words (learned tag transitions, Viterbi decoding)."""
    sentence_layers: int = Field(default=0, ge=0)
    """Transformer layers over the sentence vectors (each sentence's marker), for a task that marks
    sentences (extractive summarization); 0: none."""
    tag_dropout: float = Field(default=0.1, ge=0, lt=1)
    """Dropout in the sentence layers and on the vectors before the tag scores."""


TAGGER_KEYS = frozenset(TaggerOptions.model_fields)


def requested(model_args: dict[str, Any]) -> bool:
    """Whether `model_args` ask for layers around the encoder (a character CNN, a CRF or sentence layers)."""
    return bool(model_args.get("char_encoder") or model_args.get("crf") or model_args.get("sentence_layers"))


class EncoderTaggerConfig(PreTrainedConfig):
    """The encoder's own config (`encoder`), the character vocabulary's size and the validated `TaggerOptions`."""

    model_type = "nlptasks-encoder-tagger"
    sub_configs_defaults = {"encoder": SubConfigSpec(config_class=AutoConfig, model_type="bert")}
    encoder: PreTrainedConfig | dict | None = None
    char_vocab_size: int = 2
    tagger: dict[str, Any] | None = None

    @property
    def options(self) -> TaggerOptions:
        return TaggerOptions.model_validate(self.tagger or {})


class EncoderTaggerTokenizer(CharIdsTokenizer):
    """The encoder's fast tokenizer (its `tokenizer.json`), plus each word's characters on its first subword."""

    def _token_span(self, span: tuple[int, int], word_start: bool) -> tuple[int, int | None] | None:
        return (0, None) if word_start else None

    @classmethod
    def around(cls, tokenizer: Any, char_vocab: dict[str, int], max_word_chars: int) -> EncoderTaggerTokenizer:
        return cls(
            tokenizer_object=tokenizer.backend_tokenizer,
            char_vocab=char_vocab,
            max_word_chars=max_word_chars,
            model_input_names=list(tokenizer.model_input_names),
            model_max_length=tokenizer.model_max_length,
            **tokenizer.special_tokens_map,
        )


class EncoderTaggerForTokenClassification(Tagger, PreTrainedModel):
    config_class = EncoderTaggerConfig
    base_model_prefix = "encoder"
    supports_gradient_checkpointing = True  # the encoder's layers checkpoint as in the encoder alone

    def __init__(self, config: EncoderTaggerConfig) -> None:
        super().__init__(config)
        options = config.options
        self.encoder = AutoModel.from_config(config.encoder)
        width = config.encoder.hidden_size
        if options.char_encoder:
            chars = char_cnn_layers(config.char_vocab_size, options.char_dim, options.char_hidden)
            self.char_embeddings, self.char_conv = chars
            width += options.char_hidden
        if options.sentence_layers:
            self.sentence_encoder = _sentence_encoder(width, config.encoder, options)
        self.dropout = nn.Dropout(options.tag_dropout)
        self.classifier = nn.Linear(width, config.num_labels)
        self.crf = CRF(config.num_labels, batch_first=True) if options.crf else None
        self.post_init()

    def _init_weights(self, module: nn.Module) -> None:
        """The layers around the encoder; the encoder's own weights are always loaded over whatever this leaves."""
        init_recurrent_weights(module)

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        char_ids: torch.Tensor | None = None,
        word_starts: torch.Tensor | None = None,
        sentence_ids: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        **kwargs: Any,
    ) -> TokenClassifierOutput:
        mask = torch.ones_like(input_ids, dtype=torch.bool) if attention_mask is None else attention_mask.bool()
        types = {} if token_type_ids is None else {"token_type_ids": token_type_ids}
        states = self.encoder(input_ids=input_ids, attention_mask=attention_mask, **types).last_hidden_state
        if hasattr(self, "char_conv"):
            chars = char_cnn_vectors(char_ids, self.char_embeddings, self.char_conv)
            states = torch.cat([states, chars.to(states.dtype)], dim=-1)
        if hasattr(self, "sentence_encoder"):
            if sentence_ids is None:
                raise ValueError("this model has sentence layers: pass `sentence_ids` (-1 off sentence markers)")
            states = self._across_sentences(states, sentence_ids)
        return self.tag_outputs(self.classifier(self.dropout(states)), mask, labels, word_starts)

    def _across_sentences(self, states: torch.Tensor, sentence_ids: torch.Tensor) -> torch.Tensor:
        """The markers' vectors (`sentence_ids` >= 0: the sentence's index in its document) through the sentence
        layers, each row's markers side by side; every other position keeps its encoder state."""
        markers = sentence_ids >= 0
        order, present = kept_first(markers)
        where = order.unsqueeze(-1).expand(-1, -1, states.shape[-1])
        sentences = states.gather(1, where) + _sinusoids(sentence_ids.gather(1, order).clamp(min=0), states.shape[-1])
        encoded = self.sentence_encoder(sentences.to(states.dtype), src_key_padding_mask=~present)
        return torch.where(markers.unsqueeze(-1), states.scatter(1, where, encoded.to(states.dtype)), states)


def _sentence_encoder(width: int, encoder: PreTrainedConfig, options: TaggerOptions) -> nn.TransformerEncoder:
    """BertSum's inter-sentence layers: pre-norm Transformer layers as wide as the sentence vectors, with the
    encoder's head count where it divides them."""
    heads = getattr(encoder, "num_attention_heads", 1)
    layer = nn.TransformerEncoderLayer(
        width,
        heads if width % heads == 0 else 1,
        dim_feedforward=4 * width,
        dropout=options.tag_dropout,
        activation="gelu",
        batch_first=True,
        norm_first=True,
    )
    return nn.TransformerEncoder(layer, options.sentence_layers, norm=nn.LayerNorm(width), enable_nested_tensor=False)


def _sinusoids(positions: torch.Tensor, width: int) -> torch.Tensor:
    """The Transformer's sinusoidal encoding of integer `positions` (any shape), `width` values each."""
    frequencies = torch.exp(
        torch.arange(0, width, 2, device=positions.device, dtype=torch.float32) * (-math.log(10000.0) / width)
    )
    angles = positions.unsqueeze(-1).float() * frequencies
    return torch.stack([angles.sin(), angles.cos()], -1).flatten(-2)[..., :width]


def build(
    request: BuildRequest, tokenizer: Any, encoder_args: dict[str, Any]
) -> tuple[EncoderTaggerForTokenClassification, Any]:
    """The pretrained encoder at `request.ref` inside a tagger; `encoder_args` (the other `model_args`,
    checked against its config) reach its `from_pretrained`."""
    if request.task.auto_model != AutoModelForTokenClassification.__name__:
        raise RecipeError(f"model_args: layers for labelling tokens; task '{request.task.name}' does not label tokens")
    if request.adaptation is not None:
        raise RecipeError(
            "model_args.char_encoder / crf / sentence_layers: the encoder trains in full with its new layers; "
            "use method: full"
        )
    tagger_args = {key: value for key, value in request.model_args.items() if key in TAGGER_KEYS}
    options = validate_section(TaggerOptions, tagger_args, "model_args")
    task = request.task
    if (options.char_encoder or options.crf) and not task.split_into_words:
        raise RecipeError(f"model_args.char_encoder / crf: layers over words; task '{task.name}' reads text, not words")
    if options.sentence_layers and "sentence_ids" not in task.pad_values(tokenizer):
        raise RecipeError(f"model_args.sentence_layers: layers over sentences; task '{task.name}' marks none")
    encoder = AutoModel.from_pretrained(request.ref.location, **encoder_args)
    if options.char_encoder:
        words = (word for column in task.text_columns() for row in request.train_examples[column] for word in row)
        tokenizer = EncoderTaggerTokenizer.around(tokenizer, char_vocabulary(words), options.max_word_chars)
    config = EncoderTaggerConfig(
        encoder=encoder.config,
        char_vocab_size=len(tokenizer.char_vocab) if options.char_encoder else 0,
        tagger=options.model_dump(),
        pad_token_id=tokenizer.pad_token_id,
        **request.head,
    )
    model = EncoderTaggerForTokenClassification(config)
    model.encoder = encoder
    return model, tokenizer


AutoConfig.register(EncoderTaggerConfig.model_type, EncoderTaggerConfig, exist_ok=True)
AutoModelForTokenClassification.register(EncoderTaggerConfig, EncoderTaggerForTokenClassification, exist_ok=True)
AutoTokenizer.register(EncoderTaggerConfig, tokenizer_class=EncoderTaggerTokenizer, exist_ok=True)

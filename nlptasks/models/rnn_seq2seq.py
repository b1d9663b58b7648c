"""RNN encoder-decoder with attention: the recurrent baseline of the generating tasks (summarization, translation).

A bidirectional LSTM or GRU encoder (the alias picks the cell: `lstm-attention`, `gru-attention`)
reads the source; a unidirectional decoder of the same cell, started from a projection of the
encoder's final states, reads the target shifted right (teacher forcing: always the gold
previous token in training). Each decoder state attends over the encoder states with
Bahdanau's additive score, v·tanh(W_q s + W_k h), or Luong's multiplicative "general" score,
s·W_k h (`model_args.attention`); tanh(W_c [s; context]) is Luong's attentional vector, sized to
the embeddings so the output layer can share the embedding matrix (`tie_embeddings`, Press &
Wolf 2017). Attention is computed on the decoder's new state and not fed back into its input
(no input feeding), so training runs the decoder RNN over the whole target in one call instead
of a Python loop per token. Source and target share one vocabulary and embedding matrix: the
tokenizer is T5's offline one (`t5.train_unigram_tokenizer`), a Unigram model trained on both
sides of the training split and saved with the run.

The model is written here because `transformers` has no RNN encoder-decoder. As a
`PreTrainedModel` with `GenerationMixin`, registered with `AutoModelForSeq2SeqLM`, it trains
in the shared core and decodes through `generate` (greedy, beam search, sampling, every
generation setting). Its cache is the decoder's RNN state, returned as `cache` (transformers ≥ 5.24's name):
each step feeds one new token and that state, never the whole prefix again. Beam search
reorders it by `_reorder_cache` (the state rows of the beams kept), and the encoder's outputs
are computed once and copied per beam by `generate` itself. A run's `model/` loads with
`AutoModelForSeq2SeqLM.from_pretrained` once this module is imported (the import registers it).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import torch
from pydantic import Field
from torch import nn
from transformers import AutoConfig, AutoModelForSeq2SeqLM, GenerationMixin, PreTrainedConfig, PreTrainedModel
from transformers.loss.loss_utils import fixed_cross_entropy
from transformers.modeling_outputs import ModelOutput, Seq2SeqLMOutput
from transformers.models.bart.modeling_bart import shift_tokens_right

from nlptasks import catalog
from nlptasks.config import Section, validate_section
from nlptasks.errors import RecipeError
from nlptasks.models.recurrent import init_recurrent_weights
from nlptasks.models.rnn_layers import packed_rnn, recurrent_layer
from nlptasks.models.t5 import train_unigram_tokenizer
from nlptasks.tasks.base import Task

if TYPE_CHECKING:
    from nlptasks.models import BuildRequest

RNNState = tuple[torch.Tensor, ...]
"""A decoder RNN state, each tensor (layers, batch, hidden): (h,) for a GRU, (h, c) for an LSTM."""


class RNNSeq2SeqOptions(Section):
    """`model_args` of `lstm-attention` / `gru-attention` recipes."""

    embedding_dim: int = Field(default=256, gt=0)
    """Size of the shared source/target embeddings (and of the attentional vector, so they can be tied)."""
    hidden_size: int = Field(default=256, gt=0)
    """State size of the decoder and of each encoder direction (the encoder states are twice this)."""
    num_layers: int = Field(default=1, gt=0)
    """Stacked RNN layers of the encoder, and of the decoder."""
    attention: Literal["bahdanau", "luong"] = "luong"
    """Score of a decoder state against an encoder state: additive (Bahdanau) or multiplicative (Luong, general)."""
    dropout: float = Field(default=0.3, ge=0, lt=1)
    """Dropout on embeddings, between layers, on encoder states and on the attentional vector."""
    tie_embeddings: bool = True
    """The output layer reuses the embedding matrix: fewer parameters, usually better with little data."""
    vocab_size: int = Field(default=8000, gt=3)
    """Pieces the Unigram tokenizer may learn from the training split (fewer where the text has fewer)."""


class RNNSeq2SeqConfig(PreTrainedConfig):
    """Cell, vocabulary size, special tokens and the validated `RNNSeq2SeqOptions` (as a dict, one schema for both)."""

    model_type = "nlptasks-rnn-seq2seq"
    cell: str = "lstm"
    vocab_size: int = 8
    options: dict[str, Any] | None = None
    is_encoder_decoder: bool = True
    tie_word_embeddings: bool = True
    pad_token_id: int | None = 0
    eos_token_id: int | None = 1
    decoder_start_token_id: int | None = 0

    @property
    def rnn(self) -> RNNSeq2SeqOptions:
        return RNNSeq2SeqOptions.model_validate(self.options or {})


@dataclass
class RNNEncoderOutput(ModelOutput):
    """What the decoder reads of a source; `generate` repeats both per beam along the batch axis."""

    last_hidden_state: torch.Tensor | None = None
    """(batch, source, 2 * hidden): both directions' states at every source token."""
    initial_state: torch.Tensor | None = None
    """(batch, layers, hidden): the decoder's first hidden state, from the encoder's final states."""


class RNNEncoder(nn.Module):
    """Embeddings through a bidirectional RNN (packed: padding never enters it), and the decoder's start state."""

    main_input_name = "input_ids"  # what `generate` looks up on an encoder-decoder's `encoder`

    def __init__(self, config: RNNSeq2SeqConfig) -> None:
        super().__init__()
        opts = config.rnn
        self.embeddings = nn.Embedding(config.vocab_size, opts.embedding_dim)
        self.rnn = recurrent_layer(config.cell, opts.embedding_dim, opts.hidden_size, opts.num_layers, opts.dropout)
        self.bridge = nn.Linear(2 * opts.hidden_size, opts.hidden_size)
        self.dropout = nn.Dropout(opts.dropout)

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, **kwargs: Any
    ) -> RNNEncoderOutput:
        mask = torch.ones_like(input_ids, dtype=torch.bool) if attention_mask is None else attention_mask.bool()
        states, final = packed_rnn(self.rnn, self.dropout(self.embeddings(input_ids)), mask)
        final = final[0] if isinstance(final, tuple) else final  # an LSTM's (h, c): h
        layers, batch = self.rnn.num_layers, input_ids.shape[0]
        final = final.view(layers, 2, batch, -1).permute(2, 0, 1, 3).flatten(2)  # (batch, layers, 2 * hidden)
        return RNNEncoderOutput(self.dropout(states), torch.tanh(self.bridge(final)))


class Attention(nn.Module):
    """Attention of decoder states over encoder states, additive (Bahdanau) or multiplicative (Luong, general)."""

    def __init__(self, kind: str, query_size: int, memory_size: int) -> None:
        super().__init__()
        self.additive = kind == "bahdanau"
        self.keys = nn.Linear(memory_size, query_size, bias=False)  # W_k
        if self.additive:
            self.query = nn.Linear(query_size, query_size)  # W_q
            self.energy = nn.Linear(query_size, 1, bias=False)  # v

    def forward(
        self, queries: torch.Tensor, memory: torch.Tensor, mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Context vectors (batch, target, memory size) and weights (batch, target, source); padding gets none."""
        keys = self.keys(memory)  # (batch, source, query size)
        if self.additive:
            scores = self.energy(torch.tanh(self.query(queries).unsqueeze(2) + keys.unsqueeze(1))).squeeze(-1)
        else:
            scores = queries @ keys.transpose(1, 2)
        scores = scores.masked_fill(~mask.unsqueeze(1), torch.finfo(scores.dtype).min)
        weights = scores.softmax(-1)
        return weights @ memory, weights


class RNNAttentionDecoder(nn.Module):
    """A unidirectional RNN over target embeddings; each new state attends over the source."""

    def __init__(self, config: RNNSeq2SeqConfig) -> None:
        super().__init__()
        opts = config.rnn
        self.rnn = recurrent_layer(
            config.cell, opts.embedding_dim, opts.hidden_size, opts.num_layers, opts.dropout, bidirectional=False
        )
        self.attention = Attention(opts.attention, opts.hidden_size, 2 * opts.hidden_size)
        self.combine = nn.Linear(3 * opts.hidden_size, opts.embedding_dim)  # W_c of Luong's attentional vector
        self.dropout = nn.Dropout(opts.dropout)

    def forward(
        self, embedded: torch.Tensor, memory: torch.Tensor, mask: torch.Tensor, state: RNNState
    ) -> tuple[torch.Tensor, RNNState, torch.Tensor]:
        """Attentional vectors (batch, target, embedding), the state after the last target token and the
        attention weights (batch, target, source)."""
        lstm = isinstance(self.rnn, nn.LSTM)  # takes and returns (h, c); a GRU takes and returns h
        outputs, rnn_state = self.rnn(self.dropout(embedded), state if lstm else state[0])
        context, weights = self.attention(outputs, memory, mask)
        attentional = torch.tanh(self.combine(torch.cat([outputs, context], -1)))
        return self.dropout(attentional), rnn_state if lstm else (rnn_state,), weights


class RNNSeq2SeqPreTrainedModel(PreTrainedModel):
    config_class = RNNSeq2SeqConfig
    base_model_prefix = "rnn_seq2seq"

    def _init_weights(self, module: nn.Module) -> None:
        init_recurrent_weights(module)


class RNNSeq2SeqForConditionalGeneration(RNNSeq2SeqPreTrainedModel, GenerationMixin):
    """The encoder-decoder (see the module docstring); `labels` are the targets, -100 where padded."""

    _tied_weights_keys = {"lm_head.weight": "encoder.embeddings.weight"}
    _is_stateful = True  # an RNN state cannot be rolled back to an earlier token (no assisted decoding)

    def __init__(self, config: RNNSeq2SeqConfig) -> None:
        super().__init__(config)
        self.encoder = RNNEncoder(config)
        self.decoder = RNNAttentionDecoder(config)
        self.lm_head = nn.Linear(config.rnn.embedding_dim, config.vocab_size, bias=False)
        self.post_init()

    @classmethod
    def _supports_default_dynamic_cache(cls) -> bool:
        """No attention key/value cache: `generate` must leave `cache` to the model (its RNN state)."""
        return False

    def get_input_embeddings(self) -> nn.Embedding:
        return self.encoder.embeddings

    def set_input_embeddings(self, embeddings: nn.Embedding) -> None:
        self.encoder.embeddings = embeddings

    def get_output_embeddings(self) -> nn.Linear:
        return self.lm_head

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        decoder_input_ids: torch.Tensor | None = None,
        encoder_outputs: RNNEncoderOutput | None = None,
        cache: RNNState | None = None,
        labels: torch.Tensor | None = None,
        use_cache: bool | None = None,
        output_attentions: bool | None = None,
        **kwargs: Any,
    ) -> Seq2SeqLMOutput:
        """Next-token logits (batch, target, vocab) after each decoder input token.

        Training passes `labels` (decoder inputs are those shifted right after the start token);
        `generate` passes the encoder outputs once, then one new token and the state returned
        last time (`cache`, only returned with `use_cache`). `output_attentions` returns the attention
        weights over the source (batch, target, source) as `cross_attentions` (one layer).
        """
        if encoder_outputs is None:
            encoder_outputs = self.encoder(input_ids, attention_mask)
        memory = encoder_outputs.last_hidden_state
        if decoder_input_ids is None:
            decoder_input_ids = shift_tokens_right(labels, self.config.pad_token_id, self.config.decoder_start_token_id)
        mask = torch.ones(memory.shape[:2], dtype=torch.bool, device=memory.device)
        if attention_mask is not None:
            mask = attention_mask.bool()
        state = cache if cache is not None else self._initial_state(encoder_outputs)
        hidden, state, weights = self.decoder(self.encoder.embeddings(decoder_input_ids), memory, mask, state)
        logits = self.lm_head(hidden)
        loss = None
        if labels is not None:
            flat = logits.flatten(0, 1).float()
            loss = fixed_cross_entropy(flat, labels.flatten(), kwargs.get("num_items_in_batch"))
        return Seq2SeqLMOutput(
            loss=loss,
            logits=logits,
            cache=state if use_cache else None,
            encoder_last_hidden_state=memory,
            cross_attentions=(weights,) if output_attentions else None,
        )

    def _initial_state(self, encoder_outputs: RNNEncoderOutput) -> RNNState:
        """The bridged encoder state as every decoder layer's first hidden state; an LSTM's cell starts at zero."""
        hidden = encoder_outputs.initial_state.transpose(0, 1).contiguous()  # (layers, batch, hidden)
        return (hidden, torch.zeros_like(hidden)) if self.config.cell == "lstm" else (hidden,)

    def _reorder_cache(self, cache: RNNState, beam_idx: torch.Tensor) -> RNNState:
        """The state rows of the beams beam search keeps, in its new order."""
        return tuple(state.index_select(1, beam_idx.to(state.device)) for state in cache)


def build(
    task: Task, cell: str, model_args: dict[str, Any], train_examples: Any
) -> tuple[RNNSeq2SeqForConditionalGeneration, Any]:
    """A random encoder-decoder for a generating task, and its tokenizer learnt from the training split."""
    if not task.generates:
        raise RecipeError(
            f"model: the RNN encoder-decoders generate text; task '{task.name}' does not "
            f"(its recurrent baselines are {', '.join(catalog.model_aliases('recurrent'))})"
        )
    options = validate_section(RNNSeq2SeqOptions, model_args, "model_args")
    tokenizer = train_unigram_tokenizer(task.corpus(train_examples), options.vocab_size)
    config = RNNSeq2SeqConfig(
        cell=cell,
        vocab_size=len(tokenizer),
        options=options.model_dump(),
        tie_word_embeddings=options.tie_embeddings,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        decoder_start_token_id=tokenizer.pad_token_id,
    )
    return RNNSeq2SeqForConditionalGeneration(config), tokenizer


AutoConfig.register(RNNSeq2SeqConfig.model_type, RNNSeq2SeqConfig, exist_ok=True)
AutoModelForSeq2SeqLM.register(RNNSeq2SeqConfig, RNNSeq2SeqForConditionalGeneration, exist_ok=True)


def _build_alias(request: BuildRequest) -> tuple[RNNSeq2SeqForConditionalGeneration, Any]:
    return build(request.task, request.setting, request.model_args, request.train_examples)


FAMILY = catalog.register_family(
    catalog.ModelFamily(
        aliases={"lstm-attention": "lstm", "gru-attention": "gru"},
        family="seq2seq",
        summary="RNN encoder-decoders with attention, recurrent baselines",
        build=_build_alias,
        fresh="random weights",
        options=RNNSeq2SeqOptions,
        model_type=RNNSeq2SeqConfig.model_type,
    )
)
"""RNN encoder-decoders with attention by name, with the RNN cell each uses."""

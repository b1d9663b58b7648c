"""Recurrent baselines (RNN / LSTM / GRU / peephole LSTM, optional char encoder and CRF) as `transformers` models.

They are `PreTrainedModel`s registered with the Auto classes, with a word-level fast tokenizer
registered with `AutoTokenizer`, so recipes, the Trainer-based training core, metrics, checkpoints
and `load` treat them exactly like transformers. The tokenizer also returns `char_ids` (characters
of each token's original text) so out-of-vocabulary words still get a representation.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, Literal

import torch
from pydantic import Field
from tokenizers import Regex, Tokenizer, models, normalizers, pre_tokenizers, trainers
from torch import nn
from torchcrf import CRF
from transformers import (
    AutoConfig,
    AutoModelForQuestionAnswering,
    AutoModelForSequenceClassification,
    AutoModelForTokenClassification,
    AutoTokenizer,
    PreTrainedConfig,
    PreTrainedModel,
)
from transformers import initialization as init
from transformers.modeling_outputs import (
    QuestionAnsweringModelOutput,
    SequenceClassifierOutput,
    TokenClassifierOutput,
)

from nlptasks import catalog
from nlptasks.config import Section, validate_section
from nlptasks.errors import RecipeError
from nlptasks.models.chars import PAD, UNK, CharIdsTokenizer, char_cnn_layers, char_cnn_vectors, char_vocabulary
from nlptasks.models.crf import Tagger, kept_first
from nlptasks.models.rnn_layers import PeepholeLSTM, packed_rnn, recurrent_layer
from nlptasks.tasks.base import NOT_CHOSEN, Task
from nlptasks.text import WORD

if TYPE_CHECKING:
    from nlptasks.models import BuildRequest


class RecurrentOptions(Section):
    """`model_args` of `bilstm` / `bigru` / `birnn` / `bilstm-peephole` recipes (`FAMILY`)."""

    embedding_dim: int = Field(default=100, gt=0)
    """Size of the (randomly initialised) word embeddings."""
    hidden_size: int = Field(default=200, gt=0)
    """RNN state size per direction; a bidirectional RNN's output is twice this."""
    num_layers: int = Field(default=1, gt=0)
    """Stacked BiRNN layers (one is the classic tagger; dropout also applies between layers)."""
    bidirectional: bool = True
    """Read right to left as well (the `bi` of the names); `false` gives a left-to-right RNN of `hidden_size` states."""
    dropout: float = Field(default=0.5, ge=0, lt=1)
    """Dropout on the RNN input, between layers and before the output layer."""
    word_dropout: float = Field(default=0.05, ge=0, lt=1)
    """Share of training words replaced by [UNK], so the [UNK] embedding learns to stand for unseen words."""
    char_encoder: bool = True
    """Add a character CNN vector to each word: unseen words still get a representation from their spelling."""
    char_dim: int = Field(default=30, gt=0)
    """Size of the character embeddings."""
    char_hidden: int = Field(default=50, gt=0)
    """Filters of the character CNN (width 3, max-pooled over the word): the char vector size."""
    crf: bool = False
    """Token classification: score whole tag sequences with a CRF (learned tag transitions, Viterbi decoding)."""
    pooling: Literal["max", "mean", "attention"] = "max"
    """Sequence classification: how token states become one vector (`attention`: additive attention)."""
    min_word_freq: int = Field(default=1, gt=0)
    """Training-split words seen fewer times than this map to [UNK]."""
    lowercase: bool = True
    """Look up word embeddings on lowercased words (characters keep their case)."""
    max_word_chars: int = Field(default=20, gt=0)
    """Characters of a word the char encoder reads (the first ones)."""


class BiRNNConfig(PreTrainedConfig):
    """Cell, vocabulary sizes and the validated `RecurrentOptions` (as a dict, one schema for both)."""

    model_type = "nlptasks-birnn"
    cell: str = "lstm"
    vocab_size: int = 2
    char_vocab_size: int = 2
    options: dict[str, Any] | None = None
    pad_token_id: int | None = 0

    @property
    def recurrent(self) -> RecurrentOptions:
        return RecurrentOptions.model_validate(self.options or {})

    @property
    def state_size(self) -> int:
        """Width of the encoder's states: both directions' states side by side."""
        opts = self.recurrent
        return opts.hidden_size * (2 if opts.bidirectional else 1)


class BiRNNTokenizer(CharIdsTokenizer):
    """Word-level fast tokenizer that also returns each token's character ids (`char_ids`, `chars.py`).

    No `__init__` of its own, so `from_pretrained` loads `tokenizer.json` directly.
    """

    model_input_names = ["input_ids", "attention_mask"]

    @classmethod
    def train(cls, texts: Iterable[str], options: RecurrentOptions) -> BiRNNTokenizer:
        """Word and character vocabularies from training words or texts ([PAD]=0, [UNK]=1 in both)."""
        texts = list(texts)
        backend = Tokenizer(models.WordLevel(unk_token=UNK))
        if options.lowercase:
            backend.normalizer = normalizers.Lowercase()
        backend.pre_tokenizer = pre_tokenizers.Sequence(
            [pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Split(Regex(WORD.pattern), "isolated")]
        )
        trainer = trainers.WordLevelTrainer(
            vocab_size=2**31 - 1, min_frequency=options.min_word_freq, special_tokens=[PAD, UNK]
        )
        backend.train_from_iterator(texts, trainer=trainer)
        return cls(
            tokenizer_object=backend,
            pad_token=PAD,
            unk_token=UNK,
            char_vocab=char_vocabulary(texts),
            max_word_chars=options.max_word_chars,
        )


class BiRNNEncoder(nn.Module):
    """Words (+ char CNN vectors) through a (bidirectional) RNN; padding never enters the RNN (packed)."""

    def __init__(self, config: BiRNNConfig) -> None:
        super().__init__()
        opts = config.recurrent
        self.word_dropout = opts.word_dropout
        self.word_embeddings = nn.Embedding(config.vocab_size, opts.embedding_dim, padding_idx=0)
        rnn_input = opts.embedding_dim
        if opts.char_encoder:
            chars = char_cnn_layers(config.char_vocab_size, opts.char_dim, opts.char_hidden)
            self.char_embeddings, self.char_conv = chars
            rnn_input += opts.char_hidden
        self.rnn = recurrent_layer(
            config.cell, rnn_input, opts.hidden_size, opts.num_layers, opts.dropout, opts.bidirectional
        )
        self.dropout = nn.Dropout(opts.dropout)

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None, char_ids: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(states (batch, seq, state_size), mask (batch, seq) bool) for right-padded batches."""
        mask = torch.ones_like(input_ids, dtype=torch.bool) if attention_mask is None else attention_mask.bool()
        if self.training and self.word_dropout > 0:
            dropped = (torch.rand(input_ids.shape, device=input_ids.device) < self.word_dropout) & (input_ids > 1)
            input_ids = input_ids.masked_fill(dropped, 1)
        features = self.word_embeddings(input_ids)
        if hasattr(self, "char_conv"):
            features = torch.cat([features, char_cnn_vectors(char_ids, self.char_embeddings, self.char_conv)], dim=-1)
        states, _ = packed_rnn(self.rnn, self.dropout(features), mask)
        return self.dropout(states), mask


class BiRNNPreTrainedModel(PreTrainedModel):
    config_class = BiRNNConfig
    base_model_prefix = "encoder"

    def _init_weights(self, module: nn.Module) -> None:
        init_recurrent_weights(module)


@torch.no_grad()
def init_recurrent_weights(module: nn.Module) -> None:
    """Embeddings ~ N(0, 1/dim); everything else keeps torch's own init (guarded against re-init on load)."""
    if isinstance(module, nn.Embedding):
        init.normal_(module.weight, std=module.embedding_dim**-0.5)
        if module.padding_idx is not None and not getattr(module.weight, "_is_hf_initialized", False):
            module.weight[module.padding_idx].zero_()
    elif isinstance(module, (nn.RNNBase, PeepholeLSTM, nn.Linear, nn.Conv1d, CRF)):
        module.reset_parameters()


class BiRNNForTokenClassification(Tagger, BiRNNPreTrainedModel):
    def __init__(self, config: BiRNNConfig) -> None:
        super().__init__(config)
        opts = config.recurrent
        self.encoder = BiRNNEncoder(config)
        self.classifier = nn.Linear(config.state_size, config.num_labels)
        self.crf = CRF(config.num_labels, batch_first=True) if opts.crf else None
        self.post_init()

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        char_ids: torch.Tensor | None = None,
        word_starts: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        **kwargs: Any,
    ) -> TokenClassifierOutput:
        states, mask = self.encoder(input_ids, attention_mask, char_ids)
        return self.tag_outputs(self.classifier(states), mask, labels, word_starts)


class BiRNNForSequenceClassification(BiRNNPreTrainedModel):
    def __init__(self, config: BiRNNConfig) -> None:
        super().__init__(config)
        opts = config.recurrent
        self.pooling = opts.pooling
        self.encoder = BiRNNEncoder(config)
        width = config.state_size
        if opts.pooling == "attention":
            self.attention = nn.Sequential(nn.Linear(width, width), nn.Tanh(), nn.Linear(width, 1, bias=False))
        self.classifier = nn.Linear(width, config.num_labels)
        self.post_init()

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        char_ids: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        **kwargs: Any,
    ) -> SequenceClassifierOutput:
        states, mask = self.encoder(input_ids, attention_mask, char_ids)
        logits = self.classifier(self._pool(states, mask))
        loss = None if labels is None else nn.functional.cross_entropy(logits, labels)
        return SequenceClassifierOutput(loss=loss, logits=logits)

    def _pool(self, states: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """One vector per sequence from its unpadded states."""
        keep = mask.unsqueeze(-1)
        if self.pooling == "max":
            return states.masked_fill(~keep, float("-inf")).amax(1)
        if self.pooling == "mean":
            return (states * keep).sum(1) / keep.sum(1).clamp(min=1)
        scores = self.attention(states).masked_fill(~keep, float("-inf"))
        return (scores.softmax(1) * states).sum(1)


class BiRNNForQuestionAnswering(BiRNNPreTrainedModel):
    """A BiLSTM reader (BiDAF-lite with DrQA's exact-match feature) over (question, context) pairs.

    Question and context run separately through the shared word + char encoder; each context
    token attends over the question states (bilinear scores); [state; attended; product;
    exact-match flag] runs through a second BiRNN, and two linear pointers score every context
    token as the answer's start and end (-1e4 elsewhere). Position 0 (the first question token,
    never an answer) carries a learned no-answer score from the max-pooled context, so windows
    without the answer train towards it as transformer heads train towards [CLS], and the QA
    task's decoding (n-best spans, SQuAD v2 threshold) applies unchanged. `token_type_ids`
    (1 on context tokens) come from `BiRNNTokenizer` for pairs.
    """

    def __init__(self, config: BiRNNConfig) -> None:
        super().__init__(config)
        opts = config.recurrent
        width = config.state_size
        self.encoder = BiRNNEncoder(config)
        self.attention = nn.Linear(width, width, bias=False)
        self.modeling = recurrent_layer(config.cell, 3 * width + 1, opts.hidden_size, bidirectional=opts.bidirectional)
        self.pointers = nn.Linear(width, 2)
        self.no_answer = nn.Linear(width, 2)
        self.dropout = nn.Dropout(opts.dropout)
        self.post_init()

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        char_ids: torch.Tensor | None = None,
        start_positions: torch.Tensor | None = None,
        end_positions: torch.Tensor | None = None,
        **kwargs: Any,
    ) -> QuestionAnsweringModelOutput:
        if token_type_ids is None:
            raise ValueError("the reader needs `token_type_ids` (1 on context tokens): encode question-context pairs")
        present = torch.ones_like(input_ids, dtype=torch.bool) if attention_mask is None else attention_mask.bool()
        question, question_ids, question_mask, _ = self._encode(input_ids, char_ids, present & (token_type_ids == 0))
        context, context_ids, context_mask, order = self._encode(input_ids, char_ids, present & (token_type_ids == 1))
        scores = self.attention(context) @ question.transpose(1, 2)  # (batch, context, question)
        attended = scores.masked_fill(~question_mask.unsqueeze(1), float("-inf")).softmax(-1) @ question
        exact = ((context_ids.unsqueeze(2) == question_ids.unsqueeze(1)) & question_mask.unsqueeze(1)).any(-1)
        exact = (exact & (context_ids > 1)).unsqueeze(-1).to(context.dtype)  # [PAD] and [UNK] match nothing
        merged = torch.cat([context, attended, context * attended, exact], -1)
        modeled = self.dropout(packed_rnn(self.modeling, merged, context_mask)[0])  # (batch, context, width)
        scores = _at_positions(self.pointers(modeled), context_mask, order, input_ids.shape[1])
        pooled = modeled.masked_fill(~context_mask.unsqueeze(-1), float("-inf")).amax(1)
        scores = torch.cat([self.no_answer(pooled).unsqueeze(1), scores[:, 1:]], 1)
        start_logits, end_logits = scores.float().unbind(-1)
        loss = None
        if start_positions is not None and end_positions is not None:
            loss = (
                nn.functional.cross_entropy(start_logits, start_positions)
                + nn.functional.cross_entropy(end_logits, end_positions)
            ) / 2
        return QuestionAnsweringModelOutput(loss=loss, start_logits=start_logits, end_logits=end_logits)

    def _encode(
        self, input_ids: torch.Tensor, char_ids: torch.Tensor | None, mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """One part (question or context) moved to the left of each row and encoded.

        Returns its states, token ids and mask (batch, part length), and the original position of
        each of its tokens.
        """
        order, part_mask = kept_first(mask)
        ids = input_ids.gather(1, order)
        chars = None if char_ids is None else char_ids.gather(1, order.unsqueeze(-1).expand(-1, -1, char_ids.shape[-1]))
        states, _ = self.encoder(ids, part_mask, chars)
        return states, ids, part_mask, order


def _at_positions(scores: torch.Tensor, mask: torch.Tensor, order: torch.Tensor, length: int) -> torch.Tensor:
    """A part's token scores (batch, part, k) put back at their positions (batch, length, k); NOT_CHOSEN elsewhere."""
    kept = scores.masked_fill(~mask.unsqueeze(-1), NOT_CHOSEN)
    placed = kept.new_full((kept.shape[0], length, kept.shape[-1]), NOT_CHOSEN)
    return placed.scatter(1, order.unsqueeze(-1).expand_as(kept), kept)


HEADS: dict[str, type[BiRNNPreTrainedModel]] = {
    "AutoModelForTokenClassification": BiRNNForTokenClassification,
    "AutoModelForSequenceClassification": BiRNNForSequenceClassification,
    "AutoModelForQuestionAnswering": BiRNNForQuestionAnswering,
}


def build(
    task: Task, cell: str, model_args: dict[str, Any], labels: list[str], train_examples: Any
) -> tuple[BiRNNPreTrainedModel, BiRNNTokenizer]:
    """A randomly initialised recurrent model for `task` and its tokenizer, vocabularies from the training split."""
    options = validate_section(RecurrentOptions, model_args, "model_args")
    head = HEADS.get(task.auto_model)
    if head is None:
        raise RecipeError(f"task '{task.name}' has no recurrent head; recurrent models support {', '.join(HEADS)}")
    if options.crf and head is not BiRNNForTokenClassification:
        raise RecipeError(f"model_args.crf: a CRF tags tokens; task '{task.name}' classifies whole inputs")
    words_or_texts = (
        s
        for column in task.text_columns()
        for item in train_examples[column]
        for s in (item if isinstance(item, list) else [item])
    )
    tokenizer = BiRNNTokenizer.train(words_or_texts, options)
    config = BiRNNConfig(
        cell=cell,
        vocab_size=len(tokenizer),
        char_vocab_size=len(tokenizer.char_vocab),
        options=options.model_dump(),
        num_labels=len(labels),
        id2label=dict(enumerate(labels)),
        label2id={label: i for i, label in enumerate(labels)},
        pad_token_id=tokenizer.pad_token_id,
    )
    return head(config), tokenizer


AutoConfig.register(BiRNNConfig.model_type, BiRNNConfig, exist_ok=True)
AutoModelForTokenClassification.register(BiRNNConfig, BiRNNForTokenClassification, exist_ok=True)
AutoModelForSequenceClassification.register(BiRNNConfig, BiRNNForSequenceClassification, exist_ok=True)
AutoModelForQuestionAnswering.register(BiRNNConfig, BiRNNForQuestionAnswering, exist_ok=True)
AutoTokenizer.register(BiRNNConfig, tokenizer_class=BiRNNTokenizer, exist_ok=True)


def _build_alias(request: BuildRequest) -> tuple[BiRNNPreTrainedModel, BiRNNTokenizer]:
    return build(request.task, request.setting, request.model_args, request.labels, request.train_examples)


FAMILY = catalog.register_family(
    catalog.ModelFamily(
        aliases={"bilstm": "lstm", "bigru": "gru", "birnn": "rnn", "bilstm-peephole": "peephole-lstm"},
        family="recurrent",
        summary="recurrent baselines",
        build=_build_alias,
        fresh="random weights",
        options=RecurrentOptions,
        model_type=BiRNNConfig.model_type,
    )
)
"""Recurrent baselines by name, with the RNN cell each uses (`model_args.bidirectional: false` drops the `bi`)."""

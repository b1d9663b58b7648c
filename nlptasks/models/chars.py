"""Words as written, for the models that read spelling: character ids from the tokenizer, a character CNN.

A tokenizer mixing in `CharIdsTokenizer` returns `char_ids` (each token's characters, cut to
`max_word_chars`) beside the backend's encoding, and `word_starts` (1 on each word's first token)
for word-split input; `pad_batch` pads them in both dimensions. Which characters a token carries
is the tokenizer's choice (`_token_span`): the recurrent baselines' tokens are words, so each gets
its own text; a subword tokenizer gives each word's first token the whole word.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from typing import Any

import torch
from torch import nn
from transformers import BatchEncoding, TokenizersBackend

PAD, UNK = "[PAD]", "[UNK]"


def char_vocabulary(texts: Iterable[str]) -> dict[str, int]:
    """Every non-space character of `texts`, most frequent first ([PAD]=0, [UNK]=1); ties in character order."""
    chars = Counter(c for text in texts for c in text if not c.isspace())
    ordered = sorted(chars, key=lambda c: (-chars[c], c))
    return {PAD: 0, UNK: 1, **{c: i for i, c in enumerate(ordered, 2)}}


class CharIdsTokenizer(TokenizersBackend):
    """A fast tokenizer whose encodings also hold `char_ids` (and `word_starts` for word-split input).

    The character vocabulary and `max_word_chars` are init kwargs, hence saved in `tokenizer_config.json`.
    """

    @property
    def char_vocab(self) -> dict[str, int]:
        return self.init_kwargs["char_vocab"]

    def _token_span(self, span: tuple[int, int], word_start: bool) -> tuple[int, int] | None:
        """The characters of its word a token carries: its own."""
        return span

    def _encode_plus(self, text: Any, text_pair: Any = None, **kwargs: Any) -> BatchEncoding:
        """The backend's encoding plus `char_ids` (and `word_starts` for word-split input) per token.

        A pair (question, context) also gets `token_type_ids`: 1 on the second sequence's tokens.
        A word starts where a token begins at its word's first character: a window that begins
        inside a word starts none there, as the NER task labels none there.
        """
        if text_pair is not None:
            kwargs["return_token_type_ids"] = True
        split = kwargs.get("is_split_into_words", False)
        return_tensors = kwargs.pop("return_tensors", None)
        encoded = super()._encode_plus(text, text_pair, return_tensors=None, **kwargs)
        batched = isinstance(text, (list, tuple)) and bool(text) and (not split or isinstance(text[0], (list, tuple)))
        unbatch = not batched and not kwargs.get("return_overflowing_tokens")  # as the backend returned it
        inputs = text if batched else [text]
        sources = [inputs] if text_pair is None else [inputs, text_pair if batched else [text_pair]]
        samples = encoded.get("overflow_to_sample_mapping") or range(len(encoded.encodings))
        char_ids, word_starts = [], []
        for encoding, sample in zip(encoded.encodings, samples):  # one per window, each mapped to its input
            starts = [
                int(w is not None and w != p and (not split or span[0] == 0))
                for w, p, span in zip(encoding.word_ids, [None, *encoding.word_ids], encoding.offsets)
            ]
            char_ids.append(
                [
                    self._chars(sources[part or 0][sample], w, span, start)
                    for w, part, span, start in zip(encoding.word_ids, encoding.sequence_ids, encoding.offsets, starts)
                ]
            )
            word_starts.append(starts)
        encoded["char_ids"] = char_ids[0] if unbatch else char_ids
        if split:
            encoded["word_starts"] = word_starts[0] if unbatch else word_starts
        return encoded if return_tensors is None else _as_tensors(encoded, unbatch, return_tensors)

    def _chars(self, source: str | list[str], word: int | None, span: tuple[int, int], word_start: int) -> list[int]:
        """Character ids of one token from the original text (offsets are per word for word-split input)."""
        if word is None or (span := self._token_span(span, bool(word_start))) is None:
            return []
        surface = source[word] if isinstance(source, (list, tuple)) else source
        text = surface[span[0] : span[1]][: self.init_kwargs["max_word_chars"]]
        return [self.char_vocab.get(c, 1) for c in text]


def _as_tensors(encoded: BatchEncoding, unbatch: bool, tensor_type: str) -> BatchEncoding:
    """A batch of tensors, `char_ids` padded to the longest word (`input_ids` must be padded by the caller)."""
    data = {key: [value] if unbatch else value for key, value in encoded.items()}
    width = max((len(chars) for row in data["char_ids"] for chars in row), default=1)
    data["char_ids"] = [[chars + [0] * (width - len(chars)) for chars in row] for row in data["char_ids"]]
    return BatchEncoding(data, encoded.encodings, tensor_type=tensor_type)


def char_cnn_layers(vocab_size: int, char_dim: int, filters: int) -> tuple[nn.Embedding, nn.Conv1d]:
    """The character embeddings and width-3 convolution `char_cnn_vectors` reads (owned by each model, whose
    checkpoints keep them as `char_embeddings` and `char_conv`)."""
    return nn.Embedding(vocab_size, char_dim, padding_idx=0), nn.Conv1d(char_dim, filters, kernel_size=3, padding=1)


def char_cnn_vectors(char_ids: torch.Tensor | None, embeddings: nn.Embedding, conv: nn.Conv1d) -> torch.Tensor:
    """(batch, seq, filters) from (batch, seq, chars): the CNN max-pooled over each token's characters, zeros
    for a token without any."""
    if char_ids is None:
        raise ValueError("this model has a character encoder: pass `char_ids` (its tokenizer returns them)")
    batch, seq, width = char_ids.shape
    flat = char_ids.reshape(batch * seq, width)
    convolved = conv(embeddings(flat).transpose(1, 2))
    pooled = convolved.masked_fill((flat == 0).unsqueeze(1), float("-inf")).amax(-1)
    pooled = pooled.masked_fill((flat == 0).all(-1, keepdim=True), 0.0)
    return pooled.reshape(batch, seq, -1)

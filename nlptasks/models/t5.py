"""T5 offline: a named size (`FAMILY`) and a Unigram tokenizer trained on the recipe's data.

Hub ids (`t5-small`) load pretrained through the generic path in `models/__init__.py`; the size
aliases (`t5-tiny`, `t5-mini`) build a randomly initialised `T5Config` for whichever head the
task's Auto class maps for T5 (`T5ForConditionalGeneration` for generation, and the
sequence-classification, token-classification and question-answering heads), so every task
can have a T5 row without the Hub.

The tokenizer is SentencePiece-style, trained by the `tokenizers` library on every text of the
training split (`Task.corpus`: the task's text columns, source and target alike): NFKC, runs of
whitespace as one space, `▁` marking word starts (Metaspace), a Unigram language-model
vocabulary, and `</s>` appended to every input. Words are split at whitespace before the `▁` is
added, so a word's first piece has the word's own character offsets, not the space before it:
QA answers and NER entities cut from the text by offsets carry no leading space. Special ids
follow T5: `<pad>` 0 (also the decoder start), `</s>` 1, `<unk>` 2. It is saved with the run,
so `nlptasks.load` and bare `transformers` read it back. The `tokenizers` Unigram trainer is
not deterministic (piece scores and order vary slightly between runs), so a tokenizer is learnt
once per training text and size and kept in the cache folder: later runs on the same data, and
every process of a distributed run, read that one.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

import datasets
import transformers
from pydantic import Field, model_validator
from tokenizers import Regex, Tokenizer, decoders, normalizers, pre_tokenizers, processors, trainers
from tokenizers.models import Unigram
from transformers import PreTrainedModel, PreTrainedTokenizerFast, T5Config

from nlptasks import catalog
from nlptasks.config import Section, validate_section
from nlptasks.errors import RecipeError
from nlptasks.rundir import publish_folder
from nlptasks.tasks.base import Task

if TYPE_CHECKING:
    from nlptasks.models import BuildRequest

SPECIAL_TOKENS = ("<pad>", "</s>", "<unk>")


class T5Size(Section):
    """A T5 size; an alias gives every field and `model_args` may override any of them."""

    num_layers: int = Field(gt=0)
    """Layers of the encoder, and of the decoder."""
    d_model: int = Field(gt=0)
    d_ff: int = Field(gt=0)
    """Width of each feed-forward block."""
    num_heads: int = Field(gt=0)
    vocab_size: int = Field(gt=len(SPECIAL_TOKENS))
    """Pieces the Unigram tokenizer may learn (fewer where the training text has fewer)."""
    dropout_rate: float = Field(default=0.1, ge=0, lt=1)

    @model_validator(mode="after")
    def _heads_divide_width(self) -> T5Size:
        if self.d_model % self.num_heads:
            raise ValueError(f"d_model {self.d_model} is not a multiple of num_heads {self.num_heads}")
        return self


def build(
    preset: Mapping[str, int],
    model_args: dict[str, Any],
    task: Task,
    head: dict[str, Any],
    train_examples: datasets.Dataset,
) -> tuple[PreTrainedModel, PreTrainedTokenizerFast]:
    """A random T5 of an alias's size (`preset`, overridden by `model_args`) with the task's head, and its tokenizer.

    `head` holds the config's label settings.
    """
    size = validate_section(T5Size, {**preset, **model_args}, "model_args")
    tokenizer = train_unigram_tokenizer(task.corpus(train_examples), size.vocab_size)
    config = T5Config(
        vocab_size=len(tokenizer),
        d_model=size.d_model,
        d_kv=size.d_model // size.num_heads,
        d_ff=size.d_ff,
        num_layers=size.num_layers,
        num_heads=size.num_heads,
        dropout_rate=size.dropout_rate,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        decoder_start_token_id=tokenizer.pad_token_id,
        **head,
    )
    return getattr(transformers, task.auto_model).from_config(config), tokenizer


def train_unigram_tokenizer(texts: Iterable[str], vocab_size: int) -> PreTrainedTokenizerFast:
    """A SentencePiece-style Unigram tokenizer learnt from `texts`, or the one learnt before from the same texts.

    Kept under a digest of the texts and size: the processes of a distributed run build their
    models main process first, so the others read its tokenizer instead of learning a different one.
    """
    texts = list(texts)
    digest = hashlib.sha256(f"unigram {vocab_size}".encode())
    for text in texts:
        digest.update(text.encode("utf-8") + b"\0")
    folder = catalog.cache_dir() / "tokenizers" / f"unigram-{digest.hexdigest()[:24]}"
    if (folder / "tokenizer.json").is_file():
        return PreTrainedTokenizerFast.from_pretrained(folder)
    tokenizer = _learn_unigram(texts, vocab_size)
    publish_folder(folder, tokenizer.save_pretrained)
    return tokenizer


def _learn_unigram(texts: list[str], vocab_size: int) -> PreTrainedTokenizerFast:
    """See the module docstring for the normalisation and pre-tokenization."""
    unigram = Tokenizer(Unigram())
    unigram.normalizer = normalizers.Sequence(
        [normalizers.NFKC(), normalizers.Replace(Regex(r"\s+"), " "), normalizers.Strip()]
    )
    unigram.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Metaspace()])
    unigram.decoder = decoders.Metaspace()
    trainer = trainers.UnigramTrainer(vocab_size=vocab_size, special_tokens=list(SPECIAL_TOKENS), unk_token="<unk>")
    try:
        unigram.train_from_iterator(texts, trainer)
    except Exception as err:  # `tokenizers` raises a bare Exception
        if "not large enough" not in str(err):
            raise
        raise RecipeError(
            f"model_args.vocab_size: {vocab_size} pieces cannot hold every character of the training text; raise it"
        ) from None
    end = unigram.token_to_id("</s>")
    unigram.post_processor = processors.TemplateProcessing(
        single="$A </s>", pair="$A </s> $B </s>", special_tokens=[("</s>", end)]
    )
    pad, eos, unk = SPECIAL_TOKENS
    return PreTrainedTokenizerFast(tokenizer_object=unigram, pad_token=pad, eos_token=eos, unk_token=unk)


def _build_alias(request: BuildRequest) -> tuple[PreTrainedModel, PreTrainedTokenizerFast]:
    return build(request.setting, request.model_args, request.task, request.head, request.train_examples)


FAMILY = catalog.register_family(
    catalog.ModelFamily(
        aliases={
            "t5-tiny": {"num_layers": 2, "d_model": 64, "d_ff": 128, "num_heads": 2, "vocab_size": 2000},
            "t5-mini": {"num_layers": 4, "d_model": 256, "d_ff": 1024, "num_heads": 4, "vocab_size": 8000},
        },
        family="seq2seq",
        summary="T5 from a size, offline",
        build=_build_alias,
        fresh="random weights",
        options=T5Size,
    )
)
"""T5 built offline from a size (random weights, a Unigram tokenizer trained on the data).

`num_layers` counts encoder and decoder layers each; `model_args` overrides any field. `t5-mini`
has 9.4M parameters with its 8,000-piece vocabulary (embeddings tied); `t5-tiny` is for tests.
"""

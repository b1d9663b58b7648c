"""CTranslate2 for the generating tasks: convert a run's model, and decode with it where `generate` ran.

`CTranslate2Model` stands where the transformers model stood for `models.generation.generate_ids`:
it has the model's `config` and `generation_config` (the recipe's `generation` section, which
`configure` writes into it as into any model) and a `generate` that answers in `generate`'s
layout. So evaluation, `predict`, `eval`, `serve` and RAG decode through one path whichever
engine runs, and a setting the engine cannot honour is refused there, never ignored.

The conversion is the `ctranslate2` package's own (`TransformersConverter`): it maps the
architectures it knows (T5, Llama, and more) and refuses the rest, such as BERT2BERT's
`EncoderDecoderModel` or the RNN encoder-decoders, which then keep the transformers engine.
A converted model lives in a `ctranslate2/` folder: inside a run's `model/` when the recipe
decodes with it, or beside the config and tokenizer of an export.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import logging
import math
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import GenerationConfig, PretrainedConfig

from nlptasks import adapters
from nlptasks.catalog import cache_dir
from nlptasks.errors import RecipeError, UserInputError
from nlptasks.rundir import publish_folder

log = logging.getLogger("nlptasks")
FOLDER = "ctranslate2"
QUANTIZATIONS = ("int8",)
ENGINES = ("transformers", "ctranslate2")
VOCABULARIES = ("shared_vocabulary.json", "vocabulary.json", "target_vocabulary.json")


def is_ctranslate2_folder(folder: Path) -> bool:
    return (folder / FOLDER / "model.bin").is_file()


def conversion_cache(location: str) -> Path:
    """Where a model named by a Hub id or folder keeps its conversion: one per location and weights' last change."""
    weights = sorted(Path(location).glob("*.safetensors")) if Path(location).is_dir() else []
    stamp = f"{location}|{[(path.name, path.stat().st_mtime_ns) for path in weights]}"
    return cache_dir() / "ctranslate2" / hashlib.sha256(stamp.encode()).hexdigest()[:16]


def check_convertible(config: PretrainedConfig) -> None:
    """Refuse, before any training, a model whose configuration the converter has no loader for.

    The converter's registry is private; where it is missing the conversion itself is the check.
    """
    known = getattr(_ctranslate2().converters.transformers, "_MODEL_LOADERS", None)
    if known is not None and type(config).__name__ not in known:
        raise RecipeError(
            f"generation.engine: ctranslate2 has no converter for {type(config).__name__} models "
            "(BERT2BERT and the RNN encoder-decoders have none); use generation.engine: transformers"
        )


def _ctranslate2() -> Any:
    try:
        import ctranslate2
    except ImportError:
        raise UserInputError(
            "generation.engine ctranslate2 and --format ctranslate2 need the ctranslate2 package: "
            "pip install 'nlptasks[export]' (scripts/setup.sh installs it)"
        ) from None
    return ctranslate2


def convert(model: Any, tokenizer: Any, folder: Path, quantize: str | None = None) -> None:
    """Write `model` (adapters merged in a copy, the model itself untouched) as `folder/ctranslate2`.

    The converter reads a saved transformers folder, so the model and tokenizer are saved to a
    scratch folder first. `quantize="int8"` stores int8 weights, which CTranslate2 then runs as int8.
    """
    ctranslate2 = _ctranslate2()
    if _has_adapters(model):
        model = adapters.merged(copy.deepcopy(model))
    with tempfile.TemporaryDirectory(prefix="nlptasks-ct2-") as staging:
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        converter = ctranslate2.converters.TransformersConverter(staging, low_cpu_mem_usage=True)

        def write(target: Path) -> None:
            try:
                with _converter_quiet():
                    converter.convert(str(target), quantization=quantize, force=True)
            except (ValueError, NotImplementedError) as err:
                raise RecipeError(
                    f"generation.engine: ctranslate2 cannot run this model ({type(model).__name__}: {err}); "
                    "use generation.engine: transformers"
                ) from None

        publish_folder(folder / FOLDER, write)


def _has_adapters(model: Any) -> bool:
    return any(hasattr(module, "merge_and_unload") for module in model.modules())


@contextlib.contextmanager
def _converter_quiet() -> Iterator[None]:
    """The converter loads the model through transformers, whose progress bars and notes (tied weights reported
    as missing) would fill a run's log."""
    from transformers.utils import logging as transformers_logging

    bars, verbosity = transformers_logging.is_progress_bar_enabled(), transformers_logging.get_verbosity()
    transformers_logging.disable_progress_bar()
    transformers_logging.set_verbosity_error()
    try:
        yield
    finally:
        transformers_logging.set_verbosity(verbosity)
        if bars:
            transformers_logging.enable_progress_bar()


class CTranslate2Model:
    """A CTranslate2 translator (encoder-decoder) or generator (decoder) behind `generate_ids`.

    On the CPU a batch is split across one single-threaded worker per torch thread (`inter_threads`):
    a small model's decoding steps are too short for threads to share one. A caller that decodes one
    input at a time (RAG's answers) sets `batches_in_parallel=False`: every thread then works on it.
    """

    def __init__(
        self,
        folder: Path,
        config: PretrainedConfig,
        generation_config: GenerationConfig,
        quantize: str | None = None,
        batches_in_parallel: bool = True,
    ) -> None:
        ctranslate2 = _ctranslate2()
        path = folder / FOLDER
        engine = ctranslate2.Translator if config.is_encoder_decoder else ctranslate2.Generator
        device = "cuda" if ctranslate2.get_cuda_device_count() else "cpu"
        compute_type = quantize or "default"  # default: as stored (an int8 export runs in int8)
        threads = torch.get_num_threads()
        self.workers = threads if batches_in_parallel and device == "cpu" else 1
        self.engine = engine(
            str(path),
            device=device,
            compute_type=compute_type,
            inter_threads=self.workers,
            intra_threads=threads // self.workers,
        )
        self.batches_in_parallel = batches_in_parallel
        self.folder = folder
        self.quantize = quantize
        self.config = config
        self.generation_config = generation_config
        self.vocabulary = _vocabulary(path)
        self.token_ids = {token: i for i, token in enumerate(self.vocabulary)}
        self.input_names = ["input_ids", "attention_mask", "labels"]

    @classmethod
    def of(
        cls, model: Any, tokenizer: Any, folder: Path, quantize: str | None = None, batches_in_parallel: bool = True
    ) -> CTranslate2Model:
        """The engine for an in-memory model: its conversion in `folder` if there, else converted there now."""
        if not is_ctranslate2_folder(folder):
            log.info("converting the model for CTranslate2 into %s", folder / FOLDER)
            convert(model, tokenizer, folder)
        return cls(folder, model.config, model.generation_config, quantize, batches_in_parallel)

    def quantized(self, quantize: str | None) -> CTranslate2Model:
        """This engine, or the same conversion loaded again to run in int8 (`quantize`) or as stored (None)."""
        if quantize == self.quantize:
            return self
        return CTranslate2Model(self.folder, self.config, self.generation_config, quantize, self.batches_in_parallel)

    def can_generate(self) -> bool:
        return True

    def eval(self) -> CTranslate2Model:
        return self

    def generate(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Generated ids in `generate`'s layout: after the decoder start token, or after the (left-padded) prompts."""
        options = decoding_options(self.generation_config, self.config.is_encoder_decoder)
        inputs = [
            [self.vocabulary[i] for i in ids[mask.bool()].tolist()] for ids, mask in zip(input_ids, attention_mask)
        ]
        if self.config.is_encoder_decoder:
            results = self.engine.translate_batch(inputs, max_batch_size=-(-len(inputs) // self.workers), **options)
            outputs = [[self.token_ids[token] for token in result.hypotheses[0]] for result in results]
            start = torch.full((len(inputs), 1), self.generation_config.decoder_start_token_id or 0)
            return torch.cat([start, self._padded(outputs)], dim=1)
        # CTranslate2 reads a batch's prompts past the shortest one as forced decoding steps, whose tokens then
        # enter `no_repeat_ngram_size`'s history: with n-gram blocking, each prompt is a batch of its own.
        per_batch = 1 if options["no_repeat_ngram_size"] else -(-len(inputs) // self.workers)
        results = self.engine.generate_batch(
            inputs, max_batch_size=per_batch, include_prompt_in_result=False, **options
        )
        return torch.cat([input_ids, self._padded([result.sequences_ids[0] for result in results])], dim=1)

    def scored_reply(self, prompt: list[int]) -> tuple[list[int], torch.Tensor]:
        """A decoder's greedy reply and its step log-probabilities (see `models.generation.scored_reply`).

        CTranslate2 returns the logits after its own suppression, so a reply that may not begin with a
        `begin_suppress_tokens` token is decoded as it comes, and only where it begins with one decoded
        again after the most likely other first token: each step's log-probabilities stay the model's own.
        (That first token is then prompt to CTranslate2, outside `no_repeat_ngram_size`'s history.)
        """
        options = decoding_options(self.generation_config, encoder_decoder=False)
        tokens = [self.vocabulary[i] for i in prompt]
        reply, log_probs = self._scored(tokens, options)
        barred = self.generation_config.begin_suppress_tokens or []
        if not reply or reply[0] not in barred:
            return reply, log_probs
        first = log_probs[0].index_fill(0, torch.tensor(barred), -math.inf).argmax().item()
        if options["max_length"] == 1 or first in options.get("end_token", []):
            return [first], log_probs[:1]
        rest = {**options, "max_length": options["max_length"] - 1, "min_length": max(options["min_length"] - 1, 0)}
        reply, after = self._scored([*tokens, self.vocabulary[first]], rest)
        return [first, *reply], torch.cat([log_probs[:1], after])

    def _scored(self, tokens: list[str], options: dict[str, Any]) -> tuple[list[int], torch.Tensor]:
        result = self.engine.generate_batch(
            [tokens], include_prompt_in_result=False, return_logits_vocab=True, **options
        )[0]
        logits = torch.stack([torch.as_tensor(np.asarray(step)) for step in result.logits[0]])
        return result.sequences_ids[0], logits.float().log_softmax(-1)

    def _padded(self, sequences: list[list[int]]) -> torch.Tensor:
        padded = torch.full(
            (len(sequences), max(map(len, sequences), default=0)), self.generation_config.pad_token_id or 0
        )
        for row, ids in enumerate(sequences):
            padded[row, : len(ids)] = torch.tensor(ids, dtype=torch.long)
        return padded


def _vocabulary(path: Path) -> list[str]:
    """Token strings by id, as the converter wrote them: CTranslate2 reads its inputs as tokens, not ids."""
    for name in VOCABULARIES:
        if (path / name).is_file():
            return json.loads((path / name).read_text(encoding="utf-8"))
    raise UserInputError(f"{path}: no vocabulary file ({', '.join(VOCABULARIES)}); convert the model again")


def decoding_options(config: GenerationConfig, encoder_decoder: bool) -> dict[str, Any]:
    """The generation settings as CTranslate2's decoding options, with transformers' defaults where unset.

    Lengths count generated tokens only, as `max_new_tokens` does; a setting CTranslate2 would
    read differently is refused rather than approximated.
    """
    if config.do_sample and config.num_beams > 1:
        raise RecipeError(
            "generation: the ctranslate2 engine samples with num_beams 1 only (transformers' beam sampling has no "
            "counterpart there); set num_beams: 1 or generation.engine: transformers"
        )
    longest, shortest = (
        ("max_decoding_length", "min_decoding_length") if encoder_decoder else ("max_length", "min_length")
    )
    options = {
        "beam_size": config.num_beams,
        longest: config.max_new_tokens,
        shortest: config.min_new_tokens or 0,
        "length_penalty": 1.0 if config.length_penalty is None else config.length_penalty,
        "no_repeat_ngram_size": config.no_repeat_ngram_size or 0,
        "return_end_token": True,
    }
    if (end := config.eos_token_id) is not None:
        options["end_token"] = end if isinstance(end, list) else [end]
    if config.do_sample:
        options.update(
            sampling_topk=config.top_k or 50,
            sampling_topp=1.0 if config.top_p is None else config.top_p,
            sampling_temperature=1.0 if config.temperature is None else config.temperature,
        )
    return options

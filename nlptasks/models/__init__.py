"""Model building and loading for every family, behind one pair of functions.

`build` looks the name up in the family registry (`catalog.py`) and calls the family's builder
with a `BuildRequest`; a Hub id, a local folder or a packaged alias loads pretrained weights
through the task's `Auto*` class, so any architecture that `transformers` maps (BERT, Llama,
T5, ...) works unchanged. The families built here have their own modules, each registering its
entry beside its builder: the recurrent baselines (`recurrent.py`), the RNN encoder-decoders of
the generating tasks (`rnn_seq2seq.py`) and T5 from a size (`t5.py`: random weights and a
tokenizer trained on the data). Warm-started encoder-decoders (`bert2bert-minilm-l6`:
`EncoderDecoderModel` from one encoder on both sides) are registered below. Every family saves as
a `PreTrainedModel` registered with the Auto classes, so the training core, checkpoints, resume
and `load` treat them all exactly like transformers.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import datasets
import torch
import transformers
from peft import PeftModel
from tokenizers import pre_tokenizers
from transformers import AutoTokenizer, PreTrainedModel

from nlptasks import adapters, catalog, engines
from nlptasks.engines import ctranslate2, onnx
from nlptasks.errors import RecipeError, did_you_mean
from nlptasks.models import recurrent, rnn_seq2seq, t5, tagger  # noqa: F401 - each registers its family or Auto classes
from nlptasks.tasks.base import Task

UNSAFE_LOADING_ARGS = {"trust_remote_code", "use_safetensors", "weights_only", "code_revision"}
"""`from_pretrained` arguments that would load pickles or run a checkpoint's own code: never from a recipe."""


@dataclass(frozen=True)
class BuildRequest:
    """What a family's builder gets; each reads the fields it needs."""

    ref: catalog.ModelRef
    setting: Any
    """The alias's setting in its family entry (an RNN cell, a T5 size, its weights); None for a Hub id or folder."""
    model_args: dict[str, Any]
    task: Task
    labels: list[str]
    train_examples: datasets.Dataset
    adaptation: adapters.Adaptation | None = None

    @property
    def head(self) -> dict[str, Any]:
        """Config settings sizing a classification head; none for tasks without class labels (QA, generation)."""
        if not self.labels:
            return {}
        return {
            "num_labels": len(self.labels),
            "id2label": dict(enumerate(self.labels)),
            "label2id": {label: i for i, label in enumerate(self.labels)},
        }


def build(
    model_name: str,
    model_args: dict[str, Any],
    task: Task,
    labels: list[str],
    train_examples: datasets.Dataset,
    adaptation: adapters.Adaptation | None = None,
) -> tuple[PreTrainedModel, Any]:
    """A fresh model with the task's head sized to `labels`, and its tokenizer; LoRA-wrapped with `adaptation`."""
    ref = catalog.resolve_model(model_name)
    entry = catalog.model_family(model_name)
    if adaptation and entry and entry.fresh:
        raise RecipeError(f"method: LoRA adapts pretrained weights; '{model_name}' has {entry.fresh}: use method: full")
    if task.generates and ref.family not in ("seq2seq", "decoder"):
        raise RecipeError(
            f"model: '{model_name}' is a{'n' if ref.family == 'encoder' else ''} {ref.family} model and task "
            f"'{task.name}' generates text with an encoder-decoder or a decoder: use {_generating_models()}"
            " or a Hub id such as t5-small"
        )
    task.use_model_family(ref.family)
    if unsafe := sorted(UNSAFE_LOADING_ARGS & set(model_args)):
        raise RecipeError(
            f"model_args.{unsafe[0]}: nlptasks loads weights only from safetensors or as plain tensors "
            "(torch.load with weights_only) and never runs Python code shipped with a model; this cannot be changed"
        )
    setting = entry.aliases[model_name] if entry else None
    request = BuildRequest(ref, setting, model_args, task, labels, train_examples, adaptation)
    return (entry.build if entry and entry.build else _pretrained)(request)


def _generating_models() -> str:
    """The registered families that generate text, each as its aliases and what it is."""
    families = [entry for entry in catalog.model_families() if entry.family in ("seq2seq", "decoder")]
    return ", ".join(f"{', '.join(entry.aliases)} ({entry.summary})" for entry in families)


def _pretrained(request: BuildRequest) -> tuple[PreTrainedModel, Any]:
    """A checkpoint's weights under the task's head (which starts random), LoRA-wrapped with `adaptation`;
    inside a tagger with a character CNN or a CRF where `model_args` ask for one (`tagger.py`)."""
    ref, task = request.ref, request.task
    tokenizer = load_tokenizer(ref.location, ref.family, task.generates)
    config_args = _config_overrides(ref.location, request.model_args)
    if tagger.requested(request.model_args):
        return tagger.build(request, tokenizer, config_args)
    auto_class = getattr(transformers, task.auto_model)
    quantization = adapters.quantization(request.adaptation)
    model, loading = auto_class.from_pretrained(
        ref.location, output_loading_info=True, **request.head, **quantization, **config_args
    )
    fresh = _restore_backbone(model, ref.location, loading["missing_keys"])
    model.config.pad_token_id = tokenizer.pad_token_id
    if request.adaptation:
        return adapters.with_lora(model, request.adaptation, task.auto_model, fresh), tokenizer
    return model, tokenizer


LOADING_ARGS = frozenset({"attn_implementation", "dtype", "revision", "subfolder"})
"""`from_pretrained` arguments a recipe may pass in `model_args` that are not config settings."""


def _config_overrides(location: str, model_args: dict[str, Any]) -> dict[str, Any]:
    """The `model_args` that reach the checkpoint's `from_pretrained`, each checked against its config: a
    misspelt key would otherwise become a new config attribute that nothing reads, silently."""
    overrides = {key: value for key, value in model_args.items() if key not in tagger.TAGGER_KEYS}
    if not overrides:
        return overrides
    config = transformers.AutoConfig.from_pretrained(location)
    known = {*config.to_dict(), *config.attribute_map, *LOADING_ARGS}
    for key in overrides:
        if key not in known:
            raise RecipeError(
                f"model_args.{key}: not a setting of this {config.model_type} model's config, nor of the layers "
                f"a tagger adds{did_you_mean(key, known | tagger.TAGGER_KEYS)}"
            )
    return overrides


def _warm_started(request: BuildRequest) -> tuple[PreTrainedModel, Any]:
    """BERT2BERT (Rothe et al., 2020): encoder and decoder both initialised from one encoder checkpoint.

    The decoder copy gets a causal mask and new, randomly initialised cross-attention; both
    halves keep the encoder's vocabulary. Outputs start after `[CLS]` (the decoder start token)
    and end with `[SEP]`, which the tokenizer therefore names its bos and eos tokens.
    `model_args` reach `EncoderDecoderModel.from_encoder_decoder_pretrained` (keys prefixed
    `encoder_` / `decoder_` configure one half only, e.g. `decoder_hidden_dropout_prob`).
    """
    location = request.ref.location
    tokenizer = load_tokenizer(location, "encoder")
    tokenizer.bos_token, tokenizer.eos_token = tokenizer.cls_token, tokenizer.sep_token
    model = transformers.EncoderDecoderModel.from_encoder_decoder_pretrained(location, location, **request.model_args)
    model.config.decoder_start_token_id = model.config.bos_token_id = tokenizer.cls_token_id
    model.config.eos_token_id = tokenizer.sep_token_id
    model.config.pad_token_id = tokenizer.pad_token_id
    return model, tokenizer


catalog.register_family(
    catalog.ModelFamily(
        aliases={"bert2bert-minilm-l6": catalog.WeightsOf("minilm-l6")},
        family="seq2seq",
        summary="warm-started from an encoder",
        build=_warm_started,
        fresh="new cross-attention",
    )
)


def _restore_backbone(model: PreTrainedModel, location: str, missing: Iterable[str]) -> list[str]:
    """Load pretrained backbone weights that the checkpoint stores under another prefix than the head class.

    `LlamaForQuestionAnswering` keeps its backbone as `transformer.` while causal-LM checkpoints
    store `model.`, so `from_pretrained` silently leaves it random (transformers#30381). Returns
    the weights still fresh: the task head.
    """
    prefix = f"{model.base_model_prefix}."
    if not any(key.startswith(prefix) for key in missing):
        return list(missing)
    backbone = transformers.AutoModel.from_pretrained(location)
    model.base_model.load_state_dict(backbone.state_dict())
    return [key for key in missing if not key.startswith(prefix)]


def load(
    model_dir: Path, task: Task, quantized: bool = False, adapter_name: str = "default"
) -> tuple[PreTrainedModel, Any]:
    """A trained model and tokenizer from a run's `model/` folder, any family, or from an ONNX or CTranslate2 export.

    An adapter folder loads over its base model; a QLoRA (`quantized`) adapter over that base
    quantized to NF4 and dequantized, the weights it trained against.
    """
    family = catalog.family_of(model_dir)
    task.use_model_family(family)
    tokenizer = load_tokenizer(str(model_dir), family, task.generates)
    if onnx.is_onnx_folder(model_dir):
        return onnx.OnnxModel(model_dir, transformers.AutoConfig.from_pretrained(model_dir)), tokenizer
    if engines.export_format(model_dir) == "ctranslate2":
        config, decoding = (
            transformers.AutoConfig.from_pretrained(model_dir),
            transformers.GenerationConfig.from_pretrained(model_dir),
        )
        return ctranslate2.CTranslate2Model(model_dir, config, decoding), tokenizer
    auto_class = getattr(transformers, task.auto_model)
    if not adapters.is_adapter_folder(model_dir):
        return auto_class.from_pretrained(model_dir), tokenizer
    base = adapters.base_model_of(model_dir)
    quantization = {"quantization_config": adapters.nf4(torch.float32)} if quantized else {}
    model, loading = auto_class.from_pretrained(
        base, config=transformers.AutoConfig.from_pretrained(model_dir), output_loading_info=True, **quantization
    )
    _restore_backbone(model, base, loading["missing_keys"])
    if quantized:
        adapters.unquantize_fresh_layers(model)
        model = model.dequantize()
    if (model_dir / "generation_config.json").is_file():
        model.generation_config = transformers.GenerationConfig.from_pretrained(model_dir)
    return PeftModel.from_pretrained(model, model_dir, adapter_name=adapter_name), tokenizer


def load_tokenizer(location: str, family: str, generates: bool = False) -> Any:
    """A tokenizer ready for word-split input and batching: decoders get a prefix space and a pad token.

    A decoder that generates keeps its own pre-tokenizer: its chat prompts must tokenize as in its training.
    """
    tokenizer = AutoTokenizer.from_pretrained(location)
    if family == "decoder" and not generates:
        _add_prefix_space(tokenizer)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def _add_prefix_space(tokenizer: Any) -> None:
    """Byte-level BPE words as the model saw them mid-sentence (`ĠParis`, not `Paris`).

    Word-split input (NER) encodes each word alone; without the prefix space every word looks
    sentence-initial. `add_prefix_space=True` as a loading argument does not reach a tokenizer
    built from GGUF or tokenizer.json in transformers 5, so the pre-tokenizer is set directly
    (and saved with the run's tokenizer).
    """
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None or backend.pre_tokenizer is None:
        return
    state = json.loads(backend.to_str())["pre_tokenizer"]
    if state.get("type") == "ByteLevel" and not state.get("add_prefix_space"):
        backend.pre_tokenizer = pre_tokenizers.ByteLevel(
            add_prefix_space=True, trim_offsets=state.get("trim_offsets", True), use_regex=state.get("use_regex", True)
        )

"""Model building and loading for every family, behind one pair of functions.

Transformers get the task's head through the task's `Auto*` class, so any architecture that
`transformers` maps (BERT, Llama, T5, ...) works unchanged. The recurrent baselines are
`PreTrainedModel`s registered with the same Auto classes, so the training core, checkpoints,
resume and `load` treat them exactly like transformers.

Two kinds of alias build a model no checkpoint holds: T5 sizes (`t5-mini`, `t5.py`: random
weights and a tokenizer trained on the data) and warm-started encoder-decoders
(`bert2bert-minilm-l6`: `EncoderDecoderModel` from one encoder on both sides). Both save as
ordinary transformers models, so `load` needs nothing special for them. The RNN
encoder-decoders (`lstm-attention`, `gru-attention`, `rnn_seq2seq.py`) are the generating
tasks' recurrent baselines, registered with `AutoModelForSeq2SeqLM` like the others.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import datasets
import torch
import transformers
from peft import PeftModel
from tokenizers import pre_tokenizers
from transformers import AutoTokenizer, PreTrainedModel

from nlptasks import adapters, catalog
from nlptasks.errors import RecipeError
from nlptasks.tasks.base import Task

UNSAFE_LOADING_ARGS = {"trust_remote_code", "use_safetensors", "weights_only", "code_revision"}
"""`from_pretrained` arguments that would load pickles or run a checkpoint's own code: never from a recipe."""


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
    if adaptation and (fresh := _built_fresh(ref)):
        raise RecipeError(f"method: LoRA adapts pretrained weights; '{model_name}' has {fresh}: use method: full")
    if task.generates and ref.family not in ("seq2seq", "decoder"):
        decoders = [name for name, entry in catalog.MODELS.items() if entry.family == "decoder"]
        raise RecipeError(
            f"model: '{model_name}' is a{'n' if ref.family == 'encoder' else ''} {ref.family} model and task "
            f"'{task.name}' generates text with an encoder-decoder or a decoder: use t5-mini (offline), "
            f"{', '.join(decoders)} (a decoder), "
            f"{', '.join(catalog.WARM_STARTED)} (warm-started from an encoder), "
            f"{', '.join(catalog.RNN_SEQ2SEQ_MODELS)} (recurrent baselines) or a Hub id such as t5-small"
        )
    task.use_model_family(ref.family)
    if unsafe := sorted(UNSAFE_LOADING_ARGS & set(model_args)):
        raise RecipeError(
            f"model_args.{unsafe[0]}: nlptasks loads weights only from safetensors or as plain tensors "
            "(torch.load with weights_only) and never runs Python code shipped with a model; this cannot be changed"
        )
    if ref.family == "recurrent":
        from nlptasks.models import recurrent

        return recurrent.build(task, catalog.RECURRENT_MODELS[ref.name], model_args, labels, train_examples)
    if ref.name in catalog.RNN_SEQ2SEQ_MODELS:
        from nlptasks.models import rnn_seq2seq

        return rnn_seq2seq.build(task, catalog.RNN_SEQ2SEQ_MODELS[ref.name], model_args, train_examples)
    if ref.name in catalog.T5_SIZES:
        from nlptasks.models import t5

        return t5.build(ref.name, model_args, task, _head(labels), train_examples)
    if ref.name in catalog.WARM_STARTED:
        return _warm_started(ref.location, model_args)
    tokenizer = load_tokenizer(ref.location, ref.family, task.generates)
    auto_class = getattr(transformers, task.auto_model)
    quantization = adapters.quantization(adaptation)
    model, loading = auto_class.from_pretrained(
        ref.location, output_loading_info=True, **_head(labels), **quantization, **model_args
    )
    fresh = _restore_backbone(model, ref.location, loading["missing_keys"])
    model.config.pad_token_id = tokenizer.pad_token_id
    if adaptation:
        return adapters.with_lora(model, adaptation, task.auto_model, fresh), tokenizer
    return model, tokenizer


def _built_fresh(ref: catalog.ModelRef) -> str | None:
    """What an alias built without a whole checkpoint starts with at random; None for a pretrained checkpoint."""
    if ref.name in catalog.WARM_STARTED:
        return "new cross-attention"
    if ref.family == "recurrent" or ref.name in {*catalog.T5_SIZES, *catalog.RNN_SEQ2SEQ_MODELS}:
        return "random weights"
    return None


def _head(labels: list[str]) -> dict[str, Any]:
    """Config settings sizing a classification head; none for tasks without class labels (QA, generation)."""
    if not labels:
        return {}
    return {
        "num_labels": len(labels),
        "id2label": dict(enumerate(labels)),
        "label2id": {label: i for i, label in enumerate(labels)},
    }


def _warm_started(location: str, model_args: dict[str, Any]) -> tuple[PreTrainedModel, Any]:
    """BERT2BERT (Rothe et al., 2020): encoder and decoder both initialised from one encoder checkpoint.

    The decoder copy gets a causal mask and new, randomly initialised cross-attention; both
    halves keep the encoder's vocabulary. Outputs start after `[CLS]` (the decoder start token)
    and end with `[SEP]`, which the tokenizer therefore names its bos and eos tokens.
    `model_args` reach `EncoderDecoderModel.from_encoder_decoder_pretrained` (keys prefixed
    `encoder_` / `decoder_` configure one half only, e.g. `decoder_hidden_dropout_prob`).
    """
    tokenizer = load_tokenizer(location, "encoder")
    tokenizer.bos_token, tokenizer.eos_token = tokenizer.cls_token, tokenizer.sep_token
    model = transformers.EncoderDecoderModel.from_encoder_decoder_pretrained(location, location, **model_args)
    model.config.decoder_start_token_id = model.config.bos_token_id = tokenizer.cls_token_id
    model.config.eos_token_id = tokenizer.sep_token_id
    model.config.pad_token_id = tokenizer.pad_token_id
    return model, tokenizer


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
    """A trained model and tokenizer from a run's `model/` folder, any family.

    An adapter folder loads over its base model; a QLoRA (`quantized`) adapter over that base
    quantized to NF4 and dequantized, the weights it trained against.
    """
    from nlptasks.models import recurrent, rnn_seq2seq  # noqa: F401 - register the toolkit's own models with the Auto classes

    family = catalog.family_of(model_dir)
    task.use_model_family(family)
    auto_class = getattr(transformers, task.auto_model)
    tokenizer = load_tokenizer(str(model_dir), family, task.generates)
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

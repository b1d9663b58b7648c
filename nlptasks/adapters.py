"""LoRA through `peft`: one step after a pretrained model is built, the same for every task and family.

What gets an adapter and what trains in full follows from the checkpoint. The architecture's
attention and MLP projections get low-rank adapters (`PROJECTIONS`; every linear layer but the
output layer for architectures not listed), and every weight the checkpoint lacked — the task
head — trains in full and is saved with the adapter (`modules_to_save`). A run's `model/` then
holds the adapter, those modules and the model's config (megabytes), and names the base model it
adapts, which `load` reads back.

QLoRA (`method: qlora`) loads the base weights in 4-bit NF4 with double quantization
(bitsandbytes; on CUDA and, from bitsandbytes 0.48, on the CPU), computing in bf16 where the
recipe's precision resolves to it; the task head stays out of the quantization. On the CPU it
also makes glibc hand freed memory back (`heap.serve_large_blocks_by_mmap`): memory is what
QLoRA is for.
A QLoRA run loads back over its base quantized to NF4 and dequantized: the very weights its
adapters trained against, so `predict` and a merged export score as the run did.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from peft import LoraConfig, PeftConfig, PeftModel, get_peft_model, prepare_model_for_kbit_training
from transformers import BitsAndBytesConfig, PreTrainedModel
from transformers.pytorch_utils import Conv1D

from nlptasks import heap
from nlptasks.errors import RecipeError, did_you_mean
from nlptasks.recipe import AdapterOptions

_BERT_LIKE = ("query", "key", "value", "dense")
_LLAMA_LIKE = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
PROJECTIONS: dict[str, tuple[str, ...]] = {
    "bert": _BERT_LIKE,
    "roberta": _BERT_LIKE,
    "xlm-roberta": _BERT_LIKE,
    "electra": _BERT_LIKE,
    "distilbert": ("q_lin", "k_lin", "v_lin", "out_lin", "lin1", "lin2"),
    "llama": _LLAMA_LIKE,
    "mistral": _LLAMA_LIKE,
    "qwen2": _LLAMA_LIKE,
    "t5": ("q", "k", "v", "o", "wi", "wi_0", "wi_1", "wo"),
    "gpt2": ("c_attn", "c_proj", "c_fc"),
}
"""Leaf names of the attention and MLP projections per `config.model_type`."""

PEFT_TASK_TYPES = {
    "AutoModelForSequenceClassification": "SEQ_CLS",
    "AutoModelForTokenClassification": "TOKEN_CLS",
    "AutoModelForQuestionAnswering": "QUESTION_ANS",
    "AutoModelForSeq2SeqLM": "SEQ_2_SEQ_LM",
    "AutoModelForCausalLM": "CAUSAL_LM",
}


@dataclass(frozen=True)
class Adaptation:
    """How a pretrained model is adapted: the LoRA settings and, for QLoRA, its 4-bit base."""

    options: AdapterOptions
    quantized: bool = False
    compute_dtype: torch.dtype = torch.float32
    gradient_checkpointing: bool = False


def quantization(adaptation: Adaptation | None) -> dict[str, Any]:
    """`from_pretrained` arguments loading the base in 4-bit NF4 for QLoRA; none otherwise."""
    if adaptation is None or not adaptation.quantized:
        return {}
    try:
        import bitsandbytes  # noqa: F401 - only to fail early with the install command
    except ImportError:
        raise RecipeError("method: qlora needs bitsandbytes: pip install 'nlptasks[quant]'") from None
    return {"quantization_config": nf4(adaptation.compute_dtype), "dtype": adaptation.compute_dtype}


def serve_large_blocks_by_mmap_for_4bit(adaptation: Adaptation | None) -> None:
    """For QLoRA on the CPU, serve large blocks by mmap for the rest of the process (`heap`).

    Dequantized copies of the 4-bit weights at every use fragment glibc's heap up to full
    fine-tuning's size; the training core's periodic trim alone keeps the speed but not the memory.
    """
    if adaptation is not None and adaptation.quantized and not torch.cuda.is_available():
        heap.serve_large_blocks_by_mmap()


def nf4(compute_dtype: torch.dtype) -> BitsAndBytesConfig:
    """QLoRA's 4-bit base: NormalFloat4 with double quantization (Dettmers et al., 2023)."""
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=compute_dtype,
    )


def with_lora(
    model: PreTrainedModel, adaptation: Adaptation, auto_model: str, fresh_weights: Iterable[str]
) -> PeftModel:
    """`model` with LoRA adapters; `fresh_weights` are the parameter names the checkpoint did not hold."""
    if adaptation.quantized:
        unquantize_fresh_layers(model)
        keep_the_trainable_4bit_layout(model)
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=adaptation.gradient_checkpointing)
    elif adaptation.gradient_checkpointing:
        model.enable_input_require_grads()  # frozen embeddings: checkpointed blocks still need a graph to replay
    options = adaptation.options
    saved = options.modules_to_save
    if saved is None:
        saved = sorted({name.rsplit(".", 1)[0] for name in fresh_weights})
    config = LoraConfig(
        r=options.r,
        lora_alpha=options.alpha,
        lora_dropout=options.dropout,
        target_modules=_targets(model, options.target_modules, saved),
        modules_to_save=saved or None,
        task_type=PEFT_TASK_TYPES.get(auto_model),
    )
    return get_peft_model(model, config)


def unquantize_fresh_layers(model: PreTrainedModel) -> None:
    """Plain `Linear` layers again for the weights the checkpoint lacked (the task head), which no 4-bit state holds.

    transformers keeps only the last module out of 4-bit by the last parameter's name, so a head
    with a bias (BERT's `classifier.bias`) or of two layers becomes a `Linear4bit` around a
    freshly initialised float weight that fails at the first forward pass.
    """
    from bitsandbytes.nn import Linear4bit

    for name, module in list(model.named_modules()):
        if isinstance(module, Linear4bit) and getattr(module.weight, "quant_state", None) is None:
            plain = torch.nn.Linear(module.in_features, module.out_features, bias=module.bias is not None)
            plain.weight = torch.nn.Parameter(module.weight.data)
            if module.bias is not None:
                plain.bias = torch.nn.Parameter(module.bias.data)
            model.set_submodule(name, plain)


def keep_the_trainable_4bit_layout(model: PreTrainedModel) -> None:
    """Stop bitsandbytes from repacking 4-bit weights for inference at the first evaluation.

    On a CPU with AVX512-BF16, bitsandbytes 0.50 rewrites a `Linear4bit` weight into an inference
    layout at its first eval-mode forward and keeps it: training after a mid-run evaluation then
    fails (its matmul has no backward), and layers whose sizes are not multiples of 32 fail at once.
    """
    from bitsandbytes.nn import Linear4bit

    for module in model.modules():
        if isinstance(module, Linear4bit):
            module.support_avx512bf16_for_cpu = False


def _targets(model: PreTrainedModel, asked: list[str] | None, saved: list[str]) -> list[str]:
    """Full names of the linear layers to adapt: never the output layer or a module trained in full."""
    output = model.get_output_embeddings()
    linear = {
        name: module
        for name, module in model.named_modules()
        if isinstance(module, torch.nn.Linear | Conv1D) and module is not output
    }
    for name in asked or ():
        if not any(_matches(layer, name) for layer in linear):
            leaves = sorted({layer.rsplit(".", 1)[-1] for layer in linear})
            raise RecipeError(
                f"adapter.target_modules: '{name}' matches no linear layer of {type(model).__name__}"
                f"{did_you_mean(name, leaves)}; its layers: {', '.join(leaves)}"
            )
    wanted = asked or PROJECTIONS.get(_model_type(model))
    return [
        layer
        for layer in linear
        if (wanted is None or any(_matches(layer, name) for name in wanted))
        and not any(_matches(layer, kept) or layer.startswith(f"{kept}.") for kept in saved)
    ]


def _matches(layer: str, name: str) -> bool:
    return layer == name or layer.endswith(f".{name}")


def _model_type(model: PreTrainedModel) -> str:
    config = model.config
    return config.encoder.model_type if config.model_type == "encoder-decoder" else config.model_type


def is_adapter_folder(folder: Path) -> bool:
    return (folder / "adapter_config.json").is_file()


def base_model_of(folder: Path) -> str:
    """The model an adapter folder adapts: a Hub id or a local folder."""
    return PeftConfig.from_pretrained(folder).base_model_name_or_path


def save(model: torch.nn.Module, folder: Path) -> None:
    """A plain model, or an adapter with the configs rebuilding it needs: the head's (labels, sizes) and decoding."""
    model.save_pretrained(folder)
    if isinstance(model, PeftModel):
        base = model.get_base_model()
        config = copy.deepcopy(base.config)
        for quantized_only in ("quantization_config", "_pre_quantization_dtype"):
            config.__dict__.pop(quantized_only, None)  # the run loads back over the full-precision base
        config.save_pretrained(folder)
        if base.can_generate():
            base.generation_config.save_pretrained(folder)


def merged(model: torch.nn.Module) -> torch.nn.Module:
    """LoRA folded into the weights, in place, whether the adapted model is `model` or a task's wrapper's part."""
    if isinstance(model, PeftModel):
        return model.merge_and_unload()
    for name, child in model.named_children():
        if isinstance(child, PeftModel):
            setattr(model, name, child.merge_and_unload())
    return model

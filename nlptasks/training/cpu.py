"""Training on a CPU: dropout masks from a quarter of the random draws, and attention left unfused on short
rows, where PyTorch's fused kernel would not fuse it anyway.

On a CPU, `torch.nn.functional.dropout` draws each element's keep/drop from its own Mersenne Twister
number through `bernoulli_`, on one thread, which makes dropout a large share of a small model's training
step. `cheap_dropout` splits one 64-bit draw into four 16-bit lanes that decide four elements, with the
rate rounded to a 65,536th (0.1 becomes 0.100006); the rest is the mask multiply torch itself does. No
library offers a cheaper mask on the CPU, hence this module.

With dropout on the attention probabilities, `scaled_dot_product_attention` on a CPU falls back to its
unfused math path, which on rows of up to `UNFUSED_ATTENTION_MAX_TOKENS` is slower than transformers'
`eager` attention computing the same products (`benchmarks/step_profile.py` measures both); on longer
rows eager's full-precision scores cost more than they save. Inference, where no dropout applies, keeps
the fused kernel: `attention_implementation` switches it back for evaluation.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn
from transformers import PreTrainedModel

_LANES = 2**16
UNFUSED_ATTENTION_MAX_TOKENS = 256
ATTENTION_DROPOUT_SETTINGS = ("attention_probs_dropout_prob", "attention_dropout")
"""Where configs keep the dropout rate of the attention probabilities (BERT's family; DistilBERT, Llama, ...)."""


def cheap_dropout(inputs: torch.Tensor, rate: float) -> torch.Tensor:
    """`inputs` with a `rate` share of elements zeroed and the rest scaled by 1 / (1 - rate), as in training."""
    count = inputs.numel()
    draws = torch.empty((count + 3) // 4, dtype=torch.int64).random_(-(2**63), None)
    lanes = draws.view(torch.int16)[:count].view(inputs.shape)
    keep = lanes >= round(rate * _LANES) - _LANES // 2
    return inputs * keep.to(inputs.dtype).mul_(1 / (1 - rate))


class CpuDropout(nn.Dropout):
    """`nn.Dropout` whose training-time mask on a CPU comes from `cheap_dropout`; elsewhere it is torch's own."""

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        if self.training and 0 < self.p < 1 and inputs.device.type == "cpu":
            return cheap_dropout(inputs, self.p)
        return super().forward(inputs)


def prepare_for_cpu_training(model: nn.Module, longest_row: int) -> str | None:
    """Both of this module's changes on `model`, whose rows hold at most `longest_row` tokens; the attention
    implementation evaluation should switch back to, or None where the attention was left as it was."""
    use_cpu_dropout(model)
    return unfuse_attention_for_training(model, longest_row)


def use_cpu_dropout(model: nn.Module) -> int:
    """Replace each plain `nn.Dropout` in `model` by a `CpuDropout` of the same rate; the count replaced.

    Only the class changes: a dropout layer holds no weights, so the saved model is the same.
    """
    replaced = 0
    for parent in model.modules():
        for name, child in parent.named_children():
            if type(child) is nn.Dropout:
                setattr(parent, name, CpuDropout(child.p).train(child.training))
                replaced += 1
    return replaced


def unfuse_attention_for_training(model: nn.Module, longest_row: int) -> str | None:
    """Switch `model` (or the transformers model it wraps) from `sdpa` to `eager` attention where its attention
    has dropout and rows hold at most `UNFUSED_ATTENTION_MAX_TOKENS`; the implementation evaluation should
    switch back to, or None where nothing changed."""
    pretrained = transformers_model(model)
    unfused = (
        longest_row <= UNFUSED_ATTENTION_MAX_TOKENS
        and pretrained is not None
        and pretrained.config._attn_implementation == "sdpa"
        and any(getattr(pretrained.config, name, 0) for name in ATTENTION_DROPOUT_SETTINGS)
    )
    if not unfused:
        return None
    pretrained.set_attn_implementation("eager")
    return "sdpa"


@contextlib.contextmanager
def attention_implementation(model: nn.Module, implementation: str) -> Iterator[None]:
    """`model`'s attention computed by `implementation` inside the block, by what it was before after it."""
    pretrained = transformers_model(model)
    before = pretrained.config._attn_implementation
    pretrained.set_attn_implementation(implementation)
    try:
        yield
    finally:
        pretrained.set_attn_implementation(before)


def transformers_model(model: nn.Module) -> PreTrainedModel | None:
    """The outermost transformers model in `model`: itself, the one LoRA wraps, or a task's own head's backbone."""
    return next((module for module in model.modules() if isinstance(module, PreTrainedModel)), None)

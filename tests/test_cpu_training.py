"""Training on a CPU: the cheaper dropout masks and the attention switched between training and evaluation."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn
from transformers import BertConfig, BertForTokenClassification, TrainerCallback

from nlptasks.recipe import load_recipe
from nlptasks.training import core
from nlptasks.training.cpu import (
    UNFUSED_ATTENTION_MAX_TOKENS,
    CpuDropout,
    attention_implementation,
    cheap_dropout,
    unfuse_attention_for_training,
    use_cpu_dropout,
)


def small_bert(**config: Any) -> BertForTokenClassification:
    settings = {"vocab_size": 50, "hidden_size": 16, "num_hidden_layers": 1, "num_attention_heads": 2}
    return BertForTokenClassification(BertConfig(**{**settings, "intermediate_size": 32, **config}))


def test_cheap_dropout_zeroes_the_rate_in_every_lane_and_scales_the_rest() -> None:
    torch.manual_seed(0)
    inputs = torch.ones(1_000_000)
    outputs = cheap_dropout(inputs, 0.1)
    dropped = outputs == 0
    # one standard error of a share of 0.1 over 250,000 elements is 0.0006
    for lane in range(4):
        assert dropped[lane::4].float().mean().item() == pytest.approx(0.1, abs=0.003)
    assert torch.all(outputs[~dropped] == torch.tensor(1 / 0.9))
    assert outputs.mean().item() == pytest.approx(1.0, abs=0.003)


def test_cheap_dropout_follows_the_seed_and_draws_anew_each_call() -> None:
    inputs = torch.ones(3, 5, 7)
    torch.manual_seed(1)
    first, second = cheap_dropout(inputs, 0.5), cheap_dropout(inputs, 0.5)
    torch.manual_seed(1)
    assert torch.equal(cheap_dropout(inputs, 0.5), first)
    assert not torch.equal(first, second)
    assert first.shape == inputs.shape


def test_cheap_dropout_passes_the_gradient_through_the_kept_elements_only() -> None:
    torch.manual_seed(0)
    inputs = torch.randn(64, 32, dtype=torch.bfloat16, requires_grad=True)
    outputs = cheap_dropout(inputs, 0.2)
    outputs.sum().backward()
    kept = outputs != 0
    expected = torch.tensor(1 / 0.8, dtype=torch.bfloat16)  # the scale in the inputs' precision, as torch's dropout
    assert torch.all(inputs.grad[kept] == expected)
    assert torch.all(inputs.grad[~kept] == 0)


def test_cpu_dropout_is_torchs_own_outside_training_and_at_the_edge_rates() -> None:
    inputs = torch.randn(8, 8)
    assert torch.equal(CpuDropout(0.3).eval()(inputs), inputs)
    assert torch.equal(CpuDropout(0.0)(inputs), inputs)
    assert torch.equal(CpuDropout(1.0)(inputs), torch.zeros_like(inputs))
    torch.manual_seed(2)
    trained = CpuDropout(0.3)(inputs)
    torch.manual_seed(2)
    assert torch.equal(trained, cheap_dropout(inputs, 0.3))


def test_use_cpu_dropout_replaces_every_dropout_layer_and_keeps_the_weights_and_outputs() -> None:
    model = small_bert().eval()
    layers = sum(type(module) is nn.Dropout for module in model.modules())
    ids = torch.randint(0, 50, (2, 6))
    before, weights = model(input_ids=ids).logits, model.state_dict()
    assert use_cpu_dropout(model) == layers > 0
    assert not any(type(module) is nn.Dropout for module in model.modules())
    assert model.state_dict().keys() == weights.keys()
    torch.testing.assert_close(model(input_ids=ids).logits, before)


def test_attention_is_unfused_for_training_and_fused_again_inside_the_block() -> None:
    model = small_bert().eval()
    ids, mask = torch.randint(0, 50, (3, 7)), torch.tensor([[1] * 7, [1] * 5 + [0] * 2, [1] * 3 + [0] * 4])
    fused = model(input_ids=ids, attention_mask=mask).logits
    assert unfuse_attention_for_training(model, longest_row=128) == "sdpa"
    assert model.config._attn_implementation == "eager"
    torch.testing.assert_close(model(input_ids=ids, attention_mask=mask).logits, fused, rtol=1e-4, atol=1e-5)
    with attention_implementation(model, "sdpa"):
        assert model.config._attn_implementation == "sdpa"
    assert model.config._attn_implementation == "eager"


def test_attention_without_dropout_keeps_its_fused_kernel() -> None:
    """The fused kernel holds no (length x length) scores for the backward pass: without dropout it stays."""
    model = small_bert(attention_probs_dropout_prob=0.0)
    assert unfuse_attention_for_training(model, longest_row=128) is None
    assert model.config._attn_implementation == "sdpa"


def test_attention_over_long_rows_keeps_its_fused_kernel() -> None:
    """Past a few hundred tokens the unfused scores cost more than the math path's overhead."""
    model = small_bert()
    assert unfuse_attention_for_training(model, longest_row=UNFUSED_ATTENTION_MAX_TOKENS + 1) is None
    assert model.config._attn_implementation == "sdpa"


class AttentionSeen(TrainerCallback):
    """The attention implementation in use at each training step and each evaluation batch, and the dropout layers."""

    def __init__(self) -> None:
        self.seen: dict[str, set[str]] = {"training": set(), "evaluation": set()}
        self.dropout: set[type] = set()

    def on_step_end(self, args: Any, state: Any, control: Any, model: Any = None, **kwargs: Any) -> None:
        self.seen["training"].add(model.config._attn_implementation)
        self.dropout |= {type(module) for module in model.modules() if isinstance(module, nn.Dropout)}

    def on_prediction_step(self, args: Any, state: Any, control: Any, model: Any = None, **kwargs: Any) -> None:
        self.seen["evaluation"].add(model.config._attn_implementation)


def test_a_cpu_run_trains_unfused_with_cheap_dropout_evaluates_fused_and_publishes_neither(
    tiny_bert: Path, ner_recipe: Any, tmp_path: Path
) -> None:
    spy = AttentionSeen()
    result = core.run(load_recipe(ner_recipe(tiny_bert, tmp_path / "run", epochs=1)), callbacks=[spy])
    assert spy.seen == {"training": {"eager"}, "evaluation": {"sdpa"}}
    assert spy.dropout == {CpuDropout}
    assert "attn_implementation" not in (result.run_dir / "model" / "config.json").read_text()

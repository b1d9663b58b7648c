"""LoRA (`method: lora`): what gets adapters, what trains in full, what a run saves and loads back."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import test_generation
import torch
from peft import PeftModel
from safetensors.torch import load_file

import nlptasks
from nlptasks import models
from nlptasks.adapters import Adaptation
from nlptasks.errors import RecipeError
from nlptasks.recipe import load_recipe
from nlptasks.tasks import task_for

pytestmark = pytest.mark.usefixtures("one_thread")
translation_files = test_generation.translation_files


def lora_recipe(ner_recipe, model: Path | str, **adapter: object) -> dict:
    recipe = ner_recipe(model, epochs=3, learning_rate=5e-3)
    return {**recipe, "method": "lora", "adapter": adapter}


def test_a_lora_run_trains_adapters_and_the_head_and_saves_only_those(ner_recipe, tiny_bert: Path) -> None:
    result = nlptasks.run(lora_recipe(ner_recipe, tiny_bert, r=4))
    saved = result.run_dir / "model"
    weights = load_file(saved / "adapter_model.safetensors")
    assert not (saved / "model.safetensors").exists()
    assert any("lora_A" in name for name in weights) and any("classifier" in name for name in weights)
    assert not any("word_embeddings" in name for name in weights)  # the frozen base stays with the base model
    adapted = {name.split(".lora_A")[0].rsplit(".", 1)[-1] for name in weights if "lora_A" in name}
    assert adapted == {"query", "key", "value", "dense"}  # attention and MLP projections of BERT
    adapter_config = json.loads((saved / "adapter_config.json").read_text())
    assert adapter_config["base_model_name_or_path"] == str(tiny_bert) and adapter_config["r"] == 4

    predictor = nlptasks.load(result.run_dir)
    assert isinstance(predictor.model, PeftModel)
    assert nlptasks.evaluate(result.run_dir, "test")["f1"] == pytest.approx(result.metrics["test"]["f1"])


def test_only_adapters_and_the_head_are_trainable_and_the_base_stays_frozen(ner_recipe, tiny_bert: Path) -> None:
    recipe = load_recipe(lora_recipe(ner_recipe, tiny_bert))
    task = task_for(recipe)
    model, _ = models.build(str(tiny_bert), {}, task, ["O", "B-PER", "I-PER"], None, Adaptation(recipe.adapter))
    trainable = {name for name, parameter in model.named_parameters() if parameter.requires_grad}
    assert trainable and all("lora_" in name or "classifier" in name for name in trainable)
    total = sum(parameter.numel() for parameter in model.parameters())
    assert sum(p.numel() for n, p in model.named_parameters() if n in trainable) < 0.2 * total


def sentiment_recipe(model: Path, method: str, folder: Path) -> dict:
    rows = [{"text": text, "label": label} for text, label in (("a fine film", "pos"), ("a dull film", "neg"))] * 8
    data = folder / "train.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return {
        "task": "classification",
        "model": str(model),
        "method": method,
        "output_dir": str(folder / "run"),
        "data": {"train_file": str(data), "validation_file": str(data), "test_file": str(data)},
        "train": {"epochs": 1, "batch_size": 8, "precision": "fp32"},
    }


def test_a_decoder_classifier_keeps_its_score_head_trainable(tiny_llama: Path, tmp_path: Path) -> None:
    result = nlptasks.run(sentiment_recipe(tiny_llama, "lora", tmp_path))
    weights = load_file(result.run_dir / "model" / "adapter_model.safetensors")
    assert any("score" in name for name in weights) and any("q_proj.lora_A" in name for name in weights)
    assert any("gate_proj.lora_A" in name for name in weights)
    assert nlptasks.load(result.run_dir).predict(["a fine film"])[0]["label"] in {"pos", "neg"}


def test_qlora_holds_the_base_in_4_bit_nf4_and_trains_the_head_in_full(tiny_llama: Path, tmp_path: Path) -> None:
    from bitsandbytes.nn import Linear4bit

    recipe = load_recipe(sentiment_recipe(tiny_llama, "qlora", tmp_path))
    adaptation = Adaptation(recipe.adapter, quantized=True, gradient_checkpointing=True)
    model, _ = models.build(str(tiny_llama), {}, task_for(recipe), ["neg", "pos"], None, adaptation)
    projection = model.get_base_model().model.layers[0].self_attn.q_proj
    assert isinstance(projection.base_layer, Linear4bit) and projection.base_layer.weight.quant_type == "nf4"
    assert projection.base_layer.weight.quant_state.nested  # double quantization
    head = model.get_base_model().score
    assert not isinstance(head, Linear4bit) and head.modules_to_save["default"].weight.requires_grad

    recipe = sentiment_recipe(tiny_llama, "qlora", tmp_path)
    result = nlptasks.run({**recipe, "train": {**recipe["train"], "gradient_checkpointing": True}})
    weights = load_file(result.run_dir / "model" / "adapter_model.safetensors")
    assert any("score" in name for name in weights) and any("lora_A" in name for name in weights)
    assert result.metrics["train"]["train_loss"] > 0
    assert nlptasks.load(result.run_dir).predict(["a fine film"])[0]["label"] in {"pos", "neg"}


def test_a_lora_decoder_generates_with_the_recipes_decoding_settings(
    translation_files, tiny_llama: Path, tmp_path: Path
) -> None:
    recipe = test_generation.recipe(
        "translation",
        translation_files,
        str(tiny_llama),
        tmp_path / "run",
        train={"learning_rate": 5e-3},
        generation={"num_beams": 2, "max_new_tokens": 3},
    )
    result = nlptasks.run({**recipe, "method": "lora"})
    assert 0 < result.metrics["test"]["gen_len"] <= 3  # the recipe's length, not the checkpoint's default
    predictor = nlptasks.load(result.run_dir)
    assert isinstance(predictor.model, PeftModel)
    written = [json.loads(line) for line in (result.run_dir / "predictions" / "test.jsonl").open()]
    shown = predictor.predict([en for en, _ in test_generation.PAIRS])
    assert [row["translation"] for row in shown] == [row["translation"] for row in written]


@pytest.mark.parametrize(
    ("adapter", "message"),
    [
        ({"target_modules": ["qury"]}, r"adapter.target_modules: 'qury' matches no linear layer.*did you mean 'query'"),
        ({"r": 0}, r"adapter.r: .*greater than 0"),
        ({"alhpa": 32}, r"adapter.alhpa: unknown key.*did you mean 'alpha'"),
    ],
)
def test_bad_adapter_settings_fail_before_training(ner_recipe, tiny_bert: Path, adapter: dict, message: str) -> None:
    with pytest.raises(RecipeError, match=message):
        nlptasks.run(lora_recipe(ner_recipe, tiny_bert, **adapter))


@pytest.mark.parametrize("model", ["bilstm", "t5-tiny", "lstm-attention"])
def test_lora_of_a_model_without_pretrained_weights_is_a_recipe_error(ner_recipe, model: str) -> None:
    with pytest.raises(RecipeError, match=f"method: LoRA adapts pretrained weights; '{model}' has random weights"):
        nlptasks.run(lora_recipe(ner_recipe, model))


def test_a_merged_export_is_a_plain_model_that_bare_transformers_loads(ner_recipe, tiny_bert: Path, tmp_path) -> None:
    from transformers import AutoModelForTokenClassification, AutoTokenizer

    result = nlptasks.run(lora_recipe(ner_recipe, tiny_bert, r=4))
    merged = nlptasks.export(result.run_dir, tmp_path / "merged", merge=True)
    assert not (merged / "adapter_config.json").exists() and (merged / "model.safetensors").is_file()
    assert not any("lora" in name for name in load_file(merged / "model.safetensors"))

    adapted = nlptasks.load(result.run_dir).model
    plain = AutoModelForTokenClassification.from_pretrained(merged).eval()
    inputs = AutoTokenizer.from_pretrained(merged)(["Angela Merkel visited Paris ."], return_tensors="pt")
    assert torch.allclose(plain(**inputs).logits, adapted(**inputs).logits, atol=1e-5)
    assert plain.config.id2label == adapted.config.id2label

    assert nlptasks.load(merged).recipe.method == "full"
    assert nlptasks.evaluate(merged, "test")["f1"] == pytest.approx(result.metrics["test"]["f1"])
    unmerged = nlptasks.export(result.run_dir, tmp_path / "adapter")
    assert (unmerged / "adapter_config.json").is_file() and isinstance(nlptasks.load(unmerged).model, PeftModel)


def test_a_qlora_run_loads_over_its_dequantized_base_and_merges_and_exports_to_the_same_answers(
    tiny_llama: Path, tmp_path: Path
) -> None:
    result = nlptasks.run(sentiment_recipe(tiny_llama, "qlora", tmp_path))
    predictor = nlptasks.load(result.run_dir)
    assert nlptasks.evaluate(result.run_dir, "test")["accuracy"] == result.metrics["test"]["accuracy"]

    merged = nlptasks.export(result.run_dir, tmp_path / "merged", merge=True)
    config = json.loads((merged / "config.json").read_text())
    assert "quantization_config" not in config
    texts = ["a fine film", "a dull film", "fine", "dull"]
    merged_predictor = nlptasks.load(merged)
    assert not isinstance(merged_predictor.model, PeftModel)
    onnx_predictor = nlptasks.load(nlptasks.export(result.run_dir, tmp_path / "onnx", format="onnx"))
    for exported in (merged_predictor, onnx_predictor):
        for ours, theirs in zip(predictor.predict(texts), exported.predict(texts)):
            assert ours["label"] == theirs["label"] and ours["score"] == pytest.approx(theirs["score"], abs=1e-4)


def test_adapters_over_one_base_are_listed_and_switched(ner_recipe, tiny_bert: Path, tmp_path: Path) -> None:
    first = nlptasks.run({**lora_recipe(ner_recipe, tiny_bert, r=4), "output_dir": str(tmp_path / "runs" / "a")})
    second_recipe = {**lora_recipe(ner_recipe, tiny_bert, r=8), "output_dir": str(tmp_path / "runs" / "b")}
    second = nlptasks.run({**second_recipe, "train": {**second_recipe["train"], "seed": 7, "epochs": 6}})
    listed = nlptasks.list_adapters(tmp_path / "runs")
    assert [(row["run_dir"], row["r"], row["base_model"]) for row in listed] == [
        (str(first.run_dir), 4, str(tiny_bert)),
        (str(second.run_dir), 8, str(tiny_bert)),
    ]

    text = "Angela Merkel visited Paris and met Siemens in Berlin ."
    alone = {run: nlptasks.load(run).predict(text) for run in (first.run_dir, second.run_dir)}
    assert alone[first.run_dir] != alone[second.run_dir], "the two adapters must differ for the switch to show"
    shared = nlptasks.load(first.run_dir)
    assert shared.add_adapter(second.run_dir) == "b" and shared.adapters == ["a", "b"]
    assert shared.predict(text) == alone[first.run_dir]
    shared.use_adapter("b")
    assert shared.adapters == ["b", "a"] and shared.predict(text) == alone[second.run_dir]
    shared.use_adapter("a")
    assert shared.predict(text) == alone[first.run_dir]


def test_an_adapter_of_another_task_or_base_is_refused(
    ner_recipe, tiny_bert: Path, tiny_llama: Path, tmp_path: Path
) -> None:
    ner = nlptasks.run(lora_recipe(ner_recipe, tiny_bert, r=4))
    (tmp_path / "sentiment").mkdir()
    sentiment = nlptasks.run(sentiment_recipe(tiny_llama, "lora", tmp_path / "sentiment"))
    with pytest.raises(nlptasks.UserInputError, match=r"its task \(classification\) differs"):
        nlptasks.load(ner.run_dir).add_adapter(sentiment.run_dir)
    with pytest.raises(nlptasks.UserInputError, match="no adapter 'other'"):
        nlptasks.load(ner.run_dir).use_adapter("other")

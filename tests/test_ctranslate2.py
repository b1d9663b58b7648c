"""CTranslate2: a tiny T5 and a tiny Llama decode token for token as transformers does, from a recipe's engine
setting, from `predict --set` and from exports (LoRA merged, int8); what the engine cannot do is refused."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from fastapi.testclient import TestClient
from test_generation import PAIRS, pair_rows, recipe, write_rows
from test_rnn_seq2seq import random_model
from transformers import (
    AutoTokenizer,
    BertConfig,
    EncoderDecoderConfig,
    EncoderDecoderModel,
    NoRepeatNGramLogitsProcessor,
)

import nlptasks
from nlptasks.cli import main
from nlptasks.engines.ctranslate2 import CTranslate2Model, convert
from nlptasks.errors import RecipeError
from nlptasks.models.generation import GeneratedNoRepeatNGram
from nlptasks.serve import create_app

pytestmark = pytest.mark.usefixtures("one_thread")

TEXTS = [en for en, _ in PAIRS] + ["A dog.", "Two men are riding bikes in the snow near a lake, and a dog runs."]
GREEDY = {"min_new_tokens": 6, "max_new_tokens": 10}
"""Decoding lengths that make both engines stop early on some inputs and run to the bound on others."""


def translation_files(folder: Path) -> dict[str, Path]:
    return {
        split: write_rows(folder / f"{split}.jsonl", pair_rows(repeat))
        for split, repeat in (("train", 4), ("validation", 1), ("test", 1))
    }


@pytest.fixture(scope="module")
def t5_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny T5 whose recipe decodes with CTranslate2: its final test scores come from the converted model."""
    folder = tmp_path_factory.mktemp("ct2-t5")
    settings = recipe(
        "translation",
        translation_files(folder),
        "t5-tiny",
        folder / "run",
        train={"epochs": 4, "learning_rate": 5e-3},  # enough to stop an untrained model's runs of <pad>
        generation={"max_new_tokens": 12, "engine": "ctranslate2"},
    )
    return nlptasks.run(settings).run_dir


def predictions(folder: Path, **generation: object) -> list[dict]:
    return nlptasks.load(folder, generation=generation or None).predict(TEXTS)


def test_a_recipe_decoding_with_ctranslate2_scores_as_transformers_would(t5_run: Path) -> None:
    assert (t5_run / "model" / "ctranslate2" / "model.bin").is_file()  # converted once, kept with the model
    recorded = json.loads((t5_run / "metrics.json").read_text())["test"]
    rescored = nlptasks.evaluate(t5_run, "test", generation={"engine": "transformers"})
    assert {key: rescored[key] for key in ("bleu", "chrf", "gen_len")} == {
        key: recorded[key] for key in ("bleu", "chrf", "gen_len")
    }
    written = [json.loads(line)["translation"] for line in (t5_run / "predictions" / "test.jsonl").open()]
    assert [row["translation"] for row in predictions(t5_run, engine="transformers")[:4]] == written
    assert predictions(t5_run, **GREEDY) == predictions(t5_run, engine="transformers", **GREEDY)
    assert nlptasks.load(t5_run).generator is not nlptasks.load(t5_run).model


def test_a_t5_export_predicts_and_scores_as_its_run_and_int8_stays_close(
    t5_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    fp32, int8 = tmp_path / "fp32", tmp_path / "int8"
    assert main(["export", str(t5_run), "--format", "ctranslate2", "--output", str(fp32)]) == 0
    assert main(["export", str(t5_run), "--format", "ctranslate2", "--quantize", "int8", "--output", str(int8)]) == 0
    assert f"exported {t5_run} to {int8}" in capsys.readouterr().out
    assert not list(fp32.glob("*.safetensors")) and json.loads((fp32 / "export.json").read_text())["quantize"] is None
    exported = nlptasks.load(fp32)
    assert isinstance(exported.model, CTranslate2Model)
    assert exported.predict(TEXTS) == predictions(t5_run, engine="transformers")
    assert nlptasks.evaluate(fp32, "test")["bleu"] == json.loads((t5_run / "metrics.json").read_text())["test"]["bleu"]
    with pytest.raises(nlptasks.UserInputError, match="decodes with generation.engine ctranslate2 only"):
        nlptasks.load(fp32, generation={"engine": "transformers"})
    with pytest.raises(nlptasks.UserInputError, match="returns no attention weights; ask the run"):
        exported.cross_attention(TEXTS[0])
    with TestClient(create_app([f"t5={fp32}"])) as client:
        served = client.post("/v1/models/t5/predict", json={"inputs": TEXTS}).json()
    assert served == {"outputs": exported.predict(TEXTS)}

    assert (int8 / "ctranslate2" / "model.bin").stat().st_size < 0.5 * (
        fp32 / "ctranslate2" / "model.bin"
    ).stat().st_size
    loaded_as_int8 = nlptasks.load(fp32, generation={"quantize": "int8"})
    assert loaded_as_int8.generator.quantize == "int8"
    assert loaded_as_int8.predict(TEXTS) == nlptasks.load(int8).predict(TEXTS)  # quantized on load as on export
    sources, targets = token_pairs(exported)
    scores = [log_probabilities(nlptasks.load(folder).model, sources, targets) for folder in (fp32, int8)]
    assert scores[0] != scores[1]  # int8 did change the weights...
    assert max(abs(a - b) for a, b in zip(*scores)) < 0.25  # ...by under 0.25 nats per token on a 16-wide model


def token_pairs(predictor: nlptasks.Predictor) -> tuple[list[list[str]], list[list[str]]]:
    """Each text and its translation as tokens: a tiny model's near-tied logits make int8 outputs a poor yardstick,
    their probabilities under both models a fair one."""
    tokens = predictor.tokenizer.convert_ids_to_tokens
    sources = [tokens(predictor.tokenizer(text)["input_ids"]) for text in TEXTS]
    outputs = [row["translation"] for row in predictor.predict(TEXTS)]
    return sources, [tokens(predictor.tokenizer(text)["input_ids"]) for text in outputs]


def log_probabilities(model: CTranslate2Model, sources: list[list[str]], targets: list[list[str]]) -> list[float]:
    """Mean log-probability per target token, for each pair."""
    return [sum(r.log_probs) / len(r.log_probs) for r in model.engine.score_batch(sources, targets)]


def test_a_tiny_llama_and_its_lora_export_decode_as_transformers(tiny_llama: Path, tmp_path: Path) -> None:
    files = translation_files(tmp_path)
    full = nlptasks.run(
        recipe("translation", files, str(tiny_llama), tmp_path / "full", train={"learning_rate": 5e-3})
    ).run_dir
    assert predictions(full, engine="ctranslate2", **GREEDY) == predictions(full, **GREEDY)
    blocking = {**GREEDY, "no_repeat_ngram_size": 2}
    assert predictions(full, engine="ctranslate2", **blocking) == predictions(full, **blocking)

    lora = nlptasks.run(
        recipe("translation", files, str(tiny_llama), tmp_path / "lora", train={"learning_rate": 5e-3})
        | {"method": "lora"}
    ).run_dir
    exported = nlptasks.export(lora, tmp_path / "lora-ct2", format="ctranslate2")
    assert predictions(exported) == predictions(lora)  # LoRA merged into the converted weights
    assert nlptasks.load(lora).model.peft_config  # the run itself keeps its adapter


def test_a_decoders_ngram_blocking_covers_its_generated_tokens_not_its_prompt() -> None:
    """As CTranslate2 and encoder-decoders block: a summary may repeat three words of its dialogue."""
    scores = torch.zeros(1, 10)
    prompt_then_7 = torch.tensor([[7, 8, 9, 7]])
    assert torch.isinf(NoRepeatNGramLogitsProcessor(2)(prompt_then_7, scores)[0, 8])  # transformers' own
    assert not torch.isinf(GeneratedNoRepeatNGram(2, prompt_width=3)(prompt_then_7, scores)).any()
    repeated = GeneratedNoRepeatNGram(2, prompt_width=3)(torch.tensor([[7, 8, 9, 7, 5, 7]]), scores)
    assert torch.isinf(repeated[0]).nonzero().flatten().tolist() == [5]


def test_what_ctranslate2_cannot_do_is_refused_with_the_reason(
    t5_run: Path, tiny_bert: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(RecipeError, match="samples with num_beams 1 only"):
        nlptasks.load(t5_run, generation={"do_sample": True, "num_beams": 2})

    bert = BertConfig(vocab_size=64, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32)
    bert2bert = EncoderDecoderModel(EncoderDecoderConfig.from_encoder_decoder_configs(bert, bert))
    tokenizer = AutoTokenizer.from_pretrained(tiny_bert)
    for model in (bert2bert, random_model()):
        with pytest.raises(RecipeError, match=f"cannot run this model \\({type(model).__name__}"):
            convert(model, tokenizer, tmp_path / type(model).__name__)
        assert not (tmp_path / type(model).__name__ / "ctranslate2").exists()  # nothing half-written

    files = translation_files(tmp_path)
    bert2bert = recipe(
        "translation", files, "bert2bert-minilm-l6", tmp_path / "b2b", generation={"engine": "ctranslate2"}
    )
    with pytest.raises(RecipeError, match="no converter for EncoderDecoderConfig"):
        nlptasks.run(bert2bert)
    assert not (tmp_path / "b2b" / "model").exists()  # refused before training

    assert main(["export", str(t5_run), "--format", "onnx", "--output", str(tmp_path / "onnx")]) == 2
    assert "exports with --format ctranslate2" in capsys.readouterr().err

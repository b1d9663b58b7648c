"""A decoder-only causal LM on the text-to-text tasks: prompts, the loss mask, left padding, packing, runs.

The tiny random Llama (`tiny_llama`) has SmolLM2-Instruct's tokenizer and so its chat template.
"""

from __future__ import annotations

import io
import json
import sys
from pathlib import Path
from typing import Any

import datasets
import pytest
import test_generation
import torch
from test_generation import PAIRS, pairs_to_learn_by_heart, recipe
from transformers import LlamaForCausalLM

import nlptasks
from nlptasks.chat import PLAIN_CHAT_TEMPLATE
from nlptasks.cli import main
from nlptasks.data import load_splits, pad_batch
from nlptasks.errors import RecipeError
from nlptasks.models import load_tokenizer
from nlptasks.models.generation import configure, generate_ids, generations
from nlptasks.recipe import DataConfig, GenerationSettings
from nlptasks.tasks.seq2seq import pack_examples
from nlptasks.tasks.translation import Translation, TranslationOptions

translation_files = test_generation.translation_files
summarization_files = test_generation.summarization_files
"""The encoder-decoder tests' data files, as fixtures here too."""

INSTRUCTION = "Translate to German:\n"
SMOLLM2_PROMPT = (
    "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"
    "<|im_start|>user\n{user}<|im_end|>\n<|im_start|>assistant\n"
)


@pytest.fixture
def tokenizer(tiny_llama: Path) -> Any:
    return load_tokenizer(str(tiny_llama), "decoder", generates=True)


@pytest.fixture(scope="module")
def model(tiny_llama: Path) -> LlamaForCausalLM:
    model = LlamaForCausalLM.from_pretrained(tiny_llama).eval()
    configure(model, GenerationSettings(min_new_tokens=6, max_new_tokens=6))
    return model


def translation(max_length: int = 128, **options: Any) -> Translation:
    task = Translation(TranslationOptions(prefix=INSTRUCTION, **options), max_length, 0)
    task.use_model_family("decoder")
    return task


def features(task: Translation, tokenizer: Any, pairs: list[tuple[str, str]], labelled: bool = True) -> list[dict]:
    """The task's features of translation pairs, or of their English sources alone (`predict` inputs)."""
    if labelled:
        rows = [Translation.check_row({"translation": {"en": en, "de": de}}, None) for en, de in pairs]
        examples = datasets.Dataset.from_list(rows, features=task.features())
    else:
        examples = task.examples_from_sources([en for en, _ in pairs])
    return list(task.featurize(examples, tokenizer, {}))


def batch_of(task: Translation, tokenizer: Any, rows: list[dict]) -> dict[str, torch.Tensor]:
    inputs = [{key: row[key] for key in ("input_ids", "attention_mask", "labels") if key in row} for row in rows]
    return pad_batch(inputs, task.pad_values(tokenizer))


# ---------------------------------------------------------------- prompts and the loss mask


def test_the_loss_covers_exactly_the_target_tokens_and_its_end_of_sequence(tokenizer) -> None:
    [feature] = features(translation(), tokenizer, [PAIRS[0]])
    prompt_length = feature["labels"].count(-100)
    assert feature["labels"][:prompt_length] == [-100] * prompt_length
    assert feature["labels"][prompt_length:] == feature["input_ids"][prompt_length:]
    target = feature["input_ids"][prompt_length:]
    assert target == tokenizer("Ein Mann fährt Fahrrad.", add_special_tokens=False)["input_ids"] + [2]
    assert tokenizer.decode(target) == "Ein Mann fährt Fahrrad.<|im_end|>"  # <|im_end|> is SmolLM2's EOS


def test_the_prompt_is_the_chat_template_around_instruction_and_source(tokenizer) -> None:
    [feature] = features(translation(), tokenizer, [PAIRS[0]], labelled=False)
    assert "labels" not in feature
    expected = SMOLLM2_PROMPT.format(user=INSTRUCTION + "A man is riding a bike.")
    assert tokenizer.decode(feature["input_ids"]) == expected
    message = [{"role": "user", "content": INSTRUCTION + "A man is riding a bike."}]
    templated = tokenizer.apply_chat_template(message, add_generation_prompt=True, return_dict=True)
    assert feature["input_ids"] == templated["input_ids"]  # tokenized in pieces, yet as the library does whole


def test_a_tokenizer_without_a_chat_template_gets_the_plain_one_and_keeps_it(tokenizer) -> None:
    tokenizer.chat_template = None
    [feature] = features(translation(), tokenizer, [PAIRS[0]])
    prompt = [token for token, label in zip(feature["input_ids"], feature["labels"]) if label == -100]
    assert tokenizer.decode(prompt) == "<|im_start|>" + INSTRUCTION + "A man is riding a bike.\n\n"  # BOS first
    assert tokenizer.chat_template == PLAIN_CHAT_TEMPLATE  # saved with the run's tokenizer


def test_truncation_cuts_the_source_never_the_instruction_or_the_target(tokenizer) -> None:
    message = [{"role": "user", "content": INSTRUCTION}]
    frame = len(tokenizer.apply_chat_template(message, add_generation_prompt=True, return_dict=True)["input_ids"])
    [whole] = features(translation(), tokenizer, [PAIRS[3]])
    [cut] = features(translation(max_length=frame + 2), tokenizer, [PAIRS[3]])
    source = tokenizer("Children are swimming in a lake.", add_special_tokens=False)["input_ids"]
    prompt_length = cut["labels"].count(-100)
    assert prompt_length == frame + 2 and tokenizer.decode(cut["input_ids"][:prompt_length]) == SMOLLM2_PROMPT.format(
        user=INSTRUCTION + tokenizer.decode(source[:2])
    )
    assert cut["labels"][prompt_length:] == whole["labels"][whole["labels"].count(-100) :]
    with pytest.raises(RecipeError, match=f"data.max_length: {frame} tokens leave no room for the source"):
        features(translation(max_length=frame), tokenizer, [PAIRS[3]])


# ---------------------------------------------------------------- generation


def test_left_padding_generates_the_same_for_a_text_alone_and_beside_a_longer_one(tokenizer, model) -> None:
    task = translation()
    short, long = PAIRS[0], ("Two dogs play in the snow while a man watches them from a bench.", "")
    alone = generate_ids(model, batch_of(task, tokenizer, features(task, tokenizer, [short], labelled=False)))
    together = generate_ids(model, batch_of(task, tokenizer, features(task, tokenizer, [short, long], labelled=False)))
    assert torch.equal(together[0], alone[0]) and alone.shape == (1, 6)


def test_the_prompt_and_the_target_never_appear_in_the_output(tokenizer, model) -> None:
    """Evaluation rows hold prompt and target: only the prompt is read, and only new tokens come back."""
    task = translation()
    labelled = batch_of(task, tokenizer, features(task, tokenizer, PAIRS[:2]))
    unlabelled = features(task, tokenizer, PAIRS[:2], labelled=False)
    generated = generate_ids(model, labelled)
    assert torch.equal(generated, generate_ids(model, batch_of(task, tokenizer, unlabelled)))
    for row, feature in zip(generated, unlabelled):
        prompt = torch.tensor([feature["input_ids"]])
        assert torch.equal(row, model.generate(input_ids=prompt)[0, prompt.shape[1] :])
    assert all("<|im_start|>" not in generation.text for generation in generations(tokenizer, generated.numpy()))


# ---------------------------------------------------------------- packing


def test_packing_keeps_examples_apart(tokenizer, model) -> None:
    """One flattened sequence gives each example the logits and the loss it has alone in a padded batch."""
    rows = features(translation(packing=True), tokenizer, PAIRS[:3])
    rows = [{key: row[key] for key in ("input_ids", "attention_mask", "labels")} for row in rows]
    packed = pack_examples(rows)
    assert packed["input_ids"].shape == (1, sum(len(row["input_ids"]) for row in rows))
    padded = pad_batch(rows, translation().pad_values(tokenizer))
    with torch.no_grad():
        packed_output, padded_output = model(**packed), model(**padded)
    assert packed_output.loss == pytest.approx(padded_output.loss.item(), rel=1e-5)
    start = 0
    for row, logits in zip(rows, padded_output.logits):
        length = len(row["input_ids"])
        torch.testing.assert_close(packed_output.logits[0, start : start + length], logits[:length])
        start += length


def test_packing_with_an_encoder_decoder_is_a_recipe_error() -> None:
    task = Translation(TranslationOptions(packing=True), 64, 0)
    with pytest.raises(RecipeError, match="task_args.packing: only a decoder-only model .* is a seq2seq model"):
        task.use_model_family("seq2seq")


# ---------------------------------------------------------------- end to end


@pytest.mark.parametrize("packing", [False, True])
def test_translation_with_a_tiny_decoder_trains_evaluates_and_predicts(
    translation_files,
    tiny_llama: Path,
    tmp_path: Path,
    packing: bool,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    result = nlptasks.run(
        recipe(
            "translation",
            translation_files,
            str(tiny_llama),
            tmp_path / "run",
            task_args={"prefix": INSTRUCTION, "packing": packing},
            train={"learning_rate": 5e-3},
        )
    )
    assert set(result.metrics["test"]) == {"bleu", "chrf", "gen_len", "samples_per_second"}
    assert 0 < result.metrics["test"]["gen_len"] <= 8 and result.metrics["train"]["train_loss"] > 0
    predictor = nlptasks.load(result.run_dir)
    assert type(predictor.model).__name__ == "LlamaForCausalLM" and predictor.tokenizer.chat_template
    shown = predictor.predict([en for en, _ in PAIRS])
    written = [json.loads(line) for line in (result.run_dir / "predictions" / "test.jsonl").open()]
    assert [row["translation"] for row in shown] == [row["translation"] for row in written]  # one decoding
    assert all("gold" not in row for row in shown)

    capsys.readouterr()
    monkeypatch.setattr(sys, "stdin", io.StringIO("A man is riding a bike.\n"))
    assert main(["predict", str(result.run_dir)]) == 0
    [line] = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert line == {"source": "A man is riding a bike.", "translation": shown[0]["translation"]}


def test_summarization_with_a_tiny_decoder_scores_labelled_files_as_the_run_did(
    summarization_files, tiny_llama: Path, tmp_path: Path
) -> None:
    result = nlptasks.run(
        recipe("summarization", summarization_files, str(tiny_llama), tmp_path / "run", train={"learning_rate": 5e-3})
    )
    assert set(result.metrics["test"]) == {"rouge1", "rouge2", "rougeL", "rougeLsum", "gen_len", "samples_per_second"}
    predictor = nlptasks.load(result.run_dir)
    rescored = predictor.score(load_splits(DataConfig(test_file=summarization_files["test"]), predictor.task)["test"])
    assert rescored["rougeL"] == pytest.approx(result.metrics["test"]["rougeL"])


@pytest.mark.slow(seconds=115)
@pytest.mark.integration
def test_a_tiny_decoder_overfits_real_multi30k_pairs_to_a_high_bleu(data_dir: Path, tmp_path: Path, tiny_llama) -> None:
    """Two dozen real pairs learnt by heart through chat prompts, the loss mask, packing and left-padded generation.

    About 70 s on one CPU thread, nearly all of it in SmolLM2's 49,152-token output layer.
    """
    result = nlptasks.run(
        recipe(
            "translation",
            pairs_to_learn_by_heart(data_dir, tmp_path, 24),
            str(tiny_llama),
            tmp_path / "run",
            task_args={"prefix": INSTRUCTION, "packing": True},
            train={"epochs": 50, "batch_size": 8, "learning_rate": 1e-2, "eval_strategy": "no", "logging_steps": 50},
            generation={"max_new_tokens": 48},
            eval={"splits": ["test"]},
        )
    )
    assert result.metrics["test"]["bleu"] > 90, result.metrics["test"]

"""Generating tasks (summarization, translation): decoding settings, the generation path, metrics, bad rows, runs."""

from __future__ import annotations

import io
import json
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import datasets
import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM, T5Config, T5ForConditionalGeneration

import nlptasks
from nlptasks import catalog
from nlptasks.cli import main
from nlptasks.data import load_splits
from nlptasks.errors import DataError, RecipeError
from nlptasks.metrics.rouge import rouge
from nlptasks.models.generation import configure, generate_ids, generations
from nlptasks.models.t5 import train_unigram_tokenizer
from nlptasks.recipe import DataConfig, GenerationSettings, load_recipe
from nlptasks.tasks import TASKS
from nlptasks.tasks.base import Generation
from nlptasks.tasks.summarization import Summarization
from nlptasks.tasks.summary_rows import length_report
from nlptasks.tasks.translation import Translation, TranslationOptions

PAIRS = [
    ("A man is riding a bike.", "Ein Mann fährt Fahrrad."),
    ("Two dogs play in the snow.", "Zwei Hunde spielen im Schnee."),
    ("A woman reads a book.", "Eine Frau liest ein Buch."),
    ("Children are swimming in a lake.", "Kinder schwimmen in einem See."),
]
DIALOGUES = [
    ("#Person1#: Where is the bank?\n#Person2#: Next to the station.", "#Person2# says the bank is by the station."),
    ("#Person1#: Do you like tea?\n#Person2#: No, I prefer coffee.", "#Person2# prefers coffee to tea."),
    ("#Person1#: Is it raining?\n#Person2#: Yes, take an umbrella.", "It is raining, so #Person1# needs an umbrella."),
]


def write_rows(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))
    return path


def pair_rows(repeat: int = 1) -> list[dict[str, Any]]:
    return [{"translation": {"en": en, "de": de}} for en, de in PAIRS] * repeat


def pairs_to_learn_by_heart(data_dir: Path, folder: Path, count: int) -> dict[str, Path]:
    """The first `count` real Multi30k training pairs as train, validation and test at once (overfitting tests)."""
    lines = (data_dir / "translation" / "multi30k" / "train.jsonl").read_text(encoding="utf-8").splitlines()[:count]
    pairs = write_rows(folder / "pairs.jsonl", [json.loads(line) for line in lines])
    return {"train": pairs, "validation": pairs, "test": pairs}


@pytest.fixture
def translation_files(tmp_path: Path) -> dict[str, Path]:
    return {
        split: write_rows(tmp_path / f"{split}.jsonl", pair_rows(repeat))
        for split, repeat in (("train", 4), ("validation", 1), ("test", 1))
    }


@pytest.fixture
def summarization_files(tmp_path: Path) -> dict[str, Path]:
    rows = [{"document": document, "summary": summary} for document, summary in DIALOGUES]
    tested = [{**row, "references": [row["summary"], "Two people talk."]} for row in rows]
    return {
        "train": write_rows(tmp_path / "train.jsonl", rows * 4),
        "validation": write_rows(tmp_path / "validation.jsonl", rows),
        "test": write_rows(tmp_path / "test.jsonl", tested),
    }


def recipe(task: str, files: dict[str, Path], model: str, output_dir: Path, **sections: dict[str, Any]) -> dict:
    """A complete recipe for a tiny model on tiny files; `sections` update the named sections."""
    base: dict[str, Any] = {
        "task": task,
        "model": model,
        "output_dir": str(output_dir),
        "data": {f"{split}_file": str(path) for split, path in files.items()} | {"max_length": 64},
        "train": {"epochs": 1, "batch_size": 4, "learning_rate": 1e-3, "precision": "fp32", "logging_steps": 2},
        "generation": {"max_new_tokens": 8},
    }
    for name, values in sections.items():
        base[name] = {**base.get(name, {}), **values}
    return base


@pytest.fixture(scope="module")
def tokenizer():
    return train_unigram_tokenizer((text for pair in PAIRS for text in pair), vocab_size=200)


def tiny_t5(vocab_size: int) -> T5ForConditionalGeneration:
    torch.manual_seed(0)
    config = T5Config(
        vocab_size=vocab_size, d_model=16, d_kv=8, d_ff=32, num_layers=1, num_heads=2, decoder_start_token_id=0
    )
    return T5ForConditionalGeneration(config).eval()


# ---------------------------------------------------------------- decoding settings and the generation path


@pytest.mark.parametrize(
    ("generation", "message"),
    [
        ({"temperature": 0.7}, "temperature only apply when sampling: set do_sample: true"),
        ({"length_penalty": 0.8}, "length_penalty only applies to beam search"),
        ({"quantize": "int8"}, "quantize only applies to the ctranslate2 engine"),
        ({"min_new_tokens": 9, "max_new_tokens": 8}, "min_new_tokens 9 exceeds max_new_tokens 8"),
        ({"max_length": 20}, r"generation.max_length: unknown key"),
    ],
)
def test_decoding_settings_that_would_be_ignored_or_contradict_are_recipe_errors(
    generation: dict[str, Any], message: str
) -> None:
    with pytest.raises(RecipeError, match=message):
        load_recipe({"task": "translation", "model": "t5-tiny", "generation": generation})


def test_configure_replaces_checkpoint_defaults_with_the_recipe_settings() -> None:
    model = tiny_t5(50)
    model.generation_config.do_sample, model.generation_config.temperature = True, 0.3
    configure(model, GenerationSettings(num_beams=2, max_new_tokens=7, no_repeat_ngram_size=3))
    config = model.generation_config
    assert (config.num_beams, config.max_new_tokens, config.no_repeat_ngram_size) == (2, 7, 3)
    assert config.do_sample is False and config.temperature is None
    assert (config.decoder_start_token_id, config.eos_token_id, config.pad_token_id) == (0, 1, 0)


@pytest.mark.parametrize("beams", [1, 3])
def test_generation_length_is_max_new_tokens_beyond_the_library_default_of_20(beams: int) -> None:
    model = tiny_t5(50)
    batch = {
        "input_ids": torch.tensor([[5, 6, 7, 1], [8, 9, 1, 0]]),
        "attention_mask": torch.tensor([[1] * 4, [1] * 3 + [0]]),
    }
    configure(model, GenerationSettings(num_beams=beams, min_new_tokens=30, max_new_tokens=30))
    assert generate_ids(model, batch).shape == (2, 30)  # the decoder start token is cut off
    configure(model, GenerationSettings(num_beams=beams, min_new_tokens=3, max_new_tokens=3))
    assert generate_ids(model, batch).shape == (2, 3)


def test_a_decoders_prompt_is_cut_from_its_generation() -> None:
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=50, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2, eos_token_id=1
    )
    model = LlamaForCausalLM(config).eval()
    configure(model, GenerationSettings(min_new_tokens=5, max_new_tokens=5))
    prompts = {"input_ids": torch.tensor([[0, 3, 4, 5]]), "attention_mask": torch.tensor([[0, 1, 1, 1]])}  # left-padded
    assert generate_ids(model, prompts).shape == (1, 5)


def test_generations_read_the_trainers_padding_and_count_tokens_without_special_ones(tokenizer) -> None:
    words = tokenizer("Zwei Hunde", add_special_tokens=False)["input_ids"]
    rows = [words + [tokenizer.eos_token_id, -100, -100], [tokenizer.eos_token_id] + [-100] * (len(words) + 2)]
    assert generations(tokenizer, torch.tensor(rows).numpy()) == [
        Generation("Zwei Hunde", len(words)),
        Generation("", 0),
    ]


def test_the_unigram_tokenizer_collapses_whitespace_and_ends_inputs_with_eos(tokenizer) -> None:
    assert (tokenizer.pad_token_id, tokenizer.eos_token_id, tokenizer.unk_token_id) == (0, 1, 2)
    ids = tokenizer("Zwei   Hunde\n spielen")["input_ids"]
    assert ids == tokenizer("Zwei Hunde spielen")["input_ids"] and ids[-1] == tokenizer.eos_token_id
    assert tokenizer.decode(ids, skip_special_tokens=True) == "Zwei Hunde spielen"


@pytest.mark.parametrize(("source", "target"), [("en", "de"), ("de", "en")])
def test_targets_end_with_eos_and_the_direction_is_a_setting(tokenizer, source: str, target: str) -> None:
    task = Translation(TranslationOptions(source_lang=source, target_lang=target, max_target_length=4), 64, 0)
    rows = [Translation.check_row(row, None) for row in pair_rows()]
    [feature, *_] = task.featurize(datasets.Dataset.from_list(rows, features=task.features()), tokenizer, {})
    texts = dict(zip(("en", "de"), PAIRS[0]))
    assert feature["input_ids"] == tokenizer(texts[source])["input_ids"]
    assert feature["labels"] == tokenizer(texts[target], add_special_tokens=False)["input_ids"][:3] + [1]


# ---------------------------------------------------------------- metrics


def test_rouge_on_a_hand_computed_case_takes_each_types_best_reference() -> None:
    # "the cat sat" against "the cat sat on the mat": 3 of 6 unigrams, P 1, R 1/2, F 2/3;
    # 2 of 5 bigrams, P 1, R 2/5, F 4/7; the longest common subsequence is the 3 unigrams.
    scores = rouge([["the cat sat on the mat"]], [["the cat sat"]])
    assert scores == pytest.approx({"rouge1": 2 / 3, "rouge2": 4 / 7, "rougeL": 2 / 3, "rougeLsum": 2 / 3})
    assert rouge([["a dog barked", "The cats sat."]], [["the cat sat"]]) == pytest.approx(dict.fromkeys(scores, 1.0))


def test_summaries_are_scored_against_all_references_where_a_row_has_them() -> None:
    task = Summarization(Summarization.Options(), 64, 0)
    rows = [
        {"document": "A: hi", "summary": "a dog barked", "references": ["a dog barked", "the cat sat"]},
        {"document": "B: hey", "summary": "the cat sat", "references": None},
    ]
    examples = datasets.Dataset.from_list(rows, features=task.features())
    metrics = task.score(examples, [Generation("the cat sat", 4), Generation("the cat sat", 2)])
    assert metrics == pytest.approx({"rouge1": 1.0, "rouge2": 1.0, "rougeL": 1.0, "rougeLsum": 1.0, "gen_len": 3.0})


def test_bleu_and_chrf_on_a_hand_computed_case() -> None:
    # One word of five wrong: n-gram precisions 4/5, 3/4, 2/3, 1/2, equal lengths (brevity penalty 1):
    # BLEU = 100 * (4/5 * 3/4 * 2/3 * 1/2) ** (1/4) = 100 * 0.2 ** 0.25.
    task = Translation(TranslationOptions(), 64, 0)
    rows = [
        {"translation": [{"language": "en", "text": "a dog runs"}, {"language": "de", "text": text}]}
        for text in ("ein Hund läuft im Garten", "Hallo")
    ]
    examples = datasets.Dataset.from_list(rows, features=task.features())
    metrics = task.score(examples.select([0]), [Generation("ein Hund läuft im Park", 5)])
    assert metrics["bleu"] == pytest.approx(100 * 0.2**0.25) and metrics["gen_len"] == 5
    perfect = task.score(examples, [Generation("ein Hund läuft im Garten", 5), Generation("Hallo", 1)])
    assert perfect["bleu"] == pytest.approx(100) and perfect["chrf"] == pytest.approx(100)


# ---------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    ("task", "row", "message"),
    [
        (
            "summarization",
            {"document": "A: hi", "summary": "  "},
            "field 'summary' must be non-empty text, got blank text",
        ),
        ("summarization", {"document": "", "summary": "Hi."}, "field 'document' must be non-empty text"),
        (
            "summarization",
            {"document": "A: hi", "summary": "Hi.", "references": ["Hi.", ""]},
            r"field 'references\[1\]'",
        ),
        (
            "summarization",
            {"document": "A: hi", "summary": "Hi.", "references": []},
            "field 'references' must be a non-empty list",
        ),
        ("translation", {"translation": {"en": "Hi.", "de": ""}}, "field 'translation.de' must be non-empty text"),
        ("translation", {"translation": {"en": "Hi."}}, "field 'translation' must map two or more language codes"),
        ("translation", {"translation": "Hi."}, "field 'translation' must map two or more language codes"),
    ],
)
def test_a_bad_row_is_an_error_naming_file_line_and_field(tmp_path: Path, task: str, row: dict, message: str) -> None:
    good = {"summarization": {"document": "A: hi", "summary": "Hi."}, "translation": pair_rows()[0]}[task]
    path = write_rows(tmp_path / "train.jsonl", [good, row])
    task_class = TASKS[task]
    with pytest.raises(DataError, match=f"{path}:2: {message}"):
        load_splits(DataConfig(train_file=path), task_class(task_class.Options(), 64, 0))


def test_flat_language_columns_read_as_nested_translation_rows(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """One column per language, as CSV files and the Hub's bentrevett/multi30k hold them."""
    task = Translation(TranslationOptions(), 64, 0)
    nested = load_splits(DataConfig(train_file=write_rows(tmp_path / "nested.jsonl", pair_rows())), task)["train"]
    flat_rows = [{"id": str(i), **row["translation"]} for i, row in enumerate(pair_rows())]
    flat_jsonl = write_rows(tmp_path / "flat.jsonl", flat_rows)
    flat_csv = tmp_path / "flat.csv"
    flat_csv.write_text("en,de\n" + "".join(f'"{en}","{de}"\n' for en, de in PAIRS), encoding="utf-8")
    for path in (flat_jsonl, flat_csv):
        assert load_splits(DataConfig(train_file=path), task)["train"]["translation"] == nested["translation"]
    hub = datasets.DatasetDict({"train": datasets.Dataset.from_list([row["translation"] for row in pair_rows()])})
    monkeypatch.delenv("NLPTASKS_DATA_DIR", raising=False)
    monkeypatch.setattr(datasets, "load_dataset", lambda hub_id, config: {"bentrevett/multi30k": hub}[hub_id])
    assert load_splits(DataConfig(name="multi30k"), task)["train"]["translation"] == nested["translation"]


def test_a_language_the_rows_lack_is_an_error_naming_the_settings(translation_files, tmp_path: Path) -> None:
    with pytest.raises(DataError, match="example 0 has no 'fr' text in field 'translation' .*task_args.target_lang"):
        nlptasks.run(
            recipe("translation", translation_files, "t5-tiny", tmp_path / "run", task_args={"target_lang": "fr"})
        )


def test_a_generating_task_rejects_an_encoder_only_model(translation_files, tiny_bert: Path, tmp_path: Path) -> None:
    with pytest.raises(
        RecipeError,
        match="is an encoder model and task 'translation' generates text.*smollm2-135m-instruct.*bert2bert-minilm-l6",
    ):
        nlptasks.run(recipe("translation", translation_files, str(tiny_bert), tmp_path / "run"))


# ---------------------------------------------------------------- end to end


def test_translation_with_tiny_t5_end_to_end_and_predict_streams_json_lines(
    translation_files, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    result = nlptasks.run(
        recipe(
            "translation",
            translation_files,
            "t5-tiny",
            tmp_path / "run",
            train={"epochs": 4, "learning_rate": 5e-3},  # enough to stop an untrained model's runs of <pad>
            generation={"min_new_tokens": 4, "max_new_tokens": 4},
        )
    )
    assert set(result.metrics["test"]) == {"bleu", "chrf", "gen_len", "samples_per_second"}
    assert result.metrics["test"]["gen_len"] == 4  # evaluation generated with the recipe's settings
    signatures = json.loads((result.run_dir / "sacrebleu_test.json").read_text())
    assert "tok:13a" in signatures["bleu"]["signature"] and signatures["chrf"]["signature"].startswith("nrefs:1")
    assert json.loads((result.run_dir / "model" / "generation_config.json").read_text())["max_new_tokens"] == 4
    [first, *_] = (json.loads(line) for line in (result.run_dir / "predictions" / "test.jsonl").open())
    assert (first["source"], first["gold"]) == PAIRS[0] and isinstance(first["translation"], str)

    capsys.readouterr()
    monkeypatch.setattr(sys, "stdin", io.StringIO('A man is riding a bike.\n{"text": "Two dogs play."}\n'))
    assert main(["predict", str(result.run_dir)]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [line["source"] for line in lines] == ["A man is riding a bike.", "Two dogs play."]
    assert all(isinstance(line["translation"], str) and "gold" not in line for line in lines)
    assert main(["predict", str(result.run_dir), "--text", " "]) == 0  # a blank input keeps its place, empty
    assert json.loads(capsys.readouterr().out) == {"source": "", "translation": "", "empty": True}

    longer = nlptasks.load(result.run_dir, generation={"min_new_tokens": 6, "max_new_tokens": 6, "num_beams": 2})
    [shown] = longer.predict("A man is riding a bike.")
    assert len(longer.tokenizer(shown["translation"], add_special_tokens=False)["input_ids"]) >= 5  # decoded longer
    with pytest.raises(nlptasks.RecipeError, match="num_beams"):
        longer.set_generation(num_beams=0)
    looked = longer.cross_attention("A man is riding a bike.")  # T5: every layer's heads averaged
    assert looked.weights.shape == (len(looked.output_tokens), len(looked.input_tokens)) and looked.text
    rescored = nlptasks.evaluate(result.run_dir, "test", generation={"min_new_tokens": 6, "max_new_tokens": 6})
    assert rescored["gen_len"] == 6  # scored with other decoding settings, no retraining


def test_summarization_with_a_warm_started_tiny_bert2bert_end_to_end(
    summarization_files, tiny_bert: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    warm_started = catalog.model_family("bert2bert-minilm-l6")
    tiny = replace(warm_started, aliases={"bert2bert-tiny": catalog.WeightsOf(str(tiny_bert))})
    monkeypatch.setitem(catalog.MODEL_FAMILIES, "bert2bert-tiny", tiny)
    result = nlptasks.run(recipe("summarization", summarization_files, "bert2bert-tiny", tmp_path / "run"))
    assert set(result.metrics["test"]) == {"rouge1", "rouge2", "rougeL", "rougeLsum", "gen_len", "samples_per_second"}
    assert result.metrics["test"]["gen_len"] <= 8
    predictor = nlptasks.load(result.run_dir)
    assert predictor.model.config.model_type == "encoder-decoder" and predictor.tokenizer.eos_token == "[SEP]"
    [shown] = predictor.predict("#Person1#: Hello.\n#Person2#: Hi there.")
    assert set(shown) == {"document", "summary"} and isinstance(shown["summary"], str)


@pytest.mark.slow
@pytest.mark.integration
def test_tiny_t5_overfits_real_multi30k_pairs_to_near_perfect_bleu(data_dir: Path, tmp_path: Path) -> None:
    """Three dozen real pairs learnt by heart: the loss, the targets, generation and detokenization all work."""
    result = nlptasks.run(
        recipe(
            "translation",
            pairs_to_learn_by_heart(data_dir, tmp_path, 36),
            "t5-tiny",
            tmp_path / "run",
            model_args={"dropout_rate": 0.0},
            train={"epochs": 150, "batch_size": 12, "learning_rate": 3e-3, "eval_strategy": "no", "logging_steps": 50},
            generation={"max_new_tokens": 48},
            eval={"splits": ["test"]},
        )
    )
    assert result.metrics["test"]["bleu"] > 90, result.metrics["test"]


def test_length_and_bleu_by_source_length_reports_on_hand_built_outputs() -> None:
    report = length_report(["one two", "one two three four five six"], [["one two three four"], ["a b", "c d e f"]])
    assert (report["summary_words"], report["reference_words"], report["ratio"]) == (4.0, 3.5, 4.0 / 3.5)
    assert sum(quarter["count"] for quarter in report["by_reference_length"]) == 2

    short, long = "A dog runs.", " ".join(["word"] * 15)
    pairs = [[{"language": "en", "text": text}, {"language": "de", "text": text}] for text in (short, long)]
    examples = datasets.Dataset.from_list([{"translation": pair} for pair in pairs])
    task = Translation(TranslationOptions(), max_length=64, stride=0)
    errors = task.error_analysis(examples, [Generation(short, 3), Generation("wrong", 1)])
    assert errors["bleu_by_source_length"] == [
        {"source_words": "0-10", "count": 1, "bleu": pytest.approx(100.0)},
        {"source_words": "11-20", "count": 1, "bleu": pytest.approx(0.0)},
    ]

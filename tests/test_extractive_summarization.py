"""Extractive summarization: splitting, the greedy oracle, selection, ROUGE, windows, baselines, end to end."""

from __future__ import annotations

import json
from pathlib import Path

import datasets
import numpy as np
import pytest
from rouge_score.rouge_scorer import RougeScorer
from transformers import AutoTokenizer

import nlptasks
from nlptasks.cli import main
from nlptasks.data import load_splits
from nlptasks.metrics.rouge import greedy_oracle
from nlptasks.recipe import DataConfig
from nlptasks.tasks.extractive_summarization import LABELS, ExtractiveOptions, ExtractiveSummarization, select
from nlptasks.text import split_sentences, split_turns

DIALOGUE = (
    "#Person1#: I want to buy a red car today.\n"
    "#Person2#: What is your budget?\n"
    "#Person1#: About ten thousand dollars.\n"
    "#Person2#: We have a red car for nine thousand dollars."
)
LABEL2ID = {label: i for i, label in enumerate(LABELS)}


def task(**options: object) -> ExtractiveSummarization:
    return ExtractiveSummarization(ExtractiveOptions(**options), max_length=64, stride=0)


def texts(text: str, spans: list[tuple[int, int]]) -> list[str]:
    return [text[start:end] for start, end in spans]


def write_rows(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


@pytest.fixture(scope="module")
def tokenizer(minilm_dir: Path):
    return AutoTokenizer.from_pretrained(minilm_dir)


def test_turns_are_non_blank_lines_with_exact_spans() -> None:
    text = "  A: hi there \n\n   \nB: hello\r\nA: bye"
    spans = split_turns(text)
    assert texts(text, spans) == ["A: hi there", "B: hello", "A: bye"]
    assert spans[0] == (2, 13)


def test_sentence_splitter_keeps_abbreviations_initials_and_lowercase_continuations() -> None:
    text = 'Dr. Smith met J. R. Brown, e.g. at noon. "Was it late?" he asked. It was! Then... they left.\nNew line'
    assert texts(text, split_sentences(text)) == [
        "Dr. Smith met J. R. Brown, e.g. at noon.",
        '"Was it late?" he asked.',
        "It was!",
        "Then... they left.",
        "New line",
    ]
    assert split_sentences("no punctuation at all") == [(0, 21)]


def test_the_sentence_option_chooses_the_splitter() -> None:
    assert task(split="turns").sentences("A: Hi. How are you?\nB: Fine.") == ["A: Hi. How are you?", "B: Fine."]
    assert task(split="sentences").sentences("A: Hi. How are you?\nB: Fine.") == ["A: Hi.", "How are you?", "B: Fine."]


def test_greedy_oracle_on_a_hand_built_case() -> None:
    # Reference tokens: the cat sat on the mat (6 unigrams, 5 bigrams).
    # Alone, "it sat on the mat" scores R1 F 8/11 + R2 F 2/3 = 1.39 and "the cat sat down" 0.6 + 0.5 = 1.1:
    # the first step takes sentence 2. Together (document order) they score 0.8 + 10/13 = 1.57 > 1.39:
    # the second step adds sentence 1. Adding the dog sentence only lowers precision, so the search stops.
    sentences = ["A dog barked loudly.", "The cat sat down.", "It sat on the mat."]
    reference = "The cat sat on the mat."
    assert greedy_oracle(sentences, reference) == [1, 2]
    scores = RougeScorer(["rouge1", "rouge2"], use_stemmer=True).score(reference, " ".join(sentences[1:]))
    assert scores["rouge1"].fmeasure == pytest.approx(0.8)
    assert scores["rouge2"].fmeasure == pytest.approx(10 / 13)
    assert greedy_oracle(["Nothing in common here."], reference) == []


def test_oracle_is_cached_by_the_datasets_map_cache(tmp_path: Path) -> None:
    train = write_rows(tmp_path / "train.jsonl", [{"document": DIALOGUE, "summary": "Person1 buys a red car."}] * 4)
    summarizer = task()
    examples = load_splits(DataConfig(train_file=train, validation_file=train), summarizer)["validation"]
    first, second = summarizer.with_oracle(examples), summarizer.with_oracle(examples)
    assert first.cache_files and first.cache_files == second.cache_files
    assert Path(first.cache_files[0]["filename"]).parent == Path(examples.cache_files[0]["filename"]).parent
    assert first["oracle"][0] == [0]


def test_trigram_blocking_skips_a_sentence_repeating_a_chosen_trigram() -> None:
    sentences = ["we will meet at noon", "yes we will meet at the cafe", "bring the report", "fine"]
    scores = [0.9, 0.8, 0.7, 0.1]
    assert select(sentences, scores, k=2, max_words=None, trigram_blocking=True) == [0, 2]
    assert select(sentences, scores, k=2, max_words=None, trigram_blocking=False) == [0, 1]


def test_length_budget_skips_what_overruns_and_never_returns_nothing() -> None:
    sentences = ["one two three four five six", "one two", "three four five", "six"]
    scores = [0.9, 0.8, 0.7, 0.6]
    # 6 words taken, "one two" makes 8, "three four five" would make 11 > 10, "six" makes 9.
    assert select(sentences, scores, k=None, max_words=10, trigram_blocking=False) == [0, 1, 3]
    assert select(sentences, scores, k=None, max_words=2, trigram_blocking=False) == [1]
    assert select(sentences, scores, k=None, max_words=1, trigram_blocking=False) == [3]
    assert select(["a b c d"], [0.5], k=2, max_words=1, trigram_blocking=False) == [0]
    with pytest.raises(ValueError, match="needs a bound"):
        ExtractiveOptions(k=None, max_words=None)


def test_rouge_keys_and_a_hand_checked_value() -> None:
    examples = datasets.Dataset.from_dict(
        {"document": ["The cat sat.\nA dog ran."], "summary": ["The cat sat on the mat."]}
    )
    metrics = task().score(examples, [{"indices": [0], "scores": [1.0, 0.0]}])
    # "the cat sat" against "the cat sat on the mat": unigrams P 3/3 R 3/6, bigrams P 2/2 R 2/5, LCS 3.
    assert metrics["rouge1"] == pytest.approx(2 / 3)
    assert metrics["rouge2"] == pytest.approx(2 * 0.4 / 1.4)
    assert metrics["rougeL"] == pytest.approx(2 / 3) and metrics["rougeLsum"] == pytest.approx(2 / 3)
    assert {f"oracle_{key}" for key in ("rouge1", "rouge2", "rougeL", "rougeLsum")} <= set(metrics)
    assert metrics["oracle_rouge1"] == pytest.approx(2 / 3)  # the oracle also picks only the first turn


def test_rows_with_several_references_are_scored_against_their_best_one() -> None:
    document = "The cat sat.\nA dog ran."
    rows = [
        {"document": document, "summary": "The cat sat on the mat.", "references": None},
        {"document": document, "summary": "A bird sang.", "references": ["A bird sang.", "A dog ran."]},
    ]
    examples = datasets.Dataset.from_list(rows, features=ExtractiveSummarization.features())
    metrics = task().score(examples, [{"indices": [0], "scores": [1.0, 0.0]}, {"indices": [1], "scores": [0.0, 1.0]}])
    assert metrics["rouge1"] == pytest.approx((2 / 3 + 1) / 2)  # the second row matches its second reference


def test_no_sentence_is_lost_on_a_document_longer_than_max_length(tokenizer) -> None:
    turns = [f"#Person{i % 2 + 1}#: turn number {i} talks about topic {i} at some length." for i in range(30)]
    turns[7] = "#Person2#: " + " ".join(["word"] * 80)  # alone longer than a window
    document = "\n".join(turns)
    examples = datasets.Dataset.from_dict({"document": [document], "summary": ["topic 7 and topic 20"]})
    summarizer = ExtractiveSummarization(ExtractiveOptions(k=30, trigram_blocking=False), max_length=48, stride=0)
    features = summarizer.featurize(examples, tokenizer, LABEL2ID)
    assert len(features) > 5 and all(len(ids) <= 48 for ids in features["input_ids"])
    marked = sorted(s for ids in features["sentence_ids"] for s in ids if s >= 0)
    assert marked == list(range(30)), "each sentence is marked exactly once"
    for ids, sentence_ids, labels in zip(features["input_ids"], features["sentence_ids"], features["labels"]):
        marks = [p for p, s in enumerate(sentence_ids) if s >= 0]
        assert [ids[p] for p in marks] == [tokenizer.cls_token_id] * len(marks)
        assert [p for p, label in enumerate(labels) if label != -100] == marks
    logits = np.zeros((len(features), 48, 2))
    for row, sentence_ids in enumerate(features["sentence_ids"]):
        for position, sentence in enumerate(sentence_ids):
            logits[row, position, 1] = -sentence  # earlier sentences score higher
    [prediction] = summarizer.decode(examples, features, logits, dict(enumerate(LABELS)))
    assert len(prediction["scores"]) == 30 and not np.isnan(prediction["scores"]).any()
    assert prediction["indices"] == list(range(30))


def test_lead_and_textrank_run_end_to_end_without_training(data_dir: Path, tmp_path: Path) -> None:
    settings = {"data.max_eval_samples": 6, "data.max_train_samples": 6}
    lead = nlptasks.run("extractive-summarization/lead", settings, output_dir=str(tmp_path / "lead"))
    textrank = nlptasks.run("extractive-summarization/textrank", settings, output_dir=str(tmp_path / "textrank"))
    for result in (lead, textrank):
        assert {"rouge1", "rouge2", "rougeL", "rougeLsum", "oracle_rouge1"} <= set(result.metrics["test"])
        assert 0 < result.metrics["test"]["rouge1"] < result.metrics["test"]["oracle_rouge1"] <= 1
        assert json.loads((result.run_dir / "metrics.json").read_text()) == json.loads(json.dumps(result.metrics))
        assert len((result.run_dir / "predictions" / "test.jsonl").read_text().splitlines()) == 6
        assert not (result.run_dir / "model").exists()
    first = json.loads((lead.run_dir / "predictions" / "test.jsonl").read_text().splitlines()[0])
    assert first["sentences"][0]["index"] == 0
    [shown] = nlptasks.load(lead.run_dir).predict("A: I lost my keys.\\nB: Where?\\nA: In the park.\\nB: Look there.")
    assert [s["index"] for s in shown["sentences"]] == [0, 1, 2]
    assert shown["document"][shown["sentences"][2]["start"] : shown["sentences"][2]["end"]] == "A: In the park."


@pytest.fixture
def dialogue_files(tmp_path: Path) -> dict[str, Path]:
    """Dialogues whose summary restates the first turn, so the oracle labels that turn."""
    rows = []
    for i, thing in enumerate(["car", "bike", "house", "boat", "phone", "lamp", "desk", "coat"]):
        filler = [f"#Person{j % 2 + 1}#: Line {j} of {i}." for j in range(12)]
        turns = [f"#Person1#: I want to buy a {thing} today.", *filler]
        rows.append({"document": "\n".join(turns), "summary": f"#Person1# wants to buy a {thing}."})
    return {split: write_rows(tmp_path / f"{split}.jsonl", rows) for split in ("train", "validation", "test")}


def test_a_tiny_bert_trains_evaluates_and_predicts(
    tiny_bert: Path, dialogue_files: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    recipe = {
        "task": "extractive-summarization",
        "model": str(tiny_bert),
        "output_dir": str(tmp_path / "run"),
        "task_args": {"k": 2},
        "data": {f"{split}_file": str(path) for split, path in dialogue_files.items()} | {"max_length": 48},
        "train": {"epochs": 2, "batch_size": 4, "learning_rate": 1e-3, "precision": "fp32"},
    }
    result = nlptasks.run(recipe)
    assert result.metrics["test"]["oracle_rouge1"] > 0.5 and 0 < result.metrics["test"]["rouge1"] <= 1
    predictor = nlptasks.load(result.run_dir)
    document = "A: Where is the station?\nB: Turn left. It is near.\nA: Thanks."
    [shown] = predictor.predict(document)
    assert shown["num_sentences"] == 3 and len(shown["sentences"]) == 2
    for sentence in shown["sentences"]:
        assert document[sentence["start"] : sentence["end"]] == sentence["text"] and 0 <= sentence["score"] <= 1
    capsys.readouterr()
    assert main(["predict", str(result.run_dir), "--text", document.replace("\n", "\\n")]) == 0
    assert json.loads(capsys.readouterr().out)["document"] == document


@pytest.mark.parametrize(
    ("row", "message"),
    [
        ({"document": "  \n ", "summary": "x"}, r"train\.jsonl:2: field 'document' must be non-empty text, got blank"),
        ({"document": "A: hi"}, r"train\.jsonl:2: missing field\(s\) \['summary'\]"),
        ({"document": "A: hi", "summary": None}, r"train\.jsonl:2: field 'summary' must be non-empty text, got None"),
    ],
)
def test_bad_rows_name_file_line_and_field(tmp_path: Path, row: dict, message: str) -> None:
    train = write_rows(tmp_path / "train.jsonl", [{"document": DIALOGUE, "summary": "A car."}, row])
    with pytest.raises(nlptasks.DataError, match=message):
        load_splits(DataConfig(train_file=train), task())


def test_empty_predict_input_is_an_error() -> None:
    with pytest.raises(nlptasks.UserInputError, match="text 2 is empty"):
        task().examples_from_texts(["A: hi", "   "])

"""Extractive QA: windows and offsets, span search, SQuAD metrics, bad rows, no-answer, every model family."""

from __future__ import annotations

import json
import random
from pathlib import Path

import datasets
import numpy as np
import pytest
import torch
from transformers import AutoModel, AutoModelForQuestionAnswering, AutoTokenizer

import nlptasks
from nlptasks import models
from nlptasks.cli import main
from nlptasks.data import load_splits, pad_batch
from nlptasks.errors import DataError, UserInputError
from nlptasks.metrics.squad import normalize_answer, token_f1
from nlptasks.models.recurrent import BiRNNForQuestionAnswering, build
from nlptasks.recipe import DataConfig
from nlptasks.tasks.qa import OUTSIDE, QAOptions, QuestionAnswering, _token_span

DRINKS = ["tea", "coffee", "juice", "milk", "water", "cocoa"]
NAMES = ["Alice", "Bob", "Carol", "Dave", "Erin", "Frank"]


@pytest.fixture(scope="module")
def tokenizer(minilm_dir: Path):
    return AutoTokenizer.from_pretrained(minilm_dir)


def qa(max_length: int = 64, stride: int = 16, **options) -> QuestionAnswering:
    return QuestionAnswering(QAOptions(**options), max_length=max_length, stride=stride)


def row(question: str, context: str, answer: str | None, **extra) -> dict:
    """A SQuAD-style row; `answer` must occur in the context (its first occurrence is the gold span)."""
    answers = {"text": [], "answer_start": []}
    if answer is not None:
        answers = {"text": [answer], "answer_start": [context.index(answer)]}
    return {"question": question, "context": context, "answers": answers, **extra}


def dataset(rows: list[dict]) -> datasets.Dataset:
    checked = [QuestionAnswering.check_row(r, None) for r in rows]
    return datasets.Dataset.from_list(checked, features=QuestionAnswering.features())


def perfect_logits(features: datasets.Dataset) -> tuple[np.ndarray, np.ndarray]:
    """Start/end logits that put all mass on each window's training targets."""
    length = max(len(ids) for ids in features["input_ids"])
    starts, ends = np.full((len(features), length), -10.0), np.full((len(features), length), -10.0)
    for i, (first, last) in enumerate(zip(features["start_positions"], features["end_positions"])):
        starts[i, first], ends[i, last] = 10.0, 10.0
    return starts, ends


def drink_rows(count: int, seed: int = 0) -> list[dict]:
    """Who-drinks-what questions over three-sentence contexts: learnable, and every answer a context span."""
    rng = random.Random(seed)
    rows = []
    for number in range(count):
        names, drinks = rng.sample(NAMES, 3), rng.sample(DRINKS, 3)
        context = " ".join(f"{name} drinks {drink}." for name, drink in zip(names, drinks))
        asked = rng.randrange(3)
        rows.append(row(f"What does {names[asked]} drink?", context, drinks[asked], id=f"q{number}"))
    return rows


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture
def qa_files(tmp_path: Path) -> dict[str, Path]:
    return {
        "train": write_jsonl(tmp_path / "train.jsonl", drink_rows(32)),
        "validation": write_jsonl(tmp_path / "validation.jsonl", drink_rows(8, seed=1)),
    }


def qa_recipe(model: Path | str, files: dict[str, Path], output_dir: Path, **train) -> dict:
    return {
        "task": "qa",
        "model": str(model),
        "output_dir": str(output_dir),
        "data": {
            "train_file": str(files["train"]),
            "validation_file": str(files["validation"]),
            "max_length": 32,
            "stride": 8,
        },
        "train": {"epochs": 2, "batch_size": 8, "learning_rate": 1e-3, "precision": "fp32", **train},
    }


# --- windows, offsets, span search ------------------------------------------------------------------------------


def test_an_answer_in_a_later_window_is_labelled_and_found_with_its_exact_characters(tokenizer) -> None:
    context = "Filler words keep coming here. " * 6 + "The treaty was signed in Zürich in 1848."
    data = dataset([row("Where was the treaty signed?", context, "Zürich")])
    task = qa(max_length=32, stride=8)
    features = task.featurize(data, tokenizer, {})
    assert len(features) > 2 and set(features["example_index"]) == {0}
    assert (features[0]["start_positions"], features[0]["end_positions"]) == (0, 0)  # the first window lacks it
    holding = [f for f in features if f["start_positions"] > 0]
    assert holding, "a later window must hold the answer"
    for feature in holding:
        spans = feature["offset_mapping"]
        assert context[spans[feature["start_positions"]][0] : spans[feature["end_positions"]][1]] == "Zürich"
        assert all(span == OUTSIDE for span, part in zip(spans, feature["token_type_ids"]) if part == 0)
    # Window i+1 repeats the last `stride` context tokens of window i (stride means overlap).
    first, second = ([tuple(s) for s in f["offset_mapping"] if s != OUTSIDE] for f in features.select(range(2)))
    assert first[-8:] == second[:8]
    [prediction] = task.decode(data, features, perfect_logits(features), {})
    start = context.index("Zürich")
    assert prediction["answer"] == "Zürich" and (prediction["start"], prediction["end"]) == (start, start + 6)
    assert prediction["score"] == pytest.approx(1.0)  # the same span from two windows counts once


def test_answers_keep_the_contexts_own_characters(tokenizer) -> None:
    """The uncased tokenizer lowercases and strips accents; the answer comes from the context itself."""
    context = "In   1848, the  CAFÉ «Zum Löwen» opened its doors."
    data = dataset([row("What opened?", context, "CAFÉ «Zum Löwen»")])
    task = qa()
    features = task.featurize(data, tokenizer, {})
    [prediction] = task.decode(data, features, perfect_logits(features), {})
    assert prediction["answer"] == "CAFÉ «Zum Löwen»" == context[prediction["start"] : prediction["end"]]


def test_an_answer_cut_by_a_window_edge_is_not_a_target_there() -> None:
    spans = [OUTSIDE, OUTSIDE, [0, 3], [4, 9], [10, 14], OUTSIDE]
    assert _token_span(spans, 4, 14) == (3, 4)
    assert _token_span(spans, 4, 20) == (0, 0)  # the answer runs past this window
    assert _token_span(spans, 0, 2) == (2, 2)  # a part of a token selects that token


def test_span_search_respects_n_best_and_max_answer_length() -> None:
    context = "aa bb cc dd ee ff gg hh"
    spans = [OUTSIDE] + [[i, i + 2] for i in range(0, len(context), 3)]
    examples = datasets.Dataset.from_dict({"context": [context]})
    features = datasets.Dataset.from_dict({"example_index": [0], "offset_mapping": [spans]})
    starts, ends = np.zeros((1, 9)), np.zeros((1, 9))
    starts[0, [2, 5]] = [5.0, 4.0]  # best start "bb", second "ee"
    ends[0, [8, 6]] = [5.0, 3.0]  # best end "hh", second "ff"

    def answer(**options) -> str:
        return qa(**options).decode(examples, features, (starts, ends), {})[0]["answer"]

    assert answer(max_answer_length=10) == "bb cc dd ee ff gg hh"  # 5 + 5
    assert answer(max_answer_length=3) == "ee ff"  # 4 + 3 is the best span of at most three tokens
    assert answer(max_answer_length=3, n_best=2) == "ee ff"
    assert answer(max_answer_length=3, n_best=1) == ""  # only bb..hh is searched, and it is too long


# --- metrics ----------------------------------------------------------------------------------------------------


def test_squad_exact_match_and_f1_by_hand() -> None:
    assert normalize_answer("The Cat!") == "cat" and normalize_answer("  an  Apple, a day ") == "apple day"
    assert token_f1("a black cat", "the cat sat") == pytest.approx(0.5)  # "black cat" vs "cat sat": P 1/2, R 1/2
    context = "The Cat! sat on a black cat mat. A dog too."
    two_golds = {"text": ["sat", "black cat"], "answer_start": [context.index("sat"), context.index("black cat")]}
    examples = dataset(
        [row("q1", context, "Cat"), {**row("q2", context, "sat"), "answers": two_golds}, row("q3", context, "dog")]
    )
    predictions = [{"answer": "The Cat!"}, {"answer": "a black cat"}, {"answer": "black cat mat"}]
    metrics = qa().score(examples, predictions)
    # EM: 1 (normalised equal), 1 (equals the second gold), 0.  F1: 1, 1, 0 (no shared token with "dog").
    assert metrics == {"exact_match": pytest.approx(2 / 3), "f1": pytest.approx(2 / 3)}


# --- bad rows -------------------------------------------------------------------------------------------------------


def test_a_mismatched_answer_start_is_an_error_naming_file_line_and_field(tmp_path: Path) -> None:
    good = row("Who?", "Alice drinks tea.", "Alice")
    bad = {**good, "answers": {"text": ["tea"], "answer_start": [3]}}
    path = write_jsonl(tmp_path / "train.jsonl", [good, bad])
    with pytest.raises(DataError, match=r"train\.jsonl:2: field 'answers\.answer_start': answer 0 'tea' .*'ce '"):
        load_splits(DataConfig(train_file=path), qa())


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"question": "  "}, r":1: field 'question' must be a non-empty string"),
        ({"context": ""}, r":1: field 'context' must be a non-empty string"),
        ({"answers": {"text": ["tea"]}}, r":1: field 'answers' must be"),
        ({"answers": {"text": ["tea", "x"], "answer_start": [13]}}, r":1: field 'answers' has 2 texts but 1"),
        ({"answers": {"text": ["tea"], "answer_start": [99]}}, r":1: field 'answers\.answer_start'.*not a character"),
    ],
)
def test_bad_rows_name_the_line_and_field(tmp_path: Path, change: dict, message: str) -> None:
    path = write_jsonl(tmp_path / "train.jsonl", [{**row("Who?", "Alice drinks tea.", "tea"), **change}])
    with pytest.raises(DataError, match=message):
        load_splits(DataConfig(train_file=path), qa())


def test_missing_answers_are_an_error_unless_no_answer_is_allowed(tokenizer, tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "train.jsonl", [{"question": "Who?", "context": "Alice drinks tea."}])
    with pytest.raises(DataError, match=r"train\.jsonl:1: missing field\(s\) \['answers'\]"):
        load_splits(DataConfig(train_file=path), qa())
    unanswerable = dataset([row("Who is Bob?", "Alice drinks tea.", None, id="x7")])
    with pytest.raises(DataError, match=r"row 0 \(id 'x7'\): field 'answers' is empty.*allow_no_answer"):
        qa().featurize(unanswerable, tokenizer, {})


def test_a_question_that_leaves_no_room_for_context_is_an_error(tokenizer) -> None:
    data = dataset([row("why " * 12 + "?", "Because it is so, and so on.", "so")])
    with pytest.raises(DataError, match=r"row 0: the question is \d+ tokens.*data\.max_length=24.*data\.stride=8"):
        qa(max_length=24, stride=8).featurize(data, tokenizer, {})


# --- no answer (SQuAD v2) -------------------------------------------------------------------------------------------


def test_no_answer_option_trains_towards_position_zero_and_answers_empty_above_the_threshold(tokenizer) -> None:
    context = "Alice drinks tea. Bob drinks coffee."
    data = dataset([row("What does Carol drink?", context, None), row("What does Bob drink?", context, "coffee")])
    features = qa(allow_no_answer=True).featurize(data, tokenizer, {})
    assert (features[0]["start_positions"], features[0]["end_positions"]) == (0, 0)
    starts, ends = perfect_logits(features)
    starts[0, 0] = ends[0, 0] = 3.0  # no answer: null score 6
    starts[0, 8] = ends[0, 8] = 2.0  # "drinks" ([CLS] what does carol drink ? [SEP] alice drinks): a span scoring 4
    predictions = qa(allow_no_answer=True).decode(data, features, (starts, ends), {})
    assert predictions[0] == {"answer": "", "score": pytest.approx(np.exp(6) / (np.exp(6) + np.exp(4)), rel=1e-3),
                              "logit": 6.0, "start": None, "end": None}  # fmt: skip
    assert predictions[1]["answer"] == "coffee"
    assert qa(allow_no_answer=True).score(data, predictions) == {
        "exact_match": 1.0,
        "f1": 1.0,
        "ece": pytest.approx(1 - np.mean([p["score"] for p in predictions])),
    }
    lenient = qa(allow_no_answer=True, null_score_threshold=2.5).decode(data, features, (starts, ends), {})
    assert lenient[0]["answer"] != ""  # 6 - 4 = 2 is under the threshold
    assert qa().decode(data, features, (starts, ends), {})[0]["answer"] != ""  # v1 always answers


# --- every model family end to end ----------------------------------------------------------------------------------


def test_tiny_bert_trains_evaluates_and_predicts(
    tiny_bert: Path, qa_files: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    result = nlptasks.run(qa_recipe(tiny_bert, qa_files, tmp_path / "run"))
    metrics = result.metrics["validation"]
    assert 0.0 <= metrics["exact_match"] <= metrics["f1"] <= 1.0
    shown = [json.loads(line) for line in (result.run_dir / "predictions/validation.jsonl").read_text().splitlines()]
    assert len(shown) == 8 and {"id", "question", "answer", "score", "start", "end", "gold"} <= set(shown[0])

    predictor = nlptasks.load(result.run_dir)
    context = "Alice drinks tea. Bob drinks coffee. " * 3  # longer than one 32-token window
    [as_dict, as_json] = predictor.predict(
        [{"question": "What does Bob drink?", "context": context}, json.dumps({"question": "Who?", "context": context})]
    )
    for answer in (as_dict, as_json):
        assert answer["answer"] == context[answer["start"] : answer["end"]] and 0.0 < answer["score"] <= 1.0
    with pytest.raises(UserInputError, match="input 1: field 'context' must be a non-empty string"):
        predictor.predict({"question": "Who?", "context": " "})

    capsys.readouterr()
    lines = tmp_path / "inputs.jsonl"
    lines.write_text(json.dumps({"question": "What does Bob drink?", "context": context}) + "\n\n")
    assert main(["predict", str(result.run_dir), "--file", str(lines)]) == 0
    [printed, blank] = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert printed["answer"] == as_dict["answer"] and blank["empty"] is True and blank["answer"] is None
    lines.write_text(json.dumps({"question": "ok?", "context": "fine"}) + "\nWhat does Bob drink?\n")
    assert main(["predict", str(result.run_dir), "--file", str(lines)]) == 2
    assert "inputs.jsonl:2: expected a JSON object with the fields ['question', 'context']" in capsys.readouterr().err


def test_tiny_llama_gets_its_pretrained_backbone_and_runs_through_the_same_recipe(
    tiny_llama: Path, qa_files: dict[str, Path], tmp_path: Path
) -> None:
    task = qa()
    model, _ = models.build(str(tiny_llama), {}, task, [], dataset(drink_rows(2)))
    pretrained = AutoModel.from_pretrained(tiny_llama).state_dict()
    assert type(model).__name__ == "LlamaForQuestionAnswering"
    assert all(torch.equal(model.base_model.state_dict()[name], value) for name, value in pretrained.items())

    result = nlptasks.run(qa_recipe(tiny_llama, qa_files, tmp_path / "llama", epochs=1, eval_strategy="no"))
    assert {"exact_match", "f1"} <= set(result.metrics["validation"])
    [shown] = nlptasks.load(result.run_dir).predict({"question": "Who?", "context": "Alice drinks tea."})
    assert shown["answer"] == "Alice drinks tea."[shown["start"] : shown["end"]]


@pytest.mark.usefixtures("one_thread")
def test_bilstm_reader_runs_end_to_end_with_overflow_windows(qa_files: dict[str, Path], tmp_path: Path) -> None:
    recipe = qa_recipe("bilstm", qa_files, tmp_path / "bilstm", epochs=1, eval_strategy="no")
    recipe["model_args"] = {"embedding_dim": 8, "hidden_size": 8, "char_dim": 4, "char_hidden": 6}
    recipe["data"].update(max_length=12, stride=4)  # three-sentence contexts need several windows
    result = nlptasks.run(recipe)
    assert {"exact_match", "f1"} <= set(result.metrics["validation"])
    loaded = AutoModelForQuestionAnswering.from_pretrained(result.run_dir / "model")
    assert type(loaded) is BiRNNForQuestionAnswering
    context = "Alice drinks tea. Bob drinks coffee."
    [shown] = nlptasks.load(result.run_dir).predict({"question": "What does Bob drink?", "context": context})
    assert shown["answer"] == context[shown["start"] : shown["end"]] and shown["answer"]


@pytest.mark.usefixtures("one_thread")
def test_bilstm_reader_ignores_padding_and_learns_to_point_at_the_answer() -> None:
    """Question words name the drinker; only attention from context to question can pick the right drink."""
    torch.manual_seed(0)
    train, test = dataset(drink_rows(300)), dataset(drink_rows(40, seed=1))
    task = qa(max_length=64, stride=16, max_answer_length=3)
    small = {"embedding_dim": 16, "hidden_size": 24, "char_encoder": False, "dropout": 0.0, "word_dropout": 0.0}
    model, tokenizer = build(task, "lstm", small, [], train)
    columns = ["input_ids", "attention_mask", "token_type_ids", "char_ids", "start_positions", "end_positions"]
    features = [dict(f) for f in task.featurize(train, tokenizer, {}).select_columns(columns)]

    model.eval()
    batch = pad_batch(features[:4], task.pad_values(tokenizer), multiple_of=128)  # windows are <= 64: all padded
    padded = batch["attention_mask"] == 0
    assert padded.any()
    changed = dict(batch, input_ids=batch["input_ids"].masked_fill(padded, 5))
    with torch.no_grad():
        assert torch.equal(model(**batch).start_logits, model(**changed).start_logits)

    rng = random.Random(0)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    model.train()
    for _ in range(120):
        loss = model(**pad_batch(rng.sample(features, 16), task.pad_values(tokenizer))).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    test_features = task.featurize(test, tokenizer, {})
    batch = pad_batch([dict(f) for f in test_features.select_columns(columns[:4])], task.pad_values(tokenizer))
    with torch.no_grad():
        output = model(**batch)
    predictions = task.decode(test, test_features, (output.start_logits.numpy(), output.end_logits.numpy()), {})
    exact = task.score(test, predictions)["exact_match"]
    assert exact >= 0.9, f"exact match {exact:.2f} after 120 steps (guessing one of three drinks: 0.33)"


def test_answers_by_kind_and_question_word_equal_a_hand_count() -> None:
    examples = datasets.Dataset.from_dict(
        {
            "question": ["Who wrote it?", "When was it written?", "What did she write?", "Name the author."],
            "context": ["Ada Lovelace wrote the first program in 1843."] * 4,
            "answers": [
                {"text": ["Ada Lovelace"], "answer_start": [0]},
                {"text": ["1843"], "answer_start": [40]},
                {"text": ["the first program"], "answer_start": [18]},
                {"text": ["Ada Lovelace"], "answer_start": [0]},
            ],
        }
    )
    answers = ["Ada Lovelace", "wrote", "first program in 1843", "Lovelace"]
    errors = QuestionAnswering(QAOptions(), max_length=64, stride=16).error_analysis(
        examples, [{"answer": a} for a in answers]
    )
    assert errors["by_question_word"]["all"] == {"exact": 1, "none": 1, "partial": 2}
    assert errors["by_question_word"]["who"] == {"exact": 1} and errors["by_question_word"]["other"] == {"partial": 1}
    assert [shown["answer"] for shown in errors["examples"]["partial"]] == ["first program in 1843", "Lovelace"]

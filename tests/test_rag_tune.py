"""`rag tune` and the rag-answer task on tiny random models: what is written, how, and the errors."""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import pytest
import yaml

from nlptasks.errors import DataError, UserInputError
from nlptasks.grounded import NOT_FOUND, grounded_scores, holds_answer
from nlptasks.rag import RagPipeline, RagSettings, build_index
from nlptasks.rag.documents import Document
from nlptasks.rag.generate import DecoderGenerator, abstention_probability, not_found
from nlptasks.rag.tune import best_threshold, read_questions, tune
from nlptasks.recipe import GenerationSettings
from tests.test_rag import hits_for

pytestmark = pytest.mark.usefixtures("one_thread")

ARTICLES = {
    "tower": "The Eiffel Tower was built for the 1889 World's Fair in Paris. It is 330 metres tall and made of iron.",
    "river": "The Nile is the longest river in Africa. It flows north through Egypt into the Mediterranean Sea.",
    "mountain": "Mount Everest is 8849 metres high. Climbers reach the summit from Nepal or from Tibet in May.",
    "plant": "Photosynthesis converts light energy into chemical energy. Plants store the energy as sugar.",
    "bridge": "The Golden Gate Bridge opened in 1937. Its towers are painted in a colour called international orange.",
    "moon": "The Moon orbits the Earth every 27 days. Apollo 11 landed on it in July 1969 with two astronauts.",
}
QUESTIONS = [
    ("How tall is the Eiffel Tower?", "330 metres", "tower"),
    ("What is the Eiffel Tower made of?", "iron", "tower"),
    ("Which sea does the Nile flow into?", "Mediterranean Sea", "river"),
    ("Through which country does the Nile flow north?", "Egypt", "river"),
    ("How high is Mount Everest?", "8849 metres", "mountain"),
    ("In which month do climbers reach Everest's summit?", "May", "mountain"),
    ("What do plants store energy as?", "sugar", "plant"),
    ("When did the Golden Gate Bridge open?", "1937", "bridge"),
    ("What colour are the Golden Gate's towers?", "international orange", "bridge"),
    ("When did Apollo 11 land on the Moon?", "July 1969", "moon"),
    ("How often does the Moon orbit the Earth?", "every 27 days", "moon"),
    ("For which fair was the Eiffel Tower built?", "1889 World's Fair", "tower"),
]


@pytest.fixture
def index(tiny_bert: Path, tiny_llama: Path, tmp_path: Path) -> Path:
    settings = RagSettings(
        encoder=str(tiny_bert),
        chunk_tokens=24,
        chunk_overlap=0,
        candidates=6,
        top_k=3,
        generator=str(tiny_llama),
        max_context_tokens=160,
        generation={"max_new_tokens": 8},
    )
    build_index([Document(key, text, key.title()) for key, text in ARTICLES.items()], tmp_path / "index", settings)
    return tmp_path / "index"


def questions_file(path: Path, by: str) -> Path:
    """SQuAD's shape (answers as {"text": [...]}, the context) or the plain one (a list, the doc_id)."""
    rows = []
    for question, answer, key in QUESTIONS:
        gold = {"context": ARTICLES[key]} if by == "context" else {"doc_id": key}
        answers = {"text": [answer], "answer_start": [0]} if by == "context" else [answer]
        rows.append({"question": question, "answers": answers, **gold})
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


TUNE_SETTINGS = [
    "retriever.data.max_length=96",
    "retriever.train.batch_size=4",
    "retriever.eval.before_training=false",
    "generator.train.batch_size=2",
    "generator.train.gradient_accumulation_steps=1",
    "generator.data.max_eval_samples=3",
]


@pytest.mark.slow
def test_tune_trains_both_models_and_writes_an_index_that_answers_with_them(
    index: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    out = tmp_path / "tuned"
    report = tune(index, questions_file(tmp_path / "q.jsonl", "context"), out, TUNE_SETTINGS, holdout=0.25)
    assert (report["train_questions"], report["held_out_questions"], report["questions_without_gold"]) == (9, 3, 0)
    assert set(report["retrieval_before"]) == set(report["retrieval_after"]) == {"recall@1", "recall@5", "recall@10"}
    assert {"f1", "answered"} <= set(report["generator_held_out"])
    assert report["abstention"]["prompts"] == 3 and 0 < report["abstention"]["abstain_threshold"] <= 1
    assert json.loads((out / "tune.json").read_text()) == report

    saved = yaml.safe_load((out / "index" / "rag.yaml").read_text())["rag"]
    assert saved["encoder"] == str((out / "retriever").resolve())
    assert saved["generator"] == str((out / "generator").resolve())
    assert saved["chunk_tokens"] == 24  # built as the source index was: the same chunks
    assert saved["abstain_threshold"] == report["abstention"]["abstain_threshold"]
    source, tuned = RagPipeline(index), RagPipeline(out / "index")
    assert [c.text for c in tuned.index.chunks.values()] == [c.text for c in source.index.chunks.values()]
    assert isinstance(tuned.generator, DecoderGenerator)
    assert tuned.ask("How tall is the Eiffel Tower?")["passages"]
    with caplog.at_level(logging.WARNING, logger="nlptasks"):
        assert RagPipeline(out / "index", ["max_context_tokens=128"]).generator.budget == 128
    assert "trained on prompts of up to 160 tokens and is asked with 128" in caplog.text
    assert "`rag fit-abstention` fits it again" in caplog.text

    asked = {row["text"] for row in jsonl(out / "data" / "retriever-train.jsonl")}
    for row in jsonl(out / "data" / "retriever-train.jsonl"):
        question, answer, key = next(q for q in QUESTIONS if q[0] == row["text"])
        assert holds_answer(row["text_pair"], [answer]) and not holds_answer(row["text_negative"], [answer])
    assert len(asked) == 9
    generator_rows = jsonl(out / "data" / "generator-train.jsonl")
    for row in generator_rows:
        if row["answer"] == NOT_FOUND:
            assert not any(holds_answer(p, row["answers"]) for p in row["passages"])
        else:
            answer, number = row["answer"].rsplit(" [", 1)
            assert answer in row["answers"] and holds_answer(row["passages"][int(number[:-1]) - 1], [answer])


@pytest.mark.slow
def test_questions_found_by_document_id_and_one_not_in_the_index(index: Path, tmp_path: Path) -> None:
    questions = questions_file(tmp_path / "q.jsonl", "doc_id")
    with questions.open("a") as handle:
        handle.write(json.dumps({"question": "Who?", "answers": ["x"], "doc_id": "missing"}) + "\n")
    settings = [*TUNE_SETTINGS, "retriever.train.max_steps=1", "generator.train.max_steps=1"]
    report = tune(index, questions, tmp_path / "tuned", settings, holdout=0.0, unanswerable=0.5)
    assert report["questions_without_gold"] == 1 and "q.jsonl:13" in report["gold_not_found"][0]
    assert report["held_out_questions"] == 0 and report["retrieval_after"] == {}
    rows = jsonl(tmp_path / "tuned" / "data" / "generator-train.jsonl")
    assert any(row["answer"] == NOT_FOUND for row in rows)


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("not json", "q.jsonl:2: not a JSON object"),
        ('{"question": "", "answers": ["a"], "doc_id": "d"}', "q.jsonl:2: field 'question'"),
        ('{"question": "Why?", "answers": [], "doc_id": "d"}', "q.jsonl:2: field 'answers'"),
        ('{"question": "Why?", "answers": ["a"]}', "q.jsonl:2: give 'doc_id'"),
    ],
)
def test_bad_question_rows_name_the_file_line_and_field(tmp_path: Path, line: str, message: str) -> None:
    path = tmp_path / "q.jsonl"
    path.write_text(json.dumps({"question": "Why?", "answers": ["a"], "doc_id": "d"}) + "\n" + line + "\n")
    with pytest.raises(DataError, match=message):
        read_questions(path)


def test_bad_shares_are_refused_before_anything_is_written(index: Path, tmp_path: Path) -> None:
    with pytest.raises(UserInputError, match="--holdout"):
        tune(index, questions_file(tmp_path / "q.jsonl", "doc_id"), tmp_path / "out", holdout=1.0)
    assert not (tmp_path / "out").exists()


def test_grounded_scores_by_hand() -> None:
    passages = [["Paris is in France."], ["Rome is in Italy.", "Oslo is cold."], ["Nothing here."]]
    golds = [["France"], ["Italy"], ["Spain"]]
    outputs = ["France [1]", "Italy [2]", NOT_FOUND]
    scores = grounded_scores(outputs, golds, passages)
    # answerable: 1 and 2, both exact; citations: [1] holds France, [2] does not hold Italy;
    # the third holds no answer and abstains
    assert scores == {"answered": 2 / 3, "exact_match": 1.0, "f1": 1.0, "citation_accuracy": 0.5, "abstention": 1.0}


def test_rag_answer_prompts_are_the_rag_generators_and_only_the_answer_is_learnt(tiny_llama: Path) -> None:
    import datasets

    from nlptasks.tasks import RagAnswer

    task = RagAnswer(RagAnswer.Options(), max_length=160, stride=0)
    task.use_model_family("decoder")
    settings = RagSettings(generator=str(tiny_llama), max_context_tokens=160, generation={"max_new_tokens": 16})
    generator = DecoderGenerator(settings)
    passages = ["A long passage about weather and light. " * 12] * 3
    question = "What colour is the sky?"
    rows = datasets.Dataset.from_dict({"question": [question], "passages": [passages], "answer": ["blue [1]"]})
    features = task.featurize(rows, generator.tokenizer, {})
    prompt, used = generator.prompt(question, hits_for(*passages))
    target = generator.tokenizer("blue [1]", add_special_tokens=False)["input_ids"] + [generator.tokenizer.eos_token_id]
    assert features[0]["input_ids"] == prompt + target
    assert features[0]["labels"] == [-100] * len(prompt) + target
    with pytest.raises(Exception, match="rag-answer fine-tunes the chat decoder"):
        RagAnswer(RagAnswer.Options(), max_length=160, stride=0).use_model_family("encoder")


def test_the_abstention_threshold_scores_held_out_prompts_as_squad_2_by_hand() -> None:
    # two prompts hold the answer (answered, F1 1.0 and 0.5), two lack it; candidates lie halfway between
    # the probabilities seen: abstaining from 0.6 up answers both that hold it and abstains on both that lack it
    fit = best_threshold([0.1, 0.4, 0.8, 0.9], [False, False, True, True], [1.0, 0.5, 0.0, 0.0])
    assert fit == {
        "abstain_threshold": pytest.approx(0.6),
        "held_out_score": 0.875,
        "answered_where_held": 1.0,
        "abstained_where_lacking": 1.0,
    }
    # an unsure right answer (p 0.8) is worth less than the abstention it would cost where the answer is lacking
    fit = best_threshold([0.1, 0.8, 0.7], [False, False, True], [1.0, 0.4, 0.0])
    assert fit["abstain_threshold"] == pytest.approx(0.4) and fit["held_out_score"] == pytest.approx(2 / 3)
    assert best_threshold([0.2, 0.3], [False, False], [1.0, 1.0])["abstain_threshold"] == 1.0  # never abstains
    calibration = (1.0, 2.0, 0.5)
    assert abstention_probability((-2000.0, -1.0), calibration) == 0.0  # exp never overflows
    assert abstention_probability((2000.0, 0.0), calibration) == 1.0
    expected = 1 / (1 + math.exp(1.5 - math.log(0.5)))
    assert abstention_probability((math.log(0.5), -1.0), calibration) == pytest.approx(expected)
    assert abstention_probability((math.log(0.5), -1.0), None) == pytest.approx(0.5)  # uncalibrated


def swapped_first_reply(tiny_llama: Path, folder: Path, generator: DecoderGenerator, prompt: list[int]) -> Path:
    """A copy of the tiny model whose greedy reply to `prompt` starts with NOT_FOUND's first token."""
    import torch

    first = int(generator.model(torch.tensor([prompt])).logits[0, -1].argmax())
    model = type(generator.model).from_pretrained(tiny_llama)
    rows = model.lm_head.weight.data
    barred = generator.abstention_start
    rows[[first, barred]] = rows[[barred, first]]
    model.save_pretrained(folder)
    generator.tokenizer.save_pretrained(folder)
    return folder


def log_prob_by_hand(model: object, prompt: list[int], reply: list[int]) -> float:
    """One decoding step at a time, as generation takes them."""
    import torch

    total, ids = 0.0, list(prompt)
    with torch.inference_mode():
        for token in reply:
            total += float(model(torch.tensor([ids])).logits[0, -1].log_softmax(-1)[token])
            ids.append(token)
    return total


def test_abstention_is_decided_on_the_calibrated_probability_and_the_answer_cannot_begin_as_not_found(
    tiny_llama: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import torch

    monkeypatch.setenv("NLPTASKS_CACHE", str(tmp_path / "cache"))
    settings = RagSettings(generator=str(tiny_llama), max_context_tokens=160, generation={"max_new_tokens": 6})
    passages = hits_for("The tower is 330 metres tall.", "Everest is high.")
    prompt, _ = DecoderGenerator(settings).prompt("How tall is the tower?", passages)
    model = swapped_first_reply(tiny_llama, tmp_path / "model", DecoderGenerator(settings), prompt)
    greedy = DecoderGenerator(settings.model_copy(update={"generator": str(model)}))
    assert greedy.reply(prompt)[0] == greedy.abstention_start
    starts_as_not_found = log_prob_by_hand(greedy.model, prompt, [greedy.abstention_start])

    replies = {}
    for engine in ("transformers", "ctranslate2"):
        barring = settings.model_copy(
            update={
                "generator": str(model),
                "abstain_threshold": 1.0,
                "generation": GenerationSettings(engine=engine, max_new_tokens=6),
            }
        )
        generator = DecoderGenerator(barring)
        reply, log_probs = replies[engine] = generator.scored_reply(prompt)
        assert reply[0] != generator.abstention_start  # the answer cannot begin as NOT_FOUND does
        features = generator.abstention_features(reply, log_probs)
        by_hand = (starts_as_not_found, log_prob_by_hand(greedy.model, prompt, reply) / len(reply))
        assert features == pytest.approx(by_hand, rel=1e-4)
        probability = abstention_probability(features, None)
        assert generator.answer("How tall is the tower?", passages)["abstention_probability"] == probability

        generator.calibration = (1.0, 2.0, 0.5)
        probability = generator.answer("How tall is the tower?", passages)["abstention_probability"]
        assert probability == pytest.approx(1 / (1 + math.exp(-(by_hand[0] + 2 * by_hand[1] + 0.5))), rel=1e-4)
        generator.abstain_threshold = probability
        assert generator.answer("How tall is the tower?", passages) == {
            **not_found(),
            "abstention_probability": probability,
        }
    assert replies["transformers"][0] == replies["ctranslate2"][0]
    assert torch.allclose(replies["transformers"][1], replies["ctranslate2"][1], rtol=1e-4, atol=1e-4)
    generator.generator.generation_config.max_new_tokens = 1  # CTranslate2's: the first token alone
    assert generator.scored_reply(prompt)[0] == replies["transformers"][0][:1]


def test_abstention_threshold_is_refused_with_beams_or_sampling() -> None:
    for generation in ({"num_beams": 2}, {"do_sample": True}):
        with pytest.raises(ValueError, match="abstain_threshold judges a greedy answer"):
            RagSettings(abstain_threshold=0.5, generation=generation)
    assert RagSettings(abstain_threshold=None, generation={"num_beams": 2}).generation.num_beams == 2


def test_cli_fits_the_abstention_threshold_again_and_refuses_bad_prompt_rows(
    index: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    from nlptasks.cli import main

    passages = [ARTICLES["tower"], ARTICLES["river"]]
    rows = [
        {"question": "How tall is the Eiffel Tower?", "passages": passages, "answer": "330 metres [1]"},
        {"question": "How high is Mount Everest?", "passages": passages[1:], "answer": NOT_FOUND},
    ]
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps(row) + "\n" for row in rows))
    fit_command = ["rag", "fit-abstention", "--index", str(index), "--prompts", str(prompts)]
    assert main([*fit_command, "--set", "generation.num_beams=2"]) == 2  # the fit decodes greedily
    assert "abstain_threshold judges a greedy answer" in capsys.readouterr().err
    assert main([*fit_command, "--set", "top_k=2"]) == 0
    fit = json.loads(capsys.readouterr().out)
    saved = yaml.safe_load((index / "rag.yaml").read_text())["rag"]
    assert fit["prompts"] == 2 and (saved["abstain_threshold"], saved["top_k"]) == (fit["abstain_threshold"], 2)
    assert saved["abstention_calibration"] == fit["abstention_calibration"]

    prompts.write_text(json.dumps(rows[0]) + "\n" + json.dumps({**rows[1], "passages": []}) + "\n")
    assert main(["rag", "fit-abstention", "--index", str(index), "--prompts", str(prompts)]) == 2
    assert f"{prompts}:2: field 'passages' must be a non-empty list" in capsys.readouterr().err
    assert yaml.safe_load((index / "rag.yaml").read_text())["rag"] == saved  # nothing written
    assert main(["rag", "fit-abstention", "--index", str(index)]) == 2
    assert "generator-validation.jsonl" in capsys.readouterr().err


def test_cli_tune_names_a_missing_questions_file(index: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from nlptasks.cli import main

    missing = tmp_path / "none.jsonl"
    assert main(["rag", "tune", "--index", str(index), "--questions", str(missing), "--out", str(tmp_path / "o")]) == 2
    assert f"--questions: file not found: {missing}" in capsys.readouterr().err

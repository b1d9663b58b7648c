"""`rag tune`: fit an index's retriever and generator to its own corpus, from questions with known answers.

Each question's gold passage is found in the index by the `doc_id` it was asked about, or by the
`context` text it was asked about (the indexed chunks sharing the most word 5-grams with it, those
holding an answer first). Then, in `--out`:

    data/                  what both runs train on, written here so a run can be repeated alone
    retriever/             supervised SimCSE (recipe rag/_retriever) from the index's encoder on
                           (question, gold chunk, hard negative): the BM25 hit ranked highest that is
                           neither the gold passage nor holds an answer, so the encoder learns what
                           word overlap alone gets wrong
    index/                 the index's chunks embedded again by the tuned encoder (chunks are kept as
                           they are: the tuned encoder has the same tokenizer)
    generator/             a rag-answer run (recipe rag/_generator) of the index's decoder on prompts
                           of the tuned retriever's passages, taught to answer `text [n]`; for a share
                           of the questions (`unanswerable`) every passage holding the answer is left
                           out and the target is NOT_FOUND, so it learns to abstain. Its held-out
                           prompts then fit when it abstains (`fit_abstention`)
    tune.json              the held-out questions' retrieval before and after, the generator's scores

`index/rag.yaml` names both runs, so `rag ask|eval|serve --index OUT/index` uses them. Held-out
questions (`holdout`) train neither model.
"""

from __future__ import annotations

import itertools
import json
import random
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from nlptasks.errors import DataError, RecipeError, UserInputError
from nlptasks.grounded import NOT_FOUND, answer_text, holds_answer, passage_prompt
from nlptasks.metrics.squad import answer_scores
from nlptasks.rag.documents import embedding_text
from nlptasks.rag.pipeline import RagPipeline, reembedded_index
from nlptasks.rag.retrieve import Hit
from nlptasks.rag.settings import RagSettings, settings_of_index
from nlptasks.rag.store import save_settings, saved_settings
from nlptasks.recipe import Recipe, load_recipe, parse_overrides

SHINGLE_WORDS = 5
FIT_PROMPTS = 200
"""Held-out prompts `fit_abstention` reads at most: each is scored once, and decoded once if it holds the answer."""
RECALL_AT = (1, 5, 10)
NEGATIVE_CANDIDATES = 10


@dataclass(frozen=True)
class Question:
    text: str
    answers: list[str]
    doc_id: str | None
    context: str | None
    where: str
    """`file:line`, for messages."""


@dataclass(frozen=True)
class Grounded:
    """A question with the index chunks of its gold passage, those holding an answer first."""

    question: Question
    gold: list[int]


def read_questions(path: Path) -> list[Question]:
    """JSON Lines: `question`, `answers` (a list, or SQuAD's `{"text": [...]}`), and `doc_id` or `context`."""
    if not path.is_file():
        raise DataError(f"--questions: file not found: {path}")
    questions = []
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            if line.strip():
                questions.append(_question(line, f"{path}:{number}"))
    if not questions:
        raise DataError(f"--questions {path}: no questions in the file")
    return questions


def _question(line: str, where: str) -> Question:
    try:
        row = json.loads(line)
    except json.JSONDecodeError as err:
        raise DataError(f"{where}: not a JSON object ({err.msg})") from None
    if not isinstance(row, dict):
        raise DataError(f"{where}: not a JSON object")
    text = row.get("question")
    if not isinstance(text, str) or not text.strip():
        raise DataError(f"{where}: field 'question' must be non-empty text, got {text!r}")
    answers = row.get("answers")
    answers = answers.get("text") if isinstance(answers, dict) else answers
    if not isinstance(answers, list) or not answers or not all(isinstance(a, str) and a.strip() for a in answers):
        raise DataError(f"{where}: field 'answers' must be a non-empty list of texts (or {{'text': [...]}})")
    doc_id, context = row.get("doc_id"), row.get("context")
    if not isinstance(doc_id, str) and not (isinstance(context, str) and context.strip()):
        raise DataError(f"{where}: give 'doc_id' (a document of the index) or 'context' (the passage's text)")
    return Question(text, answers, doc_id if isinstance(doc_id, str) else None, context, where)


class GoldFinder:
    """Finds a question's gold chunks by document id or by the word 5-grams its context shares with them."""

    def __init__(self, pipeline: RagPipeline) -> None:
        self.index = pipeline.index
        self._shingles: dict[int, list[int]] | None = None

    def __call__(self, question: Question) -> list[int]:
        if question.doc_id is not None:
            chunks = self.index.documents.get(question.doc_id, {}).get("chunks", [])
        else:
            chunks = self._overlapping(question.context or "")
        texts = {i: self.index.chunks[i].text for i in chunks}
        return sorted(chunks, key=lambda i: not holds_answer(texts[i], question.answers))

    def _overlapping(self, context: str) -> list[int]:
        shared = Counter(chunk for key in _shingles(context) for chunk in self._shingle_index().get(key, ()))
        return [chunk for chunk, _ in shared.most_common()]

    def _shingle_index(self) -> dict[int, list[int]]:
        if self._shingles is None:
            self._shingles = {}
            for chunk_id, chunk in self.index.chunks.items():
                for key in set(_shingles(chunk.text)):
                    self._shingles.setdefault(key, []).append(chunk_id)
        return self._shingles


def _shingles(text: str) -> list[int]:
    words = text.lower().split()
    return [hash(tuple(words[i : i + SHINGLE_WORDS])) for i in range(max(len(words) - SHINGLE_WORDS + 1, 1))]


def tune(
    index_dir: str | Path,
    questions_file: str | Path,
    out_dir: str | Path,
    overrides: list[str] | dict[str, Any] | None = None,
    holdout: float = 0.1,
    unanswerable: float = 0.2,
    seed: int = 0,
) -> dict[str, Any]:
    """Tune the retriever, then the generator on the tuned retriever's passages (see the module docstring).

    `overrides`: `retriever.KEY=V` and `generator.KEY=V` change the two training recipes; any other key
    is a query-time setting of the tuned index (`top_k`, `max_context_tokens`), whose budget the generator
    is trained to.
    """
    from nlptasks.training import run

    for name, share in (("holdout", holdout), ("unanswerable", unanswerable)):
        if not 0 <= share < 1:
            raise UserInputError(f"--{name}: a share from 0 to below 1, got {share}")
    out = Path(out_dir)
    recipes, index_overrides = _split_overrides(overrides)
    source = RagPipeline(index_dir, index_overrides)
    grounded, missing = _grounded(source, read_questions(Path(questions_file)))
    train, held_out = _split(grounded, holdout, seed)
    report: dict[str, Any] = {"questions": len(grounded) + len(missing), "gold_not_found": missing[:20]}
    report["questions_without_gold"] = len(missing)
    report["train_questions"], report["held_out_questions"] = len(train), len(held_out)
    report["retrieval_before"] = _recall(source, held_out)

    retriever = _retriever_recipe(source, train, held_out, out, recipes["retriever"])
    report["retriever_run"] = str(run(retriever).run_dir)
    settings = source.settings.model_copy(update={"encoder": str(retriever.run_dir.resolve())})
    reembedded_index(source, out / "index", settings, progress=True)
    tuned = RagPipeline(out / "index", index_overrides)
    report["retrieval_after"] = _recall(tuned, held_out)

    generator = _generator_recipe(tuned, train, held_out, out, recipes["generator"], unanswerable, seed)
    result = run(generator)
    report["generator_run"] = str(result.run_dir)
    report["generator_held_out"] = result.metrics.get("validation", {})
    final = tuned.settings.model_copy(update={"generator": str(generator.run_dir.resolve())})
    if generator.data.validation_file:
        report["abstention"] = fit_abstention(final, Path(generator.data.validation_file))
        final = _with_abstention(final, report["abstention"])
    save_settings(out / "index", final)
    (out / "tune.json").write_text(json.dumps(report, indent=2) + "\n")
    return report


def fit_abstention(settings: RagSettings, prompts_file: Path, limit: int = FIT_PROMPTS) -> dict[str, Any]:
    """`abstention_calibration` and `abstain_threshold` fitted on held-out rag-answer prompts (`question`,
    `passages`, `answer`, `answers`), each decoded once, greedily, never beginning as NOT_FOUND does.

    The calibration is a logistic regression from the two features of `DecoderGenerator.abstention_features`
    to whether abstaining does at least as well as the answer (the passages lack the answer, or the answer's
    F1 is below 0.5). The threshold on its probability is the one that scores best as SQuAD 2.0 scores: 1 for
    abstaining where the passages lack the answer (target NOT_FOUND), the answer's F1 where they hold it. The
    share of prompts lacking the answer (`rag tune --unanswerable`) thus sets how cautious the threshold is.
    """
    from nlptasks.rag.generate import DecoderGenerator, abstention_probability, load_generator

    generator = load_generator(settings_of_index(settings, {"abstain_threshold": 1.0}))  # validated: greedy
    if not isinstance(generator, DecoderGenerator):
        raise RecipeError(f"rag.generator: {settings.generator} is an extractive reader; it has no NOT_FOUND reply")
    features, lacking, f1 = [], [], []
    for row in _prompt_rows(prompts_file, limit):
        ids, _ = generator.text_prompt(row["question"], row["passages"])
        reply, log_probs = generator.scored_reply(ids)
        features.append(generator.abstention_features(reply, log_probs))
        lacking.append(row["answer"] == NOT_FOUND)
        f1.append(0.0 if lacking[-1] else answer_scores(answer_text(generator.text(reply)), row["answers"])[1])
    if not features:
        raise DataError(f"--prompts {prompts_file}: no rows to fit the abstention threshold on")
    calibration = _calibration(features, [lack or score < 0.5 for lack, score in zip(lacking, f1)])
    probabilities = [abstention_probability(x, calibration) for x in features]
    fit = best_threshold(probabilities, lacking, f1)
    return {**fit, "abstention_calibration": calibration, "prompts": len(features)}


def _calibration(features: list[tuple[float, float]], abstain: list[bool]) -> tuple[float, float, float] | None:
    """(a, b, c) of a logistic regression from the features to `abstain`; None when every row says the same."""
    from sklearn.linear_model import LogisticRegression

    if len(set(abstain)) < 2:
        return None
    regression = LogisticRegression().fit(np.asarray(features), np.asarray(abstain))
    a, b = regression.coef_[0]
    return float(a), float(b), float(regression.intercept_[0])


def _prompt_rows(path: Path, limit: int) -> Iterator[dict[str, Any]]:
    """The first `limit` rag-answer rows of `path`, checked as the task checks them; each needs its `answer`."""
    from nlptasks.data import read_rows
    from nlptasks.tasks.rag_answer import RagAnswer

    for where, raw in itertools.islice(read_rows(path), limit):
        try:
            row = RagAnswer.check_row(raw, None)
        except ValueError as err:
            raise DataError(f"{where}: {err}") from None
        if row["answer"] is None:
            raise DataError(f"{where}: field 'answer' is missing: the reply the prompt should get (or {NOT_FOUND!r})")
        yield row | {"answers": row["answers"] or [answer_text(row["answer"])]}


def refit_abstention(
    index_dir: str | Path, prompts_file: str | Path | None = None, overrides: list[str] | dict[str, Any] | None = None
) -> dict[str, Any]:
    """`fit_abstention` again for a tuned index, under its settings with `overrides` (a new prompt budget or
    engine changes the probabilities), which are saved with the new threshold. `prompts_file` defaults to
    the held-out prompts `rag tune` wrote beside the index (`OUT/data/generator-validation.jsonl`)."""
    folder = Path(index_dir)
    prompts = Path(prompts_file) if prompts_file else folder.parent / "data" / "generator-validation.jsonl"
    if not prompts.is_file():
        raise UserInputError(f"--prompts: file not found: {prompts} (rag-answer rows: question, passages, answer)")
    settings = settings_of_index(saved_settings(folder), overrides)
    fit = fit_abstention(settings, prompts)
    save_settings(folder, _with_abstention(settings, fit))
    return fit


def _with_abstention(settings: RagSettings, fit: dict[str, Any]) -> RagSettings:
    """`settings` with the abstention `fit_abstention` fitted."""
    fitted = {key: fit[key] for key in ("abstain_threshold", "abstention_calibration")}
    return RagSettings.model_validate(settings.model_dump() | fitted)


def best_threshold(probabilities: list[float], lacking: list[bool], f1: list[float]) -> dict[str, Any]:
    """The threshold on the abstention probability with the best mean score (see `fit_abstention`); each
    candidate lies halfway between two probabilities seen, so the data does not sit on the boundary."""
    p, lack, f1_ = np.asarray(probabilities), np.asarray(lacking, dtype=bool), np.asarray(f1)
    seen = np.unique(p)
    candidates = np.concatenate([[seen[0] / 2], (seen[:-1] + seen[1:]) / 2, [1.0]])
    abstains = p[None, :] >= candidates[:, None]
    scores = np.where(lack, abstains, np.where(abstains, 0.0, f1_)).mean(axis=1)
    best = int(np.argmax(scores))
    return {
        "abstain_threshold": float(candidates[best]),
        "held_out_score": float(scores[best]),
        "answered_where_held": float((~abstains[best][~lack]).mean()) if (~lack).any() else None,
        "abstained_where_lacking": float(abstains[best][lack].mean()) if lack.any() else None,
    }


def _split_overrides(overrides: list[str] | dict[str, Any] | None) -> tuple[dict[str, dict[str, Any]], dict]:
    recipes: dict[str, dict[str, Any]] = {"retriever": {}, "generator": {}}
    rest = {}
    for key, value in parse_overrides(overrides).items():
        part, _, inner = key.partition(".")
        if part in recipes and inner:
            recipes[part][inner] = value
        else:
            rest[key] = value
    return recipes, rest


def _grounded(pipeline: RagPipeline, questions: list[Question]) -> tuple[list[Grounded], list[str]]:
    find = GoldFinder(pipeline)
    found, missing = [], []
    for question in questions:
        gold = find(question)
        if gold:
            found.append(Grounded(question, gold))
        else:
            missing.append(f"{question.where}: its {'doc_id' if question.doc_id else 'context'} is not in the index")
    if not found:
        raise DataError(f"--questions: no question's gold passage is in the index ({missing[0]})")
    return found, missing


def _split(grounded: list[Grounded], holdout: float, seed: int) -> tuple[list[Grounded], list[Grounded]]:
    """Held-out questions, drawn at random; at least one is kept for training."""
    order = grounded[:]
    random.Random(seed).shuffle(order)
    count = min(round(len(order) * holdout), len(order) - 1)
    return order[count:], order[:count]


def _recall(pipeline: RagPipeline, questions: list[Grounded]) -> dict[str, float]:
    """The share of questions with a gold chunk among the first k hits, in the index's retrieval mode."""
    if not questions:
        return {}
    found = pipeline.search_many([g.question.text for g in questions], top_k=max(RECALL_AT))
    return {
        f"recall@{k}": sum(bool(set(g.gold) & {hit.chunk_id for hit in hits[:k]}) for g, hits in zip(questions, found))
        / len(questions)
        for k in RECALL_AT
    }


def _retriever_recipe(
    pipeline: RagPipeline, train: list[Grounded], held_out: list[Grounded], out: Path, overrides: dict[str, Any]
) -> Recipe:
    """Training rows (question, gold chunk, hard negative); validation pairs scored 1 (gold) and 0 (negative)."""
    negatives = _hard_negatives(pipeline, train + held_out)
    chunks = pipeline.index.chunks

    def rows(questions: list[Grounded], scored: bool) -> list[dict[str, Any]]:
        lines = []
        for g in questions:
            gold, negative = embedding_text(chunks[g.gold[0]]), embedding_text(chunks[negatives[g.question.where]])
            if scored:
                lines += [{"text": g.question.text, "text_pair": gold, "score": 1.0}]
                lines += [{"text": g.question.text, "text_pair": negative, "score": 0.0}]
            else:
                lines.append({"text": g.question.text, "text_pair": gold, "text_negative": negative})
        return lines

    files = _write_splits(out / "data", "retriever", rows(train, False), rows(held_out, True))
    return _recipe("rag/_retriever", pipeline.settings.encoder, out / "retriever", files, overrides)


def _hard_negatives(pipeline: RagPipeline, questions: list[Grounded]) -> dict[str, int]:
    """For each question, its best BM25 hit that is not gold and holds no answer (else any such chunk)."""
    found = pipeline.search_many([g.question.text for g in questions], NEGATIVE_CANDIDATES, mode="sparse")
    picks = random.Random(0)
    negatives = {}
    for g, hits in zip(questions, found):
        wrong = [hit.chunk_id for hit in hits if _is_negative(hit, g)]
        others = wrong or [chunk for chunk in pipeline.index.chunks if chunk not in g.gold]
        if not others:
            raise DataError(f"{g.question.where}: every chunk of the index is its gold passage; there is no negative")
        negatives[g.question.where] = wrong[0] if wrong else picks.choice(others)
    return negatives


def _is_negative(hit: Hit, grounded: Grounded) -> bool:
    return hit.chunk_id not in grounded.gold and not holds_answer(hit.chunk.text, grounded.question.answers)


def _generator_recipe(
    pipeline: RagPipeline,
    train: list[Grounded],
    held_out: list[Grounded],
    out: Path,
    overrides: dict[str, Any],
    unanswerable: float,
    seed: int,
) -> Recipe:
    from transformers import AutoConfig, AutoTokenizer

    from nlptasks.catalog import resolve_model
    from nlptasks.chat import prompt_frame
    from nlptasks.grounded import RULES
    from nlptasks.rag.generate import prompt_budget

    settings = pipeline.settings
    if (Path(settings.generator).expanduser() / "recipe.yaml").is_file():
        raise RecipeError(
            f"rag.generator: {settings.generator} is a run directory; `rag tune` fine-tunes a chat decoder "
            "(an alias or Hub id such as smollm2-135m-instruct)"
        )
    location = resolve_model(settings.generator).location
    tokenizer = AutoTokenizer.from_pretrained(location)
    frame = prompt_frame(tokenizer, RULES)
    budget = prompt_budget(settings, AutoConfig.from_pretrained(location))
    draw = random.Random(seed)

    def rows(questions: list[Grounded]) -> list[dict[str, Any]]:
        if not questions:
            return []
        withheld = [draw.random() < unanswerable for _ in questions]
        found = pipeline.search_many([g.question.text for g in questions], settings.top_k + settings.candidates)
        lines = []
        for g, hits, withhold in zip(questions, found, withheld):
            kept = [hit for hit in hits if not withhold or _is_negative(hit, g)][: settings.top_k]
            texts = [hit.chunk.text for hit in kept]
            _, used = passage_prompt(tokenizer, frame, g.question.text, texts, budget)
            lines.append(_answer_row(g.question, texts[:used]))
        return lines

    files = _write_splits(out / "data", "generator", rows(train), rows(held_out))
    overrides = {"data.max_length": budget, **overrides}
    return _recipe("rag/_generator", settings.generator, out / "generator", files, overrides)


def _answer_row(question: Question, passages: list[str]) -> dict[str, Any]:
    """The target: the first gold answer found in a passage, citing the first passage holding one."""
    for number, passage in enumerate(passages, 1):
        for answer in question.answers:
            if holds_answer(passage, [answer]):
                target = f"{answer} [{number}]"
                return {"question": question.text, "passages": passages, "answer": target, "answers": question.answers}
    return {"question": question.text, "passages": passages, "answer": NOT_FOUND, "answers": question.answers}


def _write_splits(folder: Path, name: str, train: list[dict], validation: list[dict]) -> dict[str, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    files = {"train": folder / f"{name}-train.jsonl", "validation": folder / f"{name}-validation.jsonl"}
    for split, lines in (("train", train), ("validation", validation)):
        files[split].write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in lines), encoding="utf-8")
    if not validation:
        del files["validation"]
    return files


def _recipe(template: str, model: str, run_dir: Path, files: dict[str, Path], overrides: dict[str, Any]) -> Recipe:
    paths = {f"data.{split}_file": str(path) for split, path in files.items()}
    if "validation" not in files:
        paths["eval.splits"] = []
    fixed = {"model": model, "output_dir": str(run_dir), **paths}
    return load_recipe(template, {**fixed, **overrides})

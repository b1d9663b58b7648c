"""RAG benchmarks: retrieval on Cranfield, open-domain QA on SQuAD v1.1 dev.

The ranking metrics are trec_eval's definitions written out here (a dozen lines; pytrec_eval
has no wheel for every platform and ranx brings numba): gain = graded relevance, log2
discount, judgments of 0 or below not relevant, queries without a relevant judgment skipped.
Chunks are ranked, documents are judged: a document ranks where its first chunk does.
"""

from __future__ import annotations

import csv
import json
import math
import random
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from nlptasks.catalog import local_dataset_folder
from nlptasks.errors import DataError, UserInputError
from nlptasks.grounded import answer_text, holds_answer
from nlptasks.metrics.squad import answer_scores
from nlptasks.rag.documents import Document
from nlptasks.rag.pipeline import RagPipeline, build_index
from nlptasks.rag.retrieve import Hit
from nlptasks.rag.settings import RagSettings, load_settings
from nlptasks.rag.store import SETTINGS_FILE

BENCHMARKS = ("cranfield", "squad")
LATENCY_QUERIES = 200


def ndcg_at(ranked: list[str], judged: dict[str, int], k: int) -> float:
    gains = [max(judged.get(doc, 0), 0) for doc in ranked[:k]]
    ideal = sorted((g for g in judged.values() if g > 0), reverse=True)[:k]
    dcg = sum(g / math.log2(rank + 2) for rank, g in enumerate(gains))
    idcg = sum(g / math.log2(rank + 2) for rank, g in enumerate(ideal))
    return dcg / idcg if idcg else 0.0


def recall_at(ranked: list[str], relevant: set[str], k: int) -> float:
    return len(relevant.intersection(ranked[:k])) / len(relevant) if relevant else 0.0


def reciprocal_rank(ranked: list[str], relevant: set[str]) -> float:
    return next((1.0 / rank for rank, doc in enumerate(ranked, 1) if doc in relevant), 0.0)


def ranked_documents(hits: list[Hit]) -> list[str]:
    """Document ids in the order of their best chunk."""
    return list(dict.fromkeys(hit.chunk.doc_id for hit in hits))


def evaluate(
    index_dir: str | Path,
    benchmark: str,
    settings: RagSettings | None = None,
    overrides: list[str] | dict[str, Any] | None = None,
    answer_questions: int = 200,
    progress: bool = False,
) -> dict[str, Any]:
    """Build the benchmark's index at `index_dir` unless it is there, then score it (JSON-ready metrics).

    `overrides` change the index's own settings; where it is built, they change `settings` (unset: the defaults).
    """
    if benchmark not in BENCHMARKS:
        raise UserInputError(f"--benchmark: unknown '{benchmark}'; known: {', '.join(BENCHMARKS)}")
    data = _benchmark_folder("cranfield" if benchmark == "cranfield" else "squad_v1")
    corpus, queries = (_cranfield if benchmark == "cranfield" else _squad)(data)
    folder = Path(index_dir)
    if not (folder / SETTINGS_FILE).is_file():
        build_index(corpus(), folder, settings or load_settings(None, overrides), progress=progress)
    pipeline = RagPipeline(folder, overrides)
    _check_holds_benchmark(pipeline, queries, benchmark)
    if benchmark == "cranfield":
        metrics = _score_cranfield(pipeline, queries)
    else:
        metrics = _score_squad(pipeline, queries, answer_questions)
    return {"benchmark": benchmark, "retrieval": pipeline.settings.retrieval, **metrics, **_latency(pipeline, queries)}


def _benchmark_folder(name: str) -> Path:
    folder = local_dataset_folder(name)
    if folder is None:
        raise DataError(f"benchmark data not found: set NLPTASKS_DATA_DIR to the offline data folder (it needs {name})")
    return folder


def _jsonl(path: Path) -> list[dict[str, Any]]:
    with path.open(encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


def _cranfield(folder: Path) -> tuple[Callable[[], list[Document]], list[dict[str, Any]]]:
    judged: dict[str, dict[str, int]] = {}
    with (folder / "qrels" / "test.tsv").open(encoding="utf-8") as handle:
        for row in csv.DictReader(handle, delimiter="\t"):
            judged.setdefault(row["query-id"], {})[row["corpus-id"]] = int(row["score"])
    queries = [
        {"id": q["_id"], "text": q["text"], "judged": judged[q["_id"]]}
        for q in _jsonl(folder / "queries.jsonl")
        if any(score > 0 for score in judged.get(q["_id"], {}).values())
    ]

    def corpus() -> list[Document]:
        return [
            Document(d["_id"], d["text"], d.get("title", ""))
            for d in _jsonl(folder / "corpus.jsonl")
            if d["text"].strip()
        ]

    return corpus, queries


def _squad(folder: Path) -> tuple[Callable[[], list[Document]], list[dict[str, Any]]]:
    """Every distinct context of the dev set is a document, `<title>#<n>` by order within its article."""
    rows = _jsonl(folder / "validation.jsonl")
    ids: dict[str, str] = {}
    per_title: dict[str, int] = {}
    for row in rows:
        if row["context"] not in ids:
            ids[row["context"]] = f"{row['title']}#{per_title.get(row['title'], 0)}"
            per_title[row["title"]] = per_title.get(row["title"], 0) + 1
    queries = [
        {"id": r["id"], "text": r["question"], "gold": ids[r["context"]], "answers": r["answers"]["text"]} for r in rows
    ]

    def corpus() -> list[Document]:
        return [Document(doc_id, context, doc_id.split("#")[0].replace("_", " ")) for context, doc_id in ids.items()]

    return corpus, queries


def _check_holds_benchmark(pipeline: RagPipeline, queries: list[dict[str, Any]], benchmark: str) -> None:
    wanted = {doc for q in queries for doc in (q["judged"] if benchmark == "cranfield" else [q["gold"]])}
    if pipeline.size and not wanted & set(pipeline.index.documents):
        raise UserInputError(
            f"--index {pipeline.folder}: holds none of the {benchmark} documents; name an empty folder to build it"
        )


def _score_cranfield(pipeline: RagPipeline, queries: list[dict[str, Any]]) -> dict[str, Any]:
    texts = [q["text"] for q in queries]
    by_mode = {}
    for mode, found in pipeline.search_modes(texts, top_k=200).items():
        rankings = [ranked_documents(hits) for hits in found]
        relevant = [{doc for doc, score in q["judged"].items() if score > 0} for q in queries]
        by_mode[mode] = {
            "ndcg@10": float(np.mean([ndcg_at(r, q["judged"], 10) for r, q in zip(rankings, queries)])),
            "recall@100": float(np.mean([recall_at(r, rel, 100) for r, rel in zip(rankings, relevant)])),
            "mrr": float(np.mean([reciprocal_rank(r[:100], rel) for r, rel in zip(rankings, relevant)])),
        }
    return {**by_mode[pipeline.settings.retrieval], "queries": len(queries), "modes": by_mode}


def _score_squad(pipeline: RagPipeline, queries: list[dict[str, Any]], answer_questions: int) -> dict[str, Any]:
    texts = [q["text"] for q in queries]
    by_mode = {}
    modes = pipeline.search_modes(texts, top_k=40)
    for mode, found in modes.items():
        by_mode[mode] = _gold_recall(found, queries)
    metrics: dict[str, Any] = {**by_mode[pipeline.settings.retrieval], "questions": len(queries), "modes": by_mode}
    pool = _held_out(queries)
    if len(pool) < len(queries):
        pooled = {q["id"] for q in pool}
        held_out = [q["id"] in pooled for q in queries]  # `pool` keeps the order of `queries`
        metrics["held_out"] = {
            mode: _gold_recall([h for h, keep in zip(found, held_out) if keep], pool) for mode, found in modes.items()
        } | {"questions": len(pool)}
    if answer_questions:
        sample = random.Random(0).sample(pool, min(answer_questions, len(pool)))
        metrics.update(_score_answers(pipeline, sample), answers_from_held_out_articles=len(pool) < len(queries))
    return metrics


def _gold_recall(found: list[list[Hit]], queries: list[dict[str, Any]]) -> dict[str, float]:
    """Recall@k of each query's gold paragraph among its hits' documents."""
    rankings = [ranked_documents(hits) for hits in found]
    return {
        f"recall@{k}": float(np.mean([recall_at(r, {q["gold"]}, k) for r, q in zip(rankings, queries)]))
        for k in (1, 5, 10, 20)
    }


def _held_out(queries: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Questions of the articles `squad_v1_dev_split` holds out where that split exists: a QA run
    trained on its train split (the offline way) must not be scored on questions it learnt from."""
    split = local_dataset_folder("squad_v1_dev_split")
    if split is None:
        return queries
    titles = {row["title"] for row in _jsonl(split / "validation.jsonl")}
    return [q for q in queries if q["gold"].rsplit("#", 1)[0] in titles]


def _score_answers(pipeline: RagPipeline, sample: list[dict[str, Any]]) -> dict[str, Any]:
    """EM and F1 of the whole pipeline's answers, citation markers removed, against every gold answer;
    how often a cited passage holds a gold answer, and how often the pipeline rather than the generator
    chose that passage (`citations_attributed`); how often it abstains once the gold passage (and
    every passage holding an answer) is taken from the candidates."""
    exact, overlap, found, right, attributed, abstained = [], [], 0, [], [], []
    seconds = []
    for query in sample:
        start = time.perf_counter()
        answer = pipeline.ask(query["text"])
        seconds.append(time.perf_counter() - start)
        found += answer["found"]
        text = answer_text(answer["answer"]) if answer["found"] else ""
        match, f1 = answer_scores(text, query["answers"])
        exact.append(match)
        overlap.append(f1)
        if answer["found"]:
            right.append(any(holds_answer(c["text"], query["answers"]) for c in answer["citations"]))
            attributed.append(any(c.get("attributed", False) for c in answer["citations"]))
    for query in sample:
        hits = pipeline.search(query["text"], pipeline.settings.top_k + pipeline.settings.candidates)
        kept = [hit for hit in hits if hit.chunk.doc_id != query["gold"]]
        kept = [hit for hit in kept if not holds_answer(hit.chunk.text, query["answers"])]
        abstained.append(not pipeline.answer(query["text"], kept[: pipeline.settings.top_k])["found"])
    return {
        "answered_questions": len(sample),
        "exact_match": float(np.mean(exact)),
        "f1": float(np.mean(overlap)),
        "answer_found_rate": found / len(sample),
        "citation_accuracy": float(np.mean(right)) if right else 0.0,
        "citations_attributed": float(np.mean(attributed)) if attributed else 0.0,
        "abstention_without_gold": float(np.mean(abstained)),
        "seconds_per_answer": float(np.mean(seconds)),
        "seconds_per_answer_p50": float(np.percentile(seconds, 50)),
        "seconds_per_answer_p95": float(np.percentile(seconds, 95)),
    }


def _latency(pipeline: RagPipeline, queries: list[dict[str, Any]]) -> dict[str, float]:
    """Milliseconds per query, one at a time as a service sees them, retrieval only (after one warm-up)."""
    texts = [q["text"] for q in queries[:LATENCY_QUERIES]]
    pipeline.search(texts[0])
    times = []
    for text in texts:
        start = time.perf_counter()
        pipeline.search(text)
        times.append((time.perf_counter() - start) * 1000)
    return {"latency_ms_p50": float(np.percentile(times, 50)), "latency_ms_p95": float(np.percentile(times, 95))}

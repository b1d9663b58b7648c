"""Retrieval-augmented generation: ingest documents, index them (dense + BM25), search, answer with citations.

    from nlptasks import rag
    rag.build_index(["docs/"], "index/")                 # or update: changed documents are replaced
    pipeline = rag.RagPipeline("index/")
    pipeline.search("what is ...?")                      # hits: doc_id, chunk, score
    pipeline.ask("what is ...?")                         # answer, citations, passages
    rag.evaluate("index-cranfield/", "cranfield")        # nDCG@10, Recall@100, MRR per mode
    rag.tune("index/", "qa.jsonl", "tuned/")             # retriever and generator fitted to the corpus: tuned/index

Needs the `rag` extra (`pip install nlptasks[rag]`).
"""

from nlptasks.rag.documents import Chunk, Document, read_documents
from nlptasks.rag.evaluate import evaluate
from nlptasks.rag.pipeline import IndexReport, RagPipeline, build_index
from nlptasks.rag.retrieve import Hit
from nlptasks.rag.settings import RagSettings, load_settings
from nlptasks.rag.tune import tune

__all__ = [
    "Chunk",
    "Document",
    "Hit",
    "IndexReport",
    "RagPipeline",
    "RagSettings",
    "build_index",
    "evaluate",
    "load_settings",
    "read_documents",
    "tune",
]

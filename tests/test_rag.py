"""RAG: reading and chunking documents, index updates, dense/BM25/hybrid search, answers, metrics, HTTP.

Tiny random encoders cannot rank by meaning, so dense search is tested on exact repeats (a text
is nearest to itself) and meaning is left to the integration tests on real data.
"""

from __future__ import annotations

import json
import math
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from nlptasks.cli import main
from nlptasks.errors import DataError, RecipeError, UserInputError
from nlptasks.rag import Document, RagPipeline, RagSettings, build_index, read_documents
from nlptasks.rag.documents import ReadReport, chunk_document, sentence_spans
from nlptasks.rag.evaluate import ndcg_at, ranked_documents, recall_at, reciprocal_rank
from nlptasks.rag.generate import NOT_FOUND, DecoderGenerator, ExtractiveReader
from nlptasks.rag.retrieve import Hit, reciprocal_rank_fusion

pytest.importorskip("faiss", reason="the rag extra is not installed (bash scripts/setup.sh installs it)")
pytestmark = pytest.mark.usefixtures("one_thread")

FACTS = {
    "eiffel": "The Eiffel Tower was built for the 1889 World's Fair. It is 330 metres tall.",
    "nile": "The Nile is the longest river in Africa. It flows north into the Mediterranean Sea.",
    "everest": "Mount Everest is 8849 metres high. Climbers reach it from Nepal or Tibet.",
    "photosynthesis": "Photosynthesis converts light energy into chemical energy. Plants store it as sugar.",
}


@pytest.fixture
def docs(tmp_path: Path) -> Path:
    folder = tmp_path / "docs"
    (folder / "notes").mkdir(parents=True)
    (folder / "notes" / "eiffel.md").write_text(f"# Eiffel Tower\n\n{FACTS['eiffel']}\n")
    (folder / "nile.txt").write_text(FACTS["nile"])
    rows = [{"id": "everest", "title": "Everest", "text": FACTS["everest"], "year": 1953}]
    (folder / "more.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (folder / "bio.csv").write_text(f'id,text,source\nphoto,"{FACTS["photosynthesis"]}",textbook\n')
    (folder / "image.png").write_bytes(b"\x89PNG")
    return folder


@pytest.fixture
def settings(tiny_bert: Path) -> RagSettings:
    return RagSettings(encoder=str(tiny_bert), chunk_tokens=24, chunk_overlap=8, candidates=10)


def test_documents_from_text_markdown_jsonl_and_csv_keep_ids_titles_and_metadata(docs: Path) -> None:
    report = ReadReport()
    found = {d.id: d for d in read_documents([docs], report=report)}
    assert set(found) == {"notes/eiffel.md", "nile.txt", "everest", "photo"}
    assert found["notes/eiffel.md"].title == "Eiffel Tower" and found["nile.txt"].title == "nile"
    assert found["everest"].metadata == {"year": 1953} and found["photo"].metadata == {"source": "textbook"}
    assert report.documents == 4 and len(report.skipped_files) == 1
    assert report.skipped_files[0].startswith(f"{docs / 'image.png'}: .png files are not read (read: ")


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("a.jsonl", '{"id": "1", "text": "fine"}\n{"id": "2", "text": \n', r"a\.jsonl:2: invalid JSON"),
        ("a.jsonl", '{"id": "1", "body": "no text"}\n', r"a\.jsonl:1: no field 'text'"),
        ("a.jsonl", '{"id": "1", "text": 7}\n', r"a\.jsonl:1: field 'text' must be text"),
        ("a.jsonl", '["a list"]\n', r"a\.jsonl:1: expected a JSON object"),
        (
            "a.jsonl",
            '{"id": "1", "text": "x"}\n{"id": "1", "text": "y"}\n',
            r"a\.jsonl:2: document id '1' already used",
        ),
        ("a.csv", "id,text\n1,fine\n2,too,many\n", r"a\.csv:3: more values than the header"),
    ],
)
def test_bad_documents_fail_naming_file_line_and_field(tmp_path: Path, name: str, content: str, message: str) -> None:
    (tmp_path / name).write_text(content)
    with pytest.raises(DataError, match=message):
        list(read_documents([tmp_path / name]))


def test_non_utf8_and_empty_documents(tmp_path: Path) -> None:
    (tmp_path / "bad.txt").write_bytes(b"line one\nline \xff two\n")
    with pytest.raises(DataError, match=r"bad\.txt:2: not UTF-8"):
        list(read_documents([tmp_path / "bad.txt"]))
    (tmp_path / "rows.jsonl").write_text('{"text": "kept"}\n{"text": "  "}\n')
    report = ReadReport()
    kept = list(read_documents([tmp_path / "rows.jsonl"], report=report))
    assert [d.id for d in kept] == ["rows.jsonl:1"] and report.skipped_empty == [f"{tmp_path / 'rows.jsonl'}:2"]
    with pytest.raises(DataError, match="not found"):
        list(read_documents([tmp_path / "missing"]))


def pdf_file(path: Path, pages: list[str], title: str = "") -> Path:
    """A minimal PDF, one line of Helvetica text a page, offsets in its cross-reference table exact."""
    count = len(pages)
    objects = [
        "<< /Type /Catalog /Pages 2 0 R >>",
        f"<< /Type /Pages /Kids [{' '.join(f'{5 + 2 * i} 0 R' for i in range(count))}] /Count {count} >>",
        "<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
        f"<< /Title ({title}) >>",
    ]
    for i, text in enumerate(pages):
        stream = f"BT /F1 12 Tf 72 720 Td ({text}) Tj ET" if text else ""
        objects.append(
            f"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Resources << /Font << /F1 3 0 R >> >> "
            f"/Contents {6 + 2 * i} 0 R >>"
        )
        objects.append(f"<< /Length {len(stream)} >>\nstream\n{stream}\nendstream")
    out, offsets = "%PDF-1.4\n", []
    for number, body in enumerate(objects, 1):
        offsets.append(len(out))
        out += f"{number} 0 obj\n{body}\nendobj\n"
    xref = len(out)
    out += f"xref\n0 {len(objects) + 1}\n0000000000 65535 f \n" + "".join(f"{o:010d} 00000 n \n" for o in offsets)
    out += f"trailer\n<< /Size {len(objects) + 1} /Root 1 0 R /Info 4 0 R >>\nstartxref\n{xref}\n%%EOF\n"
    path.write_bytes(out.encode("latin-1"))
    return path


def test_pdf_pages_reach_the_chunks_and_their_citations(tiny_bert: Path, tmp_path: Path) -> None:
    from transformers import AutoTokenizer

    from nlptasks.rag.generate import citation

    pages = ["The Nile flows north into the Mediterranean Sea.", "Mount Everest is 8849 metres high."]
    pdf_file(tmp_path / "atlas.pdf", pages, title="World Atlas")
    [document] = read_documents([tmp_path / "atlas.pdf"])
    assert (document.id, document.title) == ("atlas.pdf", "World Atlas")
    assert document.text == "\n\n".join(pages) and document.page_starts == (0, len(pages[0]) + 2)
    tokenizer = AutoTokenizer.from_pretrained(tiny_bert)
    longest = max(len(tokenizer(page, add_special_tokens=False)["input_ids"]) for page in pages)
    per_page = chunk_document(document, tokenizer, longest, 0)
    assert [(c.text, c.metadata["page"]) for c in per_page] == [(pages[0], 1), (pages[1], 2)]
    [both] = chunk_document(document, tokenizer, 200, 0)
    assert (both.metadata["page"], both.metadata["last_page"]) == (1, 2)
    assert citation(1, Hit(0, per_page[1], 1.0))["page"] == 2
    assert "page" not in chunk_document(Document("t", pages[0]), tokenizer, longest, 0)[0].metadata


def test_html_keeps_the_main_text_and_drops_the_navigation(tmp_path: Path) -> None:
    article = " ".join(f"The river delta holds {n} thousand wetland birds in the dry season." for n in range(8))
    (tmp_path / "page.html").write_text(
        "<html><head><title>Delta birds</title><script>var tracking = 1;</script></head><body>"
        "<nav><a href='/'>Home</a> | <a href='/shop'>Shop our store</a></nav>"
        f"<header>Site banner</header><article><h1>Delta birds</h1><p>{article}</p></article>"
        "<footer>Copyright and cookie settings</footer></body></html>"
    )
    [document] = read_documents([tmp_path / "page.html"])
    assert document.title == "Delta birds" and "wetland birds" in document.text
    for boilerplate in ("Shop our store", "cookie settings", "tracking"):
        assert boilerplate not in document.text


def test_restructured_text_and_word_documents_read_as_plain_text(tmp_path: Path) -> None:
    import docx

    (tmp_path / "guide.rst").write_text(
        "Install guide\n=============\n\n.. a comment nobody should retrieve\n\n"
        "Run **setup** with ``--fast``.\n\n.. sphinx-only:: unknown\n\n   hidden\n\n- first step\n- second step\n"
    )
    word = docx.Document()
    word.core_properties.title = "Budget"
    word.add_paragraph("Spending rose in March.")
    table = word.add_table(rows=1, cols=2)
    table.rows[0].cells[0].text, table.rows[0].cells[1].text = "March", "120"
    word.add_paragraph("It fell in April.")
    word.save(tmp_path / "budget.docx")
    found = {d.id: d for d in read_documents([tmp_path])}
    guide = found["guide.rst"]
    assert guide.title == "Install guide" and "Run setup with --fast." in guide.text
    assert "first step" in guide.text and "comment" not in guide.text and "sphinx-only" not in guide.text
    budget = found["budget.docx"]
    assert budget.title == "Budget"
    assert budget.text == "Spending rose in March.\n\nMarch | 120\n\nIt fell in April."


def test_files_a_converter_cannot_read_are_skipped_saying_why(tmp_path: Path) -> None:
    (tmp_path / "damaged.pdf").write_bytes(b"%PDF-1.4\nthis is not a PDF body")
    pdf_file(tmp_path / "scan.pdf", ["", ""])
    (tmp_path / "fake.docx").write_text("plain text named .docx")
    (tmp_path / "empty.html").write_text("<html><head><script>var shown = 0;</script></head><body></body></html>")
    (tmp_path / "kept.txt").write_text("Still read.")
    report = ReadReport()
    assert [d.id for d in read_documents([tmp_path], report=report)] == ["kept.txt"]
    reasons = dict(line.split(": ", 1) for line in report.skipped_files)
    assert reasons[str(tmp_path / "damaged.pdf")].startswith("not a readable PDF")
    assert reasons[str(tmp_path / "scan.pdf")] == "no text layer in its 2 pages (a scanned PDF needs OCR first)"
    assert reasons[str(tmp_path / "fake.docx")].startswith("not a readable .docx")
    assert reasons[str(tmp_path / "empty.html")] == "no main text found in the page"


def test_sentences_pack_into_chunks_that_overlap_and_cover_the_document(tiny_bert: Path) -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_bert)
    text = " ".join(f"Sentence number {n} talks about topic {n}." for n in range(12))
    assert len(sentence_spans(text)) == 12
    chunks = chunk_document(Document("d", text), tokenizer, 30, 10)
    sizes = [len(tokenizer(c.text, add_special_tokens=False)["input_ids"]) for c in chunks]
    assert len(chunks) > 3 and max(sizes) <= 30
    assert all(c.text == text[c.start : c.end] for c in chunks)
    assert all(later.start < earlier.end for earlier, later in zip(chunks, chunks[1:]))  # overlap
    assert chunks[0].start == 0 and chunks[-1].end == len(text)
    long = Document("long", "word " * 100 + "end.")
    windows = chunk_document(long, tokenizer, 30, 10)
    assert max(len(tokenizer(c.text, add_special_tokens=False)["input_ids"]) for c in windows) <= 30
    assert windows[-1].text.endswith("end.")


def test_search_dense_sparse_and_hybrid(docs: Path, settings: RagSettings, tmp_path: Path) -> None:
    report = build_index([docs], tmp_path / "index", settings)
    assert report.added == 4 and report.chunks >= 4
    pipeline = RagPipeline(tmp_path / "index")
    nile = pipeline.index.chunks[pipeline.index.documents["nile.txt"]["chunks"][0]]
    assert pipeline.search(f"nile\n{nile.text}", mode="dense")[0].chunk.doc_id == "nile.txt"  # itself: cosine 1
    assert pipeline.search("Which mountain did climbers reach from Nepal?", mode="sparse")[0].chunk.doc_id == "everest"
    hybrid = pipeline.search("Climbers from Nepal", top_k=3)
    assert len(hybrid) == 3 and hybrid[0].chunk.doc_id == "everest"
    assert pipeline.search("zzzz qqqq", mode="sparse") == []  # no term in common: BM25 returns nothing
    strict = RagPipeline(tmp_path / "index", ["min_dense_score=0.999"])
    assert [h.chunk.doc_id for h in strict.search(f"nile\n{nile.text}", mode="dense")] == ["nile.txt"]


def test_rerankers_reorder_the_candidates_by_their_own_scores(
    docs: Path, settings: RagSettings, tiny_bert: Path, tmp_path: Path
) -> None:
    import torch
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    cross = tmp_path / "cross"
    torch.manual_seed(0)
    BertForSequenceClassification(BertConfig.from_pretrained(tiny_bert, num_labels=1)).save_pretrained(cross)
    AutoTokenizer.from_pretrained(tiny_bert).save_pretrained(cross)
    build_index([docs], tmp_path / "index", settings)
    plain = RagPipeline(tmp_path / "index").search("Climbers from Nepal", top_k=10)  # every candidate
    for rerank, reranker in (("bi-encoder", tiny_bert), ("cross-encoder", cross)):
        reranked = RagPipeline(tmp_path / "index", [f"rerank={rerank}", f"reranker={reranker}"])
        hits = reranked.search("Climbers from Nepal", top_k=10)
        assert sorted(h.chunk_id for h in hits) == sorted(h.chunk_id for h in plain)  # the same candidates
        assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)
        assert hits[0].score != plain[0].score  # scored by the re-ranker, not the fusion
    with pytest.raises(RecipeError, match="rerank: cross-encoder needs a model in `reranker`"):
        RagPipeline(tmp_path / "index", ["rerank=cross-encoder"])


def test_a_simcse_run_directory_is_an_encoder(tiny_bert: Path, tmp_path: Path) -> None:
    from nlptasks.rag.retrieve import encoder_location

    run = tmp_path / "simcse-run"
    (run / "model").mkdir(parents=True)
    (run / "recipe.yaml").write_text("task: sentence-embedding\n")
    assert encoder_location(str(run)) == str(run / "model")
    assert encoder_location("sentence-transformers/all-mpnet-base-v2") == "sentence-transformers/all-mpnet-base-v2"


def test_reciprocal_rank_fusion_by_hand() -> None:
    fused = dict(reciprocal_rank_fusion([[(1, 0.9), (2, 0.8)], [(2, 7.0), (3, 5.0)]], k=60))
    assert fused[2] == pytest.approx(1 / 62 + 1 / 61)
    assert fused[1] == pytest.approx(1 / 61) and fused[3] == pytest.approx(1 / 62)
    assert list(fused) == [2, 1, 3]


def test_reingesting_replaces_changed_documents_without_duplicates(
    docs: Path, settings: RagSettings, tmp_path: Path
) -> None:
    index = tmp_path / "index"
    build_index([docs], index, settings)
    chunks_before = RagPipeline(index).size
    (docs / "nile.txt").write_text("The Nile delta is in Egypt.")
    report = build_index([docs], index, settings)
    assert (report.added, report.replaced, report.unchanged) == (0, 1, 3)
    pipeline = RagPipeline(index)
    nile = [c.text for c in pipeline.index.chunks.values() if c.doc_id == "nile.txt"]
    assert nile == ["The Nile delta is in Egypt."] and pipeline.size <= chunks_before
    assert pipeline.index.dense.index.ntotal == pipeline.size  # vectors of the old chunks are gone
    (docs / "nile.txt").unlink()
    assert build_index([docs], index, settings).removed == 0  # without --prune, absent documents stay
    report = build_index([docs], index, settings, prune=True)
    assert report.removed == 1 and "nile.txt" not in RagPipeline(index).index.documents


def test_an_update_that_fails_leaves_the_previous_index(
    docs: Path, settings: RagSettings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from nlptasks.rag.store import IndexFolder

    index = tmp_path / "index"
    build_index([docs], index, settings)
    before = sorted(p.name for p in index.iterdir())
    (docs / "extra.txt").write_text("A brand new document about volcanoes.")

    def crash(self: IndexFolder) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(IndexFolder, "save", crash)
    with pytest.raises(OSError, match="disk full"):
        build_index([docs], index, settings)
    monkeypatch.undo()
    assert sorted(p.name for p in index.iterdir()) == before
    assert "extra.txt" not in RagPipeline(index).index.documents
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".index")] == []  # no staging left behind


def test_an_index_whose_swap_was_killed_between_its_renames_is_put_back(
    docs: Path, settings: RagSettings, tmp_path: Path
) -> None:
    index = tmp_path / "index"
    build_index([docs], index, settings)
    index.rename(tmp_path / ".index-old")  # what a kill between publish_folder's two renames leaves
    assert len(RagPipeline(index).index.documents) == 4
    (tmp_path / "index").rename(tmp_path / ".index-old")
    (docs / "extra.txt").write_text("A brand new document about volcanoes.")
    assert build_index([docs], index, settings).chunks > 0
    assert len(RagPipeline(index).index.documents) == 5  # the update kept the four it had


def test_build_settings_are_fixed_once_an_index_exists(docs: Path, settings: RagSettings, tmp_path: Path) -> None:
    build_index([docs], tmp_path / "index", settings)
    with pytest.raises(RecipeError, match="rag.chunk_tokens: the index at .* was built with 24"):
        build_index([docs], tmp_path / "index", settings.model_copy(update={"chunk_tokens": 40}))
    with pytest.raises(RecipeError, match="rag.encoder: fixed when the index was built"):
        RagPipeline(tmp_path / "index", ["encoder=minilm-l6"])
    with pytest.raises(RecipeError, match="rag.top_k"):
        RagPipeline(tmp_path / "index", ["top_k=0"])
    with pytest.raises(UserInputError, match="not an index folder"):
        RagPipeline(tmp_path)


def test_chunks_longer_than_the_encoder_reads_are_refused(docs: Path, settings: RagSettings, tmp_path: Path) -> None:
    with pytest.raises(RecipeError, match="rag.chunk_tokens: 400 tokens .* exceed the encoder's limit"):
        build_index([docs], tmp_path / "index", settings.model_copy(update={"chunk_tokens": 400}))


def test_qdrant_local_mode_finds_what_faiss_finds(docs: Path, settings: RagSettings, tmp_path: Path) -> None:
    pytest.importorskip("qdrant_client")
    build_index([docs], tmp_path / "faiss", settings)
    build_index([docs], tmp_path / "qdrant", settings.model_copy(update={"store": "qdrant"}))
    query = "Which mountain did climbers reach from Nepal?"
    faiss_hits = RagPipeline(tmp_path / "faiss").search(query, mode="dense")
    qdrant = RagPipeline(tmp_path / "qdrant")
    qdrant_hits = qdrant.search(query, mode="dense")
    assert [h.chunk.text for h in faiss_hits] == [h.chunk.text for h in qdrant_hits]
    assert [h.score for h in faiss_hits] == pytest.approx([h.score for h in qdrant_hits], abs=1e-5)
    qdrant.index.dense.save()  # releases the local store's lock


def hits_for(*texts: str) -> list[Hit]:
    from nlptasks.rag.documents import Chunk

    return [Hit(i, Chunk(f"doc{i}", 0, text, 0, len(text)), 1.0 / (i + 1)) for i, text in enumerate(texts)]


def test_the_prompt_keeps_the_whole_question_and_cuts_passages_to_the_budget(tiny_llama: Path) -> None:
    generator = DecoderGenerator(RagSettings(generator=str(tiny_llama), max_context_tokens=160))
    question = "What colour is the sky over the sea on a clear day in summer?"
    ids, used = generator.prompt(question, hits_for(*["A long passage about weather and light. " * 12] * 3))
    text = generator.tokenizer.decode(ids)
    assert len(ids) <= 160 and f"Question: {question}" in text and "[1]" in text
    assert len(used) < 3  # the rest did not fit
    with pytest.raises(UserInputError, match="question: .* leave no room for passages"):
        generator.prompt("why " * 200, hits_for("short"))
    assert generator.answer(question, []) == {"answer": NOT_FOUND, "found": False, "citations": []}


def test_decoder_answers_keep_only_citations_of_passages_it_was_given(
    tiny_llama: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import torch

    generator = DecoderGenerator(RagSettings(generator=str(tiny_llama)))
    reply = generator.tokenizer("It is 330 metres tall [2], not [7].", add_special_tokens=False)["input_ids"]
    monkeypatch.setattr("nlptasks.models.generation.generate_ids", lambda model, batch: torch.tensor([reply]))
    answer = generator.answer("How tall?", hits_for("Everest is high.", "The tower is 330 metres tall."))
    assert answer["found"] and [c["doc_id"] for c in answer["citations"]] == ["doc1"]
    uncited = generator.tokenizer("The tower is 330 metres tall.", add_special_tokens=False)["input_ids"]
    monkeypatch.setattr("nlptasks.models.generation.generate_ids", lambda model, batch: torch.tensor([uncited]))
    answer = generator.answer("How tall?", hits_for("Everest is high.", "The tower is 330 metres tall.", "Tall."))
    assert [(c["doc_id"], c["attributed"]) for c in answer["citations"]] == [("doc1", True)]  # most shared words
    nothing = generator.tokenizer(NOT_FOUND, add_special_tokens=False)["input_ids"]
    monkeypatch.setattr("nlptasks.models.generation.generate_ids", lambda model, batch: torch.tensor([nothing]))
    assert generator.answer("How tall?", hits_for("Everest is high."))["found"] is False


def test_extractive_reader_takes_the_span_with_the_highest_logit_across_chunks() -> None:
    reader = ExtractiveReader.__new__(ExtractiveReader)
    reader.min_score = None

    class Spans:
        def predict(self, inputs: list[dict[str, str]]) -> list[dict[str, object]]:
            return [
                {"answer": "Nepal", "logit": 3.0},
                {"answer": "330 metres", "logit": 9.5},
                {"answer": "", "logit": None},
            ]

    reader.predictor = Spans()
    answer = reader.answer("How tall?", hits_for("a", "b", "c"))
    assert answer["answer"] == "330 metres" and answer["citations"][0]["n"] == 2
    reader.min_score = 10.0
    assert reader.answer("How tall?", hits_for("a", "b", "c"))["found"] is False


def test_ranking_metrics_by_hand() -> None:
    judged = {"a": 2, "b": 1, "c": 0, "d": -1}
    ranked = ["c", "a", "x", "b"]
    dcg = 2 / math.log2(3) + 1 / math.log2(5)
    assert ndcg_at(ranked, judged, 10) == pytest.approx(dcg / (2 / math.log2(2) + 1 / math.log2(3)))
    assert ndcg_at(ranked, judged, 1) == 0.0
    assert recall_at(ranked, {"a", "b"}, 2) == 0.5 and recall_at(ranked, {"a", "b"}, 4) == 1.0
    assert reciprocal_rank(ranked, {"a", "b"}) == 0.5 and reciprocal_rank(ranked, {"z"}) == 0.0
    assert ranked_documents(hits_for("x", "y")[:1] + hits_for("x", "y")) == ["doc0", "doc1"]


def test_end_to_end_answers_scored_by_hand() -> None:
    """`rag eval --benchmark squad`'s answer scores on a scripted pipeline: EM/F1 over every question,
    citations over those answered, abstention once every passage holding an answer is withheld."""
    from nlptasks.rag.evaluate import _score_answers

    passages = {"doc0": "Paris is the capital of France.", "doc1": "Berlin lies on the Spree.", "doc2": "Rain."}
    replies = {
        "capital?": {"answer": "Paris [1]", "found": True, "citations": [{"text": passages["doc0"]}]},
        "river?": {"answer": "the Spree", "found": True, "citations": [{"text": passages["doc0"], "attributed": True}]},
        "weather?": {"answer": NOT_FOUND, "found": False, "citations": []},
    }

    class Scripted:
        settings = RagSettings(top_k=2, candidates=1)

        def ask(self, question: str) -> dict[str, object]:
            return replies[question]

        def search(self, question: str, k: int) -> list[Hit]:
            return hits_for(*passages.values())[:k]

        def answer(self, question: str, hits: list[Hit]) -> dict[str, object]:
            return {"found": any("Paris" in hit.chunk.text for hit in hits)}  # answers only from doc0

    questions = [
        {"text": "capital?", "answers": ["Paris"], "gold": "doc0"},
        {"text": "river?", "answers": ["Spree", "the river Spree"], "gold": "doc1"},
        {"text": "weather?", "answers": ["sunny"], "gold": "doc2"},
    ]
    scores = _score_answers(Scripted(), questions)
    assert scores["exact_match"] == pytest.approx(2 / 3)  # "the Spree" normalises to "spree"
    assert scores["f1"] == pytest.approx(2 / 3) and scores["answer_found_rate"] == pytest.approx(2 / 3)
    assert scores["citation_accuracy"] == 0.5 and scores["citations_attributed"] == 0.5
    # withheld: doc0 for the first (gold and answer), doc1 for the second; doc0 still answers the second and third
    assert scores["abstention_without_gold"] == pytest.approx(1 / 3)
    assert scores["seconds_per_answer_p50"] <= scores["seconds_per_answer_p95"]


@pytest.fixture
def service(docs: Path, settings: RagSettings, tiny_llama: Path, tmp_path: Path, free_port: int):
    """The FastAPI app served by uvicorn on a free localhost port, in a thread."""
    import uvicorn

    from nlptasks.rag.serve import create_app

    settings = settings.model_copy(update={"generator": str(tiny_llama)})
    settings.generation.max_new_tokens = 4
    build_index([docs], tmp_path / "index", settings)
    port = free_port
    server = uvicorn.Server(uvicorn.Config(create_app(RagPipeline(tmp_path / "index")), port=port, log_level="error"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(timeout=10)


def test_service_answers_over_http_and_refuses_bad_requests(service: str) -> None:
    import httpx

    with httpx.Client(base_url=service, timeout=60) as client:
        assert client.get("/health").json()["documents"] == 4
        hits = client.post("/search", json={"query": "climbers from Nepal", "top_k": 2, "mode": "sparse"}).json()
        assert [h["doc_id"] for h in hits["hits"]][:1] == ["everest"] and len(hits["hits"]) <= 2
        answer = client.post("/ask", json={"question": "How tall is the Eiffel Tower?"}).json()
        assert {"answer", "found", "citations", "passages"} <= set(answer)
        assert client.get("/v1/rag").json()["indexes"][0]["name"] == "index"  # the folder's name
        query = {"query": "climbers from Nepal", "top_k": 2, "mode": "sparse"}
        assert client.post("/v1/rag/index/search", json=query).json() == hits
        assert client.post("/v1/rag/other/search", json={"query": "x"}).status_code == 404
        assert (
            client.post("/search", content=b"{not json", headers={"content-type": "application/json"}).status_code
            == 422
        )
        assert client.post("/search", json={"query": ""}).status_code == 422
        assert client.post("/search", json={"query": "x", "mode": "fuzzy"}).status_code == 422
        assert client.post("/search", json={"query": "x", "top_k": 10_000}).status_code == 422
        assert client.post("/search", json={"query": "x", "extra": 1}).status_code == 422
        assert client.post("/search", json={"query": "x" * 20_000}).status_code == 413
        chunked = iter([b'{"query": "', b"x" * 20_000, b'"}'])  # no content-length: counted as it arrives
        assert client.post("/search", content=chunked, headers={"content-type": "application/json"}).status_code == 413
        small = iter([b'{"query": "climbers ', b'Nepal", "mode": "sparse"}'])
        replayed = client.post("/search", content=small, headers={"content-type": "application/json"})
        assert replayed.json()["hits"][0]["doc_id"] == "everest", replayed.text

        def search(query: str) -> str:
            return client.post("/search", json={"query": query, "mode": "sparse", "top_k": 1}).json()["hits"][0][
                "doc_id"
            ]

        queries = ["climbers Nepal", "Nile Mediterranean", "Photosynthesis sugar", "Eiffel Fair"] * 4
        with ThreadPoolExecutor(8) as pool:
            found = list(pool.map(search, queries))
        assert found == ["everest", "nile.txt", "photo", "notes/eiffel.md"] * 4


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/statm").is_file(), reason="reads resident memory from /proc")
def test_the_service_memory_stays_flat_over_ten_times_the_requests(service: str) -> None:
    import httpx

    def resident_megabytes() -> float:
        return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20

    growth = {}
    with httpx.Client(base_url=service, timeout=60) as client:
        for count in (20, 100, 1_000):  # the first 20 warm the service up
            before = resident_megabytes()
            for i in range(count):
                assert client.post("/search", json={"query": f"climbers Nepal {i}", "top_k": 3}).status_code == 200
            growth[count] = resident_megabytes() - before
    print(f"RSS growth: {growth[100]:.1f} MB over 100 requests, {growth[1_000]:.1f} MB over 1,000")
    assert growth[1_000] <= 2 * max(growth[100], 10), growth


def test_empty_index_searches_and_answers_without_crashing(settings: RagSettings, tmp_path: Path) -> None:
    (tmp_path / "docs").mkdir()
    assert build_index([tmp_path / "docs"], tmp_path / "index", settings).chunks == 0
    pipeline = RagPipeline(tmp_path / "index")
    assert pipeline.search("anything") == [] and pipeline.search("anything", mode="dense") == []
    assert pipeline.ask("anything")["found"] is False


def test_serve_set_reaches_an_index_as_its_query_time_settings(
    docs: Path, settings: RagSettings, tiny_llama: Path, tmp_path: Path
) -> None:
    pytest.importorskip("fastapi", reason="the serve extra is not installed (bash scripts/setup.sh installs it)")
    from nlptasks.serve.sources import open_sources

    build_index([docs], tmp_path / "index", settings.model_copy(update={"generator": str(tiny_llama)}))
    opened = open_sources({"idx": tmp_path / "index"}, overrides=["top_k=2", "generation.max_new_tokens=3"])
    assert opened["idx"].settings.top_k == 2 and opened["idx"].settings.generation.max_new_tokens == 3
    with pytest.raises(RecipeError, match="chunk_tokens"):  # a build setting is the index's own
        open_sources({"idx": tmp_path / "index"}, overrides=["chunk_tokens=50"])


def test_cli_index_search_and_errors(
    docs: Path, tiny_bert: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    index = str(tmp_path / "index")
    sets = ["--set", f"encoder={tiny_bert}", "--set", "chunk_tokens=24", "--set", "chunk_overlap=8"]
    assert main(["rag", "index", "--docs", str(docs), "--index", index, *sets]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["documents_added"] == 4
    assert main(["rag", "search", "--index", index, "--set", "retrieval=sparse", "climbers from Nepal"]) == 0
    assert json.loads(capsys.readouterr().out)[0]["doc_id"] == "everest"
    assert main(["rag", "search", "--index", index, "--set", "top_kk=3", "x"]) == 2
    assert "rag.top_kk: unknown key (did you mean 'top_k'?)" in capsys.readouterr().err
    assert main(["rag", "ask", "--index", str(tmp_path), "x"]) == 2
    assert "not an index folder" in capsys.readouterr().err


def test_cli_eval_sets_change_the_existing_index_settings_not_the_defaults(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    from nlptasks.rag.store import save_settings

    save_settings(tmp_path, RagSettings(generation={"engine": "ctranslate2"}))
    calls = []
    monkeypatch.setattr("nlptasks.rag.evaluate", lambda *args, **kwargs: calls.append(args) or {})
    # quantize alone is refused under the default engine, transformers; this index's engine takes it
    quantized = ["--set", "generation.quantize=int8"]
    assert main(["rag", "eval", "--index", str(tmp_path), "--benchmark", "squad", *quantized]) == 0
    assert calls[0][2] is None  # the index is not built again from default settings

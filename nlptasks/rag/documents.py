"""Documents in (text, Markdown, JSONL, CSV, PDF, HTML, reStructuredText, Word; a folder or files) and chunks out.

A document's id is stable across runs: its path below the folder given (one document a file), or
its row's id column (JSONL, CSV; `path:line` where there is none), so re-ingesting finds it again.
"""

from __future__ import annotations

import bisect
import csv
import hashlib
import json
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nlptasks.data import json_value
from nlptasks.errors import DataError
from nlptasks.rag import formats

TEXT_SUFFIXES = {".txt", ".md", ".markdown"}
ROW_SUFFIXES = {".jsonl", ".csv"}
READ_SUFFIXES = sorted(TEXT_SUFFIXES | ROW_SUFFIXES | set(formats.BINARY) | set(formats.MARKUP))

SENTENCE_END = re.compile(r"(?<=[.!?])[\"')\]]*\s+(?=[\"'(\[]?[A-Z0-9])|\n\s*\n")
"""Sentence boundaries by terminal punctuation or a blank line: a regex, because punkt (nltk)
needs a data download and pysbd is slow, while chunks only need boundaries that are roughly right."""


@dataclass(frozen=True)
class Document:
    id: str
    text: str
    title: str = ""
    metadata: dict[str, Any] = field(default_factory=dict)
    page_starts: tuple[int, ...] = ()
    """Offset in `text` where each page begins (a PDF's), page 1 first: a chunk's metadata names its pages."""

    @property
    def content_hash(self) -> str:
        pages = [list(self.page_starts)] if self.page_starts else []  # unpaged documents keep the hashes they had
        payload = json.dumps([self.title, self.text, self.metadata, *pages], sort_keys=True, ensure_ascii=False)
        return hashlib.sha256(payload.encode()).hexdigest()[:32]


@dataclass(frozen=True)
class Chunk:
    doc_id: str
    position: int
    """Order within its document, from 0."""
    text: str
    start: int
    """First character in the document's text (the chunk is `text[start:end]`)."""
    end: int
    metadata: dict[str, Any] = field(default_factory=dict)


@dataclass
class ReadReport:
    documents: int = 0
    skipped_empty: list[str] = field(default_factory=list)
    """`file:line` (or file) of every document without text, skipped."""
    skipped_files: list[str] = field(default_factory=list)
    """`file: why` for every file not read: a type not read here, or one its converter cannot read."""


def read_documents(
    paths: Sequence[str | Path], text_field: str = "text", id_field: str | None = None, report: ReadReport | None = None
) -> Iterator[Document]:
    """Every document under `paths` (folders are walked in sorted order), with ids unique across them."""
    report = report if report is not None else ReadReport()
    seen: dict[str, str] = {}
    for root in map(Path, paths):
        if not root.exists():
            raise DataError(f"--docs: not found: {root}")
        files = sorted(p for p in root.rglob("*") if p.is_file()) if root.is_dir() else [root]
        for path in files:
            name = path.relative_to(root).as_posix() if root.is_dir() else path.name
            for document, where in _read_file(path, name, text_field, id_field, report):
                if document.id in seen:
                    raise DataError(f"{where}: document id {document.id!r} already used at {seen[document.id]}")
                seen[document.id] = where
                report.documents += 1
                yield document


def _read_file(
    path: Path, name: str, text_field: str, id_field: str | None, report: ReadReport
) -> Iterator[tuple[Document, str]]:
    suffix = path.suffix.lower()
    if suffix in formats.BINARY or suffix in formats.MARKUP:
        yield from _converted(path, name, suffix, report)
        return
    if suffix not in TEXT_SUFFIXES | ROW_SUFFIXES:
        kind = f"{suffix} files are" if suffix else "a file without a suffix is"
        report.skipped_files.append(f"{path}: {kind} not read (read: {' '.join(READ_SUFFIXES)})")
        return
    text = _read_text(path)
    if suffix in TEXT_SUFFIXES:
        if not text.strip():
            report.skipped_empty.append(str(path))
            return
        yield Document(name, text, _title_of(text, path)), str(path)
        return
    rows = _jsonl_rows(text, path) if suffix == ".jsonl" else _csv_rows(text, path)
    for line, row in rows:
        where = f"{path}:{line}"
        if text_field not in row:
            raise DataError(f"{where}: no field {text_field!r} (the text; fields here: {', '.join(row)})")
        body = row[text_field]
        if body is None or (isinstance(body, str) and not body.strip()):
            report.skipped_empty.append(where)
            continue
        if not isinstance(body, str):
            raise DataError(f"{where}: field {text_field!r} must be text, got {type(body).__name__}")
        key = id_field or next((k for k in ("id", "_id") if k in row), None)
        if key is not None and key not in row:
            raise DataError(f"{where}: no field {key!r} (the document id)")
        doc_id = str(row[key]) if key is not None else f"{name}:{line}"
        metadata = {k: v for k, v in row.items() if k not in {text_field, key, "title"} and _is_scalar(v)}
        yield Document(doc_id, body, str(row.get("title") or ""), metadata), where


def _converted(path: Path, name: str, suffix: str, report: ReadReport) -> Iterator[tuple[Document, str]]:
    """One document from a file its converter reads; a file it cannot read is skipped, saying why."""
    try:
        if suffix in formats.MARKUP:
            converted = formats.MARKUP[suffix](path, _read_text(path))
        else:
            converted = formats.BINARY[suffix](path)
    except formats.Unreadable as why:
        report.skipped_files.append(f"{path}: {why}")
        return
    if not converted.text.strip():
        report.skipped_empty.append(str(path))
        return
    yield Document(name, converted.text, converted.title, page_starts=converted.page_starts), str(path)


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        line = path.read_bytes()[: err.start].count(b"\n") + 1
        raise DataError(f"{path}:{line}: not UTF-8 text ({err.reason} at byte {err.start})") from None


def _jsonl_rows(text: str, path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    for line, raw in enumerate(text.splitlines(), 1):
        if not raw.strip():
            continue
        yield line, json_value(raw, f"{path}:{line}")


def _csv_rows(text: str, path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    reader = csv.DictReader(text.splitlines())
    for row in reader:
        if None in row:
            raise DataError(f"{path}:{reader.line_num}: more values than the header's {len(reader.fieldnames or [])}")
        yield reader.line_num, row


def _title_of(text: str, path: Path) -> str:
    heading = re.search(r"^#\s+(.+)$", text, flags=re.MULTILINE) if path.suffix.lower() != ".txt" else None
    return heading.group(1).strip() if heading else path.stem


def _is_scalar(value: Any) -> bool:
    return isinstance(value, str | int | float | bool) or value is None


def sentence_spans(text: str) -> list[tuple[int, int]]:
    """(start, end) of each sentence, whitespace around it excluded."""
    spans, start = [], 0
    for boundary in [*SENTENCE_END.finditer(text), None]:
        end = boundary.start() if boundary else len(text)
        piece = text[start:end]
        if piece.strip():
            left = start + len(piece) - len(piece.lstrip())
            spans.append((left, start + len(piece.rstrip())))
        start = boundary.end() if boundary else len(text)
    return spans


def chunk_document(document: Document, tokenizer: Any, chunk_tokens: int, overlap: int) -> list[Chunk]:
    """Whole sentences packed up to `chunk_tokens`, each chunk starting with up to `overlap` tokens of
    the previous one's last sentences; a sentence longer than a chunk is cut into token windows.

    The title goes in front of every chunk's embedded text (`Chunk.text` keeps only the document's).
    """
    pieces = [
        piece
        for span in sentence_spans(document.text)
        for piece in _fit(document.text, span, tokenizer, chunk_tokens, overlap)
    ]
    chunks: list[Chunk] = []
    first = 0
    while first < len(pieces):
        last, used = first, 0
        while last < len(pieces) and (last == first or used + pieces[last][2] <= chunk_tokens):
            used += pieces[last][2]
            last += 1
        start, end = pieces[first][0], pieces[last - 1][1]
        metadata = _chunk_metadata(document, start, end)
        chunks.append(Chunk(document.id, len(chunks), document.text[start:end], start, end, metadata))
        if last == len(pieces):
            break
        first = _overlap_start(pieces, first, last, overlap)
    return chunks


def _fit(text: str, span: tuple[int, int], tokenizer: Any, limit: int, overlap: int) -> list[tuple[int, int, int]]:
    """The sentence as (start, end, tokens), or its token windows when it is longer than `limit`."""
    start, end = span
    offsets = tokenizer(text[start:end], add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
    if len(offsets) <= limit:
        return [(start, end, len(offsets))]
    step = limit - overlap
    windows = []
    for first in range(0, len(offsets), step):
        window = offsets[first : first + limit]
        windows.append((start + window[0][0], start + window[-1][1], len(window)))
        if first + limit >= len(offsets):
            break
    return windows


def _overlap_start(pieces: list[tuple[int, int, int]], first: int, last: int, overlap: int) -> int:
    """Where the next chunk starts: the latest piece such that pieces up to `last` fit in `overlap` tokens."""
    start, carried = last, 0
    while start - 1 > first and carried + pieces[start - 1][2] <= overlap:
        carried += pieces[start - 1][2]
        start -= 1
    return start


def _chunk_metadata(document: Document, start: int, end: int) -> dict[str, Any]:
    """The document's title and metadata; for a paged document, the `page` the chunk starts on and,
    when it runs onto later ones, its `last_page` (1-based, as a reader cites them)."""
    metadata = {"title": document.title, **document.metadata} if document.title else dict(document.metadata)
    if document.page_starts:
        first = bisect.bisect_right(document.page_starts, start)
        last = bisect.bisect_right(document.page_starts, max(start, end - 1))
        metadata["page"] = first
        if last != first:
            metadata["last_page"] = last
    return metadata


def embedding_text(chunk: Chunk) -> str:
    """What the encoder and BM25 see: the title, when there is one, before the chunk's text."""
    title = chunk.metadata.get("title")
    return f"{title}\n{chunk.text}" if title else chunk.text

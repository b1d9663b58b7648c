"""Documents in the formats they come in (PDF, HTML, reStructuredText, Word), as plain text through
well-kept converters: pypdf, trafilatura (a page's main text, without its navigation), docutils,
python-docx. Each returns the text, a title, and where each page starts (PDF only)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any


class Unreadable(Exception):
    """Why a file is skipped: it is not what its suffix says, is locked, or holds no text."""


@dataclass(frozen=True)
class Converted:
    text: str
    title: str
    page_starts: tuple[int, ...] = ()
    """Offset in `text` where each page begins, page 1 first; empty for formats without pages."""


def pdf(path: Path) -> Converted:
    from pypdf import PdfReader

    try:
        reader = PdfReader(path)
        if reader.is_encrypted and not reader.decrypt(""):
            raise Unreadable("an encrypted PDF that no empty password opens")
        pages = [(page.extract_text() or "").strip() for page in reader.pages]
        title = (reader.metadata.title if reader.metadata else None) or path.stem
    except Unreadable:
        raise
    except Exception as err:  # pypdf raises many types for damaged files; each one means the same to a reader
        raise Unreadable(f"not a readable PDF ({type(err).__name__}: {err})") from None
    if not any(pages):
        count = f"{len(pages)} page{'s' if len(pages) != 1 else ''}"
        raise Unreadable(f"no text layer in its {count} (a scanned PDF needs OCR first)")
    starts, text = [], ""
    for page in pages:
        starts.append(len(text))
        text += page + "\n\n"
    return Converted(text.rstrip(), str(title).strip() or path.stem, tuple(starts))


def html(path: Path) -> Converted:
    import trafilatura

    extracted = trafilatura.bare_extraction(
        path.read_bytes(), include_comments=False, include_tables=True, with_metadata=True
    )
    if extracted is None or not (extracted.text or "").strip():
        raise Unreadable("no main text found in the page")
    return Converted(extracted.text, (extracted.title or "").strip() or path.stem)


def restructured_text(path: Path, source: str) -> Converted:
    """The parsed document's text: markup, comments and docutils' own error messages left out. Directives
    docutils does not know (Sphinx's) become errors it drops; their content is lost with them."""
    from docutils import nodes
    from docutils.core import publish_doctree

    settings = {"report_level": 5, "halt_level": 5, "file_insertion_enabled": False, "raw_enabled": False}
    doctree = publish_doctree(source, source_path=str(path), settings_overrides=settings)
    for node in [*doctree.findall(nodes.system_message), *doctree.findall(nodes.comment)]:
        node.parent.remove(node)
    return Converted(doctree.astext(), str(doctree.get("title") or "").strip() or path.stem)


def word(path: Path) -> Converted:
    import docx

    try:
        document = docx.Document(str(path))
    except Exception as err:  # a .docx is a zip of XML parts; any failure to open it means the same
        raise Unreadable(f"not a readable .docx ({type(err).__name__}: {err})") from None
    blocks = [_block_text(block) for block in document.iter_inner_content()]
    titles = (p.text for p in document.paragraphs if p.style is not None and p.style.name == "Title")
    title = document.core_properties.title or next(titles, "") or path.stem
    return Converted("\n\n".join(block for block in blocks if block.strip()), title.strip())


def _block_text(block: Any) -> str:
    """A paragraph's text, or a table's rows, one line each with its cells separated by ' | '."""
    if hasattr(block, "rows"):
        return "\n".join(" | ".join(cell.text.strip() for cell in row.cells) for row in block.rows)
    return block.text


BINARY: dict[str, Callable[[Path], Converted]] = {".pdf": pdf, ".html": html, ".htm": html, ".docx": word}
"""Suffixes read from bytes by a converter."""
MARKUP: dict[str, Callable[[Path, str], Converted]] = {".rst": restructured_text}
"""Suffixes read as UTF-8 text, then converted."""

"""Splitting raw text into turns, sentences and words, with spans into the original text.

Several tasks, the ROUGE metric and the recurrent models' tokenizer split text the same way;
this module holds those rules so none of them imports another for a splitter.
"""

from __future__ import annotations

import re

Span = tuple[int, int]
"""Start and end character of a piece of a text: `text[start:end]`."""

WORD = re.compile(r"\w+(?:[-'.]\w+)*|[^\w\s]")
"""Raw text to words: word characters with inner -'. or one symbol; here, not in `tasks/ner.py`, because
the recurrent models' word tokenizer splits text exactly as NER's `predict` does."""
LINE = re.compile(r"\S(?:[^\r\n]*\S)?")
"""A line without its surrounding whitespace (blank lines never match)."""
SENTENCE_END = re.compile(r"[.!?]+[\"'”’)\]]*(?=\s)")
NEXT_CHARACTER = re.compile(r"\s+(\S)")
ABBREVIATIONS = frozenset(
    ["mr", "mrs", "ms", "dr", "prof", "sr", "jr", "st", "mt", "vs", "etc", "e.g", "i.e", "cf", "no", "fig"]
    + ["inc", "ltd", "co", "corp", "u.s", "u.k", "a.m", "p.m"]
)
"""Words whose period rarely ends a sentence (lowercase, without the final period)."""


def split_turns(text: str) -> list[Span]:
    """One span per non-blank line, without its surrounding whitespace."""
    return [match.span() for match in LINE.finditer(text)]


def split_sentences(text: str) -> list[Span]:
    """Sentence spans of prose: each line, cut after `.`, `!` or `?` where a new sentence starts.

    A cut needs whitespace and then a character that is not lowercase after the punctuation
    (closing quotes and brackets stay with their sentence), and a lone `.` must not end a known
    abbreviation (`Dr.`, `e.g.`, `U.S.`) or a one-letter initial. Rules in the spirit of Moses'
    `split-sentences.perl`: no model and no data download (nltk's punkt needs one, impossible
    offline), and spans index the original text exactly.
    """
    spans = []
    for line_start, line_end in split_turns(text):
        start = line_start
        for match in SENTENCE_END.finditer(text, line_start, line_end):
            following = NEXT_CHARACTER.match(text, match.end(), line_end)
            if following and not following.group(1).islower() and not _abbreviation(text[start : match.end()]):
                spans.append((start, match.end()))
                start = following.start(1)
        spans.append((start, line_end))
    return spans


def sentence_texts(text: str) -> list[str]:
    """The sentences of `split_sentences`, as text."""
    return [text[start:end] for start, end in split_sentences(text)]


def _abbreviation(sentence: str) -> bool:
    """Whether the sentence so far ends in an abbreviation's or an initial's period, not a sentence's."""
    words = sentence.split()
    if not words or not words[-1].endswith(".") or words[-1].endswith(".."):
        return False
    word = words[-1].lstrip("(\"'“‘").rstrip(".").lower()
    return word in ABBREVIATIONS or (len(word) == 1 and word.isalpha())

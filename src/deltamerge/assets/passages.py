"""Cutting running text into passages: paragraphs from wrapped lines, and word-bounded chunks on sentence ends."""

from __future__ import annotations

import re
from collections.abc import Iterable

_HEADING = re.compile(r"^(chapter|volume|book|part|letter)\b[\s\w.:-]*$", re.IGNORECASE)
_ROMAN = re.compile(r"^[ivxlcdm]+\.?$", re.IGNORECASE)
_SENTENCE_END = re.compile(r"([.!?][\"')\]”’]?)\s+(?=[\"'(\[“‘]?[A-Z0-9])")


def is_heading(text: str) -> bool:
    """Chapter/volume headings, bare roman numerals and all-caps title lines."""
    text = text.strip()
    if _HEADING.match(text) or _ROMAN.match(text):
        return True
    letters = [c for c in text if c.isalpha()]
    return bool(letters) and len(text.split()) <= 8 and all(c.isupper() for c in letters)


def paragraphs_from_lines(lines: Iterable[str | None], min_words: int = 8) -> list[str]:
    """Join runs of non-empty lines into paragraphs; drop headings and paragraphs under ``min_words`` words."""
    out: list[str] = []
    current: list[str] = []

    def flush() -> None:
        if current:
            text = " ".join(" ".join(current).split())
            if not is_heading(text) and len(text.split()) >= min_words:
                out.append(text)
            current.clear()

    for line in lines:
        line = (line or "").strip()
        if line:
            current.append(line)
        else:
            flush()
    flush()
    return out


def split_sentences(text: str) -> list[str]:
    """A crude sentence splitter: break after ``.``, ``!`` or ``?`` followed by space and a capital or digit."""
    marked = _SENTENCE_END.sub("\\1\n", " ".join(text.split()))
    return [s.strip() for s in marked.split("\n") if s.strip()]


def chunk_words(text: str, min_words: int = 20, max_words: int = 100, target_words: int = 70) -> list[str]:
    """Greedy sentence-aligned chunks of about ``target_words`` words, each within ``[min_words, max_words]``.

    A sentence longer than ``max_words`` is cut at word boundaries; a short tail is dropped.
    """
    chunks: list[str] = []
    current: list[str] = []
    for sentence in split_sentences(text):
        words = sentence.split()
        while len(words) > max_words:
            if current:
                chunks.append(" ".join(current))
                current = []
            chunks.append(" ".join(words[:target_words]))
            words = words[target_words:]
        if current and len(current) + len(words) > max_words:
            chunks.append(" ".join(current))
            current = []
        current.extend(words)
        if len(current) >= target_words:
            chunks.append(" ".join(current))
            current = []
    if current:
        chunks.append(" ".join(current))
    return [c for c in chunks if min_words <= len(c.split()) <= max_words]


def passages(paragraphs: Iterable[str], min_words: int = 20, max_words: int = 100) -> list[str]:
    """Paragraphs within the word bounds kept whole; longer ones chunked; shorter ones dropped."""
    out: list[str] = []
    for para in paragraphs:
        n = len(para.split())
        if n < min_words:
            continue
        out.extend([" ".join(para.split())] if n <= max_words else chunk_words(para, min_words, max_words))
    return out

"""Blocks (what parsers return) to chunks: structure-aware splitting with overlap.

A parser cuts a document into :class:`Block` s along its structure: a Markdown or HTML
section under one heading, a plain-text file, a group of table rows. With the
``structure`` strategy a chunk never crosses a block boundary; a block longer than
``max_chars`` is split at the best break inside the window (paragraph, line, sentence —
``。！？`` included —, clause, space) and the next chunk repeats the last
``overlap_chars`` characters. With ``fixed`` the text blocks are joined and cut the same
way regardless of headings. Atomic blocks (table rows, table summaries, OCR regions) are
never split, merged or overlapped.

Example:
    >>> from qingliang.knowledge.ingest.chunking import split_text
    >>> split_text("一二三。四五六。七八九。", max_chars=8, overlap_chars=2)
    [(0, 8), (6, 12)]
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from qingliang.knowledge.ingest.document import Chunk, ChunkKind, Location, document_id
from qingliang.knowledge.ingest.options import Chunking

#: Break points, best first: a chunk ends just after the last one found in its window.
_BREAKS: tuple[tuple[str, ...], ...] = (
    ("\n\n",),
    ("\n",),
    ("。", "！", "？", "!", "?", "；", ". ", "; "),
    ("，", "、", ", ", "：", ": "),
    (" ", "\t"),
)


@dataclass(frozen=True)
class Block:
    """A structural unit of a document; ``char_start`` is its offset in the document text."""

    text: str
    kind: ChunkKind = "text"
    heading_path: tuple[str, ...] = ()
    char_start: int | None = None
    page: int | None = None
    row_start: int | None = None
    row_end: int | None = None
    atomic: bool = False
    image_path: str | None = None
    region: tuple[int, int, int, int] | None = None
    #: The chunk's hash when its text does not carry its content (an ``image`` chunk:
    #: the hash of the pixels); empty means the hash of the text.
    sha256: str = ""


@dataclass(frozen=True)
class Parsed:
    """One document as a parser returns it; ``error`` marks a record that failed.

    ``sha256`` overrides the document hash (images: the pixels, not only the OCR text).
    """

    text: str
    blocks: list[Block] = field(default_factory=list)
    record: str | None = None
    title: str | None = None
    error: str | None = None
    sha256: str | None = None


def joined(blocks: list[Block], sep: str = "\n\n") -> tuple[str, list[Block]]:
    """Join block texts into one document text, setting each block's ``char_start``."""
    parts: list[str] = []
    out: list[Block] = []
    pos = 0
    for b in blocks:
        if parts:
            parts.append(sep)
            pos += len(sep)
        out.append(replace(b, char_start=pos))
        parts.append(b.text)
        pos += len(b.text)
    return "".join(parts), out


def split_text(text: str, max_chars: int, overlap_chars: int) -> list[tuple[int, int]]:
    """``(start, end)`` spans covering ``text``, each at most ``max_chars`` long.

    Spans are trimmed of edge whitespace; consecutive spans share ``overlap_chars``
    characters (fewer where trimming removed whitespace).
    """
    n = len(text)
    spans: list[tuple[int, int]] = []
    start = _skip_space(text, 0, n)
    while start < n:
        end = min(start + max_chars, n)
        if end < n:
            end = _break(text, start + max_chars // 2 + 1, end) or end
        s, e = start, end
        while e > s and text[e - 1].isspace():
            e -= 1
        if e > s:
            spans.append((s, e))
        if end >= n:
            break
        # A break is searched beyond half the window and overlap is at most half of it,
        # so the next span always starts further on.
        start = _skip_space(text, max(end - overlap_chars, start + 1), n)
    return spans


def _skip_space(text: str, i: int, n: int) -> int:
    while i < n and text[i].isspace():
        i += 1
    return i


def _break(text: str, lo: int, hi: int) -> int | None:
    for group in _BREAKS:
        best = max(
            (text.rfind(sep, lo, hi) + len(sep) for sep in group if sep in text[lo:hi]),
            default=None,
        )
        if best is not None and best > lo:
            return best
    return None


def chunk_document(parsed: Parsed, source: str, chunking: Chunking) -> list[Chunk]:
    """Cut one parsed document into chunks numbered from 0."""
    doc_id = document_id(source, parsed.record)
    pieces: list[tuple[Block, str, int | None, int | None]] = []
    text_blocks = [b for b in parsed.blocks if not b.atomic]
    if chunking.strategy == "fixed" and text_blocks:
        # Windows over the document's whole text; each takes the heading path of the
        # block it starts in.
        text = parsed.text
        starts = [(blk.char_start or 0, blk) for blk in text_blocks]
        for s, e in split_text(text, chunking.max_chars, chunking.overlap_chars):
            owner = next((blk for at, blk in reversed(starts) if at <= s), text_blocks[0])
            pieces.append((owner, text[s:e], s, e))
        pieces.extend((blk, blk.text, *_span(blk)) for blk in parsed.blocks if blk.atomic)
    else:
        for b in parsed.blocks:
            if b.atomic:
                pieces.append((b, b.text, *_span(b)))
                continue
            for s, e in split_text(b.text, chunking.max_chars, chunking.overlap_chars):
                pieces.append((b, b.text[s:e], _add(b.char_start, s), _add(b.char_start, e)))
    return [
        Chunk(
            text=piece,
            doc_id=doc_id,
            index=i,
            kind=b.kind,
            location=Location(
                source=source,
                heading_path=b.heading_path,
                page=b.page,
                row_start=b.row_start,
                row_end=b.row_end,
                char_start=s,
                char_end=e,
                record=parsed.record,
                image_path=b.image_path,
                region=b.region,
            ),
            sha256=b.sha256,
        )
        for i, (b, piece, s, e) in enumerate(pieces)
        if piece.strip()
    ]


def _add(base: int | None, delta: int) -> int | None:
    return None if base is None else base + delta


def _span(b: Block) -> tuple[int | None, int | None]:
    return b.char_start, _add(b.char_start, len(b.text))

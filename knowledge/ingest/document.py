"""What ingestion produces: documents, chunks, where each chunk came from, content hashes.

Hashes are sha256 over *normalised* text (Unicode NFC, line ends and runs of whitespace
collapsed, edges trimmed), so re-saving a file with CRLF line ends or trailing spaces does
not count as a change, while any edit to the words does. A later sync compares
:attr:`Document.sha256` to skip unchanged documents and :attr:`Chunk.sha256` to re-embed
only the chunks that changed.

Example:
    >>> from qingliang.knowledge.ingest.document import content_hash
    >>> content_hash("第一条  规定\\r\\n") == content_hash("第一条 规定")
    True
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from dataclasses import dataclass, field
from typing import Literal

ChunkKind = Literal["text", "table-row", "table-summary", "image-ocr", "image"]

_SPACE = re.compile(r"\s+")


def normalise(text: str) -> str:
    """The form hashes are taken over: NFC, whitespace runs → one space, trimmed."""
    return _SPACE.sub(" ", unicodedata.normalize("NFC", text)).strip()


def content_hash(text: str) -> str:
    """sha256 hex digest of :func:`normalise` (``text``) in UTF-8."""
    return hashlib.sha256(normalise(text).encode("utf-8")).hexdigest()


def document_id(source: str, record: str | None = None) -> str:
    """Stable id of a document: its source path plus, for JSON records, the record id.

    It does not depend on the content, so an edited document keeps its id and a sync can
    replace its chunks.
    """
    key = source if record is None else f"{source}#{record}"
    return hashlib.sha256(key.encode("utf-8")).hexdigest()[:32]


@dataclass(frozen=True)
class Location:
    """Where a chunk sits in its source, for citations.

    ``char_start`` / ``char_end`` are offsets into the document's text (the decoded file,
    or for HTML / JSON / PDF / DOCX / images the extracted text). ``row_start`` /
    ``row_end`` are 1-based row numbers as a spreadsheet shows them: the CSV record (header
    included), the Excel sheet row, the row of a Word table (header = 1). ``page`` is the
    1-based PDF page (or TIFF page). ``image_path`` and ``region`` (``x0, y0, x1, y1``
    pixels in the image as displayed) locate OCR text and ``image`` chunks.
    """

    source: str
    heading_path: tuple[str, ...] = ()
    page: int | None = None
    row_start: int | None = None
    row_end: int | None = None
    char_start: int | None = None
    char_end: int | None = None
    record: str | None = None
    image_path: str | None = None
    region: tuple[int, int, int, int] | None = None


@dataclass(frozen=True)
class Chunk:
    """One piece of a document, the unit that is embedded and retrieved."""

    text: str
    doc_id: str
    index: int
    kind: ChunkKind
    location: Location
    sha256: str = field(default="")

    def __post_init__(self) -> None:
        if not self.sha256:
            object.__setattr__(self, "sha256", content_hash(self.text))

    @property
    def id(self) -> str:
        """``<doc_id>:<index>``, unique within a knowledge base."""
        return f"{self.doc_id}:{self.index}"

    @property
    def embed_text(self) -> str:
        """The text to embed: the heading path in front, so a section's later chunks keep
        their context."""
        if not self.location.heading_path:
            return self.text
        return " > ".join(self.location.heading_path) + "\n" + self.text


@dataclass(frozen=True)
class Document:
    """One ingested document (a file, or one record of a JSON / JSONL file)."""

    doc_id: str
    source: str
    type: str
    sha256: str
    n_chunks: int
    n_chars: int
    record: str | None = None
    title: str | None = None

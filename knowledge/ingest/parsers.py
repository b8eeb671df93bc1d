"""Parsers by file type, and the registry that picks one for a path.

A parser takes the file's bytes and returns one :class:`Parsed` per document (one for
most files, one per record for JSON / JSONL) or raises :class:`DocumentError`.

PDF, DOCX, XLSX and image parsers import their library on first use (``_pdf.py``,
``_office.py``, ``images.py``); when it is not installed, each file of that type is
reported with the package to install.

Example:
    >>> from qingliang.knowledge.ingest.parsers import default_registry
    >>> registry = default_registry()
    >>> registry.parser_for("notes.md").name
    'markdown'
    >>> registry.parser_for("Scan.PNG").name
    'image'
    >>> registry.unsupported_reason("data.bin").split(";")[0]
    'unsupported file type .bin'
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import PurePath

from qingliang.knowledge.ingest._decode import decode
from qingliang.knowledge.ingest._html import SectionExtractor
from qingliang.knowledge.ingest._office import parse_docx, parse_xlsx
from qingliang.knowledge.ingest._pdf import parse_pdf
from qingliang.knowledge.ingest._tables import parse_table
from qingliang.knowledge.ingest.chunking import Block, Parsed, joined
from qingliang.knowledge.ingest.errors import DocumentError
from qingliang.knowledge.ingest.images import parse_image
from qingliang.knowledge.ingest.options import Chunking, JsonOptions, Parsers

ParseFn = Callable[[bytes, str, Parsers, Chunking], list[Parsed]]


@dataclass(frozen=True)
class Parser:
    name: str
    suffixes: tuple[str, ...]
    parse: ParseFn


# ------------------------------------------------------------------------ plain text


def parse_text(data: bytes, source: str, parsers: Parsers, chunking: Chunking) -> list[Parsed]:
    text = _nonempty(decode(data, parsers.text.encoding))
    return [Parsed(text=text, blocks=[Block(text=text, char_start=0)])]


def _nonempty(text: str) -> str:
    if not text.strip():
        raise DocumentError("empty: no text in the file")
    return text


# -------------------------------------------------------------------------- markdown

_FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})")
_ATX = re.compile(r"^ {0,3}(#{1,6})(?:[ \t]+(.*?))?(?:[ \t]+#+)?[ \t]*$")


def parse_markdown(data: bytes, source: str, parsers: Parsers, chunking: Chunking) -> list[Parsed]:
    """Sections start at ATX headings (``#`` … ``######``) outside code fences.

    A heading with no body of its own (directly followed by a sub-heading) yields no block:
    its title lives on in the sub-sections' heading paths.
    """
    text = _nonempty(decode(data, parsers.text.encoding))
    max_level = parsers.markdown.max_heading_level
    blocks: list[Block] = []
    stack: list[tuple[int, str]] = []
    fence: str | None = None
    start, pos = 0, 0
    path: tuple[str, ...] = ()
    title: str | None = None

    def close(end: int) -> None:
        body = text[start:end]
        lead = len(body) - len(body.lstrip())
        body = body.strip()
        lines = body.splitlines()
        has_body = len(lines) > 1 or (lines and not _ATX.match(lines[0]))
        if body and has_body:
            blocks.append(Block(text=body, heading_path=path, char_start=start + lead))

    for line in text.splitlines(keepends=True):
        if fence is not None:
            if line.strip().startswith(fence):
                fence = None
        elif m := _FENCE.match(line):
            fence = m.group(1)[:3]
        elif (m := _ATX.match(line.rstrip("\r\n"))) and len(m.group(1)) <= max_level:
            close(pos)
            level, heading = len(m.group(1)), (m.group(2) or "").strip()
            while stack and stack[-1][0] >= level:
                stack.pop()
            stack.append((level, heading))
            path = tuple(h for _, h in stack if h)
            title = title or heading or None
            start = pos
        pos += len(line)
    close(pos)
    return [Parsed(text=text, blocks=blocks, title=title)]


# ------------------------------------------------------------------------------ html


def parse_html(data: bytes, source: str, parsers: Parsers, chunking: Chunking) -> list[Parsed]:
    html = decode(data, parsers.text.encoding, html=True)
    extractor = SectionExtractor(parsers.html.strip_selectors)
    extractor.feed(html)
    extractor.close()
    blocks = [Block(text=t, heading_path=p) for p, t in extractor.sections]
    if not blocks:
        raise DocumentError("empty: no text in the page")
    text, blocks = joined(blocks)
    return [Parsed(text=text, blocks=blocks, title=extractor.title)]


# ------------------------------------------------------------------------------ csv


def parse_csv(data: bytes, source: str, parsers: Parsers, chunking: Chunking) -> list[Parsed]:
    text = _nonempty(decode(data, parsers.csv.encoding))
    tab = PurePath(source).suffix.lower() == ".tsv"
    name = PurePath(source).name
    return [parse_table(text, name, parsers.csv, chunking, delimiter="\t" if tab else None)]


# ----------------------------------------------------------------------------- json


def flatten(value: object, prefix: str = "") -> list[str]:
    """``key.path: value`` lines for a JSON value (lists as ``key[0]``).

    Example:
        >>> flatten({"a": {"b": [1, "x"]}, "c": None})
        ['a.b[0]: 1', 'a.b[1]: x', 'c: null']
    """
    if isinstance(value, dict):
        out: list[str] = []
        for k, v in value.items():
            out += flatten(v, f"{prefix}.{k}" if prefix else str(k))
        return out
    if isinstance(value, list):
        return [line for i, v in enumerate(value) for line in flatten(v, f"{prefix}[{i}]")]
    shown = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
    return [f"{prefix}: {shown}" if prefix else str(shown)]


def _record(obj: object, fallback_id: str, options: JsonOptions) -> Parsed:
    record = fallback_id
    if options.id_field and isinstance(obj, dict) and obj.get(options.id_field) is not None:
        record = str(obj[options.id_field])
    if options.text_fields:
        if not isinstance(obj, dict):
            return Parsed(text="", record=record, error="record is not an object")
        values = [obj[f] for f in options.text_fields if obj.get(f) not in (None, "")]
        if not values:
            return Parsed(
                text="",
                record=record,
                error=f"none of text_fields ({', '.join(options.text_fields)}) is present",
            )
        parts = [v if isinstance(v, str) else "\n".join(flatten(v)) for v in values]
        text = "\n\n".join(p.strip() for p in parts)
    else:
        text = "\n".join(flatten(obj)).strip()
    if not text:
        return Parsed(text="", record=record, error="empty record")
    return Parsed(text=text, blocks=[Block(text=text, char_start=0)], record=record)


def parse_json(data: bytes, source: str, parsers: Parsers, chunking: Chunking) -> list[Parsed]:
    """``.json``: an array is a list of records, anything else one record.
    ``.jsonl``: one record per line; a bad line is reported alone (``line N``)."""
    options = parsers.json_
    text = _nonempty(decode(data, parsers.text.encoding))
    items: list[tuple[str, object]] = []
    out: list[Parsed] = []
    if PurePath(source).suffix.lower() in (".jsonl", ".ndjson"):
        for n, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                items.append((f"line {n}", json.loads(line)))
            except json.JSONDecodeError as exc:
                out.append(Parsed(text="", record=f"line {n}", error=f"invalid JSON: {exc.msg}"))
    else:
        try:
            value = json.loads(text)
        except json.JSONDecodeError as exc:
            raise DocumentError(
                f"corrupt JSON: {exc.msg} at line {exc.lineno}, column {exc.colno}"
            ) from None
        items = (
            [(f"[{i}]", v) for i, v in enumerate(value)]
            if isinstance(value, list)
            else [("[0]", value)]
        )
    if options.mode == "flatten":
        lines = [ln for rid, obj in items for ln in flatten(obj, rid)]
        flat = "\n".join(lines)
        if not flat.strip():
            raise DocumentError("empty: no values in the JSON")
        return [*out, Parsed(text=flat, blocks=[Block(text=flat, char_start=0)])]
    out += [_record(obj, rid, options) for rid, obj in items]
    if not out:
        raise DocumentError("empty: no records")
    return out


# -------------------------------------------------------------------------- registry

#: Suffixes of the image parser.
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")


class ParserRegistry:
    """Parsers by file suffix (case-insensitive)."""

    def __init__(self, parsers: list[Parser] | None = None) -> None:
        self._by_suffix: dict[str, Parser] = {}
        for p in parsers or []:
            self.register(p)

    def register(self, parser: Parser) -> None:
        for s in parser.suffixes:
            self._by_suffix[s.lower()] = parser

    @property
    def suffixes(self) -> list[str]:
        return sorted(self._by_suffix)

    def parser_for(self, path: str | PurePath) -> Parser:
        """The parser for ``path``; :class:`DocumentError` says why there is none."""
        parser = self._by_suffix.get(PurePath(path).suffix.lower())
        if parser is None:
            raise DocumentError(self.unsupported_reason(path))
        return parser

    def unsupported_reason(self, path: str | PurePath) -> str:
        suffix = PurePath(path).suffix.lower()
        shown = suffix or "(no suffix)"
        return f"unsupported file type {shown}; supported: {', '.join(self.suffixes)}"


def default_registry(*, image_embedding: bool = False) -> ParserRegistry:
    """Every built-in parser.

    Args:
        image_embedding: An image-embedding model is configured (``spec.embedding.image``):
            every image also yields one ``image`` chunk, and an image with no text (or with
            OCR off) is a document rather than a failure.
    """
    return ParserRegistry(
        [
            Parser("text", (".txt", ".text", ".log"), parse_text),
            Parser("markdown", (".md", ".markdown"), parse_markdown),
            Parser("html", (".html", ".htm", ".xhtml"), parse_html),
            Parser("csv", (".csv", ".tsv"), parse_csv),
            Parser("json", (".json", ".jsonl", ".ndjson"), parse_json),
            Parser("pdf", (".pdf",), parse_pdf),
            Parser("docx", (".docx",), parse_docx),
            Parser("xlsx", (".xlsx", ".xlsm"), parse_xlsx),
            Parser(
                "image",
                IMAGE_SUFFIXES,
                functools.partial(parse_image, image_embedding=image_embedding),
            ),
        ]
    )

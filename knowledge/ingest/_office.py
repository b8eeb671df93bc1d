"""Office files: Word (``python-docx``) and Excel (``openpyxl``), imported on first use.

DOCX: heading styles (``Heading 1`` … ``Heading 9``, ``标题 1`` …, or an outline level)
start sections with a heading path, as Markdown headings do; tables become row chunks
with the header and a summary (a table with fewer than two non-empty rows is read as
text). XLSX / XLSM: every sheet is a table whose rows keep their sheet row numbers; the
sheet name is the heading path. Formulas are read as the values Excel last computed.

Both are zip archives: anything else (a legacy ``.doc`` / ``.xls``, a password-protected
file, junk) is refused before the library sees it, and so is an archive that would unpack
to more than 20 × ``parsers.max_file_mb``.
"""

from __future__ import annotations

import datetime as dt
import io
import logging
import re
import zipfile
from dataclasses import replace
from pathlib import PurePath

from qingliang.knowledge.ingest._optional import require
from qingliang.knowledge.ingest._tables import Row, line, split_header, table_blocks
from qingliang.knowledge.ingest.chunking import Block, Parsed
from qingliang.knowledge.ingest.errors import DocumentError, describe
from qingliang.knowledge.ingest.options import Chunking, Parsers

log = logging.getLogger(__name__)

_OLE2 = b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1"
#: How much larger than ``max_file_mb`` an archive may unpack to.
UNPACK_FACTOR = 20
_CONTENT_TYPE = re.compile(r"is not a Word file, content type is '([^']+)'")
_HEADING_STYLE = re.compile(r"^(?:heading|标题)\s*([1-9])$", re.I)


def check_zip(data: bytes, label: str, suffix: str, legacy: str, parsers: Parsers) -> None:
    """Refuse what is not a sane Office Open XML archive, with a reason."""
    if not data:
        raise DocumentError("empty file (0 bytes)")
    if data.startswith(_OLE2):
        raise DocumentError(
            f"not a {suffix} file: an OLE2 container (a legacy {legacy} file, or a "
            f"password-protected document); save it unprotected as {suffix}"
        )
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            unpacked = sum(i.file_size for i in archive.infolist())
    except (zipfile.BadZipFile, zipfile.LargeZipFile, ValueError, OSError) as exc:
        raise DocumentError(f"corrupt {label}: not a zip archive ({exc})") from None
    limit = UNPACK_FACTOR * parsers.max_file_mb * 2**20
    if unpacked > limit:
        raise DocumentError(
            f"zip bomb: unpacks to {unpacked / 2**20:.0f} MiB, over {UNPACK_FACTOR} × "
            f"parsers.max_file_mb ({limit / 2**20:.0f} MiB)"
        )


# ------------------------------------------------------------------------------ docx


def parse_docx(data: bytes, source: str, parsers: Parsers, chunking: Chunking) -> list[Parsed]:
    docx = require("docx", "DOCX", "python-docx")
    check_zip(data, "DOCX", ".docx", ".doc", parsers)
    try:
        document = docx.Document(io.BytesIO(data))
        items = list(document.iter_inner_content())
    except Exception as exc:  # python-docx raises many types for a broken package
        m = _CONTENT_TYPE.search(str(exc))
        if m:  # e.g. a workbook renamed to .docx
            raise DocumentError(f"not a Word document (content type {m.group(1)})") from None
        raise DocumentError(f"corrupt DOCX: {describe(exc)}") from None
    name = PurePath(source).name
    pieces: list[tuple[str, list[Block]]] = []  # document text part, its blocks
    stack: list[tuple[int, str]] = []
    path: tuple[str, ...] = ()
    lines: list[str] = []
    has_body = False
    title: str | None = None
    n_tables = 0

    def flush() -> None:
        nonlocal lines, has_body
        if has_body:
            text = "\n".join(lines)
            pieces.append((text, [Block(text=text, heading_path=path)]))
        lines, has_body = [], False

    for item in items:
        if hasattr(item, "rows"):  # a table
            rows = _docx_rows(item)
            try:
                (_, header), body = split_header(rows, 0)
            except DocumentError:  # a layout table (one row): read its text
                filled = [line(r) for _, r in rows if any(c.strip() for c in r)]
                lines += filled
                has_body = has_body or bool(filled)
                continue
            flush()
            n_tables += 1
            where = f" ({' > '.join(path)})" if path else ""
            blocks = table_blocks(
                header,
                body,
                chunking,
                caption=f"Table {n_tables} of {name}{where}",
                sample_rows=parsers.csv.sample_rows,
                heading_path=path,
            )
            pieces.append(("\n".join(line(r) for r in [header] + [r for _, r in body]), blocks))
            continue
        text = (item.text or "").strip()
        if not text:
            continue
        level = _heading_level(item)
        if level:
            flush()
            while stack and stack[-1][0] >= level:
                stack.pop()
            stack.append((level, text))
            path = tuple(h for _, h in stack)
            lines = [text]
            title = title or text
        else:
            if _style_name(item).lower() == "title":
                title = text
            lines.append(text)
            has_body = True
    flush()
    if not pieces:
        raise DocumentError("empty: no text in the document")
    core_title = (getattr(document.core_properties, "title", None) or "").strip()
    text, blocks = _assemble(pieces)
    return [Parsed(text=text, blocks=blocks, title=core_title or title)]


def _assemble(pieces: list[tuple[str, list[Block]]]) -> tuple[str, list[Block]]:
    """Join the parts into the document text; text blocks get their offsets."""
    parts: list[str] = []
    out: list[Block] = []
    pos = 0
    for text, blocks in pieces:
        if parts:
            parts.append("\n\n")
            pos += 2
        out += [b if b.atomic else replace(b, char_start=pos) for b in blocks]
        parts.append(text)
        pos += len(text)
    return "".join(parts), out


def _docx_rows(table: object) -> list[Row]:
    rows: list[Row] = []
    for n, row in enumerate(table.rows, 1):  # type: ignore[attr-defined]
        rows.append((n, [cell.text for cell in row.cells]))
    return rows


def _style_name(paragraph: object) -> str:
    style = getattr(paragraph, "style", None)
    return (getattr(style, "name", None) or "") if style is not None else ""


def _heading_level(paragraph: object) -> int:
    """1-9 for a heading (by style, its base styles, or an outline level), else 0."""
    try:
        style = paragraph.style  # type: ignore[attr-defined]
    except Exception:  # a style id the styles part does not define
        style = None
    for _ in range(10):  # base-style chains are short; guard against a cycle
        if style is None:
            break
        m = _HEADING_STYLE.match((style.name or "").strip())
        if m:
            return int(m.group(1))
        style = style.base_style
    levels = paragraph._p.xpath("./w:pPr/w:outlineLvl/@w:val")  # type: ignore[attr-defined]
    if levels and str(levels[0]).isdigit() and int(levels[0]) < 9:
        return int(levels[0]) + 1
    return 0


# ------------------------------------------------------------------------------ xlsx


def parse_xlsx(data: bytes, source: str, parsers: Parsers, chunking: Chunking) -> list[Parsed]:
    openpyxl = require("openpyxl", "XLSX", "openpyxl")
    check_zip(data, "XLSX", ".xlsx", ".xls", parsers)
    options = parsers.xlsx
    try:
        workbook = openpyxl.load_workbook(io.BytesIO(data), read_only=True, data_only=True)
    except Exception as exc:  # openpyxl raises many types for a broken package
        raise DocumentError(f"corrupt XLSX: {describe(exc)}") from None
    name = PurePath(source).name
    try:
        names = list(workbook.sheetnames)
        unknown = [s for s in options.sheets if s not in names]
        if unknown:
            raise DocumentError(
                f"xlsx.sheets names sheets the workbook does not have: {', '.join(unknown)}; "
                f"its sheets: {', '.join(names)}"
            )
        wanted = [s for s in names if not options.sheets or s in options.sheets]
        parts: list[str] = []
        blocks: list[Block] = []
        skipped: list[str] = []
        for sheet in wanted:
            ws = workbook[sheet]
            if not hasattr(ws, "iter_rows"):  # a chart sheet
                skipped.append(f"{sheet}: a chart sheet")
                continue
            try:
                rows = _sheet_rows(ws)
                (_, header), body = split_header(rows, options.header_row)
            except DocumentError as exc:
                skipped.append(f"{sheet}: {exc.reason.removeprefix('empty table: ')}")
                continue
            blocks += table_blocks(
                header,
                body,
                chunking,
                caption=f"Sheet {sheet} of {name}",
                sample_rows=parsers.csv.sample_rows,
                heading_path=(sheet,),
            )
            parts.append("\n".join([f"Sheet {sheet}", line(header), *(line(r) for _, r in body)]))
        title = (workbook.properties.title or "").strip() if workbook.properties else ""
    except DocumentError:
        raise
    except Exception as exc:
        raise DocumentError(f"corrupt XLSX: {describe(exc)}") from None
    finally:
        workbook.close()
    if not blocks:
        raise DocumentError(f"empty: no data in any sheet ({'; '.join(skipped)})")
    if skipped:
        log.debug("%s: sheets skipped: %s", source, "; ".join(skipped))
    return [Parsed(text="\n\n".join(parts), blocks=blocks, title=title or name)]


def _sheet_rows(ws: object) -> list[Row]:
    """Non-empty rows with their sheet row numbers; columns empty in every row dropped."""
    ws.reset_dimensions()  # type: ignore[attr-defined]  # trust the cells, not the header
    rows: list[Row] = []
    for n, values in enumerate(ws.iter_rows(min_row=1, values_only=True), 1):  # type: ignore[attr-defined]
        cells = [cell_text(v) for v in values]
        if any(c.strip() for c in cells):
            rows.append((n, cells))
    width = max((len(c) for _, c in rows), default=0)
    used = [i for i in range(width) if any(i < len(c) and c[i].strip() for _, c in rows)]
    return [(n, [c[i] if i < len(c) else "" for i in used]) for n, c in rows]


def cell_text(value: object) -> str:
    """A cell value as Excel would show it, roughly: ``3`` not ``3.0``, ISO dates.

    Example:
        >>> [cell_text(v) for v in (None, 3.0, 0.1 + 0.2, True, dt.datetime(2024, 1, 2))]
        ['', '3', '0.3', 'TRUE', '2024-01-02']
    """
    if value is None:
        return ""
    if isinstance(value, bool):
        return "TRUE" if value else "FALSE"
    if isinstance(value, float):
        if value.is_integer() and abs(value) < 1e15:
            return str(int(value))
        return f"{value:.15g}"
    if isinstance(value, dt.datetime):
        if value.time() == dt.time(0):
            return value.date().isoformat()
        return value.replace(microsecond=0).isoformat(sep=" ")
    if isinstance(value, (dt.date, dt.time)):
        return value.isoformat()
    return str(value)

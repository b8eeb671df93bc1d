"""Tables (CSV / TSV, Excel sheets, Word tables): row-group chunks that repeat the header,
plus one summary chunk per table."""

from __future__ import annotations

import csv
import io

from qingliang.knowledge.ingest.chunking import Block, Parsed
from qingliang.knowledge.ingest.errors import DocumentError
from qingliang.knowledge.ingest.options import Chunking, CsvOptions

#: A table row: its 1-based number as the source shows it, and its cells.
Row = tuple[int, list[str]]


def line(cells: list[str]) -> str:
    """One row as ``| a | b |``, whitespace inside cells collapsed."""
    return "| " + " | ".join(" ".join(c.split()) for c in cells) + " |"


def split_header(rows: list[Row], header_row: int) -> tuple[Row, list[Row]]:
    """The header (the first non-empty row after skipping ``header_row`` rows) and the
    non-empty rows below it; :class:`DocumentError` when either is missing."""
    numbered = [(n, r) for n, r in rows if n > header_row and any(c.strip() for c in r)]
    if not numbered:
        raise DocumentError("empty table: no header row")
    if len(numbered) == 1:
        raise DocumentError("empty table: a header but no rows")
    return numbered[0], numbered[1:]


def table_blocks(
    header: list[str],
    rows: list[Row],
    chunking: Chunking,
    *,
    caption: str,
    sample_rows: int,
    heading_path: tuple[str, ...] = (),
) -> list[Block]:
    """Row-group blocks and a summary block for one table.

    Rows are packed into blocks of at most ``max_chars`` (a longer row stays whole); each
    starts with the header line when ``keep_table_headers`` is on (the first one always
    does). The summary reads ``<caption>: N rows, M columns: …`` and quotes the first
    ``sample_rows`` rows.
    """
    head = line(header)
    blocks: list[Block] = []
    group: list[Row] = []
    size = 0

    def emit() -> None:
        first = not blocks
        lines = [line(r) for _, r in group]
        if chunking.keep_table_headers or first:
            lines.insert(0, head)
        blocks.append(
            Block(
                text="\n".join(lines),
                kind="table-row",
                heading_path=heading_path,
                row_start=group[0][0],
                row_end=group[-1][0],
                atomic=True,
            )
        )

    for n, row in rows:
        line_len = len(line(row)) + 1
        if group and size + line_len > chunking.max_chars:
            emit()
            group, size = [], 0
        if not group:
            size = len(head) + 1
        group.append((n, row))
        size += line_len
    emit()
    samples = "\n".join(line(r) for _, r in rows[:sample_rows])
    summary = (
        f"{caption}: {len(rows)} rows, {len(header)} columns: "
        + ", ".join(" ".join(c.split()) for c in header)
        + (f"\nSample rows:\n{head}\n{samples}" if samples else "")
    )
    blocks.append(
        Block(
            text=summary,
            kind="table-summary",
            heading_path=heading_path,
            row_start=rows[0][0],
            row_end=rows[-1][0],
            atomic=True,
        )
    )
    return blocks


def parse_table(
    text: str, name: str, options: CsvOptions, chunking: Chunking, delimiter: str | None = None
) -> Parsed:
    """A CSV / TSV file; rows are numbered as a spreadsheet numbers them (the first record
    of the file is row 1)."""
    try:
        records = list(
            csv.reader(io.StringIO(text, newline=""), delimiter=delimiter or options.delimiter)
        )
    except csv.Error as exc:
        raise DocumentError(f"corrupt table: {exc}") from None
    (_, header), rows = split_header(
        [(i + 1, r) for i, r in enumerate(records)], options.header_row
    )
    blocks = table_blocks(
        header, rows, chunking, caption=f"Table {name}", sample_rows=options.sample_rows
    )
    return Parsed(text=text, blocks=blocks, title=name)

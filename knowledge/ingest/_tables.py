"""CSV / TSV tables: row-group chunks that repeat the header, plus one summary chunk."""

from __future__ import annotations

import csv
import io

from qingliang.knowledge.ingest.chunking import Block, Parsed
from qingliang.knowledge.ingest.errors import DocumentError
from qingliang.knowledge.manifest import Chunking, CsvOptions


def _line(cells: list[str]) -> str:
    return "| " + " | ".join(" ".join(c.split()) for c in cells) + " |"


def parse_table(
    text: str, name: str, options: CsvOptions, chunking: Chunking, delimiter: str | None = None
) -> Parsed:
    """Rows are packed into chunks of at most ``max_chars`` (a longer row stays whole).

    Each row chunk starts with the header line when ``keep_table_headers`` is on; rows are
    numbered as a spreadsheet numbers them (the first record of the file is row 1).
    """
    try:
        records = list(
            csv.reader(io.StringIO(text, newline=""), delimiter=delimiter or options.delimiter)
        )
    except csv.Error as exc:
        raise DocumentError(f"corrupt table: {exc}") from None
    numbered = [(i + 1, r) for i, r in enumerate(records) if any(c.strip() for c in r)]
    numbered = [(n, r) for n, r in numbered if n > options.header_row]
    if not numbered:
        raise DocumentError("empty table: no header row")
    (_, header), rows = numbered[0], numbered[1:]
    if not rows:
        raise DocumentError("empty table: a header but no rows")
    head = _line(header)
    blocks: list[Block] = []
    group: list[tuple[int, list[str]]] = []
    size = 0

    def emit() -> None:
        first = not blocks
        lines = [_line(r) for _, r in group]
        if chunking.keep_table_headers or first:
            lines.insert(0, head)
        blocks.append(
            Block(
                text="\n".join(lines),
                kind="table-row",
                row_start=group[0][0],
                row_end=group[-1][0],
                atomic=True,
            )
        )

    for n, row in rows:
        line_len = len(_line(row)) + 1
        if group and size + line_len > chunking.max_chars:
            emit()
            group, size = [], 0
        if not group:
            size = len(head) + 1
        group.append((n, row))
        size += line_len
    emit()
    samples = "\n".join(_line(r) for _, r in rows[: options.sample_rows])
    summary = (
        f"Table {name}: {len(rows)} rows, {len(header)} columns: "
        + ", ".join(" ".join(c.split()) for c in header)
        + (f"\nSample rows:\n{head}\n{samples}" if samples else "")
    )
    blocks.append(
        Block(
            text=summary,
            kind="table-summary",
            row_start=rows[0][0],
            row_end=rows[-1][0],
            atomic=True,
        )
    )
    return Parsed(text=text, blocks=blocks, title=name)

"""PDF, DOCX, XLSX and image (OCR) ingestion on files built here, at test time.

PDFs are written by hand (a few objects with a Helvetica text stream), Word and Excel files
with python-docx / openpyxl, images with Pillow. OCR runs on few images (about a second
each on one core): one mixed folder, ingested twice, carries most OCR assertions.
"""

from __future__ import annotations

import io
import re
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path

import docx
import openpyxl
import pypdf
import pytest
from PIL import Image, ImageDraw, ImageFont

from qingliang.knowledge.ingest import (
    Chunk,
    IngestOptions,
    IngestReport,
    Parsed,
    default_registry,
    ingest_paths,
    resolve_sources,
)
from qingliang.knowledge.ingest._optional import require
from qingliang.knowledge.ingest.chunking import chunk_document
from qingliang.knowledge.ingest.errors import DocumentError
from qingliang.knowledge.ingest.images import Line, group_lines, load_frames
from qingliang.knowledge.ingest.options import (
    Chunking,
    ImageOptions,
    Parsers,
    PdfOptions,
    Source,
    XlsxOptions,
)
from qingliang.knowledge.manifest import KnowledgeBase

CJK_FONT = Path("/usr/share/fonts/truetype/wqy/wqy-zenhei.ttc")


def parse(path: str, data: bytes, parsers: Parsers | None = None, **chunking: object) -> list:
    """The registry's parser for ``path`` on ``data`` (what ingest_paths runs)."""
    parser = default_registry().parser_for(path)
    return parser.parse(data, path, parsers or Parsers(), Chunking(**chunking))  # type: ignore[arg-type]


def chunks_of(parsed: Parsed, source: str, **chunking: object) -> list[Chunk]:
    """Chunks of one parsed document, as ingest_paths cuts them."""
    return chunk_document(parsed, source, Chunking(**chunking))  # type: ignore[arg-type]


def reason_of(report: IngestReport, path: Path) -> str:
    return dict(report.errors)[str(path)]


# ------------------------------------------------------------------------------ builders


def _pdf_string(text: str) -> str:
    return text.replace("\\", "\\\\").replace("(", "\\(").replace(")", "\\)")


def make_pdf(pages: list[list[str] | None], title: str | None = None) -> bytes:
    """A valid PDF: one page per entry, its lines in Helvetica; ``None`` is a "scanned"
    page (one image, no text)."""
    page_ids = [5 + 2 * i for i in range(len(pages))]
    kids = " ".join(f"{p} 0 R" for p in page_ids)
    objs: dict[int, bytes] = {
        1: b"<< /Type /Catalog /Pages 2 0 R >>",
        2: f"<< /Type /Pages /Kids [{kids}] /Count {len(pages)} >>".encode(),
        3: b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica /Encoding /WinAnsiEncoding >>",
        4: b"<< /Type /XObject /Subtype /Image /Width 1 /Height 1 /ColorSpace /DeviceGray "
        b"/BitsPerComponent 8 /Length 1 >>\nstream\n\x80\nendstream",
    }
    for pid, lines in zip(page_ids, pages, strict=True):
        if lines is None:
            stream = "q 200 0 0 200 100 400 cm /Im1 Do Q"
        else:
            shown = " ".join(f"({_pdf_string(t)}) Tj T*" for t in lines)
            stream = f"BT /F1 12 Tf 72 720 Td 16 TL {shown} ET"
        objs[pid] = (
            "<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Resources << /Font "
            f"<< /F1 3 0 R >> /XObject << /Im1 4 0 R >> >> /Contents {pid + 1} 0 R >>"
        ).encode()
        objs[pid + 1] = f"<< /Length {len(stream)} >>\nstream\n{stream}\nendstream".encode()
    info = ""
    if title:
        objs[max(objs) + 1] = f"<< /Title ({_pdf_string(title)}) >>".encode()
        info = f" /Info {max(objs)} 0 R"
    out = bytearray(b"%PDF-1.4\n")
    offsets = {}
    for num in sorted(objs):
        offsets[num] = len(out)
        out += f"{num} 0 obj\n".encode() + objs[num] + b"\nendobj\n"
    xref = len(out)
    out += f"xref\n0 {len(objs) + 1}\n0000000000 65535 f \n".encode()
    out += b"".join(f"{offsets[n]:010d} 00000 n \n".encode() for n in sorted(objs))
    trailer = f"trailer\n<< /Size {len(objs) + 1} /Root 1 0 R{info} >>\n"
    out += f"{trailer}startxref\n{xref}\n%%EOF\n".encode()
    return bytes(out)


def encrypted_pdf(user_password: str) -> bytes:
    writer = pypdf.PdfWriter(clone_from=pypdf.PdfReader(io.BytesIO(make_pdf([["Secret"]]))))
    writer.encrypt(user_password=user_password, owner_password="owner", algorithm="AES-128")
    buf = io.BytesIO()
    writer.write(buf)
    return buf.getvalue()


def make_docx() -> bytes:
    document = docx.Document()
    document.add_paragraph("Staff Handbook", style="Title")
    document.add_paragraph("Read this first.")
    document.add_heading("General rules", level=1)
    document.add_paragraph("Everyone signs in at the front desk.")
    document.add_heading("Fees", level=2)
    document.add_paragraph("Fees are listed below.")
    table = document.add_table(rows=3, cols=2)
    for i, row in enumerate([("Item", "Fee"), ("Parking", "5"), ("Locker", "2")]):
        for j, value in enumerate(row):
            table.cell(i, j).text = value
    document.add_paragraph("Fees are due monthly.")
    document.add_heading("Annex", level=1)
    document.add_paragraph("Contact the office.")
    buf = io.BytesIO()
    document.save(buf)
    return buf.getvalue()


def make_xlsx(cached: dict[str, str] | None = None) -> bytes:
    """Sheet ``Sales`` holds a table at B3:D6 (a blank row 5) and a formula in C7; sheet
    ``Blank`` is empty; sheet ``Notes`` has a header only. ``cached`` writes the values
    Excel would have computed for formula cells (openpyxl itself never does)."""
    import datetime as dt

    wb = openpyxl.Workbook()
    ws = wb.active
    ws.title = "Sales"
    ws["B3"], ws["C3"], ws["D3"] = "region", "amount", "date"
    ws["B4"], ws["C4"], ws["D4"] = "north", 10.0, dt.date(2024, 1, 2)
    ws["B6"], ws["C6"] = "south", 2.5
    ws["B7"], ws["C7"] = "double north", "=C4*2"
    wb.create_sheet("Blank")
    wb.create_sheet("Notes")["A1"] = "just a header"
    buf = io.BytesIO()
    wb.save(buf)
    data = buf.getvalue()
    if not cached:
        return data
    out = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(data)) as src, zipfile.ZipFile(out, "w") as dst:
        for item in src.infolist():
            body = src.read(item.filename)
            if item.filename == "xl/worksheets/sheet1.xml":
                xml = body.decode()
                for ref, value in cached.items():
                    xml = re.sub(
                        rf'(<c r="{ref}"[^>]*>)(<f>[^<]*</f>)(<v\s*/>|<v></v>)?',
                        rf"\1\2<v>{value}</v>",
                        xml,
                    )
                body = xml.encode()
            dst.writestr(item, body)
    return out.getvalue()


@dataclass(frozen=True)
class Drawn:
    path: Path
    boxes: dict[str, tuple[int, int, int, int]]  # drawn line -> its pixel box
    size: tuple[int, int]


def draw_lines(path: Path, lines: dict[str, tuple[int, int]], size=(900, 420), font=None) -> Drawn:
    image = Image.new("RGB", size, "white")
    pen = ImageDraw.Draw(image)
    font = font or ImageFont.load_default(size=40)
    boxes = {}
    for text, xy in lines.items():
        pen.text(xy, text, fill="black", font=font)
        boxes[text] = tuple(int(v) for v in pen.textbbox(xy, text, font=font))
    image.save(path)
    return Drawn(path, boxes, size)  # type: ignore[arg-type]


def squash(text: str) -> str:
    """Lower case without spaces: OCR sometimes drops a space between two words."""
    return re.sub(r"\s+", "", text).lower()


# ---------------------------------------------------------------------------------- PDF


def test_pdf_chunks_cite_their_page_and_quote_the_document_text() -> None:
    data = make_pdf(
        [["Chapter one", "The fox (quick) jumps."], ["Second page text"]], title="Field Guide"
    )
    (parsed,) = parse("guide.pdf", data)
    assert parsed.title == "Field Guide"
    chunks = chunks_of(parsed, "guide.pdf")
    assert [(c.location.page, c.text) for c in chunks] == [
        (1, "Chapter one\nThe fox (quick) jumps."),
        (2, "Second page text"),
    ]
    for c in chunks:
        assert parsed.text[c.location.char_start : c.location.char_end] == c.text


def test_pdf_long_page_splits_but_never_crosses_a_page() -> None:
    long_page = [f"Sentence number {i} of the long first page." for i in range(30)]
    (parsed,) = parse("long.pdf", make_pdf([long_page, ["Short second page."]]))
    chunks = chunks_of(parsed, "long.pdf", max_chars=200, overlap_chars=20)
    pages = [c.location.page for c in chunks]
    assert pages.count(1) > 3 and pages[-1] == 2 and pages == sorted(pages)
    assert all(len(c.text) <= 200 for c in chunks)
    assert "Short second page." not in " ".join(c.text for c in chunks if c.location.page == 1)


def test_pdf_page_range_is_honoured() -> None:
    data = make_pdf([["Alpha page"], ["Beta page"], ["Gamma page"]])
    (parsed,) = parse("r.pdf", data, Parsers(pdf=PdfOptions(first_page=2, last_page=2)))
    assert [(b.page, b.text) for b in parsed.blocks] == [(2, "Beta page")]
    (tail,) = parse("r.pdf", data, Parsers(pdf=PdfOptions(first_page=2, last_page=99)))
    assert [b.page for b in tail.blocks] == [2, 3]
    with pytest.raises(DocumentError, match=r"first_page \(5\) is past the last page .*3 pages"):
        parse("r.pdf", data, Parsers(pdf=PdfOptions(first_page=5)))


def test_pdf_password_protection() -> None:
    with pytest.raises(DocumentError, match="encrypted PDF: it needs a password"):
        parse("locked.pdf", encrypted_pdf("s3cret"))
    # only an owner password (printing / copying limits): the text reads as usual
    (parsed,) = parse("limited.pdf", encrypted_pdf(""))
    assert parsed.text == "Secret"


def test_scanned_pdf_pages_are_reported_not_dropped(tmp_path: Path) -> None:
    scanned = tmp_path / "scan.pdf"
    scanned.write_bytes(make_pdf([None, None]))
    mixed = tmp_path / "mixed.pdf"
    mixed.write_bytes(make_pdf([["Typed cover page"], None]))
    report = ingest_paths([scanned, mixed], IngestOptions())
    whole = reason_of(report, scanned)
    assert "OCR of PDF pages is not supported" in whole and whole.endswith("(pages 1-2)")
    assert "OCR of PDF pages is not supported" in dict(report.errors)[f"{mixed}#page 2"]
    assert [(c.location.source, c.location.page) for c in report.chunks] == [(str(mixed), 1)]


def test_broken_pdfs_are_reported_with_a_reason(tmp_path: Path) -> None:
    good = make_pdf([["Fine text"]])
    files = {
        "truncated.pdf": good[: len(good) // 2],
        "junk.pdf": b"\x00\x01 not a pdf at all " * 20,
        "empty.pdf": b"",
        "header-only.pdf": b"%PDF-1.4 broken",
        "blank.pdf": make_pdf([[], []]),
    }
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    report = ingest_paths([tmp_path / n for n in files], IngestOptions())
    reasons = {Path(p).name: r for p, r in report.errors}
    assert reasons["truncated.pdf"].startswith("corrupt PDF: ")
    assert reasons["junk.pdf"] == "corrupt PDF: no `%PDF-` header (not a PDF file)"
    assert reasons["empty.pdf"] == "empty file (0 bytes)"
    assert reasons["header-only.pdf"].startswith("corrupt PDF: ")
    assert reasons["blank.pdf"] == "empty: no text on pages 1-2"
    assert not report.chunks


# --------------------------------------------------------------------------------- DOCX


def test_docx_headings_paragraphs_and_tables() -> None:
    (parsed,) = parse("handbook.docx", make_docx())
    assert parsed.title == "Staff Handbook"
    chunks = chunks_of(parsed, "handbook.docx")
    got = [(c.kind, c.location.heading_path, c.text) for c in chunks]
    assert got[:3] == [
        ("text", (), "Staff Handbook\nRead this first."),
        ("text", ("General rules",), "General rules\nEveryone signs in at the front desk."),
        ("text", ("General rules", "Fees"), "Fees\nFees are listed below."),
    ]
    rows = [c for c in chunks if c.kind == "table-row"]
    assert [(c.text, c.location.row_start, c.location.row_end) for c in rows] == [
        ("| Item | Fee |\n| Parking | 5 |\n| Locker | 2 |", 2, 3)
    ]
    assert rows[0].location.heading_path == ("General rules", "Fees")
    (summary,) = [c for c in chunks if c.kind == "table-summary"]
    assert summary.text.startswith(
        "Table 1 of handbook.docx (General rules > Fees): 2 rows, 2 columns: Item, Fee"
    )
    assert got[-2:] == [
        ("text", ("General rules", "Fees"), "Fees are due monthly."),
        ("text", ("Annex",), "Annex\nContact the office."),
    ]
    for c in chunks:
        if c.kind == "text":
            assert parsed.text[c.location.char_start : c.location.char_end] == c.text


def test_docx_custom_heading_styles_and_layout_tables() -> None:
    from docx.enum.style import WD_STYLE_TYPE

    document = docx.Document()
    custom = document.styles.add_style("Chapter Title", WD_STYLE_TYPE.PARAGRAPH)
    custom.base_style = document.styles["Heading 1"]
    document.add_paragraph("Chapter A", style="Chapter Title")
    document.add_paragraph("Body of A.")
    layout = document.add_table(rows=1, cols=2)
    layout.cell(0, 0).text, layout.cell(0, 1).text = "Signed", "2024-05-01"
    buf = io.BytesIO()
    document.save(buf)
    (parsed,) = parse("c.docx", buf.getvalue())
    (block,) = parsed.blocks
    assert block.heading_path == ("Chapter A",)
    assert block.text == "Chapter A\nBody of A.\n| Signed | 2024-05-01 |"


def test_broken_docx_files(tmp_path: Path) -> None:
    bomb = io.BytesIO()
    with zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("word/document.xml", b"\0" * (2 * 2**20))
    files = {
        "notzip.docx": b"PK\x03\x04 but not really a zip",
        "legacy.docx": b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + b"\0" * 512,
        "sheet.docx": make_xlsx(),
        "bomb.docx": bomb.getvalue(),
        "empty.docx": b"",
    }
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    opts = IngestOptions(parsers=Parsers(max_file_mb=0.05))  # unpacks to at most 1 MiB
    reasons = {Path(p).name: r for p, r in ingest_paths(sorted(tmp_path.iterdir()), opts).errors}
    assert reasons["notzip.docx"].startswith("corrupt DOCX: not a zip archive")
    assert reasons["legacy.docx"].startswith("not a .docx file: an OLE2 container (a legacy .doc")
    assert reasons["sheet.docx"].startswith("not a Word document (content type application/")
    assert reasons["bomb.docx"] == (
        "zip bomb: unpacks to 2 MiB, over 20 × parsers.max_file_mb (1 MiB)"
    )
    assert reasons["empty.docx"] == "empty file (0 bytes)"


# --------------------------------------------------------------------------------- XLSX


def test_xlsx_rows_keep_sheet_numbers_and_the_sheet_name() -> None:
    (parsed,) = parse("sales.xlsx", make_xlsx(cached={"C7": "20"}))
    assert parsed.title == "sales.xlsx"
    chunks = chunks_of(parsed, "sales.xlsx")
    rows, summary = chunks
    assert rows.kind == "table-row" and rows.location.heading_path == ("Sales",)
    assert rows.text == (
        "| region | amount | date |\n"
        "| north | 10 | 2024-01-02 |\n"
        "| south | 2.5 |  |\n"
        "| double north | 20 |  |"  # the formula's cached value
    )
    assert (rows.location.row_start, rows.location.row_end) == (4, 7)  # as Excel shows them
    assert summary.kind == "table-summary"
    assert summary.text.startswith("Sheet Sales of sales.xlsx: 3 rows, 3 columns: region, amount")


def test_xlsx_formula_without_a_cached_value_reads_empty() -> None:
    (parsed,) = parse("sales.xlsx", make_xlsx())
    assert "| double north |  |  |" in parsed.blocks[0].text


def test_xlsx_rows_chunk_with_the_header_each_time() -> None:
    wb = openpyxl.Workbook()
    ws = wb.active
    ws.title = "Stock"
    ws.append(["sku", "description"])
    for i in range(40):
        ws.append([f"S{i:03d}", f"item number {i} in the warehouse"])
    buf = io.BytesIO()
    wb.save(buf)
    (parsed,) = parse("stock.xlsx", buf.getvalue(), max_chars=200, overlap_chars=0)
    rows = [b for b in parsed.blocks if b.kind == "table-row"]
    assert len(rows) > 3
    assert all(b.text.startswith("| sku | description |\n") for b in rows)
    assert rows[0].row_start == 2 and rows[-1].row_end == 41
    assert all(a.row_end + 1 == b.row_start for a, b in zip(rows, rows[1:], strict=False))


def test_xlsx_sheet_filter_and_header_row() -> None:
    data = make_xlsx()
    with pytest.raises(DocumentError) as info:
        parse("s.xlsx", data, Parsers(xlsx=XlsxOptions(sheets=["Sales", "Totals"])))
    assert info.value.reason == (
        "xlsx.sheets names sheets the workbook does not have: Totals; "
        "its sheets: Sales, Blank, Notes"
    )
    with pytest.raises(DocumentError, match=r"no data in any sheet \(Notes: a header but no"):
        parse("s.xlsx", data, Parsers(xlsx=XlsxOptions(sheets=["Notes"])))
    # header_row 3: rows 1-3 are skipped, row 4 becomes the header
    (parsed,) = parse("s.xlsx", data, Parsers(xlsx=XlsxOptions(header_row=3)))
    assert parsed.blocks[0].text.startswith("| north | 10 | 2024-01-02 |\n| south |")
    assert parsed.blocks[0].row_start == 6


def test_xlsx_without_data_and_broken_workbooks(tmp_path: Path) -> None:
    wb = openpyxl.Workbook()
    wb.create_sheet("Second")
    buf = io.BytesIO()
    wb.save(buf)
    files = {
        "blank.xlsx": buf.getvalue(),
        "legacy.xls.xlsx": b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + b"\0" * 512,
        "junk.xlsm": b"\x89PNG\r\n\x1a\n" + b"\x00" * 100,
        "word.xlsx": make_docx(),
    }
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    reasons = {
        Path(p).name: r for p, r in ingest_paths(sorted(tmp_path.iterdir()), IngestOptions()).errors
    }
    assert reasons["blank.xlsx"] == (
        "empty: no data in any sheet (Sheet: no header row; Second: no header row)"
    )
    assert reasons["legacy.xls.xlsx"].startswith("not a .xlsx file: an OLE2 container")
    assert reasons["junk.xlsm"].startswith("corrupt XLSX: not a zip archive")
    assert reasons["word.xlsx"].startswith("corrupt XLSX: ")


# ------------------------------------------------------------------------------- images


def test_image_load_refuses_bombs_junk_and_truncation(monkeypatch: pytest.MonkeyPatch) -> None:
    buf = io.BytesIO()
    Image.new("RGB", (300, 200), "white").save(buf, "PNG")
    png = buf.getvalue()
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 50_000)  # Pillow only warns up to 2×
    with (
        pytest.warns(Image.DecompressionBombWarning),
        pytest.raises(DocumentError, match=r"decompression bomb: 300×200 = 60,000 pixels"),
    ):
        load_frames(png)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 20_000)  # Pillow itself raises past 2×
    with pytest.raises(DocumentError, match=r"decompression bomb: .*PIL.Image.MAX_IMAGE_PIXELS"):
        load_frames(png)
    monkeypatch.undo()
    with pytest.raises(DocumentError, match="not an image Pillow can read"):
        load_frames(b"GIF89a? no" * 10 + b"\x00" * 40)
    jpeg = io.BytesIO()
    Image.new("RGB", (300, 200), "red").save(jpeg, "JPEG")
    with pytest.raises(DocumentError, match=r"(?i)corrupt image: .*truncated"):
        load_frames(jpeg.getvalue()[:400])
    with pytest.raises(DocumentError, match=r"empty file \(0 bytes\)"):
        load_frames(b"")


def test_image_frames_orientation_and_transparency() -> None:
    tiff = io.BytesIO()
    first, second = Image.new("RGB", (40, 20), "white"), Image.new("L", (30, 60), 0)
    first.save(tiff, "TIFF", save_all=True, append_images=[second])
    assert [f.size for f in load_frames(tiff.getvalue())] == [(40, 20), (30, 60)]
    rotated = io.BytesIO()
    exif = Image.Exif()
    exif[0x0112] = 6  # displayed rotated 90° clockwise
    Image.new("RGB", (40, 20), "white").save(rotated, "JPEG", exif=exif)
    assert load_frames(rotated.getvalue())[0].size == (20, 40)
    clear = io.BytesIO()
    Image.new("RGBA", (10, 10), (0, 0, 0, 0)).save(clear, "PNG")
    (frame,) = load_frames(clear.getvalue())
    assert frame.mode == "RGB" and frame.getpixel((5, 5)) == (255, 255, 255)


def test_ocr_lines_group_into_paragraphs_by_gaps() -> None:
    lines = [
        Line((10, 10, 200, 40), "Invoice 4711", 0.9),
        Line((220, 12, 400, 38), "paid", 0.8),  # same visual row
        Line((10, 50, 300, 80), "Acme Corp", 0.95),
        Line((10, 300, 300, 330), "Total 250", 0.7),  # far below: a new paragraph
    ]
    assert group_lines(lines, max_chars=800) == [
        ("Invoice 4711 paid\nAcme Corp", (10, 10, 400, 80), pytest.approx(0.8833, abs=1e-3)),
        ("Total 250", (10, 300, 300, 330), 0.7),
    ]
    assert [t for t, _, _ in group_lines(lines[:3], max_chars=20)] == [
        "Invoice 4711 paid",
        "Acme Corp",
    ]


def test_ocr_off_without_image_embedding_is_a_failure(tmp_path: Path) -> None:
    drawn = draw_lines(tmp_path / "a.png", {"Hello": (10, 10)}, size=(200, 80))
    opts = IngestOptions(parsers=Parsers(image=ImageOptions(ocr=False)))
    report = ingest_paths([drawn.path], opts)
    assert report.errors == [
        (
            str(drawn.path),
            "OCR disabled and no image embedding configured (parsers.image.ocr is false "
            "and spec.embedding.image is not set)",
        )
    ]


def test_image_chunk_when_image_embedding_is_configured(tmp_path: Path) -> None:
    kb = KnowledgeBase.model_validate(
        {
            "apiVersion": "qingliang.io/v1",
            "kind": "KnowledgeBase",
            "metadata": {"name": "pics"},
            "spec": {
                "sources": [{"folder": str(tmp_path)}],
                "parsers": {"image": {"ocr": False}},
                "embedding": {"image": {"model_dir": "models/clip"}},
            },
        }
    )
    image = Image.new("RGB", (64, 48), "white")
    image.save(tmp_path / "logo.png")
    image.save(tmp_path / "copy.bmp")  # same pixels, another encoding
    image.putpixel((3, 3), (0, 0, 0))
    image.save(tmp_path / "edited.png")
    report = ingest_paths(sorted(tmp_path.iterdir()), IngestOptions.from_spec(kb.spec))
    assert not report.errors
    by_name = {Path(c.location.source).name: c for c in report.chunks}
    logo = by_name["logo.png"]
    assert (logo.kind, logo.text, logo.location.region) == ("image", "logo.png", (0, 0, 64, 48))
    assert logo.location.image_path == str(tmp_path / "logo.png")
    assert logo.sha256 == by_name["copy.bmp"].sha256 != by_name["edited.png"].sha256
    docs = {Path(d.source).name: d for d in report.documents}
    assert docs["logo.png"].sha256 == logo.sha256


# ------------------------------------------------------- a mixed folder, OCR included


@pytest.fixture(scope="module")
def mixed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Drawn, list[IngestReport]]:
    """Good and broken files of every new type in one folder, ingested twice."""
    root = tmp_path_factory.mktemp("mixed")
    (root / "guide.pdf").write_bytes(make_pdf([["Opening hours"], ["Closed on Sundays"]]))
    (root / "handbook.docx").write_bytes(make_docx())
    (root / "sales.xlsx").write_bytes(make_xlsx())
    (root / "notes.md").write_text("# Notes\nPlain text still ingests.\n", encoding="utf-8")
    drawn = draw_lines(
        root / "invoice.png",
        {"Invoice number 4711": (30, 40), "Acme Corp": (30, 90), "Total due 250 EUR": (30, 300)},
    )
    (root / "broken.pdf").write_bytes(b"%PDF-1.7\n" + b"\x8f" * 300)
    (root / "broken.docx").write_bytes(b"PK\x05\x06" + b"\0" * 18)
    (root / "broken.xlsx").write_bytes(b"PK\x03\x04 truncated")
    (root / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 64)
    (root / "photo.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    (root / "big.pdf").write_bytes(make_pdf([["x"]]) + b"%" + b"0" * 200_000)
    paths = resolve_sources([Source(folder=str(root))], Path("."))
    opts = IngestOptions(parsers=Parsers(max_file_mb=0.1))
    return root, drawn, [ingest_paths(paths, opts), ingest_paths(paths, opts)]


def test_mixed_folder_failures_are_per_document(mixed) -> None:
    root, _, (report, _) = mixed
    reasons = {Path(p).name: r for p, r in report.errors}
    assert set(reasons) == {
        "broken.pdf",
        "broken.docx",
        "broken.xlsx",
        "broken.png",
        "photo.jpg",
        "big.pdf",
    }
    assert reasons["broken.pdf"].startswith("corrupt PDF: ")
    assert reasons["broken.docx"].startswith("corrupt DOCX: ")
    assert reasons["broken.xlsx"].startswith("corrupt XLSX: not a zip archive")
    assert reasons["broken.png"].startswith(("corrupt image: ", "not an image Pillow can read"))
    assert reasons["photo.jpg"].startswith(("corrupt image: ", "not an image Pillow can read"))
    assert reasons["big.pdf"] == "over the size limit: 0.2 MiB > 0.1 MiB (parsers.max_file_mb)"
    types = {Path(d.source).name: d.type for d in report.documents}
    assert types == {
        "guide.pdf": "pdf",
        "handbook.docx": "docx",
        "sales.xlsx": "xlsx",
        "notes.md": "markdown",
        "invoice.png": "image",
    }


def test_ocr_recovers_the_drawn_words_with_regions(mixed) -> None:
    root, drawn, (report, _) = mixed
    ocr = [c for c in report.chunks if c.kind == "image-ocr"]
    assert ocr and all(c.location.image_path == str(drawn.path) for c in ocr)
    width, height = drawn.size
    for words, box in drawn.boxes.items():
        (chunk,) = [c for c in ocr if squash(words) in squash(c.text)]
        x0, y0, x1, y1 = chunk.location.region
        assert all(isinstance(v, int) for v in chunk.location.region)
        assert 0 <= x0 < x1 <= width and 0 <= y0 < y1 <= height
        slack = 8  # OCR boxes hug the ink; Pillow's box includes the font's bearing
        assert x0 <= box[0] + slack and y0 <= box[1] + slack
        assert x1 >= box[2] - slack and y1 >= box[3] - slack
    # the two lines close together are one paragraph, the distant one another
    assert len(ocr) == 2


def test_hashes_are_stable_across_runs(mixed) -> None:
    _, _, (first, second) = mixed
    assert [(c.id, c.sha256, c.location) for c in first.chunks] == [
        (c.id, c.sha256, c.location) for c in second.chunks
    ]
    assert first.documents == second.documents


@pytest.mark.skipif(not CJK_FONT.exists(), reason="needs fonts-wqy-zenhei for Chinese text")
def test_ocr_reads_chinese(tmp_path: Path) -> None:
    font = ImageFont.truetype(str(CJK_FONT), 40)
    drawn = draw_lines(tmp_path / "notice.png", {"核酸检测点开放时间": (30, 40)}, (480, 240), font)
    report = ingest_paths([drawn.path], IngestOptions())
    assert not report.errors
    assert "核酸检测" in "".join(c.text for c in report.chunks)


# ---------------------------------------------------------------------- missing libraries


def test_a_missing_library_is_reported_per_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "a.pdf").write_bytes(make_pdf([["x"]]))
    (tmp_path / "b.docx").write_bytes(make_docx())
    (tmp_path / "c.xlsx").write_bytes(make_xlsx())
    draw_lines(tmp_path / "d.png", {"Hi": (5, 5)}, size=(80, 60))
    for module in ("pypdf", "docx", "openpyxl", "rapidocr_onnxruntime"):
        monkeypatch.setitem(sys.modules, module, None)  # importing it now fails
    import qingliang.knowledge.ingest.images as image_mod

    monkeypatch.setattr(image_mod, "_engine", None)
    report = ingest_paths(sorted(tmp_path.iterdir()), IngestOptions())
    assert {Path(p).name: r for p, r in report.errors} == {
        "a.pdf": "PDF needs the `pypdf` package, which is not installed",
        "b.docx": "DOCX needs the `python-docx` package, which is not installed",
        "c.xlsx": "XLSX needs the `openpyxl` package, which is not installed",
        "d.png": "image OCR needs the `rapidocr-onnxruntime` package, which is not installed",
    }


def test_a_library_that_fails_to_import_says_why(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "half_installed_lib.py").write_text("import its_missing_dependency\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(DocumentError) as info:
        require("half_installed_lib", "PDF", "half-installed-lib")
    assert info.value.reason == (
        "PDF needs the `half-installed-lib` package, which failed to import: "
        "No module named 'its_missing_dependency'"
    )


@pytest.mark.parametrize(
    "module",
    [
        "qingliang.knowledge.ingest.images",
        "qingliang.knowledge.ingest._office",
        "qingliang.knowledge.ingest._optional",
    ],
)
def test_docstring_examples_run(module: str) -> None:
    import doctest
    import importlib

    result = doctest.testmod(importlib.import_module(module))
    assert result.failed == 0 and result.attempted > 0

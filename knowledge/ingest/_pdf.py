"""PDF: the text layer of each page through ``pypdf`` (imported on first use).

Every chunk carries its 1-based page number; chunks never cross a page. A page that fails
to extract is reported alone (``file.pdf#page 7``) while the other pages still ingest. A
page with no text but with images is a scanned page: OCR of PDF pages is not supported,
so it is reported the same way (a PDF with no text at all is one failure).
"""

from __future__ import annotations

import io
import logging

from qingliang.knowledge.ingest._optional import require
from qingliang.knowledge.ingest.chunking import Block, Parsed, joined
from qingliang.knowledge.ingest.errors import DocumentError, describe
from qingliang.knowledge.ingest.options import Chunking, Parsers

log = logging.getLogger(__name__)

_SCANNED = (
    "no extractable text: a scanned page (images only); OCR of PDF pages is not supported — "
    "convert the pages to images (e.g. `pdftoppm -png`) to OCR them"
)


def parse_pdf(data: bytes, source: str, parsers: Parsers, chunking: Chunking) -> list[Parsed]:
    pypdf = require("pypdf", "PDF", "pypdf")
    from pypdf.errors import PyPdfError

    if not data:
        raise DocumentError("empty file (0 bytes)")
    if b"%PDF-" not in data[:1024]:
        raise DocumentError("corrupt PDF: no `%PDF-` header (not a PDF file)")
    try:
        reader = pypdf.PdfReader(io.BytesIO(data), strict=False)
        if reader.is_encrypted and _locked(reader):
            raise DocumentError("encrypted PDF: it needs a password to open")
        n_pages = len(reader.pages)
    except DocumentError:
        raise
    except (PyPdfError, ValueError, KeyError, TypeError) as exc:
        raise DocumentError(f"corrupt PDF: {describe(exc)}") from None
    if n_pages == 0:
        raise DocumentError("empty: the PDF has no pages")
    first = parsers.pdf.first_page
    last = min(parsers.pdf.last_page or n_pages, n_pages)
    if first > n_pages:
        raise DocumentError(
            f"pdf.first_page ({first}) is past the last page (the PDF has {n_pages} pages)"
        )
    blocks: list[Block] = []
    failed: list[Parsed] = []
    scanned: list[int] = []
    for number in range(first, last + 1):
        try:
            page = reader.pages[number - 1]
            text = page.extract_text() or ""
        except Exception as exc:  # one bad page must not lose the others
            log.debug("page %d of %s failed", number, source, exc_info=True)
            failed.append(
                Parsed(text="", record=f"page {number}", error=f"corrupt page: {describe(exc)}")
            )
            continue
        text = text.replace("\x00", "").strip()
        if text:
            blocks.append(Block(text=text, page=number))
        elif _has_images(page):
            scanned.append(number)
    if not blocks:
        if scanned:
            raise DocumentError(f"{_SCANNED} ({_span(scanned)})")
        if failed:
            raise DocumentError(f"corrupt PDF: no page could be read ({failed[0].error})")
        raise DocumentError(f"empty: no text on {_span(list(range(first, last + 1)))}")
    failed += [Parsed(text="", record=f"page {n}", error=_SCANNED) for n in scanned]
    text, blocks = joined(blocks)
    return [Parsed(text=text, blocks=blocks, title=_title(reader)), *failed]


def _locked(reader: object) -> bool:
    """True unless the empty user password opens it (owner-password-only PDFs read fine)."""
    from pypdf import PasswordType

    try:
        return reader.decrypt("") == PasswordType.NOT_DECRYPTED  # type: ignore[attr-defined]
    except Exception as exc:  # e.g. AES without the `cryptography` package
        raise DocumentError(f"encrypted PDF: cannot decrypt ({describe(exc)})") from None


def _has_images(page: object) -> bool:
    """An image XObject in the page's resources, and a content stream that draws one."""
    try:
        resources = page.get("/Resources") or {}  # type: ignore[attr-defined]
        xobjects = resources.get("/XObject") or {}
        if not any(x.get_object().get("/Subtype") == "/Image" for x in xobjects.values()):
            return False
        contents = page.get_contents()  # type: ignore[attr-defined]
        return contents is not None and b"Do" in contents.get_data()
    except Exception:
        return False


def _title(reader: object) -> str | None:
    try:
        meta = reader.metadata  # type: ignore[attr-defined]
        title = (meta.title if meta else None) or ""
    except Exception:
        return None
    return str(title).strip() or None


def _span(pages: list[int]) -> str:
    if len(pages) == 1:
        return f"page {pages[0]}"
    if pages == list(range(pages[0], pages[-1] + 1)):
        return f"pages {pages[0]}-{pages[-1]}"
    return "pages " + ", ".join(map(str, pages))

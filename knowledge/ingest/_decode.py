"""Bytes to text: BOMs, UTF-8, then detection; binary junk and bad encodings are refused."""

from __future__ import annotations

import codecs
import logging
import re
import unicodedata

from qingliang.knowledge.ingest.errors import DocumentError

log = logging.getLogger(__name__)

_BOMS = (
    (codecs.BOM_UTF8, "utf-8-sig"),
    (codecs.BOM_UTF32_LE, "utf-32"),
    (codecs.BOM_UTF32_BE, "utf-32"),
    (codecs.BOM_UTF16_LE, "utf-16"),
    (codecs.BOM_UTF16_BE, "utf-16"),
)
_META_CHARSET = re.compile(rb"""<meta[^>]+charset\s*=\s*["']?([A-Za-z0-9_.:-]+)""", re.I)
#: Share of control characters above which decoded "text" is called binary.
_MAX_CONTROL = 0.05


def decode(data: bytes, encoding: str = "auto", *, html: bool = False) -> str:
    """Decode ``data``; raise :class:`DocumentError` with a reason the user can act on."""
    if not data:
        raise DocumentError("empty file (0 bytes)")
    if encoding != "auto":
        return _strict(data, encoding, hint=True)
    for bom, name in _BOMS:
        if data.startswith(bom):
            return _strict(data, name)
    if b"\x00" in data[:8192]:
        raise DocumentError("binary content: NUL bytes in a text file")
    try:
        return _check_text(data.decode("utf-8"))
    except UnicodeDecodeError:
        pass
    if html:
        m = _META_CHARSET.search(data[:4096])
        if m:
            try:
                return _strict(data, m.group(1).decode("ascii"))
            except (DocumentError, LookupError):
                pass
    _check_bytes(data)
    return _detect(data)


def _check_bytes(data: bytes) -> None:
    """Refuse binary junk before a detector reads meaning into it: text in any 8-bit or
    multi-byte encoding has almost no C0 control bytes besides whitespace."""
    sample = data[:65536]
    control = sum(1 for b in sample if b < 0x20 and b not in b"\t\n\r\f\v\x1b") + sample.count(0x7F)
    if control / len(sample) > _MAX_CONTROL / 5:
        raise DocumentError(f"binary content: {control / len(sample):.0%} control bytes")


def _strict(data: bytes, encoding: str, *, hint: bool = False) -> str:
    try:
        text = data.decode(encoding)
    except UnicodeDecodeError as exc:
        more = " (set the parser's `encoding` to the file's encoding, or `auto`)" if hint else ""
        raise DocumentError(
            f"wrong encoding: not valid {encoding} (byte 0x{data[exc.start]:02x} at offset "
            f"{exc.start}){more}"
        ) from None
    except LookupError:
        raise DocumentError(f"unknown encoding {encoding!r}") from None
    return _check_text(text.removeprefix("\ufeff"))


def _detect(data: bytes) -> str:
    try:
        from charset_normalizer import from_bytes
    except ImportError:  # pragma: no cover - charset_normalizer ships with requests
        best = None
    else:
        best = from_bytes(data).best()
    if best is None:
        raise DocumentError(
            "wrong encoding: not UTF-8, and no other encoding fits (undecodable bytes)"
        )
    log.debug("detected encoding %s", best.encoding)
    return _check_text(str(best))


def _check_text(text: str) -> str:
    if not text:
        return text
    bad = sum(
        1
        for ch in text
        if ch == "\ufffd" or (unicodedata.category(ch) == "Cc" and ch not in "\t\n\r\f\v")
    )
    if bad / len(text) > _MAX_CONTROL:
        raise DocumentError(f"binary content: {bad / len(text):.0%} control characters")
    return text

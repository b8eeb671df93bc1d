"""Images: text read by OCR (RapidOCR, PP-OCRv4 on onnxruntime), and an ``image`` chunk
when an image-embedding model is configured.

Pillow decodes the file (EXIF orientation applied, transparency flattened onto white,
every page of a multi-page TIFF); RapidOCR finds text lines, which are grouped into
paragraphs by their vertical gaps and packed into ``image-ocr`` chunks of at most
``max_chars``. Each chunk keeps ``image_path`` (the source) and ``region``: the
``(x0, y0, x1, y1)`` pixel box around its lines, in the image as displayed. The OCR engine
is loaded once per process, on first use, and runs one image at a time on one thread.

Besides the parser (:func:`parse_image`), the public pieces other areas use: decoding
(:func:`load_frames`), the OCR engine (:func:`ocr_engine`, :func:`ocr_lines`, :class:`Line`)
and grouping lines into paragraphs (:func:`group_lines`).

Example:
    >>> from qingliang.knowledge.ingest.images import union
    >>> union([(10, 5, 50, 20), (8, 30, 40, 44)])
    (8, 5, 50, 44)
"""

from __future__ import annotations

import hashlib
import io
import logging
import math
import statistics
import threading
from dataclasses import dataclass
from pathlib import PurePath
from typing import Any

from qingliang.knowledge.ingest._optional import require
from qingliang.knowledge.ingest.chunking import Block, Parsed, joined
from qingliang.knowledge.ingest.errors import DocumentError, describe
from qingliang.knowledge.ingest.options import Chunking, Parsers

log = logging.getLogger(__name__)

Box = tuple[int, int, int, int]

_engine: Any = None
_engine_lock = threading.Lock()
_run_lock = threading.Lock()

NO_TEXT_NO_EMBEDDING = (
    "OCR disabled and no image embedding configured (parsers.image.ocr is false and "
    "spec.embedding.image is not set)"
)


@dataclass(frozen=True)
class Line:
    """One text line found by OCR: its box (pixels), text and confidence (0-1)."""

    box: Box
    text: str
    score: float


def ocr_engine() -> Any:
    """The process's RapidOCR engine, created on first use (thread-safe)."""
    global _engine
    if _engine is None:
        with _engine_lock:
            if _engine is None:
                module = require("rapidocr_onnxruntime", "image OCR", "rapidocr-onnxruntime")
                try:
                    # No 0°/180° line classifier: on clean upright text it turned a third of
                    # the lines of a test page upside down (and cost time); an upside-down
                    # photo is rare, a rotated one is fixed by its EXIF orientation.
                    _engine = module.RapidOCR(
                        use_cls=False, intra_op_num_threads=1, inter_op_num_threads=1
                    )
                except Exception as exc:
                    raise DocumentError(f"image OCR could not start: {describe(exc)}") from None
    return _engine


def ocr_lines(image: Any) -> list[Line]:
    """Text lines in a Pillow RGB image, top to bottom, boxes clamped to the image."""
    engine = ocr_engine()
    with _run_lock:
        result, _ = engine(image)
    width, height = image.size
    lines: list[Line] = []
    for points, text, score in result or []:
        xs = [p[0] for p in points]
        ys = [p[1] for p in points]
        box = (
            min(max(math.floor(min(xs)), 0), width),
            min(max(math.floor(min(ys)), 0), height),
            min(max(math.ceil(max(xs)), 0), width),
            min(max(math.ceil(max(ys)), 0), height),
        )
        if str(text).strip():
            lines.append(Line(box, str(text).strip(), float(score)))
    return lines


def union(boxes: list[Box]) -> Box:
    """The smallest box holding all ``boxes``."""
    return (
        min(b[0] for b in boxes),
        min(b[1] for b in boxes),
        max(b[2] for b in boxes),
        max(b[3] for b in boxes),
    )


def group_lines(lines: list[Line], max_chars: int) -> list[tuple[str, Box, float]]:
    """``(text, region, mean confidence)`` per chunk.

    Boxes whose vertical centres fall inside one another form a visual row (joined with
    spaces, left to right); a gap between rows taller than the median line height starts
    a new paragraph; a paragraph is packed into chunks of at most ``max_chars`` (a longer
    single row stays whole).
    """
    rows: list[list[Line]] = []
    for ln in lines:
        centre = (ln.box[1] + ln.box[3]) / 2
        if rows and any(r.box[1] <= centre <= r.box[3] for r in rows[-1]):
            rows[-1].append(ln)
        else:
            rows.append([ln])
    if not rows:
        return []
    median_h = statistics.median(ln.box[3] - ln.box[1] for ln in lines) or 1
    out: list[tuple[str, Box, float]] = []
    group: list[list[Line]] = []

    def text_of(rs: list[list[Line]]) -> str:
        return "\n".join(" ".join(x.text for x in sorted(r, key=lambda x: x.box[0])) for r in rs)

    def emit() -> None:
        members = [ln for r in group for ln in r]
        out.append(
            (
                text_of(group),
                union([ln.box for ln in members]),
                sum(ln.score for ln in members) / len(members),
            )
        )

    prev_bottom = None
    for row in rows:
        top = min(ln.box[1] for ln in row)
        gap = top - prev_bottom if prev_bottom is not None else 0
        if group and (gap > median_h or len(text_of([*group, row])) > max_chars):
            emit()
            group = []
        group.append(row)
        prev_bottom = max(ln.box[3] for ln in row)
    emit()
    return out


def load_frames(data: bytes) -> list[Any]:
    """The decoded frames (every page of a TIFF, else the first) as RGB Pillow images."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    if not data:
        raise DocumentError("empty file (0 bytes)")
    try:
        # Pillow raises above twice MAX_IMAGE_PIXELS and only warns between once and twice
        # that; the check below refuses those too (no global warning filter: thread-safe).
        image = Image.open(io.BytesIO(data))
        width, height = image.size
        if width <= 0 or height <= 0:
            raise DocumentError(f"empty image: {width}×{height} pixels")
        limit = Image.MAX_IMAGE_PIXELS
        if limit and width * height > limit:
            raise DocumentError(
                f"decompression bomb: {width}×{height} = {width * height:,} pixels, over "
                f"Pillow's limit of {int(limit):,} (PIL.Image.MAX_IMAGE_PIXELS)"
            )
        n = getattr(image, "n_frames", 1) if image.format == "TIFF" else 1
        frames = []
        for i in range(n):
            image.seek(i)
            frames.append(_rgb(ImageOps.exif_transpose(image)))
    except DocumentError:
        raise
    except Image.DecompressionBombError as exc:
        reason = str(exc).rstrip(".")
        raise DocumentError(f"decompression bomb: {reason} (PIL.Image.MAX_IMAGE_PIXELS)") from None
    except UnidentifiedImageError:
        raise DocumentError("not an image Pillow can read (unknown format, or corrupt)") from None
    except (OSError, SyntaxError, ValueError, EOFError, MemoryError) as exc:
        raise DocumentError(f"corrupt image: {exc}") from None
    return frames


def _rgb(image: Any) -> Any:
    from PIL import Image

    if image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info:
        rgba = image.convert("RGBA")
        canvas = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        canvas.alpha_composite(rgba)
        return canvas.convert("RGB")
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        # 16/32-bit greyscale: scale to 8 bits before RGB, which would clip it.
        lo, hi = image.getextrema()
        scale = 255 / (hi - lo) if hi > lo else 1
        image = image.convert("I").point(lambda v: (v - lo) * scale).convert("L")
    return image.convert("RGB")


def pixel_hash(frames: list[Any]) -> str:
    """sha256 of the decoded pixels: re-encoding an image (PNG → WebP lossless, new
    metadata) is no change, any pixel edit is."""
    digest = hashlib.sha256()
    for frame in frames:
        digest.update(f"{frame.width}x{frame.height};".encode())
        digest.update(frame.tobytes())
    return digest.hexdigest()


def parse_image(
    data: bytes,
    source: str,
    parsers: Parsers,
    chunking: Chunking,
    *,
    image_embedding: bool = False,
) -> list[Parsed]:
    """``image-ocr`` chunks; plus one ``image`` chunk when ``image_embedding`` is on.

    The ``image`` chunk's text is the file name (so it is never empty and reads well in a
    citation), its ``sha256`` the pixel hash, its region the whole (first) image: the
    vector comes from the image-embedding model, not from the text.
    """
    options = parsers.image
    if not options.ocr and not image_embedding:
        raise DocumentError(NO_TEXT_NO_EMBEDDING)
    frames = load_frames(data)
    digest = pixel_hash(frames)
    blocks: list[Block] = []
    if options.ocr:
        for number, frame in enumerate(frames, 1):
            page = number if len(frames) > 1 else None
            for text, region, score in group_lines(ocr_lines(frame), chunking.max_chars):
                log.debug("%s: OCR region %s, confidence %.2f", source, region, score)
                blocks.append(
                    Block(
                        text=text,
                        kind="image-ocr",
                        page=page,
                        atomic=True,
                        image_path=source,
                        region=region,
                    )
                )
    text, blocks = joined(blocks)
    if image_embedding:
        first = frames[0]
        blocks.append(
            Block(
                text=PurePath(source).name,
                kind="image",
                page=1 if len(frames) > 1 else None,
                atomic=True,
                image_path=source,
                region=(0, 0, first.width, first.height),
                sha256=digest,
            )
        )
    if not blocks:
        raise DocumentError("empty: OCR found no text in the image")
    return [Parsed(text=text, blocks=blocks, sha256=digest)]

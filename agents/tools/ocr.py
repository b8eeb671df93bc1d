"""The ``ocr`` tool: text read from an image uploaded with the run.

OCR is the knowledge layer's (:mod:`qingliang.knowledge.ingest.images`: RapidOCR's
PP-OCRv4 models on onnxruntime, one engine per process, EXIF orientation applied,
transparency flattened, every page of a TIFF). Before anything is decoded the image's
header is read and its pixels counted against ``max_pixels``, so a decompression bomb (a
small file that unpacks to gigabytes) is refused without being unpacked.

The model reads the lines in reading order (rows top to bottom, left to right within a
row); ``data`` keeps each line's pixel box ``[x0, y0, x1, y1]`` and confidence.

Example:
    >>> from qingliang.agents.tools.specs import OcrTool as OcrConfig
    >>> from qingliang.agents.tools.base import ToolContext
    >>> tool = OcrTool(OcrConfig(kind="ocr", name="read_image"))
    >>> ctx = ToolContext(run_id="r1", tenant=None, attachments={"scan.png": Path("scan.png")})
    >>> tool.run({"attachment": "scna.png"}, ctx)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    qingliang.agents.tools.base.ToolError: unknown attachment 'scna.png' (did you mean ...
"""

from __future__ import annotations

import io
import logging
from pathlib import Path
from typing import Any

from qingliang.agents.tools.base import ToolContext, ToolError, ToolResult
from qingliang.agents.tools.specs import OcrTool as OcrConfig
from qingliang.knowledge.ingest.errors import DocumentError
from qingliang.knowledge.ingest.images import Line, load_frames, ocr_engine, ocr_lines
from qingliang.platform.errors import did_you_mean

log = logging.getLogger(__name__)

DEFAULT_DESCRIPTION = (
    "Read the text in an image attached to this conversation (a scan, photo or screenshot) "
    "by OCR. Returns the recognised lines in reading order."
)
INSTALL_HINT = (
    "install it with `make install` (which installs rapidocr-onnxruntime with --no-deps), or "
    "`pip install --no-deps rapidocr-onnxruntime` into the environment"
)


class OcrTool:
    """OCR of one of ``ctx.attachments``, refusing images over ``config.max_pixels``.

    Args:
        config: The manifest's ``ocr`` tool.

    Example:
        >>> from qingliang.agents.tools.specs import OcrTool as OcrConfig
        >>> OcrTool(OcrConfig(kind="ocr", name="read_image")).parameters["required"]
        ['attachment']
    """

    side_effect = False

    def __init__(self, config: OcrConfig) -> None:
        self.config = config
        self.name = config.name
        self.description = config.description or DEFAULT_DESCRIPTION
        self.parameters: dict[str, Any] = {
            "type": "object",
            "properties": {
                "attachment": {
                    "type": "string",
                    "description": "File name of the attached image, as uploaded.",
                }
            },
            "required": ["attachment"],
            "additionalProperties": False,
        }

    def run(self, args: dict[str, Any], ctx: ToolContext) -> ToolResult:
        """Recognise the text of ``args["attachment"]``.

        Raises:
            ToolError: unknown attachment (the message lists those there are), not an
                image or corrupt, more pixels than ``max_pixels``, or no OCR engine.
        """
        name = args.get("attachment")
        if not isinstance(name, str) or not name.strip():
            raise ToolError("`attachment` must be the file name of an attached image")
        path = _attachment(name, ctx.attachments)
        try:
            data = Path(path).read_bytes()
        except OSError as exc:
            raise ToolError(f"attachment {name!r} cannot be read: {exc.strerror or exc}") from None
        pixels = _pixels(name, data)
        if pixels > self.config.max_pixels:
            raise ToolError(
                f"attachment {name!r} has {pixels:,} pixels, more than this tool reads "
                f"({self.config.max_pixels:,}, max_pixels); send a smaller image"
            )
        try:
            frames = load_frames(data)
            ocr_engine()
        except DocumentError as exc:
            raise ToolError(_reason(name, exc.reason)) from None
        pages: list[tuple[int, list[Line]]] = []
        for number, frame in enumerate(frames, 1):
            try:
                pages.append((number, reading_order(ocr_lines(frame))))
            except DocumentError as exc:
                raise ToolError(_reason(name, exc.reason)) from None
            except Exception as exc:  # onnxruntime / OpenCV failures on odd input
                raise ToolError(f"OCR failed on {name!r}: {type(exc).__name__}: {exc}") from None
        many = len(frames) > 1
        lines_out: list[dict[str, Any]] = []
        text_parts: list[str] = []
        for number, lines in pages:
            if many:
                text_parts.append(f"--- page {number} ---")
            for ln in lines:
                item: dict[str, Any] = {"text": ln.text, "box": list(ln.box), "score": ln.score}
                if many:
                    item["page"] = number
                lines_out.append(item)
                text_parts.append(ln.text)
        log.debug("ocr %s run=%s: %d lines", name, ctx.run_id, len(lines_out))
        content = "\n".join(text_parts) if lines_out else f"No text was found in {name!r}."
        return ToolResult(content=content, data={"attachment": name, "lines": lines_out})


def _attachment(name: str, attachments: dict[str, Path]) -> Path:
    if name in attachments:
        return attachments[name]
    known = sorted(attachments)
    if not known:
        raise ToolError(f"unknown attachment {name!r}: no files were attached to this run")
    hint = did_you_mean(name, known)
    raise ToolError(f"unknown attachment {name!r}{hint}; attached: {', '.join(known)}")


def _pixels(name: str, data: bytes) -> int:
    """Pixels of every frame, from the headers only (nothing is decoded)."""
    from PIL import Image, UnidentifiedImageError

    if not data:
        raise ToolError(f"attachment {name!r} is empty (0 bytes)")
    try:
        with Image.open(io.BytesIO(data)) as image:
            total = image.width * image.height
            if image.format == "TIFF":
                for i in range(1, getattr(image, "n_frames", 1)):
                    image.seek(i)
                    total += image.width * image.height
    except Image.DecompressionBombError as exc:
        # Pillow refuses on its own past twice PIL.Image.MAX_IMAGE_PIXELS.
        raise ToolError(f"attachment {name!r} is too large to read: {exc}") from None
    except UnidentifiedImageError:
        raise ToolError(
            f"attachment {name!r} is not an image this tool can read (unknown format, or corrupt)"
        ) from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise ToolError(f"attachment {name!r} is a corrupt image: {exc}") from None
    return total


def _reason(name: str, reason: str) -> str:
    if "rapidocr-onnxruntime" in reason:
        return f"{reason}; {INSTALL_HINT}"
    return f"attachment {name!r}: {reason}"


def reading_order(lines: list[Line]) -> list[Line]:
    """``lines`` in reading order: rows (boxes whose vertical centres overlap) from the top,
    each left to right.

    Example:
        >>> from qingliang.knowledge.ingest.images import Line
        >>> right, left = Line((200, 10, 260, 30), "B", 0.9), Line((10, 12, 80, 31), "A", 0.9)
        >>> [ln.text for ln in reading_order([right, left, Line((10, 50, 90, 70), "C", 1.0)])]
        ['A', 'B', 'C']
    """
    rows: list[list[Line]] = []
    for ln in sorted(lines, key=lambda x: (x.box[1] + x.box[3]) / 2):
        centre = (ln.box[1] + ln.box[3]) / 2
        if rows and any(r.box[1] <= centre <= r.box[3] for r in rows[-1]):
            rows[-1].append(ln)
        else:
            rows.append([ln])
    return [ln for row in rows for ln in sorted(row, key=lambda x: x.box[0])]

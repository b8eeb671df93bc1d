"""Images in requests: where they may come from, how big they may be, and what a
deployment that cannot see them gets instead.

A chat request carries an image as an OpenAI ``image_url`` content part. What happens to
it depends on the deployment's ``spec.multimodal.image`` (:class:`ImageMode`):

* ``native``: the model sees the image; each part is checked and sent on as a ``data:``
  URL (a local file reference is read here, so a model replica never reads the gateway's
  disk);
* ``ocr``: the part is replaced by the text OCR reads in the image, in reading order
  (rows top to bottom, left to right within a row), between markers saying where the
  image was — a text-only model understands a photo of a form, a report or a nameplate;
* ``reject``: a 400 naming the part and the modes the deployment supports.

Where an image may come from (:func:`load_image`): a ``data:image/...;base64,`` URL; a
``file://`` URL only inside a folder an administrator allowed (``QINGLIANG_IMAGE_DIRS``,
``:``-separated; symbolic links are resolved first, so none leads out); never the
network — an ``http(s)`` URL is refused with the fix. Every image is checked against
:class:`ImageLimits` (bytes, pixels, images per request) from its header, before its
pixels are decoded.

Example:
    >>> limits = ImageLimits(max_bytes=1024)
    >>> load_image("https://example.com/cat.png", "messages[0].content[1]", limits)
    Traceback (most recent call last):
    ...
    qingliang.platform.errors.BadRequest: messages[0].content[1]: images are not fetched from the network; send the image inline as a data URL (data:image/png;base64,...)
"""  # noqa: E501

from __future__ import annotations

import asyncio
import base64
import binascii
import copy
import hashlib
import io
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal
from urllib.parse import unquote, urlsplit

from qingliang.platform.errors import BadRequest

ImageMode = Literal["native", "ocr", "reject"]
#: The modes, as a 400 lists them.
MODES: dict[str, str] = {
    "native": "the model sees the image",
    "ocr": "the image is read by OCR into text",
    "reject": "text only",
}
#: Formats Pillow decodes that we accept, by Pillow's format name.
FORMATS = {"PNG": "image/png", "JPEG": "image/jpeg", "WEBP": "image/webp", "GIF": "image/gif",
           "BMP": "image/bmp", "TIFF": "image/tiff"}  # fmt: skip
#: File name suffixes of images (an agent run's attachments, a KB's files).
IMAGE_SUFFIXES = frozenset({"png", "jpg", "jpeg", "bmp", "gif", "webp", "tif", "tiff"})
MiB = 1024 * 1024
#: The environment variable of each :class:`ImageLimits` number.
_ENV = {
    "max_bytes": "QINGLIANG_MAX_IMAGE_BYTES",
    "max_pixels": "QINGLIANG_MAX_IMAGE_PIXELS",
    "max_images": "QINGLIANG_MAX_IMAGES",
}


@dataclass(frozen=True)
class ImageLimits:
    """What one request's images may be (the gateway's, for every deployment).

    Every field has an environment variable read by :meth:`from_env`:
    ``QINGLIANG_MAX_IMAGE_BYTES``, ``QINGLIANG_MAX_IMAGE_PIXELS``, ``QINGLIANG_MAX_IMAGES``
    and ``QINGLIANG_IMAGE_DIRS`` (folders, ``:``-separated).
    """

    #: Bytes of one image, decoded.
    max_bytes: int = 20 * MiB
    #: Width × height of one image (a 40 MP photo passes; a decompression bomb does not).
    max_pixels: int = 40_000_000
    #: Images in one request, whatever the deployment allows.
    max_images: int = 8
    #: Folders ``file://`` references may read from; none: no local files.
    dirs: tuple[Path, ...] = field(default=())

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> ImageLimits:
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for name, var in _ENV.items():
            raw = env.get(var)
            if raw is None:
                continue
            try:
                value = int(raw)
            except ValueError:
                raise ValueError(f"{var} must be a positive integer, got {raw!r}") from None
            if value < 1:
                raise ValueError(f"{var} must be a positive integer, got {raw!r}")
            values[name] = value
        dirs = env.get("QINGLIANG_IMAGE_DIRS", "")
        values["dirs"] = tuple(Path(d).resolve() for d in dirs.split(os.pathsep) if d.strip())
        return cls(**values)


@dataclass(frozen=True)
class LoadedImage:
    """One image of a request, checked: its bytes, format and size."""

    where: str
    data: bytes
    media_type: str
    width: int
    height: int

    def data_url(self) -> str:
        return f"data:{self.media_type};base64,{base64.b64encode(self.data).decode('ascii')}"

    def describe(self) -> str:
        """What the conversation log keeps instead of the pixels."""
        digest = hashlib.sha256(self.data).hexdigest()[:16]
        return f"[image {self.media_type} {self.width}x{self.height} sha256:{digest}]"


@dataclass(frozen=True)
class ImagesReport:
    """What was done with a request's images: the answer's trace says it."""

    mode: str
    count: int
    #: Characters of text OCR read (``ocr`` mode).
    ocr_chars: int = 0

    def trace(self) -> dict[str, Any]:
        out: dict[str, Any] = {"mode": self.mode, "count": self.count}
        if self.mode == "ocr":
            out["ocr_chars"] = self.ocr_chars
        return out

    def header(self) -> str:
        return f"{self.mode}; count={self.count}"


# ------------------------------------------------------------------ finding images


def image_parts(messages: Any) -> Iterator[tuple[str, dict]]:
    """``(where, part)`` for each ``image_url`` part of ``messages``, in order."""
    if not isinstance(messages, list):
        return
    for i, message in enumerate(messages):
        content = message.get("content") if isinstance(message, dict) else None
        if not isinstance(content, list):
            continue
        for j, part in enumerate(content):
            if isinstance(part, dict) and part.get("type") == "image_url":
                yield f"messages[{i}].content[{j}]", part


def _url_of(part: dict, where: str) -> str:
    image_url = part.get("image_url")
    url = image_url.get("url") if isinstance(image_url, dict) else image_url
    if not isinstance(url, str) or not url:
        raise BadRequest(f"{where}.image_url.url: missing", param=f"{where}.image_url.url")
    return url


# ------------------------------------------------------------------ loading one image


def load_image(url: str, where: str, limits: ImageLimits) -> LoadedImage:
    """The image ``url`` names, checked against ``limits`` (see the module docstring).

    Raises:
        BadRequest: the URL's scheme is not allowed, the file is outside the allowed
            folders or missing, the data is not an image, or it is over a limit; the
            message starts with ``where``.
    """
    scheme = url.split(":", 1)[0].lower() if ":" in url else ""
    if scheme == "data":
        data = _from_data_url(url, where, limits)
    elif scheme == "file":
        data = _from_file(url, where, limits)
    elif scheme in ("http", "https"):
        raise BadRequest(
            f"{where}: images are not fetched from the network; send the image inline as "
            "a data URL (data:image/png;base64,...)",
            param=where,
        )
    else:
        raise BadRequest(
            f"{where}: an image URL must be a data: URL (data:image/png;base64,...) or a "
            f"file:// reference inside a folder the administrator allowed; got "
            f"{(scheme or url[:20])!r}",
            param=where,
        )
    return checked_image(data, where, limits)


def _from_data_url(url: str, where: str, limits: ImageLimits) -> bytes:
    head, sep, payload = url.partition(",")
    if not sep or not head.lower().endswith(";base64"):
        raise BadRequest(
            f"{where}: a data URL must be base64-encoded (data:image/png;base64,...)",
            param=where,
        )
    media = head[5:].split(";", 1)[0].strip().lower()
    if media and not media.startswith("image/"):
        raise BadRequest(f"{where}: the data URL holds {media!r}, not an image", param=where)
    payload = "".join(payload.split())
    if len(payload) // 4 * 3 > limits.max_bytes + 2:
        raise _too_big(where, len(payload) // 4 * 3, limits)
    try:
        return base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        raise BadRequest(f"{where}: the data URL is not valid base64", param=where) from None


def _from_file(url: str, where: str, limits: ImageLimits) -> bytes:
    if not limits.dirs:
        raise BadRequest(
            f"{where}: local image files are off on this gateway; send the image as a data "
            "URL, or ask an administrator to allow a folder (QINGLIANG_IMAGE_DIRS)",
            param=where,
        )
    parts = urlsplit(url)
    if parts.netloc not in ("", "localhost"):
        raise BadRequest(f"{where}: file:// URLs name a local path (file:///...)", param=where)
    raw = unquote(parts.path)
    if "\x00" in raw or not raw.startswith("/"):
        raise BadRequest(f"{where}: not an absolute local path: {raw[:200]!r}", param=where)
    path = Path(raw).resolve()
    if not any(path.is_relative_to(d) for d in limits.dirs):
        raise BadRequest(
            f"{where}: {raw!r} is outside the folders images may be read from "
            f"({', '.join(str(d) for d in limits.dirs)})",
            param=where,
        )
    if not path.is_file():
        raise BadRequest(f"{where}: no such image file: {raw!r}", param=where)
    size = path.stat().st_size
    if size > limits.max_bytes:
        raise _too_big(where, size, limits)
    return path.read_bytes()


def _too_big(where: str, size: int, limits: ImageLimits) -> BadRequest:
    return BadRequest(
        f"{where}: the image is {size:,} bytes, over the limit of {limits.max_bytes:,} "
        "(QINGLIANG_MAX_IMAGE_BYTES)",
        param=where,
    )


def checked_image(data: bytes, where: str, limits: ImageLimits) -> LoadedImage:
    """``data`` as an image, from its header only: format and pixel count checked (the
    messages of the 400 start with ``where``)."""
    from PIL import Image, UnidentifiedImageError

    if len(data) > limits.max_bytes:
        raise _too_big(where, len(data), limits)
    if not data:
        raise BadRequest(f"{where}: the image is empty (0 bytes)", param=where)
    try:
        with Image.open(io.BytesIO(data)) as image:
            fmt, (width, height) = image.format, image.size
    except Image.DecompressionBombError:  # Pillow's own cap, far above any sane limit
        raise BadRequest(
            f"{where}: the image has more pixels than Pillow opens safely, over the limit "
            f"of {limits.max_pixels:,} (QINGLIANG_MAX_IMAGE_PIXELS)",
            param=where,
        ) from None
    except (UnidentifiedImageError, OSError, ValueError):
        raise BadRequest(
            f"{where}: not an image that can be read ({', '.join(FORMATS)})", param=where
        ) from None
    if fmt not in FORMATS:
        raise BadRequest(
            f"{where}: {fmt} images are not accepted ({', '.join(FORMATS)} are)", param=where
        )
    if width < 1 or height < 1:
        raise BadRequest(f"{where}: the image is empty ({width}x{height})", param=where)
    if width * height > limits.max_pixels:
        raise BadRequest(
            f"{where}: the image is {width}x{height} = {width * height:,} pixels, over the "
            f"limit of {limits.max_pixels:,} (QINGLIANG_MAX_IMAGE_PIXELS)",
            param=where,
        )
    return LoadedImage(where, data, FORMATS[fmt], width, height)


# ------------------------------------------------------------------ OCR


def ocr_text(image: LoadedImage) -> str:
    """The text OCR reads in ``image``, in reading order: paragraphs separated by a blank
    line (every page of a TIFF, in order); empty when it finds none."""
    from qingliang.knowledge.ingest.errors import DocumentError
    from qingliang.knowledge.ingest.images import group_lines, load_frames, ocr_lines

    try:
        frames = load_frames(image.data)
        paragraphs = [
            text for frame in frames for text, _box, _score in group_lines(ocr_lines(frame), 10**9)
        ]
    except DocumentError as exc:
        raise BadRequest(f"{image.where}: {exc}", param=image.where) from None
    return "\n\n".join(paragraphs)


def ocr_part(number: int, text: str) -> dict[str, str]:
    """The text part that stands where image ``number`` was."""
    if not text.strip():
        return {"type": "text", "text": f"[image {number}: OCR found no text in it]"}
    return {
        "type": "text",
        "text": f"[image {number}, its text read by OCR:]\n{text}\n[end of image {number}]",
    }


# ------------------------------------------------------------------ a request's images


def check_images(
    wheres: list[str], deployment: str, mode: str, max_per_prompt: int, limits: ImageLimits
) -> None:
    """Refuse a request's images (``wheres``: their parts, in order) that ``deployment``
    does not take: ``reject`` mode, or more than it and the gateway allow."""
    where = wheres[0]
    if mode not in ("native", "ocr"):
        raise BadRequest(
            f"{where}: deployment {deployment!r} does not take images "
            f"(spec.multimodal.image: reject). Modes a deployment can declare: "
            + "; ".join(f"{m} ({why})" for m, why in MODES.items()),
            param=where,
        )
    allowed = min(max_per_prompt, limits.max_images)
    if len(wheres) > allowed:
        extra = wheres[allowed]
        raise BadRequest(
            f"{extra}: {len(wheres)} images in one request; deployment {deployment!r} takes "
            f"at most {allowed}",
            param=extra,
        )


async def prepare_images(
    body: dict,
    *,
    deployment: str,
    mode: str,
    max_per_prompt: int,
    limits: ImageLimits,
) -> tuple[dict, ImagesReport | None]:
    """``body`` (a chat request) with its images made ready for ``deployment``.

    Returns the body to send (a copy when anything changed) and what was done (None: no
    images). Loading and OCR run in a worker thread, off the event loop.

    Raises:
        BadRequest: ``reject`` mode and an image; more images than allowed; an image that
            cannot be loaded (see :func:`load_image`).
    """
    found = list(image_parts(body.get("messages")))
    if not found:
        return body, None
    where, _ = found[0]
    check_images([w for w, _ in found], deployment, mode, max_per_prompt, limits)
    return await asyncio.to_thread(_prepare, body, found, mode, limits)


def _prepare(
    body: dict, found: list[tuple[str, dict]], mode: str, limits: ImageLimits
) -> tuple[dict, ImagesReport]:
    images = [load_image(_url_of(part, where), where, limits) for where, part in found]
    out = copy.copy(body)
    out["messages"] = messages = [
        {**m, "content": list(m["content"])} if isinstance(m.get("content"), list) else m
        for m in body["messages"]
    ]
    chars = 0
    for number, image in enumerate(images, 1):
        i, j = _indices(image.where)
        part = messages[i]["content"][j]
        if mode == "native":
            url = {**part["image_url"], "url": image.data_url()}
            messages[i]["content"][j] = {**part, "image_url": url}
        else:
            text = ocr_text(image)
            chars += len(text)
            messages[i]["content"][j] = ocr_part(number, text)
    return out, ImagesReport(mode=mode, count=len(images), ocr_chars=chars)


def _indices(where: str) -> tuple[int, int]:
    # "messages[3].content[1]" -> (3, 1)
    head, _, tail = where.partition(".content[")
    return int(head[len("messages[") : -1]), int(tail[:-1])


# ------------------------------------------------------------------ searching with an image


@dataclass(frozen=True)
class ImageQuery:
    """An image a knowledge search was given: searched by its OCR text, or (``ocr`` None)
    by its own vector among the KB's images."""

    image: LoadedImage
    ocr: str | None

    def vectors(self, clip: Any) -> _ImageVector:
        """The query embedder that gives this image's CLIP vector (``kinds: [image]``)."""
        return _ImageVector(clip, self.image.data)

    def describe(self) -> dict[str, Any]:
        """The ``image_query`` of the search's answer."""
        out: dict[str, Any] = {"image": self.image.describe()}
        if self.ocr is None:
            return {"mode": "image-vector", **out}
        return {"mode": "ocr", "ocr_text": self.ocr, **out}


class _ImageVector:
    def __init__(self, clip: Any, data: bytes) -> None:
        self.clip, self.data = clip, data

    def embed(self, texts: list[str], *, input_type: str = "query") -> list[list[float]]:
        return self.clip.embed_images([self.data] * len(texts))


def image_query(
    query: object, image: object, kinds: Any, limits: ImageLimits
) -> tuple[str, ImageQuery]:
    """The text to search with, and the image, for a knowledge search given ``image``.

    With ``kinds`` ``[image]`` the image's vector searches the KB's images (the text is
    ``query``, or a placeholder). Otherwise the text OCR reads in the image joins
    ``query``, cut to the query's length limit.

    Raises:
        BadRequest: ``image`` is not an allowed image (:func:`load_image`, naming
            ``image``), or OCR found no text and there is no ``query`` either.
    """
    if not isinstance(image, str) or not image:
        raise BadRequest(
            "image must be a data URL (data:image/png;base64,...) or an allowed file:// reference",
            param="image",
        )
    loaded = load_image(image, "image", limits)
    text = query.strip() if isinstance(query, str) else ""
    wanted = [kinds] if isinstance(kinds, str) else list(kinds or [])
    if wanted == ["image"]:
        return text or "[image]", ImageQuery(loaded, None)
    read = ocr_text(loaded)
    if not read.strip() and not text:
        raise BadRequest(
            "image: OCR found no text in the image, so there is nothing to search for; add "
            "a query, or search the KB's images by similarity with kinds: [image] (needs "
            "spec.embedding.image)",
            param="image",
        )
    from qingliang.knowledge.retrieval import MAX_QUERY_CHARS

    joined = "\n".join(p for p in (text, read) if p)[:MAX_QUERY_CHARS]
    return joined, ImageQuery(loaded, read)


def without_pixels(messages: Any) -> Any:
    """``messages`` with each image's data replaced by a short description (what a log
    keeps: the size and a hash, never the pixels)."""
    found = list(image_parts(messages))
    if not found:
        return messages
    out = [{**m, "content": list(m["content"])} if isinstance(m, dict) and isinstance(
        m.get("content"), list) else m for m in messages]  # fmt: skip
    for where, part in found:
        i, j = _indices(where)
        url = _url_of(part, where) if isinstance(part.get("image_url"), dict) else ""
        if url.startswith("data:"):
            try:
                loaded = checked_image(
                    base64.b64decode(url.partition(",")[2]), where, ImageLimits()
                )
                url = loaded.describe()
            except (BadRequest, binascii.Error, ValueError):
                url = "[image]"
        out[i]["content"][j] = {"type": "image_url", "image_url": {"url": url}}
    return out

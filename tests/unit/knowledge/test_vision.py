"""Images in chat requests: where they may come from, their limits, and OCR for text models.

Everything here runs the real code: Pillow reads the images, the packaged OCR models read
the text. Files are made in the test's temp folder; nothing outside it is touched.
"""

from __future__ import annotations

import asyncio
import base64
import io
import os
import struct
import zlib
from pathlib import Path

import pytest
from PIL import Image, ImageDraw, ImageFont

from qingliang.knowledge.vision import (
    ImageLimits,
    load_image,
    ocr_part,
    prepare_images,
    without_pixels,
)
from qingliang.platform.errors import BadRequest


def png(size: tuple[int, int] = (32, 16), colour: str = "red", fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, colour).save(buf, fmt)
    return buf.getvalue()


def data_url(data: bytes, media: str = "image/png") -> str:
    return f"data:{media};base64,{base64.b64encode(data).decode()}"


def text_image(lines: list[str], size: tuple[int, int] = (900, 260)) -> bytes:
    image = Image.new("RGB", size, "white")
    pen = ImageDraw.Draw(image)
    font = ImageFont.load_default(size=40)
    for row, text in enumerate(lines):
        pen.text((30, 30 + row * 80), text, fill="black", font=font)
    buf = io.BytesIO()
    image.save(buf, "PNG")
    return buf.getvalue()


def bomb_png(width: int, height: int) -> bytes:
    """A PNG whose header claims ``width``×``height`` with one row of data: tiny on disk."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return (
            struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
        )

    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    idat = zlib.compress(b"\0" * (1 + (width + 7) // 8))
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def chat(*parts: dict, text: str = "What does it say?") -> dict:
    return {
        "model": "m",
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": [{"type": "text", "text": text}, *parts]},
        ],
    }


def image_part(url: str) -> dict:
    return {"type": "image_url", "image_url": {"url": url, "detail": "auto"}}


def prepare(body: dict, mode: str, *, max_per_prompt: int = 4, limits: ImageLimits | None = None):
    return asyncio.run(
        prepare_images(
            body,
            deployment="dep",
            mode=mode,
            max_per_prompt=max_per_prompt,
            limits=limits or ImageLimits(),
        )
    )


# ------------------------------------------------------------------ where images come from


def test_a_data_url_is_read_with_its_format_and_size() -> None:
    image = load_image(data_url(png((40, 20))), "messages[0].content[1]", ImageLimits())
    assert (image.media_type, image.width, image.height) == ("image/png", 40, 20)
    assert image.data_url().startswith("data:image/png;base64,")
    assert "40x20" in image.describe() and "sha256:" in image.describe()


def test_the_format_comes_from_the_bytes_not_the_declared_type() -> None:
    image = load_image(data_url(png(fmt="JPEG"), "image/png"), "p", ImageLimits())
    assert image.media_type == "image/jpeg"


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("https://example.com/cat.png", "not fetched from the network"),
        ("http://127.0.0.1/cat.png", "not fetched from the network"),
        ("ftp://example.com/cat.png", "must be a data: URL"),
        ("data:image/png,rawbytes", "must be base64"),
        ("data:image/png;base64,***", "not valid base64"),
        ("data:text/plain;base64,aGVsbG8=", "'text/plain', not an image"),
        ("data:image/png;base64,aGVsbG8=", "not an image that can be read"),
        ("data:image/png;base64,", "empty"),
        ("file:///etc/hostname", "local image files are off"),
    ],
)
def test_an_image_url_that_is_not_allowed_is_a_400_naming_the_part(url: str, says: str) -> None:
    with pytest.raises(BadRequest) as err:
        load_image(url, "messages[1].content[2]", ImageLimits())
    assert err.value.message.startswith("messages[1].content[2]: ")
    assert says in err.value.message
    assert err.value.param == "messages[1].content[2]"


def test_a_local_file_is_read_only_inside_an_allowed_folder(tmp_path: Path) -> None:
    allowed, other = tmp_path / "allowed", tmp_path / "other"
    allowed.mkdir()
    other.mkdir()
    (allowed / "form.png").write_bytes(png())
    (other / "secret.png").write_bytes(png(colour="blue"))
    (allowed / "escape.png").symlink_to(other / "secret.png")
    limits = ImageLimits(dirs=(allowed.resolve(),))

    assert load_image(f"file://{allowed}/form.png", "p", limits).width == 32
    for url in (
        f"file://{other}/secret.png",
        f"file://{allowed}/../other/secret.png",
        f"file://{allowed}/escape.png",  # a link out of the folder is resolved first
    ):
        with pytest.raises(BadRequest, match="outside the folders images may be read from"):
            load_image(url, "p", limits)
    with pytest.raises(BadRequest, match="no such image file"):
        load_image(f"file://{allowed}/missing.png", "p", limits)
    with pytest.raises(BadRequest, match="local path"):
        load_image("file://otherhost/x.png", "p", limits)
    assert (other / "secret.png").read_bytes() == png(colour="blue")  # nothing was changed


def test_limits_on_bytes_and_pixels_are_checked_before_decoding() -> None:
    with pytest.raises(BadRequest, match=r"over the limit of 100 \(QINGLIANG_MAX_IMAGE_BYTES\)"):
        load_image(data_url(png((64, 64))), "p", ImageLimits(max_bytes=100))
    with pytest.raises(BadRequest, match=r"8000x6000 = 48,000,000 pixels, over the limit of 40"):
        load_image(data_url(bomb_png(8000, 6000)), "p", ImageLimits())
    with pytest.raises(BadRequest, match=r"more pixels than Pillow opens safely, over the limit"):
        load_image(data_url(bomb_png(50_000, 50_000)), "p", ImageLimits())


def test_limits_come_from_the_environment_and_bad_values_are_named(tmp_path: Path) -> None:
    env = {
        "QINGLIANG_MAX_IMAGE_BYTES": "1000",
        "QINGLIANG_MAX_IMAGES": "2",
        "QINGLIANG_IMAGE_DIRS": f"{tmp_path}{os.pathsep}{tmp_path / 'b'}",
    }
    limits = ImageLimits.from_env(env)
    assert (limits.max_bytes, limits.max_images) == (1000, 2)
    assert limits.dirs == (tmp_path.resolve(), (tmp_path / "b").resolve())
    assert ImageLimits.from_env({}).dirs == ()
    with pytest.raises(ValueError, match="QINGLIANG_MAX_IMAGES must be a positive integer"):
        ImageLimits.from_env({"QINGLIANG_MAX_IMAGES": "0"})
    with pytest.raises(ValueError, match="QINGLIANG_MAX_IMAGE_PIXELS must be a positive"):
        ImageLimits.from_env({"QINGLIANG_MAX_IMAGE_PIXELS": "lots"})


# ------------------------------------------------------------------ a request's images


def test_a_request_without_images_is_left_alone() -> None:
    body = chat()
    assert prepare(body, "reject") == (body, None)


def test_reject_names_the_part_and_the_modes() -> None:
    with pytest.raises(BadRequest) as err:
        prepare(chat(image_part(data_url(png()))), "reject")
    message = err.value.message
    assert message.startswith("messages[1].content[1]: deployment 'dep' does not take images")
    assert all(mode in message for mode in ("native", "ocr", "reject"))


def test_too_many_images_name_the_first_one_over() -> None:
    body = chat(*[image_part(data_url(png())) for _ in range(3)])
    with pytest.raises(BadRequest) as err:
        prepare(body, "native", max_per_prompt=2)
    assert err.value.message.startswith("messages[1].content[3]: 3 images in one request")
    assert "at most 2" in err.value.message
    with pytest.raises(BadRequest, match="at most 1"):
        prepare(body, "native", limits=ImageLimits(max_images=1))


def test_native_sends_each_image_as_a_checked_data_url_and_keeps_the_request(
    tmp_path: Path,
) -> None:
    (tmp_path / "scan.png").write_bytes(png(colour="blue"))
    body = chat(image_part(data_url(png())), image_part(f"file://{tmp_path}/scan.png"))
    sent, report = prepare(body, "native", limits=ImageLimits(dirs=(tmp_path.resolve(),)))
    parts = sent["messages"][1]["content"]
    assert parts[1]["image_url"]["url"] == data_url(png())
    assert parts[2]["image_url"] == {"url": data_url(png(colour="blue")), "detail": "auto"}
    assert report is not None and report.trace() == {"mode": "native", "count": 2}
    assert report.header() == "native; count=2"
    # the caller's body is not changed (it is recorded as sent)
    assert body["messages"][1]["content"][2]["image_url"]["url"].startswith("file://")


def test_ocr_puts_the_text_read_where_the_image_was() -> None:
    image = text_image(["INVOICE 4821", "TOTAL 365"])
    sent, report = prepare(chat(image_part(data_url(image)), text="Total?"), "ocr")
    parts = sent["messages"][1]["content"]
    assert parts[0] == {"type": "text", "text": "Total?"}
    assert parts[1]["type"] == "text"
    text = parts[1]["text"]
    assert text.startswith("[image 1, its text read by OCR:]\n")
    assert text.endswith("[end of image 1]")
    assert text.index("4821") < text.index("365")  # reading order: top row first
    assert report is not None and report.mode == "ocr" and report.ocr_chars > 10
    assert report.trace()["ocr_chars"] == report.ocr_chars


def test_ocr_of_a_blank_image_says_it_found_no_text() -> None:
    sent, report = prepare(chat(image_part(data_url(png((200, 100), "white")))), "ocr")
    assert sent["messages"][1]["content"][1]["text"] == "[image 1: OCR found no text in it]"
    assert report is not None and report.ocr_chars == 0
    assert ocr_part(2, "  ")["text"] == "[image 2: OCR found no text in it]"


def test_a_bad_image_fails_the_request_before_anything_is_sent() -> None:
    body = chat(image_part(data_url(png())), image_part("https://example.com/x.png"))
    with pytest.raises(BadRequest, match=r"^messages\[1\]\.content\[2\]: images are not fetched"):
        prepare(body, "ocr")


def test_logs_keep_a_description_not_the_pixels() -> None:
    body = chat(image_part(data_url(png())), image_part("file:///data/x.png"))
    logged = without_pixels(body["messages"])
    parts = logged[1]["content"]
    assert parts[1]["image_url"]["url"].startswith("[image image/png 32x16 sha256:")
    assert parts[2]["image_url"]["url"] == "file:///data/x.png"
    assert "base64" not in repr(logged)
    assert body["messages"][1]["content"][1]["image_url"]["url"].startswith("data:")

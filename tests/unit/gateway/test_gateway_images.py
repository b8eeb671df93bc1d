"""Images in chat requests through the gateway (the real app over a fake backend).

Each deployment declares what it does with images (``spec.multimodal.image``): ``native``
sends checked data URLs to the model, ``ocr`` replaces each image by the text the packaged
OCR models read in it, ``reject`` answers 400 naming the part. The answer says what was
done, in its ``qingliang`` trace and the ``X-Qingliang-Images`` header; the conversation
log keeps a description of each image, never its pixels.
"""

from __future__ import annotations

import base64
import io
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from PIL import Image, ImageDraw, ImageFont

from qingliang.platform.gateway.app import create_app
from qingliang.platform.storage.conversations import ConversationLog
from qingliang.serving.traffic import ModelEntry
from tests.unit.gateway.test_gateway import FakeBackend, FakeEmbedder, assert_openai_error

ENTRIES = [
    ModelEntry("vlm", image_mode="native", max_images=2),
    ModelEntry("coder", image_mode="ocr"),
    ModelEntry("plain"),
]


class NoAuth:
    enabled = False

    def verify(self, token: str) -> Any:
        return None


@pytest.fixture
def backend() -> FakeBackend:
    return FakeBackend(list(ENTRIES))


@pytest.fixture
def client(backend: FakeBackend) -> Iterator[TestClient]:
    with TestClient(create_app(backend, FakeEmbedder(), NoAuth())) as c:
        yield c


def png_url(lines: tuple[str, ...] = (), size: tuple[int, int] = (700, 200)) -> str:
    image = Image.new("RGB", size, "white")
    pen = ImageDraw.Draw(image)
    for row, text in enumerate(lines):
        pen.text((30, 30 + 80 * row), text, fill="black", font=ImageFont.load_default(size=40))
    buf = io.BytesIO()
    image.save(buf, "PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def ask(model: str, *urls: str, **extra: Any) -> dict:
    parts = [{"type": "image_url", "image_url": {"url": u}} for u in urls]
    content = [{"type": "text", "text": "What is the serial number?"}, *parts]
    return {"model": model, "messages": [{"role": "user", "content": content}], **extra}


def sent_content(backend: FakeBackend) -> list[dict]:
    return backend.calls[-1][3]["messages"][0]["content"]


def test_native_sends_the_image_and_says_so(client: TestClient, backend: FakeBackend) -> None:
    url = png_url()
    r = client.post("/v1/chat/completions", json=ask("vlm", url))
    assert r.status_code == 200, r.text
    assert sent_content(backend)[1] == {"type": "image_url", "image_url": {"url": url}}
    assert r.json()["qingliang"]["images"] == {"mode": "native", "count": 1}
    assert r.headers["x-qingliang-images"] == "native; count=1"


def test_ocr_gives_a_text_model_the_text_in_the_image(
    client: TestClient, backend: FakeBackend
) -> None:
    r = client.post("/v1/chat/completions", json=ask("coder", png_url(("SERIAL 7305",))))
    assert r.status_code == 200, r.text
    content = sent_content(backend)
    assert content[0]["text"] == "What is the serial number?"
    assert content[1]["type"] == "text"
    assert "7305" in content[1]["text"]
    assert content[1]["text"].startswith("[image 1, its text read by OCR:]")
    trace = r.json()["qingliang"]["images"]
    assert trace["mode"] == "ocr" and trace["count"] == 1 and trace["ocr_chars"] > 0
    assert r.headers["x-qingliang-images"] == "ocr; count=1"


def test_the_trace_is_in_the_first_event_of_a_stream(
    client: TestClient, backend: FakeBackend
) -> None:
    r = client.post("/v1/chat/completions", json=ask("coder", png_url(("A1",)), stream=True))
    assert r.status_code == 200, r.text
    first = json.loads(r.text.split("\n\n")[0].removeprefix("data: "))
    assert first["qingliang"]["images"]["mode"] == "ocr"
    assert backend.calls[-1][0] == "stream"


def test_reject_is_a_400_naming_the_part_and_the_modes(
    client: TestClient, backend: FakeBackend
) -> None:
    r = client.post("/v1/chat/completions", json=ask("plain", png_url()))
    error = assert_openai_error(r, 400, "messages[0].content[1]")
    assert "deployment 'plain' does not take images" in error["message"]
    assert "native" in error["message"] and "ocr" in error["message"]
    assert backend.calls == []


def test_limits_are_400s_that_never_reach_the_model(
    client: TestClient, backend: FakeBackend
) -> None:
    r = client.post("/v1/chat/completions", json=ask("vlm", *[png_url()] * 3))
    assert "at most 2" in assert_openai_error(r, 400, "messages[0].content[3]")["message"]
    r = client.post("/v1/chat/completions", json=ask("vlm", "https://example.com/a.png"))
    assert "not fetched from the network" in assert_openai_error(r, 400)["message"]
    r = client.post("/v1/chat/completions", json=ask("vlm", "file:///etc/hostname"))
    assert "local image files are off" in assert_openai_error(r, 400)["message"]
    assert backend.calls == []


def test_a_text_request_carries_no_image_trace(client: TestClient) -> None:
    body = {"model": "plain", "messages": [{"role": "user", "content": "hi"}]}
    r = client.post("/v1/chat/completions", json=body)
    assert r.status_code == 200, r.text
    assert "images" not in r.json()["qingliang"]
    assert "x-qingliang-images" not in r.headers


def test_the_conversation_log_keeps_a_description_not_the_pixels(
    backend: FakeBackend, tmp_path: Path
) -> None:
    log = ConversationLog(tmp_path / "conversations.sqlite")
    url = png_url(("A1",))
    with TestClient(create_app(backend, FakeEmbedder(), NoAuth(), conversations=log)) as c:
        assert c.post("/v1/chat/completions", json=ask("vlm", url)).status_code == 200
    log.flush()
    out = io.StringIO()
    assert log.export(out) == 1
    log.close()
    row = json.loads(out.getvalue())
    image = row["messages"][0]["content"][1]["image_url"]["url"]
    assert image.startswith("[image image/png 700x200 sha256:")
    assert url.split(",")[1][:200] not in out.getvalue()


def test_a_chat_body_may_carry_images_beyond_the_json_limit(
    client: TestClient, backend: FakeBackend
) -> None:
    """A 6 MB photo fits a chat request (32 MiB), not another JSON body (4 MiB)."""
    noise = Image.frombytes("RGB", (1500, 1400), os.urandom(1500 * 1400 * 3))
    buf = io.BytesIO()
    noise.save(buf, "PNG")
    url = "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()
    assert len(url) > 5 * 1024 * 1024
    r = client.post("/v1/chat/completions", json=ask("vlm", url))
    assert r.status_code == 200, r.text[:300]
    r = client.post("/v1/embeddings", json={"model": "m", "input": url})
    assert r.status_code == 413

"""Images in agent runs: the run's image attachments reach each agent's model as it asks
(``images``: names, the OCR text, or the pixels for a vision-language deployment), and
the router sees the modality and learns which desk handles pictures.

Real LangGraph runtime, run store, router and OCR; the chat model records what it was
sent (the fake is at the model boundary only).
"""

from __future__ import annotations

import base64
import io
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw, ImageFont

from qingliang.agents.llm import ChatReply
from tests.unit.agents.test_agent_runtime import _drain, graph, run, service


class Recording:
    """Answers ``<model>: ok`` and keeps every request's messages."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, list[dict]]] = []

    async def complete(self, model, messages, *, tools=None, max_tokens=256, temperature=0.0,
                       on_delta=None, user=None):  # fmt: skip
        self.sent.append((model, messages))
        if on_delta:
            on_delta(f"{model}: ok")
        return ChatReply(f"{model}: ok", [], 5, model)


def nameplate() -> str:
    image = Image.new("RGB", (700, 140), "white")
    ImageDraw.Draw(image).text((30, 40), "SERIAL 7305", fill="black",
                                font=ImageFont.load_default(size=40))  # fmt: skip
    buf = io.BytesIO()
    image.save(buf, "PNG")
    return base64.b64encode(buf.getvalue()).decode()


def one_agent(mode: str) -> dict:
    return {
        "agents": [{"name": "a", "model": "m", "images": mode}],
        "nodes": [{"name": "n", "type": "agent", "agent": "a"}],
    }


def user_content(chat: Recording) -> Any:
    return [m for m in chat.sent[-1][1] if m["role"] == "user"][-1]["content"]


BODY = {
    "input": "What is the serial number?",
    "attachments": [
        {"name": "plate.png", "data": nameplate()},
        {"name": "notes.txt", "data": base64.b64encode(b"not an image").decode()},
    ],
}


async def test_names_mode_lists_the_files_only(tmp_path: Path) -> None:
    chat = Recording()
    async with service(tmp_path, graph(one_agent("names")), chat=chat) as svc:
        await run(svc, BODY)
    content = user_content(chat)
    assert isinstance(content, str) and "Attached files: notes.txt, plate.png" in content


async def test_ocr_mode_puts_the_text_of_each_image_in_the_prompt(tmp_path: Path) -> None:
    chat = Recording()
    async with service(tmp_path, graph(one_agent("ocr")), chat=chat) as svc:
        await run(svc, BODY)
    text, image = user_content(chat)
    assert text["type"] == "text" and text["text"].startswith("What is the serial number?")
    assert image["type"] == "text" and "(plate.png)" in image["text"]
    assert "7305" in image["text"] and image["text"].startswith("[image 1, its text read by OCR")


async def test_native_mode_sends_the_pixels(tmp_path: Path) -> None:
    chat = Recording()
    async with service(tmp_path, graph(one_agent("native")), chat=chat) as svc:
        await run(svc, BODY)
    _text, image = user_content(chat)
    assert image == {
        "type": "image_url",
        "image_url": {"url": "data:image/png;base64," + BODY["attachments"][0]["data"]},
    }


async def test_an_attachment_that_is_not_an_image_is_said_so(tmp_path: Path) -> None:
    chat = Recording()
    body = {"input": "x", "attachments": [{"name": "fake.png", "data": "iVBORw0KGgo="}]}
    async with service(tmp_path, graph(one_agent("native")), chat=chat) as svc:
        run_id, _ = await run(svc, body)
        assert svc.get(run_id, "city-a").status == "done"
    _text, note = user_content(chat)
    assert note["type"] == "text"
    assert note["text"].startswith("[image 1 could not be read: fake.png: not an image")


DESKS = {
    "agents": [
        {"name": "looker", "model": "vlm", "images": "native"},
        {"name": "writer", "model": "prose"},
    ],
    "nodes": [
        {
            "name": "triage",
            "type": "router",
            "routes": ["vision", "text"],
            "router": {"alpha": 0.3, "floor": 0.05, "seed": 5},
        },
        {"name": "vision", "type": "agent", "agent": "looker"},
        {"name": "text", "type": "agent", "agent": "writer"},
    ],
}


async def test_the_router_learns_that_pictures_go_to_the_vision_desk(tmp_path: Path) -> None:
    """The same words with and without a picture: only the modality tells them apart."""
    picture = [{"name": "plate.png", "data": nameplate()}]
    async with service(tmp_path, graph(DESKS), chat=Recording()) as svc:
        picks = []
        for i in range(60):
            with_image = i % 2 == 0
            body = {
                "input": "please help with this",
                **({"attachments": picture} if with_image else {}),
            }
            run_id, events = await run(svc, body)
            route = next(e for e in events if e["type"] == "route")
            if svc.get(run_id, "city-a").status == "waiting":  # pragma: no cover
                await _drain(svc.resume(run_id, {"action": "approve"}, tenant="city-a", actor="b"))
            right = route["arm"] == ("vision" if with_image else "text")
            await svc.feedback(run_id, 1.0 if right else -1.0, tenant="city-a", actor="u")
            picks.append(right)
    assert sum(picks[-20:]) >= 17, picks
    assert sum(picks[:20]) < sum(picks[-20:])

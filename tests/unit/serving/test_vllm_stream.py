"""How the vLLM engine reads vLLM's SSE strings into typed chunks (no vLLM import).

vLLM's serving classes yield ``data: <model_dump_json>\\n\\n`` strings and end with
``data: [DONE]``; an in-stream failure is a ``data: {"error": ...}`` event.
"""

from __future__ import annotations

import json
from collections.abc import AsyncGenerator

import pytest

from qingliang.platform.errors import ApiError, BadRequest, EngineError
from qingliang.serving.engine import StreamChunk, Usage
from qingliang.serving.engines.vllm_engine import _chunks

CONTENT = {
    "id": "chatcmpl-1",
    "object": "chat.completion.chunk",
    "created": 1,
    "model": "qwen",
    "choices": [
        {
            "index": 0,
            "delta": {"content": '好\n"x" \x01 \u2028 😀'},
            "logprobs": {"content": [{"token": "好", "logprob": -1.2e-05, "bytes": [229]}]},
            "finish_reason": None,
        }
    ],
}
USAGE = {
    "id": "chatcmpl-1",
    "object": "chat.completion.chunk",
    "created": 1,
    "model": "qwen",
    "choices": [],
    "usage": {"prompt_tokens": 3, "completion_tokens": 5, "total_tokens": 8},
}


def event(data: dict) -> str:
    return f"data: {json.dumps(data, ensure_ascii=False, separators=(',', ':'))}\n\n"


class Source:
    """vLLM's stream generator: the events, then ``[DONE]``; records being closed."""

    def __init__(self, events: list[str]) -> None:
        self.events = events
        self.closed = False

    async def gen(self) -> AsyncGenerator[str, None]:
        try:
            for e in self.events:
                yield e
            yield "data: [DONE]\n\n"
        finally:
            self.closed = True


async def test_events_are_parsed_once_into_typed_chunks() -> None:
    source = Source([event(CONTENT), event(USAGE)])
    chunks = [c async for c in _chunks(source.gen())]
    assert chunks == [StreamChunk(CONTENT), StreamChunk(USAGE, Usage(3, 5, 8))]
    assert list(chunks[1].data) == list(USAGE)  # key order as vLLM wrote it
    assert source.closed


@pytest.mark.parametrize(
    ("error", "cls", "message"),
    [
        ({"message": "prompt too long", "type": "BadRequestError", "code": 400}, BadRequest, None),
        ({"message": "engine dead", "code": 500}, ApiError, None),
        ({"message": "odd", "code": "x"}, EngineError, 'data: {"error"'),
    ],
)
async def test_an_error_event_is_raised(error: dict, cls: type, message: str | None) -> None:
    source = Source([event(CONTENT), event({"error": error})])
    stream = _chunks(source.gen())
    assert await anext(stream) == StreamChunk(CONTENT)
    with pytest.raises(cls) as info:
        await anext(stream)
    assert str(info.value).startswith(message or error["message"])
    assert source.closed


async def test_closing_the_stream_closes_vllms() -> None:
    source = Source([event(CONTENT), event(CONTENT)])
    stream = _chunks(source.gen())
    await anext(stream)
    await stream.aclose()  # type: ignore[attr-defined]
    assert source.closed

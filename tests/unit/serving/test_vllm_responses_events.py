"""How the vLLM engine reads vLLM's Responses events (pydantic objects from
``OpenAIServingResponses``, not SSE text) into typed chunks.

The event classes are OpenAI's own (vLLM yields them), built here as vLLM does.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator
from typing import Any

import pytest
from openai.types.responses import (
    ResponseErrorEvent,
    ResponseFunctionCallArgumentsDoneEvent,
    ResponseTextDeltaEvent,
)

from qingliang.platform.errors import ApiError, BadRequest
from qingliang.serving.engines.vllm_engine import _response_events


class Source:
    """An async generator of events that records whether it was closed."""

    def __init__(self, events: list[Any]) -> None:
        self.events = events
        self.closed = False

    async def gen(self) -> AsyncGenerator[Any, None]:
        try:
            for event in self.events:
                yield event
        finally:
            self.closed = True


def delta(text: str, n: int) -> ResponseTextDeltaEvent:
    return ResponseTextDeltaEvent(
        type="response.output_text.delta", delta=text, item_id="msg_1", output_index=0,
        content_index=0, sequence_number=n, logprobs=[],
    )  # fmt: skip


async def test_events_are_dumped_as_vllms_server_writes_them() -> None:
    done = ResponseFunctionCallArgumentsDoneEvent(
        type="response.function_call_arguments.done", arguments='{"city": "福州"}',
        item_id="fc_1", name="get_weather", output_index=0, sequence_number=2,
    )  # fmt: skip
    source = Source([delta("Hel", 0), delta("lo", 1), done])
    got = [c async for c in _response_events(source.gen())]
    assert [c.data for c in got] == [
        e.model_dump(mode="json", by_alias=True) for e in source.events
    ]
    assert got[2].data["arguments"] == '{"city": "福州"}'
    assert all(c.usage is None for c in got)


async def test_an_error_event_is_raised_and_the_stream_closed() -> None:
    error = ResponseErrorEvent(
        type="error", code="400", message="prompt too long", param="input", sequence_number=1
    )
    source = Source([delta("a", 0), error, delta("never", 2)])
    seen = []
    with pytest.raises(ApiError) as info:
        async for chunk in _response_events(source.gen()):
            seen.append(chunk.data["delta"])
    assert seen == ["a"]
    assert isinstance(info.value, BadRequest)
    assert str(info.value) == "prompt too long" and info.value.param == "input"
    assert source.closed


async def test_an_error_without_a_numeric_code_is_a_500() -> None:
    error = ResponseErrorEvent(
        type="error", code="server_error", message="boom", param=None, sequence_number=0
    )
    with pytest.raises(ApiError) as info:
        [c async for c in _response_events(Source([error]).gen())]
    assert info.value.status_code == 500

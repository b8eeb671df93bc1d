"""ModelService's ``responses`` endpoint: served by an engine that has ``responses``
(vLLM), refused with the fix by one that has not (transformers); usage counted from the
Responses API's ``input_tokens``/``output_tokens``, streams passed on whole."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from qingliang.platform.errors import BadRequest
from qingliang.serving.deployments.model import ModelService
from qingliang.serving.engine import ServesResponses, StreamChunk, Usage
from tests.unit.serving.test_model_service import FakeEngine, RecordingMetrics, make_plan

USAGE = {"input_tokens": 11, "output_tokens": 4, "total_tokens": 15}
RESPONSE = {"id": "resp_1", "object": "response", "status": "completed", "output": [],
            "usage": USAGE}  # fmt: skip
EVENTS = [
    {"type": "response.created", "sequence_number": 0, "response": {**RESPONSE, "usage": None}},
    {"type": "response.output_text.delta", "sequence_number": 1, "delta": "Hi"},
    {"type": "response.completed", "sequence_number": 2, "response": RESPONSE},
]


class ResponsesEngine(FakeEngine):
    """A fake engine with the Responses API, as VLLMEngine has."""

    async def responses(self, body: dict, *, adapter: str | None) -> Any:
        self.calls.append(("responses", body, adapter))
        if body.get("stream"):
            return self._events()
        return dict(RESPONSE)

    async def _events(self) -> AsyncIterator[StreamChunk]:
        for data in EVENTS:
            yield StreamChunk.of(data)


def service(engine: FakeEngine, metrics: RecordingMetrics, kind: str = "vllm") -> ModelService:
    return ModelService(make_plan(engine={"kind": kind}), engine, metrics)  # type: ignore[arg-type]


def test_only_the_end_of_a_responses_stream_carries_usage() -> None:
    typed = [StreamChunk.of(e).usage for e in EVENTS]
    assert typed == [None, None, Usage(11, 4, 15)]
    assert Usage.of(USAGE) == Usage(11, 4, 15)


async def test_responses_are_served_and_metered() -> None:
    engine, metrics = ResponsesEngine(), RecordingMetrics()
    assert isinstance(engine, ServesResponses)
    answer = await service(engine, metrics).generate("responses", {"input": "hi"}, None)
    assert answer == RESPONSE
    assert engine.calls[-1] == ("responses", {"input": "hi", "stream": False}, None)
    [seen] = metrics.requests
    assert (seen["endpoint"], seen["status"]) == ("responses", 200)
    assert (seen["prompt_tokens"], seen["completion_tokens"]) == (11, 4)


async def test_responses_stream_is_passed_on_whole() -> None:
    engine, metrics = ResponsesEngine(), RecordingMetrics()
    stream = service(engine, metrics).generate_stream("responses", {"input": "hi"}, None)
    got = [c.data async for c in stream]
    assert got == EVENTS  # the completed event, usage and all, is the client's
    assert engine.calls[-1] == ("responses", {"input": "hi", "stream": True}, None)
    [seen] = metrics.requests
    assert (seen["status"], seen["prompt_tokens"], seen["completion_tokens"]) == (200, 11, 4)


@pytest.mark.parametrize("streamed", [False, True])
async def test_an_engine_without_responses_says_to_use_chat(streamed: bool) -> None:
    engine, metrics = FakeEngine(), RecordingMetrics()
    assert not isinstance(engine, ServesResponses)
    svc = service(engine, metrics, kind="transformers")
    with pytest.raises(BadRequest) as info:
        if streamed:
            [_ async for _ in svc.generate_stream("responses", {"input": "hi"}, None)]
        else:
            await svc.generate("responses", {"input": "hi"}, None)
    assert info.value.param == "model"
    assert "transformers engine" in str(info.value) and "/v1/chat/completions" in str(info.value)
    assert engine.calls == []
    assert metrics.requests[-1]["status"] == 400

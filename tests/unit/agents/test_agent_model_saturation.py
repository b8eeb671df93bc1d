"""An agent's model call waits out a saturated deployment instead of failing its run.

Found by the reliability soak (bench/RESULTS.md, "Reliability"): above capacity, runs
ended ``failed`` with "deployment is saturated" inside an HTTP 200, because the agent's
one model call was refused (429) and the refusal ended the run.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest

from qingliang.agents import llm as models
from qingliang.agents.llm import BackendChat
from qingliang.platform.errors import ApiError, Saturated
from qingliang.serving.engine import StreamChunk


class Backend:
    """Refuses ``refusals`` times (as Serve's back-pressure does), then answers."""

    def __init__(self, refusals: int, mid_stream: bool = False) -> None:
        self.refusals = refusals
        self.mid_stream = mid_stream
        self.calls = 0

    async def generate(self, dep: str, endpoint: str, body: dict, adapter: Any) -> dict:
        self.calls += 1
        if self.calls <= self.refusals:
            raise Saturated("deployment is saturated", retry_after=0.01)
        message = {"role": "assistant", "content": "ok"}
        return {"choices": [{"message": message, "finish_reason": "stop"}], "usage": {}}

    async def stream(
        self, dep: str, endpoint: str, body: dict, adapter: Any
    ) -> AsyncIterator[StreamChunk]:
        self.calls += 1
        if self.mid_stream:
            yield StreamChunk.of({"choices": [{"delta": {"content": "he"}}]})
            raise Saturated("deployment is saturated", retry_after=0.01)
        if self.calls <= self.refusals:
            raise Saturated("deployment is saturated", retry_after=0.01)
        for word in ("he", "llo"):
            yield StreamChunk.of({"choices": [{"delta": {"content": word}}]})


MESSAGES = [{"role": "user", "content": "hi"}]


@pytest.mark.parametrize("stream", [False, True])
def test_a_refused_call_is_asked_again(stream: bool) -> None:
    backend = Backend(refusals=3)
    deltas: list[str] = []
    on_delta = deltas.append if stream else None
    reply = asyncio.run(BackendChat(backend).complete("tiny", MESSAGES, on_delta=on_delta))
    assert backend.calls == 4
    assert reply.text == ("hello" if stream else "ok")
    assert "".join(deltas) == ("hello" if stream else "")  # no token twice


def test_the_wait_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(models, "SATURATED_WAIT_S", 0.1)
    backend = Backend(refusals=10_000)
    with pytest.raises(Saturated):
        asyncio.run(BackendChat(backend).complete("tiny", MESSAGES))
    assert 2 <= backend.calls < 100


def test_tokens_already_sent_are_never_asked_for_again() -> None:
    backend = Backend(refusals=0, mid_stream=True)
    deltas: list[str] = []
    with pytest.raises(ApiError) as info:
        asyncio.run(BackendChat(backend).complete("tiny", MESSAGES, on_delta=deltas.append))
    assert not isinstance(info.value, Saturated)
    assert backend.calls == 1 and deltas == ["he"]

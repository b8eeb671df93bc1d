"""Where a request's time goes: the gateway's work, the queue, the engine, each token.

The replica (``ModelService`` over a fake engine, clocks injected) computes the queue
time, the engine's time to first token and the time per output token; the gateway's
``RequestTiming`` adds up only its own busy spans. Then the whole in-process path, gateway
app → real ``ServeBackend`` → a fake Serve handle calling the real ``ModelServer`` shell:
each figure is observed once per request, a non-streamed body never carries the
replica's private figures, and its ``Server-Timing`` header is well formed.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator, Iterator
from types import SimpleNamespace
from typing import Any

import pytest
from fastapi.testclient import TestClient

from qingliang.platform.errors import BadRequest
from qingliang.platform.gateway.app import create_app
from qingliang.platform.storage.state import StateStore
from qingliang.serving.deployments.handles import ServeBackend
from qingliang.serving.deployments.model import ModelServer, ModelService
from qingliang.serving.engine import StreamChunk
from qingliang.serving.manifest import ModelDeployment
from qingliang.serving.metrics import (
    TIMING_KEY,
    RequestTiming,
    ServingMetrics,
    queue_time,
    start_timing,
    time_per_token,
)
from qingliang.serving.plan import HardwareProfile, compile_plan
from qingliang.serving.traffic import ModelEntry

HELLO = [{"role": "user", "content": "hi"}]
ROLE = {"id": "x", "choices": [{"index": 0, "delta": {"role": "assistant"}}]}


def text(word: str) -> dict:
    return {"id": "x", "choices": [{"index": 0, "delta": {"content": word}}]}


def usage(tokens: int) -> dict:
    return {
        "id": "x",
        "choices": [],
        "usage": {"prompt_tokens": 2, "completion_tokens": tokens, "total_tokens": 2 + tokens},
    }


BODY = {
    "id": "x",
    "object": "chat.completion",
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"}}],
    "usage": {"prompt_tokens": 2, "completion_tokens": 1, "total_tokens": 3},
}


class Recorded:
    """A Ray metric's stand-in: what was observed, with its tags."""

    def __init__(self) -> None:
        self.seen: list[tuple[float, dict]] = []

    def observe(self, value: float, tags: dict) -> None:
        self.seen.append((value, tags))

    inc = set = observe


def recording() -> tuple[ServingMetrics, dict[str, Recorded]]:
    names = ("requests", "rejected", "tokens_in", "tokens_out", "ttft", "latency")
    names += ("ongoing", "gateway", "queue", "engine_ttft", "tpot")
    m = {name: Recorded() for name in names}
    return ServingMetrics(m), m  # type: ignore[arg-type]


class Clock:
    """A clock the test moves; each read returns the time it was set to."""

    def __init__(self, now: float = 100.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class Engine:
    """Streams its chunks, moving the replica's clock by the step given with each."""

    max_model_len = 64

    def __init__(self, clock: Clock, chunks: list[tuple[float, dict]], error: bool = False):
        self.clock = clock
        self.chunks = chunks
        self.error = error

    async def start(self) -> None: ...

    async def chat(self, body: dict, *, adapter: str | None) -> Any:
        if self.error:
            raise BadRequest("prompt too long")
        if not body.get("stream"):
            self.clock.now += 0.25  # the engine's whole answer
            return dict(BODY)
        return self._stream()

    completion = responses = chat

    async def _stream(self) -> AsyncIterator[StreamChunk]:
        for step, data in self.chunks:
            self.clock.now += step
            yield StreamChunk.of(data)

    def adapters(self) -> dict[str, str]:
        return {}


def plan() -> Any:
    md = ModelDeployment.model_validate(
        {
            "apiVersion": "qingliang.io/v1",
            "kind": "ModelDeployment",
            "metadata": {"name": "tiny"},
            "spec": {"model": {"source": "/models/tiny"}},
        }
    )
    return compile_plan(md, HardwareProfile(cpu_isa="avx2", vllm=True), "tiny.yaml")


def service(engine: Engine, clock: Clock, wall: Clock, metrics: ServingMetrics) -> ModelService:
    return ModelService(plan(), engine, metrics, clock=clock, wall=wall)  # type: ignore[arg-type]


async def drain(agen: AsyncIterator[Any]) -> list[Any]:
    return [x async for x in agen]


# -- the replica's figures ---------------------------------------------------------------


def test_a_stream_s_queue_ttft_and_time_per_token_at_the_replica() -> None:
    clock, wall = Clock(), Clock(1000.0)
    metrics, m = recording()
    # role chunk at +0.4 s, tokens at +0.5, +0.6, +0.8, usage at +0.81: the role chunk
    # is not a token; 3 tokens over 0.3 s is 0.15 s per token after the first.
    chunks = [(0.4, ROLE), (0.1, text("a")), (0.1, text("b")), (0.2, text("c"))]
    engine = Engine(clock, [*chunks, (0.01, usage(3))])
    svc = service(engine, clock, wall, metrics)

    asyncio.run(drain(svc.generate_stream("chat", {"messages": []}, "a", sent_at=999.998)))

    assert [v for v, _ in m["queue"].seen] == [pytest.approx(0.002)]
    assert [v for v, _ in m["engine_ttft"].seen] == [pytest.approx(0.5)]
    assert [v for v, _ in m["tpot"].seen] == [pytest.approx(0.15)]
    assert m["tpot"].seen[0][1] == {"deployment": "tiny", "adapter": "a", "side": "replica"}
    assert m["queue"].seen[0][1] == {"deployment": "tiny", "adapter": "a"}
    assert m["gateway"].seen == []  # the gateway's figure is the gateway's


def test_a_clock_behind_the_gateway_s_gives_zero_queue_not_a_negative_one() -> None:
    clock, wall = Clock(), Clock(1000.0)
    metrics, m = recording()
    svc = service(Engine(clock, [(0.1, text("a"))]), clock, wall, metrics)
    asyncio.run(drain(svc.generate_stream("chat", {}, None, sent_at=1000.5)))
    assert [v for v, _ in m["queue"].seen] == [0.0]
    assert queue_time(None, 5.0) is None
    assert queue_time(True, 5.0) is None


def test_one_token_has_no_time_per_token_and_a_failure_only_its_queue_time() -> None:
    clock, wall = Clock(), Clock(1000.0)
    metrics, m = recording()
    svc = service(Engine(clock, [(0.1, text("a")), (0.0, usage(1))]), clock, wall, metrics)
    asyncio.run(drain(svc.generate_stream("chat", {}, None, sent_at=999.9)))
    assert len(m["engine_ttft"].seen) == 1 and m["tpot"].seen == []

    failing = service(Engine(clock, [], error=True), clock, wall, metrics)
    with pytest.raises(BadRequest):
        asyncio.run(drain(failing.generate_stream("chat", {}, None, sent_at=999.9)))
    assert len(m["queue"].seen) == 2 and len(m["engine_ttft"].seen) == 1


def test_a_non_streamed_answer_carries_the_replica_s_figures_only_when_asked() -> None:
    clock, wall = Clock(), Clock(1000.0)
    metrics, m = recording()
    svc = service(Engine(clock, []), clock, wall, metrics)

    out = asyncio.run(svc.generate("chat", {"messages": []}, None, sent_at=999.99))
    assert out[TIMING_KEY] == {"queue_s": pytest.approx(0.01), "engine_s": pytest.approx(0.25)}
    assert [v for v, _ in m["engine_ttft"].seen] == [pytest.approx(0.25)]
    assert m["tpot"].seen == []  # no tokens seen one by one

    out = asyncio.run(svc.generate("chat", {"messages": []}, None))  # a caller without meta
    assert TIMING_KEY not in out
    assert len(m["queue"].seen) == 1  # no send time, no queue time


# -- the gateway's own work ----------------------------------------------------------------


def test_the_gateway_counts_its_busy_spans_not_the_wait_for_the_model() -> None:
    clock = Clock(0.0)
    metrics, m = recording()
    timing = RequestTiming(clock=clock, wall=lambda: 5e8)
    timing.bind(metrics, "tiny", None)
    clock.now = 0.002
    assert timing.send() == 5e8  # 2 ms of its own before the hand-off
    clock.now = 1.0  # the model: not counted
    timing.received(token=True)
    clock.now = 1.0003
    timing.waiting()
    clock.now = 1.2
    timing.received(token=True)
    clock.now = 1.2001
    timing.waiting()
    clock.now = 1.3
    timing.received()  # the end of the stream
    timing.tokens = 3
    clock.now = 1.3006
    assert timing.finish() == pytest.approx(0.003)
    assert timing.finish() == pytest.approx(0.003)  # a second finish observes nothing
    assert [v for v, _ in m["gateway"].seen] == [pytest.approx(0.003)]
    assert [v for v, _ in m["tpot"].seen] == [pytest.approx(0.1)]
    assert m["tpot"].seen[0][1]["side"] == "gateway"
    assert time_per_token(None, 1.0, 5) is None


# -- the whole path in one process ---------------------------------------------------------


class Handle:
    """The Serve handle boundary: calls the real ModelServer shell in this process."""

    def __init__(self, server: ModelServer) -> None:
        self.metas: list[Any] = []
        self.generate = SimpleNamespace(remote=self._generate)
        self.generate_stream = SimpleNamespace(remote=self._stream)
        self.server = server

    def options(self, **_: Any) -> Handle:
        return self

    async def _generate(self, *args: Any) -> dict:
        self.metas.append(args[3])
        return await self.server.generate(*args)

    def _stream(self, *args: Any) -> AsyncIterator[dict]:
        self.metas.append(args[3])
        return self.server.generate_stream(*args)


class Server(ModelServer):
    """The real shell without its engine's shutdown (there is no Ray replica to end)."""

    def __del__(self) -> None:  # type: ignore[override]
        pass


class Backend(ServeBackend):
    def models(self) -> list[ModelEntry]:
        return [ModelEntry("tiny", ("a",))]


@pytest.fixture
def path(tmp_path: Any) -> Iterator[tuple[TestClient, dict[str, Recorded], Handle]]:
    metrics, m = recording()
    clock = Clock()
    engine = Engine(clock, [(0.1, ROLE), (0.1, text("a")), (0.1, text("b")), (0.0, usage(2))])
    server = object.__new__(Server)
    server._service = ModelService(plan(), engine, metrics, clock=clock)  # type: ignore[arg-type]
    handle = Handle(server)
    backend = Backend(StateStore(tmp_path / "state.sqlite"), metrics)
    backend._handles["tiny"] = handle
    auth = SimpleNamespace(enabled=False, verify=lambda token: None)
    with TestClient(create_app(backend, None, auth)) as client:  # type: ignore[arg-type]
        yield client, m, handle


SERVER_TIMING = re.compile(r"gateway;dur=\d+\.\d{3}, queue;dur=\d+\.\d{3}, engine;dur=\d+\.\d{3}")


def test_a_non_streamed_answer_says_where_its_time_went(path: Any) -> None:
    client, m, handle = path
    r = client.post("/v1/chat/completions", json={"model": "tiny:a", "messages": HELLO})
    assert r.status_code == 200, r.text
    assert TIMING_KEY not in r.json() and TIMING_KEY not in r.text
    assert r.json()["choices"][0]["message"]["content"] == "hi"
    assert SERVER_TIMING.fullmatch(r.headers["server-timing"]), r.headers["server-timing"]
    assert "engine;dur=250.000" in r.headers["server-timing"]  # the fake engine's 0.25 s
    assert isinstance(handle.metas[0]["sent_at"], float)
    for name in ("gateway", "queue", "engine_ttft"):
        assert [t for _, t in m[name].seen] == [{"deployment": "tiny", "adapter": "a"}], name
    assert m["tpot"].seen == []


def test_a_non_streamed_response_says_it_too(path: Any) -> None:
    client, m, _ = path
    r = client.post("/v1/responses", json={"model": "tiny", "input": "hi"})
    assert r.status_code == 200, r.text
    assert TIMING_KEY not in r.text
    assert SERVER_TIMING.fullmatch(r.headers["server-timing"]), r.headers["server-timing"]
    assert len(m["gateway"].seen) == len(m["queue"].seen) == 1


def test_a_stream_is_observed_once_on_each_side(path: Any) -> None:
    client, m, handle = path
    body = {"model": "tiny", "messages": HELLO, "stream": True}
    with client.stream("POST", "/v1/chat/completions", json=body) as r:
        events = [line for line in r.iter_lines() if line]
    assert events[-1] == "data: [DONE]" and len(events) == 4  # role, a, b, done
    assert "server-timing" not in r.headers
    assert len(m["gateway"].seen) == len(m["queue"].seen) == len(m["engine_ttft"].seen) == 1
    assert sorted(t["side"] for _, t in m["tpot"].seen) == ["gateway", "replica"]
    replica = next(v for v, t in m["tpot"].seen if t["side"] == "replica")
    assert replica == pytest.approx(0.1)  # two tokens 0.1 s apart on the replica's clock
    assert [v for v, _ in m["engine_ttft"].seen] == [pytest.approx(0.2)]


def test_a_request_that_fails_before_the_replica_observes_no_gateway_time(path: Any) -> None:
    client, m, _ = path
    r = client.post("/v1/chat/completions", json={"model": "nope", "messages": HELLO})
    assert r.status_code == 404
    assert m["gateway"].seen == [] and m["queue"].seen == []


def test_timings_of_concurrent_requests_stay_apart() -> None:
    async def one(n: int) -> RequestTiming:
        timing = start_timing(RequestTiming())
        await asyncio.sleep(0)
        from qingliang.serving.metrics import current_timing

        assert current_timing() is timing
        return timing

    async def both() -> list[RequestTiming]:
        return list(await asyncio.gather(one(1), one(2)))

    first, second = asyncio.run(both())
    assert first is not second

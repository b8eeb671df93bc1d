"""ModelService over a fake Engine: adapter reconciliation, metering, stream usage, options.

The Ray Serve shell (``ModelServer``, ``build_model_app``, ``app_builder``) needs Ray
and is covered by the integration tests.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from types import SimpleNamespace
from typing import Any

import pytest

from qingliang.platform.errors import ApiError, BadRequest, EngineError, NotFound, Saturated
from qingliang.serving.deployments.model import (
    MODEL_DEPLOYMENT,
    ModelServer,
    ModelService,
    deployment_options,
)
from qingliang.serving.engine import Engine, StreamChunk, Usage
from qingliang.serving.manifest import ModelDeployment
from qingliang.serving.plan import DeploymentPlan, HardwareProfile, compile_plan

USAGE_CHUNK = StreamChunk.of(
    {
        "id": "x",
        "object": "chat.completion.chunk",
        "choices": [],
        "usage": {"prompt_tokens": 3, "completion_tokens": 5, "total_tokens": 8},
    }
)
CONTENT = [
    StreamChunk.of(
        {
            "id": "x",
            "object": "chat.completion.chunk",
            "choices": [{"index": 0, "delta": {"content": word}, "finish_reason": None}],
        }
    )
    for word in ("Hel", "lo")
]
CHUNKS = [*CONTENT, USAGE_CHUNK]
BODY = {
    "id": "x",
    "object": "chat.completion",
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"}}],
    "usage": {"prompt_tokens": 7, "completion_tokens": 2, "total_tokens": 9},
}


class FakeEngine:
    """Records calls; like TransformersEngine it refuses a new path for a loaded name."""

    max_model_len = 2048

    def __init__(self, loaded: dict[str, str] | None = None) -> None:
        self.loaded = dict(loaded or {})
        self.calls: list[tuple] = []
        self.failures: dict[tuple[str, str], Exception] = {}  # (op, name) -> error
        self.error: Exception | None = None  # raised by chat/completion
        self.mid_error: Exception | None = None  # raised after the first chunk
        self.chunks = list(CHUNKS)
        self.closed = False
        self.probe: Callable[[], None] = lambda: None

    async def start(self) -> None:
        self.calls.append(("start",))

    async def _generate(self, endpoint: str, body: dict, adapter: str | None) -> Any:
        self.calls.append((endpoint, body, adapter))
        self.probe()
        if self.error is not None:
            raise self.error
        return self._stream() if body.get("stream") else dict(BODY)

    async def chat(self, body: dict, *, adapter: str | None) -> Any:
        return await self._generate("chat", body, adapter)

    async def completion(self, body: dict, *, adapter: str | None) -> Any:
        return await self._generate("completion", body, adapter)

    async def _stream(self) -> AsyncIterator[StreamChunk]:
        try:
            for i, chunk in enumerate(self.chunks):
                if i == 1 and self.mid_error is not None:
                    raise self.mid_error
                yield chunk
        finally:
            self.closed = True

    async def load_adapter(self, name: str, path: str) -> None:
        self.calls.append(("load", name, path))
        await asyncio.sleep(0)  # a real load yields to the loop
        if ("load", name) in self.failures:
            raise self.failures[("load", name)]
        self.loaded[name] = path

    async def unload_adapter(self, name: str) -> None:
        self.calls.append(("unload", name))
        if ("unload", name) in self.failures:
            raise self.failures[("unload", name)]
        if name not in self.loaded:
            raise NotFound(f"adapter {name!r} is not loaded")
        del self.loaded[name]

    def adapters(self) -> dict[str, str]:
        return dict(self.loaded)

    async def check_health(self) -> None:
        pass

    async def shutdown(self) -> None:
        pass


class RecordingMetrics:
    """Same methods as ServingMetrics; keeps what it was told."""

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.rejections: list[tuple] = []
        self.gauge: list[tuple[str, int]] = []

    def request(
        self,
        deployment: str,
        adapter: str | None,
        endpoint: str,
        status: int,
        *,
        latency_s: float | None = None,
        ttft_s: float | None = None,
        prompt_tokens: int = 0,
        completion_tokens: int = 0,
    ) -> None:
        self.requests.append(
            {
                "deployment": deployment,
                "adapter": adapter,
                "endpoint": endpoint,
                "status": status,
                "latency_s": latency_s,
                "ttft_s": ttft_s,
                "prompt_tokens": prompt_tokens,
                "completion_tokens": completion_tokens,
            }
        )

    def rejected(self, deployment: str, adapter: str | None, endpoint: str) -> None:
        self.rejections.append((deployment, adapter, endpoint))

    def ongoing(self, deployment: str, value: int) -> None:
        self.gauge.append((deployment, value))

    @property
    def current(self) -> int:
        return self.gauge[-1][1] if self.gauge else 0


def make_plan(**spec: Any) -> DeploymentPlan:
    md = ModelDeployment.model_validate(
        {
            "apiVersion": "qingliang.io/v1",
            "kind": "ModelDeployment",
            "metadata": {"name": "tiny"},
            "spec": {"model": {"source": "/models/tiny"}, **spec},
        }
    )
    return compile_plan(md, HardwareProfile(cpu_isa="avx2", vllm=True), "tiny.yaml")


@pytest.fixture
def engine() -> FakeEngine:
    return FakeEngine()


@pytest.fixture
def metrics() -> RecordingMetrics:
    return RecordingMetrics()


@pytest.fixture
def service(engine: FakeEngine, metrics: RecordingMetrics) -> ModelService:
    return ModelService(make_plan(lora={"enabled": True}), engine, metrics)  # type: ignore[arg-type]


async def collect(agen: AsyncIterator[str]) -> list[str]:
    return [chunk async for chunk in agen]


def test_fake_engine_meets_the_protocol(engine: FakeEngine) -> None:
    assert isinstance(engine, Engine)


# -------------------------------------------------------------------------- adapters


async def test_sync_adapters_reconciles(metrics: RecordingMetrics) -> None:
    engine = FakeEngine({"same": "/a/same", "moved": "/a/old", "gone": "/a/gone"})
    service = ModelService(make_plan(lora={"enabled": True}), engine, metrics)  # type: ignore[arg-type]
    report = await service.sync_adapters({"same": "/a/same", "moved": "/a/new", "new": "/a/new2"})
    assert report == {"loaded": ["moved", "new"], "unloaded": ["gone"], "failed": []}
    assert engine.loaded == {"same": "/a/same", "moved": "/a/new", "new": "/a/new2"}
    assert ("load", "same", "/a/same") not in engine.calls  # unchanged: left alone
    # A moved adapter is replaced by one load (no unload, so no moment without it).
    assert ("unload", "moved") not in engine.calls
    assert ("load", "moved", "/a/new") in engine.calls
    assert await service.sync_adapters(dict(engine.loaded)) == {
        "loaded": [],
        "unloaded": [],
        "failed": [],
    }


async def test_sync_adapters_to_empty(service: ModelService, engine: FakeEngine) -> None:
    engine.loaded = {"a": "/a", "b": "/b"}
    report = await service.sync_adapters({})
    assert report["unloaded"] == ["a", "b"]
    assert engine.loaded == {}


async def test_sync_adapter_failures_reported_together(
    service: ModelService, engine: FakeEngine
) -> None:
    engine.loaded = {"old": "/a/old", "stuck": "/a/stuck"}
    engine.failures[("load", "bad1")] = BadRequest("no adapter_config.json")
    engine.failures[("load", "bad2")] = EngineError("worker died")
    engine.failures[("unload", "stuck")] = NotFound("gone already")
    with pytest.raises(BadRequest) as info:
        await service.sync_adapters({"bad1": "/x", "bad2": "/y", "good": "/a/good"})
    message = str(info.value)
    assert "'tiny'" in message
    assert "bad1: no adapter_config.json" in message
    assert "bad2: worker died" in message
    assert "stuck: gone already" in message
    # The others were applied all the same.
    assert engine.loaded == {"good": "/a/good", "stuck": "/a/stuck"}
    assert ("unload", "old") in engine.calls


async def test_sync_adapters_is_serialised(service: ModelService, engine: FakeEngine) -> None:
    await asyncio.gather(
        service.sync_adapters({"a": "/a"}), service.sync_adapters({"a": "/a", "b": "/b"})
    )
    assert engine.loaded == {"a": "/a", "b": "/b"}
    assert [c for c in engine.calls if c[0] == "load"] == [("load", "a", "/a"), ("load", "b", "/b")]


# ------------------------------------------------------------------------ generation


async def test_generate_records_200_and_tokens(
    service: ModelService, engine: FakeEngine, metrics: RecordingMetrics
) -> None:
    seen: list[int] = []
    engine.probe = lambda: seen.append(metrics.current)
    body = {"model": "tiny:sql", "messages": [], "stream": True}
    out = await service.generate("chat", body, "sql")
    assert out == BODY
    assert engine.calls == [("chat", {**body, "stream": False}, "sql")]
    assert body["stream"] is True  # the caller's body is not changed
    assert seen == [1]
    assert metrics.current == 0
    (rec,) = metrics.requests
    assert rec["status"] == 200
    assert (rec["deployment"], rec["adapter"], rec["endpoint"]) == ("tiny", "sql", "chat")
    assert (rec["prompt_tokens"], rec["completion_tokens"]) == (7, 2)
    assert rec["latency_s"] >= 0 and rec["ttft_s"] == rec["latency_s"]


async def test_generate_completion_endpoint(service: ModelService, engine: FakeEngine) -> None:
    await service.generate("completion", {"prompt": "x"}, None)
    assert engine.calls[0][0] == "completion"


@pytest.mark.parametrize(
    ("error", "status"),
    [(BadRequest("too long"), 400), (NotFound("no adapter"), 404), (Saturated("busy"), 429)],
)
async def test_generate_api_error(
    service: ModelService,
    engine: FakeEngine,
    metrics: RecordingMetrics,
    error: ApiError,
    status: int,
) -> None:
    engine.error = error
    with pytest.raises(type(error)) as info:
        await service.generate("chat", {}, None)
    assert info.value is error
    (rec,) = metrics.requests
    assert rec["status"] == status
    assert rec["ttft_s"] is None and rec["prompt_tokens"] == 0
    assert metrics.current == 0


async def test_generate_engine_failure_is_500(
    service: ModelService, engine: FakeEngine, metrics: RecordingMetrics
) -> None:
    engine.error = EngineError("engine died")
    with pytest.raises(EngineError):
        await service.generate("chat", {}, None)
    assert metrics.requests[0]["status"] == 500
    assert metrics.current == 0


async def test_stream_strips_usage_unless_asked(
    service: ModelService, engine: FakeEngine, metrics: RecordingMetrics
) -> None:
    body = {"messages": [], "stream_options": {"continuous_usage_stats": False}}
    chunks = await collect(service.generate_stream("chat", body, "sql"))
    assert chunks == CONTENT
    sent = engine.calls[0][1]
    assert sent["stream"] is True
    assert sent["stream_options"] == {"continuous_usage_stats": False, "include_usage": True}
    assert body == {"messages": [], "stream_options": {"continuous_usage_stats": False}}
    (rec,) = metrics.requests
    assert rec["status"] == 200 and rec["adapter"] == "sql"
    assert (rec["prompt_tokens"], rec["completion_tokens"]) == (3, 5)
    assert rec["ttft_s"] is not None and 0 <= rec["ttft_s"] <= rec["latency_s"]


async def test_stream_keeps_usage_when_asked(
    service: ModelService, metrics: RecordingMetrics
) -> None:
    body = {"stream_options": {"include_usage": True}}
    chunks = await collect(service.generate_stream("completion", body, None))
    assert chunks == CHUNKS
    assert chunks[2].usage == Usage(3, 5, 8)
    rec = metrics.requests[0]
    assert (rec["endpoint"], rec["prompt_tokens"], rec["completion_tokens"]) == ("completion", 3, 5)


async def test_stream_without_usage_chunk(
    service: ModelService, engine: FakeEngine, metrics: RecordingMetrics
) -> None:
    engine.chunks = list(CONTENT)
    assert await collect(service.generate_stream("chat", {}, None)) == CONTENT
    assert metrics.requests[0]["prompt_tokens"] == 0


def test_only_the_usage_only_event_carries_typed_usage() -> None:
    assert USAGE_CHUNK.usage == Usage(3, 5, 8)
    assert all(c.usage is None for c in CONTENT)
    # continuous_usage_stats: usage on a chunk with choices is not the answer's usage
    running = StreamChunk.of({**CONTENT[0].data, "usage": {"total_tokens": 4}})
    assert running.usage is None
    assert StreamChunk.of({"choices": [], "usage": None}).usage is None


async def test_stream_usage_is_counted_once(
    service: ModelService, engine: FakeEngine, metrics: RecordingMetrics
) -> None:
    running = [StreamChunk.of({**c.data, "usage": {"prompt_tokens": 3}}) for c in CONTENT]
    engine.chunks = [*running, USAGE_CHUNK]
    body = {"stream_options": {"include_usage": True}}
    assert await collect(service.generate_stream("chat", body, None)) == engine.chunks
    (rec,) = metrics.requests
    assert (rec["prompt_tokens"], rec["completion_tokens"]) == (3, 5)


async def test_stream_options_must_be_an_object(
    service: ModelService, engine: FakeEngine, metrics: RecordingMetrics
) -> None:
    with pytest.raises(BadRequest) as info:
        await collect(service.generate_stream("chat", {"stream_options": "yes"}, None))
    assert info.value.param == "stream_options"
    assert engine.calls == []
    assert metrics.requests[0]["status"] == 400
    assert metrics.current == 0


async def test_ongoing_gauge_counts_open_streams(
    service: ModelService, metrics: RecordingMetrics
) -> None:
    one = service.generate_stream("chat", {}, None)
    two = service.generate_stream("chat", {}, None)
    await one.__anext__()
    assert metrics.current == 1
    await two.__anext__()
    assert metrics.current == 2
    assert service.describe()["ongoing"] == 2
    await collect(one)
    assert metrics.current == 1
    await collect(two)
    assert metrics.current == 0
    assert [r["status"] for r in metrics.requests] == [200, 200]


async def test_stream_error_before_first_chunk(
    service: ModelService, engine: FakeEngine, metrics: RecordingMetrics
) -> None:
    engine.error = Saturated("busy")
    with pytest.raises(Saturated):
        await collect(service.generate_stream("chat", {}, None))
    (rec,) = metrics.requests
    assert rec["status"] == 429 and rec["ttft_s"] is None
    assert metrics.current == 0


async def test_stream_error_mid_stream(
    service: ModelService, engine: FakeEngine, metrics: RecordingMetrics
) -> None:
    engine.mid_error = NotFound("adapter unloaded")
    agen = service.generate_stream("chat", {}, "sql")
    assert await agen.__anext__() == CONTENT[0]
    with pytest.raises(NotFound):
        await agen.__anext__()
    (rec,) = metrics.requests
    assert rec["status"] == 404 and rec["ttft_s"] is not None
    assert metrics.current == 0


async def test_consumer_stops_early(
    service: ModelService, engine: FakeEngine, metrics: RecordingMetrics
) -> None:
    agen = service.generate_stream("chat", {}, None)
    assert await agen.__anext__() == CONTENT[0]
    assert metrics.current == 1
    await agen.aclose()
    assert metrics.current == 0
    assert engine.closed  # the engine's stream was closed, not left to the GC
    (rec,) = metrics.requests
    assert rec["status"] == 499


async def test_cancelled_stream(
    service: ModelService, engine: FakeEngine, metrics: RecordingMetrics
) -> None:
    gate = asyncio.Event()

    async def slow() -> AsyncIterator[StreamChunk]:
        yield CONTENT[0]
        await gate.wait()
        yield CONTENT[1]

    async def chat(body: dict, *, adapter: str | None) -> AsyncIterator[StreamChunk]:
        return slow()

    engine.chat = chat  # type: ignore[method-assign]
    task = asyncio.create_task(collect(service.generate_stream("chat", {}, None)))
    await asyncio.sleep(0.01)
    assert metrics.current == 1
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert metrics.current == 0
    assert metrics.requests[0]["status"] == 499


def test_describe(service: ModelService, engine: FakeEngine) -> None:
    engine.loaded = {"sql": "/a/sql"}
    assert service.describe() == {
        "deployment": "tiny",
        "engine": "vllm",
        "dtype": "float32",
        "max_model_len": 2048,
        "adapters": {"sql": "/a/sql"},
        "ongoing": 0,
    }


# --------------------------------------------------------------------------- options


def test_options_fixed_replicas() -> None:
    plan = make_plan(
        autoscaling={"min_replicas": 2, "max_replicas": 2},
        engine={"max_concurrent_requests": 8, "max_queued_requests": 5},
        lora={"adapters": {"sql": "/a/sql", "tutor": "/a/tutor"}},
        placement={"cpus": 2},
    )
    opts = deployment_options(plan)
    assert opts["name"] == MODEL_DEPLOYMENT
    assert opts["num_replicas"] == 2
    assert "autoscaling_config" not in opts
    assert opts["max_ongoing_requests"] == 8
    assert opts["max_queued_requests"] == 5
    assert opts["user_config"] == {"adapters": {"sql": "/a/sql", "tutor": "/a/tutor"}}
    assert opts["ray_actor_options"] == {"num_cpus": 2.0}
    opts["ray_actor_options"]["num_cpus"] = 99  # a copy: the plan is not changed
    assert plan.ray_actor_options == {"num_cpus": 2.0}


def test_options_autoscaling() -> None:
    plan = make_plan(autoscaling={"min_replicas": 0, "max_replicas": 3, "upscale_delay_s": 1})
    opts = deployment_options(plan)
    assert "num_replicas" not in opts
    assert opts["autoscaling_config"] == {
        "min_replicas": 0,
        "max_replicas": 3,
        "target_ongoing_requests": 4.0,
        "upscale_delay_s": 1.0,
        "downscale_delay_s": 300.0,
    }
    assert opts["user_config"] == {"adapters": {}}
    assert opts["max_ongoing_requests"] == 32 and opts["max_queued_requests"] == 64
    with_initial = make_plan(autoscaling={"max_replicas": 4, "initial_replicas": 2})
    assert deployment_options(with_initial)["autoscaling_config"]["initial_replicas"] == 2


class SlowEngine(FakeEngine):
    """Answers after `delay` seconds; streams with `gap` seconds between chunks."""

    def __init__(self, delay: float = 0.0, gap: float = 0.0) -> None:
        super().__init__()
        self.delay, self.gap = delay, gap

    async def _generate(self, endpoint: str, body: dict, adapter: str | None) -> Any:
        if not body.get("stream"):
            await asyncio.sleep(self.delay)
        return await super()._generate(endpoint, body, adapter)

    async def _stream(self) -> AsyncIterator[StreamChunk]:
        try:
            await asyncio.sleep(self.delay)
            for chunk in self.chunks:
                yield chunk
                await asyncio.sleep(self.gap)
        finally:
            self.closed = True


def _timed_service(engine: FakeEngine, metrics: RecordingMetrics) -> ModelService:
    plan = make_plan(engine={"request_timeout_s": 0.2})
    return ModelService(plan, engine, metrics)  # type: ignore[arg-type]


async def test_request_timeout_stops_a_slow_answer_with_504(metrics: RecordingMetrics) -> None:
    service = _timed_service(SlowEngine(delay=5), metrics)
    with pytest.raises(ApiError) as info:
        await service.generate("chat", {"messages": []}, None)
    assert info.value.status_code == 504
    assert "request_timeout_s (0.2 s)" in info.value.message
    assert service._ongoing == 0


async def test_request_timeout_covers_the_wait_for_the_first_chunk(
    metrics: RecordingMetrics,
) -> None:
    engine = SlowEngine(delay=5)
    service = _timed_service(engine, metrics)
    with pytest.raises(ApiError) as info:
        async for _ in service.generate_stream("chat", {"messages": []}, None):
            pass
    assert info.value.status_code == 504
    assert service._ongoing == 0


async def test_request_timeout_ends_a_stream_that_runs_too_long(metrics: RecordingMetrics) -> None:
    engine = SlowEngine(gap=0.15)
    service = _timed_service(engine, metrics)
    got = []
    with pytest.raises(ApiError) as info:
        async for chunk in service.generate_stream("chat", {"messages": []}, None):
            got.append(chunk)
    assert info.value.status_code == 504
    assert len(got) in range(1, len(CHUNKS))  # some tokens went out before the deadline
    assert engine.closed and service._ongoing == 0


async def test_fast_requests_are_untouched_by_the_timeout(metrics: RecordingMetrics) -> None:
    service = _timed_service(SlowEngine(), metrics)
    assert (await service.generate("chat", {"messages": []}, None))["id"] == "x"
    chunks = [c async for c in service.generate_stream("chat", {"messages": []}, None)]
    assert chunks == CONTENT


async def test_the_replica_sends_the_chunks_dicts(service: ModelService) -> None:
    """Plain dicts cross Ray (msgpack, not cloudpickle); the caller types them again."""
    server: Any = SimpleNamespace(_service=service)  # a ModelServer has an async __del__
    body = {"stream_options": {"include_usage": True}}
    sent = [d async for d in ModelServer.generate_stream(server, "chat", body, None)]
    assert sent == [c.data for c in CHUNKS]
    assert [StreamChunk.of(d) for d in sent] == CHUNKS  # what ServeBackend.stream yields

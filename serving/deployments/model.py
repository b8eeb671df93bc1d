"""One Ray Serve deployment per ModelDeployment: a thin shell over :class:`ModelService`.

``ModelService`` is a plain class (engine injected) that meters requests and keeps
the adapter set in line with the manifest; ``ModelServer`` is the Ray Serve class
that builds the engine on its replica and forwards to it. Adapters travel in the
deployment's ``user_config``: changing them is a Serve lightweight update, so every
replica's ``reconfigure`` loads / unloads them without a restart.

Example:
    >>> app = build_model_app(plan)                        # doctest: +SKIP
    >>> serve.run(app, name=plan.name, route_prefix=None)  # doctest: +SKIP
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from qingliang.platform.errors import ApiError, BadRequest, EngineError
from qingliang.serving.engine import Engine, EngineOutput, ServesResponses, StreamChunk, Usage
from qingliang.serving.metrics import (
    TIMING_KEY,
    ServingMetrics,
    queue_time,
    time_per_token,
)
from qingliang.serving.plan import DeploymentPlan

logger = logging.getLogger(__name__)

#: Name of the Serve deployment inside each model application.
MODEL_DEPLOYMENT = "ModelServer"


def make_engine(plan: DeploymentPlan) -> Engine:
    """The engine class the plan asks for (imported lazily: both are heavy)."""
    if plan.engine == "vllm":
        from qingliang.serving.engines.vllm_engine import VLLMEngine

        return VLLMEngine(plan)
    from qingliang.serving.engines.transformers_engine import TransformersEngine

    return TransformersEngine(plan)  # type: ignore[return-value]


class ModelService:
    """Serving logic for one deployment: metering, adapter reconciliation, health.

    A request may carry ``sent_at``, the gateway's wall-clock time of handing it to the
    Serve handle: its queue time is measured from there (``wall``) to the replica starting
    it; the engine's time to first token and time per output token on ``clock``
    (:meth:`ServingMetrics.replica_split`). A non-streamed answer to such a request carries
    the replica's figures under :data:`~qingliang.serving.metrics.TIMING_KEY`, which the
    gateway's handle takes out.
    """

    def __init__(
        self,
        plan: DeploymentPlan,
        engine: Engine,
        metrics: ServingMetrics,
        *,
        clock: Callable[[], float] = time.perf_counter,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.plan = plan
        self.engine = engine
        self.metrics = metrics
        self._clock = clock
        self._wall = wall
        self._ongoing = 0
        self._adapter_lock = asyncio.Lock()

    async def start(self) -> None:
        await self.engine.start()

    async def sync_adapters(self, desired: dict[str, str]) -> dict[str, list[str]]:
        """Load, reload and unload so the engine serves exactly ``desired``.

        A failure on one adapter does not stop the others; the failures are raised
        together afterwards so the deployment reports them.
        """
        async with self._adapter_lock:
            current = self.engine.adapters()
            report: dict[str, list[str]] = {"loaded": [], "unloaded": [], "failed": []}
            errors = []
            for name in sorted(set(current) - set(desired)):
                try:
                    await self.engine.unload_adapter(name)
                    report["unloaded"].append(name)
                except (ApiError, EngineError) as exc:
                    report["failed"].append(name)
                    errors.append(f"{name}: {exc}")
            for name, path in sorted(desired.items()):
                if current.get(name) == path:
                    continue
                try:
                    # A new path for a loaded name is replaced by the engine without a
                    # window in which the adapter is missing (Engine.load_adapter).
                    await self.engine.load_adapter(name, path)
                    report["loaded"].append(name)
                except (ApiError, EngineError) as exc:
                    report["failed"].append(name)
                    errors.append(f"{name}: {exc}")
            if errors:
                raise BadRequest(f"deployment {self.plan.name!r}: " + "; ".join(errors))
            return report

    def _handler(self, endpoint: str) -> Callable[..., Awaitable[EngineOutput]]:
        """The engine's method for ``endpoint`` (chat, completion or responses)."""
        if endpoint == "responses":
            if not isinstance(self.engine, ServesResponses):
                raise BadRequest(
                    f"deployment {self.plan.name!r} runs on the {self.plan.engine} engine, "
                    "which does not serve /v1/responses; use /v1/chat/completions",
                    param="model",
                )
            return self.engine.responses
        return self.engine.chat if endpoint == "chat" else self.engine.completion

    @property
    def _timeout(self) -> float:
        return float(self.plan.options.request_timeout_s)

    def _timed_out(self) -> ApiError:
        err = ApiError(
            f"the request ran longer than spec.engine.request_timeout_s "
            f"({self._timeout:g} s) of deployment {self.plan.name!r} and was stopped",
            code="timeout",
        )
        err.status_code, err.error_type = 504, "timeout_error"
        return err

    def _enter(self, sent_at: float | None) -> tuple[float, float | None]:
        """The request starts: its start on ``clock`` and its queue time (if it came with
        the gateway's send time)."""
        queued = queue_time(sent_at, self._wall())
        self._ongoing += 1
        self.metrics.ongoing(self.plan.name, self._ongoing)
        return self._clock(), queued

    def _leave(self) -> None:
        self._ongoing -= 1
        self.metrics.ongoing(self.plan.name, self._ongoing)

    async def generate(
        self, endpoint: str, body: dict, adapter: str | None, sent_at: float | None = None
    ) -> dict:
        """Non-streaming chat, completion or responses; returns the OpenAI response body
        (with the replica's figures under ``TIMING_KEY`` when ``sent_at`` came)."""
        started, queued = self._enter(sent_at)
        status = 500
        usage: Usage | None = None
        try:
            fn = self._handler(endpoint)
            try:
                out = await asyncio.wait_for(
                    fn({**body, "stream": False}, adapter=adapter), self._timeout
                )
            except TimeoutError:
                raise self._timed_out() from None
            if not isinstance(out, dict):  # pragma: no cover - engine contract
                raise BadRequest("engine returned a stream for a non-streaming request")
            usage = Usage.of(out.get("usage"))
            status = 200
            if sent_at is not None:
                engine_s = self._clock() - started
                out = {**out, TIMING_KEY: {"queue_s": queued or 0.0, "engine_s": engine_s}}
            return out
        except ApiError as exc:
            status = exc.status_code
            raise
        finally:
            self._leave()
            elapsed = self._clock() - started
            self._split(adapter, queued, status, elapsed, None)
            self.metrics.request(
                self.plan.name,
                adapter,
                endpoint,
                status,
                latency_s=elapsed,
                ttft_s=elapsed if status == 200 else None,
                prompt_tokens=usage.prompt_tokens if usage else 0,
                completion_tokens=usage.completion_tokens if usage else 0,
            )

    async def generate_stream(
        self, endpoint: str, body: dict, adapter: str | None, sent_at: float | None = None
    ) -> AsyncIterator[StreamChunk]:
        """Streaming chat, completion or responses: the engine's chunks, usage counted.

        A chat or completion engine is always asked for usage; its usage chunk is counted
        here and passed on only when the request asked for it. A Responses stream always
        ends with the whole response, usage included, and is passed on as it is.
        """
        started, queued = self._enter(sent_at)
        status = 500
        ttft = None
        first: float | None = None  # the first and last chunks with tokens
        last: float | None = None
        usage: Usage | None = None
        stream: Any = None
        try:
            fn = self._handler(endpoint)
            body, wants_usage = _streamed(endpoint, body)
            deadline = started + self._timeout
            try:
                stream = await asyncio.wait_for(fn(body, adapter=adapter), self._timeout)
            except TimeoutError:
                raise self._timed_out() from None
            if isinstance(stream, dict):  # pragma: no cover - engine contract
                raise BadRequest("engine returned a body for a streaming request")
            while True:
                try:
                    if ttft is None:
                        # Queueing and prefill: the long wait, bounded by the deadline.
                        # (Not per chunk: wait_for makes a task per call on 3.11.)
                        chunk = await asyncio.wait_for(
                            anext(stream), max(0.0, deadline - self._clock())
                        )
                    else:
                        chunk = await anext(stream)
                except StopAsyncIteration:
                    break
                except TimeoutError:
                    raise self._timed_out() from None
                now = self._clock()
                if now > deadline:
                    raise self._timed_out()
                if ttft is None:
                    ttft = now - started
                if chunk.usage is not None:
                    usage = chunk.usage
                    if not wants_usage:
                        continue
                elif first is not None:
                    last = now
                elif carries_token(chunk.data):
                    first = last = now
                yield chunk
            status = 200
        except ApiError as exc:
            status = exc.status_code
            raise
        except (asyncio.CancelledError, GeneratorExit):
            status = 499  # the client went away; vLLM aborts the request
            raise
        finally:
            try:
                await _close(stream)
            finally:
                self._leave()
                tokens = usage.completion_tokens if usage else 0
                self.metrics.request(
                    self.plan.name,
                    adapter,
                    endpoint,
                    status,
                    latency_s=self._clock() - started,
                    ttft_s=ttft,
                    prompt_tokens=usage.prompt_tokens if usage else 0,
                    completion_tokens=tokens,
                )
                engine_ttft = first - started if first is not None else ttft
                tpot = time_per_token(first, last, tokens)
                self._split(adapter, queued, status, engine_ttft, tpot)

    def _split(
        self,
        adapter: str | None,
        queue_s: float | None,
        status: int,
        engine_ttft_s: float | None,
        tpot_s: float | None,
    ) -> None:
        """The replica's share of a request: its queue time, and for an answered one the
        engine's time to first token and time per output token (per chunk only a clock
        read, taken for the deadline anyway, and an assignment were spent on them)."""
        answered = status == 200
        try:
            self.metrics.replica_split(
                self.plan.name,
                adapter,
                queue_s=queue_s,
                engine_ttft_s=engine_ttft_s if answered else None,
                tpot_s=tpot_s if answered else None,
            )
        except Exception:  # metering must never cost the client its answer
            logger.exception("could not observe the split of a request")

    def describe(self) -> dict[str, Any]:
        return {
            "deployment": self.plan.name,
            "engine": self.plan.engine,
            "dtype": self.plan.dtype,
            "max_model_len": self.engine.max_model_len,
            "adapters": self.engine.adapters(),
            "ongoing": self._ongoing,
        }


def carries_token(data: dict) -> bool:
    """Whether a streamed event carries generated text (or a tool call): the first one
    marks the time to first token (a role-only first chunk does not)."""
    if str(data.get("type", "")).endswith(".delta"):
        return True  # Responses: response.output_text.delta and its kin
    for choice in data.get("choices") or ():
        if not isinstance(choice, dict):
            continue
        delta = choice.get("delta") or {}
        if choice.get("text") or (
            isinstance(delta, dict) and (delta.get("content") or delta.get("tool_calls"))
        ):
            return True
    return False


async def _close(stream: Any) -> None:
    """Close the engine's stream now (vLLM aborts the request) rather than at GC time: a
    consumer that stops early closes only the replica's own generator."""
    aclose = getattr(stream, "aclose", None)
    if aclose is not None:
        try:
            await aclose()
        except Exception:
            logger.debug("closing the engine stream failed", exc_info=True)


def _sent_at(meta: dict | None) -> float | None:
    """The gateway's send time in a call's ``meta`` (plain data: any transport carries it)."""
    value = meta.get("sent_at") if isinstance(meta, dict) else None
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _streamed(endpoint: str, body: dict) -> tuple[dict, bool]:
    """``body`` asking for a stream, and whether its client asked for the usage event.

    A chat or completion engine is always asked for usage (it is counted here); a
    Responses stream always ends with the whole response, usage included.
    """
    if endpoint == "responses":
        return {**body, "stream": True}, True
    options = body.get("stream_options") or {}
    if not isinstance(options, dict):
        raise BadRequest("`stream_options` must be an object", param="stream_options")
    body = {**body, "stream": True, "stream_options": {**options, "include_usage": True}}
    return body, bool(options.get("include_usage"))


class ModelServer:
    """Ray Serve replica class (decorated in :func:`build_model_app`)."""

    async def __init__(self, plan: DeploymentPlan) -> None:  # type: ignore[misc]  # Serve awaits it
        logging.basicConfig(level=logging.INFO)
        self._service = ModelService(plan, make_engine(plan), ServingMetrics.create())
        await self._service.start()

    async def reconfigure(self, user_config: dict) -> None:
        report = await self._service.sync_adapters(dict(user_config.get("adapters") or {}))
        logger.info("adapters reconciled: %s", report)

    async def generate(
        self, endpoint: str, body: dict, adapter: str | None, meta: dict | None = None
    ) -> dict:
        """``meta``: ``{"sent_at": <gateway's wall clock>}`` for the queue time."""
        return await self._service.generate(endpoint, body, adapter, _sent_at(meta))

    async def generate_stream(
        self, endpoint: str, body: dict, adapter: str | None, meta: dict | None = None
    ) -> AsyncIterator[dict[str, Any]]:
        """The chunks' dicts: what crosses Ray (``ServeBackend.stream`` types them again).

        Ray packs plain dicts with msgpack; a class instance goes through cloudpickle,
        about 12 µs more per token (bench/sse_chunks.py).
        """
        stream = self._service.generate_stream(endpoint, body, adapter, _sent_at(meta))
        async for chunk in stream:
            yield chunk.data

    async def describe(self) -> dict[str, Any]:
        return self._service.describe()

    async def check_health(self) -> None:
        await self._service.engine.check_health()

    async def __del__(self) -> None:
        await self._service.engine.shutdown()


def deployment_options(plan: DeploymentPlan) -> dict[str, Any]:
    """Ray Serve deployment options for ``plan``."""
    a = plan.autoscaling_config
    opts: dict[str, Any] = {
        "name": MODEL_DEPLOYMENT,
        "ray_actor_options": dict(plan.ray_actor_options),
        "max_ongoing_requests": plan.max_ongoing_requests,
        "max_queued_requests": plan.max_queued_requests,
        "user_config": {"adapters": plan.adapter_map},
        "health_check_period_s": 10,
        "health_check_timeout_s": 60,
        "graceful_shutdown_timeout_s": 30,
    }
    if a["min_replicas"] == a["max_replicas"]:
        opts["num_replicas"] = a["min_replicas"]
    else:
        opts["autoscaling_config"] = {k: v for k, v in a.items() if v is not None}
    return opts


def build_model_app(plan: DeploymentPlan) -> Any:
    """The Serve application for one deployment.

    The replica's constructor argument is the plan *without* its adapters: adapters
    live in ``user_config`` so changing them never changes the constructor arguments
    and stays a lightweight (no-restart) update.
    """
    from ray import serve

    replica_plan = dataclasses.replace(plan, adapters=())
    cls: Any = serve.deployment(ModelServer)
    return cls.options(**deployment_options(plan)).bind(replica_plan)


def app_builder(args: dict) -> Any:
    """Serve config entry point: ``import_path: qingliang.serving.deployments.model:app_builder``.

    ``args`` is ``{"plan": DeploymentPlan.to_dict()}`` with the adapters left out;
    they come in the deployment's ``user_config`` so that changing them keeps the
    application's code version and stays a lightweight update.
    """
    return build_model_app(DeploymentPlan.from_dict(args["plan"]))

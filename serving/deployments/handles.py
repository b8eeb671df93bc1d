"""The callers' side of serving's deployments: requests over Ray Serve handles.

:func:`translate` is the one place a Ray / Serve exception becomes the
:class:`~qingliang.platform.errors.ApiError` a client sees (back-pressure → 429, a dead
replica → 503); :func:`replica_died` says when a call is worth one retry.
:class:`ServeBackend` sends model requests to each deployment's Serve application and
reads the applied deployments through :class:`~qingliang.serving.traffic.ServingView`;
:class:`HandleEmbedder` is the view of the embedding deployment.

Example:
    >>> backend = ServeBackend(StateStore(home / "state.sqlite"), metrics)  # doctest: +SKIP
    >>> await backend.generate("qwen", "chat", body, adapter=None)          # doctest: +SKIP
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

from qingliang.platform import metrics
from qingliang.platform.errors import ApiError, Saturated, Unavailable
from qingliang.platform.storage.arm_stats import ArmStats
from qingliang.platform.storage.state import StateStore
from qingliang.serving.deployments.model import MODEL_DEPLOYMENT, carries_token
from qingliang.serving.engine import StreamChunk
from qingliang.serving.metrics import TIMING_KEY, RequestTiming, ServingMetrics, current_timing
from qingliang.serving.traffic import ModelEntry, ServingView

logger = logging.getLogger(__name__)


def translate(exc: BaseException) -> ApiError:
    """A Ray / Serve exception as the ApiError a client should see."""
    from ray import exceptions as rex
    from ray.serve.exceptions import BackPressureError, DeploymentUnavailableError

    cause: BaseException = exc
    if isinstance(exc, rex.RayTaskError) and exc.cause is not None:
        cause = exc.cause
    if isinstance(cause, ApiError):
        return cause
    if isinstance(cause, BackPressureError):
        return Saturated(
            "deployment is saturated: too many requests are queued; retry later",
            retry_after=1.0,
        )
    if isinstance(cause, (rex.RayActorError, DeploymentUnavailableError, rex.ActorDiedError)):
        return Unavailable(
            f"deployment is temporarily unavailable ({type(cause).__name__}); retry shortly",
            retry_after=2.0,
        )
    logger.exception("unexpected error from a deployment", exc_info=exc)
    # The exception's text can name host paths and internals: it stays in the log.
    return ApiError(f"internal error ({type(cause).__name__}); the server log has the details")


def replica_died(exc: BaseException) -> bool:
    """Whether ``exc`` says the replica died (worth one retry on another replica)."""
    from ray import exceptions as rex

    return isinstance(exc, (rex.RayActorError, rex.ActorDiedError))


class ServeBackend:
    """Routes gateway requests to model deployments over Serve handles.

    With ``stats``, every request's outcome is counted per arm (adapter or base model)
    for canary analysis (:mod:`qingliang.platform.storage.arm_stats`): answered (with its
    output tokens and time to first token: the first chunk with a token of a stream, the
    whole answer otherwise), or failed with a server error. Client errors and abandoned
    streams are not counted; saturation (429) is counted as a rejection, not a request.
    A chat or completion stream is always asked for its usage (the output tokens); the
    usage event reaches the caller only when its body asked for it.

    Every call carries ``{"sent_at": <wall clock>}`` for the replica's queue time. When the
    route started a :class:`~qingliang.serving.metrics.RequestTiming`, the hand-off and
    each chunk are marked on it and the replica's figures of a non-streamed answer are
    moved from the answer onto it (the caller never sees them).
    """

    def __init__(
        self,
        store: StateStore,
        metrics: ServingMetrics,
        ttl_s: float = 0.5,
        stats: ArmStats | None = None,
    ) -> None:
        self._store = store
        self._metrics = metrics
        self._ttl = ttl_s
        self._stats = stats
        self._cached: tuple[float, list[ModelEntry]] = (0.0, [])
        self._handles: dict[str, Any] = {}
        self._shares: dict[str, dict[str, float]] = {}

    def _observe(
        self,
        deployment: str,
        adapter: str | None,
        started: float,
        error: ApiError | None,
        *,
        output_tokens: int = 0,
        ttft_s: float | None = None,
    ) -> None:
        if self._stats is None:
            return
        try:
            if error is not None and error.status_code == 429:
                self._stats.rejected(deployment, adapter)
                return
            if error is not None and error.status_code < 500:
                return  # bad input: nothing about the arm
            latency = time.monotonic() - started
            self._stats.observe(
                deployment,
                adapter,
                ok=error is None,
                latency_s=latency,
                output_tokens=output_tokens,
                ttft_s=latency if ttft_s is None and error is None else ttft_s,
            )
        except Exception:  # counting must never cost the client its answer
            logger.exception("could not count a request to %s", deployment)

    def models(self) -> list[ModelEntry]:
        at, entries = self._cached
        if time.monotonic() - at < self._ttl:
            return entries
        # Canary shares and registry refs are read here, not by the replicas:
        # changing them reaches every gateway replica within the TTL.
        entries = list(ServingView.read(self._store).models)
        self._cached = (time.monotonic(), entries)
        shares = {
            e.name: {**e.traffic, "base": max(0.0, 1 - sum(e.traffic.values()))} for e in entries
        }
        if shares != self._shares:  # the canary gauges change with the applied shares only
            self._shares = shares
            metrics.canary_shares(shares)
        return entries

    def _handle(self, deployment: str) -> Any:
        handle = self._handles.get(deployment)
        if handle is None:
            from ray import serve

            handle = serve.get_deployment_handle(MODEL_DEPLOYMENT, app_name=deployment)
            self._handles[deployment] = handle
        return handle

    async def generate(
        self, deployment: str, endpoint: str, body: dict, adapter: str | None
    ) -> dict:
        started = time.monotonic()
        timing = _timing(self._metrics, deployment, adapter)
        for attempt in (0, 1):
            meta = {"sent_at": timing.send() if timing is not None else time.time()}
            try:
                answer = await self._handle(deployment).generate.remote(
                    endpoint, body, adapter, meta
                )
            except Exception as exc:
                if attempt == 0 and replica_died(exc):
                    logger.warning("replica of %s died; retrying once", deployment)
                    continue
                error = translate(exc)
                self._observe(deployment, adapter, started, error)
                raise error from None
            figures = answer.pop(TIMING_KEY, None) if isinstance(answer, dict) else None
            if timing is not None:
                timing.received()
                if isinstance(figures, dict):
                    timing.replica = figures
            self._observe(deployment, adapter, started, None, output_tokens=_output_tokens(answer))
            return answer
        raise AssertionError("unreachable")

    async def stream(
        self, deployment: str, endpoint: str, body: dict, adapter: str | None
    ) -> AsyncIterator[StreamChunk]:
        """The deployment's stream of typed chunks (no SSE text: the gateway writes it).

        The replica sends each chunk's dict (``ModelServer.generate_stream``: Ray packs
        plain dicts cheaply); it is typed again here, without parsing.
        """
        started = False
        began = time.monotonic()
        ttft: float | None = None
        tokens = 0
        sent, hide_usage = _asking_usage(endpoint, body)
        timing = _timing(self._metrics, deployment, adapter)
        for attempt in (0, 1):
            meta = {"sent_at": timing.send() if timing is not None else time.time()}
            gen = (
                self._handle(deployment)
                .options(stream=True)
                .generate_stream.remote(endpoint, sent, adapter, meta)
            )
            try:
                async for data in gen:
                    started = True
                    chunk = StreamChunk.of(data)
                    token = chunk.usage is None and (ttft is not None or carries_token(data))
                    if timing is not None:
                        timing.received(token=token)
                    if token and ttft is None:
                        ttft = time.monotonic() - began
                    if chunk.usage is not None:
                        tokens = chunk.usage.completion_tokens
                        if hide_usage:
                            if timing is not None:
                                timing.waiting()
                            continue
                    yield chunk
            except Exception as exc:
                if attempt == 0 and not started and replica_died(exc):
                    logger.warning("replica of %s died before streaming; retrying once", deployment)
                    continue
                error = translate(exc)
                self._observe(deployment, adapter, began, error)
                raise error from None
            # Only here when the stream ended; a client that walked away closes the
            # generator at a yield above (GeneratorExit), which is not counted.
            if timing is not None:
                timing.received()
                timing.tokens = tokens
            self._observe(deployment, adapter, began, None, output_tokens=tokens, ttft_s=ttft)
            return

    async def ready(self) -> dict[str, str]:
        async def one(name: str) -> tuple[str, str]:
            try:
                await asyncio.wait_for(self._handle(name).describe.remote(), timeout=5)
                return name, "ready"
            except Exception as exc:
                return name, f"not ready: {type(exc).__name__}"

        return dict(await asyncio.gather(*(one(m.name) for m in self.models())))

    def rejected(self, deployment: str, adapter: str | None, endpoint: str) -> None:
        self._metrics.rejected(deployment, adapter, endpoint)


def _output_tokens(answer: Any) -> int:
    """``usage.completion_tokens`` (``output_tokens`` in a Responses body) of an answer."""
    usage = answer.get("usage") if isinstance(answer, dict) else None
    if not isinstance(usage, dict):
        return 0
    value = usage.get("completion_tokens", usage.get("output_tokens"))
    return value if isinstance(value, int) else 0


def _asking_usage(endpoint: str, body: dict) -> tuple[dict, bool]:
    """``body`` asking a chat or completion stream for its usage event, and whether the
    caller did not ask for it (then it is counted and kept from the caller)."""
    if endpoint not in ("chat", "completion"):
        return body, False  # a Responses stream ends with its usage anyway
    options = body.get("stream_options")
    if options is None:
        options = {}
    if not isinstance(options, dict) or options.get("include_usage"):
        return body, False  # the replica refuses a bad one; an asked one goes through
    return {**body, "stream_options": {**options, "include_usage": True}}, True


def _timing(metrics: ServingMetrics, deployment: str, adapter: str | None) -> RequestTiming | None:
    """The current request's timing, if its route started one, observed into ``metrics``."""
    timing = current_timing()
    if timing is not None:
        timing.bind(metrics, deployment, adapter)
    return timing


class HandleEmbedder:
    """The gateway's view of the embedding deployment."""

    def __init__(self, handle: Any, model_id: str) -> None:
        self._handle = handle
        self.model_id = model_id

    async def embed(self, texts: list[str], input_type: str) -> tuple[list[list[float]], int]:
        try:
            return await self._handle.embed.remote(texts, input_type)
        except Exception as exc:
            raise translate(exc) from None

"""OpenAI's generation routes: ``/v1/chat/completions`` and ``/v1/completions``.

``model`` names a deployment or ``deployment:adapter`` (an adapter or an alias); a bare
deployment with canary shares sends the request to one adapter or to the base model, an
alias to one of its adapters (:func:`~qingliang.serving.traffic.resolve_adapter`). The body
is checked (:mod:`.http.openai_bodies`), sent to the :class:`~.backend.Backend`, and the answer (a
JSON body, or the backend's typed chunks written as SSE one by one, :mod:`.sse`) says what
made it. A key with a token limit is charged what it used; answered requests go to the
conversation log.

Each request's own cost at the gateway is kept on a
:class:`~qingliang.serving.metrics.RequestTiming`, from its arrival (stamped by
:class:`ArrivalStamp`, outside authentication) to the hand-off, and while relaying; a
non-streamed answer says in its ``Server-Timing`` header where its time went.

Example:
    >>> add_generation_routes(app, backend, quotas, conversations, limits)  # doctest: +SKIP
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from qingliang.knowledge.vision import ImageLimits, prepare_images
from qingliang.platform.errors import ApiError, BadRequest, NotFound, Saturated, did_you_mean
from qingliang.platform.gateway.auth.quotas import Quotas
from qingliang.platform.gateway.backend import Backend
from qingliang.platform.gateway.http.bodies import request_body
from qingliang.platform.gateway.http.limits import json_body
from qingliang.platform.gateway.http.openai_bodies import (
    IGNORED_HEADER,
    IMAGES_HEADER,
    ChatCompletionBody,
    CompletionBody,
    checked,
    forwarded,
)
from qingliang.platform.gateway.http.params import check_generation
from qingliang.platform.gateway.recording import conversation_rows
from qingliang.platform.gateway.sse import (
    DONE,
    Transcript,
    asked_usage,
    chunk_event,
    routed,
    server_timing,
    sse_event,
    total_tokens,
    trace_headers,
    with_trace,
    with_usage,
)
from qingliang.platform.settings import GatewayLimits
from qingliang.platform.storage.conversations import ConversationLog
from qingliang.serving.engine import StreamChunk
from qingliang.serving.metrics import RequestTiming, start_timing
from qingliang.serving.traffic import ModelEntry, parse_model

logger = logging.getLogger(__name__)

#: The ASGI scope's key for the request's arrival (``time.perf_counter()``).
ARRIVED = "qingliang.arrived"


class ArrivalStamp:
    """Pure ASGI middleware: stamps each HTTP request's arrival in its scope (a clock read),
    so the gateway's time counts from before authentication."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            scope[ARRIVED] = time.perf_counter()
        await self.app(scope, receive, send)


def request_timing(request: Request) -> RequestTiming:
    """A timing for ``request`` from its stamped arrival, made the current request's."""
    arrived = request.scope.get(ARRIVED)
    return start_timing(RequestTiming(arrived if isinstance(arrived, float) else None))


@dataclass
class _Call:
    """One generation request, checked and routed, before it is sent."""

    endpoint: str
    arrived: float
    body: dict
    #: What goes to the engine: ``body``, asking for usage when the key is metered.
    sent: dict
    deployment: str
    adapter: str | None
    stream: bool
    trace: dict[str, Any]
    headers: dict[str, str]
    record: bool
    principal: Any
    metered: bool
    hide_usage: bool
    timing: RequestTiming


def lookup_entry(backend: Backend, dep: str, adapter: str | None) -> ModelEntry:
    """The deployment ``dep`` serves (and its ``adapter``, if named), or a 404 naming
    what is loaded: the chat, completions and responses routes' lookup."""
    entries = {m.name: m for m in backend.models()}
    entry = entries.get(dep)
    if entry is None:
        raise NotFound(
            f"model {dep!r} does not exist{did_you_mean(dep, list(entries))}",
            param="model",
            code="model_not_found",
        )
    if adapter is not None and adapter not in entry.adapters and adapter not in entry.aliases:
        known = [*entry.adapters, *(f"{a} (alias)" for a in sorted(entry.aliases))]
        raise NotFound(
            f"adapter {adapter!r} is not loaded on deployment {dep!r}"
            + (f"; loaded: {', '.join(known)}" if known else ""),
            param="model",
            code="model_not_found",
        )
    return entry


class _Generation:
    """The generation routes' logic over the app's parts."""

    def __init__(
        self,
        backend: Backend,
        quotas: Quotas,
        conversations: ConversationLog | None,
        limits: GatewayLimits,
    ) -> None:
        self.backend = backend
        self.quotas = quotas
        self.conversations = conversations
        self.limits = limits
        self.images = ImageLimits.from_env()

    def lookup(self, dep: str, adapter: str | None) -> ModelEntry:
        return lookup_entry(self.backend, dep, adapter)

    def record(self, request: Request, call: _Call, answer: dict) -> None:
        assert self.conversations is not None
        try:
            for row in conversation_rows(
                request, call.endpoint, call.body, call.trace, answer, call.arrived
            ):
                self.conversations.append(row)
        except Exception:  # recording must never cost the client its answer
            logger.exception("could not record a conversation")

    async def prepare(self, request: Request, endpoint: str) -> _Call:
        """The request read, checked and routed to a deployment and an arm."""
        timing = request_timing(request)
        arrived = time.time()
        body = await json_body(request)
        dep, adapter = parse_model(body.get("model"))
        entry = self.lookup(dep, adapter)
        stream = body.get("stream", False)
        if stream is None:
            stream = False
        if not isinstance(stream, bool):
            raise BadRequest("`stream` must be true or false", param="stream")
        check_generation(body, endpoint, max_n=self.limits.max_n)
        model = ChatCompletionBody if endpoint == "chat" else CompletionBody
        checked(body, model)
        body, ignored = forwarded(body, model)
        images = None
        if endpoint == "chat":
            body, images = await prepare_images(
                body,
                deployment=dep,
                mode=entry.image_mode,
                max_per_prompt=entry.max_images,
                limits=self.images,
            )
        adapter, trace = routed(entry, adapter, body.get("user"))
        headers = trace_headers(trace)
        if images is not None:
            trace["images"] = images.trace()
            headers[IMAGES_HEADER] = images.header()
        if ignored:
            headers[IGNORED_HEADER] = ", ".join(ignored)
        principal = getattr(request.state, "principal", None)
        metered = self.quotas.limits(principal)[1] is not None
        # A key with a token limit is charged what it used: a stream is asked for its
        # usage, and the usage event is kept from a client that did not ask for it.
        hide_usage = metered and stream and not asked_usage(body)
        return _Call(
            endpoint=endpoint,
            arrived=arrived,
            body=body,
            sent=with_usage(body) if hide_usage else body,
            deployment=dep,
            adapter=adapter,
            stream=stream,
            trace=trace,
            headers=headers,
            record=self.conversations is not None and endpoint in ("chat", "completion"),
            principal=principal,
            metered=metered,
            hide_usage=hide_usage,
            timing=timing,
        )

    async def answer(self, request: Request, endpoint: str) -> Response:
        call = await self.prepare(request, endpoint)
        dep, adapter = call.deployment, call.adapter
        try:
            if not call.stream:
                answer = await self.backend.generate(dep, endpoint, call.body, adapter)
                if call.record:
                    self.record(request, call, answer)
                if call.metered:
                    await self.quotas.charge(call.principal, total_tokens(answer.get("usage")))
                response = JSONResponse({**answer, "qingliang": call.trace}, headers=call.headers)
                gateway_s = call.timing.finish()
                response.headers["Server-Timing"] = server_timing(gateway_s, call.timing.replica)
                return response
            chunks = self.backend.stream(dep, endpoint, call.sent, adapter)
            # Pull the first chunk before answering, so errors found before generation
            # (bad parameters, prompt too long, saturation) get a real status code.
            first = await chunks.__anext__()
        except Saturated:
            self.backend.rejected(dep, adapter, endpoint)
            raise
        except StopAsyncIteration:
            return StreamingResponse(
                iter([DONE]), media_type="text/event-stream", headers=call.headers
            )
        return StreamingResponse(
            self.relay(request, call, first, chunks),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no", **call.headers},
        )

    async def relay(
        self,
        request: Request,
        call: _Call,
        first: StreamChunk,
        chunks: AsyncIterator[StreamChunk],
    ) -> AsyncIterator[str]:
        """The stream as the client gets it: traced, usage kept or hidden, then recorded.

        Each chunk is written once: the first with the trace added, the others in the
        engine's compact JSON; the usage chunk is dropped for a client that did not ask.
        The gateway is busy from each chunk's arrival until it waits for the next.
        """
        timing = call.timing
        transcript = Transcript() if call.record or call.metered else None
        if transcript is not None:
            transcript.feed(first.data)
        if not (call.hide_usage and first.usage is not None):
            yield sse_event(with_trace(first.data, call.trace))
        timing.waiting()
        try:
            async for chunk in chunks:
                if transcript is not None:
                    transcript.feed(chunk.data)
                if not (call.hide_usage and chunk.usage is not None):
                    yield chunk_event(chunk.data)
                timing.waiting()
            yield DONE
        except ApiError as exc:
            yield sse_event(exc.to_openai(), ensure_ascii=True)
            yield DONE
            return
        finally:
            if call.metered and transcript is not None:
                await self.quotas.charge(call.principal, total_tokens(transcript.usage))
        # Only here when the stream ended normally (not on an error or a disconnect).
        if call.record and transcript is not None:
            self.record(request, call, transcript.answer(call.endpoint))
        timing.finish()


def add_generation_routes(
    app: FastAPI,
    backend: Backend,
    quotas: Quotas,
    conversations: ConversationLog | None,
    limits: GatewayLimits,
) -> None:
    """Add ``/v1/chat/completions`` and ``/v1/completions`` to ``app``."""
    generation = _Generation(backend, quotas, conversations, limits)
    app.add_middleware(ArrivalStamp)

    @app.post("/v1/chat/completions", openapi_extra=request_body(ChatCompletionBody))
    async def chat_completions(request: Request) -> Response:
        """OpenAI's chat completions, streamed (`stream: true`) or not.

        `model` names a deployment or `deployment:adapter`. Every field of OpenAI's
        request is accepted; those no engine here implements (`store`, `metadata`,
        `service_tier`, `functions`, …) are ignored and named in the answer's
        `X-Qingliang-Ignored-Fields` header. vLLM's sampling extras (`top_k`, `min_p`,
        `repetition_penalty`, `chat_template_kwargs`, …) go to the engine. Any other field
        is a 400 naming it, as OpenAI answers: a misspelt option is never silently dropped.
        """
        return await generation.answer(request, "chat")

    @app.post("/v1/completions", openapi_extra=request_body(CompletionBody))
    async def completions(request: Request) -> Response:
        """OpenAI's legacy completions, streamed or not; fields as for chat completions
        (`best_of` is ignored and named in `X-Qingliang-Ignored-Fields`)."""
        return await generation.answer(request, "completion")

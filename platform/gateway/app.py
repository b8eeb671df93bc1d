"""The OpenAI-compatible HTTP API, as a plain FastAPI app over injected parts.

Routes: ``/v1/chat/completions`` and ``/v1/completions`` (streamed or not),
``/v1/models``, ``/v1/embeddings``, ``/healthz``, ``/readyz``. ``model`` names a
deployment or ``deployment:adapter``. A bare deployment with canary shares
(``spec.lora.traffic``) sends each request to one adapter or to the base model
(:func:`choose_adapter`). Every generation answer says what made it: headers
``X-Qingliang-Deployment``, ``X-Qingliang-Adapter`` and ``X-Qingliang-Adapter-Ref``, and
a ``qingliang`` object in the JSON body (in the first event of a stream). Errors use
OpenAI's format (``{"error": {"message", "type", "param", "code"}}``); a saturated
deployment answers 429 with ``Retry-After``.

Every route's body is a pydantic model (:mod:`.bodies`, :mod:`.openai_bodies`) that
``/openapi.json`` documents and the route checks after reading the body itself with
:func:`.limits.parse_json_body` (FastAPI never parses a body: its size and nesting are
bounded first). Documented OpenAI fields never break a client: those no engine
implements are dropped and named in ``X-Qingliang-Ignored-Fields``; unknown fields are
refused by name (see :mod:`.openai_bodies` for the whole policy).

The app holds no Ray code: the :class:`Backend` it is given does (see ``ingress.py``),
so it is tested with a small fake backend and, in integration, with the real one.

Example:
    >>> app = create_app(backend, embedder, auth)  # doctest: +SKIP
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import struct
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any, Protocol

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from qingliang.agents.api import AgentsBackend
from qingliang.platform.errors import (
    ApiError,
    BadRequest,
    NotFound,
    Retryable,
    Saturated,
    Unauthorized,
)
from qingliang.platform.gateway.auth.quotas import Quotas
from qingliang.platform.gateway.auth.scopes import (
    ROUTES,
    authorize,
    route_of,
    rule_for,
    verify_key,
)
from qingliang.platform.gateway.http.bodies import (
    BODIES,
    install_openapi,
    refuse_unknown,
    request_body,
)
from qingliang.platform.gateway.http.limits import BodyLimitMiddleware, parse_json_body
from qingliang.platform.gateway.http.openai_bodies import (
    IGNORED_HEADER,
    OPENAI_BODIES,
    ChatCompletionBody,
    CompletionBody,
    EmbeddingBody,
    checked,
    forwarded,
)
from qingliang.platform.gateway.http.params import check_generation
from qingliang.platform.gateway.routes.agents import add_agent_routes
from qingliang.platform.gateway.routes.knowledge import (
    KnowledgeBackend,
    add_knowledge_routes,
    tenant_of,
)
from qingliang.platform.gateway.routes.pipelines import add_pipeline_routes
from qingliang.platform.settings import GatewayLimits
from qingliang.platform.storage.conversations import Conversation, ConversationLog
from qingliang.serving.traffic import ModelEntry, choose_adapter, parse_model

logger = logging.getLogger(__name__)


class Backend(Protocol):
    """Where requests for model deployments go (Ray Serve handles in production)."""

    def models(self) -> list[ModelEntry]: ...

    async def generate(
        self, deployment: str, endpoint: str, body: dict, adapter: str | None
    ) -> dict: ...

    def stream(
        self, deployment: str, endpoint: str, body: dict, adapter: str | None
    ) -> AsyncIterator[str]: ...

    async def ready(self) -> dict[str, str]: ...

    def rejected(self, deployment: str, adapter: str | None, endpoint: str) -> None: ...


class Embedder(Protocol):
    model_id: str

    async def embed(self, texts: list[str], input_type: str) -> tuple[list[list[float]], int]: ...


class Auth(Protocol):
    enabled: bool

    def verify(self, token: str) -> Any:
        """The key's record (truthy; its ``scopes`` may name a tenant), or a falsy value."""
        ...


def _trace(entry: ModelEntry, adapter: str | None) -> dict[str, str | None]:
    """What made an answer: the ``qingliang`` object of its body."""
    return {
        "deployment": entry.name,
        "adapter": adapter,
        "adapter_ref": entry.refs.get(adapter) if adapter else None,
    }


def _trace_headers(trace: dict[str, str | None]) -> dict[str, str]:
    return {
        "X-Qingliang-Deployment": trace["deployment"] or "",
        "X-Qingliang-Adapter": trace["adapter"] or "",
        "X-Qingliang-Adapter-Ref": trace["adapter_ref"] or "",
    }


def _with_trace(chunk: str, trace: dict[str, str | None]) -> str:
    """``chunk`` with ``trace`` added to its first event's JSON object, if it has one."""
    head, sep, rest = chunk.partition("\n\n")
    if not head.startswith("data: "):
        return chunk
    try:
        event = json.loads(head.removeprefix("data: "))
    except ValueError:  # "[DONE]" or not JSON: nothing to add to
        return chunk
    if not isinstance(event, dict):
        return chunk
    event["qingliang"] = trace
    return f"data: {json.dumps(event, ensure_ascii=False)}{sep}{rest}"


class _Transcript:
    """What a streamed answer said, choice by choice, gathered from its SSE chunks.

    Chat chunks carry ``delta.content``, legacy completion chunks ``text``.
    """

    def __init__(self) -> None:
        self.id: str | None = None
        self.parts: dict[int, list[str]] = {}
        self.finish_reasons: dict[int, str | None] = {}
        self.usage: dict | None = None

    def feed(self, chunk: str) -> None:
        for line in chunk.splitlines():
            if not line.startswith("data: "):
                continue
            try:
                event = json.loads(line.removeprefix("data: "))
            except ValueError:  # "[DONE]"
                continue
            if not isinstance(event, dict):
                continue
            if self.id is None and isinstance(event.get("id"), str):
                self.id = event["id"]
            if isinstance(event.get("usage"), dict):
                self.usage = event["usage"]
            for choice in event.get("choices") or ():
                if not isinstance(choice, dict):
                    continue
                index = choice.get("index", 0)
                if not isinstance(index, int) or isinstance(index, bool) or index < 0:
                    continue
                parts = self.parts.setdefault(index, [])
                self.finish_reasons.setdefault(index, None)
                delta = choice.get("delta")
                text = delta.get("content") if isinstance(delta, dict) else choice.get("text")
                if isinstance(text, str):
                    parts.append(text)
                if choice.get("finish_reason"):
                    self.finish_reasons[index] = str(choice["finish_reason"])

    def answer(self, endpoint: str) -> dict:
        """The transcript in the shape of a non-streamed answer of ``endpoint``."""
        choices = []
        for index in sorted(self.parts) or [0]:
            text = "".join(self.parts.get(index, ()))
            choice: dict[str, Any] = {
                "index": index,
                "finish_reason": self.finish_reasons.get(index),
            }
            if endpoint == "chat":
                choice["message"] = {"role": "assistant", "content": text}
            else:
                choice["text"] = text
            choices.append(choice)
        return {"id": self.id, "choices": choices, "usage": self.usage}


def _prompt_messages(body: dict, endpoint: str, index: int) -> list | None:
    """The messages a choice answered: a chat request's ``messages``; for a legacy
    completion, its prompt as one user message (a batch of prompts: the one of choice
    ``index``). None when there is no text to record (token-id prompts)."""
    if endpoint == "chat":
        messages = body.get("messages")
        return messages if isinstance(messages, list) else []
    prompt = body.get("prompt")
    if isinstance(prompt, list) and prompt and all(isinstance(p, str) for p in prompt):
        n = body.get("n", 1)
        per_prompt = n if isinstance(n, int) and not isinstance(n, bool) and n > 0 else 1
        prompt = prompt[index // per_prompt] if index // per_prompt < len(prompt) else None
    if not isinstance(prompt, str):
        return None
    return [{"role": "user", "content": prompt}]


def _conversations(
    request: Request,
    endpoint: str,
    body: dict,
    trace: dict[str, str | None],
    answer: dict,
    arrived: float,
) -> list[Conversation]:
    """The conversation-log rows of an answered request: one per choice."""
    principal = getattr(request.state, "principal", None)
    key_name = getattr(principal, "name", None)
    usage = answer.get("usage")
    if not isinstance(usage, dict):
        usage = {}

    def tokens(name: str) -> int | None:
        value = usage.get(name)
        return value if isinstance(value, int) else None

    answer_id = answer.get("id")
    if not isinstance(answer_id, str):
        prefix = "chatcmpl" if endpoint == "chat" else "cmpl"
        answer_id = f"{prefix}-{uuid.uuid4().hex}"
    latency_ms = round((time.time() - arrived) * 1000)
    rows = []
    choices = [c for c in answer.get("choices") or () if isinstance(c, dict)] or [{}]
    for position, choice in enumerate(choices):
        index = choice.get("index", position)
        if not isinstance(index, int) or isinstance(index, bool):
            index = position
        messages = _prompt_messages(body, endpoint, index)
        if messages is None:
            continue
        if endpoint == "chat":
            message = choice.get("message")
            text = message.get("content") if isinstance(message, dict) else None
        else:
            text = choice.get("text")
            # With `echo` the text starts with the prompt: keep only the answer.
            prompt = messages[0]["content"]
            if body.get("echo") is True and isinstance(text, str) and text.startswith(prompt):
                text = text[len(prompt) :]
        finish = choice.get("finish_reason")
        rows.append(
            Conversation(
                id=answer_id,
                created=arrived,
                tenant=tenant_of(principal),
                key_name=key_name if isinstance(key_name, str) else None,
                model=str(body.get("model")),
                deployment=trace["deployment"] or "",
                adapter=trace["adapter"],
                adapter_ref=trace["adapter_ref"],
                messages=messages,
                response=text if isinstance(text, str) else None,
                finish_reason=finish if isinstance(finish, str) else None,
                prompt_tokens=tokens("prompt_tokens"),
                completion_tokens=tokens("completion_tokens"),
                latency_ms=latency_ms,
                choice=index,
                endpoint=endpoint,
            )
        )
    return rows


def _asked_usage(body: dict) -> bool:
    options = body.get("stream_options")
    return isinstance(options, dict) and options.get("include_usage") is True


def _with_usage(body: dict) -> dict:
    """``body`` asking its stream for a final usage event."""
    options = body.get("stream_options")
    options = dict(options) if isinstance(options, dict) else {}
    return {**body, "stream_options": {**options, "include_usage": True}}


def _without_usage(chunk: str) -> str:
    """``chunk`` without its usage-only events (``choices`` empty, ``usage`` set), which a
    client that did not ask for usage must not get."""
    kept = []
    for event in chunk.split("\n\n"):
        if event.startswith("data: {") and '"usage"' in event:
            try:
                data = json.loads(event.removeprefix("data: "))
            except ValueError:
                data = None
            if isinstance(data, dict) and data.get("usage") and not data.get("choices"):
                continue
        kept.append(event)
    return "\n\n".join(kept)


def _total_tokens(usage: object) -> int | None:
    if not isinstance(usage, dict):
        return None
    total = usage.get("total_tokens")
    if isinstance(total, int) and not isinstance(total, bool):
        return total
    parts = [usage.get(k) for k in ("prompt_tokens", "completion_tokens")]
    return sum(p for p in parts if isinstance(p, int) and not isinstance(p, bool)) or None


def _error(exc: ApiError, headers: dict[str, str] | None = None) -> JSONResponse:
    headers = dict(headers or {})
    if isinstance(exc, Retryable):
        headers["Retry-After"] = str(max(1, round(exc.retry_after)))
    if isinstance(exc, Unauthorized):
        headers["WWW-Authenticate"] = "Bearer"
    return JSONResponse(exc.to_openai(), status_code=exc.status_code, headers=headers)


def _base64_floats(vector: list[float]) -> str:
    """OpenAI's ``encoding_format: base64``: little-endian float32, base64-encoded."""
    return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode("ascii")


async def _json_body(request: Request) -> dict:
    # Its size is bounded by BodyLimitMiddleware before it is read whole here.
    return parse_json_body(await request.body())


def create_app(
    backend: Backend,
    embedder: Embedder | None,
    auth: Auth,
    knowledge: KnowledgeBackend | None = None,
    agents: AgentsBackend | None = None,
    pipelines: Any | None = None,
    conversations: ConversationLog | None = None,
    limits: GatewayLimits | None = None,
) -> FastAPI:
    """Build the gateway app. Nothing here touches Ray, disk or the network.

    ``knowledge`` serves the ``/v1/knowledge`` routes (see :mod:`.knowledge`); without it
    they answer 501. ``agents`` serves ``/v1/agents`` and ``/v1/feedback`` (see
    :mod:`.agents`); without it they answer 501. ``pipelines`` (a
    :class:`~qingliang.platform.lifecycle.pipelines.service.PipelineService`) serves
    ``/v1/pipelines`` (see :mod:`.pipelines`); without it they answer 501.
    With ``conversations``, every answered ``/v1/chat/completions`` and ``/v1/completions``
    request (streamed ones when their stream ends normally) is appended to that log, one
    row per choice; errors are not.
    ``limits`` bound request bodies (413 over them, see :mod:`.limits`) and ``n``; by
    default :meth:`GatewayLimits.from_env`.
    """
    limits = limits if limits is not None else GatewayLimits.from_env()
    quotas = Quotas(getattr(auth, "usage", None))
    app = FastAPI(title="Qingliang gateway", version="1", docs_url="/docs", redoc_url=None)

    @app.exception_handler(ApiError)
    async def _api_error(_: Request, exc: ApiError) -> JSONResponse:
        return _error(exc)

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        # Query and path parameters (bodies are read and checked by the routes).
        first = exc.errors()[0] if exc.errors() else {"loc": (), "msg": "invalid request"}
        loc = list(first["loc"])
        if loc and loc[0] in ("body", "query", "path", "header"):
            loc = loc[1:]
        where = ".".join(str(p) for p in loc)
        return _error(BadRequest(f"{where}: {first['msg']}", param=where or None))

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        # Starlette's own refusals (a multipart body without a boundary, …): OpenAI's
        # format too, never FastAPI's {"detail": …}.
        err = ApiError(str(exc.detail))
        err.status_code = exc.status_code
        if exc.status_code < 500:
            err.error_type = "invalid_request_error"
        return _error(err, getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        # A bug: still a 500 (and re-raised to the server, which logs the traceback), but
        # in OpenAI's format, and without the exception's text, which can name host paths.
        logger.error("%s %s: unhandled %s", request.method, request.url.path, type(exc).__name__)
        return _error(
            ApiError(f"internal error ({type(exc).__name__}); the server log has the details")
        )

    @app.exception_handler(404)
    async def _not_found(request: Request, _: Exception) -> JSONResponse:
        return _error(NotFound(f"no route {request.method} {request.url.path}"))

    @app.exception_handler(405)
    async def _method(request: Request, exc: Exception) -> JSONResponse:
        err = ApiError(f"method {request.method} is not allowed on {request.url.path}")
        err.status_code, err.error_type = 405, "invalid_request_error"
        # Keep Starlette's `Allow` header: a 405 must say which methods the route takes.
        return _error(err, getattr(exc, "headers", None))

    @app.middleware("http")
    async def _authenticate(request: Request, call_next: Any) -> Response:
        try:
            if auth.enabled:
                await _authorize(request)
            return await call_next(request)
        except ApiError as exc:  # refused, or raised inside a streaming body before headers
            return _error(exc)

    async def _authorize(request: Request) -> None:
        """Check the key and the route's scope rule (see :mod:`.scopes`): one place."""
        route = route_of(app.router.routes, request.scope)
        rule = rule_for(request.method, route.path) if route is not None else None
        if rule is not None and rule.public:
            return
        if route is None and not request.url.path.startswith("/v1/"):
            return  # the router answers 404 / 405; nothing behind it
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise Unauthorized("missing API key: send 'Authorization: Bearer <key>'")
        principal = await verify_key(auth, token.strip())
        if not principal:
            raise Unauthorized("invalid or revoked API key")
        request.state.principal = principal
        if route is not None:  # else the router answers 404 / 405 to a known key
            authorize(principal, request.method, route.path)
            await quotas.admit(principal)

    def _lookup(dep: str, adapter: str | None) -> ModelEntry:
        entries = {m.name: m for m in backend.models()}
        entry = entries.get(dep)
        if entry is None:
            import difflib

            hint = difflib.get_close_matches(dep, list(entries), n=1)
            more = f" (did you mean {hint[0]!r}?)" if hint else ""
            raise NotFound(
                f"model {dep!r} does not exist{more}", param="model", code="model_not_found"
            )
        if adapter is not None and adapter not in entry.adapters:
            raise NotFound(
                f"adapter {adapter!r} is not loaded on deployment {dep!r}"
                + (f"; loaded: {', '.join(entry.adapters)}" if entry.adapters else ""),
                param="model",
                code="model_not_found",
            )
        return entry

    def _record(
        request: Request, endpoint: str, body: dict, trace: dict, answer: dict, arrived: float
    ) -> None:
        assert conversations is not None
        try:
            for row in _conversations(request, endpoint, body, trace, answer, arrived):
                conversations.append(row)
        except Exception:  # recording must never cost the client its answer
            logger.exception("could not record a conversation")

    async def _generate(request: Request, endpoint: str) -> Response:
        arrived = time.time()
        body = await _json_body(request)
        dep, adapter = parse_model(body.get("model"))
        entry = _lookup(dep, adapter)
        stream = body.get("stream", False)
        if stream is None:
            stream = False
        if not isinstance(stream, bool):
            raise BadRequest("`stream` must be true or false", param="stream")
        check_generation(body, endpoint, max_n=limits.max_n)
        model = ChatCompletionBody if endpoint == "chat" else CompletionBody
        checked(body, model)
        body, ignored = forwarded(body, model)
        if adapter is None:
            adapter = choose_adapter(entry, body.get("user"))
            logger.debug("%s: bare request sent to %s", dep, adapter or "the base model")
        trace = _trace(entry, adapter)
        headers = _trace_headers(trace)
        if ignored:
            headers[IGNORED_HEADER] = ", ".join(ignored)
        record = conversations is not None and endpoint in ("chat", "completion")
        principal = getattr(request.state, "principal", None)
        metered = quotas.limits(principal)[1] is not None
        # A key with a token limit is charged what it used: a stream is asked for its
        # usage, and the usage event is kept from a client that did not ask for it.
        hide_usage = metered and stream and not _asked_usage(body)
        sent = _with_usage(body) if hide_usage else body
        try:
            if not stream:
                answer = await backend.generate(dep, endpoint, body, adapter)
                if record:
                    _record(request, endpoint, body, trace, answer, arrived)
                if metered:
                    await quotas.charge(principal, _total_tokens(answer.get("usage")))
                return JSONResponse({**answer, "qingliang": trace}, headers=headers)
            chunks = backend.stream(dep, endpoint, sent, adapter)
            # Pull the first chunk before answering, so errors found before generation
            # (bad parameters, prompt too long, saturation) get a real status code.
            first = await chunks.__anext__()
        except Saturated:
            backend.rejected(dep, adapter, endpoint)
            raise
        except StopAsyncIteration:
            return StreamingResponse(
                iter(["data: [DONE]\n\n"]), media_type="text/event-stream", headers=headers
            )

        async def relay() -> AsyncIterator[str]:
            transcript = _Transcript() if record or metered else None
            if transcript is not None:
                transcript.feed(first)
            yield _with_trace(_without_usage(first) if hide_usage else first, trace)
            try:
                async for chunk in chunks:
                    if transcript is not None:
                        transcript.feed(chunk)
                    if hide_usage:
                        chunk = _without_usage(chunk)
                        if not chunk:
                            continue
                    yield chunk
            except ApiError as exc:
                yield f"data: {json.dumps(exc.to_openai())}\n\n"
                yield "data: [DONE]\n\n"
                return
            finally:
                if metered and transcript is not None:
                    await quotas.charge(principal, _total_tokens(transcript.usage))
            # Only here when the stream ended normally (not on an error or a disconnect).
            if record and transcript is not None:
                _record(request, endpoint, body, trace, transcript.answer(endpoint), arrived)

        return StreamingResponse(
            relay(),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no", **headers},
        )

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
        return await _generate(request, "chat")

    @app.post("/v1/completions", openapi_extra=request_body(CompletionBody))
    async def completions(request: Request) -> Response:
        """OpenAI's legacy completions, streamed or not; fields as for chat completions
        (`best_of` is ignored and named in `X-Qingliang-Ignored-Fields`)."""
        return await _generate(request, "completion")

    @app.get("/v1/models")
    async def models() -> dict:
        data = []
        for m in backend.models():
            meta = {"labels": m.labels, "description": m.description}
            data.append(
                {
                    "id": m.name,
                    "object": "model",
                    "created": m.created,
                    "owned_by": "qingliang",
                    **meta,
                }
            )
            for a in m.adapters:
                data.append(
                    {
                        "id": f"{m.name}:{a}",
                        "object": "model",
                        "created": m.created,
                        "owned_by": "qingliang",
                        "parent": m.name,
                    }
                )
        if embedder is not None:
            data.append(
                {"id": embedder.model_id, "object": "model", "created": 0, "owned_by": "qingliang"}
            )
        return {"object": "list", "data": data}

    @app.get("/v1/models/{model_id:path}")
    async def model(model_id: str) -> dict:
        listed = await models()
        for item in listed["data"]:
            if item["id"] == model_id:
                return item
        raise NotFound(f"model {model_id!r} does not exist", param="model", code="model_not_found")

    @app.post("/v1/embeddings", openapi_extra=request_body(EmbeddingBody))
    async def embeddings(request: Request) -> dict:
        """OpenAI's embeddings; unknown fields are a 400 naming them."""
        if embedder is None:
            raise NotFound("no embedding model is configured on this gateway")
        body = await _json_body(request)
        refuse_unknown(EmbeddingBody, body)
        if body.get("model") != embedder.model_id:
            raise NotFound(
                f"embedding model {body.get('model')!r} does not exist; use {embedder.model_id!r}",
                param="model",
                code="model_not_found",
            )
        texts = body.get("input")
        if isinstance(texts, str):
            texts = [texts]
        if not isinstance(texts, list) or not texts or not all(isinstance(t, str) for t in texts):
            raise BadRequest("`input` must be a non-empty string or list of strings", param="input")
        if len(texts) > 2048:
            raise BadRequest(f"`input` has {len(texts)} items; at most 2048", param="input")
        # The official openai client sends encoding_format "base64" unless told otherwise.
        encoding = body.get("encoding_format") or "float"
        if encoding not in ("float", "base64"):
            raise BadRequest(
                "`encoding_format` must be 'float' or 'base64'", param="encoding_format"
            )
        if body.get("dimensions") not in (None, 384):
            raise BadRequest(
                "this model has 384 dimensions; `dimensions` cannot change it", param="dimensions"
            )
        input_type = body.get("input_type") or "passage"
        if input_type not in ("query", "passage"):
            raise BadRequest("`input_type` must be 'query' or 'passage'", param="input_type")
        checked(body, EmbeddingBody)  # the types of the rest (`user`)
        vectors, tokens = await embedder.embed(texts, input_type)
        await quotas.charge(getattr(request.state, "principal", None), tokens)
        return {
            "object": "list",
            "model": embedder.model_id,
            "data": [
                {
                    "object": "embedding",
                    "index": i,
                    "embedding": _base64_floats(v) if encoding == "base64" else v,
                }
                for i, v in enumerate(vectors)
            ],
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        }

    @app.get("/healthz")
    async def healthz() -> dict:
        return {"status": "ok", "time": time.time()}

    async def _has_valid_key(request: Request) -> bool:
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            return False
        try:
            # Off the event loop: verifying may wait on the key store's write lock.
            return bool(await asyncio.to_thread(auth.verify, token.strip()))
        except Exception:  # a probe must not fail on the key store: answer as for no key
            logger.debug("readyz: could not verify a key", exc_info=True)
            return False

    @app.get("/readyz")
    async def readyz(request: Request) -> Response:
        states = await backend.ready()
        ready = all(s == "ready" for s in states.values())
        answer: dict[str, Any] = {"status": "ready" if ready else "not ready"}
        # Open to probes; deployment names only for a caller with a key (or no auth).
        if not auth.enabled or await _has_valid_key(request):
            answer["deployments"] = states
        return JSONResponse(answer, status_code=200 if ready else 503)

    add_knowledge_routes(app, knowledge, limits)
    add_agent_routes(app, agents, limits)
    add_pipeline_routes(app, pipelines)
    install_openapi(
        app, (*OPENAI_BODIES, *BODIES), public=[r for r, rule in ROUTES.items() if rule.public]
    )
    # Added last, so outermost of our middleware: a body over its limit by
    # Content-Length is refused before authentication or anything else reads it.
    app.add_middleware(BodyLimitMiddleware, limits=limits)
    return app

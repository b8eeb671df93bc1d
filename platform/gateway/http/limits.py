"""How much a gateway request may carry: body sizes, JSON nesting, attachments.

:class:`BodyLimitMiddleware` is a pure ASGI middleware that picks a byte limit by route
(:func:`body_limit`): a knowledge-base upload gets ``max_upload_bytes``, an agent run or
resume ``max_agent_body_bytes`` (its attachments travel in it as base64), a chat or
responses request ``max_chat_body_bytes`` (its images too), every other
request ``max_json_body_bytes``. A request whose ``Content-Length`` is over the limit is
answered 413 before a byte of its body is read; one without a ``Content-Length``
(chunked), or whose header lies, is counted while the app reads it and answered 413 as
soon as it passes the limit; the app then sees a client that went away. The 413 is in
OpenAI's error format and names the route, the limit and the setting that raises it (see
:class:`~qingliang.platform.settings.GatewayLimits`).

:func:`parse_json_body` is the one reader of a JSON request body: invalid JSON, a body
nested deeper than :data:`MAX_JSON_DEPTH` (refused without recursion, and bodies too deep
for the decoder itself) and a non-object are each a 400.

Example:
    >>> parse_json_body(b'{"model": "qwen"}')
    {'model': 'qwen'}
    >>> parse_json_body(b"[" * 100_000 + b"]" * 100_000)
    Traceback (most recent call last):
    ...
    qingliang.platform.errors.BadRequest: request body is nested too deeply: at most 64 levels
    >>> body_limit("POST", "/v1/knowledge/kb/documents", GatewayLimits()).setting
    'QINGLIANG_MAX_UPLOAD_BYTES'
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from qingliang.platform.errors import ApiError, BadRequest
from qingliang.platform.settings import GatewayLimits

logger = logging.getLogger(__name__)

#: Nesting levels a JSON request body may have (``{"a": {}}`` has 2).
MAX_JSON_DEPTH = 64
#: Room for a multipart upload's envelope (boundaries, part headers) beyond its file.
MULTIPART_ALLOWANCE = 64 * 1024

_UPLOAD = re.compile(r"^/v1/knowledge/[^/]+/documents/?$")
_AGENT_RUN = re.compile(r"^/v1/agents/(?:[^/]+/runs|runs/[^/]+/resume)/?$")
#: Requests whose images travel in the body as data URLs.
_WITH_IMAGES = re.compile(r"^/v1/(?:chat/completions|responses)/?$")


class BodyTooLarge(ApiError):
    """413: a request (or a part of it) is over one of the gateway's size limits."""

    status_code = 413
    error_type = "invalid_request_error"

    def __init__(self, message: str, *, param: str | None = None) -> None:
        super().__init__(message, param=param, code="request_too_large")


def size_text(n: int) -> str:
    """``4194304`` → ``"4 MiB"``; sizes that are not whole KiB or MiB in bytes.

    Example:
        >>> size_text(50 * 1024 * 1024), size_text(512 * 1024), size_text(1000)
        ('50 MiB', '512 KiB', '1000 bytes')
    """
    for unit, scale in (("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= scale and n % scale == 0:
            return f"{n // scale} {unit}"
    return f"{n} bytes"


@dataclass(frozen=True)
class BodyLimit:
    """The byte limit of one route's request bodies."""

    #: What is limited, for messages: "JSON body", "upload", "agent run body".
    what: str
    #: The limit as configured (an upload's file, not its multipart envelope).
    limit: int
    #: The environment variable that sets it.
    setting: str
    #: Bytes of body accepted before refusing (``limit`` plus any envelope).
    bound: int

    def refusal(self, method: str, path: str, size: int | None = None) -> BodyTooLarge:
        """The 413 for a body of ``size`` bytes (None: not known, only that it is over)."""
        how_big = f"{size} bytes" if size is not None else "larger than that"
        return BodyTooLarge(
            f"{method} {path}: the {self.what} limit is {size_text(self.limit)} and this "
            f"request is {how_big}; the gateway's operator sets it with "
            f"{self.setting} (now {self.limit})"
        )


def body_limit(method: str, path: str, limits: GatewayLimits) -> BodyLimit:
    """The limit of ``method path``'s request body (see the module docstring)."""
    if method == "POST" and _UPLOAD.match(path):
        return BodyLimit(
            "upload",
            limits.max_upload_bytes,
            "QINGLIANG_MAX_UPLOAD_BYTES",
            limits.max_upload_bytes + MULTIPART_ALLOWANCE,
        )
    if method == "POST" and _AGENT_RUN.match(path):
        return BodyLimit(
            "agent run body",
            limits.max_agent_body_bytes,
            "QINGLIANG_MAX_AGENT_BODY_BYTES",
            limits.max_agent_body_bytes,
        )
    if method == "POST" and _WITH_IMAGES.match(path):
        return BodyLimit(
            "request body (with its images)",
            limits.max_chat_body_bytes,
            "QINGLIANG_MAX_CHAT_BODY_BYTES",
            limits.max_chat_body_bytes,
        )
    return BodyLimit(
        "JSON body",
        limits.max_json_body_bytes,
        "QINGLIANG_MAX_JSON_BODY_BYTES",
        limits.max_json_body_bytes,
    )


def _content_length(scope: Scope) -> int | None:
    for name, value in scope.get("headers") or ():
        if name.lower() == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None  # the server refuses it; the count still applies
    return None


async def _answer(send: Send, exc: ApiError) -> None:
    body = json.dumps(exc.to_openai()).encode()
    await send(
        {
            "type": "http.response.start",
            "status": exc.status_code,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                # The rest of the body is not read: the connection cannot be reused.
                (b"connection", b"close"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


class BodyLimitMiddleware:
    """Refuse request bodies over their route's limit (413), reading no more than it.

    Args:
        app: The ASGI app it wraps.
        limits: The limits; each route's is chosen by :func:`body_limit`.
    """

    def __init__(self, app: ASGIApp, limits: GatewayLimits) -> None:
        self.app = app
        self.limits = limits

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        method, path = scope["method"], scope["path"]
        limit = body_limit(method, path, self.limits)
        declared = _content_length(scope)
        if declared is not None and declared > limit.bound:
            logger.debug("%s %s: refused a %d-byte body unread", method, path, declared)
            await _answer(send, limit.refusal(method, path, declared))
            return
        received = 0
        started = answered = False

        async def counted() -> Message:
            nonlocal received, answered
            if received > limit.bound:
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit.bound:
                    logger.debug("%s %s: body passed %d bytes", method, path, limit.bound)
                    # Answered here rather than raised: middleware between here and the
                    # route (BaseHTTPMiddleware reads through a task group) would wrap
                    # an exception, and a route may catch it. The app then sees a client
                    # that went away, and whatever it sends is dropped.
                    if not started:
                        answered = True
                        await _answer(send, limit.refusal(method, path))
                    return {"type": "http.disconnect"}
            return message

        async def watched(message: Message) -> None:
            nonlocal started
            if answered:
                return
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, counted, watched)
        except Exception:
            if not answered:
                raise
            # The 413 went out; the app stopped reading with ClientDisconnect or the like.
            logger.debug("%s %s: ended after its 413", method, path, exc_info=True)


def json_depth(value: Any, stop_past: int = MAX_JSON_DEPTH) -> int:
    """Nesting levels of a decoded JSON value (a scalar has 0), counted level by level
    without recursion; counting stops once past ``stop_past``.

    Example:
        >>> json_depth({"a": [1, {"b": []}]}), json_depth("x")
        (4, 0)
    """
    level = [value] if isinstance(value, dict | list) else []
    depth = 0
    while level:
        depth += 1
        if depth > stop_past:
            break
        deeper: list[Any] = []
        for item in level:
            children = item.values() if isinstance(item, dict) else item
            # The type set is built in C, so long lists of scalars cost little.
            kinds = set(map(type, children))
            if dict in kinds or list in kinds:
                deeper.extend(c for c in children if isinstance(c, dict | list))
        level = deeper
    return depth


def parse_json_body(
    raw: bytes, *, allow_empty: bool = False, max_depth: int = MAX_JSON_DEPTH
) -> dict:
    """The JSON object of a request body; :class:`BadRequest` when it is not one.

    Args:
        raw: The body as received.
        allow_empty: An empty (or blank) body is ``{}`` rather than an error.
        max_depth: Nesting levels allowed.
    """
    if allow_empty and not raw.strip():
        return {}
    too_deep = f"request body is nested too deeply: at most {max_depth} levels"
    try:
        body = json.loads(raw)
    except RecursionError:
        raise BadRequest(too_deep) from None
    except ValueError as exc:  # JSONDecodeError, and UnicodeDecodeError for non-UTF-8
        raise BadRequest(f"request body is not valid JSON: {exc}") from None
    if not isinstance(body, dict):
        raise BadRequest("request body must be a JSON object")
    if json_depth(body, max_depth) > max_depth:
        raise BadRequest(too_deep)
    return body


def check_attachments(value: object, limits: GatewayLimits) -> None:
    """Refuse an agent run's ``attachments`` with too many files (400) or a file over
    ``max_attachment_bytes`` (413), before the run is started. The shape of each item is
    the agents service's to check; only what can be sized is sized here.

    Example:
        >>> check_attachments([{"name": "a.txt", "data": "aGk="}], GatewayLimits())
        >>> try:
        ...     check_attachments([{"name": "a", "data": ""}] * 9, GatewayLimits())
        ... except BadRequest as exc:
        ...     print(exc.param, exc.status_code)
        attachments 400
    """
    if not isinstance(value, list):
        return
    if len(value) > limits.max_attachments:
        raise BadRequest(
            f"`attachments` has {len(value)} files; at most {limits.max_attachments} "
            "(QINGLIANG_MAX_ATTACHMENTS)",
            param="attachments",
        )
    for i, item in enumerate(value):
        data = item.get("data") if isinstance(item, dict) else None
        if not isinstance(data, str):
            continue
        # Decoded size of base64 text, without decoding it.
        size = len(data.rstrip("=")) * 3 // 4
        if size > limits.max_attachment_bytes:
            raise BodyTooLarge(
                f"attachments[{i}] is about {size} bytes; at most "
                f"{size_text(limits.max_attachment_bytes)} each "
                f"(QINGLIANG_MAX_ATTACHMENT_BYTES={limits.max_attachment_bytes})",
                param=f"attachments[{i}]",
            )


async def json_body(request: Any) -> dict:
    """The JSON object of a Starlette ``request``'s body (see :func:`parse_json_body`).

    Its size is bounded by :class:`BodyLimitMiddleware` before it is read whole here.
    """
    return parse_json_body(await request.body())

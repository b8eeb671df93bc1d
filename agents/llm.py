"""How agents reach models: through the serving layer, never around it.

:class:`ChatModel` is the narrow boundary the runtime calls. Two real implementations:

- :class:`BackendChat` — in-process, over the gateway's
  :class:`~qingliang.platform.gateway.backend.Backend` (Ray Serve
  handles to the model deployments in production), so an agent's request takes
  the same path, queues and metrics as an API request;
- :class:`HttpChat` — from outside the platform, over its OpenAI-compatible API.

Requests are OpenAI chat bodies. With tools, the ``tools`` list goes to the model and vLLM
renders it with the model's own tool-calling template (the engine runs with
``--enable-auto-tool-choice`` and the deployment's ``spec.engine.tool_call_parser``,
``hermes`` by default); the reply's ``tool_calls`` come back parsed. Without tools the
reply streams, and each token delta reaches ``on_delta``.

A bare deployment (``qwen``, no ``:adapter``) follows its canary split
(``spec.lora.traffic``), and an alias (``qwen:gov``, ``spec.lora.aliases``) its shares, as an
API request does: :class:`BackendChat` picks the adapter with the gateway's
:func:`~qingliang.serving.traffic.resolve_adapter`, keyed by ``user`` (the agent run's id, so
one run stays on one arm). The :class:`ChatReply` says which
adapter answered and its registry ref; the run's journal records both.

Example:
    >>> reply = await BackendChat(backend).complete(          # doctest: +SKIP
    ...     "qwen-coder", [{"role": "user", "content": "hi"}], max_tokens=16)
    >>> reply.text, reply.tokens                                # doctest: +SKIP
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from qingliang.platform.errors import ApiError, EngineError, Saturated
from qingliang.serving.toolcalls import Offer, parse_tool_calls
from qingliang.serving.traffic import resolve_adapter

if TYPE_CHECKING:
    from qingliang.serving.engine import StreamChunk
    from qingliang.serving.traffic import ModelEntry

log = logging.getLogger(__name__)

OnDelta = Callable[[str], None]
#: How long, in all, an agent's model call waits out a saturated deployment (429).
SATURATED_WAIT_S = 30.0


@dataclass(frozen=True)
class ToolCall:
    id: str
    name: str
    arguments: dict[str, Any]
    #: Set when the model's arguments were not a JSON object (shown back to the model).
    error: str | None = None


@dataclass(frozen=True)
class ChatReply:
    text: str
    tool_calls: list[ToolCall] = field(default_factory=list)
    tokens: int = 0
    model: str = ""
    finish_reason: str | None = None
    #: The LoRA adapter that answered; None for the base model (or when not known).
    adapter: str | None = None
    #: That adapter's model-registry ref (``name@version``), where known.
    adapter_ref: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "text": self.text,
            "tool_calls": [tc.__dict__ for tc in self.tool_calls],
            "tokens": self.tokens,
            "model": self.model,
            "finish_reason": self.finish_reason,
            "adapter": self.adapter,
            "adapter_ref": self.adapter_ref,
        }

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> ChatReply:
        return cls(
            text=d["text"],
            tool_calls=[ToolCall(**tc) for tc in d.get("tool_calls", [])],
            tokens=int(d.get("tokens", 0)),
            model=d.get("model", ""),
            finish_reason=d.get("finish_reason"),
            # Absent from replies journaled before adapters were recorded.
            adapter=d.get("adapter"),
            adapter_ref=d.get("adapter_ref"),
        )


class ChatModel(Protocol):
    """A chat model. ``user`` is a stable key of the caller (the agent run's id) that
    keeps canary routing sticky."""

    async def complete(
        self,
        model: str,
        messages: list[dict[str, Any]],
        *,
        tools: list[dict[str, Any]] | None = None,
        max_tokens: int = 256,
        temperature: float = 0.0,
        on_delta: OnDelta | None = None,
        user: str | None = None,
    ) -> ChatReply: ...


def body_for(
    model: str,
    messages: list[dict[str, Any]],
    tools: list[dict[str, Any]] | None,
    max_tokens: int,
    temperature: float,
    stream: bool,
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "model": model,
        "messages": messages,
        "max_tokens": max_tokens,
        "temperature": temperature,
        "stream": stream,
    }
    if tools:
        body["tools"] = tools
        body["tool_choice"] = "auto"
    if stream:
        body["stream_options"] = {"include_usage": True}
    return body


def parse_reply(response: dict[str, Any]) -> ChatReply:
    """An OpenAI chat completion as a :class:`ChatReply`."""
    try:
        choice = response["choices"][0]
        message = choice["message"]
    except (KeyError, IndexError, TypeError) as exc:
        raise EngineError(f"malformed chat completion from the model: {exc!r}") from None
    calls = []
    for i, tc in enumerate(message.get("tool_calls") or []):
        fn = tc.get("function") or {}
        raw = fn.get("arguments") or "{}"
        error = None
        try:
            args = json.loads(raw) if isinstance(raw, str) else dict(raw)
            if not isinstance(args, dict):
                raise ValueError("not an object")
        except ValueError as exc:
            args, error = {}, f"arguments are not a JSON object ({exc}): {str(raw)[:200]}"
        calls.append(ToolCall(tc.get("id") or f"call_{i}", str(fn.get("name", "")), args, error))
    usage = response.get("usage") or {}
    # The gateway says what answered in a `qingliang` object (absent from engine replies).
    trace = response.get("qingliang")
    if not isinstance(trace, dict):
        trace = {}
    adapter, ref = trace.get("adapter"), trace.get("adapter_ref")
    return ChatReply(
        text=message.get("content") or "",
        tool_calls=calls,
        tokens=int(usage.get("total_tokens") or 0),
        model=str(response.get("model", "")),
        finish_reason=choice.get("finish_reason"),
        adapter=adapter if isinstance(adapter, str) else None,
        adapter_ref=ref if isinstance(ref, str) else None,
    )


def recover_tool_call(reply: ChatReply, offered: set[str]) -> ChatReply:
    """Tool calls written as text, turned into real ones.

    Small models given tools through their native template sometimes answer with the call
    as a bare or fenced JSON object (Qwen2.5-Coder-0.5B writes `````json {"name": ...,
    "arguments": {...}}`````) instead of inside the ``<tool_call>`` tags the parser looks
    for. The serving layer's reading (:func:`qingliang.serving.toolcalls.parse_tool_calls`,
    the one the OpenAI API applies) decides: when the whole reply is calls of offered
    tools with objects of arguments, they become those tool calls; anything else is left
    as the answer it is. A reply that already has calls is returned unchanged.
    """
    if reply.tool_calls or not offered:
        return reply
    calls = parse_tool_calls(reply.text, Offer.of_names(offered))
    if not calls:
        return reply
    log.debug("reply of %s: %d tool call(s) recovered from its text", reply.model, len(calls))
    return dataclasses.replace(
        reply,
        text="",
        # Ids fixed by position: a replayed journal step recovers the same calls.
        tool_calls=[ToolCall(f"call_{i}", c.name, c.arguments) for i, c in enumerate(calls)],
        finish_reason="tool_calls",
    )


def _split(model: str) -> tuple[str, str | None]:
    dep, _, adapter = model.partition(":")
    return dep, adapter or None


class BackendChat:
    """Models through the gateway's backend (Serve handles) — the in-platform path.

    A bare deployment's canary split is applied here, as the gateway applies it to API
    requests; a backend without ``models()`` (or a deployment it does not list) has none,
    and the request goes to the base model.
    """

    def __init__(self, backend: Any) -> None:
        self._backend = backend

    def _entry(self, deployment: str) -> ModelEntry | None:
        models = getattr(self._backend, "models", None)
        if models is None:
            return None
        return next((e for e in models() if e.name == deployment), None)

    async def complete(
        self,
        model: str,
        messages: list[dict[str, Any]],
        *,
        tools: list[dict[str, Any]] | None = None,
        max_tokens: int = 256,
        temperature: float = 0.0,
        on_delta: OnDelta | None = None,
        user: str | None = None,
    ) -> ChatReply:
        dep, adapter = _split(model)
        entry = self._entry(dep)
        if entry is not None:
            asked, adapter = adapter, resolve_adapter(entry, adapter, user)
            if adapter != asked:
                log.debug("%s: agent call sent to %s", model, adapter or "the base model")
        ref = entry.refs.get(adapter) if entry is not None and adapter else None
        stream = on_delta is not None and not tools
        body = body_for(model, messages, tools, max_tokens, temperature, stream)
        # A saturated deployment refuses before it generates anything: the agent waits as
        # it is told (Retry-After) and asks again, up to SATURATED_WAIT_S in all, rather
        # than failing the whole run on a moment's overload.
        waited = 0.0
        while True:
            try:
                return await self._once(dep, model, body, adapter, ref, stream, on_delta)
            except Saturated as exc:
                pause = max(0.05, min(exc.retry_after, SATURATED_WAIT_S - waited))
                if waited >= SATURATED_WAIT_S:
                    raise
                log.debug("%s is saturated; the agent asks again in %.2f s", dep, pause)
                await asyncio.sleep(pause)
                waited += pause

    async def _once(
        self,
        dep: str,
        model: str,
        body: dict[str, Any],
        adapter: str | None,
        ref: str | None,
        stream: bool,
        on_delta: OnDelta | None,
    ) -> ChatReply:
        if not stream:
            reply = parse_reply(await self._backend.generate(dep, "chat", body, adapter))
            return dataclasses.replace(reply, adapter=adapter, adapter_ref=ref)
        parts: list[str] = []
        tokens, finish = 0, None
        try:
            async for chunk in self._backend.stream(dep, "chat", body, adapter):
                tokens, finish = self._feed(chunk, parts, on_delta, tokens, finish)
        except Saturated as exc:
            if parts:  # tokens went out already: asking again would repeat them
                raise ApiError(str(exc)) from None
            raise
        return ChatReply("".join(parts), [], tokens, model, finish, adapter, ref)

    @staticmethod
    def _feed(
        chunk: StreamChunk,
        parts: list[str],
        on_delta: OnDelta | None,
        tokens: int,
        finish: str | None,
    ) -> tuple[int, str | None]:
        event = chunk.data
        if "error" in event:
            raise ApiError(str(event["error"].get("message", event["error"])))
        for choice in event.get("choices") or []:
            delta = (choice.get("delta") or {}).get("content") or ""
            if delta:
                parts.append(delta)
                assert on_delta is not None
                on_delta(delta)
            finish = choice.get("finish_reason") or finish
        tokens = int((event.get("usage") or {}).get("total_tokens") or tokens)
        return tokens, finish


class HttpChat:
    """Models through the platform's OpenAI-compatible API (from outside the platform)."""

    def __init__(self, base_url: str, api_key: str | None = None, timeout_s: float = 300) -> None:
        import httpx

        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._client = httpx.AsyncClient(base_url=base_url, headers=headers, timeout=timeout_s)

    async def complete(
        self,
        model: str,
        messages: list[dict[str, Any]],
        *,
        tools: list[dict[str, Any]] | None = None,
        max_tokens: int = 256,
        temperature: float = 0.0,
        on_delta: OnDelta | None = None,
        user: str | None = None,
    ) -> ChatReply:
        body = body_for(model, messages, tools, max_tokens, temperature, stream=False)
        if user is not None:
            body["user"] = user  # the gateway's canary split keys on it
        r = await self._client.post("/chat/completions", json=body)
        if r.status_code >= 400:
            raise ApiError(f"model {model!r}: HTTP {r.status_code}: {r.text[:300]}")
        reply = parse_reply(r.json())
        if on_delta is not None and reply.text:
            on_delta(reply.text)
        return reply

    async def aclose(self) -> None:
        await self._client.aclose()

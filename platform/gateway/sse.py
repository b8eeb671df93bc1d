r"""The server-sent events the gateway writes, and the answers it builds from a stream.

Engines yield typed chunks (:class:`~qingliang.serving.engine.StreamChunk`); the SSE text
is written here, once per event: :func:`chunk_event` for a relayed chunk, :func:`sse_event`
for the gateway's own events (the traced first event, errors), then :data:`DONE`.

A generation answer says what made it (:func:`trace_of`: the ``qingliang`` object in the
body, in the first event of a stream, and :func:`trace_headers`). A stream is read once on
its way to the client: :class:`Transcript` gathers what it said (for the conversation log
and the key's token charge). A key with a token limit always has its stream asked for
usage (:func:`with_usage`); the usage chunk is kept from a client that did not ask for it.

Example:
    >>> sse_event(with_trace({"id": "c1"}, {"deployment": "qwen"}))
    'data: {"id": "c1", "qingliang": {"deployment": "qwen"}}\n\n'
    >>> chunk_event({"id": "c1", "choices": []})
    'data: {"id":"c1","choices":[]}\n\n'
"""

from __future__ import annotations

import json
from typing import Any

from pydantic_core import to_json

from qingliang.serving.traffic import ModelEntry, resolve_adapter

#: The event that ends every stream.
DONE = "data: [DONE]\n\n"


def sse_event(data: object, *, ensure_ascii: bool = False) -> str:
    """``data`` as one server-sent event (``data: <json>`` and a blank line)."""
    return f"data: {json.dumps(data, ensure_ascii=ensure_ascii)}\n\n"


def chunk_event(data: dict[str, Any]) -> str:
    """An engine's chunk as one server-sent event, in the engine's own compact JSON.

    pydantic's serializer is the one vLLM writes its events with (``model_dump_json``):
    the client gets the bytes the engine meant (``1e-05`` is ``0.00001`` there).
    """
    return f"data: {to_json(data).decode()}\n\n"


def trace_of(entry: ModelEntry, adapter: str | None) -> dict[str, Any]:
    """What made an answer: the ``qingliang`` object of its body."""
    return {
        "deployment": entry.name,
        "adapter": adapter,
        "adapter_ref": entry.refs.get(adapter) if adapter else None,
    }


def routed(entry: ModelEntry, asked: str | None, user: object) -> tuple[str | None, dict]:
    """The adapter a request that named ``asked`` goes to
    (:func:`~qingliang.serving.traffic.resolve_adapter`) and its answer's trace; a request
    through an alias says so (``alias``)."""
    adapter = resolve_adapter(entry, asked, user)
    trace = trace_of(entry, adapter)
    if asked is not None and asked in entry.aliases:
        trace["alias"] = asked
    return adapter, trace


def trace_headers(trace: dict[str, Any]) -> dict[str, str]:
    headers = {
        "X-Qingliang-Deployment": trace["deployment"] or "",
        "X-Qingliang-Adapter": trace["adapter"] or "",
        "X-Qingliang-Adapter-Ref": trace["adapter_ref"] or "",
    }
    if trace.get("alias"):
        headers["X-Qingliang-Alias"] = trace["alias"]
    return headers


def server_timing(gateway_s: float, replica: dict[str, float]) -> str:
    """The ``Server-Timing`` header of a non-streamed answer: the gateway's own work and the
    replica's figures (``queue_s``, ``engine_s``), in milliseconds.

    Example:
        >>> server_timing(0.0004, {"queue_s": 0.0021, "engine_s": 0.25})
        'gateway;dur=0.400, queue;dur=2.100, engine;dur=250.000'
    """
    parts = [f"gateway;dur={gateway_s * 1000:.3f}"]
    for name, key in (("queue", "queue_s"), ("engine", "engine_s")):
        value = replica.get(key)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            parts.append(f"{name};dur={max(0.0, value) * 1000:.3f}")
    return ", ".join(parts)


def with_trace(data: dict[str, Any], trace: dict[str, Any]) -> dict[str, Any]:
    """The first event's object with ``trace`` added (written with :func:`sse_event`)."""
    return {**data, "qingliang": trace}


class Transcript:
    """What a streamed answer said, choice by choice, gathered from its chunks.

    Chat chunks carry ``delta.content``, legacy completion chunks ``text``.
    """

    def __init__(self) -> None:
        self.id: str | None = None
        self.parts: dict[int, list[str]] = {}
        self.finish_reasons: dict[int, str | None] = {}
        self.usage: dict | None = None

    def feed(self, event: dict[str, Any]) -> None:
        """Take in one event of the stream (a chunk's ``data``)."""
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


def asked_usage(body: dict) -> bool:
    options = body.get("stream_options")
    return isinstance(options, dict) and options.get("include_usage") is True


def with_usage(body: dict) -> dict:
    """``body`` asking its stream for a final usage event."""
    options = body.get("stream_options")
    options = dict(options) if isinstance(options, dict) else {}
    return {**body, "stream_options": {**options, "include_usage": True}}


def total_tokens(usage: object) -> int | None:
    if not isinstance(usage, dict):
        return None
    total = usage.get("total_tokens")
    if isinstance(total, int) and not isinstance(total, bool):
        return total
    parts = [usage.get(k) for k in ("prompt_tokens", "completion_tokens")]
    return sum(p for p in parts if isinstance(p, int) and not isinstance(p, bool)) or None

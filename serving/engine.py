"""The narrow ``Engine`` protocol every serving engine implements.

An engine speaks OpenAI at the level of request bodies: it takes the JSON body of a
``/v1/chat/completions`` or ``/v1/completions`` request (already routed: ``model`` is
the deployment name, ``adapter`` names a LoRA adapter or is None) and returns either
the response body as a dict, or, when ``body["stream"]`` is true, an async iterator of
:class:`StreamChunk` objects: each one event of OpenAI's stream as a JSON-ready dict, read
once (vLLM's SSE strings are parsed once, in its engine); the usage-only event carries
its :class:`Usage` typed. There is no ``[DONE]`` chunk: the iterator ends. The SSE text
a client reads is written once, in the gateway.

Engines raise :class:`qingliang.platform.errors.ApiError` subclasses for requests they
refuse (400 for a prompt over ``max_model_len``, 404 for an unknown adapter) and
:class:`~qingliang.platform.errors.EngineError` when they are broken. They never
yield error objects inside a stream.

Example:
    >>> async def ask(engine: "Engine") -> str:  # doctest: +SKIP
    ...     out = await engine.chat({"model": "tiny", "messages": [
    ...         {"role": "user", "content": "hi"}], "max_tokens": 8}, adapter=None)
    ...     return out["choices"][0]["message"]["content"]
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable


def _count(value: object) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


@dataclass(frozen=True, slots=True)
class Usage:
    """Tokens one answer used (OpenAI's ``usage`` object)."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0

    @classmethod
    def of(cls, usage: object) -> Usage | None:
        """``usage`` (a ``usage`` object of an answer) typed; None when it is not an object.

        The Responses API names the counts ``input_tokens`` and ``output_tokens``.
        """
        if not isinstance(usage, dict):
            return None
        if "input_tokens" in usage and "prompt_tokens" not in usage:
            return cls(
                _count(usage.get("input_tokens")),
                _count(usage.get("output_tokens")),
                _count(usage.get("total_tokens")),
            )
        return cls(
            _count(usage.get("prompt_tokens")),
            _count(usage.get("completion_tokens")),
            _count(usage.get("total_tokens")),
        )


#: The events that end a Responses API stream; each carries the whole response.
_RESPONSE_ENDS = frozenset({"response.completed", "response.incomplete", "response.failed"})


@dataclass(frozen=True, slots=True)
class StreamChunk:
    """One event of a streamed answer.

    Attributes:
        data: the event's JSON object (``{"id": ..., "choices": [...], ...}``), in the
            key order the engine wrote it.
        usage: set on the usage-only event (``choices`` empty, ``usage`` set) and only
            there: what the answer used. In a Responses API stream, set on the event
            that ends it (``response.completed``, ``.incomplete`` or ``.failed``), from
            its ``response.usage``.
    """

    data: dict[str, Any]
    usage: Usage | None = None

    @classmethod
    def of(cls, data: dict[str, Any]) -> StreamChunk:
        """``data`` as a chunk, its usage typed when it is the usage-only event."""
        if "usage" in data and not data.get("choices"):
            return cls(data, Usage.of(data["usage"]))
        if data.get("type") in _RESPONSE_ENDS and isinstance(data.get("response"), dict):
            return cls(data, Usage.of(data["response"].get("usage")))
        return cls(data)


#: What ``chat`` / ``completion`` / ``responses`` return: a response body, or chunks when
#: streaming.
EngineOutput = dict | AsyncIterator[StreamChunk]


@runtime_checkable
class Engine(Protocol):
    """Start, generate (streamed or not), manage adapters, check health, shut down."""

    @property
    def max_model_len(self) -> int:
        """Context length in tokens (prompt + completion); the configured value, or 0,
        until ``start`` has read the model."""
        ...

    async def start(self) -> None:
        """Load the model; return when it can serve. Raises EngineError on failure."""
        ...

    async def chat(self, body: dict, *, adapter: str | None) -> EngineOutput:
        """Serve an OpenAI chat-completions request body."""
        ...

    async def completion(self, body: dict, *, adapter: str | None) -> EngineOutput:
        """Serve an OpenAI completions request body."""
        ...

    # An engine may also serve OpenAI's Responses API: ``async def responses(body, *,
    # adapter) -> EngineOutput`` (:class:`ServesResponses`). It is not part of this
    # protocol: the transformers engine has none, and ModelService refuses the endpoint.

    async def load_adapter(self, name: str, path: str) -> None:
        """Make a LoRA adapter servable under ``name``.

        Idempotent for the same path. A different path for a loaded name replaces it
        with no moment in which requests for ``name`` fail.
        """
        ...

    async def unload_adapter(self, name: str) -> None:
        """Stop serving adapter ``name``; unknown names raise NotFound."""
        ...

    def adapters(self) -> dict[str, str]:
        """Adapters currently servable: name → path."""
        ...

    async def check_health(self) -> None:
        """Raise EngineError if the engine cannot serve."""
        ...

    async def shutdown(self) -> None:
        """Release the model and every resource the engine holds."""
        ...


@runtime_checkable
class ServesResponses(Protocol):
    """An engine that also serves OpenAI's Responses API (``/v1/responses``)."""

    async def responses(self, body: dict, *, adapter: str | None) -> EngineOutput:
        """Serve a Responses API request body: the response object, or its events."""
        ...

"""The narrow ``Engine`` protocol every serving engine implements.

An engine speaks OpenAI at the level of request bodies: it takes the JSON body of a
``/v1/chat/completions`` or ``/v1/completions`` request (already routed: ``model`` is
the deployment name, ``adapter`` names a LoRA adapter or is None) and returns either
the response body as a dict, or, when ``body["stream"]`` is true, an async iterator of
server-sent-event strings (``"data: {...}\\n\\n"`` ... ``"data: [DONE]\\n\\n"``).

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
from typing import Protocol, runtime_checkable

#: What ``chat`` / ``completion`` return: a response body, or SSE strings when streaming.
EngineOutput = dict | AsyncIterator[str]


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

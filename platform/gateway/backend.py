"""What the gateway app is built over: where model and embedding requests go.

Production passes serving's Ray Serve handles
(:class:`~qingliang.serving.deployments.handles.ServeBackend`,
:class:`~qingliang.serving.deployments.handles.HandleEmbedder`); the unit tests pass small
fakes of the same shape.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Protocol

from qingliang.serving.engine import StreamChunk
from qingliang.serving.traffic import ModelEntry


class Backend(Protocol):
    """Where requests for model deployments go (Ray Serve handles in production)."""

    def models(self) -> list[ModelEntry]: ...

    async def generate(
        self, deployment: str, endpoint: str, body: dict, adapter: str | None
    ) -> dict: ...

    def stream(
        self, deployment: str, endpoint: str, body: dict, adapter: str | None
    ) -> AsyncIterator[StreamChunk]:
        """The answer's events, typed; the gateway writes them as SSE."""
        ...

    async def ready(self) -> dict[str, str]: ...

    def rejected(self, deployment: str, adapter: str | None, endpoint: str) -> None: ...


class Embedder(Protocol):
    """Where embedding requests go."""

    model_id: str

    async def embed(self, texts: list[str], input_type: str) -> tuple[list[list[float]], int]: ...

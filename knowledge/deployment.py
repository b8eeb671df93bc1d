"""The knowledge area's Ray Serve shell: :class:`KnowledgeServer` and its client.

One replica of :class:`KnowledgeServer` owns every knowledge base's embedded shards (Qdrant
Edge allows one opener per shard); the gateway and the agents reach it through
:class:`HandleKnowledge`, an async :class:`~qingliang.knowledge.api.KnowledgeClient` over
its Serve handle. All logic is :class:`~qingliang.knowledge.service.KnowledgeService`,
called through :func:`~qingliang.knowledge.api.dispatch`.

Example:
    >>> kb_server = serve.deployment(KnowledgeServer).options(     # doctest: +SKIP
    ...     name="Knowledge", num_replicas=1).bind(str(home))
    >>> citations = await HandleKnowledge(handle).search(          # doctest: +SKIP
    ...     "gov-policy", "返岗人员隔离", tenant="city-a")
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

from qingliang.knowledge.api import Searches, dispatch
from qingliang.serving.deployments.handles import translate

logger = logging.getLogger(__name__)


class KnowledgeServer:
    """Ray Serve class that owns the knowledge bases' embedded shards (one replica).

    Qdrant Edge allows one opener per shard, so every gateway replica reaches the knowledge
    bases through this one; index building and embedding run here, off the gateway's
    request path, in a worker thread so the replica keeps taking requests.
    """

    def __init__(self, home: str) -> None:
        from qingliang.knowledge.service import KnowledgeService

        self._service = KnowledgeService(Path(home))

    async def call(
        self, method: str, kb: str | None, tenant: str | None, actor: str, kwargs: dict
    ) -> Any:
        return await asyncio.to_thread(dispatch, self._service, method, kb, tenant, actor, kwargs)

    def __del__(self) -> None:
        service = getattr(self, "_service", None)
        if service is not None:
            service.close()


class HandleKnowledge(Searches):
    """The gateway's and the agents' view of the knowledge server (async end to end)."""

    def __init__(self, handle: Any) -> None:
        self._handle = handle

    async def call(
        self, method: str, kb: str | None, tenant: str | None, actor: str, kwargs: dict
    ) -> Any:
        try:
            return await self._handle.call.remote(method, kb, tenant, actor, kwargs)
        except Exception as exc:
            raise translate(exc) from None

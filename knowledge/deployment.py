"""The knowledge area's Ray Serve shell: :class:`KnowledgeServer` and its client.

One replica of :class:`KnowledgeServer` owns every knowledge base's embedded shards (Qdrant
Edge allows one opener per shard); the gateway and the agents reach it through
:class:`HandleKnowledge`, an async :class:`~qingliang.knowledge.api.KnowledgeClient` over
its Serve handle. All logic is :class:`~qingliang.knowledge.service.KnowledgeService`,
called through :func:`~qingliang.knowledge.api.dispatch`.

**Search** stays on the replica's event loop until the work that needs a thread: the KB
and the query are checked on the loop, the query is embedded by a
:class:`~qingliang.knowledge.batching.QueryBatcher` (queries of concurrent searches share
one batch; one alone is embedded at once) and the store is searched in a worker thread.
Image searches and every other method run in a worker thread as a whole.

**Threads.** The replica asks Ray for a quarter of a core (it is idle most of the time), but
an ingest embeds on every core the process may use, or ``QINGLIANG_EMBED_THREADS`` (see
:func:`~qingliang.serving.embeddings.embed_threads`); queries are embedded on one core
beside an ingest's batches, so a big sync does not hold searches up for a batch's time.

Example:
    >>> kb_server = serve.deployment(KnowledgeServer).options(     # doctest: +SKIP
    ...     name="Knowledge", num_replicas=1).bind(str(home))
    >>> citations = await HandleKnowledge(handle).search(          # doctest: +SKIP
    ...     "gov-policy", "返岗人员隔离", tenant="city-a")
"""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path
from typing import Any

from qingliang.knowledge.api import Searches, dispatch
from qingliang.knowledge.batching import QueryBatcher
from qingliang.platform import metrics
from qingliang.serving.deployments.handles import translate

logger = logging.getLogger(__name__)


class KnowledgeServer:
    """Ray Serve class that owns the knowledge bases' embedded shards (one replica).

    Qdrant Edge allows one opener per shard, so every gateway replica reaches the knowledge
    bases through this one; index building and embedding run here, off the gateway's
    request path, in a worker thread so the replica keeps taking requests.
    """

    def __init__(self, home: str, *, service: Any = None) -> None:
        if service is None:
            from qingliang.knowledge.service import KnowledgeService

            service = KnowledgeService(Path(home))
        self._service = service
        self._batchers: dict[int, QueryBatcher] = {}

    async def call(
        self, method: str, kb: str | None, tenant: str | None, actor: str, kwargs: dict
    ) -> Any:
        started = time.perf_counter()
        if method == "search" and kb is not None and _text_search(kwargs):
            out = await self._search(kb, tenant, dict(kwargs))
        else:
            out = await asyncio.to_thread(
                dispatch, self._service, method, kb, tenant, actor, kwargs
            )
        if method == "search" and kb is not None:  # answered: `kb` names a known KB
            metrics.KNOWLEDGE_SEARCH.observe(time.perf_counter() - started, kb=kb)
        return out

    async def _search(self, kb: str, tenant: str | None, kwargs: dict) -> Any:
        query = kwargs.pop("query", None)
        embedder = self._service.query_embedder(kb, query, tenant=tenant)
        batcher = self._batchers.get(id(embedder))
        if batcher is None:
            batcher = self._batchers[id(embedder)] = QueryBatcher(
                lambda texts: embedder.embed(texts, input_type="query")
            )
        vector = await batcher.embed(query.strip())
        return await asyncio.to_thread(
            self._service.search, kb, query, tenant=tenant, query_vector=vector, **kwargs
        )

    def __del__(self) -> None:
        for batcher in getattr(self, "_batchers", {}).values():
            batcher.close()
        service = getattr(self, "_service", None)
        if service is not None:
            service.close()


def _text_search(kwargs: dict) -> bool:
    """Whether a search is by text only (no picture, not among the KB's images)."""
    kinds = kwargs.get("kinds")
    wanted = [kinds] if isinstance(kinds, str) else list(kinds or [])
    return kwargs.get("image") is None and "image" not in wanted


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

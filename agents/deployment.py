"""The agents area's Ray Serve shell: :class:`AgentsServer` and the gateway's
:class:`HandleAgents`.

One replica of :class:`AgentsServer` hosts every agent run (it owns the run checkpoints).
Models are reached through the same Serve handles as API requests
(:class:`~qingliang.serving.deployments.handles.ServeBackend`), knowledge through the
Knowledge deployment (:class:`~qingliang.knowledge.deployment.HandleKnowledge`, whose
async ``search`` the knowledge tool awaits on this replica's event loop), and the router
through the shared detached router actor. All logic is
:class:`~qingliang.agents.service.AgentService`, called through
:func:`~qingliang.agents.api.dispatch_call` and :func:`~qingliang.agents.api.dispatch_stream`.

Example:
    >>> agents = serve.deployment(AgentsServer).options(             # doctest: +SKIP
    ...     name="Agents", num_replicas=1).bind(str(home), embedder, kb_server)
    >>> await HandleAgents(handle).call("graphs", None, True, "me", {})  # doctest: +SKIP
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from qingliang.agents.api import dispatch_call, dispatch_stream
from qingliang.agents.routing.actor import ROUTER_NAMESPACE
from qingliang.knowledge.deployment import HandleKnowledge
from qingliang.platform import metrics
from qingliang.platform.storage.arm_stats import ArmStats
from qingliang.platform.storage.state import StateStore
from qingliang.serving.deployments.handles import HandleEmbedder, ServeBackend, translate
from qingliang.serving.metrics import ServingMetrics

logger = logging.getLogger(__name__)


class AgentsServer:
    """Ray Serve class hosting agent runs (one replica: it owns the run checkpoints).

    Models are reached through the same Serve handles as API requests, knowledge through
    the Knowledge deployment, and the router through the shared detached router actor,
    so every replica of everything learns from the same policy. All logic is
    :class:`~qingliang.agents.service.AgentService`; on start it continues the runs a
    previous replica left running (crash recovery).
    """

    def __init__(self, home: str, embedder: Any = None, knowledge: Any = None) -> None:
        logging.basicConfig(level=logging.INFO)
        self._home = Path(home)
        self._embedder = HandleEmbedder(embedder, "multilingual-e5-small") if embedder else None
        self._knowledge = HandleKnowledge(knowledge) if knowledge is not None else None
        self._service: Any = None
        self._lock = asyncio.Lock()

    async def _agents(self) -> Any:
        async with self._lock:
            if self._service is None:
                self._service = await self._start()
        return self._service

    async def _start(self) -> Any:
        from qingliang.agents.catalog import StoreCatalog
        from qingliang.agents.llm import BackendChat
        from qingliang.agents.routing.actor import RouterClient, router_actor
        from qingliang.agents.service import AgentService

        store = StateStore(self._home / "state.sqlite")
        # Agents' model calls count towards the arms too: a canary serves them as well.
        self._stats = ArmStats.for_home(self._home)
        backend = ServeBackend(store, ServingMetrics.create(), stats=self._stats)
        router = RouterClient(router_actor(str(self._home / "router.sqlite"), ROUTER_NAMESPACE))
        service = AgentService(
            self._home,
            chat=BackendChat(backend),
            catalog=StoreCatalog(store),
            router=router,
            # Async: awaited on this replica's loop, no worker thread in between.
            knowledge=self._knowledge.search if self._knowledge is not None else None,
            embed=self._embed if self._embedder is not None else None,
        )
        recovered = await service.recover()
        if recovered:
            logger.info("continued %d runs from their checkpoints", len(recovered))
        return service

    async def _embed(self, text: str) -> list[float] | None:
        assert self._embedder is not None
        vectors, _ = await self._embedder.embed([text], "query")
        return vectors[0]

    async def call(
        self, method: str, tenant: str | None, all_tenants: bool, actor: str, kwargs: dict
    ) -> Any:
        return await dispatch_call(await self._agents(), method, tenant, all_tenants, actor, kwargs)

    async def stream(
        self, method: str, tenant: str | None, all_tenants: bool, actor: str, kwargs: dict
    ) -> AsyncIterator[dict]:
        async for event in dispatch_stream(
            await self._agents(), method, tenant, all_tenants, actor, kwargs
        ):
            yield event

    async def check_health(self) -> None:
        service = await self._agents()
        # Serve asks every ~10 s: the approvals gauge follows the run store that often.
        await asyncio.to_thread(_count_approvals, service)


def _count_approvals(service: Any) -> None:
    try:
        waiting = service.store.list(all_tenants=True, status="waiting", limit=100_000)
        metrics.approvals_waiting(service.catalog.names(), [run.graph for run in waiting])
    except Exception:  # a metric must never fail the health check
        logger.debug("could not count the waiting approvals", exc_info=True)


class HandleAgents:
    """The gateway's view of the agents server (an :class:`~qingliang.agents.api.AgentsBackend`)."""

    def __init__(self, handle: Any) -> None:
        self._handle = handle

    async def call(
        self, method: str, tenant: str | None, all_tenants: bool, actor: str, kwargs: dict
    ) -> Any:
        try:
            return await self._handle.call.remote(method, tenant, all_tenants, actor, kwargs)
        except Exception as exc:
            raise translate(exc) from None

    async def stream(
        self, method: str, tenant: str | None, all_tenants: bool, actor: str, kwargs: dict
    ) -> AsyncIterator[dict]:
        gen = self._handle.options(stream=True).stream.remote(
            method, tenant, all_tenants, actor, kwargs
        )
        try:
            async for event in gen:
                yield event
        except Exception as exc:
            raise translate(exc) from None

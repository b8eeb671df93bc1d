"""The gateway's helper services (embedder, knowledge, agents) in one Serve replica.

On a small machine each Ray Serve replica is a process with its own Python, Ray core worker
and idle CPU (about 95 MB PSS and 0.005 of a core each, measured on 2 cores); the three
helper services have one replica each anyway (the knowledge one must: it is the single
opener of every embedded shard). :class:`HelperServices` hosts the very same three server
classes in one replica, the default (``GatewayConfig.shared_helpers``); the agents reach the
embedder and the knowledge bases in process, through :class:`LocalHandle`, with the same
calls they make over Serve handles. The gateway reaches each through :class:`Renamed`, a
view of the shared replica's handle that calls ``knowledge_call`` where the knowledge client
calls ``call`` — so the clients (``HandleKnowledge``, ``HandleAgents``, ``HandleEmbedder``) are
the ones a separate deployment gets.

Example:
    >>> kb = HandleKnowledge(Renamed(handle, KNOWLEDGE_METHODS))  # doctest: +SKIP
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Mapping
from typing import Any

from qingliang.agents.deployment import AgentsServer
from qingliang.knowledge.deployment import KnowledgeServer
from qingliang.serving.deployments.embedder import EmbedderServer

logger = logging.getLogger(__name__)

#: The shared replica's deployment name in the gateway application.
HELPERS = "Helpers"
#: What the knowledge client calls → the shared replica's method.
KNOWLEDGE_METHODS = {"call": "knowledge_call"}
#: What the agents client calls → the shared replica's methods.
AGENTS_METHODS = {"call": "agents_call", "stream": "agents_stream"}


class _LocalMethod:
    """``handle.method.remote(...)`` on an object in this process: the coroutine (or async
    generator) of ``method(...)``, awaited or iterated by the caller as a Serve response."""

    def __init__(self, fn: Any) -> None:
        self._fn = fn

    def remote(self, *args: Any, **kwargs: Any) -> Any:
        return self._fn(*args, **kwargs)


class LocalHandle:
    """A Serve-handle-shaped view of a server object in this replica (no Ray hop)."""

    def __init__(self, target: Any) -> None:
        self._target = target

    def options(self, **_: Any) -> LocalHandle:
        return self  # stream=True: an async generator method is iterated as it is

    def __getattr__(self, name: str) -> _LocalMethod:
        return _LocalMethod(getattr(self._target, name))


class Renamed:
    """A view of a Serve handle whose method names are mapped (``call`` → ``knowledge_call``);
    ``options(...)`` keeps the mapping."""

    def __init__(self, handle: Any, names: Mapping[str, str]) -> None:
        self._handle = handle
        self._names = dict(names)

    def options(self, **kwargs: Any) -> Renamed:
        return Renamed(self._handle.options(**kwargs), self._names)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._handle, self._names.get(name, name))


class HelperServices:
    """Ray Serve class: the embedder, knowledge and agents servers in one replica.

    Each part is optional, as in the separate layout; a call to a part that is off is a
    programming error (the gateway only builds clients for the parts that are on).
    """

    def __init__(self, home: str, embeddings: bool, knowledge: bool, agents: bool) -> None:
        logging.basicConfig(level=logging.INFO)
        self._embedder = EmbedderServer() if embeddings else None
        self._knowledge = KnowledgeServer(home) if knowledge else None
        self._agents = (
            AgentsServer(
                home,
                LocalHandle(self._embedder) if self._embedder is not None else None,
                LocalHandle(self._knowledge) if self._knowledge is not None else None,
            )
            if agents
            else None
        )

    # -- the embedder (the gateway's HandleEmbedder calls these names as they are) --------
    async def embed(self, texts: list[str], input_type: str) -> tuple[list[list[float]], int]:
        assert self._embedder is not None
        return await self._embedder.embed(texts, input_type)

    async def model_id(self) -> str:
        assert self._embedder is not None
        return await self._embedder.model_id()

    # -- knowledge ----------------------------------------------------------------------
    async def knowledge_call(
        self, method: str, kb: str | None, tenant: str | None, actor: str, kwargs: dict
    ) -> Any:
        assert self._knowledge is not None
        return await self._knowledge.call(method, kb, tenant, actor, kwargs)

    # -- agents -------------------------------------------------------------------------
    async def agents_call(
        self, method: str, tenant: str | None, all_tenants: bool, actor: str, kwargs: dict
    ) -> Any:
        assert self._agents is not None
        return await self._agents.call(method, tenant, all_tenants, actor, kwargs)

    async def agents_stream(
        self, method: str, tenant: str | None, all_tenants: bool, actor: str, kwargs: dict
    ) -> AsyncIterator[dict]:
        assert self._agents is not None
        async for event in self._agents.stream(method, tenant, all_tenants, actor, kwargs):
            yield event

    async def check_health(self) -> None:
        if self._agents is not None:
            await self._agents.check_health()

    def __del__(self) -> None:
        knowledge = getattr(self, "_knowledge", None)
        if knowledge is not None:
            knowledge.__del__()

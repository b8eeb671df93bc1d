"""The gateway as a Ray Serve ingress: Ray-backed parts for :func:`create_app`.

``ServeBackend`` sends requests to each deployment's Serve application through
``DeploymentHandle``s and translates Ray's errors (back-pressure → 429, a dead
replica → one retry, then 503). ``Gateway`` is the thin Serve class; its app is
built on the replica by ``__serve_build_asgi_app__``.

Example:
    >>> serve.run(build_gateway_app(settings, auth_mode="keys"),      # doctest: +SKIP
    ...           name=GATEWAY_APP, route_prefix="/")
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from qingliang.platform.errors import ApiError, Saturated, Unavailable
from qingliang.platform.gateway.app import ModelEntry, create_app
from qingliang.platform.settings import Settings
from qingliang.platform.storage.arm_stats import ArmStats
from qingliang.platform.storage.conversations import ConversationLog
from qingliang.platform.storage.state import StateStore
from qingliang.serving.deployment import MODEL_DEPLOYMENT
from qingliang.serving.metrics import ServingMetrics

logger = logging.getLogger(__name__)

GATEWAY_APP = "qingliang-gateway"
#: Ray namespace of the platform's own detached actors (the shared router).
ROUTER_NAMESPACE = "qingliang"
MODEL_KIND = "ModelDeployment"


def translate(exc: BaseException) -> ApiError:
    """A Ray / Serve exception as the ApiError a client should see."""
    from ray import exceptions as rex
    from ray.serve.exceptions import BackPressureError, DeploymentUnavailableError

    cause: BaseException = exc
    if isinstance(exc, rex.RayTaskError) and exc.cause is not None:
        cause = exc.cause
    if isinstance(cause, ApiError):
        return cause
    if isinstance(cause, BackPressureError):
        return Saturated(
            "deployment is saturated: too many requests are queued; retry later",
            retry_after=1.0,
        )
    if isinstance(cause, (rex.RayActorError, DeploymentUnavailableError, rex.ActorDiedError)):
        return Unavailable(
            f"deployment is temporarily unavailable ({type(cause).__name__}); retry shortly",
            retry_after=2.0,
        )
    logger.exception("unexpected error from a deployment", exc_info=exc)
    # The exception's text can name host paths and internals: it stays in the log.
    return ApiError(f"internal error ({type(cause).__name__}); the server log has the details")


def _retryable(exc: BaseException) -> bool:
    from ray import exceptions as rex

    return isinstance(exc, (rex.RayActorError, rex.ActorDiedError))


class ServeBackend:
    """Routes gateway requests to model deployments over Serve handles.

    With ``stats``, every request's outcome is counted per arm (adapter or base model)
    for canary analysis (:mod:`qingliang.platform.storage.arm_stats`): answered, or failed with
    a server error. Client errors, saturation and abandoned streams are not counted.
    """

    def __init__(
        self,
        store: StateStore,
        metrics: ServingMetrics,
        ttl_s: float = 0.5,
        stats: ArmStats | None = None,
    ) -> None:
        self._store = store
        self._metrics = metrics
        self._ttl = ttl_s
        self._stats = stats
        self._cached: tuple[float, list[ModelEntry]] = (0.0, [])
        self._handles: dict[str, Any] = {}

    def _observe(
        self, deployment: str, adapter: str | None, started: float, error: ApiError | None
    ) -> None:
        if self._stats is None:
            return
        if error is not None and error.status_code < 500:
            return  # bad input or saturation: nothing about the arm
        try:
            self._stats.observe(
                deployment, adapter, ok=error is None, latency_s=time.monotonic() - started
            )
        except Exception:  # counting must never cost the client its answer
            logger.exception("could not count a request to %s", deployment)

    def models(self) -> list[ModelEntry]:
        at, entries = self._cached
        if time.monotonic() - at < self._ttl:
            return entries
        entries = []
        for row in self._store.list(MODEL_KIND):
            spec = row.body.get("spec", {})
            meta = row.body.get("metadata", {})
            lora = spec.get("lora") or {}
            entries.append(
                ModelEntry(
                    name=row.name,
                    adapters=tuple(sorted(lora.get("adapters") or {})),
                    created=int(row.applied_at),
                    labels=dict(meta.get("labels") or {}),
                    description=str(meta.get("description") or ""),
                    # Canary shares and registry refs are read here, not by the replicas:
                    # changing them reaches every gateway replica within the TTL.
                    traffic={str(k): float(v) for k, v in (lora.get("traffic") or {}).items()},
                    refs={str(k): str(v) for k, v in (lora.get("refs") or {}).items()},
                )
            )
        self._cached = (time.monotonic(), entries)
        return entries

    def _handle(self, deployment: str) -> Any:
        handle = self._handles.get(deployment)
        if handle is None:
            from ray import serve

            handle = serve.get_deployment_handle(MODEL_DEPLOYMENT, app_name=deployment)
            self._handles[deployment] = handle
        return handle

    async def generate(
        self, deployment: str, endpoint: str, body: dict, adapter: str | None
    ) -> dict:
        started = time.monotonic()
        for attempt in (0, 1):
            try:
                answer = await self._handle(deployment).generate.remote(endpoint, body, adapter)
            except Exception as exc:
                if attempt == 0 and _retryable(exc):
                    logger.warning("replica of %s died; retrying once", deployment)
                    continue
                error = translate(exc)
                self._observe(deployment, adapter, started, error)
                raise error from None
            self._observe(deployment, adapter, started, None)
            return answer
        raise AssertionError("unreachable")

    async def stream(
        self, deployment: str, endpoint: str, body: dict, adapter: str | None
    ) -> AsyncIterator[str]:
        started = False
        began = time.monotonic()
        for attempt in (0, 1):
            gen = (
                self._handle(deployment)
                .options(stream=True)
                .generate_stream.remote(endpoint, body, adapter)
            )
            try:
                async for chunk in gen:
                    started = True
                    yield chunk
            except Exception as exc:
                if attempt == 0 and not started and _retryable(exc):
                    logger.warning("replica of %s died before streaming; retrying once", deployment)
                    continue
                error = translate(exc)
                self._observe(deployment, adapter, began, error)
                raise error from None
            # Only here when the stream ended; a client that walked away closes the
            # generator at a yield above (GeneratorExit), which is not counted.
            self._observe(deployment, adapter, began, None)
            return

    async def ready(self) -> dict[str, str]:
        async def one(name: str) -> tuple[str, str]:
            try:
                await asyncio.wait_for(self._handle(name).describe.remote(), timeout=5)
                return name, "ready"
            except Exception as exc:
                return name, f"not ready: {type(exc).__name__}"

        return dict(await asyncio.gather(*(one(m.name) for m in self.models())))

    def rejected(self, deployment: str, adapter: str | None, endpoint: str) -> None:
        self._metrics.rejected(deployment, adapter, endpoint)


class KeyAuth:
    """Bearer keys checked against the hashed key store; off only when configured so."""

    def __init__(self, db: Path, enabled: bool) -> None:
        self.enabled = enabled
        self._db = db
        self._store: Any = None

    @property
    def usage(self) -> Any:
        """The key store, where per-key token use is charged (see :mod:`.quotas`)."""
        if self._store is None:
            from qingliang.platform.storage.keys import KeyStore

            self._store = KeyStore(self._db)
        return self._store

    def verify(self, token: str) -> Any:
        """The key's record when valid (its scopes may name a tenant), else None."""
        return self.usage.verify(token)


class HandleEmbedder:
    """The gateway's view of the embedding deployment."""

    def __init__(self, handle: Any, model_id: str) -> None:
        self._handle = handle
        self.model_id = model_id

    async def embed(self, texts: list[str], input_type: str) -> tuple[list[list[float]], int]:
        try:
            return await self._handle.embed.remote(texts, input_type)
        except Exception as exc:
            raise translate(exc) from None


class EmbedderServer:
    """Ray Serve class hosting the packaged embedding model (multilingual-e5-small)."""

    def __init__(self) -> None:
        from qingliang.serving.embeddings import PackagedEmbedder

        self._embedder = PackagedEmbedder()

    async def embed(self, texts: list[str], input_type: str) -> tuple[list[list[float]], int]:
        vectors = await asyncio.to_thread(self._embedder.embed, texts, input_type=input_type)
        return vectors, self._embedder.count_tokens(texts)

    async def model_id(self) -> str:
        return self._embedder.model_id


class KnowledgeServer:
    """Ray Serve class that owns the knowledge bases' embedded shards (one replica).

    Qdrant Edge allows one opener per shard, so every gateway replica reaches the knowledge
    bases through this one; index building and embedding run here, off the gateway's
    request path. All logic is :class:`~qingliang.knowledge.service.KnowledgeService`.
    """

    def __init__(self, home: str) -> None:
        from qingliang.knowledge.service import KnowledgeService

        self._service = KnowledgeService(Path(home))

    async def call(
        self, method: str, kb: str | None, tenant: str | None, actor: str, kwargs: dict
    ) -> Any:
        from qingliang.platform.gateway.routes.knowledge import dispatch

        return await asyncio.to_thread(dispatch, self._service, method, kb, tenant, actor, kwargs)

    def __del__(self) -> None:
        service = getattr(self, "_service", None)
        if service is not None:
            service.close()


class HandleKnowledge:
    """The gateway's view of the knowledge server."""

    def __init__(self, handle: Any) -> None:
        self._handle = handle

    async def call(
        self, method: str, kb: str | None, tenant: str | None, actor: str, kwargs: dict
    ) -> Any:
        try:
            return await self._handle.call.remote(method, kb, tenant, actor, kwargs)
        except Exception as exc:
            raise translate(exc) from None


class SyncKnowledge:
    """Knowledge search as the agent tools call it: a plain function, run in a worker
    thread, that hands the search to the knowledge server on the replica's event loop."""

    def __init__(self, knowledge: HandleKnowledge, loop: asyncio.AbstractEventLoop) -> None:
        self._knowledge = knowledge
        self._loop = loop

    def __call__(
        self, kb: str, query: str, *, tenant: str | None, limit: int = 4, mode: str = "hybrid"
    ) -> list[dict]:
        coro = self._knowledge.call(
            "search", kb, tenant, "agents", {"query": query, "limit": limit, "mode": mode}
        )
        result = asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout=120)
        return list(result["citations"])


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
        loop = asyncio.get_running_loop()
        knowledge = SyncKnowledge(self._knowledge, loop) if self._knowledge else None
        service = AgentService(
            self._home,
            chat=BackendChat(backend),
            catalog=StoreCatalog(store),
            router=router,
            knowledge=knowledge,
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
        from qingliang.platform.gateway.routes.agents import dispatch_call

        return await dispatch_call(await self._agents(), method, tenant, all_tenants, actor, kwargs)

    async def stream(
        self, method: str, tenant: str | None, all_tenants: bool, actor: str, kwargs: dict
    ) -> AsyncIterator[dict]:
        from qingliang.platform.gateway.routes.agents import dispatch_stream

        async for event in dispatch_stream(
            await self._agents(), method, tenant, all_tenants, actor, kwargs
        ):
            yield event

    async def check_health(self) -> None:
        await self._agents()


class HandleAgents:
    """The gateway's view of the agents server."""

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


class Gateway:
    """Ray Serve ingress class (decorated in :func:`build_gateway_app`)."""

    def __init__(
        self,
        home: str,
        auth_enabled: bool,
        embedder: Any,
        embed_model: str,
        knowledge: Any = None,
        agents: Any = None,
        conversation_log: bool = False,
    ) -> None:
        logging.basicConfig(level=logging.INFO)
        home_path = Path(home)
        self._conversations: ConversationLog | None = None
        if conversation_log:
            # Opened (and its writer thread started) on the first answer, not here.
            self._conversations = ConversationLog.for_home(home_path)
            logger.info("recording answered chat requests in %s", self._conversations.path)
        metrics = ServingMetrics.create()
        self._stats = ArmStats.for_home(home_path)
        self._backend = ServeBackend(
            StateStore(home_path / "state.sqlite"), metrics, stats=self._stats
        )
        self._embedder = HandleEmbedder(embedder, embed_model) if embedder is not None else None
        self._auth = KeyAuth(home_path / "state.sqlite", auth_enabled)
        self._knowledge = HandleKnowledge(knowledge) if knowledge is not None else None
        self._agents = HandleAgents(agents) if agents is not None else None
        from qingliang.platform.lifecycle.pipelines.executor import RayExecutor
        from qingliang.platform.lifecycle.pipelines.service import PipelineService

        # Inside a replica Ray is initialised: the steps become tasks of this cluster.
        self._pipelines = PipelineService(home_path, RayExecutor(Settings(home=home_path)))

    def __serve_build_asgi_app__(self) -> Any:
        return create_app(
            self._backend,
            self._embedder,
            self._auth,
            self._knowledge,
            agents=self._agents,
            pipelines=self._pipelines,
            conversations=self._conversations,
        )

    def __del__(self) -> None:
        # Serve drops the replica on shutdown: write the conversations still queued.
        log = getattr(self, "_conversations", None)
        if log is not None:
            log.close()
        stats = getattr(self, "_stats", None)
        if stats is not None:
            stats.close()


def build_gateway_app(
    home: Path,
    *,
    auth_enabled: bool,
    replicas: int = 1,
    embeddings: bool = True,
    knowledge: bool = True,
    agents: bool = True,
    max_ongoing_requests: int = 1000,
    conversation_log: bool = False,
) -> Any:
    """The gateway Serve application (gateway + embedding + knowledge + agents).

    ``conversation_log`` records answered chat requests in ``home/conversations.sqlite``
    (see :mod:`qingliang.platform.storage.conversations`).
    """
    from ray import serve

    embedder = None
    if embeddings:
        embedder_cls: Any = serve.deployment(EmbedderServer)
        embedder = embedder_cls.options(
            name="Embedder", ray_actor_options={"num_cpus": 0.25}, max_ongoing_requests=64
        ).bind()
    kb_server = None
    if knowledge:
        kb_cls: Any = serve.deployment(KnowledgeServer)
        # Exactly one replica: it is the single opener of every embedded shard.
        kb_server = kb_cls.options(
            name="Knowledge",
            num_replicas=1,
            ray_actor_options={"num_cpus": 0.25},
            max_ongoing_requests=32,
        ).bind(str(home))
    agents_server = None
    if agents:
        agents_cls: Any = serve.deployment(AgentsServer)
        # One replica: it owns the SQLite checkpoints and continues orphaned runs on start.
        agents_server = agents_cls.options(
            name="Agents",
            num_replicas=1,
            ray_actor_options={"num_cpus": 0.25},
            max_ongoing_requests=256,
        ).bind(str(home), embedder, kb_server)
    gateway_cls: Any = serve.deployment(serve.ingress()(Gateway))
    gateway = gateway_cls.options(
        name="Gateway",
        num_replicas=replicas,
        ray_actor_options={"num_cpus": 0.25},
        max_ongoing_requests=max_ongoing_requests,
    )
    return gateway.bind(
        str(home),
        auth_enabled,
        embedder,
        "multilingual-e5-small",
        kb_server,
        agents_server,
        conversation_log=conversation_log,
    )


def app_builder(args: dict) -> Any:
    """Serve config entry point: ``qingliang.platform.gateway.ingress:app_builder``."""
    return build_gateway_app(
        Path(args["home"]),
        auth_enabled=bool(args.get("auth_enabled", True)),
        replicas=int(args.get("replicas", 1)),
        embeddings=bool(args.get("embeddings", True)),
        knowledge=bool(args.get("knowledge", True)),
        agents=bool(args.get("agents", True)),
        conversation_log=bool(args.get("conversation_log", False)),
    )

"""The gateway as a Ray Serve ingress: Ray-backed parts for :func:`create_app`.

The model requests go through serving's
:class:`~qingliang.serving.deployments.handles.ServeBackend` (Serve handles; Ray's errors
translated there). ``Gateway`` is the thin Serve class; its app is built on the replica
by ``__serve_build_asgi_app__``.

The gateway application's settings arrive as the Serve application's ``args`` and are
read as one typed :class:`~qingliang.platform.gateway_config.GatewayConfig` (:func:`app_builder`):
an unknown or mistyped field stops the deploy with an error naming it.

Example:
    >>> config = GatewayConfig(home="/tmp/ql", auth_enabled=True)
    >>> serve.run(build_gateway_app(config), name=GATEWAY_APP, route_prefix="/")  # doctest: +SKIP
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from qingliang.agents.deployment import AgentsServer, HandleAgents
from qingliang.knowledge.deployment import HandleKnowledge, KnowledgeServer
from qingliang.platform.gateway.app import create_app
from qingliang.platform.gateway.auth.keys import KeyAuth
from qingliang.platform.gateway.operator.demo_jobs import DemoJobs
from qingliang.platform.gateway.operator.operations import Operations
from qingliang.platform.gateway.services import (
    AGENTS_METHODS,
    HELPERS,
    KNOWLEDGE_METHODS,
    HelperServices,
    Renamed,
)
from qingliang.platform.gateway_config import GatewayConfig
from qingliang.platform.settings import Settings
from qingliang.platform.storage.arm_stats import ArmStats
from qingliang.platform.storage.conversations import ConversationLog
from qingliang.platform.storage.state import StateStore
from qingliang.serving.deployments.embedder import EmbedderServer
from qingliang.serving.deployments.handles import HandleEmbedder, ServeBackend
from qingliang.serving.metrics import ServingMetrics

logger = logging.getLogger(__name__)

GATEWAY_APP = "qingliang-gateway"


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
        shared_helpers: bool = False,
    ) -> None:
        logging.basicConfig(level=logging.INFO)
        if shared_helpers:  # one replica hosts all three: its methods for each client
            knowledge = Renamed(knowledge, KNOWLEDGE_METHODS) if knowledge is not None else None
            agents = Renamed(agents, AGENTS_METHODS) if agents is not None else None
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
        self._ops = Operations(home_path)
        self._demos = DemoJobs(home_path)

    def __serve_build_asgi_app__(self) -> Any:
        return create_app(
            self._backend,
            self._embedder,
            self._auth,
            self._knowledge,
            agents=self._agents,
            pipelines=self._pipelines,
            conversations=self._conversations,
            ops=self._ops,
            demos=self._demos,
        )

    def __del__(self) -> None:
        # Serve drops the replica on shutdown: write the conversations still queued.
        log = getattr(self, "_conversations", None)
        if log is not None:
            log.close()
        stats = getattr(self, "_stats", None)
        if stats is not None:
            stats.close()


def build_gateway_app(config: GatewayConfig) -> Any:
    """The gateway Serve application (gateway + embedding + knowledge + agents).

    ``config.conversation_log`` records answered chat requests in
    ``home/conversations.sqlite`` (see :mod:`qingliang.platform.storage.conversations`).
    """
    from ray import serve

    home = Path(config.home)
    if config.shared_helpers:
        embedder, kb_server, agents_server = _shared_helpers(config)
    else:
        embedder, kb_server, agents_server = _separate_helpers(config)
    gateway_cls: Any = serve.deployment(serve.ingress()(Gateway))
    gateway = gateway_cls.options(
        name="Gateway",
        num_replicas=config.replicas,
        ray_actor_options={"num_cpus": 0.25},
        max_ongoing_requests=config.max_ongoing_requests,
    )
    return gateway.bind(
        str(home),
        config.auth_enabled,
        embedder,
        "multilingual-e5-small",
        kb_server,
        agents_server,
        conversation_log=config.conversation_log,
        shared_helpers=config.shared_helpers,
    )


def _separate_helpers(config: GatewayConfig) -> tuple[Any, Any, Any]:
    """One deployment per helper service (to scale or place them apart)."""
    from ray import serve

    home = Path(config.home)
    embedder = None
    if config.embeddings:
        embedder_cls: Any = serve.deployment(EmbedderServer)
        embedder = embedder_cls.options(
            name="Embedder", ray_actor_options={"num_cpus": 0.25}, max_ongoing_requests=64
        ).bind()
    kb_server = None
    if config.knowledge:
        kb_cls: Any = serve.deployment(KnowledgeServer)
        # Exactly one replica: it is the single opener of every embedded shard.
        kb_server = kb_cls.options(
            name="Knowledge",
            num_replicas=1,
            ray_actor_options={"num_cpus": 0.25},
            max_ongoing_requests=32,
        ).bind(str(home))
    agents_server = None
    if config.agents:
        agents_cls: Any = serve.deployment(AgentsServer)
        # One replica: it owns the SQLite checkpoints and continues orphaned runs on start.
        agents_server = agents_cls.options(
            name="Agents",
            num_replicas=1,
            ray_actor_options={"num_cpus": 0.25},
            max_ongoing_requests=256,
        ).bind(str(home), embedder, kb_server)
    return embedder, kb_server, agents_server


def _shared_helpers(config: GatewayConfig) -> tuple[Any, Any, Any]:
    """The helper services in one replica (:mod:`.services`), each the gateway's client
    gets a view of; ``(None, None, None)`` when every one is off."""
    from ray import serve

    if not (config.embeddings or config.knowledge or config.agents):
        return None, None, None
    cls: Any = serve.deployment(HelperServices)
    # One replica: knowledge must have one (the single opener of every embedded shard)
    # and agents continue orphaned runs on start.
    helpers = cls.options(
        name=HELPERS,
        num_replicas=1,
        ray_actor_options={"num_cpus": 0.5},
        max_ongoing_requests=352,  # the three deployments' limits together
    ).bind(str(config.home), config.embeddings, config.knowledge, config.agents)
    return (
        helpers if config.embeddings else None,
        helpers if config.knowledge else None,
        helpers if config.agents else None,
    )


def app_builder(args: dict[str, Any]) -> Any:
    """Serve config entry point: ``qingliang.platform.gateway.ingress:app_builder``.

    Raises:
        ManifestError: ``args`` is not a valid :class:`GatewayConfig` (the message names
            each unknown, missing or mistyped field).
    """
    return build_gateway_app(GatewayConfig.from_args(args))

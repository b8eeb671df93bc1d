"""What a compiled graph's nodes share: the run state, the applied graph, the services,
the run's settings and its event sink.

:mod:`qingliang.agents.runtime` builds the graph and :mod:`qingliang.agents._agent_node`
runs an agent inside a node; both read these, so neither imports the other's module.
"""

from __future__ import annotations

import operator
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Protocol, TypedDict

from qingliang.agents.llm import ChatModel
from qingliang.agents.manifest import AgentGraph
from qingliang.agents.runs import RunStore
from qingliang.agents.tools.base import KnowledgeSearch
from qingliang.platform.errors import QingliangError


class RunStopped(QingliangError):
    """A run stopped cleanly at a limit (token budget, nested depth); ``reason`` says which."""


def _merge(a: dict | None, b: dict | None) -> dict:
    return {**(a or {}), **(b or {})}


def _latest(a: Any, b: Any) -> Any:
    return b


class RunState(TypedDict, total=False):
    """What flows between nodes (checkpointed after every step)."""

    input: str
    domain: str | None
    modality: str
    attachments: list[str]
    answers: Annotated[dict, _merge]
    last: Annotated[str, _latest]
    citations: Annotated[list, operator.add]
    routes: Annotated[list, operator.add]
    tools_called: Annotated[list, operator.add]
    forms: Annotated[dict, _merge]
    results: Annotated[dict, _merge]
    tokens: Annotated[int, operator.add]
    approvals: Annotated[list, operator.add]
    outcome: Annotated[str, _latest]


@dataclass(frozen=True)
class GraphDef:
    """An applied AgentGraph and the folder its relative paths resolve against."""

    manifest: AgentGraph
    base_dir: Path
    version: str = ""

    @property
    def name(self) -> str:
        return self.manifest.name


class Router(Protocol):
    """The router as the runtime sees it (a local service or the shared Ray actor)."""

    async def decide(
        self, router: str, features: Any, *, run_id: str, tenant: str | None
    ) -> Any: ...

    async def untaught(self, router: str, keys: list[str]) -> list[str]: ...

    async def teach(self, router: str, examples: list[tuple[str, str, Any]]) -> int: ...


@dataclass
class Services:
    chat: ChatModel
    store: RunStore
    router: Router | None = None
    knowledge: KnowledgeSearch | None = None
    #: Query embedding for the router's features (None: a hashing embedding is used).
    embed: Callable[[str], Awaitable[list[float] | None]] | None = None
    #: Other graphs by name (nested graphs, ``call_agent`` tools).
    graphs: Callable[[str], GraphDef] | None = None
    #: Compiled graphs by name, filled by the compiler for nested use.
    compiled: dict[str, Any] = field(default_factory=dict)


def run_config(config: dict) -> dict:
    """The run's own settings (``configurable.run``) inside a node."""
    run = (config.get("configurable") or {}).get("run")
    if not run:
        raise RuntimeError("the run settings are missing from the graph config")
    return run


def emit(config: dict, event: dict) -> None:
    """Send ``event`` to the run's event sink (none: nothing listens)."""
    # A direct call, not LangGraph's custom stream, which hops every event through
    # call_soon_threadsafe and keeps a waiter task per run: about 7% of the CPU time of a
    # 3-node run (bench/_orchestration.py).
    sink = run_config(config).get("events")
    if sink is not None:
        sink(event)

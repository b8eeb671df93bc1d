"""An ``AgentGraph`` manifest compiled to a LangGraph ``StateGraph``.

:class:`GraphCompiler` turns a validated manifest into a compiled graph whose nodes are
plain async functions over :class:`~.state.RunState`; the checkpointer is injected
(:mod:`qingliang.agents.checkpoint`). What the nodes use comes in
:class:`~.state.Services`: the chat model (the serving layer), the router, knowledge
search, the run store (journal and events) and the catalog of other graphs (nested graphs
and ``call_agent`` tools).

Every non-repeatable step of a node (model call, tool call, routing decision) goes
through :class:`~qingliang.agents._journal.NodeJournal`, so LangGraph's re-execution of a
node after an interrupt or a crash replays those steps instead of repeating them.

Events reach the caller through the run's event sink (``configurable.run["events"]``, see
:func:`~.state.emit`): ``node`` (start), ``route`` (arm and propensity), ``token`` (deltas),
``tool``, ``citations``. Nested graphs get the same settings, so their events join their
parent run's.

Example:
    >>> compiled = GraphCompiler(services).compile(graph_def, checkpointer)  # doctest: +SKIP
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from langchain_core.runnables import RunnableConfig

from qingliang.agents._agent_node import AgentStep, run_agent
from qingliang.agents._journal import NodeJournal, node_namespace
from qingliang.agents.manifest import END, AgentGraph, Node, RouterSettings
from qingliang.agents.state import (
    GraphDef,
    RunState,
    RunStopped,
    Services,
    emit,
    run_config,
)
from qingliang.agents.tools.base import Tool, ToolContext, ToolError

log = logging.getLogger(__name__)

#: Approval decisions and the reward part each gives the router.
APPROVAL_VALUE = {"approve": 1.0, "edit": 0.5, "reject": -1.0}


def router_key(graph: str, node: str) -> str:
    return f"{graph}/{node}"


def router_settings(graph: AgentGraph, node: Node) -> RouterSettings:
    return node.router or graph.spec.router


def router_config(graph: AgentGraph, node: Node) -> Any:
    """The :class:`~qingliang.agents.routing.router.RouterConfig` of a router node."""
    from qingliang.agents.routing.rewards import RewardWeights
    from qingliang.agents.routing.router import RouterConfig

    s = router_settings(graph, node)
    r = s.reward
    return RouterConfig(
        arms=tuple(node.routes or node.models),
        algorithm=s.algorithm,
        alpha=s.alpha,
        floor=s.floor,
        frozen=s.frozen,
        prior=dict(s.prior),
        prior_weight=s.prior_weight,
        seed=s.seed,
        domains=tuple(s.domains),
        embedding_dims=s.embedding_dims,
        reward=RewardWeights(
            feedback=r.feedback,
            approval=r.approval,
            success=r.success,
            latency=r.latency,
            cost=r.cost,
        ),
        feedback_window_s=s.feedback_window_s,
    )


async def request_features(
    services: Services, text: str, *, domain: str | None, modality: str, tenant: str | None
) -> Any:
    """What the router sees of a request (a live one, or a labelled example it is taught)."""
    from qingliang.agents.routing.features import RequestFeatures, hash_embedding

    # Without an embedding model (tests, a platform without the embedder) the router
    # still sees the text, through a character-trigram hashing embedding.
    embedding = await services.embed(text) if services.embed is not None else None
    if embedding is None:
        embedding = hash_embedding(text)
    return RequestFeatures(text, embedding, domain, modality, tenant)


async def teach_router(services: Services, gdef: GraphDef, node: Node) -> int:
    """Teach a router node the labelled examples of its ``examples`` file that its router
    was not taught yet (see :mod:`qingliang.agents.routing.teach`); returns how many."""
    from qingliang.agents.routing.teach import read_examples
    from qingliang.agents.toolbox import database_path

    source = router_settings(gdef.manifest, node).examples
    if source is None or services.router is None:
        return 0
    key = router_key(gdef.name, node.name)
    arms = list(node.routes or node.models)
    domain = gdef.manifest.metadata.labels.get("domain")
    path = database_path(source, gdef.base_dir)
    try:
        examples = read_examples(path, arms, domain=domain, shown=source)
    except ValueError as exc:
        raise RunStopped(f"router {key}: examples: {exc}") from None
    todo = set(await services.router.untaught(key, [e.key() for e in examples]))
    batch = []
    for e in examples:
        if e.key() in todo:
            f = await request_features(
                services, e.text, domain=e.domain, modality=e.modality, tenant=None
            )
            batch.append((e.key(), e.route, f))
    return int(await services.router.teach(key, batch)) if batch else 0


def approval_triggered(node: Node, state: RunState) -> bool:
    """Whether ``node``'s ``when`` condition holds for ``state``."""
    import re

    w = node.when
    if w.always:
        return True
    called = {t["tool"] for t in state.get("tools_called") or []}
    if set(w.tools) & called:
        return True
    arms = {r["arm"] for r in state.get("routes") or []}
    if set(w.routes) & arms:
        return True
    if w.pattern and re.search(w.pattern, state.get("last") or ""):
        return True
    if w.input_pattern and re.search(w.input_pattern, state.get("input") or ""):
        return True
    return w.tokens_over is not None and (state.get("tokens") or 0) > w.tokens_over


class GraphCompiler:
    """Builds LangGraph graphs from AgentGraph manifests."""

    def __init__(self, services: Services, tools_for: Callable[[GraphDef], dict[str, Tool]]):
        self.s = services
        self._tools_for = tools_for

    def compile(self, gdef: GraphDef, checkpointer: Any) -> Any:
        """The compiled graph of ``gdef`` (``checkpointer=True`` for a nested graph)."""
        from langgraph.graph import END as LG_END
        from langgraph.graph import START, StateGraph

        spec = gdef.manifest.spec
        tools = self._tools_for(gdef)
        builder: Any = StateGraph(RunState)
        branch_of = {b: n.name for n in spec.nodes if n.type == "parallel" for b in n.branches}

        def target(name: str | None) -> str:
            return LG_END if name in (None, END) else str(name)

        for node in spec.nodes:
            fn = self._node_fn(gdef, node, tools)
            if node.type == "router" and node.routes:
                builder.add_node(node.name, fn, destinations=tuple(node.routes))
            elif node.type == "approval":
                dests = {target(node.next), target(node.on_reject)}
                if node.on_skip is not None:
                    dests.add(target(node.on_skip))
                builder.add_node(node.name, fn, destinations=tuple(dests))
            else:
                builder.add_node(node.name, fn)
        builder.add_edge(START, spec.entry_node)
        for node in spec.nodes:
            if node.type == "parallel":
                for b in node.branches:
                    builder.add_edge(node.name, b)
                builder.add_edge(list(node.branches), target(node.next))
            elif (node.type in ("agent", "tool", "graph") and node.name not in branch_of) or (
                node.type == "router" and node.models
            ):
                builder.add_edge(node.name, target(node.next))
        return builder.compile(checkpointer=checkpointer, name=gdef.name)

    # nodes --------------------------------------------------------------------------------

    def _node_fn(self, gdef: GraphDef, node: Node, tools: dict[str, Tool]) -> Any:
        kind = node.type
        if kind == "agent":
            return self._agent_node(gdef, node, tools)
        if kind == "router":
            return self._router_node(gdef, node, tools)
        if kind == "approval":
            return self._approval_node(node)
        if kind == "tool":
            return self._tool_node(node, tools)
        if kind == "graph":
            return self._graph_node(node)

        async def passthrough(state: RunState, config: RunnableConfig) -> dict:
            emit(config, {"type": "node", "node": node.name})
            return {}

        return passthrough

    def _journal(self, config: dict) -> NodeJournal:
        return NodeJournal(self.s.store, run_config(config)["run_id"], node_namespace(config))

    def _agent_node(self, gdef: GraphDef, node: Node, tools: dict[str, Tool]) -> Any:
        agent = gdef.manifest.spec.agent(str(node.agent))

        async def agent_node(state: RunState, config: RunnableConfig) -> dict:
            emit(config, {"type": "node", "node": node.name, "agent": agent.name})
            step = AgentStep(self, gdef, node.name, agent, agent.model, tools)
            return await run_agent(step, state, config, self._journal(config))

        return agent_node

    def _router_node(self, gdef: GraphDef, node: Node, tools: dict[str, Tool]) -> Any:
        from langgraph.types import Command

        key = router_key(gdef.name, node.name)

        async def router_node(state: RunState, config: RunnableConfig) -> Any:
            emit(config, {"type": "node", "node": node.name})
            journal = self._journal(config)
            run = run_config(config)

            async def decide(_key: str) -> dict:
                if self.s.router is None:
                    raise RunStopped(f"node {node.name!r}: no router is configured")
                features = await self._features(state, run)
                d = await self.s.router.decide(
                    key, features, run_id=run["run_id"], tenant=run.get("tenant")
                )
                return {
                    "node": node.name,
                    "router": key,
                    "arm": d.arm,
                    "propensity": d.propensity,
                    "decision_id": d.decision_id,
                    "scores": dict(d.scores),
                }

            route, _ = await journal.step(decide)
            emit(config, {"type": "route", **route})
            if node.routes:
                return Command(goto=route["arm"], update={"routes": [route]})
            agent = gdef.manifest.spec.agent(str(node.agent))
            step = AgentStep(self, gdef, node.name, agent, route["arm"], tools)
            update = await run_agent(step, state, config, journal)
            update["routes"] = [route]
            return update

        return router_node

    async def _features(self, state: RunState, run: dict) -> Any:
        return await request_features(
            self.s,
            state.get("input") or "",
            domain=state.get("domain"),
            modality=state.get("modality") or "text",
            tenant=run.get("tenant"),
        )

    def _approval_node(self, node: Node) -> Any:
        from langgraph.graph import END as LG_END
        from langgraph.types import Command, interrupt

        after = LG_END if node.next in (None, END) else node.next
        rejected = LG_END if node.on_reject in (None, END) else node.on_reject
        skipped = after if node.on_skip is None else LG_END if node.on_skip == END else node.on_skip

        async def approval_node(state: RunState, config: RunnableConfig) -> Any:
            emit(config, {"type": "node", "node": node.name})
            if not approval_triggered(node, state):
                return Command(goto=skipped)
            decision = interrupt(
                {
                    "node": node.name,
                    "prompt": node.prompt,
                    "answer": state.get("last") or "",
                    "forms": state.get("forms") or {},
                    "allow_self_approval": node.allow_self_approval,
                }
            )
            action = decision["action"]
            record = {"node": node.name, **decision}
            update: dict[str, Any] = {"approvals": [record]}
            if action == "edit":
                if decision.get("answer") is not None:
                    update["last"] = decision["answer"]
                    update["answers"] = {node.name: decision["answer"]}
                if decision.get("forms"):
                    update["forms"] = decision["forms"]
            if action == "reject":
                update["outcome"] = "rejected"
                return Command(goto=rejected, update=update)
            return Command(goto=after, update=update)

        return approval_node

    def _tool_node(self, node: Node, tools: dict[str, Tool]) -> Any:
        tool = tools[str(node.tool)]

        async def tool_node(state: RunState, config: RunnableConfig) -> dict:
            emit(config, {"type": "node", "node": node.name, "tool": tool.name})
            out = await self.call_tool(
                tool, dict(node.arguments), state, config, self._journal(config), node.name
            )
            if out.get("error"):
                raise RunStopped(f"node {node.name!r}: tool {tool.name!r} failed: {out['error']}")
            cited = out.get("citations") or []
            if cited:  # a search node's hits are the run's citations, as an agent's are
                emit(config, {"type": "citations", "node": node.name, "citations": cited})
            return {
                "results": {node.name: out.get("data")},
                "tools_called": [{"node": node.name, "tool": tool.name}],
                "citations": cited,
            }

        return tool_node

    def _graph_node(self, node: Node) -> Any:
        async def graph_node(state: RunState, config: RunnableConfig) -> dict:
            emit(config, {"type": "node", "node": node.name, "graph": node.graph})
            out = await self.invoke_nested(str(node.graph), state.get("last") or "", state, config)
            return {
                "answers": {node.name: out.get("last") or ""},
                "last": out.get("last") or "",
                "citations": out.get("citations") or [],
                "tokens": out.get("tokens") or 0,
                "routes": out.get("routes") or [],
                "tools_called": out.get("tools_called") or [],
            }

        return graph_node

    # shared by nodes and the agent loop ---------------------------------------------------

    async def invoke_nested(self, name: str, text: str, state: RunState, config: dict) -> dict:
        """Run graph ``name`` inside the current node, as a LangGraph subgraph (its
        checkpoints live under this node's namespace; its interrupts pause the parent)."""
        run = run_config(config)
        depth = int(run.get("depth", 0)) + 1
        if depth > 4:
            raise RunStopped(f"nested graphs deeper than 4 (calling {name!r})")
        sub = self.compiled_nested(name)
        # A request without a domain label takes the nested graph's (as a request made to
        # that graph directly does): a front desk's routes reach gov-desk as `gov` requests.
        label = (
            self.s.graphs(name).manifest.metadata.labels.get("domain") if self.s.graphs else None
        )
        sub_input = {
            "input": text or state.get("input") or "",
            "domain": state.get("domain") or label,
            "modality": state.get("modality") or "text",
            "attachments": state.get("attachments") or [],
            "forms": dict(state.get("forms") or {}),
        }
        cfg = {**config, "configurable": {**config["configurable"], "run": {**run, "depth": depth}}}
        return dict(await sub.ainvoke(sub_input, cfg))

    def compiled_nested(self, name: str) -> Any:
        if self.s.graphs is None:
            raise RunStopped(f"graph {name!r} is not available (no graph catalog)")
        gdef = self.s.graphs(name)
        key = f"{name}@{gdef.version}"
        if key not in self.s.compiled:
            self.s.compiled[key] = self.compile(gdef, checkpointer=True)
        return self.s.compiled[key]

    async def call_tool(
        self,
        tool: Tool,
        args: dict,
        state: RunState,
        config: dict,
        journal: NodeJournal,
        node: str,
    ) -> dict:
        """Run ``tool`` once per journal key; ``{"content", "data", "citations"}`` or
        ``{"error"}`` (a :class:`ToolError`, shown to the model)."""
        import asyncio

        run = run_config(config)

        async def call(key: str) -> dict:
            ctx = ToolContext(
                run_id=run["run_id"],
                tenant=run.get("tenant"),
                attachments={
                    n: Path(run["attachments_dir"]) / n for n in state.get("attachments") or []
                },
                idempotency_key=f"{run['run_id']}|{key}",
                forms=dict(state.get("forms") or {}),
                knowledge=self.s.knowledge,
            )
            try:
                if getattr(tool, "is_async", False):
                    result = await tool.run(args, ctx)  # type: ignore[misc]
                else:
                    result = await asyncio.to_thread(tool.run, args, ctx)
            except ToolError as exc:
                return {"error": str(exc)}
            return {"content": result.content, "data": result.data, "citations": result.citations}

        out, replayed = await journal.step(call)
        emit(
            config,
            {
                "type": "tool",
                "node": node,
                "tool": tool.name,
                "arguments": args,
                "error": out.get("error"),
                "result": (out.get("content") or "")[:2000],
                "replayed": replayed,
            },
        )
        return dict(out)

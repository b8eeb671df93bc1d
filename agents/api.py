"""The agents area's public API: what the gateway calls, and the request bodies it checks.

- the request bodies of ``/v1/agents`` and ``/v1/feedback`` (:class:`AgentRunBody`,
  :class:`ResumeBody`, :class:`FeedbackBody`), documented in the gateway's
  ``/openapi.json`` (:data:`BODIES`);
- :func:`dispatch_call` and :func:`dispatch_stream`: the one place where a method name
  (:data:`METHODS`, :data:`STREAM_METHODS`) becomes an
  :class:`~qingliang.agents.service.AgentService` call;
- :class:`AgentsBackend`, what the gateway's routes talk to: in production
  :class:`~qingliang.agents.deployment.HandleAgents` (a Ray Serve handle to the ``Agents``
  deployment), in one process :class:`LocalAgents` over a service.

Example:
    >>> FeedbackBody.model_validate({"run_id": "run_1", "score": 1}).score
    1.0
    >>> sorted(STREAM_METHODS)
    ['resume', 'start']
"""

from __future__ import annotations

import logging
import math
from collections.abc import AsyncIterator
from typing import Any, Protocol

from pydantic import BaseModel, Field

from qingliang.agents.manifest import successors
from qingliang.agents.runs import STATUSES
from qingliang.platform.bodies import Body, docs_only
from qingliang.platform.errors import BadRequest

logger = logging.getLogger(__name__)


class Attachment(Body):
    """A file sent with an agent run."""

    name: str = Field(description="A plain file name (no folders).")
    data: str = Field(description="The file's bytes, base64-encoded.")


class AgentRunBody(Body):
    """``POST /v1/agents/{name}/runs``: start a run of an applied graph."""

    input: str = Field(description="the request text")
    domain: str | None = Field(
        None, description="The domain the router sees; by default the graph's label."
    )
    attachments: list[Attachment] | None = Field(
        None, description="Files for the graph's tools (counted and sized by the gateway)."
    )
    stream: bool = Field(
        True, description="Server-sent events (default), or the finished run as one object."
    )


class ResumeBody(Body):
    """``POST /v1/agents/runs/{run_id}/resume``: answer a run waiting for approval."""

    action: str = Field(
        description="approve, edit or reject",
        json_schema_extra=docs_only(enum=["approve", "edit", "reject"]),
    )
    answer: str | None = Field(None, description="With edit: the answer to send instead.")
    forms: dict[str, dict[str, Any]] | None = Field(
        None, description="With edit: values of the graph's form tools, by tool name."
    )
    comment: str | None = Field(None, description="Kept with the decision.")
    stream: bool = Field(True, description="Server-sent events, or the run as one object.")


class FeedbackBody(Body):
    """``POST /v1/feedback``: a reward for a finished run (the router learns from it)."""

    run_id: str = Field(description="the run the feedback is about")
    score: float = Field(
        description="a number from -1 to 1", json_schema_extra=docs_only(minimum=-1, maximum=1)
    )
    comment: str | None = Field(None, description="Kept with the score.")


#: The agents' bodies, for the gateway's OpenAPI document.
BODIES: tuple[type[BaseModel], ...] = (AgentRunBody, ResumeBody, FeedbackBody)


#: Methods :func:`dispatch_call` answers, with the keyword arguments each takes.
METHODS: dict[str, frozenset[str]] = {
    "graphs": frozenset(),
    "get": frozenset({"run_id"}),
    "runs": frozenset({"status", "graph", "limit"}),
    "approvals": frozenset(),
    "events": frozenset({"run_id"}),
    "feedback": frozenset(FeedbackBody.model_fields),
    "routers": frozenset({"graph", "window_s", "buckets", "ope"}),
}
#: Methods :func:`dispatch_stream` answers (their events are streamed).
STREAM_METHODS: dict[str, frozenset[str]] = {
    "start": frozenset({"graph", "body"}),
    "resume": frozenset({"run_id", "body"}),
}
RUNS_QUERY = METHODS["runs"]
ROUTERS_QUERY = METHODS["routers"] - {"graph"}
MAX_LIST = 500


class AgentsBackend(Protocol):
    """Where agent requests go: the ``Agents`` Serve deployment, or an in-process service."""

    async def call(
        self, method: str, tenant: str | None, all_tenants: bool, actor: str, kwargs: dict
    ) -> Any:
        """A JSON-ready answer to one of :data:`METHODS`."""
        ...

    def stream(
        self, method: str, tenant: str | None, all_tenants: bool, actor: str, kwargs: dict
    ) -> AsyncIterator[dict]:
        """The events of ``start`` or ``resume``; the first is the ``run`` event."""
        ...


def _check_call(method: str, kwargs: dict, table: dict[str, frozenset[str]]) -> None:
    if method not in table:
        raise BadRequest(f"unknown agents method {method!r}; known: {', '.join(sorted(table))}")
    extra = sorted(set(kwargs) - table[method])
    if extra:
        raise BadRequest(f"{method}: unexpected argument {extra[0]!r}", param=extra[0])


def _run_id(kwargs: dict) -> str:
    run_id = kwargs.get("run_id")
    if not isinstance(run_id, str) or not run_id.strip():
        raise BadRequest("`run_id` is required: the id of a run (run_...)", param="run_id")
    return run_id


def _graph_info(gdef: Any) -> dict[str, Any]:
    manifest = gdef.manifest
    spec = manifest.spec
    routers = []
    for n in spec.nodes:
        if n.type != "router":
            continue
        settings = n.router or spec.router
        routers.append(
            {
                "node": n.name,
                "picks": "nodes" if n.routes else "models",
                "arms": list(n.routes or n.models),
                "algorithm": settings.algorithm,
                "frozen": settings.frozen,
            }
        )
    nodes = []
    for n in spec.nodes:
        item: dict[str, Any] = {"name": n.name, "type": n.type, "next": successors(n)}
        for key in ("agent", "tool", "graph"):
            if getattr(n, key):
                item[key] = getattr(n, key)
        nodes.append(item)
    return {
        "id": manifest.name,
        "object": "agent_graph",
        "description": manifest.metadata.description,
        "labels": dict(manifest.metadata.labels),
        "entry": spec.entry_node,
        "nodes": nodes,
        "agents": [
            {
                "name": a.name,
                "role": a.role,
                "model": a.model,
                "tools": list(a.tools),
                "knowledge": list(a.knowledge),
            }
            for a in spec.agents
        ],
        "routers": routers,
        "version": gdef.version,
    }


def _number(kwargs: dict, name: str, default: float, high: float, what: str) -> float:
    """The query parameter ``name`` (a string or a number) as a number in ``(0, high]``."""
    value = kwargs.get(name, default)
    try:
        number = float(value.strip() if isinstance(value, str) else value)
    except (TypeError, ValueError):
        number = math.nan
    whole = what == "whole number"
    if isinstance(value, bool) or not 0 < number <= high or (whole and number != int(number)):
        low = "from 1" if whole else "above 0"
        raise BadRequest(f"`{name}` must be a {what} {low} and at most {high:.0f}, got {value!r}",
                         param=name)  # fmt: skip
    return number


def _report_options(kwargs: dict) -> dict[str, Any]:
    """``window_s``, ``buckets`` and ``ope`` of ``GET /v1/agents/{graph}/routers``."""
    from qingliang.agents.routing import report

    window = _number(
        kwargs, "window_s", report.DEFAULT_WINDOW_S, report.MAX_WINDOW_S, "number of seconds"
    )
    buckets = _number(kwargs, "buckets", report.DEFAULT_BUCKETS, report.MAX_BUCKETS, "whole number")
    ope = kwargs.get("ope", True)
    if isinstance(ope, str) and ope.strip().lower() in ("1", "true", "yes", "0", "false", "no"):
        ope = ope.strip().lower() in ("1", "true", "yes")
    if not isinstance(ope, bool):
        raise BadRequest(f"`ope` must be 1 or 0 (true or false), got {ope!r}", param="ope")
    return {"window_s": window, "buckets": int(buckets), "ope": ope}


async def _routers(service: Any, graph: object, kwargs: dict) -> dict[str, Any]:
    """The learned routers of ``graph``: decisions, per-arm rewards and propensities, the
    learning curve, the estimated regret (:mod:`qingliang.agents.routing.learning`), the
    decisions and rewards over time and the comparison of candidate policies
    (:mod:`qingliang.agents.routing.report`)."""
    from qingliang.platform.errors import Conflict, NotFound

    if not isinstance(graph, str) or not graph:
        raise BadRequest("`graph` is required", param="graph")
    options = _report_options(kwargs)
    gdef = service.catalog.get(graph)  # NotFound, with a "did you mean", for a typo
    if service.router is None:
        raise Conflict("no router is configured on this platform")
    data = []
    for node in gdef.manifest.spec.nodes:
        if node.type != "router":
            continue
        key = f"{graph}/{node.name}"
        try:
            stats = await service.router.report(key, **options)
        except NotFound:  # registered on the first run
            stats = {"router": key, "decisions": 0, "closed": 0, "arms": {}, "timeline": None,
                     "ope": None}  # fmt: skip
        data.append({"node": node.name, **stats})
    return {"object": "list", "graph": graph, "data": data}


def _limit(value: object) -> int:
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_LIST:
        raise BadRequest(f"`limit` must be an integer from 1 to {MAX_LIST}", param="limit")
    return value


def _inbox_item(run: Any) -> dict[str, Any]:
    pending = run.pending or {}
    return {
        "run_id": run.id,
        "object": "agent.approval",
        "graph": run.graph,
        "tenant": run.tenant,
        "actor": run.actor,
        "input": (run.input or {}).get("input"),
        "node": pending.get("node"),
        "prompt": pending.get("prompt"),
        "answer": pending.get("answer"),
        "forms": pending.get("forms") or {},
        "waiting_since": run.updated,
    }


async def dispatch_call(
    service: Any, method: str, tenant: str | None, all_tenants: bool, actor: str, kwargs: dict
) -> Any:
    """Run ``method`` (one of :data:`METHODS`) on an AgentService; a JSON-ready result.

    Raises:
        BadRequest: an unknown method or argument, or a malformed value (naming it).
        NotFound: an unknown run, or another tenant's.
    """
    _check_call(method, kwargs, METHODS)
    if method == "graphs":
        data = []
        for name in service.catalog.names():
            data.append(_graph_info(service.catalog.get(name)))
        return {"object": "list", "data": data}
    if method == "routers":
        return await _routers(service, kwargs.get("graph"), kwargs)
    if method == "get":
        run_id = _run_id(kwargs)
        run = service.get(run_id, tenant, all_tenants)
        return {
            **run.to_dict(),
            "events": service.events(run_id, tenant, all_tenants),
            # Ratings given to the run (the router's rewards), oldest first.
            "feedback": service.store.feedback(run_id),
        }
    if method == "events":
        run_id = _run_id(kwargs)
        return {"object": "list", "data": service.events(run_id, tenant, all_tenants)}
    if method == "runs":
        status, graph = kwargs.get("status") or None, kwargs.get("graph") or None
        if status is not None and status not in STATUSES:
            raise BadRequest(
                f"`status` {status!r} is not one of {', '.join(STATUSES)}", param="status"
            )
        if graph is not None and not isinstance(graph, str):
            raise BadRequest("`graph` must be a graph name", param="graph")
        runs = service.runs(
            tenant=tenant,
            all_tenants=all_tenants,
            status=status,
            graph=graph,
            limit=_limit(kwargs.get("limit", 50)),
        )
        return {"object": "list", "data": [r.to_dict() for r in runs]}
    if method == "approvals":
        runs = service.approvals(tenant=tenant, all_tenants=all_tenants)
        return {"object": "list", "data": [_inbox_item(r) for r in runs]}
    # feedback
    if "score" not in kwargs:
        raise BadRequest("`score` is required: a number from -1 to 1", param="score")
    return await service.feedback(
        _run_id(kwargs),
        kwargs["score"],
        comment=kwargs.get("comment"),
        tenant=tenant,
        actor=actor,
        all_tenants=all_tenants,
    )


async def dispatch_stream(
    service: Any, method: str, tenant: str | None, all_tenants: bool, actor: str, kwargs: dict
) -> AsyncIterator[dict]:
    """Run ``start`` or ``resume`` on an AgentService and yield its events.

    The first event is always ``{"type": "run", "run_id", "graph"}`` (a resume's next is
    the ``approval`` it recorded). Errors found before the run (re)starts are raised when
    the first event is pulled.
    """
    _check_call(method, kwargs, STREAM_METHODS)
    body = kwargs.get("body")
    if body is None:
        body = {}
    if method == "start":
        graph = kwargs.get("graph")
        if not isinstance(graph, str) or not graph:
            raise BadRequest("the graph name is required", param="name")
        run_id, events = await service.start(graph, body, tenant=tenant, actor=actor)
    else:
        run_id, events = await service.resume(
            _run_id(kwargs), body, tenant=tenant, actor=actor, all_tenants=all_tenants
        )
        graph = service.get(run_id, tenant, all_tenants).graph
    first = await anext(events, None)
    if first is None or first.get("type") != "run":
        yield {"type": "run", "run_id": run_id, "graph": graph}
    if first is not None:
        yield first
    async for event in events:
        yield event


class LocalAgents:
    """A backend over an in-process AgentService (tests, and the ``Agents`` deployment)."""

    def __init__(self, service: Any) -> None:
        self.service = service

    async def call(
        self, method: str, tenant: str | None, all_tenants: bool, actor: str, kwargs: dict
    ) -> Any:
        return await dispatch_call(self.service, method, tenant, all_tenants, actor, kwargs)

    def stream(
        self, method: str, tenant: str | None, all_tenants: bool, actor: str, kwargs: dict
    ) -> AsyncIterator[dict]:
        return dispatch_stream(self.service, method, tenant, all_tenants, actor, kwargs)

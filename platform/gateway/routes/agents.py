"""Agent routes of the gateway (``/v1/agents/...``, ``/v1/feedback``) and their dispatchers.

Routes (every one scoped to the caller's tenant — see
:func:`~qingliang.platform.gateway.routes.knowledge.tenant_of`)::

    GET    /v1/agents                          applied graphs: nodes, agents, router nodes
    POST   /v1/agents/{name}/runs              {"input", "domain", "attachments", "stream"}
                                               → SSE events (default) or, with
                                               "stream": false, the run + its events
    GET    /v1/agents/runs?status=&graph=&limit=   runs, newest first
    GET    /v1/agents/runs/{id}                the run + its events (token deltas left out)
    GET    /v1/agents/runs/{id}/events         its events only
    GET    /v1/agents/approvals                the inbox: runs waiting for a human
    POST   /v1/agents/runs/{id}/resume         {"action": "approve"|"edit"|"reject",
                                                "answer", "forms", "comment", "stream"}
    POST   /v1/feedback                        {"run_id", "score" (-1..1), "comment"}

Bodies are models of :mod:`.bodies` (``AgentRunBody``, ``ResumeBody``, ``FeedbackBody``):
documented in ``/openapi.json``, unknown fields refused with a "did you mean" hint, JSON
types checked; the agents service checks the values (the graph, the action, the forms).

A streamed answer is ``text/event-stream``: one ``data: {json}`` line per event (``run``
first, carrying ``run_id``; then ``node``, ``route``, ``token``, ``tool``, ``citations``,
``approval``, ``recovered``; ``status`` last) and ``data: [DONE]``. Errors found before
the run starts (unknown graph, bad body, a run that is not waiting) are real 4xx answers;
one raised after the stream began is sent as ``data: {"error": {...}}`` before ``[DONE]``.

The routes only parse requests; the work is an :class:`AgentsBackend` call (in production
a Ray Serve handle to the ``Agents`` deployment, in tests :class:`LocalAgents` over an
:class:`~qingliang.agents.service.AgentService`). :func:`dispatch_call` and
:func:`dispatch_stream` are the one place where a method name becomes a service call.

Example:
    >>> app = create_app(backend, None, auth, agents=LocalAgents(service))  # doctest: +SKIP
    >>> # curl -N localhost:8000/v1/agents/desk/runs -d '{"input": "返岗要隔离多久?"}'
"""

from __future__ import annotations

import difflib
import json
import logging
from collections.abc import AsyncIterator
from typing import Any, Protocol

from fastapi import FastAPI, Query, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from qingliang.platform.errors import ApiError, BadRequest, QingliangError
from qingliang.platform.gateway.bodies import (
    AgentRunBody,
    FeedbackBody,
    ResumeBody,
    request_body,
    validated,
)
from qingliang.platform.gateway.limits import check_attachments
from qingliang.platform.gateway.routes.knowledge import _actor, read_json_object, tenant_of
from qingliang.platform.settings import GatewayLimits

logger = logging.getLogger(__name__)

#: Methods :func:`dispatch_call` answers, with the keyword arguments each takes.
METHODS: dict[str, frozenset[str]] = {
    "graphs": frozenset(),
    "get": frozenset({"run_id"}),
    "runs": frozenset({"status", "graph", "limit"}),
    "approvals": frozenset(),
    "events": frozenset({"run_id"}),
    "feedback": frozenset(FeedbackBody.model_fields),
}
#: Methods :func:`dispatch_stream` answers (their events are streamed).
STREAM_METHODS: dict[str, frozenset[str]] = {
    "start": frozenset({"graph", "body"}),
    "resume": frozenset({"run_id", "body"}),
}
RUNS_QUERY = METHODS["runs"]
MAX_LIST = 500

_SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


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
    from qingliang.agents.manifest import successors

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
    if method == "get":
        run_id = _run_id(kwargs)
        run = service.get(run_id, tenant, all_tenants)
        return {**run.to_dict(), "events": service.events(run_id, tenant, all_tenants)}
    if method == "events":
        run_id = _run_id(kwargs)
        return {"object": "list", "data": service.events(run_id, tenant, all_tenants)}
    if method == "runs":
        from qingliang.agents.runs import STATUSES

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


def _only(keys: Any, allowed: frozenset[str], what: str) -> None:
    for key in keys:
        if key not in allowed:
            close = difflib.get_close_matches(key, sorted(allowed), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            known = ", ".join(sorted(allowed))
            raise BadRequest(f"unknown {what} {key!r}{hint}; accepted: {known}", param=key)


def _stream_flag(body: dict) -> bool:
    stream = body.pop("stream", True)
    if not isinstance(stream, bool):
        raise BadRequest("`stream` must be true or false", param="stream")
    return stream


def _sse(event: dict) -> str:
    return f"data: {json.dumps(event, ensure_ascii=False)}\n\n"


def add_agent_routes(
    app: FastAPI, agents: AgentsBackend | None, limits: GatewayLimits | None = None
) -> None:
    """Mount the ``/v1/agents`` and ``/v1/feedback`` routes (501 each without ``agents``).

    A run's ``attachments`` are refused over ``limits.max_attachments`` files or
    ``limits.max_attachment_bytes`` each, before the run starts."""
    limits = limits or GatewayLimits()

    def who(request: Request) -> tuple[str | None, bool, str]:
        """(tenant, all_tenants, actor) of the caller; 501 when agents are off."""
        if agents is None:
            err = ApiError("agent graphs are not enabled on this gateway")
            err.status_code = 501
            raise err
        principal = getattr(request.state, "principal", None)
        tenant = tenant_of(principal)
        return tenant, tenant is None, _actor(principal)

    async def call(request: Request, method: str, kwargs: dict) -> Any:
        tenant, all_tenants, actor = who(request)
        assert agents is not None
        return await agents.call(method, tenant, all_tenants, actor, kwargs)

    async def run_events(
        request: Request, method: str, kwargs: dict, model: type[AgentRunBody | ResumeBody]
    ) -> Response:
        tenant, all_tenants, actor = who(request)
        assert agents is not None
        body = await read_json_object(request)
        check_attachments(body.get("attachments"), limits)  # 413 before any other check
        validated(model, body)
        stream = _stream_flag(body)
        events = agents.stream(method, tenant, all_tenants, actor, {**kwargs, "body": body})
        # Pull the first event before answering, so errors found before the run starts
        # (unknown graph, bad body, a run that is not waiting) get a real status code.
        try:
            first = await events.__anext__()
        except StopAsyncIteration:
            raise ApiError(f"{method}: the agents backend sent no events") from None
        if not stream:
            async for _event in events:
                pass  # the run's segment ends with its stream; its events are stored
            run_id = {"run_id": first["run_id"]}
            return JSONResponse(await agents.call("get", tenant, all_tenants, actor, run_id))

        async def relay() -> AsyncIterator[str]:
            yield _sse(first)
            try:
                async for event in events:
                    yield _sse(event)
            except ApiError as exc:
                yield _sse(exc.to_openai())
            except QingliangError as exc:
                yield _sse(ApiError(str(exc)).to_openai())
            except Exception:
                logger.exception("agent event stream of %s failed", first.get("run_id"))
                yield _sse(ApiError("internal error while streaming the run").to_openai())
            yield "data: [DONE]\n\n"

        return StreamingResponse(relay(), media_type="text/event-stream", headers=_SSE_HEADERS)

    @app.get("/v1/agents")
    async def graphs(request: Request) -> Any:
        return await call(request, "graphs", {})

    @app.get("/v1/agents/runs")
    async def runs(
        request: Request,
        status: str | None = Query(None, description="Only runs with this status."),
        graph: str | None = Query(None, description="Only runs of this graph."),
        limit: str | None = Query(None, description=f"At most this many (1-{MAX_LIST}; 50)."),
    ) -> Any:
        # Read from the query itself: unknown parameters are refused by name.
        params = dict(request.query_params)
        _only(params, RUNS_QUERY, "query parameter")
        return await call(request, "runs", params)

    @app.get("/v1/agents/approvals")
    async def approvals(request: Request) -> Any:
        return await call(request, "approvals", {})

    @app.get("/v1/agents/runs/{run_id}")
    async def get_run(request: Request, run_id: str) -> Any:
        return await call(request, "get", {"run_id": run_id})

    @app.get("/v1/agents/runs/{run_id}/events")
    async def run_events_list(request: Request, run_id: str) -> Any:
        return await call(request, "events", {"run_id": run_id})

    @app.post("/v1/agents/{name}/runs", openapi_extra=request_body(AgentRunBody))
    async def start(request: Request, name: str) -> Response:
        return await run_events(request, "start", {"graph": name}, AgentRunBody)

    @app.post("/v1/agents/runs/{run_id}/resume", openapi_extra=request_body(ResumeBody))
    async def resume(request: Request, run_id: str) -> Response:
        return await run_events(request, "resume", {"run_id": run_id}, ResumeBody)

    @app.post("/v1/feedback", openapi_extra=request_body(FeedbackBody))
    async def feedback(request: Request) -> Any:
        who(request)
        body = await read_json_object(request)
        validated(FeedbackBody, body)
        return await call(request, "feedback", body)

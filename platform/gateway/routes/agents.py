"""Agent routes of the gateway (``/v1/agents/...``, ``/v1/feedback``).

Routes (every one scoped to the caller's tenant — see
:func:`~qingliang.platform.gateway.routes.knowledge.tenant_of`)::

    GET    /v1/agents                          applied graphs: nodes, agents, router nodes
    POST   /v1/agents/{name}/runs              {"input", "domain", "attachments", "stream"}
                                               → SSE events (default) or, with
                                               "stream": false, the run + its events
    GET    /v1/agents/{name}/routers?window_s=&buckets=&ope=
                                               its learned routers: decisions, rewards and
                                               propensity per arm, learning curve, estimated
                                               regret, decisions and rewards over time, the
                                               off-policy comparison of candidate policies
    GET    /v1/agents/runs?status=&graph=&limit=   runs, newest first
    GET    /v1/agents/runs/{id}                the run + its events (token deltas left out)
    GET    /v1/agents/runs/{id}/events         its events only
    GET    /v1/agents/approvals                the inbox: runs waiting for a human
    POST   /v1/agents/runs/{id}/resume         {"action": "approve"|"edit"|"reject",
                                                "answer", "forms", "comment", "stream"}
    POST   /v1/feedback                        {"run_id", "score" (-1..1), "comment"}

Bodies are models of :mod:`qingliang.agents.api` (``AgentRunBody``, ``ResumeBody``,
``FeedbackBody``): documented in ``/openapi.json``, unknown fields refused with a "did you
mean" hint, JSON types checked; the agents service checks the values (the graph, the
action, the forms).

A streamed answer is ``text/event-stream``: one ``data: {json}`` line per event (``run``
first, carrying ``run_id``; then ``node``, ``route``, ``token``, ``tool``, ``citations``,
``approval``, ``recovered``; ``status`` last) and ``data: [DONE]``. Errors found before
the run starts (unknown graph, bad body, a run that is not waiting) are real 4xx answers;
one raised after the stream began is sent as ``data: {"error": {...}}`` before ``[DONE]``.

The routes only parse requests; the work is an :class:`~qingliang.agents.api.AgentsBackend`
call (in production :class:`~qingliang.agents.deployment.HandleAgents`, a Ray Serve handle
to the ``Agents`` deployment; in tests :class:`~qingliang.agents.api.LocalAgents` over an
:class:`~qingliang.agents.service.AgentService`).

Example:
    >>> app = create_app(backend, None, auth, agents=LocalAgents(service))  # doctest: +SKIP
    >>> # curl -N localhost:8000/v1/agents/desk/runs -d '{"input": "返岗要隔离多久?"}'
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from typing import Any

from fastapi import FastAPI, Query, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from qingliang.agents.api import (
    MAX_LIST,
    ROUTERS_QUERY,
    RUNS_QUERY,
    AgentRunBody,
    AgentsBackend,
    FeedbackBody,
    ResumeBody,
)
from qingliang.platform.errors import ApiError, BadRequest, QingliangError, did_you_mean
from qingliang.platform.gateway.http.bodies import request_body, validated
from qingliang.platform.gateway.http.limits import check_attachments
from qingliang.platform.gateway.routes.knowledge import _actor, read_json_object, tenant_of
from qingliang.platform.settings import GatewayLimits

logger = logging.getLogger(__name__)

_SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


def _only(keys: Any, allowed: frozenset[str], what: str) -> None:
    for key in keys:
        if key not in allowed:
            hint = did_you_mean(key, sorted(allowed))
            known = ", ".join(sorted(allowed))
            raise BadRequest(f"unknown {what} {key!r}{hint}; accepted: {known}", param=key)


def _stream_flag(body: dict) -> bool:
    stream = body.pop("stream", True)
    if not isinstance(stream, bool):
        raise BadRequest("`stream` must be true or false", param="stream")
    return stream


def _sse(event: dict) -> str:
    return f"data: {json.dumps(event, ensure_ascii=False)}\n\n"


def _caller(agents: AgentsBackend | None, request: Request) -> tuple[str | None, bool, str]:
    """(tenant, all_tenants, actor) of the caller; 501 when agents are off."""
    if agents is None:
        err = ApiError("agent graphs are not enabled on this gateway")
        err.status_code = 501
        raise err
    principal = getattr(request.state, "principal", None)
    tenant = tenant_of(principal)
    return tenant, tenant is None, _actor(principal)


async def _run_events(
    agents: AgentsBackend | None,
    limits: GatewayLimits,
    request: Request,
    method: str,
    kwargs: dict,
    model: type[AgentRunBody | ResumeBody],
) -> Response:
    """Start or resume a run: its events as SSE, or (``"stream": false``) the run."""
    tenant, all_tenants, actor = _caller(agents, request)
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
    return StreamingResponse(
        _relay(first, events), media_type="text/event-stream", headers=_SSE_HEADERS
    )


async def _relay(first: dict, events: AsyncIterator[dict]) -> AsyncIterator[str]:
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


def add_agent_routes(
    app: FastAPI, agents: AgentsBackend | None, limits: GatewayLimits | None = None
) -> None:
    """Mount the ``/v1/agents`` and ``/v1/feedback`` routes (501 each without ``agents``).

    A run's ``attachments`` are refused over ``limits.max_attachments`` files or
    ``limits.max_attachment_bytes`` each, before the run starts."""
    limits = limits or GatewayLimits()

    async def call(request: Request, method: str, kwargs: dict) -> Any:
        tenant, all_tenants, actor = _caller(agents, request)
        assert agents is not None
        return await agents.call(method, tenant, all_tenants, actor, kwargs)

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

    @app.get("/v1/agents/{name}/routers")
    async def routers(
        request: Request,
        name: str,
        window_s: str | None = Query(None, description="Timeline window in seconds (86400)."),
        buckets: str | None = Query(None, description="Timeline buckets (1-500; 48)."),
        ope: str | None = Query(None, description="Compare candidate policies (1 or 0; 1)."),
    ) -> Any:
        params = dict(request.query_params)
        _only(params, ROUTERS_QUERY, "query parameter")
        return await call(request, "routers", {**params, "graph": name})

    @app.post("/v1/agents/{name}/runs", openapi_extra=request_body(AgentRunBody))
    async def start(request: Request, name: str) -> Response:
        return await _run_events(agents, limits, request, "start", {"graph": name}, AgentRunBody)

    @app.post("/v1/agents/runs/{run_id}/resume", openapi_extra=request_body(ResumeBody))
    async def resume(request: Request, run_id: str) -> Response:
        kwargs = {"run_id": run_id}
        return await _run_events(agents, limits, request, "resume", kwargs, ResumeBody)

    @app.post("/v1/feedback", openapi_extra=request_body(FeedbackBody))
    async def feedback(request: Request) -> Any:
        _caller(agents, request)
        body = await read_json_object(request)
        validated(FeedbackBody, body)
        return await call(request, "feedback", body)

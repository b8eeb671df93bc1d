"""The operator's routes of the gateway: who am I, deployments, an adapter's lineage,
manifest checks and metric series (what the web console's deployment and metrics pages
show). HTTP only: the reading is
:class:`~qingliang.platform.gateway.operator.operations.Operations`'s, the manifest checks
:mod:`~qingliang.platform.gateway.operator.manifest_check`'s.

Routes (scopes in :mod:`..auth.scopes`; every answer JSON, errors in OpenAI's format)::

    GET  /v1/whoami                           any valid key: its name, scopes, tenant,
                                              whether auth is on, the Ray dashboard URL
    GET  /v1/deployments?window_s=600         deploy or approve, not bound to a tenant:
                                              every deployment, its replicas, adapters,
                                              traffic and per-arm counts over the window
    GET  /v1/deployments/{name}?window_s=600  one of them (404 naming it)
    GET  /v1/adapters/{name}/lineage?deployment=
                                              an adapter's registry record and lineage
    POST /v1/manifests/validate               deploy: {"yaml": "..."} -> ok, objects, errors
    POST /v1/manifests/diff                   deploy: {"yaml": "..."} -> ok, errors, changes
    GET  /v1/metrics/series?window_s=3600&step_s=60&deployment=
                                              deploy or approve: per deployment series

docs/console-api.md has every answer's shape. Without an ``Operations`` (a gateway
built without a data directory) every route but ``/v1/whoami`` answers 501.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from fastapi import FastAPI, Request

from qingliang.platform.errors import ApiError, BadRequest, ClusterError, Unavailable
from qingliang.platform.gateway.auth.keys import Auth
from qingliang.platform.gateway.auth.scopes import scopes_of, tenant_of
from qingliang.platform.gateway.http.bodies import ManifestTextBody, request_body, validated
from qingliang.platform.gateway.operator.operations import Operations
from qingliang.platform.gateway.routes.knowledge import read_json_object
from qingliang.platform.storage.arm_stats import BUCKET_S, RETENTION_S
from qingliang.platform.storage.keys import ADMIN

logger = logging.getLogger(__name__)

#: Most points one series may have (window_s / step_s).
MAX_POINTS = 1000


def _ops(ops: Operations | None) -> Operations:
    if ops is None:
        err = ApiError("the operator's routes are not enabled on this gateway")
        err.status_code = 501
        raise err
    return ops


def _window(window_s: int, name: str = "window_s") -> int:
    if not BUCKET_S <= window_s <= RETENTION_S:
        raise BadRequest(
            f"{name} must be from {BUCKET_S} to {RETENTION_S} seconds (30 days are kept)",
            param=name,
        )
    return window_s


async def _call(fn: Any, *args: Any) -> Any:
    """``fn(*args)`` off the event loop (it reads SQLite files and Serve's details); the
    dashboard not answering is a 503."""
    try:
        return await asyncio.to_thread(fn, *args)
    except ClusterError as exc:
        raise Unavailable(str(exc), retry_after=5, code="cluster_unavailable") from None


def whoami(request: Request, auth: Auth, ops: Operations | None) -> dict[str, Any]:
    """The caller's key as the gateway sees it."""
    principal = getattr(request.state, "principal", None)
    enabled = bool(auth.enabled)
    dashboard = None
    if ops is not None:
        try:
            dashboard = ops.dashboard_url()
        except Exception:  # a page header must not fail on a missing run file
            logger.debug("whoami: no dashboard URL", exc_info=True)
    if not enabled or principal is None:
        return {"name": None, "scopes": [ADMIN], "tenant": None, "auth": enabled,
                "ray_dashboard": dashboard}  # fmt: skip
    return {
        "name": getattr(principal, "name", None),
        "scopes": list(scopes_of(principal)),
        "tenant": tenant_of(principal),
        "auth": True,
        "ray_dashboard": dashboard,
    }


def add_ops_routes(app: FastAPI, ops: Operations | None, auth: Auth) -> None:
    """Mount the operator's routes (see the module docstring)."""

    @app.get("/v1/whoami")
    async def who(request: Request) -> dict:
        """The calling key: name, scopes, tenant (null: every tenant), whether keys are
        checked, and the Ray dashboard's URL (null when it is not known)."""
        return await asyncio.to_thread(whoami, request, auth, ops)

    @app.get("/v1/deployments")
    async def deployments(window_s: int = 600) -> dict:
        """Every applied deployment: status, engine, replicas (state, pid, node), adapters
        (registry ref, share), traffic, aliases and each arm's counts over `window_s`."""
        data = await _call(_ops(ops).deployments, _window(window_s))
        return {"object": "list", "data": data}

    @app.get("/v1/deployments/{name}")
    async def deployment(name: str, window_s: int = 600) -> dict:
        """One deployment, as in the list."""
        return await _call(_ops(ops).deployment, name, _window(window_s))

    @app.get("/v1/adapters/{name}/lineage")
    async def lineage(name: str, deployment: str | None = None) -> dict:
        """An adapter's registry record and lineage: job, dataset versions, base model.
        `name` is NAME@VERSION or NAME (the newest) in the registry, or with `deployment`
        the adapter's name there."""
        return await _call(_ops(ops).lineage, name, deployment or None)

    @app.post("/v1/manifests/validate", openapi_extra=request_body(ManifestTextBody))
    async def validate(request: Request) -> dict:
        """Check a manifest file's text as `qingliang validate` does; each error names its
        document, field path and line. Nothing is stored."""
        from qingliang.platform.gateway.operator.manifest_check import validate as check

        _ops(ops)
        body = validated(ManifestTextBody, await read_json_object(request))
        return await asyncio.to_thread(check, body.yaml)

    @app.post("/v1/manifests/diff", openapi_extra=request_body(ManifestTextBody))
    async def diff(request: Request) -> dict:
        """What `qingliang apply` of this text would change (as `qingliang diff`), or its
        errors. Nothing is applied or stored."""
        from qingliang.platform.gateway.operator.manifest_check import diff as compare
        from qingliang.platform.gateway.operator.operations import settings_of

        home = _ops(ops).home
        body = validated(ManifestTextBody, await read_json_object(request))
        return await asyncio.to_thread(lambda: compare(body.yaml, settings_of(home)))

    @app.get("/v1/metrics/series")
    async def metrics_series(
        window_s: int = 3600, step_s: int = 60, deployment: str | None = None
    ) -> dict:
        """Per deployment and step: requests, errors, 429s, output tokens, tokens/s, time
        to first token p50/p95 and mean latency, from the platform's own counts."""
        _window(window_s)
        if step_s < BUCKET_S or step_s % BUCKET_S:
            raise BadRequest(f"step_s must be a multiple of {BUCKET_S} seconds", param="step_s")
        if window_s / step_s > MAX_POINTS:
            raise BadRequest(
                f"window_s / step_s is {window_s // step_s} points; at most {MAX_POINTS}",
                param="step_s",
            )
        t0, series = await _call(_ops(ops).series, window_s, step_s, deployment or None)
        return {"step_s": step_s, "since": t0, "series": series}

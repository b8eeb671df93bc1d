"""The admin's routes of the gateway: what the remote CLI (``qingliang --server URL …``)
needs besides the routes the console already uses. HTTP only: the work is
:class:`~qingliang.platform.gateway.operator.admin.PlatformAdmin`'s, through the same
Controller ``qingliang`` runs locally.

Routes (``admin`` keys only, see :mod:`..auth.scopes`; every answer JSON but the export,
errors in OpenAI's format)::

    POST   /v1/manifests/apply                 {"yaml": "..."} -> {"changes": [{"kind",
                                               "name", "action", "fields"}]}; does not
                                               wait (poll /v1/manifests/applied)
    GET    /v1/manifests/applied               {"data": [deployment as `qingliang get`]}
    DELETE /v1/deployments/{kind}/{name}       ModelDeployment, KnowledgeBase, AgentGraph
                                               or Dataset -> {"kind", "name", "deleted"}
    PUT    /v1/deployments/{name}/adapters/{adapter}   {"path", "ref"?} load (waits)
    DELETE /v1/deployments/{name}/adapters/{adapter}   unload (waits)
    PUT    /v1/deployments/{name}/traffic      {"shares": {adapter: share}} canary shares
    PUT    /v1/deployments/{name}/aliases/{alias}      {"shares": {...}} point an alias
    DELETE /v1/deployments/{name}/aliases/{alias}      remove it
    POST   /v1/keys/{key_id}/limits            {"requests_per_minute"?, "tokens_per_day"?}
                                               (null lifts, absent keeps) -> the key
    GET    /v1/platform                        {"running", "home", "started_at", "pid",
                                               "api", "console", "dashboard"}
    GET    /v1/packaged-models                 {"data": [as `qingliang models --json`]}
    GET    /v1/conversations/count             {"count": n}
    GET    /v1/conversations/export?since=&until=&tenant=&model=   JSONL, oldest first
    POST   /v1/conversations/purge             {"older_than_days": n} -> {"purged": n}
    GET    /v1/registry/{adapters|jobs|datasets}?name=&status=     {"data": [...]}
    GET    /v1/lineage?ref=&direction=both&depth=&kind=  `qingliang lineage --json`

docs/console-api.md has every answer's shape. Without an ``Operations`` (a gateway built
without a data directory) every route answers 501.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import Response
from pydantic import BaseModel, Field

from qingliang.platform.bodies import Body
from qingliang.platform.errors import (
    ApiError,
    BadRequest,
    ClusterError,
    QingliangError,
    Unavailable,
)
from qingliang.platform.gateway.http.bodies import request_body, validated
from qingliang.platform.gateway.operator.admin import PlatformAdmin, registry_rows
from qingliang.platform.gateway.operator.operations import Operations
from qingliang.platform.gateway.routes.keys import record_json
from qingliang.platform.gateway.routes.knowledge import KnowledgeBackend, _actor, read_json_object

logger = logging.getLogger(__name__)


class ManifestApplyBody(Body):
    """``POST /v1/manifests/apply``: the text of a manifest file, applied as
    ``qingliang apply -f`` applies it. Paths in it are paths on the platform's nodes."""

    yaml: str = Field(description="The file's text: one or more `---` documents (at most 1 MiB).")


class AdapterLoadBody(Body):
    """``PUT /v1/deployments/{name}/adapters/{adapter}``: ``qingliang adapters load``."""

    path: str = Field(description="The PEFT adapter's folder on the platform's nodes.")
    ref: str | None = Field(None, description="Its model-registry ref, NAME@VERSION.")


class SharesBody(Body):
    """``PUT …/traffic`` and ``PUT …/aliases/{alias}``: a share of requests per adapter
    (0 < share <= 1, at most 1 together; the rest goes to the base model)."""

    shares: dict[str, float] = Field(
        description="adapter name -> share of requests; {} sends all to the base model."
    )


class KeyLimitsBody(Body):
    """``POST /v1/keys/{key_id}/limits``: a field left out keeps that limit, null lifts it."""

    requests_per_minute: int | None = Field(None, description="Requests a minute, or null.")
    tokens_per_day: int | None = Field(None, description="Tokens a UTC day, or null.")


class PurgeBody(Body):
    """``POST /v1/conversations/purge``: retention."""

    older_than_days: float = Field(description="Delete conversations older than N days.")


#: Our bodies, for the OpenAPI document.
ADMIN_BODIES: tuple[type[BaseModel], ...] = (
    ManifestApplyBody,
    AdapterLoadBody,
    SharesBody,
    KeyLimitsBody,
    PurgeBody,
)


async def _run(fn: Callable[..., Any], *args: Any) -> Any:
    """``fn(*args)`` off the event loop; the cluster not answering is a 503, any other
    refusal of ours a 400 with its message."""
    try:
        return await asyncio.to_thread(fn, *args)
    except ApiError:
        raise
    except ClusterError as exc:
        raise Unavailable(str(exc), retry_after=5, code="cluster_unavailable") from None
    except QingliangError as exc:
        raise BadRequest(str(exc)) from None


def add_admin_routes(
    app: FastAPI, ops: Operations | None, knowledge: KnowledgeBackend | None = None
) -> None:
    """Mount the admin's routes (see the module docstring)."""
    admin = (
        None
        if ops is None
        else PlatformAdmin(ops.home, settings=ops.settings, controller=ops.controller)
    )

    def _admin() -> PlatformAdmin:
        if admin is None:
            err = ApiError("the admin's routes are not enabled on this gateway")
            err.status_code = 501
            raise err
        return admin

    @app.post("/v1/manifests/apply", openapi_extra=request_body(ManifestApplyBody))
    async def apply(request: Request) -> dict:
        """Apply a manifest file's text as `qingliang apply -f` does (deployments, knowledge
        bases, agent graphs, datasets); returns at once with the changes."""
        body = validated(ManifestApplyBody, await read_json_object(request))
        return await _run(_admin().apply, body.yaml)

    @app.get("/v1/manifests/applied")
    async def applied() -> dict:
        """Every applied deployment with its live status, as `qingliang get --json`."""
        return {"object": "list", "data": await _run(_admin().applied)}

    @app.delete("/v1/deployments/{kind}/{name}")
    async def delete(request: Request, kind: str, name: str) -> dict:
        """Delete a ModelDeployment, KnowledgeBase, AgentGraph or Dataset by name."""
        if kind == "KnowledgeBase" and knowledge is not None:
            # The knowledge replica owns the shards: it is the one to forget the KB.
            principal = getattr(request.state, "principal", None)
            await knowledge.call("remove", name, None, _actor(principal), {})
            return {"kind": kind, "name": name, "deleted": True}
        return await _run(_admin().delete, kind, name)

    _adapter_routes(app, _admin)
    _listing_routes(app, _admin)


def _adapter_routes(app: FastAPI, admin: Callable[[], PlatformAdmin]) -> None:
    base = "/v1/deployments/{name}"

    @app.put(f"{base}/adapters/{{adapter}}", openapi_extra=request_body(AdapterLoadBody))
    async def load(request: Request, name: str, adapter: str) -> dict:
        """Load (or replace) an adapter on every replica, no restart; waits until RUNNING."""
        body = validated(AdapterLoadBody, await read_json_object(request))
        return await _run(admin().adapter, name, adapter, body.path, body.ref, 300.0)

    @app.delete(f"{base}/adapters/{{adapter}}")
    async def unload(name: str, adapter: str) -> dict:
        """Unload an adapter from every replica; waits until RUNNING."""
        return await _run(admin().adapter, name, adapter, None, None, 300.0)

    @app.put(f"{base}/traffic", openapi_extra=request_body(SharesBody))
    async def traffic(request: Request, name: str) -> dict:
        """Replace the canary shares of the bare deployment ({} clears them)."""
        body = validated(SharesBody, await read_json_object(request))
        return await _run(admin().traffic, name, body.shares)

    @app.put(f"{base}/aliases/{{alias}}", openapi_extra=request_body(SharesBody))
    async def alias(request: Request, name: str, alias: str) -> dict:
        """Point DEPLOYMENT:ALIAS at adapters (created if new)."""
        body = validated(SharesBody, await read_json_object(request))
        return await _run(admin().alias, name, alias, body.shares)

    @app.delete(f"{base}/aliases/{{alias}}")
    async def unalias(name: str, alias: str) -> dict:
        """Remove an alias."""
        return await _run(admin().alias, name, alias, None)

    @app.post("/v1/keys/{key_id}/limits", openapi_extra=request_body(KeyLimitsBody))
    async def limits(request: Request, key_id: str) -> dict:
        """Change a key's limits; a field left out keeps its limit, null lifts it."""
        body = validated(KeyLimitsBody, await read_json_object(request))
        wanted = {f: getattr(body, f) for f in body.model_fields_set}
        return record_json(await _run(admin().key_limits, key_id, wanted))


def _listing_routes(app: FastAPI, admin: Callable[[], PlatformAdmin]) -> None:
    @app.get("/v1/platform")
    async def platform() -> dict:
        """Whether the platform runs, since when, and its addresses (`qingliang status`)."""
        return await _run(admin().status)

    @app.get("/v1/packaged-models")
    async def packaged() -> dict:
        """The packaged models as the platform sees them (`qingliang models`)."""
        return {"object": "list", "data": await _run(admin().models)}

    @app.get("/v1/conversations/count")
    async def count() -> dict:
        """How many conversations the log holds."""
        return {"count": await _run(admin().conversations_count)}

    @app.get("/v1/conversations/export")
    async def export(
        since: float | None = None,
        until: float | None = None,
        tenant: list[str] | None = None,
        model: list[str] | None = None,
    ) -> Response:
        """The conversation log as a Dataset's `gateway_logs` JSONL (times in seconds
        since the epoch; `tenant` and `model` repeatable)."""
        filters = {
            "since": since,
            "until": until,
            "tenants": tuple(tenant or ()),
            "models": tuple(model or ()),
        }
        text = await _run(admin().conversations_export, filters)
        return Response(text, media_type="application/x-ndjson")

    @app.post("/v1/conversations/purge", openapi_extra=request_body(PurgeBody))
    async def purge(request: Request) -> dict:
        """Delete conversations older than N days."""
        body = validated(PurgeBody, await read_json_object(request))
        return {"purged": await _run(admin().conversations_purge, body.older_than_days)}

    @app.get("/v1/registry/{what}")
    async def registry(what: str, name: str | None = None, status: str | None = None) -> dict:
        """The model registry's adapters, jobs or dataset versions
        (`qingliang registry … --json`)."""
        home = admin().home
        rows = await _run(registry_rows, home, what, name or None, status or None)
        return {"object": "list", "data": rows}

    @app.get("/v1/lineage")
    async def lineage(
        ref: str, direction: str = "both", depth: int | None = None, kind: str | None = None
    ) -> dict:
        """Where REF came from and what came of it (`qingliang lineage REF --json`)."""
        return await _run(admin().lineage, ref, direction, depth, kind or None)

"""API keys over HTTP (admin keys only): list, create and revoke what ``qingliang keys``
manages, so the web console can hand out a second key (an approver's, a tenant's)
without a shell.

Routes (scope rules in :mod:`..auth.scopes`; errors in OpenAI's format)::

    GET    /v1/keys        {"data": [record, ...]}, oldest first; never a secret or a hash
    POST   /v1/keys        {"name", "scopes"?, "tenant"?, "requests_per_minute"?,
                            "tokens_per_day"?} -> 201, the record and "key": the secret,
                            shown this once
    DELETE /v1/keys/{id}   revoke (id as listed: ``ql-<12 hex>`` or the bare 12 hex)
                           -> the record, now revoked

A record is ``{"id", "prefix", "name", "scopes", "tenant", "created_at", "expires_at",
"last_used_at", "revoked", "revoked_at", "requests_per_minute", "tokens_per_day"}``
(times in seconds since the epoch or null). Keys never expire in the key store, so
``expires_at`` is always null and ``expires_in_days`` is refused by name rather than
accepted and ignored.

A body is checked as ``qingliang keys create`` checks its options: ``scopes`` defaults to
the CLI's (inference, knowledge:read, agents:run); an unknown scope is named with a "did
you mean" hint; ``tenant`` is a tenant label (as a knowledge base's ``labels.tenant``)
and is refused next to ``admin``; the rest (one tenant at most, no ``deploy`` bound to a
tenant, a duplicate active name) is the key store's own check
(:meth:`~qingliang.platform.storage.keys.KeyStore.create`).

A key may not revoke itself (409 ``self_revoke``: the console would sign its user out for
good), nor the last active admin key (409 ``last_admin_key``). Who created or revoked
which key is logged at INFO with the caller's key name (the store has no column for it).

Example:
    >>> add_key_routes(app, KeyAuth(db, enabled=True))  # doctest: +SKIP
"""

from __future__ import annotations

import asyncio
import logging
import re
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from pydantic import Field

from qingliang.knowledge.manifest import LABEL_RE
from qingliang.platform.bodies import Body
from qingliang.platform.errors import ApiError, BadRequest, Conflict, NotFound, did_you_mean
from qingliang.platform.gateway.auth.keys import Auth
from qingliang.platform.gateway.http.bodies import validated
from qingliang.platform.gateway.routes.knowledge import read_json_object
from qingliang.platform.storage.keys import (
    ADMIN,
    DEFAULT_SCOPES,
    ID_HEX_CHARS,
    KEY_PREFIX,
    SCOPES,
    TENANT_PREFIX,
    KeyRecord,
    KeyStore,
)

logger = logging.getLogger(__name__)

_ID_RE = re.compile(rf"^(?:{KEY_PREFIX}-)?([0-9a-f]{{{ID_HEX_CHARS}}})\Z")


class KeyCreateBody(Body):
    """``POST /v1/keys``: a new API key, as ``qingliang keys create`` makes one."""

    name: str = Field(
        description="A label for the key, unique among active keys: 1-64 letters, digits, "
        "'.', '_' or '-'."
    )
    scopes: list[str] = Field(
        default_factory=lambda: list(DEFAULT_SCOPES),
        description="What the key may do: " + ", ".join(SCOPES) + " (default: "
        + ", ".join(DEFAULT_SCOPES) + "); `tenant` binds it to one tenant.",
    )  # fmt: skip
    tenant: str | None = Field(
        None,
        description="The tenant the key acts for (default: the tenant 'default'); never "
        "with admin, which acts for every tenant.",
    )
    expires_in_days: int | None = Field(
        None, description="Not supported: keys do not expire; revoke a key instead."
    )
    requests_per_minute: int | None = Field(
        None, description="At most this many requests a minute."
    )
    tokens_per_day: int | None = Field(
        None, description="At most this many tokens (prompt + answer) a UTC day."
    )


def _secs(value: Any) -> float | None:
    return None if value is None else value.timestamp()


def record_json(record: KeyRecord) -> dict[str, Any]:
    """What the API shows of a key: never its secret or its hash."""
    tenant = next(
        (s[len(TENANT_PREFIX) :] for s in record.scopes if s.startswith(TENANT_PREFIX)), None
    )
    return {
        "id": record.id,
        "prefix": record.prefix,
        "name": record.name,
        "scopes": [s for s in record.scopes if not s.startswith(TENANT_PREFIX)],
        "tenant": tenant,
        "created_at": _secs(record.created_at),
        "expires_at": None,
        "last_used_at": _secs(record.last_used_at),
        "revoked": record.revoked,
        "revoked_at": _secs(record.revoked_at),
        "requests_per_minute": record.requests_per_minute,
        "tokens_per_day": record.tokens_per_day,
    }


def scopes_for(body: KeyCreateBody) -> list[str]:
    """The scopes a body asks for, checked as the CLI checks ``--scope`` and ``--tenant``.

    Raises:
        BadRequest: an unknown scope (with a "did you mean"), a bad tenant id, a tenant
            next to admin, or an expiry.
    """
    if body.expires_in_days is not None:
        raise BadRequest(
            "keys do not expire on this platform: leave expires_in_days out and revoke the "
            "key (DELETE /v1/keys/{id}) when it is no longer needed",
            param="expires_in_days",
            code="expiry_unsupported",
        )
    if not body.scopes:
        raise BadRequest("a key needs at least one scope", param="scopes")
    for i, scope in enumerate(body.scopes):
        if scope not in SCOPES and not scope.startswith(TENANT_PREFIX):
            raise BadRequest(
                f"unknown scope {scope!r}{did_you_mean(scope, SCOPES)}; known: "
                f"{', '.join(SCOPES)}, and tenant:<id> (or the field tenant)",
                param=f"scopes[{i}]",
                code="unknown_scope",
            )
    scopes = list(body.scopes)
    if body.tenant is not None:
        if ADMIN in scopes:
            raise BadRequest(
                "an admin key acts for every tenant: leave tenant out, or drop the admin "
                "scope to bind the key to one tenant",
                param="tenant",
            )
        if not LABEL_RE.match(body.tenant):
            raise BadRequest(
                f"tenant {body.tenant!r} is not a valid tenant id: 1-63 letters, digits, '.', "
                "'_' or '-', starting and ending with a letter or digit (as a knowledge "
                "base's labels.tenant)",
                param="tenant",
            )
        scopes.append(f"{TENANT_PREFIX}{body.tenant}")
    return scopes


def _store(auth: Auth) -> KeyStore:
    store = getattr(auth, "usage", None)
    if store is None:
        err = ApiError("API keys cannot be managed on this gateway (it has no key store)")
        err.status_code = 501
        raise err
    return store  # type: ignore[no-any-return]


def _caller(request: Request) -> str:
    principal = getattr(request.state, "principal", None)
    if principal is None:
        return "a caller without a key (auth is off)"
    return f"key {principal.name} ({principal.prefix})"


def create_key(store: KeyStore, body: KeyCreateBody, caller: str) -> dict[str, Any]:
    """Create the key; its record with the secret under ``key``."""
    record, key = store.create(
        body.name,
        scopes=scopes_for(body),
        requests_per_minute=body.requests_per_minute,
        tokens_per_day=body.tokens_per_day,
    )
    logger.info(
        "API key %s (%s, scopes %s) created by %s",
        record.prefix,
        record.name,
        " ".join(record.scopes),
        caller,
    )
    return {**record_json(record), "key": key}


def revoke_key(store: KeyStore, key_id: str, principal: Any, caller: str) -> dict[str, Any]:
    """Revoke the key listed as ``key_id``, unless it is the caller's or the last admin's."""
    match = _ID_RE.match(key_id)
    records = store.list()
    target = next((r for r in records if match and r.id == match.group(1)), None)
    if target is None:
        shown = key_id if len(key_id) <= 40 else key_id[:15] + "…"  # never echo a secret
        raise NotFound(
            f"no API key with id {shown!r}; ids look like {KEY_PREFIX}-<{ID_HEX_CHARS} hex> "
            "as GET /v1/keys lists them",
            param="id",
            code="key_not_found",
        )
    if principal is not None and getattr(principal, "id", None) == target.id:
        raise Conflict(
            f"{target.prefix} ({target.name}) is the key this request is signed with: "
            "revoking it would lock you out; revoke it with another admin key or "
            "`qingliang keys revoke`",
            code="self_revoke",
        )
    if (
        not target.revoked
        and ADMIN in target.scopes
        and not any(r.id != target.id and not r.revoked and ADMIN in r.scopes for r in records)
    ):
        raise Conflict(
            f"{target.prefix} ({target.name}) is the last active admin key: create another "
            "admin key first, or nobody could manage keys over HTTP",
            code="last_admin_key",
        )
    record = store.revoke(target.id)
    logger.info("API key %s (%s) revoked by %s", record.prefix, record.name, caller)
    return record_json(record)


def add_key_routes(app: FastAPI, auth: Auth) -> None:
    """Mount ``/v1/keys`` over ``auth``'s key store (501 without one)."""
    schema = KeyCreateBody.model_json_schema()
    body_doc = {
        "requestBody": {"required": True, "content": {"application/json": {"schema": schema}}}
    }

    @app.get("/v1/keys")
    async def list_keys() -> dict:
        """Every key, active and revoked, oldest first: never the secret."""
        records = await asyncio.to_thread(_store(auth).list)
        return {"object": "list", "data": [record_json(r) for r in records]}

    @app.post("/v1/keys", status_code=201, openapi_extra=body_doc)
    async def create(request: Request) -> Response:
        """Create a key; the answer's ``key`` is the secret, shown this once."""
        store = _store(auth)
        body = validated(KeyCreateBody, await read_json_object(request))
        answer = await asyncio.to_thread(create_key, store, body, _caller(request))
        return JSONResponse(answer, status_code=201)

    @app.delete("/v1/keys/{key_id}")
    async def revoke(request: Request, key_id: str) -> dict:
        """Revoke a key: requests with it get 401 from then on."""
        store = _store(auth)
        principal = getattr(request.state, "principal", None)
        return await asyncio.to_thread(revoke_key, store, key_id, principal, _caller(request))

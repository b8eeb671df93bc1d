"""Who may call which route: the scope table of the gateway, checked in one place.

A key carries scopes (defined in :mod:`qingliang.platform.storage.keys`)::

    admin              every route, every tenant (the key ``qingliang up`` writes)
    deploy             pipelines: start, watch, cancel, resume (they change what every
                       tenant is served, so a deploy key is never bound to one tenant)
    inference          /v1/chat/completions, /v1/completions, /v1/responses,
                       /v1/embeddings, /v1/models
    knowledge:read     list, stats, search, documents, snapshots, answers of knowledge bases
    knowledge:write    upload, delete, sync, snapshot, rollback, add and retract answers
    agents:run         start agent runs, read them, give feedback
    approve            the approvals inbox; approve, edit or reject a waiting agent run or
                       pipeline run (never one the same key started, unless the graph or
                       pipeline allows self-approval)
    tenant:<id>        act for this tenant only

The operator's routes (``/v1/deployments``, ``/v1/metrics/series``, adapter lineage) need
``deploy`` or ``approve``, manifest checks ``deploy``, never bound to a tenant; demos
``admin`` (their sample pictures ``agents:run`` or ``knowledge:read``); API keys
(``/v1/keys``) ``admin``; the admin's routes of the remote CLI (apply, delete, adapters,
key limits, listings: :mod:`..routes.admin`) ``admin``; ``/v1/whoami`` any key.

Tenancy: an ``admin`` key acts for every tenant; a key with ``tenant:<id>`` for that one;
any other key for the tenant ``default`` (the tenant a knowledge base has when its
manifest names none). So an all-tenants key is always an explicit ``--admin`` choice.

:data:`ROUTES` maps every route the gateway registers (method and path template) to the
:class:`Rule` it needs; :func:`rule_for` finds the rule of a request from the app's own
route table, and a route without a rule is refused (403) and logged, so a new route can
never be open by omission. A unit test walks ``app.routes`` and fails on any route
missing here.

Example:
    >>> from types import SimpleNamespace as P
    >>> ROUTES[("POST", "/v1/chat/completions")].allows(P(scopes=("inference",)))
    True
    >>> tenant_of(P(scopes=("inference",)))
    'default'
    >>> tenant_of(P(scopes=("admin",))) is None
    True
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Any

from starlette.routing import Match

from qingliang.platform.errors import ApiError, Forbidden, Unavailable
from qingliang.platform.storage.keys import (
    ADMIN,
    AGENTS_RUN,
    APPROVE,
    DEFAULT_TENANT,
    DEPLOY,
    INFERENCE,
    KNOWLEDGE_READ,
    KNOWLEDGE_WRITE,
    SCOPES,
    TENANT_PREFIX,
)

logger = logging.getLogger(__name__)


def scopes_of(principal: Any) -> tuple[str, ...]:
    scopes = getattr(principal, "scopes", ()) or ()
    return tuple(s for s in scopes if isinstance(s, str))


def tenant_of(principal: Any) -> str | None:
    """The tenant a caller acts for, or None for every tenant.

    None for an admin key and for no key at all (a gateway started with ``--no-auth``);
    the key's ``tenant:<id>`` scope; else :data:`DEFAULT_TENANT`.
    """
    if principal is None or ADMIN in scopes_of(principal):
        return None
    for scope in scopes_of(principal):
        if scope.startswith(TENANT_PREFIX):
            return scope[len(TENANT_PREFIX) :]
    return DEFAULT_TENANT


@dataclass(frozen=True)
class Rule:
    """What a route needs: any one of ``any_of`` (admin always does), or nothing."""

    any_of: tuple[str, ...] = ()
    public: bool = False
    #: Only keys that act for every tenant or carry ``deploy`` (pipelines).
    platform_wide: bool = False

    def allows(self, principal: Any) -> bool:
        if self.public:
            return True
        scopes = scopes_of(principal)
        if ADMIN in scopes:
            return True
        if self.platform_wide and any(s.startswith(TENANT_PREFIX) for s in scopes):
            return False
        return any(s in scopes for s in self.any_of)

    def describe(self) -> str:
        if self.public:
            return "no key"
        need = " or ".join(self.any_of) if self.any_of else ADMIN
        return need + (" (not bound to a tenant)" if self.platform_wide else "")


PUBLIC = Rule(public=True)


def _need(*scopes: str, platform_wide: bool = False) -> Rule:
    return Rule(any_of=scopes, platform_wide=platform_wide)


_KB = "/v1/knowledge/{kb}"
#: (method, path template) → rule. HEAD follows GET.
ROUTES: dict[tuple[str, str], Rule] = {
    # Open: liveness, readiness (it shows deployment names only to a valid key), API docs.
    ("GET", "/healthz"): PUBLIC,
    ("GET", "/readyz"): PUBLIC,
    ("GET", "/openapi.json"): PUBLIC,
    ("GET", "/docs"): PUBLIC,
    ("GET", "/docs/oauth2-redirect"): PUBLIC,
    # The web console's files (they hold no data; its API calls carry the user's key).
    ("GET", "/ui"): PUBLIC,
    ("GET", "/ui/"): PUBLIC,
    ("GET", "/ui/{path:path}"): PUBLIC,
    # OpenAI API.
    ("POST", "/v1/chat/completions"): _need(INFERENCE),
    ("POST", "/v1/completions"): _need(INFERENCE),
    ("POST", "/v1/responses"): _need(INFERENCE),
    ("POST", "/v1/embeddings"): _need(INFERENCE),
    ("GET", "/v1/models"): _need(INFERENCE),
    ("GET", "/v1/models/{model_id:path}"): _need(INFERENCE),
    # Knowledge bases.
    ("GET", "/v1/knowledge"): _need(KNOWLEDGE_READ),
    ("GET", _KB): _need(KNOWLEDGE_READ),
    ("DELETE", _KB): _need(ADMIN, platform_wide=True),
    ("POST", f"{_KB}/search"): _need(KNOWLEDGE_READ),
    ("GET", f"{_KB}/documents"): _need(KNOWLEDGE_READ),
    ("POST", f"{_KB}/documents"): _need(KNOWLEDGE_WRITE),
    ("DELETE", f"{_KB}/documents/{{doc:path}}"): _need(KNOWLEDGE_WRITE),
    ("POST", f"{_KB}/sync"): _need(KNOWLEDGE_WRITE),
    ("GET", f"{_KB}/snapshots"): _need(KNOWLEDGE_READ),
    ("GET", f"{_KB}/history"): _need(KNOWLEDGE_READ),
    ("POST", f"{_KB}/snapshots"): _need(KNOWLEDGE_WRITE),
    ("POST", f"{_KB}/rollback"): _need(KNOWLEDGE_WRITE),
    ("GET", f"{_KB}/answers"): _need(KNOWLEDGE_READ),
    ("POST", f"{_KB}/answers"): _need(KNOWLEDGE_WRITE),
    ("POST", f"{_KB}/answers/{{answer_id}}/retract"): _need(KNOWLEDGE_WRITE),
    # Agents. An approver reads the run it decides on.
    ("GET", "/v1/agents"): _need(AGENTS_RUN),
    ("GET", "/v1/agents/{name}/routers"): _need(AGENTS_RUN),
    ("GET", "/v1/agents/runs"): _need(AGENTS_RUN, APPROVE),
    ("GET", "/v1/agents/approvals"): _need(APPROVE),
    ("GET", "/v1/agents/runs/{run_id}"): _need(AGENTS_RUN, APPROVE),
    ("GET", "/v1/agents/runs/{run_id}/events"): _need(AGENTS_RUN, APPROVE),
    ("POST", "/v1/agents/{name}/runs"): _need(AGENTS_RUN),
    ("POST", "/v1/agents/runs/{run_id}/resume"): _need(APPROVE),
    ("POST", "/v1/feedback"): _need(AGENTS_RUN),
    # Pipelines change what every tenant is served.
    ("GET", "/v1/pipelines"): _need(DEPLOY, APPROVE, platform_wide=True),
    ("POST", "/v1/pipelines"): _need(DEPLOY, platform_wide=True),
    ("GET", "/v1/pipelines/{run_id}"): _need(DEPLOY, APPROVE, platform_wide=True),
    ("GET", "/v1/pipelines/{run_id}/events"): _need(DEPLOY, APPROVE, platform_wide=True),
    ("POST", "/v1/pipelines/{run_id}/approve"): _need(APPROVE, platform_wide=True),
    ("POST", "/v1/pipelines/{run_id}/cancel"): _need(DEPLOY, platform_wide=True),
    ("POST", "/v1/pipelines/{run_id}/resume"): _need(DEPLOY, platform_wide=True),
    # The operator's routes (routes/ops.py, docs/console-api.md): any key may ask who it
    # is; deployments, lineage and metrics show every tenant's traffic; manifests are
    # checked against what every tenant is served.
    ("GET", "/v1/whoami"): _need(*SCOPES),
    ("GET", "/v1/deployments"): _need(DEPLOY, APPROVE, platform_wide=True),
    ("GET", "/v1/deployments/{name}"): _need(DEPLOY, APPROVE, platform_wide=True),
    ("GET", "/v1/adapters/{name}/lineage"): _need(DEPLOY, APPROVE, platform_wide=True),
    ("POST", "/v1/manifests/validate"): _need(DEPLOY, platform_wide=True),
    ("POST", "/v1/manifests/diff"): _need(DEPLOY, platform_wide=True),
    ("GET", "/v1/metrics/series"): _need(DEPLOY, APPROVE, platform_wide=True),
    # Demos apply and delete manifests for everyone (routes/demos.py): admin keys only.
    ("GET", "/v1/demos"): _need(ADMIN, platform_wide=True),
    ("POST", "/v1/demos/{name}/up"): _need(ADMIN, platform_wide=True),
    ("POST", "/v1/demos/{name}/down"): _need(ADMIN, platform_wide=True),
    # A bundle's sample pictures (fictional, shipped in the repository) are attached to
    # walkthrough steps: for whoever may run an agent or search a knowledge base.
    ("GET", "/v1/demos/{name}/samples/{file}"): _need(AGENTS_RUN, KNOWLEDGE_READ),
    # API keys (routes/keys.py): making a key is granting its scopes, so admin keys only.
    ("GET", "/v1/keys"): _need(ADMIN, platform_wide=True),
    ("POST", "/v1/keys"): _need(ADMIN, platform_wide=True),
    ("DELETE", "/v1/keys/{key_id}"): _need(ADMIN, platform_wide=True),
    # The admin's routes (routes/admin.py): what the remote CLI changes and reads.
    **{
        route: _need(ADMIN, platform_wide=True)
        for route in (
            ("POST", "/v1/manifests/apply"),
            ("GET", "/v1/manifests/applied"),
            ("DELETE", "/v1/deployments/{kind}/{name}"),
            ("PUT", "/v1/deployments/{name}/adapters/{adapter}"),
            ("DELETE", "/v1/deployments/{name}/adapters/{adapter}"),
            ("PUT", "/v1/deployments/{name}/traffic"),
            ("PUT", "/v1/deployments/{name}/aliases/{alias}"),
            ("DELETE", "/v1/deployments/{name}/aliases/{alias}"),
            ("POST", "/v1/keys/{key_id}/limits"),
            ("GET", "/v1/platform"),
            ("GET", "/v1/packaged-models"),
            ("GET", "/v1/conversations/count"),
            ("GET", "/v1/conversations/export"),
            ("POST", "/v1/conversations/purge"),
            ("GET", "/v1/registry/{what}"),
            ("GET", "/v1/lineage"),
            ("GET", "/v1/deployments/{name}/logs"),  # routes/logs.py: `qingliang logs`
        )
    },
}


def route_of(routes: list[Any], scope: dict) -> Any | None:
    """The route of ``routes`` that fully matches this request (method and path), if any."""
    for route in routes:
        match, _child = route.matches(scope)
        if match == Match.FULL:
            return route
    return None


def rule_for(method: str, path_template: str) -> Rule | None:
    method = "GET" if method == "HEAD" else method
    return ROUTES.get((method, path_template))


def authorize(principal: Any, method: str, path_template: str) -> None:
    """Raise :class:`Forbidden` unless ``principal`` may call this route.

    A route with no rule in :data:`ROUTES` is refused: a new route must be added to the
    table before anyone can call it.
    """
    rule = rule_for(method, path_template)
    if rule is None:
        logger.error("route %s %s has no scope rule; refused", method, path_template)
        raise Forbidden(
            f"{method} {path_template} has no access rule yet; nobody may call it",
            code="no_scope_rule",
        )
    if not rule.allows(principal):
        have = " ".join(scopes_of(principal)) or "none"
        raise Forbidden(
            f"this key may not call {method} {path_template}: it needs {rule.describe()} "
            f"(the key has: {have})",
            code="insufficient_scope",
        )


async def verify_key(auth: Any, token: str) -> Any:
    """``auth.verify(token)`` off the event loop; a store that cannot answer is a 503.

    The key store is SQLite: a read can wait on a lock held by another process, and that
    wait must stall neither the other requests of this replica nor end in a 500.
    """
    try:
        return await asyncio.to_thread(auth.verify, token)
    except ApiError:
        raise
    except Exception as exc:
        logger.warning("API key check failed: %s: %s", type(exc).__name__, exc)
        raise Unavailable(
            "API keys cannot be checked right now (the key store is busy); retry shortly",
            retry_after=2,
            code="key_store_unavailable",
        ) from None

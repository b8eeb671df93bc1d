"""Scopes (issue 13, item 2): every route has a rule, and the rules hold through the app.

The app is the real gateway app with real keys (KeyStore over SQLite, ``KeyAuth`` as
production uses it) and every area mounted (knowledge, agents, pipelines over small
fakes: what is checked here is who gets past the door, not what the areas do).
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.routing import APIRoute
from fastapi.testclient import TestClient
from starlette.routing import Route

from qingliang.platform.gateway.app import create_app
from qingliang.platform.gateway.auth.keys import KeyAuth
from qingliang.platform.gateway.auth.scopes import ROUTES, rule_for, tenant_of
from qingliang.platform.storage.keys import KeyStore
from qingliang.serving.traffic import ModelEntry


class Models:
    def models(self) -> list[ModelEntry]:
        return [ModelEntry("qwen")]

    async def generate(self, deployment: str, endpoint: str, body: dict, adapter: Any) -> dict:
        return {"id": "x", "object": "chat.completion", "choices": [], "usage": {}}

    async def ready(self) -> dict[str, str]:
        return {"qwen": "ready"}

    def rejected(self, *args: Any) -> None:
        pass


class Knowledge:
    """Records the tenant each call was made for."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str | None]] = []

    async def call(self, method: str, kb: Any, tenant: Any, actor: str, kwargs: dict) -> Any:
        self.calls.append((method, tenant))
        return {"data": []}


class Agents:
    async def call(self, method: str, tenant: Any, all_tenants: bool, actor: str, kw: dict) -> Any:
        return {"object": "list", "data": []}

    async def stream(self, *args: Any) -> Any:  # pragma: no cover - not reached here
        yield {}


class Pipelines:
    def list(self, pipeline: Any, limit: int) -> list:
        return []


def full_app(db: Path) -> Any:
    return create_app(
        Models(),  # type: ignore[arg-type]
        None,
        KeyAuth(db, True),
        knowledge=Knowledge(),
        agents=Agents(),  # type: ignore[arg-type]
        pipelines=Pipelines(),
    )


def _routes(app: Any) -> list[tuple[str, str]]:
    out = []
    for route in app.routes:
        if isinstance(route, APIRoute | Route):
            for method in sorted(route.methods or ()):
                if method != "HEAD":
                    out.append((method, route.path))
    return out


def test_every_registered_route_has_a_scope_rule(tmp_path: Path) -> None:
    """A route added without a rule fails here (and is refused with 403 at run time)."""
    app = full_app(tmp_path / "state.sqlite")
    registered = _routes(app)
    missing = [r for r in registered if rule_for(*r) is None]
    assert missing == [], f"routes without a rule in scopes.ROUTES: {missing}"
    stale = sorted(set(ROUTES) - set(registered))
    assert stale == [], f"rules for routes that no longer exist: {stale}"


def test_a_route_without_a_rule_is_refused(tmp_path: Path) -> None:
    app = full_app(tmp_path / "state.sqlite")

    @app.get("/v1/new-thing")
    async def new_thing() -> dict:
        return {"secret": True}

    admin = KeyStore(tmp_path / "state.sqlite").create("root", scopes=["admin"])[1]
    r = TestClient(app).get("/v1/new-thing", headers={"Authorization": f"Bearer {admin}"})
    assert r.status_code == 403
    assert r.json()["error"]["code"] == "no_scope_rule"


@pytest.fixture
def env(tmp_path: Path) -> Any:
    db = tmp_path / "state.sqlite"
    store = KeyStore(db)
    keys = {
        "admin": store.create("root", scopes=["admin"])[1],
        "app": store.create("app")[1],  # the default: inference, knowledge:read, agents:run
        "infer": store.create("infer", scopes=["inference"])[1],
        "writer": store.create("writer", scopes=["knowledge:write", "tenant:city-a"])[1],
        "reader-a": store.create("reader-a", scopes=["knowledge:read", "tenant:city-a"])[1],
        "deploy": store.create("deploy", scopes=["deploy"])[1],
        "approve-a": store.create("approve-a", scopes=["approve", "tenant:city-a"])[1],
    }
    knowledge = Knowledge()
    app = create_app(
        Models(),  # type: ignore[arg-type]
        None,
        KeyAuth(db, True),
        knowledge=knowledge,
        agents=Agents(),  # type: ignore[arg-type]
        pipelines=Pipelines(),
    )
    client = TestClient(app)
    client.keys = keys  # type: ignore[attr-defined]
    client.knowledge = knowledge  # type: ignore[attr-defined]
    return client


def call(client: Any, who: str, method: str, path: str, **kw: Any) -> Any:
    headers = {"Authorization": f"Bearer {client.keys[who]}"}
    return client.request(method, path, headers=headers, **kw)


CHAT = {"model": "qwen", "messages": [{"role": "user", "content": "hi"}]}


@pytest.mark.parametrize(
    ("who", "method", "path", "body", "allowed"),
    [
        ("infer", "POST", "/v1/chat/completions", CHAT, True),
        ("infer", "GET", "/v1/models", None, True),
        ("infer", "GET", "/v1/knowledge", None, False),
        ("infer", "GET", "/v1/agents", None, False),
        ("infer", "GET", "/v1/pipelines", None, False),
        ("app", "GET", "/v1/knowledge", None, True),
        ("app", "POST", "/v1/knowledge/kb/search", {"query": "x"}, True),
        ("app", "POST", "/v1/knowledge/kb/sync", {}, False),
        ("app", "DELETE", "/v1/knowledge/kb/documents/a.md", None, False),
        ("app", "GET", "/v1/agents", None, True),
        ("app", "GET", "/v1/agents/approvals", None, False),
        ("app", "POST", "/v1/agents/runs/r1/resume", {"action": "approve"}, False),
        ("app", "POST", "/v1/pipelines", {}, False),
        ("writer", "POST", "/v1/knowledge/kb/sync", {}, True),
        ("writer", "POST", "/v1/chat/completions", CHAT, False),
        ("reader-a", "GET", "/v1/knowledge/kb/documents", None, True),
        ("deploy", "GET", "/v1/pipelines", None, True),
        ("deploy", "POST", "/v1/chat/completions", CHAT, False),
        ("approve-a", "GET", "/v1/agents/approvals", None, True),
        # Pipelines change every tenant's serving: a tenant's approver may not touch them.
        ("approve-a", "POST", "/v1/pipelines/p1/approve", {"approve": True}, False),
        ("approve-a", "GET", "/v1/pipelines", None, False),
        ("admin", "GET", "/v1/pipelines", None, True),
        ("admin", "POST", "/v1/knowledge/kb/sync", {}, True),
        ("admin", "POST", "/v1/chat/completions", CHAT, True),
    ],
)
def test_scope_table_holds(
    env: Any, who: str, method: str, path: str, body: Any, allowed: bool
) -> None:
    r = call(env, who, method, path, json=body)
    if allowed:
        assert r.status_code != 403, r.text
    else:
        assert r.status_code == 403, r.text
        err = r.json()["error"]
        assert err["type"] == "permission_error" and err["code"] == "insufficient_scope"
        assert "needs" in err["message"]  # says which scope would do


def test_a_key_without_tenant_or_admin_acts_for_the_default_tenant_only(env: Any) -> None:
    """Before, a key made without --tenant read every tenant's knowledge bases."""
    assert call(env, "app", "GET", "/v1/knowledge").status_code == 200
    assert call(env, "reader-a", "GET", "/v1/knowledge").status_code == 200
    assert call(env, "admin", "GET", "/v1/knowledge").status_code == 200
    assert env.knowledge.calls == [("names", "default"), ("names", "city-a"), ("names", None)]


def test_tenant_of() -> None:
    from types import SimpleNamespace as P

    assert tenant_of(None) is None  # --no-auth
    assert tenant_of(P(scopes=("admin",))) is None
    assert tenant_of(P(scopes=("inference", "tenant:city-a"))) == "city-a"
    assert tenant_of(P(scopes=("inference",))) == "default"


def test_public_routes_need_no_key_and_v1_does(env: Any) -> None:
    assert env.get("/healthz").status_code == 200
    assert env.get("/openapi.json").status_code == 200
    r = env.get("/v1/models")
    assert r.status_code == 401 and r.json()["error"]["type"] == "authentication_error"
    # An unknown /v1/ path: 401 without a key (no probing), 404 with one.
    assert env.get("/v1/nothing-here").status_code == 401
    assert call(env, "app", "GET", "/v1/nothing-here").status_code == 404


def test_revoked_key_is_refused_at_once(env: Any, tmp_path: Path) -> None:
    assert call(env, "infer", "GET", "/v1/models").status_code == 200
    KeyStore(tmp_path / "state.sqlite").revoke("infer")
    assert call(env, "infer", "GET", "/v1/models").status_code == 401


# ------------------------------------------------------------------- item 5: off the loop


class SlowAuth:
    """A key check that blocks its thread, as a SQLite read behind a lock does."""

    enabled = True

    def __init__(self, delay: float) -> None:
        self.delay = delay
        self.threads: set[int] = set()

    def verify(self, token: str) -> Any:
        self.threads.add(threading.get_ident())
        time.sleep(self.delay)
        from types import SimpleNamespace

        return SimpleNamespace(name="k", scopes=("admin",))


def test_key_checks_run_off_the_event_loop() -> None:
    """A slow key check must not stall other requests of the replica (it ran on the loop:
    every request of the replica waited behind it)."""
    auth = SlowAuth(delay=1.0)
    app = create_app(Models(), None, auth)  # type: ignore[arg-type]

    async def scenario() -> tuple[float, int, int]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://gw") as client:
            loop_thread = threading.get_ident()
            slow = asyncio.create_task(
                client.get("/v1/models", headers={"Authorization": "Bearer k"})
            )
            await asyncio.sleep(0.1)  # the slow check is under way
            began = time.monotonic()
            health = await client.get("/healthz")
            took = time.monotonic() - began
            done = await slow
            assert loop_thread not in auth.threads
            return took, health.status_code, done.status_code

    took, health, slow = asyncio.run(scenario())
    assert (health, slow) == (200, 200)
    assert took < auth.delay / 2  # answered while the key check was still blocked


class BrokenStoreAuth:
    enabled = True

    def verify(self, token: str) -> Any:
        raise sqlite3.OperationalError("database is locked")


def test_a_key_store_that_cannot_answer_is_503_with_retry_after() -> None:
    app = create_app(Models(), None, BrokenStoreAuth())  # type: ignore[arg-type]
    r = TestClient(app).get("/v1/models", headers={"Authorization": "Bearer x"})
    assert r.status_code == 503
    assert int(r.headers["Retry-After"]) >= 1
    err = r.json()["error"]
    assert err["code"] == "key_store_unavailable" and "database" not in err["message"]


def test_a_locked_state_db_does_not_fail_requests(tmp_path: Path) -> None:
    """Another process holding the write lock of state.sqlite: requests still answer (the
    ``last_used_at`` write is skipped), instead of a 30 s stall and a 500."""
    db = tmp_path / "state.sqlite"
    key = KeyStore(db).create("infer", scopes=["inference"])[1]
    app = create_app(Models(), None, KeyAuth(db, True))  # type: ignore[arg-type]
    other = sqlite3.connect(db, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")
    try:
        r = TestClient(app).get("/v1/models", headers={"Authorization": f"Bearer {key}"})
    finally:
        other.execute("ROLLBACK")
        other.close()
    assert r.status_code == 200, r.text

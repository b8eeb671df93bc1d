"""``/v1/keys`` (issue 17): API keys listed, created and revoked over HTTP by admin keys.

The real gateway app over a real key store in a temporary directory; a key the API makes
is then used on another route, as a person given it would.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from qingliang.platform.gateway.app import create_app
from qingliang.platform.gateway.auth.keys import KeyAuth
from qingliang.platform.storage.keys import KeyStore
from qingliang.serving.traffic import ModelEntry


class Models:
    def models(self) -> list[ModelEntry]:
        return []

    async def ready(self) -> dict[str, str]:
        return {}

    def rejected(self, *args: Any) -> None:
        pass


class Env:
    def __init__(self, db: Path) -> None:
        self.store = KeyStore(db)
        self.admin_record, self.admin = self.store.create("root", scopes=["admin"])
        _, self.approver = self.store.create("approver", scopes=["approve", "agents:run"])
        app = create_app(Models(), None, KeyAuth(db, True))  # type: ignore[arg-type]
        self.client = TestClient(app)

    def call(self, method: str, url: str, key: str | None = None, **kw: Any) -> Any:
        headers = {"Authorization": f"Bearer {key or self.admin}"}
        return self.client.request(method, url, headers=headers, **kw)


@pytest.fixture
def env(tmp_path: Path) -> Env:
    return Env(tmp_path / "state.sqlite")


def error(r: Any) -> dict:
    body = r.json()
    assert set(body) == {"error"}, body
    return body["error"]  # type: ignore[no-any-return]


def test_the_list_shows_every_key_but_never_a_secret_or_hash(env: Env) -> None:
    r = env.call("GET", "/v1/keys")
    assert r.status_code == 200
    rows = r.json()["data"]
    assert [k["name"] for k in rows] == ["root", "approver"]
    root = rows[0]
    assert root["prefix"] == f"ql-{env.admin_record.id}" and root["id"] == env.admin_record.id
    assert root["scopes"] == ["admin"] and root["tenant"] is None
    assert root["revoked"] is False and root["expires_at"] is None
    assert root["last_used_at"] is not None  # this very request used it
    assert set(root) >= {"created_at", "last_used_at", "revoked_at"}
    assert env.admin not in r.text and env.approver not in r.text
    # The secret part (43 url-safe characters; it may itself hold a '-').
    assert env.admin.split("-", 2)[2] not in r.text
    assert "sha256" not in r.text and "hash" not in r.text


def test_a_created_key_is_shown_once_and_works_on_another_route(env: Env) -> None:
    r = env.call("POST", "/v1/keys", json={"name": "nurse-approver", "scopes": ["approve"]})
    assert r.status_code == 201, r.text
    made = r.json()
    assert made["name"] == "nurse-approver" and made["scopes"] == ["approve"]
    assert made["key"].startswith(made["prefix"] + "-")
    who = env.call("GET", "/v1/whoami", key=made["key"])
    assert who.status_code == 200 and who.json()["name"] == "nurse-approver"
    # Past the key and scope checks (this app has no agents backend: 501).
    assert env.call("GET", "/v1/agents/approvals", key=made["key"]).status_code == 501
    # Its scopes hold: an approve key may not chat.
    chat = env.call("POST", "/v1/chat/completions", key=made["key"], json={})
    assert chat.status_code == 403
    listed = env.call("GET", "/v1/keys").text
    assert made["key"] not in listed and "nurse-approver" in listed


def test_defaults_tenant_and_limits_are_the_clis(env: Env) -> None:
    r = env.call("POST", "/v1/keys", json={"name": "app"})
    assert r.status_code == 201 and r.json()["scopes"] == [
        "inference",
        "knowledge:read",
        "agents:run",
    ]
    r = env.call(
        "POST",
        "/v1/keys",
        json={
            "name": "hosp",
            "scopes": ["knowledge:read"],
            "tenant": "hospital-a",
            "tokens_per_day": 5000,
        },
    )
    made = r.json()
    assert r.status_code == 201 and made["tenant"] == "hospital-a"
    assert made["scopes"] == ["knowledge:read"] and made["tokens_per_day"] == 5000
    assert env.call("GET", "/v1/whoami", key=made["key"]).json()["tenant"] == "hospital-a"


@pytest.mark.parametrize(
    ("body", "param", "words"),
    [
        (
            {"name": "x", "scopes": ["aprove"]},
            "scopes[0]",
            "unknown scope 'aprove' (did you mean 'approve'?)",
        ),
        ({"name": "x", "scopes": ["inference", "tenant"]}, "scopes[1]", "unknown scope 'tenant'"),
        ({"name": "x", "scopes": []}, "scopes", "at least one scope"),
        (
            {"name": "x", "scopes": ["approve"], "tenant": "bad tenant"},
            "tenant",
            "not a valid tenant id",
        ),
        ({"name": "x", "scopes": ["admin"], "tenant": "a"}, "tenant", "acts for every tenant"),
        (
            {"name": "x", "scopes": ["deploy"], "tenant": "a"},
            "scopes",
            "cannot be bound to one tenant",
        ),
        (
            {"name": "x", "scopes": ["approve"], "tenant": "a", "expires_in_days": 7},
            "expires_in_days",
            "do not expire",
        ),
        ({"name": "root", "scopes": ["approve"]}, "name", "an active key named 'root' exists"),
        ({"name": "has space"}, "name", "key name 'has space' is invalid"),
        ({"scopes": ["approve"]}, "name", "name"),
        ({"name": "x", "scope": ["approve"]}, "scope", "did you mean 'scopes'?"),
        ({"name": "x", "scopes": "approve"}, "scopes", "list"),
        ({"name": "x", "tokens_per_day": 0}, "tokens_per_day", "at least 1"),
    ],
)
def test_a_bad_body_is_refused_naming_what_is_wrong(
    env: Env, body: dict, param: str, words: str
) -> None:
    r = env.call("POST", "/v1/keys", json=body)
    assert r.status_code == 400, r.text
    err = error(r)
    assert err["param"] == param and words in err["message"], err
    assert [k["name"] for k in env.call("GET", "/v1/keys").json()["data"]] == ["root", "approver"]


def test_revoke_shuts_the_key_out_at_once(env: Env, caplog: pytest.LogCaptureFixture) -> None:
    made = env.call("POST", "/v1/keys", json={"name": "temp", "scopes": ["approve"]}).json()
    assert env.call("GET", "/v1/whoami", key=made["key"]).status_code == 200
    with caplog.at_level(logging.INFO, logger="qingliang.platform.gateway.routes.keys"):
        r = env.call("DELETE", f"/v1/keys/{made['prefix']}")
    assert r.status_code == 200 and r.json()["revoked"] is True and r.json()["revoked_at"]
    assert "key" not in r.json()
    gone = env.call("GET", "/v1/whoami", key=made["key"])
    assert gone.status_code == 401 and "revoked" in error(gone)["message"]
    rows = {k["name"]: k for k in env.call("GET", "/v1/keys").json()["data"]}
    assert rows["temp"]["revoked"] is True
    # Who did it is on record, never the secret.
    assert f"{made['prefix']} (temp) revoked by key root" in caplog.text
    assert made["key"] not in caplog.text
    # The bare id works too; revoking twice says when it was.
    again = env.call("DELETE", f"/v1/keys/{made['id']}")
    assert again.status_code == 400 and "already revoked" in error(again)["message"]


def test_an_unknown_id_is_a_404_naming_it(env: Env) -> None:
    r = env.call("DELETE", "/v1/keys/ql-0123456789ab")
    assert r.status_code == 404 and "'ql-0123456789ab'" in error(r)["message"]
    # A name is not an id here (the console always sends the id).
    r = env.call("DELETE", "/v1/keys/approver")
    assert r.status_code == 404 and "'approver'" in error(r)["message"]


def test_a_whole_key_in_the_path_is_not_echoed(env: Env) -> None:
    r = env.call("DELETE", f"/v1/keys/{env.approver}")
    assert r.status_code == 404 and env.approver not in r.text


def test_a_key_may_not_revoke_itself(env: Env) -> None:
    r = env.call("DELETE", f"/v1/keys/{env.admin_record.prefix}")
    assert r.status_code == 409
    err = error(r)
    assert err["code"] == "self_revoke" and "lock you out" in err["message"]
    assert env.call("GET", "/v1/whoami").status_code == 200


def test_the_last_active_admin_key_stays(env: Env) -> None:
    second = env.call("POST", "/v1/keys", json={"name": "root2", "scopes": ["admin"]}).json()
    # With two admin keys, one may revoke the other.
    ok = env.call("DELETE", f"/v1/keys/{second['id']}")
    assert ok.status_code == 200
    # A gateway without auth checks (no caller key): the last admin key is refused.
    db = env.store.path
    client = TestClient(create_app(Models(), None, KeyAuth(db, False)))  # type: ignore[arg-type]
    r = client.delete(f"/v1/keys/{env.admin_record.id}")
    assert r.status_code == 409 and error(r)["code"] == "last_admin_key"
    assert env.call("GET", "/v1/whoami").status_code == 200


@pytest.mark.parametrize(
    ("method", "url"),
    [("GET", "/v1/keys"), ("POST", "/v1/keys"), ("DELETE", "/v1/keys/ql-0123456789ab")],
)
def test_only_admin_keys_may_manage_keys(env: Env, method: str, url: str) -> None:
    _, deployer = env.store.create("deployer", scopes=["deploy", "approve"])
    for key in (env.approver, deployer):
        r = env.call(method, url, key=key, json={"name": "sneaky", "scopes": ["admin"]})
        assert r.status_code == 403 and "needs admin" in error(r)["message"]
    assert "sneaky" not in env.call("GET", "/v1/keys").text

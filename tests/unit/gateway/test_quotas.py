"""Per-key rate limits and token quotas (issue 13, "Load"): 429 with Retry-After and a
clear message, configurable per key, charged from what the engine reports.

The gateway app runs with real keys (KeyStore over SQLite through ``KeyAuth``); the
backend is a small fake that answers with fixed usage, streamed like vLLM: content
chunks, then, only when ``stream_options.include_usage`` is set, a usage-only event.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from qingliang.platform.errors import BadRequest, Saturated
from qingliang.platform.gateway.app import create_app
from qingliang.platform.gateway.auth.keys import KeyAuth
from qingliang.platform.gateway.auth.quotas import Quotas
from qingliang.platform.storage.keys import KeyStore
from qingliang.serving.engine import StreamChunk
from qingliang.serving.traffic import ModelEntry

USAGE = {"prompt_tokens": 7, "completion_tokens": 3, "total_tokens": 10}


def _event(data: dict) -> StreamChunk:
    return StreamChunk.of(data)


class Backend:
    def __init__(self) -> None:
        self.bodies: list[dict] = []

    def models(self) -> list[ModelEntry]:
        return [ModelEntry("qwen")]

    async def generate(self, deployment: str, endpoint: str, body: dict, adapter: Any) -> dict:
        self.bodies.append(body)
        message = {"role": "assistant", "content": "hi"}
        return {"id": "c1", "choices": [{"index": 0, "message": message}], "usage": USAGE}

    async def stream(
        self, deployment: str, endpoint: str, body: dict, adapter: Any
    ) -> AsyncIterator[StreamChunk]:
        self.bodies.append(body)
        for word in ("hi", " there", "!"):
            yield _event({"id": "c1", "choices": [{"index": 0, "delta": {"content": word}}]})
        if (body.get("stream_options") or {}).get("include_usage"):
            yield _event({"id": "c1", "choices": [], "usage": USAGE})

    async def ready(self) -> dict[str, str]:
        return {"qwen": "ready"}

    def rejected(self, *args: Any) -> None:
        pass


CHAT = {"model": "qwen", "messages": [{"role": "user", "content": "hello"}]}


@pytest.fixture
def env(tmp_path: Path) -> Any:
    db = tmp_path / "state.sqlite"
    backend = Backend()
    client = TestClient(create_app(backend, None, KeyAuth(db, True)))  # type: ignore[arg-type]
    client.store = KeyStore(db)  # type: ignore[attr-defined]
    client.backend = backend  # type: ignore[attr-defined]
    return client


def _h(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def test_requests_a_minute_over_the_limit_get_429_with_retry_after(env: Any) -> None:
    _rec, key = env.store.create("app", scopes=["inference"], requests_per_minute=3)
    _rec, other = env.store.create("other", scopes=["inference"])
    first = time.time()
    codes = [
        env.post("/v1/chat/completions", json=CHAT, headers=_h(key)).status_code for _ in range(3)
    ]
    assert codes == [200, 200, 200]
    r = env.post("/v1/chat/completions", json=CHAT, headers=_h(key))
    assert r.status_code == 429
    # Retry-After: when the first of the three leaves the 60 s window, to the second.
    due = first + 60 - time.time()
    assert abs(int(r.headers["Retry-After"]) - due) <= 1.5, (r.headers["Retry-After"], due)
    err = r.json()["error"]
    assert err["type"] == "rate_limit_error" and err["code"] == "rate_limit_exceeded"
    assert "3 a minute" in err["message"] and "app" in err["message"]
    # Other keys are not affected; the refused request reached no engine.
    assert env.post("/v1/chat/completions", json=CHAT, headers=_h(other)).status_code == 200
    assert len(env.backend.bodies) == 4


def test_tokens_a_day_are_charged_and_then_refused(env: Any) -> None:
    record, key = env.store.create("app", scopes=["inference"], tokens_per_day=25)
    day_used = lambda: env.store.tokens_used(record.id, _today())  # noqa: E731
    assert env.post("/v1/chat/completions", json=CHAT, headers=_h(key)).status_code == 200
    assert day_used() == 10
    # A stream whose client did not ask for usage: charged all the same, and the client
    # does not get the usage event it did not ask for.
    r = env.post("/v1/chat/completions", json={**CHAT, "stream": True}, headers=_h(key))
    assert r.status_code == 200
    events = [json.loads(e[6:]) for e in r.text.split("\n\n") if e.startswith("data: {")]
    assert all(e.get("choices") for e in events) and "usage" not in events[-1]
    assert env.backend.bodies[-1]["stream_options"] == {"include_usage": True}
    assert day_used() == 20
    # One more fits (20 < 25) and goes over; the next is refused until midnight UTC.
    assert env.post("/v1/chat/completions", json=CHAT, headers=_h(key)).status_code == 200
    r = env.post("/v1/chat/completions", json=CHAT, headers=_h(key))
    assert r.status_code == 429
    assert r.json()["error"]["code"] == "token_quota_exceeded"
    assert "30 of its 25 tokens" in r.json()["error"]["message"]
    # Retry-After: the seconds left until midnight UTC, when the day's count starts anew.
    now = datetime.now(UTC)
    midnight = (now + timedelta(days=1)).replace(hour=0, minute=0, second=0, microsecond=0)
    due = max(1.0, (midnight - now).total_seconds())
    assert abs(int(r.headers["Retry-After"]) - due) <= 1.5, (r.headers["Retry-After"], due)


def test_a_client_that_asked_for_usage_still_gets_it(env: Any) -> None:
    _record, key = env.store.create("app", scopes=["inference"], tokens_per_day=1000)
    body = {**CHAT, "stream": True, "stream_options": {"include_usage": True}}
    r = env.post("/v1/chat/completions", json=body, headers=_h(key))
    events = [json.loads(e[6:]) for e in r.text.split("\n\n") if e.startswith("data: {")]
    assert events[-1]["usage"] == USAGE


def test_keys_without_limits_are_never_charged(env: Any) -> None:
    record, key = env.store.create("app", scopes=["inference"])
    for _ in range(5):
        r = env.post("/v1/chat/completions", json={**CHAT, "stream": True}, headers=_h(key))
        assert r.status_code == 200
    assert env.store.tokens_used(record.id, _today()) == 0
    assert "stream_options" not in env.backend.bodies[-1]  # the request is passed as sent


def test_limits_change_without_a_new_key(env: Any) -> None:
    _record, key = env.store.create("app", scopes=["inference"], requests_per_minute=1)
    assert env.post("/v1/chat/completions", json=CHAT, headers=_h(key)).status_code == 200
    assert env.post("/v1/chat/completions", json=CHAT, headers=_h(key)).status_code == 429
    record = env.store.set_limits("app", requests_per_minute=None)
    assert record.requests_per_minute is None
    assert env.post("/v1/chat/completions", json=CHAT, headers=_h(key)).status_code == 200


@pytest.mark.parametrize("bad", [0, -1, 1.5, True, "10"])
def test_bad_limits_are_refused(tmp_path: Path, bad: object) -> None:
    store = KeyStore(tmp_path / "state.sqlite")
    with pytest.raises(BadRequest, match="requests_per_minute"):
        store.create("x", requests_per_minute=bad)  # type: ignore[arg-type]
    assert store.list() == []  # nothing half-made


def test_the_window_slides() -> None:
    now = [1000.0]
    q = Quotas(None, clock=lambda: now[0])

    class Key:
        id, name, requests_per_minute, tokens_per_day = "k", "k", 2, None

    q.admit_sync(Key())
    now[0] += 30
    q.admit_sync(Key())
    with pytest.raises(Saturated) as info:
        q.admit_sync(Key())
    assert info.value.retry_after == pytest.approx(30)
    now[0] += 30.5  # the first request left the window
    q.admit_sync(Key())


def test_cli_sets_and_shows_limits(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from qingliang.platform.cli.main import app

    monkeypatch.setenv("QINGLIANG_HOME", str(tmp_path))
    runner = CliRunner()
    out = runner.invoke(app, ["keys", "create", "app", "--rpm", "60", "--tokens-per-day", "5000"])
    assert out.exit_code == 0, out.output
    assert "60 requests/min, 5000 tokens/day" in out.output
    out = runner.invoke(app, ["keys", "limits", "app", "--rpm", "none"])
    assert out.exit_code == 0 and "5000 tokens/day" in out.output
    assert "requests/min" not in out.output
    out = runner.invoke(app, ["keys", "limits", "app", "--rpm", "lots"])
    assert out.exit_code != 0 and "--rpm must be a whole number" in out.output
    listed = runner.invoke(app, ["keys", "list"], env={"COLUMNS": "200"})
    assert "5000 tokens/day" in listed.output


def _today() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%d")


def test_keys_list_shows_whole_ids_in_a_narrow_terminal(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What `keys list` prints is what `keys revoke` takes, even 80 columns wide (the id
    was cut to ``ql-4a017…``, and revoking that failed)."""
    from qingliang.platform.cli.main import app

    monkeypatch.setenv("QINGLIANG_HOME", str(tmp_path))
    store = KeyStore(tmp_path / "state.sqlite")
    record, key = store.create("my-app")
    runner = CliRunner()
    listed = runner.invoke(app, ["keys", "list"], env={"COLUMNS": "80"})
    assert record.prefix in listed.output, listed.output
    out = runner.invoke(app, ["keys", "revoke", record.prefix])
    assert out.exit_code == 0, out.output
    assert store.verify(key) is None

"""Gateway request limits: body sizes by route (from Content-Length and while streaming),
JSON nesting, agent attachments, generation parameters, /readyz without a key, and the
file modes of the data directory's SQLite files.

The app is the real one over the fake backend and embedder of ``test_gateway`` and real
API keys; chunked and lying bodies are sent by driving the ASGI app directly, since
TestClient always sends a body whole with its length. No Ray, no sockets.
"""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from qingliang.platform.errors import BadRequest
from qingliang.platform.gateway.app import create_app
from qingliang.platform.gateway.http.limits import (
    BodyTooLarge,
    body_limit,
    check_attachments,
    json_depth,
    parse_json_body,
)
from qingliang.platform.gateway.http.params import check_generation
from qingliang.platform.settings import GatewayLimits
from qingliang.platform.storage.keys import KeyStore
from tests.unit.gateway.test_gateway import (
    ENTRIES,
    FakeBackend,
    FakeEmbedder,
    StoreAuth,
    assert_openai_error,
)

KiB = 1024
SMALL = GatewayLimits(
    max_json_body_bytes=4 * KiB,
    max_chat_body_bytes=4 * KiB,
    max_agent_body_bytes=16 * KiB,
    max_upload_bytes=8 * KiB,
    max_attachments=2,
    max_attachment_bytes=2 * KiB,
    max_n=4,
)
MESSAGES = [{"role": "user", "content": "hi"}]


class FakeKnowledge:
    def __init__(self) -> None:
        self.calls: list[tuple[str, str | None, dict]] = []

    async def call(
        self, method: str, kb: str | None, tenant: str | None, actor: str, kwargs: dict
    ) -> Any:
        self.calls.append((method, kb, kwargs))
        return {"ok": True}


class FakeAgents:
    def __init__(self) -> None:
        self.started: list[dict] = []

    async def call(self, method: str, *args: Any) -> Any:
        return {"id": "run_1", "object": "agent.run"}

    async def stream(
        self, method: str, tenant: str | None, all_tenants: bool, actor: str, kwargs: dict
    ) -> AsyncIterator[dict]:
        self.started.append(kwargs["body"])
        yield {"type": "run", "run_id": "run_1", "graph": kwargs.get("graph")}


@pytest.fixture
def backend() -> FakeBackend:
    return FakeBackend(list(ENTRIES))


@pytest.fixture
def keys(tmp_path: Path) -> KeyStore:
    return KeyStore(tmp_path / "state.sqlite")


@pytest.fixture
def key(keys: KeyStore) -> str:
    # Every route is called here: the operator's kind of key.
    return keys.create("ci", scopes=("admin",))[1]


@pytest.fixture
def parts() -> dict[str, Any]:
    return {"knowledge": FakeKnowledge(), "agents": FakeAgents(), "embedder": FakeEmbedder()}


def build(backend: FakeBackend, keys: KeyStore, parts: dict, limits: GatewayLimits | None) -> Any:
    return create_app(
        backend,
        parts["embedder"],
        StoreAuth(keys),
        parts["knowledge"],
        agents=parts["agents"],
        limits=limits,
    )


@pytest.fixture
def app(backend: FakeBackend, keys: KeyStore, parts: dict) -> Any:
    return build(backend, keys, parts, SMALL)


@pytest.fixture
def client(app: Any, key: str) -> Iterator[TestClient]:
    with TestClient(app, headers={"Authorization": f"Bearer {key}"}) as c:
        yield c


async def asgi(
    app: Any,
    path: str,
    chunks: list[bytes],
    headers: dict[str, str] | None = None,
    method: str = "POST",
) -> tuple[int, dict, int]:
    """Send ``chunks`` as the body of one request; (status, JSON answer, chunks read)."""
    pending = list(chunks)
    read = 0
    sent: list[dict] = []

    async def receive() -> dict:
        nonlocal read
        if not pending:
            return {"type": "http.disconnect"}
        read += 1
        chunk = pending.pop(0)
        return {"type": "http.request", "body": chunk, "more_body": bool(pending)}

    async def send(message: dict) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "server": ("gw", 80),
        "client": ("127.0.0.1", 5000),
        "headers": [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()],
    }
    await app(scope, receive, send)
    start = next(m for m in sent if m["type"] == "http.response.start")
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return start["status"], json.loads(body), read


def too_large(error: dict, route: str, setting: str) -> None:
    assert error["code"] == "request_too_large"
    assert error["type"] == "invalid_request_error"
    assert route in error["message"] and setting in error["message"]


# ------------------------------------------------------------------------ body sizes


def test_chat_body_over_the_default_limit_is_413_unread(
    backend: FakeBackend, keys: KeyStore, key: str, parts: dict
) -> None:
    app = build(backend, keys, parts, None)  # the defaults: chat bodies (images) up to 32 MiB
    filler = "x" * (33 * 1024 * 1024)
    body = {"model": "qwen", "messages": [{"role": "user", "content": filler}]}
    with TestClient(app, headers={"Authorization": f"Bearer {key}"}) as c:
        r = c.post("/v1/chat/completions", json=body)
    error = assert_openai_error(r, 413)
    too_large(error, "POST /v1/chat/completions", "QINGLIANG_MAX_CHAT_BODY_BYTES")
    assert "32 MiB" in error["message"]
    assert backend.calls == []


async def test_a_declared_length_over_the_limit_is_refused_before_reading(app: Any) -> None:
    status, answer, read = await asgi(
        app, "/v1/chat/completions", [b"{}"], {"content-length": str(5 * KiB)}
    )
    assert status == 413 and read == 0
    too_large(answer["error"], "POST /v1/chat/completions", "QINGLIANG_MAX_CHAT_BODY_BYTES")


@pytest.mark.parametrize("declared", [None, "10"])
async def test_a_chunked_or_lying_body_is_refused_once_past_the_limit(
    app: Any, key: str, backend: FakeBackend, declared: str | None
) -> None:
    headers = {"authorization": f"Bearer {key}", "content-type": "application/json"}
    if declared is not None:
        headers["content-length"] = declared  # says 10 bytes, sends 40 KiB
    chunks = [b'{"model": "qwen", "messages": [{"role": "user", "content": "'] + [b"x" * KiB] * 40
    status, answer, read = await asgi(app, "/v1/chat/completions", chunks, headers)
    assert status == 413
    too_large(answer["error"], "POST /v1/chat/completions", "QINGLIANG_MAX_CHAT_BODY_BYTES")
    assert read <= 6  # stopped at the 4 KiB limit, not after 40 chunks
    assert backend.calls == []


async def test_a_chunked_body_under_the_limit_is_served(app: Any, key: str) -> None:
    headers = {"authorization": f"Bearer {key}", "content-type": "application/json"}
    raw = json.dumps({"model": "qwen", "messages": MESSAGES}).encode()
    status, answer, _ = await asgi(app, "/v1/chat/completions", [raw[:10], raw[10:]], headers)
    assert status == 200, answer


def test_embeddings_over_the_limit_is_413(client: TestClient, parts: dict) -> None:
    body = {"model": "multilingual-e5-small", "input": ["x" * KiB] * 8}
    error = assert_openai_error(client.post("/v1/embeddings", json=body), 413)
    too_large(error, "POST /v1/embeddings", "QINGLIANG_MAX_JSON_BODY_BYTES")
    assert parts["embedder"].calls == []


def test_upload_has_its_own_limit(client: TestClient, parts: dict) -> None:
    # 6 KiB: over the JSON limit, under the upload limit.
    r = client.post("/v1/knowledge/kb/documents", files={"file": ("a.txt", b"a" * 6 * KiB)})
    assert r.status_code == 200, r.text
    ((method, kb, kwargs),) = parts["knowledge"].calls
    assert (method, kb, kwargs["filename"], len(kwargs["data"])) == ("upload", "kb", "a.txt", 6144)

    r = client.post("/v1/knowledge/kb/documents", files={"file": ("b.txt", b"b" * 9 * KiB)})
    error = assert_openai_error(r, 413)
    too_large(error, "POST /v1/knowledge/kb/documents", "QINGLIANG_MAX_UPLOAD_BYTES")
    assert "8 KiB" in error["message"]
    assert len(parts["knowledge"].calls) == 1


async def test_a_chunked_upload_is_counted_too(app: Any, key: str, parts: dict) -> None:
    boundary = "b0undary"
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="a.txt"\r\n'
        "Content-Type: text/plain\r\n\r\n"
    ).encode()
    headers = {
        "authorization": f"Bearer {key}",
        "content-type": f"multipart/form-data; boundary={boundary}",
    }
    chunks = [head] + [b"z" * KiB] * 200 + [f"\r\n--{boundary}--\r\n".encode()]
    status, answer, read = await asgi(app, "/v1/knowledge/kb/documents", chunks, headers)
    assert status == 413, answer
    too_large(answer["error"], "POST /v1/knowledge/kb/documents", "QINGLIANG_MAX_UPLOAD_BYTES")
    assert read < 200 and parts["knowledge"].calls == []


def test_other_knowledge_routes_take_json_limit(client: TestClient, parts: dict) -> None:
    r = client.post("/v1/knowledge/kb/search", json={"query": "q" * 5 * KiB})
    too_large(assert_openai_error(r, 413), "POST /v1/knowledge/kb/search", "JSON_BODY")
    assert parts["knowledge"].calls == []


def test_agent_runs_take_the_agent_limit(client: TestClient, parts: dict) -> None:
    one = base64.b64encode(b"p" * KiB).decode()
    body = {"input": "hi", "attachments": [{"name": "a.txt", "data": one}], "stream": False}
    r = client.post("/v1/agents/desk/runs", json={**body, "input": "x" * 5 * KiB})
    assert r.status_code == 200, r.text  # 6+ KiB: over the JSON limit, under the agent one
    r = client.post("/v1/agents/desk/runs", json={**body, "input": "x" * 17 * KiB})
    error = assert_openai_error(r, 413)
    too_large(error, "POST /v1/agents/desk/runs", "QINGLIANG_MAX_AGENT_BODY_BYTES")
    assert len(parts["agents"].started) == 1


def test_too_many_or_too_large_attachments(client: TestClient, parts: dict) -> None:
    small = {"name": "a.txt", "data": base64.b64encode(b"p" * 10).decode()}
    r = client.post("/v1/agents/desk/runs", json={"input": "hi", "attachments": [small] * 3})
    error = assert_openai_error(r, 400, param="attachments")
    assert "at most 2" in error["message"] and "QINGLIANG_MAX_ATTACHMENTS" in error["message"]
    big = {"name": "b.txt", "data": base64.b64encode(b"q" * 3 * KiB).decode()}
    r = client.post("/v1/agents/desk/runs", json={"input": "hi", "attachments": [small, big]})
    error = assert_openai_error(r, 413, param="attachments[1]")
    assert "QINGLIANG_MAX_ATTACHMENT_BYTES" in error["message"]
    assert parts["agents"].started == []


def test_check_attachments_counts_decoded_bytes() -> None:
    limits = GatewayLimits(max_attachment_bytes=3)
    check_attachments([{"name": "a", "data": base64.b64encode(b"abc").decode()}], limits)
    with pytest.raises(BodyTooLarge):
        check_attachments([{"name": "a", "data": base64.b64encode(b"abcd").decode()}], limits)
    check_attachments("not a list: the service says so", limits)


def test_body_limit_by_route() -> None:
    limits = GatewayLimits()
    assert body_limit("POST", "/v1/knowledge/k/documents", limits).limit == 50 * 1024 * 1024
    assert body_limit("POST", "/v1/knowledge/k/documents", limits).bound > 50 * 1024 * 1024
    assert body_limit("POST", "/v1/agents/desk/runs", limits).limit == 32 * 1024 * 1024
    assert body_limit("POST", "/v1/agents/runs/run_1/resume", limits).limit == 32 * 1024 * 1024
    for path in ("/v1/chat/completions", "/v1/responses"):  # images travel in them
        assert body_limit("POST", path, limits).limit == 32 * 1024 * 1024
    for path in ("/v1/completions", "/v1/embeddings", "/v1/feedback", "/v1/pipelines"):
        assert body_limit("POST", path, limits).limit == 4 * 1024 * 1024


def test_limits_from_the_environment() -> None:
    env = {"QINGLIANG_MAX_UPLOAD_BYTES": "1024", "QINGLIANG_MAX_N": "2"}
    limits = GatewayLimits.from_env(env)
    assert (limits.max_upload_bytes, limits.max_n) == (1024, 2)
    assert limits.max_json_body_bytes == GatewayLimits().max_json_body_bytes
    with pytest.raises(ValueError, match="QINGLIANG_MAX_N='lots' is not an integer"):
        GatewayLimits.from_env({"QINGLIANG_MAX_N": "lots"})
    with pytest.raises(ValueError, match="QINGLIANG_MAX_ATTACHMENTS='0'"):
        GatewayLimits.from_env({"QINGLIANG_MAX_ATTACHMENTS": "0"})


# --------------------------------------------------------------------- JSON nesting

DEEP = {
    "lists": b"[" * 100_000 + b"]" * 100_000,
    "objects": b'{"a":' * 100_000 + b"1" + b"}" * 100_000,
    "in a field": b'{"model": "qwen", "messages": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
    "under the decoder's limit": b'{"a":' * 200 + b"1" + b"}" * 200,
}
ROUTES = [
    "/v1/chat/completions",
    "/v1/completions",
    "/v1/embeddings",
    "/v1/knowledge/kb/search",
    "/v1/agents/desk/runs",
    "/v1/feedback",
]


@pytest.mark.parametrize("route", ROUTES)
@pytest.mark.parametrize("shape", list(DEEP))
def test_deeply_nested_json_is_400(
    backend: FakeBackend, keys: KeyStore, key: str, parts: dict, route: str, shape: str
) -> None:
    app = build(backend, keys, parts, None)
    with TestClient(app, headers={"Authorization": f"Bearer {key}"}) as c:
        r = c.post(route, content=DEEP[shape], headers={"content-type": "application/json"})
    error = assert_openai_error(r, 400)
    assert "nested too deeply" in error["message"]
    assert backend.calls == [] and parts["knowledge"].calls == [] and not parts["agents"].started


def test_parse_json_body() -> None:
    assert parse_json_body(b'{"a": [1, {"b": []}]}') == {"a": [1, {"b": []}]}
    assert parse_json_body(b"  ", allow_empty=True) == {}
    nested = json.dumps(json.loads("[" * 63 + "]" * 63))
    assert parse_json_body(f'{{"a": {nested}}}'.encode())  # 64 levels: allowed
    with pytest.raises(BadRequest, match="at most 64 levels"):
        parse_json_body(f'{{"a": [{nested}]}}'.encode())
    for raw, message in [
        (b"", "not valid JSON"),
        (b"{nope", "not valid JSON"),
        (b"\xff\xfe", "not valid JSON"),
        (b"[1]", "must be a JSON object"),
    ]:
        with pytest.raises(BadRequest, match=message):
            parse_json_body(raw)


def test_json_depth_counts_containers_only() -> None:
    assert json_depth(1) == 0
    assert json_depth({"a": "[[[[not counted]]]]"}) == 1
    assert json_depth([[], [[1]], {}]) == 3
    assert json_depth([[[[[]]]]], stop_past=2) == 3


# ------------------------------------------------------------- generation parameters

BAD_PARAMS = [
    ({"max_tokens": -5}, "max_tokens"),
    ({"max_tokens": 0}, "max_tokens"),
    ({"max_tokens": True}, "max_tokens"),
    ({"max_tokens": 1.5}, "max_tokens"),
    ({"max_completion_tokens": "100"}, "max_completion_tokens"),
    ({"n": 1e9}, "n"),
    ({"n": 0}, "n"),
    ({"n": 5}, "n"),  # the cap in SMALL is 4
    ({"temperature": 2.5}, "temperature"),
    ({"temperature": -0.1}, "temperature"),
    ({"temperature": "hot"}, "temperature"),
    ({"top_p": 0}, "top_p"),
    ({"top_p": 1.01}, "top_p"),
    ({"presence_penalty": 3}, "presence_penalty"),
    ({"frequency_penalty": -2.5}, "frequency_penalty"),
    ({"logprobs": 1}, "logprobs"),
    ({"top_logprobs": 21}, "top_logprobs"),
    ({"stop": ["a", "b", "c", "d", "e"]}, "stop"),
    ({"stop": [1]}, "stop"),
    ({"stop": 7}, "stop"),
    ({"seed": 1.5}, "seed"),
    ({"seed": 2**64}, "seed"),
    ({"messages": []}, "messages"),
    ({"messages": "hi"}, "messages"),
    ({"messages": ["hi"]}, "messages[0]"),
    ({"messages": [*MESSAGES, {"role": "alien", "content": "x"}]}, "messages[1].role"),
    ({"messages": [{"content": "no role"}]}, "messages[0].role"),
]


@pytest.mark.parametrize(("extra", "param"), BAD_PARAMS)
def test_bad_generation_parameters_are_400_naming_them(
    client: TestClient, backend: FakeBackend, extra: dict, param: str
) -> None:
    body = {"model": "qwen", "messages": MESSAGES, **extra}
    error = assert_openai_error(client.post("/v1/chat/completions", json=body), 400, param)
    assert error["type"] == "invalid_request_error"
    assert backend.calls == []


def test_good_generation_parameters_reach_the_backend(
    client: TestClient, backend: FakeBackend
) -> None:
    params = {
        "max_tokens": 16,
        "max_completion_tokens": None,
        "n": 4,
        "temperature": 0,
        "top_p": 1,
        "presence_penalty": -2,
        "frequency_penalty": 2.0,
        "logprobs": True,
        "top_logprobs": 20,
        "stop": ["\n", "。", "END", "##"],
        "seed": -1,
        "top_k": 5,  # vLLM's extras go to the engine too (the field policy: test_gateway_bodies)
    }
    messages = [{"role": r, "content": "x"} for r in ("system", "developer", "user")]
    body = {"model": "qwen", "messages": messages, **params}
    assert client.post("/v1/chat/completions", json=body).status_code == 200
    assert backend.calls[0][3] == body


def test_legacy_completions_take_integer_logprobs(client: TestClient) -> None:
    r = client.post("/v1/completions", json={"model": "tiny", "prompt": "x", "logprobs": 5})
    assert r.status_code == 200
    r = client.post("/v1/completions", json={"model": "tiny", "prompt": "x", "logprobs": True})
    assert_openai_error(r, 400, "logprobs")
    r = client.post("/v1/completions", json={"model": "tiny", "prompt": "x", "max_tokens": -5})
    assert_openai_error(r, 400, "max_tokens")


def test_check_generation_is_pure() -> None:
    check_generation({"messages": MESSAGES, "temperature": 0.7}, "chat")
    check_generation({"prompt": "x", "stop": "\n", "n": 16}, "completion")
    with pytest.raises(BadRequest) as info:
        check_generation({"prompt": "x", "n": 17}, "completion")
    assert info.value.param == "n" and "from 1 to 16" in info.value.message
    with pytest.raises(BadRequest) as info:
        check_generation({"prompt": "x", "temperature": float("nan")}, "completion")
    assert info.value.param == "temperature"


# ----------------------------------------------------------------------------- readyz


def test_readyz_without_a_key_shows_no_deployment_names(
    client: TestClient, backend: FakeBackend, key: str
) -> None:
    for headers in ({"Authorization": ""}, {"Authorization": "Bearer ql-nope"}):
        r = client.get("/readyz", headers=headers)
        assert r.status_code == 200 and r.json() == {"status": "ready"}
    backend.states["tiny"] = "starting"
    r = client.get("/readyz", headers={"Authorization": ""})
    assert r.status_code == 503 and r.json() == {"status": "not ready"}
    r = client.get("/readyz")  # the client's own valid key
    assert r.json()["deployments"] == {"qwen": "ready", "tiny": "starting"}
    assert client.get("/healthz", headers={"Authorization": ""}).status_code == 200


def test_readyz_without_auth_shows_deployments(backend: FakeBackend, keys: KeyStore) -> None:
    app = create_app(backend, None, StoreAuth(keys, enabled=False))
    with TestClient(app) as c:
        assert c.get("/readyz").json()["deployments"] == {"qwen": "ready", "tiny": "ready"}

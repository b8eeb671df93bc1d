"""The OpenAI-compatible gateway app over a fake Backend and Embedder, with real API keys.

Requests go through Starlette's TestClient, and through the official ``openai`` client
over an in-process ASGI transport, so the SDK itself parses our bodies, streams and
errors. No Ray, no sockets.
"""

from __future__ import annotations

import base64
import json
import struct
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx2
import openai
import pytest
from fastapi.testclient import TestClient

from qingliang.platform.errors import ApiError, BadRequest, NotFound, Saturated
from qingliang.platform.gateway.app import create_app
from qingliang.platform.storage.keys import KeyStore
from qingliang.serving.engine import StreamChunk
from qingliang.serving.traffic import ModelEntry, parse_model

EMBED_MODEL = "multilingual-e5-small"


def chat_body(content: str = "hello") -> dict:
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "created": 1,
        "model": "qwen",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": content},
                "finish_reason": "stop",
            }
        ],
        "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4},
    }


def chunk(content: str, finish: str | None = None) -> StreamChunk:
    return StreamChunk.of(
        {
            "id": "chatcmpl-1",
            "object": "chat.completion.chunk",
            "created": 1,
            "model": "qwen",
            "choices": [{"index": 0, "delta": {"content": content}, "finish_reason": finish}],
        }
    )


def wire(c: StreamChunk) -> str:
    """The chunk as its engine wrote it before chunks were typed (compact JSON)."""
    return f"data: {json.dumps(c.data, ensure_ascii=False, separators=(',', ':'))}\n\n"


DONE = "data: [DONE]\n\n"
CHUNKS = [chunk("Hel"), chunk("lo"), chunk("", "stop")]


class FakeBackend:
    """Canned answers; ``error`` is raised before the first chunk, ``mid_error`` after two."""

    def __init__(self, entries: list[ModelEntry]) -> None:
        self.entries = entries
        self.calls: list[tuple] = []
        self.rejections: list[tuple] = []
        self.states: dict[str, str] = {e.name: "ready" for e in entries}
        self.chunks = list(CHUNKS)
        self.error: ApiError | None = None
        self.mid_error: ApiError | None = None

    def models(self) -> list[ModelEntry]:
        return list(self.entries)

    async def generate(self, deployment: str, endpoint: str, body: dict, adapter: str | None):
        self.calls.append(("generate", deployment, endpoint, body, adapter))
        if self.error is not None:
            raise self.error
        return chat_body()

    async def stream(
        self, deployment: str, endpoint: str, body: dict, adapter: str | None
    ) -> AsyncIterator[StreamChunk]:
        self.calls.append(("stream", deployment, endpoint, body, adapter))
        if self.error is not None:
            raise self.error
        for i, chunk in enumerate(self.chunks):
            if i == 2 and self.mid_error is not None:
                raise self.mid_error
            yield chunk

    async def ready(self) -> dict[str, str]:
        return dict(self.states)

    def rejected(self, deployment: str, adapter: str | None, endpoint: str) -> None:
        self.rejections.append((deployment, adapter, endpoint))


class FakeEmbedder:
    model_id = EMBED_MODEL

    def __init__(self) -> None:
        self.calls: list[tuple[list[str], str]] = []

    async def embed(self, texts: list[str], input_type: str) -> tuple[list[list[float]], int]:
        self.calls.append((texts, input_type))
        return [[float(i), 0.5, -1.25] for i in range(len(texts))], 2 * len(texts)


class StoreAuth:
    """The production adapter's shape (auth.keys.KeyAuth) over a KeyStore."""

    def __init__(self, store: KeyStore, enabled: bool = True) -> None:
        self.enabled = enabled
        self._store = store

    def verify(self, token: str) -> object:
        return self._store.verify(token)


ENTRIES = [
    ModelEntry(
        "qwen",
        ("sql", "tutor"),
        created=7,
        labels={"team": "a"},
        description="coder",
        image_mode="native",
    ),
    ModelEntry("tiny"),
]


@pytest.fixture
def backend() -> FakeBackend:
    return FakeBackend(list(ENTRIES))


@pytest.fixture
def embedder() -> FakeEmbedder:
    return FakeEmbedder()


@pytest.fixture
def keys(tmp_path: Path) -> KeyStore:
    return KeyStore(tmp_path / "state.sqlite")


@pytest.fixture
def key(keys: KeyStore) -> str:
    return keys.create("ci")[1]


@pytest.fixture
def app(backend: FakeBackend, embedder: FakeEmbedder, keys: KeyStore) -> Any:
    return create_app(backend, embedder, StoreAuth(keys))


@pytest.fixture
def client(app: Any, key: str) -> Iterator[TestClient]:
    with TestClient(app, headers={"Authorization": f"Bearer {key}"}) as c:
        yield c


@pytest.fixture
def oai(app: Any, key: str) -> openai.AsyncOpenAI:
    http = httpx2.AsyncClient(transport=httpx2.ASGITransport(app=app), base_url="http://gw")
    return openai.AsyncOpenAI(api_key=key, base_url="http://gw/v1", http_client=http, max_retries=0)


def assert_openai_error(r: Any, status: int, param: str | None = None) -> dict:
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/json")
    body = r.json()
    assert set(body) == {"error"}
    assert set(body["error"]) == {"message", "type", "param", "code"}
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]
    if param is not None:
        assert body["error"]["param"] == param
    return body["error"]


def chat(client: TestClient, model: object, **extra: Any) -> Any:
    body = {"model": model, "messages": [{"role": "user", "content": "hi"}], **extra}
    return client.post("/v1/chat/completions", json=body)


# ----------------------------------------------------------------------------- model


@pytest.mark.parametrize(
    ("value", "expected"),
    [("qwen", ("qwen", None)), ("qwen:sql", ("qwen", "sql"))],
)
def test_parse_model(value: str, expected: tuple) -> None:
    assert parse_model(value) == expected


@pytest.mark.parametrize("value", ["", "   ", "a:", "a:b:c", ":sql", 42, None, ["qwen"]])
def test_parse_model_rejects(value: object) -> None:
    with pytest.raises(BadRequest) as info:
        parse_model(value)
    assert info.value.param == "model"


@pytest.mark.parametrize("value", ["", "qwen:", "qwen:sql:x", ":sql", 42, None, {"a": 1}])
def test_bad_model_is_400(client: TestClient, backend: FakeBackend, value: object) -> None:
    err = assert_openai_error(chat(client, value), 400, param="model")
    assert err["type"] == "invalid_request_error"
    assert backend.calls == []


def test_missing_model_is_400(client: TestClient) -> None:
    r = client.post("/v1/chat/completions", json={"messages": []})
    assert_openai_error(r, 400, param="model")


def test_unknown_deployment_is_404_with_hint(client: TestClient, backend: FakeBackend) -> None:
    err = assert_openai_error(chat(client, "qwenn"), 404, param="model")
    assert "did you mean 'qwen'?" in err["message"]
    assert err["code"] == "model_not_found"
    assert err["type"] == "not_found_error"
    assert backend.calls == []


def test_unknown_deployment_without_close_match(client: TestClient) -> None:
    err = assert_openai_error(chat(client, "zzzzzzzz"), 404, param="model")
    assert "did you mean" not in err["message"]


def test_unknown_adapter_lists_loaded(client: TestClient) -> None:
    err = assert_openai_error(chat(client, "qwen:nope"), 404, param="model")
    assert "'nope'" in err["message"] and "loaded: sql, tutor" in err["message"]
    err = assert_openai_error(chat(client, "tiny:sql"), 404, param="model")
    assert "loaded:" not in err["message"]  # tiny has no adapters to list


@pytest.mark.parametrize("raw", [b"{not json", b"", b"[1, 2]", b'"qwen"', b"null"])
def test_malformed_body_is_400(client: TestClient, raw: bytes) -> None:
    r = client.post(
        "/v1/chat/completions", content=raw, headers={"content-type": "application/json"}
    )
    assert_openai_error(r, 400)


@pytest.mark.parametrize("value", ["true", 1, {}])
def test_stream_must_be_bool(client: TestClient, backend: FakeBackend, value: object) -> None:
    assert_openai_error(chat(client, "qwen", stream=value), 400, param="stream")
    assert backend.calls == []


def test_stream_null_is_not_set(client: TestClient, backend: FakeBackend) -> None:
    # As for every OpenAI parameter, null means "not set": a whole answer.
    r = chat(client, "qwen", stream=None)
    assert r.status_code == 200 and r.json()["choices"][0]["message"]["content"] == "hello"
    assert backend.calls[0][0] == "generate"


# ------------------------------------------------------------------------ generation


def test_chat_non_stream(client: TestClient, backend: FakeBackend) -> None:
    r = chat(client, "qwen:sql", max_tokens=4)
    assert r.status_code == 200
    trace = {"deployment": "qwen", "adapter": "sql", "adapter_ref": None}
    assert r.json() == {**chat_body(), "qingliang": trace}
    (call,) = backend.calls
    assert call[:3] == ("generate", "qwen", "chat")
    assert call[3]["max_tokens"] == 4 and call[3]["model"] == "qwen:sql"
    assert call[4] == "sql"


def test_completion_endpoint(client: TestClient, backend: FakeBackend) -> None:
    r = client.post("/v1/completions", json={"model": "tiny", "prompt": "x"})
    assert r.status_code == 200
    assert backend.calls[0][:3] == ("generate", "tiny", "completion")
    assert backend.calls[0][4] is None


def test_stream_relays_chunks_in_order(client: TestClient, backend: FakeBackend) -> None:
    with client.stream(
        "POST",
        "/v1/chat/completions",
        json={"model": "qwen", "messages": [{"role": "user", "content": "hi"}], "stream": True},
    ) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        assert r.headers["cache-control"] == "no-cache"
        text = "".join(r.iter_text())
    # The first event says what made the answer; the rest are relayed as they came.
    first = {**CHUNKS[0].data}
    first["qingliang"] = {"deployment": "qwen", "adapter": None, "adapter_ref": None}
    assert text == f"data: {json.dumps(first)}\n\n" + "".join(map(wire, CHUNKS[1:])) + DONE
    assert backend.calls[0][:3] == ("stream", "qwen", "chat")


def test_empty_stream_still_ends_with_done(client: TestClient, backend: FakeBackend) -> None:
    backend.chunks = []
    r = chat(client, "qwen", stream=True)
    assert r.status_code == 200
    assert r.text == DONE


@pytest.mark.parametrize(
    ("error", "status"),
    [
        (BadRequest("prompt is too long", param="messages"), 400),
        (NotFound("adapter went away", param="model"), 404),
        (Saturated("busy", retry_after=2.4), 429),
    ],
)
@pytest.mark.parametrize("stream", [False, True])
def test_backend_error_before_output_keeps_status(
    client: TestClient, backend: FakeBackend, error: ApiError, status: int, stream: bool
) -> None:
    backend.error = error
    err = assert_openai_error(chat(client, "qwen:sql", stream=stream), status)
    assert err["message"] == error.message
    assert err["param"] == error.param
    if status == 429:
        assert backend.rejections == [("qwen", "sql", "chat")]
    else:
        assert backend.rejections == []


def test_saturated_sets_retry_after(client: TestClient, backend: FakeBackend) -> None:
    backend.error = Saturated("deployment is saturated", retry_after=2.6)
    r = chat(client, "tiny")
    err = assert_openai_error(r, 429)
    assert r.headers["retry-after"] == "3"
    assert err["type"] == "rate_limit_error"
    assert backend.rejections == [("tiny", None, "chat")]
    backend.error = Saturated("x", retry_after=0.01)
    assert chat(client, "tiny").headers["retry-after"] == "1"  # never 0


def test_error_mid_stream_becomes_error_event(client: TestClient, backend: FakeBackend) -> None:
    backend.mid_error = NotFound("adapter unloaded mid-stream", param="model")
    r = chat(client, "qwen", stream=True)
    assert r.status_code == 200  # the headers had gone out
    events = [e for e in r.text.split("\n\n") if e]
    first = json.loads(events[0].removeprefix("data: "))
    assert first.pop("qingliang")["deployment"] == "qwen"
    assert first == CHUNKS[0].data
    assert events[1] == wire(CHUNKS[1]).strip()
    assert json.loads(events[2].removeprefix("data: ")) == {
        "error": {
            "message": "adapter unloaded mid-stream",
            "type": "not_found_error",
            "param": "model",
            "code": 404,
        }
    }
    assert events[3:] == ["data: [DONE]"]
    assert backend.rejections == []


# ------------------------------------------------------------------------------ auth


def test_missing_key_is_401(app: Any) -> None:
    with TestClient(app) as c:
        r = c.get("/v1/models")
        err = assert_openai_error(r, 401)
        assert r.headers["www-authenticate"] == "Bearer"
        assert err["type"] == "authentication_error"
        assert chat(c, "qwen").status_code == 401


@pytest.mark.parametrize("header", ["Basic abc", "Bearer", "Bearer   ", "ql-abc"])
def test_malformed_header_is_401(app: Any, header: str) -> None:
    with TestClient(app) as c:
        r = c.get("/v1/models", headers={"Authorization": header})
        assert_openai_error(r, 401)
        assert r.headers["www-authenticate"] == "Bearer"


def test_wrong_key_is_401(app: Any, key: str) -> None:
    wrong = key[:-4] + ("AAAA" if not key.endswith("AAAA") else "BBBB")
    with TestClient(app, headers={"Authorization": f"Bearer {wrong}"}) as c:
        err = assert_openai_error(c.get("/v1/models"), 401)
    assert "invalid or revoked" in err["message"]


def test_revoked_key_is_401(client: TestClient, keys: KeyStore) -> None:
    assert client.get("/v1/models").status_code == 200
    keys.revoke("ci")
    assert_openai_error(client.get("/v1/models"), 401)


def test_valid_key_lowercase_scheme(app: Any, key: str) -> None:
    with TestClient(app, headers={"Authorization": f"bearer {key}"}) as c:
        assert c.get("/v1/models").status_code == 200


def test_auth_disabled_needs_no_key(backend: FakeBackend, keys: KeyStore) -> None:
    app = create_app(backend, None, StoreAuth(keys, enabled=False))
    with TestClient(app) as c:
        assert c.get("/v1/models").status_code == 200
        assert chat(c, "qwen").status_code == 200


def test_health_and_readiness_need_no_key(app: Any) -> None:
    with TestClient(app) as c:
        r = c.get("/healthz")
        assert r.status_code == 200 and r.json()["status"] == "ok"
        assert c.get("/readyz").status_code == 200


# ---------------------------------------------------------------------------- models


def test_models_lists_deployments_adapters_and_embedder(client: TestClient) -> None:
    body = client.get("/v1/models").json()
    assert body["object"] == "list"
    by_id = {m["id"]: m for m in body["data"]}
    assert list(by_id) == ["qwen", "qwen:sql", "qwen:tutor", "tiny", EMBED_MODEL]
    assert by_id["qwen"]["labels"] == {"team": "a"}
    assert by_id["qwen"]["description"] == "coder"
    assert by_id["qwen"]["created"] == 7
    assert "parent" not in by_id["qwen"]
    assert by_id["qwen:sql"]["parent"] == "qwen"
    assert all(m["object"] == "model" and m["owned_by"] == "qingliang" for m in body["data"])
    # Only the embedder says it is not a chat model (the console's pickers leave it out).
    assert by_id[EMBED_MODEL]["endpoints"] == ["/v1/embeddings"]
    assert all("endpoints" not in m for i, m in by_id.items() if i != EMBED_MODEL)


def test_models_without_embedder(backend: FakeBackend, keys: KeyStore) -> None:
    with TestClient(create_app(backend, None, StoreAuth(keys, enabled=False))) as c:
        ids = [m["id"] for m in c.get("/v1/models").json()["data"]]
    assert EMBED_MODEL not in ids


@pytest.mark.parametrize("model_id", ["qwen", "qwen:tutor", EMBED_MODEL])
def test_get_model(client: TestClient, model_id: str) -> None:
    r = client.get(f"/v1/models/{model_id}")
    assert r.status_code == 200
    assert r.json()["id"] == model_id


@pytest.mark.parametrize("model_id", ["nope", "qwen:nope", "tiny:sql"])
def test_get_unknown_model_is_404(client: TestClient, model_id: str) -> None:
    err = assert_openai_error(client.get(f"/v1/models/{model_id}"), 404, param="model")
    assert err["code"] == "model_not_found"


# ------------------------------------------------------------------------ embeddings


def embed(client: TestClient, **body: Any) -> Any:
    return client.post("/v1/embeddings", json={"model": EMBED_MODEL, **body})


def test_embeddings_string_input(client: TestClient, embedder: FakeEmbedder) -> None:
    r = embed(client, input="hello")
    assert r.status_code == 200
    assert r.json() == {
        "object": "list",
        "model": EMBED_MODEL,
        "data": [{"object": "embedding", "index": 0, "embedding": [0.0, 0.5, -1.25]}],
        "usage": {"prompt_tokens": 2, "total_tokens": 2},
    }
    # No input_type: e5's query prefix, the one for symmetric similarity.
    assert embedder.calls == [(["hello"], "query")]


def test_embeddings_passage_when_asked(client: TestClient, embedder: FakeEmbedder) -> None:
    assert embed(client, input="a document", input_type="passage").status_code == 200
    assert embedder.calls == [(["a document"], "passage")]


def test_embeddings_list_input(client: TestClient, embedder: FakeEmbedder) -> None:
    r = embed(client, input=["a", "b", "c"], input_type="query", dimensions=384, user="u")
    assert r.status_code == 200
    body = r.json()
    assert [d["index"] for d in body["data"]] == [0, 1, 2]
    assert body["data"][2]["embedding"][0] == 2.0
    assert body["usage"]["total_tokens"] == 6
    assert embedder.calls == [(["a", "b", "c"], "query")]


#: cl100k_base ids (what tiktoken, and OpenAI's clients, make) of two texts.
WEATHER_IDS = {
    "今天天气很好": [37271, 36827, 36827, 30320, 242, 17599, 230, 53901],
    "The weather is nice today": [791, 9282, 374, 6555, 3432],
}


def test_embeddings_token_ids_are_embedded_as_their_text(
    client: TestClient, embedder: FakeEmbedder
) -> None:
    # LangChain's OpenAIEmbeddings sends lists of ids by default; one flat list is one input.
    r = embed(client, input=list(WEATHER_IDS.values()))
    assert r.status_code == 200, r.text
    assert len(r.json()["data"]) == 2
    assert embed(client, input=WEATHER_IDS["今天天气很好"], input_type="passage").status_code == 200
    assert embedder.calls == [(list(WEATHER_IDS), "query"), (["今天天气很好"], "passage")]


@pytest.mark.parametrize(
    ("ids", "param"),
    [([[791, 100300]], "input[0][1]"), ([[791], [1.5]], "input[1][0]"), ([[791], []], "input[1]")],
)
def test_embeddings_bad_token_ids_are_400_naming_the_item(
    client: TestClient, embedder: FakeEmbedder, ids: list, param: str
) -> None:
    assert_openai_error(embed(client, input=ids), 400, param=param)
    assert embedder.calls == []


def test_embeddings_base64(client: TestClient) -> None:
    r = embed(client, input=["a", "b"], encoding_format="base64")
    assert r.status_code == 200
    raw = base64.b64decode(r.json()["data"][1]["embedding"])
    assert struct.unpack("<3f", raw) == (1.0, 0.5, -1.25)


def test_embeddings_wrong_model_is_404(client: TestClient, embedder: FakeEmbedder) -> None:
    r = client.post("/v1/embeddings", json={"model": "qwen", "input": "x"})
    err = assert_openai_error(r, 404, param="model")
    assert EMBED_MODEL in err["message"]
    assert embedder.calls == []


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"input": []}, "input"),
        ({"input": ["a", 1]}, "input"),  # token ids are taken, mixed with text not
        ({"input": ["a", None]}, "input"),
        ({"input": None}, "input"),
        ({}, "input"),
        ({"input": ["x"] * 2049}, "input"),
        ({"input": "x", "encoding_format": "int8"}, "encoding_format"),
        ({"input": "x", "dimensions": 128}, "dimensions"),
        ({"input": "x", "input_type": "document"}, "input_type"),
        ({"input": "x", "temperature": 0}, "temperature"),
    ],
)
def test_embeddings_bad_request(
    client: TestClient, embedder: FakeEmbedder, body: dict, param: str
) -> None:
    assert_openai_error(embed(client, **body), 400, param=param)
    assert embedder.calls == []


def test_embeddings_2048_items_allowed(client: TestClient) -> None:
    assert embed(client, input=["x"] * 2048).status_code == 200


def test_embeddings_without_embedder_is_404(backend: FakeBackend, keys: KeyStore) -> None:
    with TestClient(create_app(backend, None, StoreAuth(keys, enabled=False))) as c:
        assert_openai_error(embed(c, input="x"), 404)


def test_embeddings_malformed_json_is_400(client: TestClient) -> None:
    r = client.post("/v1/embeddings", content=b"{", headers={"content-type": "application/json"})
    assert_openai_error(r, 400)


# ------------------------------------------------------------------- health, routing


def test_readyz_all_ready(client: TestClient) -> None:
    r = client.get("/readyz")
    assert r.status_code == 200
    assert r.json() == {"status": "ready", "deployments": {"qwen": "ready", "tiny": "ready"}}


def test_readyz_not_ready_is_503(client: TestClient, backend: FakeBackend) -> None:
    backend.states["tiny"] = "not ready: RayActorError"
    r = client.get("/readyz")
    assert r.status_code == 503
    assert r.json()["status"] == "not ready"
    assert r.json()["deployments"]["tiny"] == "not ready: RayActorError"


@pytest.mark.parametrize("path", ["/v1/nope", "/nope", "/v2/models"])
def test_unknown_route_is_openai_404(client: TestClient, path: str) -> None:
    err = assert_openai_error(client.get(path), 404)
    assert path in err["message"]


def test_wrong_method_is_openai_405(client: TestClient) -> None:
    r = client.get("/v1/chat/completions")
    err = assert_openai_error(r, 405)
    assert err["type"] == "invalid_request_error"
    assert r.headers["allow"] == "POST"
    assert_openai_error(client.post("/v1/models"), 405)


# ---------------------------------------------------------------- the openai client


async def test_openai_client_chat(oai: openai.AsyncOpenAI, backend: FakeBackend) -> None:
    out = await oai.chat.completions.create(
        model="qwen:tutor", messages=[{"role": "user", "content": "hi"}]
    )
    assert out.choices[0].message.content == "hello"
    assert out.usage is not None and out.usage.total_tokens == 4
    assert backend.calls[0][4] == "tutor"


async def test_openai_client_stream(oai: openai.AsyncOpenAI) -> None:
    stream = await oai.chat.completions.create(
        model="qwen", messages=[{"role": "user", "content": "hi"}], stream=True
    )
    parts = [c.choices[0].delta.content async for c in stream]
    assert parts == ["Hel", "lo", ""]


async def test_openai_client_mid_stream_error(
    oai: openai.AsyncOpenAI, backend: FakeBackend
) -> None:
    backend.mid_error = BadRequest("engine refused", param="messages")
    stream = await oai.chat.completions.create(
        model="qwen", messages=[{"role": "user", "content": "hi"}], stream=True
    )
    seen = []
    with pytest.raises(openai.APIError) as info:
        async for c in stream:
            seen.append(c.choices[0].delta.content)
    assert seen == ["Hel", "lo"]
    assert info.value.message == "engine refused"
    assert info.value.param == "messages"


@pytest.mark.parametrize(
    ("model", "error", "cls"),
    [
        ("qwenn", None, openai.NotFoundError),
        ("qwen:", None, openai.BadRequestError),
        ("qwen", Saturated("busy"), openai.RateLimitError),
        ("qwen", BadRequest("too long", param="messages"), openai.BadRequestError),
    ],
)
@pytest.mark.parametrize("stream", [False, True])
async def test_openai_client_errors(
    oai: openai.AsyncOpenAI,
    backend: FakeBackend,
    model: str,
    error: ApiError | None,
    cls: type[openai.APIStatusError],
    stream: bool,
) -> None:
    backend.error = error
    with pytest.raises(cls) as info:
        await oai.chat.completions.create(
            model=model, messages=[{"role": "user", "content": "hi"}], stream=stream
        )
    body = info.value.body
    assert isinstance(body, dict) and set(body) == {"message", "type", "param", "code"}
    if error is None:
        assert info.value.param == "model"


async def test_openai_client_auth(app: Any) -> None:
    http = httpx2.AsyncClient(transport=httpx2.ASGITransport(app=app))
    oai = openai.AsyncOpenAI(
        api_key="ql-000000000000-nope", base_url="http://gw/v1", http_client=http, max_retries=0
    )
    with pytest.raises(openai.AuthenticationError):
        await oai.models.list()


async def test_openai_client_models(oai: openai.AsyncOpenAI) -> None:
    ids = [m.id async for m in oai.models.list()]
    assert ids == ["qwen", "qwen:sql", "qwen:tutor", "tiny", EMBED_MODEL]
    assert (await oai.models.retrieve("qwen:sql")).id == "qwen:sql"
    with pytest.raises(openai.NotFoundError):
        await oai.models.retrieve("nope")


async def test_openai_client_embeddings(oai: openai.AsyncOpenAI) -> None:
    # The SDK asks for base64 unless encoding_format is given, and decodes it.
    out = await oai.embeddings.create(model=EMBED_MODEL, input=["a", "b"])
    assert [d.embedding for d in out.data] == [[0.0, 0.5, -1.25], [1.0, 0.5, -1.25]]
    assert out.usage.prompt_tokens == 4
    out = await oai.embeddings.create(model=EMBED_MODEL, input="a", encoding_format="float")
    assert out.data[0].embedding == [0.0, 0.5, -1.25]
    out = await oai.embeddings.create(model=EMBED_MODEL, input=[WEATHER_IDS["今天天气很好"]])
    assert len(out.data) == 1
    with pytest.raises(openai.NotFoundError):
        await oai.embeddings.create(model="qwen", input="a")

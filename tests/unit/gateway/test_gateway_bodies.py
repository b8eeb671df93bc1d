"""Typed request bodies (issue 13, "then prove it"): every route's body is a pydantic model
that /openapi.json documents, and the OpenAI field policy holds end to end.

The policy (platform/gateway/http/openai_bodies.py, docs/serving.md): every documented OpenAI
field is accepted — the official ``openai`` package's own request types are the list
checked here —, those no engine implements are dropped before the engine and named in
``X-Qingliang-Ignored-Fields``, vLLM's extras go to the engine, vLLM's engine-internal
fields and unknown fields are a 400 naming them. With vLLM installed, every field the
gateway sends on is one vLLM's request models declare, so the engine's own unknown-field
check never refuses what the gateway accepted.

The app is the real one over the fake backend and embedder of ``test_gateway``, with real
API keys. No Ray, no sockets.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx2
import openai
import pytest
from fastapi.testclient import TestClient
from pydantic import BaseModel

from qingliang.agents.api import AgentRunBody, FeedbackBody, ResumeBody
from qingliang.knowledge.api import AnswerBody, SearchBody
from qingliang.platform.errors import BadRequest
from qingliang.platform.gateway.app import create_app
from qingliang.platform.gateway.http.bodies import (
    BODIES,
    PipelineStartBody,
    field_path,
    validated,
)
from qingliang.platform.gateway.http.openai_bodies import (
    IGNORED,
    IGNORED_HEADER,
    INTERNAL,
    ChatCompletionBody,
    CompletionBody,
    EmbeddingBody,
    checked,
    forwarded,
)
from qingliang.platform.storage.keys import KeyStore
from tests.unit.gateway.test_gateway import ENTRIES, FakeBackend, FakeEmbedder, StoreAuth

MESSAGES = [{"role": "user", "content": "hi"}]


@pytest.fixture
def backend() -> FakeBackend:
    return FakeBackend(list(ENTRIES))


@pytest.fixture
def keys(tmp_path: Path) -> KeyStore:
    return KeyStore(tmp_path / "state.sqlite")


@pytest.fixture
def key(keys: KeyStore) -> str:
    return keys.create("ci", scopes=("admin",))[1]


@pytest.fixture
def app(backend: FakeBackend, keys: KeyStore) -> Any:
    return create_app(backend, FakeEmbedder(), StoreAuth(keys))


@pytest.fixture
def client(app: Any, key: str) -> Iterator[TestClient]:
    with TestClient(app, headers={"Authorization": f"Bearer {key}"}) as c:
        yield c


def _error(r: Any, status: int, param: str | None) -> str:
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["param"] == param, error
    return str(error["message"])


def _fields(model: type[BaseModel]) -> set[str]:
    return {info.alias or name for name, info in model.model_fields.items()}


# ----------------------------------------------------------- OpenAI's fields, all taken


def _openai_fields(module: Any, name: str = "CompletionCreateParamsBase") -> set[str]:
    return set(getattr(module, name).__annotations__)


def test_every_documented_openai_field_is_declared() -> None:
    """The official client's request types list OpenAI's fields: none may be a 400."""
    from openai.types import completion_create_params, embedding_create_params
    from openai.types.chat import completion_create_params as chat_params

    assert _openai_fields(chat_params) | {"stream"} <= _fields(ChatCompletionBody)
    assert _openai_fields(completion_create_params) | {"stream"} <= _fields(CompletionBody)
    embedding = _openai_fields(embedding_create_params, "EmbeddingCreateParams")
    assert embedding <= _fields(EmbeddingBody)


def test_ignored_fields_are_declared_and_documented() -> None:
    for model, names in IGNORED.items():
        assert names <= _fields(model)
        for name in names:
            assert IGNORED_HEADER in (model.model_fields[name].description or ""), name
    assert not set(INTERNAL) & (_fields(ChatCompletionBody) | _fields(CompletionBody))


#: A value of OpenAI's type for each field no engine here implements.
IGNORED_VALUES = {
    "store": False,
    "metadata": {"app": "desk"},
    "service_tier": "auto",
    "prompt_cache_key": "k1",
    "prompt_cache_retention": "24h",
    "prompt_cache_options": {"mode": "implicit"},
    "safety_identifier": "user-hash",
    "verbosity": "low",
    "modalities": ["text"],
    "prediction": {"type": "content", "content": "draft"},
    "functions": [{"name": "f", "parameters": {"type": "object"}}],
    "function_call": "auto",
    "audio": {"voice": "alloy", "format": "wav"},
    "web_search_options": {"search_context_size": "low"},
    "moderation": {"model": "omni-moderation-latest"},
}


def test_ignored_values_cover_every_ignored_chat_field() -> None:
    assert set(IGNORED_VALUES) == IGNORED[ChatCompletionBody]


@pytest.mark.parametrize("stream", [False, True])
def test_ignored_fields_are_accepted_dropped_and_named(
    client: TestClient, backend: FakeBackend, stream: bool
) -> None:
    body = {"model": "qwen", "messages": MESSAGES, "stream": stream, **IGNORED_VALUES}
    r = client.post("/v1/chat/completions", json=body)
    assert r.status_code == 200, r.text
    assert r.headers[IGNORED_HEADER] == ", ".join(sorted(IGNORED_VALUES))
    sent = backend.calls[0][3]
    assert not set(sent) & set(IGNORED_VALUES)
    assert sent["messages"] == MESSAGES


def test_best_of_is_ignored_on_completions(client: TestClient, backend: FakeBackend) -> None:
    r = client.post("/v1/completions", json={"model": "tiny", "prompt": "x", "best_of": 2})
    assert r.status_code == 200 and r.headers[IGNORED_HEADER] == "best_of"
    assert "best_of" not in backend.calls[0][3]


def test_nothing_ignored_no_header(client: TestClient) -> None:
    r = client.post("/v1/chat/completions", json={"model": "qwen", "messages": MESSAGES})
    assert r.status_code == 200 and IGNORED_HEADER not in r.headers


VLLM_EXTRAS = {
    "top_k": 20,
    "min_p": 0.05,
    "repetition_penalty": 1.1,
    "chat_template_kwargs": {"enable_thinking": False},
    "structured_outputs": {"choice": ["yes", "no"]},
    "stop_token_ids": [151643],
    "skip_special_tokens": True,
    "include_reasoning": False,
    "cache_salt": "tenant-a",
}


def _png_url() -> str:
    import base64
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (4, 4), "red").save(buf, "PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


PNG_URL = _png_url()


def test_vllm_extras_and_openai_fields_reach_the_engine_as_sent(
    client: TestClient, backend: FakeBackend
) -> None:
    tools = [{"type": "function", "function": {"name": "weather", "parameters": {}}}]
    body = {
        "model": "qwen",
        "messages": [
            {"role": "system", "content": [{"type": "text", "text": "be brief"}]},
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "what is this?"},
                    {"type": "image_url", "image_url": {"url": PNG_URL}},  # qwen: native
                    {"type": "video_url", "video_url": {"url": "https://x/v.mp4"}},  # vLLM's
                ],
            },
            {  # an answer sent back as the client got it, extra keys and all
                "role": "assistant",
                "content": None,
                "refusal": None,
                "annotations": [],
                "reasoning_content": "hmm",
                "tool_calls": [
                    {
                        "id": "c1",
                        "type": "function",
                        "function": {"name": "weather", "arguments": '{"city": "Fuzhou"}'},
                    }
                ],
            },
            {"role": "tool", "tool_call_id": "c1", "content": "sunny"},
        ],
        "tools": tools,
        "tool_choice": {"type": "function", "function": {"name": "weather"}},
        "response_format": {"type": "json_schema", "json_schema": {"name": "a", "schema": {}}},
        "stream_options": {"include_usage": True},
        "logit_bias": {"151643": -100},
        "reasoning_effort": "low",
        "parallel_tool_calls": False,
        **VLLM_EXTRAS,
    }
    r = client.post("/v1/chat/completions", json=body)
    assert r.status_code == 200, r.text
    assert backend.calls[0][3] == body


def test_the_official_client_with_openai_only_fields(app: Any, key: str) -> None:
    """What a client written for OpenAI sends, through the SDK itself."""
    import asyncio

    async def go() -> Any:
        http = httpx2.AsyncClient(transport=httpx2.ASGITransport(app=app), base_url="http://gw")
        oai = openai.AsyncOpenAI(
            api_key=key, base_url="http://gw/v1", http_client=http, max_retries=0
        )
        return await oai.chat.completions.with_raw_response.create(
            model="qwen",
            messages=[{"role": "user", "content": "hi"}],
            store=True,
            metadata={"app": "desk"},
            service_tier="auto",
            prompt_cache_key="k",
            safety_identifier="s",
            extra_body={"top_k": 5},
        )

    raw = asyncio.run(go())
    assert raw.headers[IGNORED_HEADER] == (
        "metadata, prompt_cache_key, safety_identifier, service_tier, store"
    )
    assert raw.parse().choices[0].message.content == "hello"


@pytest.mark.parametrize(
    ("extra", "param", "fragment"),
    [
        ({"max_tokenz": 3}, "max_tokenz", "did you mean 'max_tokens'?"),
        ({"guided_json": {}}, "guided_json", "unknown field 'guided_json'"),  # removed in vLLM
        ({"priority": -10}, "priority", "cannot be set through the gateway"),
        ({"chat_template": "{{ 1 }}"}, "chat_template", "the deployment's"),
        ({"request_id": "x"}, "request_id", "cannot be set"),
        ({"messages": [{"role": "user", "content": 5}]}, "messages[0].content", "valid string"),
        (
            {"messages": [{"role": "user", "content": [{"type": "text", "text": 5}]}]},
            "messages[0].content[0].text",
            "valid string",
        ),
        (
            {"messages": [{"role": "user", "content": [{"type": "image_url"}]}]},
            "messages[0].content[0].image_url",
            "is required",
        ),
        ({"messages": [{"role": "tool", "content": "x"}]}, "messages[0].tool_call_id", "required"),
        ({"tools": [{"type": "function", "function": {}}]}, "tools[0].function.name", "required"),
        ({"tool_choice": "sometimes"}, "tool_choice", "'none', 'auto' or 'required'"),
        ({"stream_options": {"include_usage": "yes"}}, "stream_options.include_usage", "bool"),
        ({"store": "yes"}, "store", "valid boolean"),  # ignored, but OpenAI's type still
        ({"metadata": {"a": 1}}, "metadata.a", "valid string"),
        ({"user": 7}, "user", "valid string"),
        ({"logit_bias": {"1": "x"}}, "logit_bias.1", "valid number"),
    ],
)
def test_bad_chat_fields_are_400_naming_them(
    client: TestClient, backend: FakeBackend, extra: dict, param: str, fragment: str
) -> None:
    body = {"model": "qwen", "messages": MESSAGES, **extra}
    message = _error(client.post("/v1/chat/completions", json=body), 400, param)
    assert fragment in message, message
    assert backend.calls == []


def test_unknown_completion_and_embedding_fields(client: TestClient) -> None:
    r = client.post("/v1/completions", json={"model": "tiny", "prompt": "x", "sufix": ""})
    assert "did you mean 'suffix'?" in _error(r, 400, "sufix")
    r = client.post("/v1/completions", json={"model": "tiny", "prompt": {"a": 1}})
    _error(r, 400, "prompt")
    body = {"model": "multilingual-e5-small", "input": "x", "encodng_format": "float"}
    r = client.post("/v1/embeddings", json=body)
    assert "did you mean 'encoding_format'?" in _error(r, 400, "encodng_format")
    r = client.post("/v1/embeddings", json={**body | {"encoding_format": None}, "user": 3})
    _error(r, 400, "encodng_format")  # unknown fields first
    body = {"model": "multilingual-e5-small", "input": "x", "user": 3}
    _error(client.post("/v1/embeddings", json=body), 400, "user")


def test_forwarded_is_pure() -> None:
    body = {"model": "m", "messages": MESSAGES, "store": True, "top_k": 2}
    sent, ignored = forwarded(body, ChatCompletionBody)
    assert sent == {"model": "m", "messages": MESSAGES, "top_k": 2} and ignored == ["store"]
    assert body["store"] is True  # the caller's dict is left alone
    same, none = forwarded({"model": "m", "prompt": "x"}, CompletionBody)
    assert none == [] and same == {"model": "m", "prompt": "x"}


def test_vllm_declares_every_field_the_gateway_sends_on() -> None:
    """The vLLM engine refuses fields its request models lack (serving's
    ``_reject_unknown_fields``): what the gateway accepts and forwards must be there."""
    pytest.importorskip("vllm")
    from vllm.entrypoints.openai.chat_completion.protocol import ChatCompletionRequest
    from vllm.entrypoints.openai.completion.protocol import CompletionRequest

    theirs_all: set[str] = set()
    for ours, theirs in (
        (ChatCompletionBody, ChatCompletionRequest),
        (CompletionBody, CompletionRequest),
    ):
        sent_on = _fields(ours) - IGNORED[ours]
        missing = sent_on - set(theirs.model_fields)
        assert missing == set(), f"{ours.__name__}: vLLM would refuse {sorted(missing)}"
        theirs_all |= set(theirs.model_fields)
    assert set(INTERNAL) <= theirs_all  # they are vLLM's, refused by name


# ----------------------------------------------------------------- our own bodies


@pytest.mark.parametrize(
    ("model", "body", "param", "fragment"),
    [
        (SearchBody, {"qeury": "x"}, "qeury", "did you mean 'query'?"),
        (SearchBody, {"query": "x", "image": 5}, "image", "valid string"),
        (SearchBody, {"query": "x", "limit": "5"}, "limit", "valid integer"),
        (SearchBody, {"query": "x", "limit": 5.0}, "limit", "valid integer"),
        (SearchBody, {"query": "x", "mmr": True}, "mmr", "valid number"),
        (AnswerBody, {"question": "q", "answer": "a", "provenance": {}}, "provenance.source", ""),
        (AgentRunBody, {"inptu": "x"}, "inptu", "did you mean 'input'?"),
        (AgentRunBody, {"input": "x", "stream": "yes"}, "stream", "valid boolean"),
        (
            AgentRunBody,
            {"input": "x", "attachments": [{"name": "a", "data": "", "path": "/etc"}]},
            "attachments[0].path",
            "unknown field 'path' in attachments[0]; accepted: data, name",
        ),
        (ResumeBody, {"action": "approve", "anwser": "x"}, "anwser", "did you mean 'answer'?"),
        (ResumeBody, {"action": "edit", "forms": {"f": 1}}, "forms.f", "valid dictionary"),
        (FeedbackBody, {"run_id": "r"}, "score", "`score` is required: a number from -1 to 1"),
        (FeedbackBody, {"run_id": "r", "score": True}, "score", "valid number"),
        (PipelineStartBody, {"manifest": {}}, "base_dir", "absolute folder"),
        (PipelineStartBody, {"manifest": [], "base_dir": "/"}, "manifest", "dictionary"),
    ],
)
def test_our_bodies_name_the_bad_field(
    model: type[BaseModel], body: dict, param: str, fragment: str
) -> None:
    with pytest.raises(BadRequest) as info:
        validated(model, body)
    assert info.value.param == param
    assert fragment in info.value.message, info.value.message


def test_checked_refuses_internal_fields_before_anything_else() -> None:
    with pytest.raises(BadRequest) as info:
        checked({"model": "m", "messages": 5, "kv_transfer_params": {}}, ChatCompletionBody)
    assert info.value.param == "kv_transfer_params"


def test_field_path() -> None:
    assert field_path(["messages", 1, "content", 0, "text"]) == "messages[1].content[0].text"
    assert field_path([]) == ""


def test_agent_bodies_match_the_agents_service() -> None:
    """The service keeps its own key check; the two lists must not drift apart."""
    from qingliang.agents.service import RESUME_KEYS, RUN_KEYS

    assert _fields(AgentRunBody) == RUN_KEYS
    assert _fields(ResumeBody) == RESUME_KEYS


# --------------------------------------------------------------------- the document


def test_openapi_documents_every_body(app: Any, client: TestClient) -> None:
    doc = client.get("/openapi.json").json()
    schemas = doc["components"]["schemas"]
    refs = set(re.findall(r'"\$ref": "#/components/schemas/([^"]+)"', json.dumps(doc)))
    assert refs <= set(schemas), refs - set(schemas)
    for model in (ChatCompletionBody, CompletionBody, EmbeddingBody, *BODIES):
        assert model.__name__ in schemas
    for path, operations in doc["paths"].items():
        for method, operation in operations.items():
            assert "422" not in operation["responses"], (method, path)
            assert operation["responses"]["4XX"]["content"]["application/json"]["schema"] == {
                "$ref": "#/components/schemas/ErrorResponse"
            }
    chat = doc["paths"]["/v1/chat/completions"]["post"]
    body = chat["requestBody"]["content"]["application/json"]["schema"]
    assert body == {"$ref": "#/components/schemas/ChatCompletionBody"}
    assert "X-Qingliang-Ignored-Fields" in chat["description"]
    chat_schema = schemas["ChatCompletionBody"]
    assert chat_schema["additionalProperties"] is False
    assert set(chat_schema["required"]) == {"model", "messages"}
    assert chat_schema["properties"]["temperature"]["anyOf"][0]["maximum"] == 2
    assert "HTTPValidationError" not in schemas
    assert client.get("/docs").status_code == 200


def test_the_document_asks_for_a_key_except_on_public_routes(client: TestClient) -> None:
    doc = client.get("/openapi.json").json()
    assert doc["components"]["securitySchemes"]["apiKey"]["scheme"] == "bearer"
    assert doc["security"] == [{"apiKey": []}]
    for path in ("/healthz", "/readyz"):
        assert doc["paths"][path]["get"]["security"] == []
    assert "security" not in doc["paths"]["/v1/chat/completions"]["post"]  # the default


def test_starlettes_own_refusals_are_openai_errors(tmp_path: Path) -> None:
    """A multipart body without a boundary (found by the fuzzer): 400 in OpenAI's format,
    not FastAPI's {"detail": ...}."""
    from tests.unit.gateway.test_gateway_limits import FakeKnowledge

    keys = KeyStore(tmp_path / "state.sqlite")
    key = keys.create("ops", scopes=("admin",))[1]
    app = create_app(FakeBackend(list(ENTRIES)), None, StoreAuth(keys), FakeKnowledge())
    with TestClient(app, headers={"Authorization": f"Bearer {key}"}) as c:
        r = c.post(
            "/v1/knowledge/kb/documents",
            content=b"--x\r\n",
            headers={"content-type": "multipart/form-data"},
        )
    assert "boundary" in _error(r, 400, None)
    assert r.json()["error"]["type"] == "invalid_request_error"


def test_an_unexpected_error_is_a_500_in_openai_format(
    backend: FakeBackend, keys: KeyStore
) -> None:
    async def broken(*args: Any) -> dict:
        raise OSError("[Errno 36] File name too long: '/srv/qingliang/home/x.lock'")

    backend.generate = broken  # type: ignore[method-assign]
    app = create_app(backend, FakeEmbedder(), StoreAuth(keys, enabled=False))
    with TestClient(app, raise_server_exceptions=False) as c:
        r = c.post("/v1/chat/completions", json={"model": "qwen", "messages": MESSAGES})
    assert r.status_code == 500
    error = r.json()["error"]
    assert error == {
        "message": "internal error (OSError); the server log has the details",
        "type": "server_error",
        "param": None,
        "code": 500,
    }


def test_every_post_route_declares_its_body(tmp_path: Path) -> None:
    from tests.unit.gateway.test_scopes import full_app

    doc = full_app(tmp_path / "state.sqlite").openapi()
    # Resume continues a run from its last step: it takes no body.
    no_body = {"/v1/pipelines/{run_id}/resume"}
    for path, operations in doc["paths"].items():
        if "post" in operations and path not in no_body:
            assert "requestBody" in operations["post"], path
    upload = doc["paths"]["/v1/knowledge/{kb}/documents"]["post"]["requestBody"]
    assert "multipart/form-data" in upload["content"]
    assert doc["components"]["schemas"]["UploadForm"]["properties"]["file"]["format"] == "binary"

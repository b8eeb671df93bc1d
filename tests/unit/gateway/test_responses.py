"""``POST /v1/responses`` over a fake Backend, with real API keys and the official client.

The backend answers as vLLM's ``OpenAIServingResponses`` does (a response object, or its
typed events); everything in front of it is the real gateway: the body policy, routing,
adapters, the image policy, the SSE with ``event:`` lines, quotas and the conversation log.
"""

from __future__ import annotations

import base64
import io
import json
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx2
import openai
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from qingliang.platform.errors import ApiError, BadRequest, NotFound
from qingliang.platform.gateway.app import create_app
from qingliang.platform.gateway.http.responses_bodies import IGNORED, UNSUPPORTED, ResponsesBody
from qingliang.platform.storage.conversations import ConversationLog
from qingliang.platform.storage.keys import KeyStore
from qingliang.serving.engine import StreamChunk
from qingliang.serving.traffic import ModelEntry

USAGE = {
    "input_tokens": 5,
    "input_tokens_details": {"cached_tokens": 0},
    "output_tokens": 2,
    "output_tokens_details": {"reasoning_tokens": 0},
    "total_tokens": 7,
}


def response_body(text: str = "Hello there", status: str = "completed") -> dict:
    return {
        "id": "resp_1",
        "object": "response",
        "created_at": 1,
        "model": "qwen",
        "status": status,
        "output": [
            {
                "id": "msg_1",
                "type": "message",
                "role": "assistant",
                "status": "completed",
                "content": [{"type": "output_text", "text": text, "annotations": []}],
            }
        ],
        "parallel_tool_calls": True,
        "tool_choice": "auto",
        "tools": [],
        "usage": USAGE,
    }


def events() -> list[dict]:
    shell = {**response_body(""), "status": "in_progress", "output": [], "usage": None}
    item = {"id": "msg_1", "type": "message", "role": "assistant", "status": "in_progress"}
    common = {"item_id": "msg_1", "output_index": 0, "content_index": 0}
    return [
        {"type": "response.created", "sequence_number": 0, "response": shell},
        {
            "type": "response.output_item.added",
            "sequence_number": 1,
            "output_index": 0,
            "item": {**item, "content": []},
        },
        {"type": "response.output_text.delta", "sequence_number": 2, "delta": "Hello", **common},
        {"type": "response.output_text.delta", "sequence_number": 3, "delta": " there", **common},
        {"type": "response.completed", "sequence_number": 4, "response": response_body()},
    ]


class FakeBackend:
    """vLLM's Responses answers, canned; ``error`` before the first event, ``mid_error``
    after two."""

    def __init__(self, entries: list[ModelEntry]) -> None:
        self.entries = entries
        self.calls: list[tuple] = []
        self.error: ApiError | None = None
        self.mid_error: ApiError | None = None

    def models(self) -> list[ModelEntry]:
        return list(self.entries)

    async def generate(self, deployment: str, endpoint: str, body: dict, adapter: str | None):
        self.calls.append(("generate", deployment, endpoint, body, adapter))
        if self.error is not None:
            raise self.error
        return response_body()

    async def stream(
        self, deployment: str, endpoint: str, body: dict, adapter: str | None
    ) -> AsyncIterator[StreamChunk]:
        self.calls.append(("stream", deployment, endpoint, body, adapter))
        if self.error is not None:
            raise self.error
        for i, data in enumerate(events()):
            if i == 2 and self.mid_error is not None:
                raise self.mid_error
            yield StreamChunk.of(data)

    async def ready(self) -> dict[str, str]:
        return {e.name: "ready" for e in self.entries}

    def rejected(self, deployment: str, adapter: str | None, endpoint: str) -> None:
        pass


class StoreAuth:
    def __init__(self, store: KeyStore) -> None:
        self.enabled = True
        self.usage = store
        self._store = store

    def verify(self, token: str) -> object:
        return self._store.verify(token)


ENTRIES = [
    ModelEntry("qwen", ("sql",), engine="vllm"),
    ModelEntry("vlm", engine="vllm", image_mode="native", max_images=2),
]


@pytest.fixture
def backend() -> FakeBackend:
    return FakeBackend(list(ENTRIES))


@pytest.fixture
def keys(tmp_path: Path) -> KeyStore:
    return KeyStore(tmp_path / "state.sqlite")


@pytest.fixture
def log(tmp_path: Path) -> Iterator[ConversationLog]:
    log = ConversationLog(tmp_path / "conversations.sqlite")
    yield log
    log.close()


@pytest.fixture
def app(backend: FakeBackend, keys: KeyStore, log: ConversationLog) -> Any:
    return create_app(backend, None, StoreAuth(keys), conversations=log)


@pytest.fixture
def key(keys: KeyStore) -> str:
    return keys.create("ci")[1]


@pytest.fixture
def client(app: Any, key: str) -> Iterator[TestClient]:
    with TestClient(app, headers={"Authorization": f"Bearer {key}"}) as c:
        yield c


@pytest.fixture
def oai(app: Any, key: str) -> openai.AsyncOpenAI:
    http = httpx2.AsyncClient(transport=httpx2.ASGITransport(app=app), base_url="http://gw")
    return openai.AsyncOpenAI(api_key=key, base_url="http://gw/v1", http_client=http, max_retries=0)


def post(client: TestClient, **body: Any) -> Any:
    return client.post("/v1/responses", json={"model": "qwen", "input": "hi", **body})


def error_of(r: Any, status: int, param: str | None) -> str:
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert error["param"] == param
    return error["message"]


def png(width: int = 8, height: int = 8) -> str:
    buf = io.BytesIO()
    Image.new("RGB", (width, height), "white").save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def image_input(*urls: str) -> list[dict]:
    parts: list[dict] = [{"type": "input_text", "text": "What does it say?"}]
    parts += [{"type": "input_image", "image_url": u, "detail": "auto"} for u in urls]
    return [{"role": "user", "content": parts}]


# ------------------------------------------------------------------------- answers


def test_answer_is_vllms_response_traced(client: TestClient, backend: FakeBackend) -> None:
    r = post(client, instructions="Be brief.", max_output_tokens=16)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body.pop("qingliang") == {"deployment": "qwen", "adapter": None, "adapter_ref": None}
    assert body == response_body()
    assert r.headers["X-Qingliang-Deployment"] == "qwen"
    assert "X-Qingliang-Ignored-Fields" not in r.headers
    kind, dep, endpoint, sent, adapter = backend.calls[0]
    assert (kind, dep, endpoint, adapter) == ("generate", "qwen", "responses", None)
    assert sent == {"model": "qwen", "input": "hi", "instructions": "Be brief.",
                    "max_output_tokens": 16}  # fmt: skip


def test_adapter_is_routed_and_unknown_one_is_404(client: TestClient, backend: FakeBackend) -> None:
    assert post(client, model="qwen:sql").status_code == 200
    assert backend.calls[-1][4] == "sql"
    message = error_of(post(client, model="qwen:nope"), 404, "model")
    assert "loaded: sql" in message
    assert "did you mean 'qwen'" in error_of(post(client, model="qwne"), 404, "model")


def test_engine_refusal_keeps_its_status(client: TestClient, backend: FakeBackend) -> None:
    # What ModelService answers for an engine without a Responses API (transformers).
    backend.error = BadRequest(
        "deployment 'qwen' runs on the transformers engine, which does not serve "
        "/v1/responses; use /v1/chat/completions",
        param="model",
    )
    assert "/v1/chat/completions" in error_of(post(client), 400, "model")
    assert "/v1/chat/completions" in error_of(post(client, stream=True), 400, "model")


async def test_official_client_round_trip(oai: openai.AsyncOpenAI) -> None:
    r = await oai.responses.create(model="qwen", input="hi", instructions="Be brief.")
    assert r.output_text == "Hello there"
    assert r.usage is not None and r.usage.total_tokens == 7


def test_answer_is_recorded(client: TestClient, log: ConversationLog) -> None:
    assert post(client, instructions="Be brief.").status_code == 200
    out = io.StringIO()
    assert log.export(out) == 1
    row = json.loads(out.getvalue())
    assert row["endpoint"] == "responses"
    assert row["messages"] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "hi"},
    ]
    assert (row["response"], row["finish_reason"]) == ("Hello there", "stop")
    assert row["usage"]["prompt_tokens"] == 5 and row["usage"]["completion_tokens"] == 2


# ------------------------------------------------------------------------- streams


def sse(text: str) -> list[tuple[str, dict]]:
    out = []
    for block in text.strip().split("\n\n"):
        event, data = block.split("\n")
        out.append((event.removeprefix("event: "), json.loads(data.removeprefix("data: "))))
    return out


def test_stream_has_event_lines_and_no_done(client: TestClient, log: ConversationLog) -> None:
    r = post(client, stream=True)
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/event-stream")
    assert r.headers["X-Qingliang-Deployment"] == "qwen"
    assert "[DONE]" not in r.text
    got = sse(r.text)
    assert [name for name, _ in got] == [e["type"] for e in events()]
    assert all(name == data["type"] for name, data in got)
    assert got[0][1].pop("qingliang")["deployment"] == "qwen"
    assert [data for _, data in got] == events()
    assert log.count() == 1  # recorded from the final event's whole response


async def test_official_client_stream(oai: openai.AsyncOpenAI) -> None:
    stream = await oai.responses.create(model="qwen", input="hi", stream=True)
    seen = [event async for event in stream]
    deltas = [e.delta for e in seen if e.type == "response.output_text.delta"]
    assert deltas == ["Hello", " there"]
    assert seen[-1].type == "response.completed"
    assert seen[-1].response.output_text == "Hello there"


def test_error_before_first_event_is_a_status(client: TestClient, backend: FakeBackend) -> None:
    backend.error = BadRequest("the prompt is too long", param="input")
    assert error_of(post(client, stream=True), 400, "input") == "the prompt is too long"


async def test_error_mid_stream_is_an_error_event(
    client: TestClient, oai: openai.AsyncOpenAI, backend: FakeBackend, log: ConversationLog
) -> None:
    backend.mid_error = NotFound("adapter unloaded mid-stream", param="model")
    got = sse(post(client, stream=True).text)
    name, data = got[-1]
    assert name == "error" and data["type"] == "error"
    assert data["message"] == "adapter unloaded mid-stream" and data["param"] == "model"
    assert data["sequence_number"] == 2
    stream = await oai.responses.create(model="qwen", input="hi", stream=True)
    with pytest.raises(openai.APIError) as info:
        async for _ in stream:
            pass
    assert info.value.message == "adapter unloaded mid-stream"
    assert log.count() == 0  # not an answer


# ------------------------------------------------------------------------- the body


def test_documented_fields_are_ignored_and_named(client: TestClient, backend: FakeBackend) -> None:
    extra = {
        "store": True,
        "service_tier": "flex",
        "safety_identifier": "u-1",
        "prompt_cache_key": "k",
        "stream_options": {"include_obfuscation": False},
        "include": ["web_search_call.results", "message.output_text.logprobs"],
        "metadata": {"ticket": "42"},
        "temperature": None,
    }
    r = post(client, **extra)
    assert r.status_code == 200, r.text
    assert r.headers["X-Qingliang-Ignored-Fields"] == (
        "include, prompt_cache_key, safety_identifier, service_tier, store, stream_options"
    )
    sent = backend.calls[0][3]
    assert sent == {
        "model": "qwen",
        "input": "hi",
        "include": ["message.output_text.logprobs"],
        "metadata": {"ticket": "42"},
    }


def test_every_field_of_openais_request_is_accepted() -> None:
    from openai.types.responses.response_create_params import ResponseCreateParamsBase

    documented = set(ResponseCreateParamsBase.__annotations__) | {"stream"}
    assert documented <= set(ResponsesBody.model_fields)
    assert documented >= IGNORED


def test_vllm_declares_every_field_the_gateway_sends_on() -> None:
    """The vLLM engine refuses fields its ResponsesRequest lacks: what the gateway accepts
    and forwards must be there."""
    pytest.importorskip("vllm")
    from vllm.entrypoints.openai.responses.protocol import ResponsesRequest

    sent_on = set(ResponsesBody.model_fields) - IGNORED - set(UNSUPPORTED)
    assert sent_on - set(ResponsesRequest.model_fields) == set()


@pytest.mark.parametrize(
    ("field", "value", "hint"),
    [
        ("temprature", 0.5, "did you mean 'temperature'"),
        ("messages", [{"role": "user", "content": "hi"}], "unknown field 'messages'"),
    ],
)
def test_unknown_field_is_400_naming_it(
    client: TestClient, backend: FakeBackend, field: str, value: object, hint: str
) -> None:
    assert hint in error_of(post(client, **{field: value}), 400, field)
    assert backend.calls == []


@pytest.mark.parametrize(
    ("body", "param", "text"),
    [
        ({"previous_response_id": "resp_1"}, "previous_response_id", "earlier turns in `input`"),
        ({"conversation": "conv_1"}, "conversation", "not stored"),
        ({"prompt": {"id": "pmpt_1"}}, "prompt", "`instructions`"),
        ({"background": True}, "background", "not stored"),
        ({"request_id": "mine"}, "request_id", "cannot be set through the gateway"),
        ({"input": [{"role": "alien", "content": "hi"}]}, "input[0].role", "'user'"),
        ({"input": None}, "input", ""),
        ({"temperature": 3}, "temperature", "less than or equal to 2"),
        ({"stream": "yes"}, "stream", "true or false"),
        ({"tools": [{"type": "function"}]}, "tools[0].name", "required"),
    ],
)
def test_bad_request_is_400_naming_the_field(
    client: TestClient, backend: FakeBackend, body: dict, param: str, text: str
) -> None:
    assert text in error_of(post(client, **body), 400, param)
    assert backend.calls == []


def test_background_false_and_nulls_are_fine(client: TestClient, backend: FakeBackend) -> None:
    r = post(client, background=False, previous_response_id=None, store=None)
    assert r.status_code == 200, r.text
    assert backend.calls[0][3] == {"model": "qwen", "input": "hi", "background": False}


def test_items_of_a_tool_round_trip_are_accepted(client: TestClient, backend: FakeBackend) -> None:
    tool = {"type": "function", "name": "get_weather", "parameters": {"type": "object"}}
    items = [
        {"role": "user", "content": "Weather in Fuzhou?"},
        {"type": "function_call", "call_id": "c1", "name": "get_weather", "arguments": "{}"},
        {"type": "function_call_output", "call_id": "c1", "output": '{"sky": "sunny"}'},
        {"type": "reasoning", "id": "rs_1", "summary": []},  # for the engine to judge
    ]
    r = post(client, input=items, tools=[tool], tool_choice={"type": "function", "name": "x"})
    assert r.status_code == 200, r.text
    assert backend.calls[0][3]["input"] == items


# ------------------------------------------------------------------------- images


def test_image_on_a_text_only_deployment_is_400_naming_the_part(
    client: TestClient, backend: FakeBackend
) -> None:
    message = error_of(post(client, input=image_input(png())), 400, "input[0].content[1]")
    assert "spec.multimodal.image: reject" in message and "ocr" in message
    assert backend.calls == []


def test_native_image_is_sent_as_a_data_url(client: TestClient, backend: FakeBackend) -> None:
    url = png(4, 3)
    r = post(client, model="vlm", input=image_input(url))
    assert r.status_code == 200, r.text
    assert r.headers["X-Qingliang-Images"] == "native; count=1"
    assert r.json()["qingliang"]["images"] == {"mode": "native", "count": 1}
    part = backend.calls[0][3]["input"][0]["content"][1]
    assert part == {"type": "input_image", "image_url": url, "detail": "auto"}


@pytest.mark.parametrize(
    ("urls", "param", "text"),
    [
        (["https://example.com/a.png"], "input[0].content[1]", "not fetched from the network"),
        (["data:image/png;base64,@@@"], "input[0].content[1]", "not valid base64"),
        ([png(), png(), png()], "input[0].content[3]", "at most 2"),
    ],
)
def test_bad_image_is_400_naming_the_part(
    client: TestClient, backend: FakeBackend, urls: list[str], param: str, text: str
) -> None:
    assert text in error_of(post(client, model="vlm", input=image_input(*urls)), 400, param)
    assert backend.calls == []


def test_an_image_a_tool_returned_gets_the_same_policy(
    client: TestClient, backend: FakeBackend, log: ConversationLog
) -> None:
    url = png(4, 3)
    items = [
        {"type": "function_call", "call_id": "c1", "name": "snap", "arguments": "{}"},
        {"type": "function_call_output", "call_id": "c1",
         "output": [{"type": "input_image", "image_url": url, "detail": "auto"}]},
    ]  # fmt: skip
    message = error_of(post(client, input=items), 400, "input[1].output[0]")
    assert "does not take images" in message
    web = [{**items[1], "output": [{"type": "input_image", "image_url": "http://x/a.png"}]}]
    assert "network" in error_of(post(client, model="vlm", input=web), 400, "input[0].output[0]")
    assert backend.calls == []
    r = post(client, model="vlm", input=items)
    assert r.status_code == 200, r.text
    assert r.headers["X-Qingliang-Images"] == "native; count=1"
    assert backend.calls[0][3]["input"][1]["output"][0]["image_url"] == url
    out = io.StringIO()
    log.export(out)
    tool = json.loads(out.getvalue())["messages"][1]
    assert tool["role"] == "tool" and tool["tool_call_id"] == "c1"
    assert tool["content"][0]["image_url"]["url"].startswith("[image image/png 4x3")


def test_image_file_id_is_400_with_the_fix(client: TestClient) -> None:
    items = [{"role": "user", "content": [{"type": "input_image", "file_id": "file-1"}]}]
    message = error_of(post(client, model="vlm", input=items), 400, "input[0].content[0].image_url")
    assert "file_id" in message and "data URL" in message


def test_image_is_recorded_without_its_pixels(client: TestClient, log: ConversationLog) -> None:
    assert post(client, model="vlm", input=image_input(png(4, 3))).status_code == 200
    out = io.StringIO()
    log.export(out)
    content = json.loads(out.getvalue())["messages"][0]["content"]
    assert content[0] == {"type": "text", "text": "What does it say?"}
    assert content[1]["image_url"]["url"].startswith("[image image/png 4x3 sha256:")

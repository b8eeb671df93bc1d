"""The SSE the gateway writes from typed engine chunks: the bytes a client got before chunks
were typed, the trace on the first event, usage counted once and hidden unless asked.

Before, engines yielded SSE strings (vLLM: ``model_dump_json``; transformers: compact
``json.dumps``) and the gateway re-parsed the first to add the trace and the usage event to
drop it. ``old_relay`` below is that code, kept verbatim to compare the bytes against.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from pydantic import BaseModel

from qingliang.platform.gateway.app import create_app
from qingliang.platform.gateway.auth.keys import KeyAuth
from qingliang.platform.gateway.sse import DONE, Transcript, chunk_event, sse_event, with_trace
from qingliang.platform.storage.keys import KeyStore
from qingliang.serving.engine import StreamChunk
from qingliang.serving.traffic import ModelEntry

TRACE = {"deployment": "qwen", "adapter": None, "adapter_ref": None}


# --------------------------------------------------------------- the code before


def old_with_trace(chunk: str, trace: dict[str, str | None]) -> str:
    head, sep, rest = chunk.partition("\n\n")
    if not head.startswith("data: "):
        return chunk
    try:
        event = json.loads(head.removeprefix("data: "))
    except ValueError:
        return chunk
    if not isinstance(event, dict):
        return chunk
    event["qingliang"] = trace
    return f"data: {json.dumps(event, ensure_ascii=False)}{sep}{rest}"


def old_without_usage(chunk: str) -> str:
    kept = []
    for event in chunk.split("\n\n"):
        if event.startswith("data: {") and '"usage"' in event:
            try:
                data = json.loads(event.removeprefix("data: "))
            except ValueError:
                data = None
            if isinstance(data, dict) and data.get("usage") and not data.get("choices"):
                continue
        kept.append(event)
    return "\n\n".join(kept)


def old_relay(engine_events: list[str], hide_usage: bool) -> str:
    """The client's bytes for the engine's SSE strings (``[DONE]`` last), as relayed before."""
    first, *rest = engine_events
    out = [old_with_trace(old_without_usage(first) if hide_usage else first, TRACE)]
    for chunk in rest:
        if hide_usage:
            chunk = old_without_usage(chunk)
            if not chunk:
                continue
        out.append(chunk)
    return "".join(out)


# ------------------------------------------------------------ the engines' events


class Logprob(BaseModel):
    token: str
    logprob: float


class Delta(BaseModel):
    role: str | None = None
    content: str | None = None


class Choice(BaseModel):
    index: int
    delta: Delta
    logprobs: list[Logprob] | None = None
    finish_reason: str | None = None


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class ChunkModel(BaseModel):
    """The shape of vLLM's ChatCompletionStreamResponse (pydantic, as vLLM writes it)."""

    id: str
    object: str = "chat.completion.chunk"
    created: int = 1
    model: str = "qwen"
    choices: list[Choice]
    usage: Usage | None = None


TRICKY = 'é 好 "q" \\ \n\t\x01 \u2028 😀 </script>'
VLLM_MODELS = [
    ChunkModel(id="c1", choices=[Choice(index=0, delta=Delta(role="assistant", content=""))]),
    ChunkModel(
        id="c1",
        choices=[
            Choice(
                index=0,
                delta=Delta(content=TRICKY),
                logprobs=[Logprob(token="好", logprob=-1.2e-05), Logprob(token="x", logprob=-3.0)],
            )
        ],
    ),
    ChunkModel(id="c1", choices=[Choice(index=0, delta=Delta(content=""), finish_reason="stop")]),
    ChunkModel(
        id="c1", choices=[], usage=Usage(prompt_tokens=3, completion_tokens=5, total_tokens=8)
    ),
]
#: What vLLM's serving classes yield (``model_dump_json(exclude_unset=True)``).
VLLM_EVENTS = [f"data: {m.model_dump_json(exclude_unset=True)}\n\n" for m in VLLM_MODELS]

HF_DATA = [
    {"id": "c2", "object": "text_completion", "created": 1, "model": "qwen",
     "choices": [{"index": 0, "text": text, "logprobs": None, "finish_reason": finish}]}
    for text, finish in ((TRICKY, None), ("", "length"))
] + [
    {"id": "c2", "object": "text_completion", "created": 1, "model": "qwen", "choices": [],
     "usage": {"prompt_tokens": 2, "completion_tokens": 1, "total_tokens": 3}},
]  # fmt: skip
#: What the transformers engine yielded (its old ``sse_data``).
HF_EVENTS = [
    f"data: {json.dumps(d, ensure_ascii=False, separators=(',', ':'))}\n\n" for d in HF_DATA
]


def parsed_once(events: list[str]) -> list[StreamChunk]:
    """The engines' typed chunks for these events (what the vLLM engine parses)."""
    return [StreamChunk.of(json.loads(e[6:])) for e in events]


# ------------------------------------------------------------------ the gateway


class Backend:
    def __init__(self, chunks: list[StreamChunk]) -> None:
        self.chunks = chunks

    def models(self) -> list[ModelEntry]:
        return [ModelEntry("qwen")]

    async def generate(self, *args: Any) -> dict:  # pragma: no cover - not used
        raise AssertionError

    async def stream(self, *args: Any) -> AsyncIterator[StreamChunk]:
        for c in self.chunks:
            yield c

    async def ready(self) -> dict[str, str]:  # pragma: no cover - not used
        return {}

    def rejected(self, *args: Any) -> None:  # pragma: no cover - not used
        pass


def relayed(tmp_path: Path, chunks: list[StreamChunk], metered: bool) -> bytes:
    db = tmp_path / "state.sqlite"
    store = KeyStore(db)
    limit = {"tokens_per_day": 10_000} if metered else {}
    _rec, key = store.create("app", scopes=["inference"], **limit)
    client = TestClient(create_app(Backend(chunks), None, KeyAuth(db, True)))  # type: ignore[arg-type]
    body = {"model": "qwen", "messages": [{"role": "user", "content": "hi"}], "stream": True}
    r = client.post("/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {key}"})
    assert r.status_code == 200
    return r.content


@pytest.mark.parametrize("engine", ["vllm", "transformers"])
@pytest.mark.parametrize("hide_usage", [False, True])
def test_the_client_gets_the_same_bytes_as_before(
    tmp_path: Path, engine: str, hide_usage: bool
) -> None:
    events = VLLM_EVENTS if engine == "vllm" else HF_EVENTS
    chunks = parsed_once(events) if engine == "vllm" else [StreamChunk.of(d) for d in HF_DATA]
    # A metered key whose client did not ask for usage: the usage event is hidden.
    got = relayed(tmp_path, chunks, metered=hide_usage)
    assert got == old_relay([*events, DONE], hide_usage).encode()


def test_the_bytes_literally(tmp_path: Path) -> None:
    chunks = [
        StreamChunk.of({"id": "c", "choices": [{"index": 0, "delta": {"content": "好"}}]}),
        StreamChunk.of({"id": "c", "choices": [], "usage": {"total_tokens": 3}}),
    ]
    assert relayed(tmp_path, chunks, metered=False).decode() == (
        'data: {"id": "c", "choices": [{"index": 0, "delta": {"content": "好"}}], '
        '"qingliang": {"deployment": "qwen", "adapter": null, "adapter_ref": null}}\n\n'
        'data: {"id":"c","choices":[],"usage":{"total_tokens":3}}\n\n'
        "data: [DONE]\n\n"
    )


def test_chunk_event_writes_json_as_pydantic_does() -> None:
    for model, event in zip(VLLM_MODELS, VLLM_EVENTS, strict=True):
        assert chunk_event(json.loads(event[6:])) == event
        assert chunk_event(model.model_dump(exclude_unset=True)) == event


def test_the_trace_goes_on_the_first_event_only() -> None:
    data = {"id": "c", "choices": []}
    traced = with_trace(data, TRACE)
    assert list(traced) == ["id", "choices", "qingliang"] and data == {"id": "c", "choices": []}
    assert sse_event(traced) == old_with_trace(chunk_event(data), TRACE)


def test_the_transcript_reads_the_chunks() -> None:
    transcript = Transcript()
    for chunk in parsed_once(VLLM_EVENTS):
        transcript.feed(chunk.data)
    assert transcript.id == "c1" and transcript.usage == {
        "prompt_tokens": 3,
        "completion_tokens": 5,
        "total_tokens": 8,
    }
    assert transcript.answer("chat")["choices"] == [
        {"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": TRICKY}}
    ]

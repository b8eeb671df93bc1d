"""LangChain's OpenAI clients against the gateway app, with their default settings.

``ChatOpenAI`` and ``OpenAIEmbeddings`` (langchain-openai) talk to the real app over an
in-process ASGI transport, with the fake backend and embedder of ``test_gateway`` behind
it: what LangChain sends must be taken as it is. ``OpenAIEmbeddings`` sends token ids by
default (tiktoken's cl100k_base, offline from a cache :func:`write_tiktoken_cache`
seeds), and the embedder must get the user's texts back. The same clients against the
real platform: tests/integration/test_serving_openai_clients.py.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx2
import pytest

from qingliang.platform.gateway.app import create_app
from qingliang.platform.storage.keys import KeyStore
from qingliang.serving.token_ids import write_tiktoken_cache
from tests.unit.gateway.test_gateway import (
    EMBED_MODEL,
    ENTRIES,
    FakeBackend,
    FakeEmbedder,
    StoreAuth,
)

langchain_openai = pytest.importorskip("langchain_openai")

TEXTS = ["今天天气很好", "The weather is nice today", "矿山设备维修\n(型号 6205-2RS)"]


@pytest.fixture(scope="module")
def tiktoken_offline(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """tiktoken's cl100k_base without a download: the cache seeded from bpe-openai."""
    cache = tmp_path_factory.mktemp("tiktoken")
    write_tiktoken_cache(cache)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TIKTOKEN_CACHE_DIR", str(cache))
        yield cache


@pytest.fixture
def backend() -> FakeBackend:
    return FakeBackend(list(ENTRIES))


@pytest.fixture
def embedder() -> FakeEmbedder:
    return FakeEmbedder()


@pytest.fixture
def sent() -> list[dict]:
    """The JSON bodies the client sent, in order."""
    return []


@pytest.fixture
def parts(
    tmp_path: Path, backend: FakeBackend, embedder: FakeEmbedder, sent: list[dict]
) -> dict[str, Any]:
    keys = KeyStore(tmp_path / "state.sqlite")
    app = create_app(backend, embedder, StoreAuth(keys))

    async def record(request: Any) -> None:
        sent.append(json.loads(request.content))

    http = httpx2.AsyncClient(
        transport=httpx2.ASGITransport(app=app),
        base_url="http://gw",
        event_hooks={"request": [record]},
    )
    return {
        "base_url": "http://gw/v1",
        "api_key": keys.create("ci")[1],
        "http_async_client": http,
        "max_retries": 0,
    }


async def test_chat_invoke_and_stream(parts: dict[str, Any], backend: FakeBackend) -> None:
    llm = langchain_openai.ChatOpenAI(model="qwen", temperature=0, max_tokens=20, **parts)
    answer = await llm.ainvoke("hi")
    assert answer.content == "hello"
    pieces = [c.content async for c in llm.astream("hi")]
    assert "".join(pieces) == "Hello"
    engine = [call[3] for call in backend.calls]
    assert engine[0]["messages"] == [{"role": "user", "content": "hi"}]
    assert engine[1]["stream"] is True


async def test_embeddings_default_settings_send_ids_and_embed_the_texts(
    parts: dict[str, Any], embedder: FakeEmbedder, sent: list[dict], tiktoken_offline: Path
) -> None:
    emb = langchain_openai.OpenAIEmbeddings(model=EMBED_MODEL, **parts)
    vectors = await emb.aembed_documents(TEXTS)
    assert len(vectors) == 3
    ids = sent[0]["input"]  # LangChain's default: one list of cl100k ids per text
    assert len(ids) == 3 and all(isinstance(i, int) for one in ids for i in one)
    # The embedder got the texts the user gave, decoded from the ids LangChain sent,
    # with e5's query prefix (no input_type).
    assert embedder.calls == [(TEXTS, "query")]
    await emb.aembed_query("今天天气很好")
    assert embedder.calls[-1] == (["今天天气很好"], "query")


async def test_embeddings_as_text_need_no_tokenizer(
    parts: dict[str, Any], embedder: FakeEmbedder, sent: list[dict]
) -> None:
    """What the 400 for undecodable ids advises: LangChain sends the texts themselves."""
    emb = langchain_openai.OpenAIEmbeddings(
        model=EMBED_MODEL, check_embedding_ctx_length=False, **parts
    )
    await emb.aembed_documents(TEXTS)
    assert sent[0]["input"] == TEXTS
    assert embedder.calls == [(TEXTS, "query")]


async def test_embeddings_passage_through_model_kwargs(
    parts: dict[str, Any], embedder: FakeEmbedder, tiktoken_offline: Path
) -> None:
    """What docs/openai.md tells LangChain users for the documents side of retrieval."""
    emb = langchain_openai.OpenAIEmbeddings(
        model=EMBED_MODEL, model_kwargs={"extra_body": {"input_type": "passage"}}, **parts
    )
    await emb.aembed_documents(TEXTS[:1])
    assert embedder.calls == [(TEXTS[:1], "passage")]

"""Real clients against the real platform (Ray Serve, vLLM's CPU build, the gateway):
LangChain's ``ChatOpenAI`` and ``OpenAIEmbeddings`` with their default settings, and the
official ``openai`` client on the request-field and role policy (docs/openai.md,
"Request fields and roles")."""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest
from _platform import Platform

from qingliang.platform.gateway.http.openai_bodies import IGNORED_HEADER
from qingliang.serving.token_ids import write_tiktoken_cache

pytestmark = [pytest.mark.integration, pytest.mark.slow]

langchain_openai = pytest.importorskip("langchain_openai")

EMBED = "multilingual-e5-small"
HI = [{"role": "user", "content": "What is the capital of France? One sentence."}]


@pytest.fixture(scope="module")
def tiktoken_offline(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """tiktoken's cl100k_base (what OpenAIEmbeddings tokenises with) without a download."""
    cache = tmp_path_factory.mktemp("tiktoken")
    write_tiktoken_cache(cache)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TIKTOKEN_CACHE_DIR", str(cache))
        yield cache


def _cos(a: list[float], b: list[float]) -> float:
    dot = sum(x * y for x, y in zip(a, b, strict=True))
    return dot / (math.sqrt(sum(x * x for x in a)) * math.sqrt(sum(y * y for y in b)))


# ------------------------------------------------------------------------ LangChain


def test_langchain_chat_invoke_and_stream(qwen: str, platform: Platform) -> None:
    llm = langchain_openai.ChatOpenAI(
        base_url=platform.base_url,
        api_key=platform.key,
        model=qwen,
        temperature=0,
        max_tokens=30,
        max_retries=0,
        timeout=300,
    )
    answer = llm.invoke("What is the capital of France? One sentence.")
    assert "Paris" in answer.content
    chunks = list(llm.stream("中国的首都是哪个城市？请用一句话回答。"))
    texts = [c.content for c in chunks if c.content]
    assert len(texts) > 3
    assert "北京" in "".join(texts)


def test_langchain_embeddings_with_default_settings(
    platform: Platform, client: openai.OpenAI, tiktoken_offline: Path
) -> None:
    """OpenAIEmbeddings sends cl100k token ids by default; the gateway embeds the texts
    they stand for, with the default (query) prefix that suits similarity."""
    emb = langchain_openai.OpenAIEmbeddings(
        base_url=platform.base_url, api_key=platform.key, model=EMBED, max_retries=0
    )
    assert emb.check_embedding_ctx_length  # the default: token ids on the wire
    weather, mining, english = emb.embed_documents(
        ["今天天气很好", "矿山设备维修", "The weather is nice today"]
    )
    assert _cos(weather, english) > _cos(weather, mining)
    # The same vector as the text sent as text.
    direct = client.embeddings.create(model=EMBED, input="今天天气很好").data[0].embedding
    assert _cos(emb.embed_query("今天天气很好"), direct) > 0.9999


def test_token_ids_through_the_official_client(
    client: openai.OpenAI, tiktoken_offline: Path
) -> None:
    import tiktoken

    enc = tiktoken.get_encoding("cl100k_base")
    texts = ["今天天气很好", "The weather is nice today"]
    by_ids = client.embeddings.create(model=EMBED, input=[enc.encode(t) for t in texts])
    by_text = client.embeddings.create(model=EMBED, input=texts)
    for a, b in zip(by_ids.data, by_text.data, strict=True):
        assert _cos(a.embedding, b.embedding) > 0.9999
    with pytest.raises(openai.BadRequestError) as caught:
        client.embeddings.create(model=EMBED, input=[[enc.encode("x")[0], 100300]])
    assert caught.value.param == "input[0][1]"
    assert "not a cl100k_base token id" in caught.value.message


# ------------------------------------------------------------------ fields and roles


def test_an_unknown_role_is_400_naming_it(qwen: str, client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(
            model=qwen,
            messages=[*HI, {"role": "alien", "content": "hi"}],  # type: ignore[list-item]
            max_tokens=4,
        )
    assert caught.value.param == "messages[1].role"
    assert "'alien'" in caught.value.message and "assistant" in caught.value.message


DOCUMENTED = {
    "store": False,
    "metadata": {"app": "desk"},
    "service_tier": "auto",
    "prompt_cache_key": "desk-1",
    "safety_identifier": "user-hash",
    "verbosity": "low",
    "modalities": ["text"],
    "prediction": {"type": "content", "content": "Paris"},
    "functions": [{"name": "lookup", "parameters": {"type": "object", "properties": {}}}],
    "function_call": "auto",
    "web_search_options": {"search_context_size": "low"},
    "audio": {"voice": {"id": "voice_1"}, "format": "wav"},
}


@pytest.mark.parametrize("stream", [False, True])
def test_documented_fields_are_accepted_and_named(
    qwen: str, client: openai.OpenAI, stream: bool
) -> None:
    raw = client.chat.completions.with_raw_response.create(
        model=qwen,
        messages=HI,  # type: ignore[arg-type]
        max_tokens=20,
        temperature=0,
        stream=stream,
        extra_body={"top_k": 1},  # a vLLM extra: sent to the engine, not reported
        **DOCUMENTED,  # type: ignore[arg-type]
    )
    assert raw.status_code == 200
    assert raw.headers[IGNORED_HEADER] == ", ".join(sorted(DOCUMENTED))
    answer = raw.parse()
    if stream:
        text = "".join(c.choices[0].delta.content or "" for c in answer if c.choices)
    else:
        text = answer.choices[0].message.content or ""
    assert "Paris" in text


def test_nothing_ignored_no_header(qwen: str, client: openai.OpenAI) -> None:
    raw = client.chat.completions.with_raw_response.create(
        model=qwen,
        messages=HI,  # type: ignore[arg-type]
        max_tokens=4,
        extra_body={"top_k": 1},
    )
    assert raw.status_code == 200 and IGNORED_HEADER not in raw.headers


def test_best_of_on_completions_is_ignored_and_named(qwen: str, client: openai.OpenAI) -> None:
    raw = client.completions.with_raw_response.create(
        model=qwen, prompt="The capital of France is", max_tokens=4, best_of=2, temperature=0
    )
    assert raw.headers[IGNORED_HEADER] == "best_of"
    assert raw.parse().choices[0].text


@pytest.mark.parametrize(
    ("extra", "param", "fragment"),
    [
        ({"temprature": 0.2}, "temprature", "did you mean 'temperature'?"),
        ({"priority": -10}, "priority", "cannot be set through the gateway"),
    ],
)
def test_misspelt_and_internal_fields_are_400_naming_them(
    qwen: str, client: openai.OpenAI, extra: dict, param: str, fragment: str
) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model=qwen, messages=HI, max_tokens=4, extra_body=extra)  # type: ignore[arg-type]
    assert caught.value.param == param
    assert fragment in caught.value.message

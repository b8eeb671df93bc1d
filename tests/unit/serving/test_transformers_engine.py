"""The transformers CPU fallback engine, on a tiny random Llama built at test time.

No Ray, no network. The model and adapters are built once per module; one engine is
shared by most tests (module event loop), others start their own where the plan differs.
"""

from __future__ import annotations

import asyncio
import json
import shutil
from pathlib import Path
from typing import Any

import httpx
import pytest
import pytest_asyncio
import torch

from qingliang.platform.errors import BadRequest, EngineError, NotFound
from qingliang.platform.gateway.sse import DONE, chunk_event
from qingliang.serving.engine import Engine, StreamChunk, Usage
from qingliang.serving.engines.transformers_engine import TransformersEngine
from qingliang.serving.manifest import ModelDeployment
from qingliang.serving.plan import DeploymentPlan, HardwareProfile, compile_plan
from qingliang.serving.tiny_model import build_tiny_adapter, build_tiny_llama

pytestmark = pytest.mark.asyncio(loop_scope="module")

torch.set_num_threads(1)

HI = [{"role": "user", "content": "What is the capital of France?"}]
PROMPT = "The quick brown fox"


def make_plan(model: Path, **spec: Any) -> DeploymentPlan:
    engine = {"kind": "transformers", "cpu_threads": 1, **spec.pop("engine", {})}
    md = ModelDeployment.model_validate(
        {
            "apiVersion": "qingliang.io/v1",
            "kind": "ModelDeployment",
            "metadata": {"name": "tiny"},
            "spec": {"model": {"source": str(model)}, "engine": engine, **spec},
        }
    )
    return compile_plan(md, HardwareProfile(cpu_isa="avx2", vllm=False)).with_model_path(str(model))


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("tiny")
    base = build_tiny_llama(root / "base")
    return {
        "base": base,
        "a": build_tiny_adapter(base, root / "a", seed=1),
        "b": build_tiny_adapter(base, root / "b", seed=2),
        "r32": build_tiny_adapter(base, root / "r32", seed=3, rank=32),
    }


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def engine(models: dict[str, Path]):
    plan = make_plan(models["base"], lora={"adapters": {"a": str(models["a"])}, "max_adapters": 2})
    eng = TransformersEngine(plan)
    await eng.start()
    yield eng
    await eng.shutdown()


@pytest.fixture(scope="module")
def reference(models: dict[str, Path]):
    """The same checkpoint loaded directly, to compare engine output with."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(models["base"])
    model = AutoModelForCausalLM.from_pretrained(models["base"], dtype=torch.float32).eval()
    return tok, model


def greedy(model: Any, tok: Any, ids: list[int], n: int) -> tuple[str, int]:
    """Direct ``model.generate`` greedy: (text, generated token count)."""
    x = torch.tensor([ids])
    with torch.inference_mode():
        out = model.generate(
            input_ids=x, attention_mask=torch.ones_like(x), max_new_tokens=n, do_sample=False
        )
    new = out[0, len(ids) :].tolist()
    return tok.decode(new, skip_special_tokens=True), len(new)


def chat_ids(tok: Any, messages: list[dict]) -> list[int]:
    text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return tok(text, add_special_tokens=False)["input_ids"]


async def ask(engine: TransformersEngine, adapter: str | None = None, **body: Any) -> dict:
    return await engine.chat(
        {"model": "tiny", "messages": HI, "max_tokens": 12, "temperature": 0, **body},
        adapter=adapter,
    )


def content(out: dict) -> str:
    return out["choices"][0]["message"]["content"]


async def collect(stream: Any) -> list[StreamChunk]:
    return [s async for s in stream]


def payloads(events: list[StreamChunk]) -> list[dict]:
    assert all(isinstance(e, StreamChunk) for e in events)
    return [e.data for e in events]


# ------------------------------------------------------------------ contract


async def test_constructor_does_no_io_and_start_failure_is_engine_error(tmp_path: Path) -> None:
    eng = TransformersEngine(make_plan(tmp_path / "missing"))
    assert isinstance(eng, Engine)
    with pytest.raises(EngineError):
        await eng.check_health()
    with pytest.raises(EngineError, match="cannot load"):
        await eng.start()


async def test_engine_reports_context_length(engine: TransformersEngine) -> None:
    assert isinstance(engine, Engine)
    assert engine.max_model_len == 512  # the tiny model's max_position_embeddings
    await engine.check_health()


# ---------------------------------------------------------------- generation


async def test_chat_greedy_matches_direct_generate(engine, reference) -> None:
    tok, model = reference
    ids = chat_ids(tok, HI)
    text, n = greedy(model, tok, ids, 12)
    out = await ask(engine)
    assert content(out) == text
    assert out["object"] == "chat.completion" and out["id"].startswith("chatcmpl-")
    assert out["model"] == "tiny"
    assert out["choices"][0]["message"]["role"] == "assistant"
    assert out["usage"] == {"prompt_tokens": len(ids), "completion_tokens": n,
                            "total_tokens": len(ids) + n}  # fmt: skip


async def test_completion_greedy_matches_direct_generate(engine, reference) -> None:
    tok, model = reference
    ids = tok(PROMPT)["input_ids"]
    text, _ = greedy(model, tok, ids, 10)
    out = await engine.completion(
        {"model": "tiny", "prompt": PROMPT, "max_tokens": 10, "temperature": 0}, adapter=None
    )
    assert out["object"] == "text_completion" and out["id"].startswith("cmpl-")
    assert out["choices"][0]["text"] == text
    by_ids = await engine.completion(
        {"model": "tiny", "prompt": ids, "max_tokens": 10, "temperature": 0}, adapter=None
    )
    assert by_ids["choices"][0]["text"] == text


async def test_max_tokens_gives_finish_reason_length(engine) -> None:
    for key in ("max_tokens", "max_completion_tokens"):
        out = await ask(engine, **{"max_tokens": None, key: 3})
        assert out["choices"][0]["finish_reason"] == "length"
        assert out["usage"]["completion_tokens"] == 3


async def test_stop_strings_are_honoured(engine) -> None:
    full = content(await ask(engine, max_tokens=16))
    # A stop string that first occurs after the start of the greedy text.
    k, stop = next((i, full[i : i + 2]) for i in range(1, len(full) - 1)
                   if full.find(full[i : i + 2]) == i)  # fmt: skip
    for value in (stop, ["zzzz-never", stop]):
        out = await ask(engine, max_tokens=16, stop=value)
        assert content(out) == full[:k]
        assert out["choices"][0]["finish_reason"] == "stop"
        assert out["choices"][0]["stop_reason"] == stop
    events = payloads(await collect(await ask(engine, max_tokens=16, stop=stop, stream=True)))
    streamed = "".join(c["choices"][0]["delta"].get("content", "") for c in events)
    assert streamed == full[:k]


async def test_seeded_sampling_is_reproducible(engine) -> None:
    body = {"temperature": 1.0, "top_p": 0.9, "seed": 7, "max_tokens": 12}
    first, second = content(await ask(engine, **body)), content(await ask(engine, **body))
    assert first == second


async def test_unseeded_sampling_varies(engine) -> None:
    outs = {content(await ask(engine, temperature=1.5, max_tokens=12)) for _ in range(3)}
    assert len(outs) > 1


async def test_concurrent_requests_are_serialised_with_their_own_adapter(engine) -> None:
    adapters = [None, "a", None, "a"]
    sequential = [content(await ask(engine, adapter=a)) for a in adapters[:2]]
    together = await asyncio.gather(*(ask(engine, adapter=a) for a in adapters))
    assert [content(o) for o in together] == sequential * 2


# ----------------------------------------------------------------- streaming


async def test_chat_stream_chunks_usage_and_done(engine) -> None:
    whole = await ask(engine)
    events = await collect(await ask(engine, stream=True, stream_options={"include_usage": True}))
    chunks = payloads(events)
    assert len(chunks) >= 4  # role, several deltas, finish, usage
    assert all(c["object"] == "chat.completion.chunk" and c["id"] == chunks[0]["id"]
               for c in chunks)  # fmt: skip
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    assert chunks[-2]["choices"][0]["finish_reason"] == "length"
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"] == whole["usage"]
    assert events[-1].usage == Usage(**whole["usage"])
    assert all(e.usage is None for e in events[:-1])
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks[:-1])
    assert text == content(whole)


async def test_completion_stream_without_usage(engine) -> None:
    body = {"model": "tiny", "prompt": PROMPT, "max_tokens": 6, "temperature": 0}
    whole = await engine.completion(body, adapter=None)
    events = await collect(await engine.completion({**body, "stream": True}, adapter=None))
    chunks = payloads(events)
    assert all("usage" not in c for c in chunks)
    assert all(e.usage is None for e in events)
    assert chunks[-1]["choices"][0]["finish_reason"] == "length"
    assert "".join(c["choices"][0]["text"] for c in chunks) == whole["choices"][0]["text"]


async def test_openai_client_parses_responses_and_streams(engine) -> None:
    openai = pytest.importorskip("openai")

    async def handler(request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        serve = engine.chat if request.url.path.endswith("/chat/completions") else engine.completion
        out = await serve(body, adapter=None)
        if isinstance(out, dict):
            return httpx.Response(200, json=out)
        text = "".join([chunk_event(s.data) async for s in out]) + DONE
        return httpx.Response(200, text=text, headers={"content-type": "text/event-stream"})

    http = httpx.AsyncClient(transport=httpx.MockTransport(handler))
    client = openai.AsyncOpenAI(base_url="http://test/v1", api_key="x", http_client=http)
    kw: dict[str, Any] = {"model": "tiny", "max_tokens": 8, "temperature": 0}
    reply = await client.chat.completions.create(messages=HI, **kw)
    stream = await client.chat.completions.create(
        messages=HI, stream=True, stream_options={"include_usage": True}, **kw
    )
    parts, usage = [], None
    async for chunk in stream:
        parts += [c.delta.content or "" for c in chunk.choices]
        usage = chunk.usage or usage
    assert "".join(parts) == reply.choices[0].message.content
    assert usage is not None and usage.completion_tokens == reply.usage.completion_tokens
    comp = await client.completions.create(prompt=PROMPT, stream=True, **kw)
    assert [c.choices[0].finish_reason async for c in comp][-1] == "length"
    await http.aclose()


async def test_client_that_stops_reading_stops_generation(engine) -> None:
    stream = await ask(engine, max_tokens=400, stream=True)
    it = aiter(stream)
    for _ in range(3):
        await anext(it)
    (run,) = engine._runs
    await it.aclose()
    for _ in range(200):
        if not engine._lock.locked():
            break
        await asyncio.sleep(0.05)
    assert not engine._lock.locked()
    assert run.n_tokens < 100  # stopped at once, not at max_tokens
    assert content(await ask(engine, max_tokens=2))  # the engine still serves


# ------------------------------------------------------------ refused requests


async def test_prompt_over_max_model_len_is_bad_request(models) -> None:
    eng = TransformersEngine(make_plan(models["base"], engine={"max_model_len": 32}))
    await eng.start()
    try:
        assert eng.max_model_len == 32
        long = [{"role": "user", "content": "one two three four five six " * 10}]
        with pytest.raises(BadRequest, match=r"maximum context length is 32 tokens") as info:
            await ask(eng, messages=long)
        assert info.value.status_code == 400 and info.value.param == "messages"
        with pytest.raises(BadRequest) as info:
            await ask(eng, max_tokens=30)
        n_in = int(info.value.message.split("has ")[1].split(" input")[0])
        assert "too large: 30" in info.value.message
        assert f"(30 > 32 - {n_in})" in info.value.message
        assert info.value.param == "max_tokens"
        ok = await ask(eng, max_tokens=32 - n_in)
        assert ok["usage"]["total_tokens"] <= 32
    finally:
        await eng.shutdown()


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"n": 2}, "n"),
        ({"logprobs": True}, "logprobs"),
        ({"top_logprobs": 3}, "top_logprobs"),
        ({"tools": [{"type": "function", "function": {"name": "f"}}]}, "tools"),
        ({"frobnicate": 1}, "frobnicate"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"stop": 3}, "stop"),
        ({"temperature": -1}, "temperature"),
        ({"stream_options": {"include_usage": True}}, "stream_options"),
    ],
)
async def test_unsupported_parameters_are_bad_requests(engine, extra, param) -> None:
    with pytest.raises(BadRequest) as info:
        await ask(engine, **extra)
    assert info.value.param == param
    assert param in info.value.message or param == "max_tokens"


async def test_neutral_values_are_accepted(engine) -> None:
    out = await ask(engine, n=1, logprobs=False, presence_penalty=0, frequency_penalty=0.0,
                    max_tokens=2)  # fmt: skip
    assert out["usage"]["completion_tokens"] == 2


async def test_completion_takes_one_prompt_and_no_logprobs(engine) -> None:
    with pytest.raises(BadRequest) as info:
        await engine.completion({"model": "tiny", "prompt": ["a", "b"]}, adapter=None)
    assert info.value.param == "prompt"
    with pytest.raises(BadRequest) as info:  # 0 asks for the sampled token's logprob
        await engine.completion({"model": "tiny", "prompt": PROMPT, "logprobs": 0}, adapter=None)
    assert info.value.param == "logprobs"


# ----------------------------------------------------------------- adapters


async def test_adapter_changes_output_and_base_is_unchanged(engine, models, reference) -> None:
    from peft import PeftModel

    tok, model = reference
    base_before = content(await ask(engine))
    assert engine.adapters() == {"a": str(models["a"])}
    with_a = content(await ask(engine, adapter="a"))
    assert with_a != base_before
    await engine.load_adapter("b", str(models["b"]))
    with_b = content(await ask(engine, adapter="b"))
    assert with_b not in (with_a, base_before)
    assert content(await ask(engine)) == base_before
    assert content(await ask(engine, adapter="a")) == with_a
    # The engine's adapter output is PEFT's own.
    peft = PeftModel.from_pretrained(model, str(models["a"]))
    try:
        assert greedy(peft, tok, chat_ids(tok, HI), 12)[0] == with_a
    finally:
        peft.unload()
    await engine.unload_adapter("b")


async def test_load_adapter_is_idempotent_and_bounded(engine, models, tmp_path) -> None:
    await engine.load_adapter("a", str(models["a"]))  # same path: no-op
    with_a = content(await ask(engine, adapter="a"))
    # A new path for a loaded name replaces its weights (and stays within max_loras).
    await engine.load_adapter("a", str(models["b"]))
    assert engine.adapters()["a"] == str(models["b"])
    with_b_as_a = content(await ask(engine, adapter="a"))
    assert with_b_as_a != with_a
    await engine.load_adapter("a", str(models["a"]))
    assert content(await ask(engine, adapter="a")) == with_a
    await engine.load_adapter("b", str(models["b"]))
    with pytest.raises(BadRequest, match="max_loras is 2"):
        await engine.load_adapter("c", str(models["b"]))
    await engine.unload_adapter("b")
    with pytest.raises(BadRequest, match="no adapter_config.json"):
        await engine.load_adapter("c", str(tmp_path))
    with pytest.raises(BadRequest, match="invalid"):
        await engine.load_adapter("x:y", str(models["b"]))


async def test_unloaded_adapter_is_not_found(engine, models) -> None:
    await engine.load_adapter("b.v1", str(models["b"]))
    assert content(await ask(engine, adapter="b.v1"))
    await engine.unload_adapter("b.v1")
    assert "b.v1" not in engine.adapters()
    with pytest.raises(NotFound) as info:
        await ask(engine, adapter="b.v1")
    assert info.value.status_code == 404
    with pytest.raises(NotFound):
        await engine.unload_adapter("b.v1")
    with pytest.raises(NotFound):
        await ask(engine, adapter="never-loaded", stream=True)


async def test_adapter_rank_over_max_lora_rank_is_bad_request(engine, models) -> None:
    with pytest.raises(BadRequest, match=r"rank 32, above .* max_lora_rank 16") as info:
        await engine.load_adapter("big", str(models["r32"]))
    assert info.value.status_code == 400
    assert "big" not in engine.adapters()


async def test_last_adapter_unloads_and_broken_adapter_leaves_base_intact(models, tmp_path) -> None:
    """Unloading every adapter, and a failed first load, give back the plain base model."""
    from safetensors.torch import load_file, save_file

    broken = tmp_path / "broken"
    shutil.copytree(models["a"], broken)
    weights = load_file(broken / "adapter_model.safetensors")
    save_file({k: v[:, :-1].contiguous() for k, v in weights.items()},
              broken / "adapter_model.safetensors")  # fmt: skip
    eng = TransformersEngine(make_plan(models["base"], lora={"enabled": True}))
    await eng.start()
    try:
        base = content(await ask(eng))
        with pytest.raises(BadRequest, match="cannot be loaded"):
            await eng.load_adapter("broken", str(broken))
        assert eng.adapters() == {} and content(await ask(eng)) == base
        await eng.load_adapter("a", str(models["a"]))
        assert content(await ask(eng, adapter="a")) != base
        await eng.unload_adapter("a")
        assert content(await ask(eng)) == base
        await eng.load_adapter("a", str(models["a"]))  # and loads again after that
        assert content(await ask(eng, adapter="a")) != base
    finally:
        await eng.shutdown()
    with pytest.raises(EngineError):
        await eng.check_health()


async def test_shutdown_does_not_wait_for_an_abandoned_stream(models) -> None:
    eng = TransformersEngine(make_plan(models["base"]))
    await eng.start()
    stream = aiter(await ask(eng, max_tokens=400, stream=True))
    await anext(stream)
    await anext(stream)
    await asyncio.wait_for(eng.shutdown(), timeout=30)  # the stream still holds the lock
    with pytest.raises(EngineError):
        await eng.check_health()
    await stream.aclose()
    with pytest.raises(EngineError):
        await ask(eng)


async def test_lora_disabled_refuses_adapters(models) -> None:
    eng = TransformersEngine(make_plan(models["base"]))
    await eng.start()
    try:
        with pytest.raises(BadRequest, match="without LoRA"):
            await eng.load_adapter("a", str(models["a"]))
    finally:
        await eng.shutdown()


# ------------------------------------------------------------- quantisation


@pytest.mark.parametrize("method", ["bnb_nf4", "bnb_int8"])
async def test_bitsandbytes_quantisation_on_cpu(models, method) -> None:
    pytest.importorskip("bitsandbytes")
    plan = make_plan(
        models["base"],
        quantization={"method": method},
        lora={"adapters": {"a": str(models["a"])}},
    )
    eng = TransformersEngine(plan)
    await eng.start()
    try:
        layer = eng._model.model.layers[0].self_attn.q_proj.base_layer
        assert type(layer).__name__ == {"bnb_nf4": "Linear4bit", "bnb_int8": "Linear8bitLt"}[method]
        base = await ask(eng, max_tokens=8)
        assert base["usage"]["completion_tokens"] > 0
        assert content(await ask(eng, adapter="a", max_tokens=8)) != content(base)
        assert content(await ask(eng, max_tokens=8)) == content(base)
    finally:
        await eng.shutdown()

"""Tool calls written as text by small models, read as OpenAI ``tool_calls`` (no vLLM).

The response bodies and stream chunks here are shaped as vLLM's chat serving writes
them (``model_dump(exclude_none=True)`` bodies; a role chunk, content deltas, a finish
chunk, a usage chunk).
"""

from __future__ import annotations

import ast
import importlib.util
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from qingliang.serving.engine import StreamChunk
from qingliang.serving.toolcalls import Call, Offer, may_be_call, parse_tool_calls, recover

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather in a city.",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
        },
    },
}
TIME = {
    "type": "function",
    "function": {"name": "get_time", "parameters": {"type": "object", "properties": {}}},
}
TOOLS = {"tools": [WEATHER, TIME]}
OFFER = Offer.of(TOOLS)
FUZHOU = Call("get_weather", {"city": "Fuzhou"})
CALL_JSON = '{"name": "get_weather", "arguments": {"city": "Fuzhou"}}'


def calls(text: str, body: dict | None = None) -> list[Call] | None:
    offer = Offer.of(body or TOOLS)
    assert offer is not None
    return parse_tool_calls(text, offer)


# --------------------------------------------------------------------------- parsing


@pytest.mark.parametrize(
    "text",
    [
        CALL_JSON,  # bare
        f"  \n{CALL_JSON}\n",
        f"<tool_call>\n{CALL_JSON}\n</tool_call>",  # tagged (hermes), as the parser expects
        f"<tool_call>{CALL_JSON}",  # tagged, the closing tag cut off by max_tokens
        f"```json\n{CALL_JSON}\n```",  # fenced, as Qwen2.5-Coder-0.5B often writes it
        f"```\n{CALL_JSON}```",
        f"[{CALL_JSON}]",  # a list of calls
        '{"name": "get_weather", "parameters": {"city": "Fuzhou"}}',  # `parameters`
        '{"name": "get_weather", "arguments": "{\\"city\\": \\"Fuzhou\\"}"}',  # a JSON string
        # OpenAI's own shape, copied from the conversation
        '{"type": "function", "function": ' + CALL_JSON + "}",
    ],
)
def test_a_call_in_any_accepted_form_is_read(text: str) -> None:
    assert calls(text) == [FUZHOU]


def test_several_calls_tagged_listed_or_a_line_each() -> None:
    two = [FUZHOU, Call("get_time", {})]
    time_json = '{"name": "get_time", "arguments": {}}'
    assert calls(f"<tool_call>{CALL_JSON}</tool_call>\n<tool_call>{time_json}</tool_call>") == two
    assert calls(f"[{CALL_JSON}, {time_json}]") == two
    assert calls(f"{CALL_JSON}\n{time_json}") == two
    assert calls('{"name": "get_time"}') == [Call("get_time", {})]  # no arguments: {}


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ('{"name": "delete_everything", "arguments": {}}', "a tool that was not offered"),
        ('{"name": "get_weather", "arguments": {}}', "a required argument missing"),
        ('{"name": "get_weather", "arguments": {"city": 3}}', "an argument of the wrong type"),
        (
            '{"name": "get_weather", "arguments": {"city": "Fuzhou", "condition": "sunny"}}',
            "an argument the schema does not list",
        ),
        ('{"name": "get_weather", "arguments": "city=Fuzhou"}', "arguments not JSON"),
        ('{"name": "get_weather", "arguments": [1]}', "arguments not an object"),
        ('{"name": "get_weather", "arguments": {"city": "F"}, "why": 1}', "an extra key"),
        ('{"answer": 42}', "a JSON answer, not a call"),
        ("[]", "an empty list"),
        (f"Sure! {CALL_JSON}", "prose before the call"),
        (f"{CALL_JSON} That is the call.", "prose after the call"),
        (f"Use {CALL_JSON} for that.", "JSON inside prose"),
        (f"<tool_call>{CALL_JSON}</tool_call> and then some", "prose after a tagged call"),
        (f'[{CALL_JSON}, {{"name": "nope"}}]', "one bad call in a list"),
        ('{"name": "get_weather", "arguments": {"city": "Fu', "unfinished JSON"),
        ("```python\nprint('hi')\n```", "a fenced non-JSON block"),
        ("The weather in Fuzhou is sunny.", "plain prose"),
        ("", "nothing"),
    ],
)
def test_anything_else_stays_text(text: str, why: str) -> None:
    assert calls(text) is None, why


def test_a_named_tool_choice_allows_only_that_tool() -> None:
    named = TOOLS | {"tool_choice": {"type": "function", "function": {"name": "get_time"}}}
    assert calls(CALL_JSON, named) is None
    assert calls('{"name": "get_time", "arguments": {}}', named) == [Call("get_time", {})]
    offer = Offer.of(named)
    assert offer is not None and offer.finish_reason == "stop"  # OpenAI's, for a named call
    assert OFFER is not None and OFFER.finish_reason == "tool_calls"


def test_allowed_tools_restrict_the_calls_read() -> None:
    allowed = {"type": "allowed_tools", "allowed_tools": {"mode": "auto", "tools": [
        {"type": "function", "function": {"name": "get_time"}}]}}  # fmt: skip
    assert calls(CALL_JSON, TOOLS | {"tool_choice": allowed}) is None
    assert calls('{"name": "get_time"}', TOOLS | {"tool_choice": allowed}) == [Call("get_time", {})]


def test_tool_choice_none_or_no_tools_offers_nothing() -> None:
    assert Offer.of(TOOLS | {"tool_choice": "none"}) is None
    assert Offer.of({"tools": []}) is None
    assert Offer.of({}) is None
    assert Offer.of({"tools": [{"type": "custom", "custom": {"name": "x"}}]}) is None
    assert Offer.of(TOOLS | {"tool_choice": "required"}) is not None


def test_parallel_tool_calls_false_keeps_the_first_call() -> None:
    two = f'{CALL_JSON}\n{{"name": "get_time", "arguments": {{}}}}'
    assert calls(two, TOOLS | {"parallel_tool_calls": False}) == [FUZHOU]
    assert len(calls(two, TOOLS | {"parallel_tool_calls": True}) or []) == 2


def test_a_schema_that_allows_other_arguments_is_followed() -> None:
    open_schema = {"type": "object", "properties": {"city": {"type": "string"}},
                   "additionalProperties": True}  # fmt: skip
    fn = {"name": "get_weather", "parameters": open_schema}
    body = {"tools": [{"type": "function", "function": fn}]}
    text = '{"name": "get_weather", "arguments": {"city": "Fuzhou", "unit": "C"}}'
    assert calls(text, body) == [Call("get_weather", {"city": "Fuzhou", "unit": "C"})]


def test_a_tool_without_a_schema_takes_any_object() -> None:
    bare = {"tools": [{"type": "function", "function": {"name": "ping"}}]}
    assert calls('{"name": "ping", "arguments": {"x": [1]}}', bare) == [Call("ping", {"x": [1]})]
    broken = {
        "tools": [{"type": "function", "function": {"name": "ping", "parameters": {"type": 5}}}]
    }
    assert calls('{"name": "ping", "arguments": {"x": 1}}', broken) == [Call("ping", {"x": 1})]


# ------------------------------------------------------------------ response bodies


def response(content: str | None, **message: Any) -> dict:
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "created": 1,
        "model": "qwen",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": content, **message},
                "logprobs": None,
                "finish_reason": "stop",
            }
        ],
        "usage": {"prompt_tokens": 9, "completion_tokens": 20, "total_tokens": 29},
    }


def test_a_response_whose_text_is_a_call_gets_tool_calls() -> None:
    out = recover(TOOLS, response(f"```json\n{CALL_JSON}\n```"))
    assert isinstance(out, dict)
    (choice,) = out["choices"]
    assert choice["finish_reason"] == "tool_calls"
    message = choice["message"]
    assert message["content"] is None
    (tc,) = message["tool_calls"]
    assert tc["type"] == "function" and tc["id"].startswith("call_")
    assert tc["function"]["name"] == "get_weather"
    assert json.loads(tc["function"]["arguments"]) == {"city": "Fuzhou"}


def test_a_response_that_is_an_answer_is_unchanged() -> None:
    for text in ("It is sunny in Fuzhou.", f"Try {CALL_JSON}.", '{"name": "nope"}'):
        assert recover(TOOLS, response(text)) == response(text)
    assert recover({"tools": [WEATHER], "tool_choice": "none"}, response(CALL_JSON)) == response(
        CALL_JSON
    )
    assert recover({}, response(CALL_JSON)) == response(CALL_JSON)


def test_calls_vllm_already_parsed_are_left_alone() -> None:
    parsed = [{"id": "chatcmpl-tool-1", "type": "function",
               "function": {"name": "get_time", "arguments": "{}"}}]  # fmt: skip
    body = response(CALL_JSON, tool_calls=parsed)
    out = recover(TOOLS, body)
    assert isinstance(out, dict)
    assert out["choices"][0]["message"]["tool_calls"] == parsed
    assert out["choices"][0]["message"]["content"] == CALL_JSON


def test_a_named_call_finishes_with_stop() -> None:
    named = TOOLS | {"tool_choice": {"type": "function", "function": {"name": "get_weather"}}}
    out = recover(named, response(CALL_JSON))
    assert isinstance(out, dict)
    assert out["choices"][0]["finish_reason"] == "stop"
    assert out["choices"][0]["message"]["tool_calls"][0]["function"]["name"] == "get_weather"


# --------------------------------------------------------------------------- streams

HEAD = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1, "model": "qwen"}


def chunk(delta: dict, finish: str | None = None, index: int = 0) -> StreamChunk:
    choice = {"index": index, "delta": delta, "logprobs": None, "finish_reason": finish}
    return StreamChunk.of(HEAD | {"choices": [choice]})


def vllm_stream(pieces: list[str], finish: str = "stop") -> list[StreamChunk]:
    """What vLLM streams for an answer of ``pieces``: role, deltas, finish, usage."""
    usage = {"prompt_tokens": 9, "completion_tokens": len(pieces), "total_tokens": 9 + len(pieces)}
    return [
        chunk({"role": "assistant", "content": ""}),
        *(chunk({"content": p}) for p in pieces),
        chunk({"content": ""}, finish),
        StreamChunk.of(HEAD | {"choices": [], "usage": usage}),
    ]


class Source:
    """The engine's stream: yields ``chunks``, records how far it was read and closing."""

    def __init__(self, chunks: list[StreamChunk]) -> None:
        self.chunks = chunks
        self.read = 0
        self.closed = False

    async def gen(self) -> AsyncIterator[StreamChunk]:
        try:
            for c in self.chunks:
                self.read += 1
                yield c
        finally:
            self.closed = True


async def run(body: dict, chunks: list[StreamChunk]) -> tuple[list[StreamChunk], Source]:
    source = Source(chunks)
    out = recover(body, source.gen())
    assert not isinstance(out, dict)
    return [c async for c in out], source


def text_of(chunks: list[StreamChunk]) -> str:
    return "".join(
        (c.data["choices"][0].get("delta") or {}).get("content") or ""
        for c in chunks
        if c.data.get("choices")
    )


async def test_a_text_answer_streams_unchanged_and_is_not_held() -> None:
    chunks = vllm_stream(["It", " is", " sunny", " in", " Fuzhou", "."])
    source = Source(chunks)
    out = recover(TOOLS, source.gen())
    assert not isinstance(out, dict)
    got = []
    async for c in out:
        got.append(c)
        # Each delta comes out as soon as it is read: "It" cannot start a call.
        assert source.read == len(got)
    assert got == chunks
    assert source.closed


async def test_a_call_answer_streams_as_tool_call_deltas() -> None:
    pieces = ["```", "json", "\n", '{"name": "get_weather", ', '"arguments": {"city": ',
              '"Fuzhou"}}', "\n```"]  # fmt: skip
    got, source = await run(TOOLS, vllm_stream(pieces))
    assert source.closed
    assert text_of(got) == ""  # no piece of the call leaks out as content
    choices = [c.data["choices"][0] for c in got if c.data.get("choices")]
    assert choices[0]["delta"] == {"role": "assistant", "content": ""}
    (tc,) = call_deltas(got)
    assert tc["index"] == 0 and tc["type"] == "function" and tc["id"].startswith("call_")
    assert tc["function"]["name"] == "get_weather"
    assert json.loads(tc["function"]["arguments"]) == {"city": "Fuzhou"}
    assert [ch["finish_reason"] for ch in choices][-1] == "tool_calls"
    assert got[-1].usage is not None and got[-1].usage.completion_tokens == len(pieces)
    assert all(c.data["id"] == "chatcmpl-1" for c in got)


def call_deltas(chunks: list[StreamChunk]) -> list[dict]:
    """The ``tool_calls`` entries of ``chunks``' deltas, in order."""
    out: list[dict] = []
    for c in chunks:
        for choice in c.data.get("choices") or []:
            out += (choice.get("delta") or {}).get("tool_calls") or []
    return out


async def test_two_streamed_calls_get_indexes_and_parallel_false_keeps_one() -> None:
    pieces = [CALL_JSON, "\n", '{"name": "get_time", "arguments": {}}']
    got, _ = await run(TOOLS, vllm_stream(pieces))
    deltas = call_deltas(got)
    assert [d["function"]["name"] for d in deltas] == ["get_weather", "get_time"]
    assert [d["index"] for d in deltas] == [0, 1]
    got, _ = await run(TOOLS | {"parallel_tool_calls": False}, vllm_stream(pieces))
    assert [d["function"]["name"] for d in call_deltas(got)] == ["get_weather"]


async def test_json_that_is_not_a_call_is_flushed_unchanged_at_the_end() -> None:
    chunks = vllm_stream(['{"answer"', ": 42}"])
    got, _ = await run(TOOLS, chunks)
    assert got == chunks
    prose = vllm_stream(["<tool", "box> is a", " word"])  # looked like a tag for a while
    got, _ = await run(TOOLS, prose)
    assert got == prose


async def test_a_stream_cut_off_before_its_finish_flushes_what_was_held() -> None:
    chunks = vllm_stream(['{"name": "get_weather", ', '"arguments": {"ci'])[:-2]
    got, _ = await run(TOOLS, chunks)
    assert got == chunks


async def test_calls_vllm_streams_itself_pass_through() -> None:
    call = {"index": 0, "id": "chatcmpl-tool-1", "type": "function",
            "function": {"name": "get_time", "arguments": "{}"}}  # fmt: skip
    chunks = [
        chunk({"role": "assistant", "content": ""}),
        chunk({"tool_calls": [call]}),
        chunk({"content": ""}, "tool_calls"),
    ]
    got, _ = await run(TOOLS, chunks)
    assert got == chunks


async def test_no_tools_or_tool_choice_none_is_not_wrapped() -> None:
    source = Source(vllm_stream([CALL_JSON]))
    stream = source.gen()
    assert recover({}, stream) is stream
    assert recover(TOOLS | {"tool_choice": "none"}, stream) is stream


async def test_choices_of_one_stream_are_decided_apart() -> None:
    chunks = [
        StreamChunk.of(
            HEAD
            | {
                "choices": [
                    {
                        "index": 0,
                        "delta": {"role": "assistant", "content": ""},
                        "finish_reason": None,
                    },
                    {
                        "index": 1,
                        "delta": {"role": "assistant", "content": ""},
                        "finish_reason": None,
                    },
                ]
            }
        ),  # fmt: skip
        chunk({"content": CALL_JSON}, index=0),
        chunk({"content": "Sunny."}, index=1),
        chunk({}, "stop", index=1),
        chunk({}, "stop", index=0),
    ]
    got, _ = await run(TOOLS, chunks)
    by_index: dict[int, list[dict]] = {0: [], 1: []}
    for c in got:
        for ch in c.data["choices"]:
            by_index[ch["index"]].append(ch)
    assert [ch["delta"].get("content") for ch in by_index[1]] == ["", "Sunny.", None]
    assert by_index[1][-1]["finish_reason"] == "stop"
    assert any(ch["delta"].get("tool_calls") for ch in by_index[0])
    assert by_index[0][-1]["finish_reason"] == "tool_calls"


@pytest.mark.parametrize(
    ("text", "possible"),
    [("", True), ("  ", True), ("`", True), ("``", True), ("<tool", True), ("{", True),
     ("[1", True), ("```json", True), ("<tool_call>{", True), ("I", False), ("<b>", False),
     ("`x", False)],
)  # fmt: skip
def test_what_may_still_become_a_call(text: str, possible: bool) -> None:
    assert may_be_call(text) is possible


# ----------------------------------------------------------------- vLLM's parser names


def test_the_parser_catalog_matches_the_installed_vllm() -> None:
    """serving/catalog/tool_parsers.yaml lists what vLLM registers (read, not imported)."""
    spec = importlib.util.find_spec("vllm")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("vLLM is not installed")
    init = Path(next(iter(spec.submodule_search_locations))) / "tool_parsers" / "__init__.py"
    tree = ast.parse(init.read_text(encoding="utf-8"))
    registered: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign) and any(
            isinstance(t, ast.Name) and t.id == "_TOOL_PARSERS_TO_REGISTER" for t in node.targets
        ):
            assert isinstance(node.value, ast.Dict)
            registered = {k.value for k in node.value.keys if isinstance(k, ast.Constant)}
    assert registered, f"no _TOOL_PARSERS_TO_REGISTER in {init}"
    catalog = Path(__file__).parents[3] / "serving" / "catalog" / "tool_parsers.yaml"
    assert set(yaml.safe_load(catalog.read_text(encoding="utf-8"))["parsers"]) == registered
    assert "hermes" in registered


# ------------------------------------------------------- wired into the vLLM engine


class FakeServingChat:
    """vLLM's ``OpenAIServingChat`` at its boundary: answers every request with ``text``
    (a response object, or SSE strings when streaming), as its hermes parser does when the
    model left the tags out."""

    def __init__(self, text: str) -> None:
        self.text = text

    async def create_chat_completion(self, request: Any, raw: Any) -> Any:
        if not request.stream:
            return Dumps(response(self.text))

        async def sse() -> AsyncIterator[str]:
            for c in vllm_stream([self.text[:1], self.text[1:]]):
                yield f"data: {json.dumps(c.data)}\n\n"
            yield "data: [DONE]\n\n"

        return sse()


class Dumps:
    def __init__(self, body: dict) -> None:
        self.body = body

    def model_dump(self, **_: Any) -> dict:
        return self.body


def vllm_engine(text: str, **engine: Any) -> Any:
    pytest.importorskip("vllm")
    from qingliang.serving.engines.vllm_engine import VLLMEngine
    from qingliang.serving.manifest import ModelDeployment
    from qingliang.serving.plan import HardwareProfile, compile_plan

    md = ModelDeployment.model_validate(
        {"apiVersion": "qingliang.io/v1", "kind": "ModelDeployment", "metadata": {"name": "qwen"},
         "spec": {"model": {"source": "/models/q"}, "engine": {"kind": "vllm", **engine}}}
    )  # fmt: skip
    eng = VLLMEngine(compile_plan(md, HardwareProfile()).with_model_path("/models/q"))
    eng._chat = FakeServingChat(text)
    eng._models = type("Models", (), {"lora_requests": {}})()
    return eng


ASK = {"model": "qwen", "messages": [{"role": "user", "content": "Weather in Fuzhou?"}]}


async def test_the_vllm_engine_recovers_calls_unless_the_manifest_says_not() -> None:
    eng = vllm_engine(CALL_JSON)
    out = await eng.chat(ASK | TOOLS, adapter=None)
    assert out["choices"][0]["finish_reason"] == "tool_calls"
    assert out["choices"][0]["message"]["tool_calls"][0]["function"]["name"] == "get_weather"
    stream = await eng.chat(ASK | TOOLS | {"stream": True}, adapter=None)
    got = [c async for c in stream]
    assert [d["function"]["name"] for d in call_deltas(got)] == ["get_weather"]
    # No tools offered: the same text is an answer.
    out = await eng.chat(ASK, adapter=None)
    assert out["choices"][0]["message"]["content"] == CALL_JSON

    strict = vllm_engine(CALL_JSON, lenient_tool_calls=False)
    out = await strict.chat(ASK | TOOLS, adapter=None)
    assert out["choices"][0]["finish_reason"] == "stop"
    assert out["choices"][0]["message"]["content"] == CALL_JSON

"""Calls written as text, recovered in Responses API answers (serving/responses_toolcalls.py).

The events are shaped as vLLM 0.32's ``OpenAIServingResponses`` streams them (recorded
from the packaged Qwen2.5-Coder-0.5B, which answers a ``get_weather`` offer with
``tool_choice: "auto"`` as bare JSON text).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

from qingliang.serving.engine import StreamChunk
from qingliang.serving.responses_toolcalls import offer_of, recover_responses

WEATHER = {
    "type": "function",
    "name": "get_weather",
    "parameters": {
        "type": "object",
        "properties": {"city": {"type": "string"}},
        "required": ["city"],
    },
}
BODY = {"input": "Weather in Fuzhou?", "tools": [WEATHER]}
CALL_TEXT = '{"name": "get_weather", "arguments": {"city": "Fuzhou"}}'
USAGE = {"input_tokens": 30, "output_tokens": 12, "total_tokens": 42}


def message(text: str, status: str = "completed") -> dict:
    content = [{"annotations": [], "text": text, "type": "output_text", "logprobs": None}]
    return {"id": "msg_1", "content": content, "role": "assistant", "status": status,
            "type": "message"}  # fmt: skip


def response(output: list[dict], status: str = "completed") -> dict:
    return {"id": "resp_1", "object": "response", "status": status, "output": output,
            "usage": USAGE if status != "in_progress" else None}  # fmt: skip


def events(deltas: list[str]) -> list[dict]:
    """A streamed message answer, as vLLM writes it."""
    where = {"item_id": "msg_1", "output_index": 0, "content_index": 0}
    text = "".join(deltas)
    out: list[dict] = [
        {"type": "response.created", "response": response([], "in_progress")},
        {"type": "response.in_progress", "response": response([], "in_progress")},
        {"type": "response.output_item.added", "output_index": 0,
         "item": {**message(""), "content": [], "status": "in_progress"}},
        {"type": "response.content_part.added", **where,
         "part": {"annotations": [], "text": "", "type": "output_text"}},
        *({"type": "response.output_text.delta", "delta": d, **where} for d in deltas),
        {"type": "response.output_text.done", "text": text, **where},
        {"type": "response.content_part.done", **where,
         "part": {"annotations": [], "text": text, "type": "output_text"}},
        {"type": "response.output_item.done", "output_index": 0, "item": message(text)},
        {"type": "response.completed", "response": response([message(text)])},
    ]  # fmt: skip
    return [{**e, "sequence_number": i} for i, e in enumerate(out)]


async def stream_of(data: list[dict]) -> AsyncIterator[StreamChunk]:
    for d in data:
        yield StreamChunk.of(d)


async def collect(body: dict, data: list[dict]) -> list[StreamChunk]:
    out = recover_responses(body, stream_of(data))
    assert not isinstance(out, dict)
    return [c async for c in out]


def test_text_that_is_a_call_becomes_a_function_call_item() -> None:
    out = recover_responses(BODY, response([message(CALL_TEXT)]))
    assert isinstance(out, dict)
    [item] = out["output"]
    assert item["type"] == "function_call" and item["name"] == "get_weather"
    assert json.loads(item["arguments"]) == {"city": "Fuzhou"}
    assert item["call_id"].startswith("call_") and item["id"].startswith("fc_")
    assert item["status"] == "completed"


def test_fenced_call_and_named_tool_choice() -> None:
    fenced = f"```json\n{CALL_TEXT}\n```"
    body = {**BODY, "tool_choice": {"type": "function", "name": "get_weather"}}
    out = recover_responses(body, response([message(fenced)]))
    assert isinstance(out, dict) and out["output"][0]["type"] == "function_call"


def test_text_that_is_not_a_call_is_left_alone() -> None:
    for text in (
        "It is sunny in Fuzhou.",
        'Call {"name": "get_weather", "arguments": {"city": "Fuzhou"}} for that.',
        '{"name": "get_time", "arguments": {}}',  # not an offered tool
        '{"name": "get_weather", "arguments": {"town": "Fuzhou"}}',  # not its schema
    ):
        answer = response([message(text)])
        assert recover_responses(BODY, json.loads(json.dumps(answer))) == answer


def test_no_offer_no_change() -> None:
    answer = response([message(CALL_TEXT)])
    assert recover_responses({"input": "hi"}, answer) is answer
    assert offer_of({**BODY, "tool_choice": "none"}) is None
    assert offer_of({"tools": [{"type": "web_search"}]}) is None


def test_calls_found_by_vllm_stay() -> None:
    found = {"type": "function_call", "id": "fc_1", "call_id": "c", "name": "get_weather",
             "arguments": '{"city": "Beijing"}', "status": "completed"}  # fmt: skip
    answer = response([found, message(CALL_TEXT)])
    assert recover_responses(BODY, answer)["output"] == [found, message(CALL_TEXT)]


async def test_streamed_call_is_replaced_by_function_call_events() -> None:
    deltas = ['{"', "name", '":', ' "get_weather",', ' "arguments": {"city": "Fuzhou"}}']
    got = [c.data for c in await collect(BODY, events(deltas))]
    kinds = [e["type"] for e in got]
    assert kinds == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.function_call_arguments.delta",
        "response.function_call_arguments.done",
        "response.output_item.done",
        "response.completed",
    ]
    assert [e["sequence_number"] for e in got] == list(range(len(got)))
    added, delta, done, item_done, completed = got[2:]
    assert added["item"]["type"] == "function_call" and added["item"]["arguments"] == ""
    assert json.loads(delta["delta"]) == {"city": "Fuzhou"} == json.loads(done["arguments"])
    assert done["name"] == "get_weather" and done["item_id"] == added["item"]["id"]
    assert completed["response"]["output"] == [item_done["item"]]
    assert completed["response"]["usage"] == USAGE


async def test_streamed_text_is_passed_on_once_it_cannot_be_a_call() -> None:
    original = events(["It", " is", " sunny."])
    got = [c.data for c in await collect(BODY, original)]
    assert got == original


async def test_streamed_json_that_is_not_a_call_is_flushed_at_the_end() -> None:
    original = events(['{"city":', ' "Fuzhou"}'])
    got = [c.data for c in await collect(BODY, original)]
    assert got == original  # held back while it might be a call, then all of it


async def test_stream_without_offer_is_not_wrapped() -> None:
    stream = stream_of(events(["hi"]))
    assert recover_responses({"input": "hi"}, stream) is stream

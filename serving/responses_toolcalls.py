"""Tool calls that small models write as text, recovered in Responses API answers.

The Responses API's counterpart of :func:`qingliang.serving.toolcalls.recover`: offered a
``get_weather`` function with ``tool_choice: "auto"``, Qwen2.5-Coder-0.5B answers with
the message text ``{"name": "get_weather", "arguments": {"city": "Fuzhou"}}``, which
vLLM's parser leaves as an ``output_text``. When the whole text of the answer's message
is calls of offered tools (the same rules: :func:`~qingliang.serving.toolcalls.parse_tool_calls`),
the message item becomes ``function_call`` items, as vLLM writes them when its parser
finds a call:

* a response object: its ``output`` rewritten;
* a stream: the message's events are held back only while its text so far could still
  be a call (:func:`~qingliang.serving.toolcalls.may_be_call`), then either passed on
  unchanged or replaced by a function call's events (``response.output_item.added``,
  ``response.function_call_arguments.delta`` / ``.done``, ``response.output_item.done``);
  ``sequence_number`` stays consecutive and the final ``response.completed`` carries the
  same items.

Example:
    >>> body = {"tools": [{"type": "function", "name": "f", "parameters": {}}]}
    >>> answer = {"output": [{"type": "message", "id": "msg_1", "content": [
    ...     {"type": "output_text", "text": '{"name": "f", "arguments": {}}'}]}]}
    >>> [item["type"] for item in recover_responses(body, answer)["output"]]
    ['function_call']
"""

from __future__ import annotations

import json
import secrets
from collections.abc import AsyncIterator
from typing import Any

from qingliang.serving.engine import EngineOutput, StreamChunk
from qingliang.serving.toolcalls import Call, Offer, may_be_call, new_call_id, parse_tool_calls

_ENDS = ("response.completed", "response.incomplete", "response.failed")


def offer_of(body: dict[str, Any]) -> Offer | None:
    """What Responses request ``body`` offers (its function tools, in chat's shape)."""
    tools = [
        {"type": "function", "function": {"name": t.get("name"), "parameters": t.get("parameters")}}
        for t in body.get("tools") or ()
        if isinstance(t, dict) and t.get("type") == "function"
    ]
    choice = body.get("tool_choice")
    if isinstance(choice, dict) and choice.get("type") == "function":
        choice = {"type": "function", "function": {"name": choice.get("name")}}
    elif isinstance(choice, dict):
        choice = None  # allowed_tools, built-in tools: no narrowing to read here
    chat = {"tools": tools, "tool_choice": choice}
    chat["parallel_tool_calls"] = body.get("parallel_tool_calls")
    return Offer.of(chat)


def recover_responses(body: dict[str, Any], output: EngineOutput) -> EngineOutput:
    """``output`` of Responses request ``body`` with calls written as text made real;
    the same object when ``body`` offers no function tool."""
    offer = offer_of(body)
    if offer is None:
        return output
    if isinstance(output, dict):
        return _recover_response(output, offer)
    return _recover_stream(output, offer)


def _function_items(calls: list[Call]) -> list[dict[str, Any]]:
    return [
        {
            "arguments": json.dumps(c.arguments, ensure_ascii=False),
            "call_id": new_call_id(),
            "name": c.name,
            "type": "function_call",
            "id": f"fc_{secrets.token_hex(8)}",
            "status": "completed",
        }
        for c in calls
    ]


def _message_text(item: dict[str, Any]) -> str | None:
    parts = [p for p in item.get("content") or () if isinstance(p, dict)]
    if not parts or any(p.get("type") != "output_text" for p in parts):
        return None
    texts = [p.get("text") for p in parts]
    return "".join(t for t in texts if isinstance(t, str))


def _recover_response(response: dict[str, Any], offer: Offer) -> dict[str, Any]:
    output = [i for i in response.get("output") or () if isinstance(i, dict)]
    if any(i.get("type") == "function_call" for i in output):
        return response  # vLLM's own parser found the calls
    messages = [i for i in output if i.get("type") == "message"]
    if len(messages) != 1:
        return response
    text = _message_text(messages[0])
    calls = parse_tool_calls(text, offer) if text else None
    if calls:
        at = output.index(messages[0])
        response["output"] = [*output[:at], *_function_items(calls), *output[at + 1 :]]
    return response


def _call_events(item: dict[str, Any], index: int) -> list[dict[str, Any]]:
    """The events vLLM streams for function call ``item`` at ``output_index`` ``index``."""
    where = {"item_id": item["id"], "output_index": index}
    return [
        {
            "item": {**item, "arguments": "", "status": "in_progress"},
            "output_index": index,
            "type": "response.output_item.added",
        },
        {"delta": item["arguments"], **where, "type": "response.function_call_arguments.delta"},
        {
            "arguments": item["arguments"],
            **where,
            "type": "response.function_call_arguments.done",
            "name": item["name"],
        },
        {"item": item, "output_index": index, "type": "response.output_item.done"},
    ]


class _Rewriter:
    """One stream's state: the held message, what replaced it, the next sequence number."""

    def __init__(self, offer: Offer) -> None:
        self.offer = offer
        self.held: list[dict[str, Any]] | None = None
        self.text = ""
        self.sequence = 0
        #: message item id -> the function call items that replaced it
        self.replaced: dict[str, list[dict[str, Any]]] = {}

    def out(self, events: list[dict[str, Any]]) -> list[StreamChunk]:
        chunks = []
        for event in events:
            chunks.append(StreamChunk.of({**event, "sequence_number": self.sequence}))
            self.sequence += 1
        return chunks

    def flush(self) -> list[StreamChunk]:
        held, self.held = self.held or [], None
        return self.out(held)

    def step(self, data: dict[str, Any]) -> list[StreamChunk]:
        kind, item = data.get("type"), data.get("item")
        if self.held is None:
            if (
                kind == "response.output_item.added"
                and isinstance(item, dict)
                and item.get("type") == "message"
                and not self.replaced
            ):
                self.held, self.text = [data], ""
                return []
            if kind in _ENDS and self.replaced:
                data = self.rewrite_end(data)
            return self.out([data])
        self.held.append(data)
        if kind == "response.output_text.delta":
            self.text += str(data.get("delta") or "")
            return [] if may_be_call(self.text) else self.flush()
        if kind != "response.output_item.done":
            return []
        calls = parse_tool_calls(self.text, self.offer)
        if not calls or not isinstance(item, dict):
            return self.flush()
        index = self.held[0].get("output_index", 0)
        items = _function_items(calls)
        self.replaced[str(item.get("id"))] = items
        self.held = None
        events = [e for k, fc in enumerate(items) for e in _call_events(fc, index + k)]
        return self.out(events)

    def rewrite_end(self, data: dict[str, Any]) -> dict[str, Any]:
        response = data.get("response")
        if not isinstance(response, dict):
            return data
        output: list[Any] = []
        for item in response.get("output") or ():
            found = isinstance(item, dict) and self.replaced.get(str(item.get("id")))
            output.extend(found or [item])
        return {**data, "response": {**response, "output": output}}


async def _recover_stream(
    stream: AsyncIterator[StreamChunk], offer: Offer
) -> AsyncIterator[StreamChunk]:
    rewriter = _Rewriter(offer)
    try:
        async for chunk in stream:
            for out in rewriter.step(chunk.data):
                yield out
        for out in rewriter.flush():
            yield out
    finally:
        aclose = getattr(stream, "aclose", None)
        if aclose is not None:
            await aclose()

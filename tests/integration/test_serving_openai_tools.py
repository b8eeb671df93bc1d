"""Tool calls from the packaged Qwen2.5-Coder 0.5B through the OpenAI API, as a client
written for OpenAI makes them: the official ``openai`` client, the gateway, Ray Serve and
vLLM's CPU build.

The small model often writes a call as plain (bare or fenced) JSON, which vLLM's
``hermes`` parser leaves as text; serving/toolcalls.py reads it as the call it is
(docs/openai.md, "Tool calls"). ``tool_choice: required`` and a named function go
through vLLM's structured outputs.
"""

from __future__ import annotations

import json

import openai
import pytest

pytestmark = [pytest.mark.integration, pytest.mark.slow]

GET_WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Get the current weather in a city.",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string", "description": "The city's name."}},
            "required": ["city"],
        },
    },
}
GET_TIME = {
    "type": "function",
    "function": {
        "name": "get_time",
        "description": "Get the current local time in a city.",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
        },
    },
}
SYSTEM = "Answer the user's question in one sentence, using the tool response."
ASK = [
    {"role": "system", "content": SYSTEM},
    {"role": "user", "content": "What is the weather in Fuzhou?"},
]
RESULT = {"city": "Fuzhou", "condition": "sunny", "temperature_c": 27}


def only_call(message) -> tuple[str, dict]:
    """The one function call of ``message``: its name and decoded arguments."""
    assert message.tool_calls, f"no tool call; content: {message.content!r}"
    (tc,) = message.tool_calls
    assert tc.type == "function" and tc.id
    args = json.loads(tc.function.arguments)
    assert isinstance(args, dict)
    return tc.function.name, args


def test_use_the_tool_gives_a_call_and_the_result_is_used(qwen: str, client: openai.OpenAI) -> None:
    r = client.chat.completions.create(
        model=qwen, messages=ASK, tools=[GET_WEATHER], temperature=0, max_tokens=96
    )
    choice = r.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert not choice.message.content
    name, args = only_call(choice.message)
    assert name == "get_weather"
    assert "fuzhou" in args["city"].lower()

    call = choice.message.tool_calls[0]
    second = client.chat.completions.create(
        model=qwen,
        messages=[
            *ASK,
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": call.id,
                        "type": "function",
                        "function": {
                            "name": call.function.name,
                            "arguments": call.function.arguments,
                        },
                    }
                ],
            },
            {"role": "tool", "tool_call_id": call.id, "content": json.dumps(RESULT)},
        ],
        # Offered the tool again with its result, the 0.5B model calls it again (measured,
        # with or without a system prompt); a client that wants the answer leaves it out.
        temperature=0,
        max_tokens=64,
    )
    answer = second.choices[0]
    assert answer.finish_reason == "stop"
    assert not answer.message.tool_calls
    text = answer.message.content or ""
    assert "27" in text or "sunny" in text.lower(), text


def test_a_streamed_call_arrives_as_tool_call_deltas(qwen: str, client: openai.OpenAI) -> None:
    stream = client.chat.completions.create(
        model=qwen,
        messages=ASK,
        tools=[GET_WEATHER],
        temperature=0,
        max_tokens=96,
        stream=True,
        stream_options={"include_usage": True},
    )
    content, calls, finishes, usage = [], [], [], None
    for chunk in stream:
        if chunk.usage is not None:
            usage = chunk.usage
        for choice in chunk.choices:
            content.append(choice.delta.content or "")
            calls += choice.delta.tool_calls or []
            if choice.finish_reason:
                finishes.append(choice.finish_reason)
    assert "".join(content) == ""  # no piece of the call leaks out as text
    assert finishes == ["tool_calls"]
    assert calls and calls[0].function and calls[0].function.name == "get_weather"
    arguments = "".join(c.function.arguments or "" for c in calls if c.function)
    assert "fuzhou" in json.loads(arguments)["city"].lower()
    assert usage is not None and usage.completion_tokens > 0


def test_tool_choice_required_and_named_are_honoured(qwen: str, client: openai.OpenAI) -> None:
    required = client.chat.completions.create(
        model=qwen,
        messages=[{"role": "user", "content": "Fuzhou, please."}],
        tools=[GET_WEATHER, GET_TIME],
        tool_choice="required",
        temperature=0,
        max_tokens=96,
    )
    assert required.choices[0].finish_reason == "tool_calls"
    assert required.choices[0].message.tool_calls
    for tc in required.choices[0].message.tool_calls:
        assert tc.function.name in ("get_weather", "get_time")
        assert isinstance(json.loads(tc.function.arguments)["city"], str)

    stream = client.chat.completions.create(
        model=qwen,
        messages=[{"role": "user", "content": "Fuzhou, please."}],
        tools=[GET_WEATHER, GET_TIME],
        tool_choice="required",
        temperature=0,
        max_tokens=96,
        stream=True,
    )
    chunks = [c for c in stream if c.choices]
    names = [tc.function.name for c in chunks for tc in c.choices[0].delta.tool_calls or []
             if tc.function and tc.function.name]  # fmt: skip
    assert names and set(names) <= {"get_weather", "get_time"}
    assert chunks[-1].choices[0].finish_reason == "tool_calls"

    named = client.chat.completions.create(
        model=qwen,
        messages=[{"role": "user", "content": "How is Fuzhou today?"}],
        tools=[GET_WEATHER, GET_TIME],
        tool_choice={"type": "function", "function": {"name": "get_time"}},
        temperature=0,
        max_tokens=96,
    )
    # OpenAI (and vLLM) finish a call of a named function with `stop`.
    assert named.choices[0].finish_reason == "stop"
    name, args = only_call(named.choices[0].message)
    assert name == "get_time" and isinstance(args["city"], str)


def test_a_question_with_tools_offered_is_still_answered_as_text(
    qwen: str, client: openai.OpenAI
) -> None:
    messages = [{"role": "user", "content": "What is the capital of France? One sentence."}]
    r = client.chat.completions.create(
        model=qwen, messages=messages, tools=[GET_WEATHER], temperature=0, max_tokens=40
    )
    choice = r.choices[0]
    assert choice.finish_reason in ("stop", "length")
    assert not choice.message.tool_calls
    assert "Paris" in (choice.message.content or "")
    stream = client.chat.completions.create(
        model=qwen, messages=messages, tools=[GET_WEATHER], temperature=0, max_tokens=40,
        stream=True,
    )  # fmt: skip
    pieces = [c.choices[0].delta.content or "" for c in stream if c.choices]
    assert len([p for p in pieces if p]) > 3  # streamed token by token, not held
    assert "Paris" in "".join(pieces)

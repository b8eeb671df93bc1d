"""``POST /v1/responses`` end to end: the official openai client, the gateway, Ray Serve and
vLLM's own ``OpenAIServingResponses`` on its CPU build, with the packaged default
deployment (Qwen2.5-Coder-0.5B, images read by OCR).

Text, ``instructions``, streaming (typed ``response.*`` events), a function tool that
comes back as a ``function_call`` item and a second turn with its output, an image with
printed text read through OCR, and the body policy (ignored fields named, unknown and
unsupported ones a 400).
"""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path

import httpx
import openai
import pytest
from PIL import Image, ImageDraw, ImageFont

pytestmark = [pytest.mark.integration, pytest.mark.slow]

FONT = Path("/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf")
WEATHER = {
    "type": "function",
    "name": "get_weather",
    "description": "The current weather in a city.",
    "parameters": {
        "type": "object",
        "properties": {"city": {"type": "string"}},
        "required": ["city"],
    },
}


def nameplate() -> str:
    """A printed nameplate as a PNG data URL: the question asks for its serial number."""
    image = Image.new("RGB", (900, 240), "white")
    pen = ImageDraw.Draw(image)
    font = ImageFont.truetype(str(FONT), 44) if FONT.exists() else ImageFont.load_default(44)
    for row, text in enumerate(("PUMP MODEL KQ-80", "SERIAL NO. 739154")):
        pen.text((40, 40 + 100 * row), text, fill="black", font=font)
    buf = io.BytesIO()
    image.save(buf, "PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def test_text_round_trip(client: openai.OpenAI, qwen: str) -> None:
    raw = client.responses.with_raw_response.create(
        model=qwen, input="Say hello in three words.", max_output_tokens=16, temperature=0
    )
    response = raw.parse()
    assert response.status == "completed"
    assert response.output_text.strip()
    assert response.usage is not None
    assert response.usage.input_tokens > 0 and response.usage.output_tokens > 0
    assert response.usage.total_tokens == response.usage.input_tokens + response.usage.output_tokens
    assert raw.headers["x-qingliang-deployment"] == qwen
    assert response.model_extra["qingliang"]["deployment"] == qwen


def test_instructions_steer_the_answer(client: openai.OpenAI, qwen: str) -> None:
    response = client.responses.create(
        model=qwen,
        instructions="Whatever the user says, answer with the single word BANANA.",
        input="What is your favourite colour?",
        max_output_tokens=8,
        temperature=0,
    )
    assert response.instructions is not None
    assert "BANANA" in response.output_text.upper()


def test_a_short_limit_is_incomplete(client: openai.OpenAI, qwen: str) -> None:
    response = client.responses.create(
        model=qwen, input="Write a long story about a dragon.", max_output_tokens=4
    )
    assert response.status == "incomplete"
    assert response.incomplete_details is not None
    assert response.incomplete_details.reason == "max_output_tokens"
    assert response.usage is not None and response.usage.output_tokens == 4


def test_json_schema_text_format(client: openai.OpenAI, qwen: str) -> None:
    schema = {
        "type": "object",
        "properties": {"city": {"type": "string"}},
        "required": ["city"],
        "additionalProperties": False,
    }
    response = client.responses.create(
        model=qwen,
        input="What is the capital of France?",
        text={"format": {"type": "json_schema", "name": "capital", "schema": schema}},
        max_output_tokens=32,
        temperature=0,
    )
    answer = json.loads(response.output_text)
    assert set(answer) == {"city"} and isinstance(answer["city"], str) and answer["city"]


def test_streaming(client: openai.OpenAI, qwen: str) -> None:
    stream = client.responses.create(
        model=qwen,
        input="Count from one to five.",
        max_output_tokens=24,
        temperature=0,
        stream=True,
    )
    events = list(stream)
    kinds = [e.type for e in events]
    assert kinds[0] == "response.created"
    assert kinds[-1] == "response.completed"
    assert "response.output_text.delta" in kinds
    deltas = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    final = events[-1].response
    assert deltas and deltas == final.output_text
    assert final.usage is not None and final.usage.output_tokens > 0
    assert events[0].model_extra["qingliang"]["deployment"] == qwen


def test_streaming_wire_has_event_lines(http: httpx.Client, qwen: str) -> None:
    body = {"model": qwen, "input": "Hi", "max_output_tokens": 4, "stream": True}
    with http.stream("POST", "/v1/responses", json=body) as r:
        assert r.status_code == 200
        text = "".join(r.iter_text())
    blocks = [b for b in text.strip().split("\n\n") if b]
    for block in blocks:
        event, data = block.split("\n", 1)
        assert event.startswith("event: ")
        assert json.loads(data.removeprefix("data: "))["type"] == event.removeprefix("event: ")
    assert "[DONE]" not in text


def test_function_tool_and_its_result(client: openai.OpenAI, qwen: str) -> None:
    question = {"role": "user", "content": "What is the weather in Fuzhou?"}
    first = client.responses.create(
        model=qwen, input=[question], tools=[WEATHER], temperature=0
    )  # tool_choice "auto": the small model writes the call as bare JSON, recovered
    calls = [item for item in first.output if item.type == "function_call"]
    assert len(calls) == 1
    call = calls[0]
    assert call.name == "get_weather"
    assert json.loads(call.arguments) == {"city": "Fuzhou"}
    weather = {"city": "Fuzhou", "condition": "sunny", "temperature_c": 27}
    result = {
        "type": "function_call_output",
        "call_id": call.call_id,
        "output": json.dumps(weather),
    }
    second = client.responses.create(
        model=qwen,
        instructions="Answer the user's question in one sentence, using the tool response.",
        input=[question, call.model_dump(exclude_none=True), result],
        # Offered the tool again with its result, the 0.5B model calls it again (measured,
        # as in chat); a client that wants the answer leaves it out.
        max_output_tokens=64,
        temperature=0,
    )
    assert [item.type for item in second.output] == ["message"]
    text = second.output_text
    assert "27" in text or "sunny" in text.lower(), text


@pytest.mark.parametrize("choice", ["auto", {"type": "function", "name": "get_weather"}])
def test_tool_call_streamed(client: openai.OpenAI, qwen: str, choice: object) -> None:
    stream = client.responses.create(
        model=qwen,
        input="What is the weather in Beijing?",
        tools=[WEATHER],
        tool_choice=choice,
        temperature=0,
        stream=True,
    )
    events = list(stream)
    assert [e.sequence_number for e in events] == list(range(len(events)))
    assert not [e for e in events if e.type == "response.output_text.delta"]
    done = [e for e in events if e.type == "response.function_call_arguments.done"]
    assert len(done) == 1 and json.loads(done[0].arguments) == {"city": "Beijing"}
    assert events[-1].type == "response.completed"
    [item] = events[-1].response.output
    assert item.type == "function_call" and item.name == "get_weather"


def test_image_read_through_ocr(client: openai.OpenAI, qwen: str) -> None:
    raw = client.responses.with_raw_response.create(
        model=qwen,
        input=[
            {
                "role": "user",
                "content": [
                    {"type": "input_image", "image_url": nameplate(), "detail": "auto"},
                    {
                        "type": "input_text",
                        "text": "What is the serial number on this nameplate? Answer with "
                        "the number only.",
                    },
                ],
            }
        ],
        max_output_tokens=16,
        temperature=0,
    )
    response = raw.parse()
    assert "739154" in response.output_text
    assert raw.headers["x-qingliang-images"] == "ocr; count=1"
    trace = response.model_extra["qingliang"]["images"]
    assert trace["mode"] == "ocr" and trace["count"] == 1 and trace["ocr_chars"] > 20


def test_ignored_unknown_and_unsupported_fields(client: openai.OpenAI, qwen: str) -> None:
    raw = client.responses.with_raw_response.create(
        model=qwen,
        input="Hi",
        max_output_tokens=4,
        store=True,
        service_tier="flex",
        safety_identifier="user-7",
        prompt_cache_key="k1",
        metadata={"ticket": "42"},
    )
    assert raw.headers["x-qingliang-ignored-fields"] == (
        "prompt_cache_key, safety_identifier, service_tier, store"
    )
    assert raw.parse().metadata == {"ticket": "42"}  # vLLM returns it
    with pytest.raises(openai.BadRequestError) as info:
        client.responses.create(model=qwen, input="Hi", extra_body={"temprature": 0.2})
    assert info.value.param == "temprature" and "temperature" in info.value.message
    with pytest.raises(openai.BadRequestError) as info:
        client.responses.create(model=qwen, input="Hi", previous_response_id="resp_1")
    assert info.value.param == "previous_response_id"
    with pytest.raises(openai.BadRequestError) as info:
        client.responses.create(model=qwen, input=[{"role": "alien", "content": "Hi"}])
    assert info.value.param == "input[0].role"

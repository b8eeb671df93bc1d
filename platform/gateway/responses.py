"""OpenAI's Responses API: ``POST /v1/responses``, streamed or not.

The request is checked (:mod:`.http.responses_bodies`: documented fields accepted, the
unimplemented ones dropped and named in ``X-Qingliang-Ignored-Fields``, unknown ones a
400), routed as chat is (``model`` names a deployment or ``deployment:adapter``; a bare
deployment's canary shares pick an arm), its ``input_image`` parts made ready under the
deployment's image policy (:func:`prepare_input_images`), and sent to the
:class:`~.backend.Backend` with the endpoint ``"responses"``. A vLLM deployment answers
through vLLM's own ``OpenAIServingResponses`` (chat template, tool-call parser,
``function_call`` items, typed ``response.*`` events); a transformers deployment answers
400 pointing to ``/v1/chat/completions``.

The answer says what made it (``X-Qingliang-*`` headers, a ``qingliang`` object in the
body, or in the first event of a stream). A stream is written as OpenAI writes it: each
event as ``event: <type>`` and ``data: <json>``, no ``[DONE]``; an error after the first
event is an ``error`` event. A key with a token limit is charged the response's
``usage`` (every Responses stream ends with the whole response, usage included);
answered requests go to the conversation log (endpoint ``responses``).

Example:
    >>> add_responses_routes(app, backend, quotas, conversations)  # doctest: +SKIP
"""

from __future__ import annotations

import asyncio
import copy
import logging
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic_core import to_json

from qingliang.knowledge.vision import (
    ImageLimits,
    ImagesReport,
    check_images,
    load_image,
    ocr_part,
    ocr_text,
    without_pixels,
)
from qingliang.platform.errors import ApiError, BadRequest, Saturated
from qingliang.platform.gateway.auth.quotas import Quotas
from qingliang.platform.gateway.auth.scopes import tenant_of
from qingliang.platform.gateway.backend import Backend
from qingliang.platform.gateway.generation import lookup_entry, request_timing
from qingliang.platform.gateway.http.bodies import request_body
from qingliang.platform.gateway.http.limits import json_body
from qingliang.platform.gateway.http.openai_bodies import IGNORED_HEADER, IMAGES_HEADER
from qingliang.platform.gateway.http.responses_bodies import (
    ResponsesBody,
    checked,
    forwarded_responses,
)
from qingliang.platform.gateway.sse import (
    routed,
    server_timing,
    total_tokens,
    trace_headers,
    with_trace,
)
from qingliang.platform.storage.conversations import Conversation, ConversationLog
from qingliang.serving.engine import StreamChunk
from qingliang.serving.metrics import RequestTiming
from qingliang.serving.traffic import ModelEntry, parse_model

logger = logging.getLogger(__name__)

ENDPOINT = "responses"
#: The events that end a Responses stream; each carries the whole response.
_ENDS = ("response.completed", "response.incomplete", "response.failed")


def response_event(data: dict[str, Any]) -> str:
    """One Responses API event as SSE: its ``type`` as the ``event:`` line, then its data
    in the engine's compact JSON (the bytes vLLM's own server writes)."""
    kind = str(data.get("type") or "message").replace("\n", " ").replace("\r", " ")
    return f"event: {kind}\ndata: {to_json(data).decode()}\n\n"


def error_event(exc: ApiError, sequence_number: int) -> str:
    """An error after the stream began: OpenAI's ``error`` event, with the ``error`` object
    of our other answers (the official client raises it as an ``APIError``)."""
    error = exc.to_openai()["error"]
    data = {
        "type": "error",
        "code": error.get("code") or error.get("type"),
        "message": error.get("message"),
        "param": error.get("param"),
        "sequence_number": sequence_number,
        "error": error,
    }
    return f"event: error\ndata: {to_json(data).decode()}\n\n"


# ------------------------------------------------------------------------ images


#: Where an item of ``input`` keeps its parts: a message's ``content``, a tool result's
#: ``output`` (vLLM renders both with the chat template, images included).
_PARTS_KEY = {
    None: "content",
    "message": "content",
    "function_call_output": "output",
    "custom_tool_call_output": "output",
}


def input_images(body: dict) -> list[tuple[str, dict]]:
    """``(where, part)`` for each ``input_image`` part of the items in ``input``."""
    items = body.get("input")
    if not isinstance(items, list):
        return []
    found = []
    for i, item in enumerate(items):
        key = _PARTS_KEY.get(item.get("type")) if isinstance(item, dict) else None
        parts = item.get(key) if key else None
        if not isinstance(parts, list):
            continue
        for j, part in enumerate(parts):
            if isinstance(part, dict) and part.get("type") == "input_image":
                found.append((f"input[{i}].{key}[{j}]", part))
    return found


async def prepare_input_images(
    body: dict, *, deployment: str, mode: str, max_per_prompt: int, limits: ImageLimits
) -> tuple[dict, ImagesReport | None]:
    """``body`` with its ``input_image`` parts made ready for ``deployment``, as chat's
    ``image_url`` parts are (:func:`qingliang.knowledge.vision.prepare_images`): sent on
    as ``data:`` URLs (``native``), replaced by the text OCR reads in them (``ocr``), or
    refused (``reject``). Returns the body to send and what was done (None: no images).

    Raises:
        BadRequest: naming the part: ``reject`` mode, too many images, a ``file_id``
            (files are not stored here), or an image that cannot be loaded.
    """
    found = input_images(body)
    if not found:
        return body, None
    where = found[0][0]
    check_images([w for w, _ in found], deployment, mode, max_per_prompt, limits)
    for where, part in found:
        if not isinstance(part.get("image_url"), str) or not part["image_url"]:
            param = f"{where}.image_url"
            what = "`file_id` is not supported (files are not stored here)" if part.get(
                "file_id") else "missing"  # fmt: skip
            raise BadRequest(
                f"{param}: {what}; send the image as a data URL (data:image/png;base64,...)",
                param=param,
            )
    return await asyncio.to_thread(_prepare, body, found, mode, limits)


def _prepare(
    body: dict, found: list[tuple[str, dict]], mode: str, limits: ImageLimits
) -> tuple[dict, ImagesReport]:
    images = [load_image(part["image_url"], where, limits) for where, part in found]
    out = copy.copy(body)
    out["input"] = items = [
        dict(item) if isinstance(item, dict) else item for item in body["input"]
    ]
    chars = 0
    for number, ((where, part), image) in enumerate(zip(found, images, strict=True), 1):
        i, key, j = _indices(where)
        if items[i][key] is body["input"][i][key]:
            items[i][key] = list(items[i][key])  # copied once, before the first change
        if mode == "native":
            items[i][key][j] = {**part, "image_url": image.data_url()}
        else:
            text = ocr_text(image)
            chars += len(text)
            items[i][key][j] = {"type": "input_text", "text": ocr_part(number, text)["text"]}
    return out, ImagesReport(mode=mode, count=len(images), ocr_chars=chars)


def _indices(where: str) -> tuple[int, str, int]:
    # "input[3].content[1]" -> (3, "content", 1)
    head, _, tail = where.partition("].")
    key, _, index = tail.partition("[")
    return int(head[len("input[") :]), key, int(index[:-1])


# ------------------------------------------------------------------------ recording


def _as_messages(body: dict) -> list[dict[str, Any]]:
    """The request as chat messages, for the conversation log (images without pixels)."""
    messages: list[dict[str, Any]] = []
    if isinstance(body.get("instructions"), str):
        messages.append({"role": "system", "content": body["instructions"]})
    items = body.get("input")
    if isinstance(items, str):
        return [*messages, {"role": "user", "content": items}]
    for item in items if isinstance(items, list) else ():
        if not isinstance(item, dict):
            continue
        kind = item.get("type") or "message"
        if kind == "message":
            content = item.get("content")
            if isinstance(content, list):
                content = [_chat_part(p) for p in content if isinstance(p, dict)]
            messages.append({"role": item.get("role"), "content": content})
        elif kind == "function_call":
            call = {"name": item.get("name"), "arguments": item.get("arguments")}
            tool_call = {"id": item.get("call_id"), "type": "function", "function": call}
            messages.append({"role": "assistant", "content": None, "tool_calls": [tool_call]})
        elif kind == "function_call_output":
            output = item.get("output")
            if isinstance(output, list):
                output = [_chat_part(p) for p in output if isinstance(p, dict)]
            messages.append(
                {"role": "tool", "tool_call_id": item.get("call_id"), "content": output}
            )
    return without_pixels(messages)


def _chat_part(part: dict) -> dict:
    kind = part.get("type")
    if kind == "input_image":
        return {"type": "image_url", "image_url": {"url": part.get("image_url") or ""}}
    if kind in ("input_text", "output_text"):
        return {"type": "text", "text": part.get("text")}
    return part


def output_text(answer: dict) -> str | None:
    """The text of a response's message items (OpenAI's ``output_text``); None if none."""
    texts: list[str] = [
        part["text"]
        for item in answer.get("output") or ()
        if isinstance(item, dict) and item.get("type") == "message"
        for part in item.get("content") or ()
        if isinstance(part, dict)
        and part.get("type") == "output_text"
        and isinstance(part.get("text"), str)
    ]
    return "".join(texts) if texts else None


def _finish_reason(answer: dict) -> str | None:
    """The chat ``finish_reason`` a response's outcome corresponds to."""
    output = [i for i in answer.get("output") or () if isinstance(i, dict)]
    if any(i.get("type") == "function_call" for i in output):
        return "tool_calls"
    status = answer.get("status")
    return {"completed": "stop", "incomplete": "length"}.get(str(status), status)


def conversation_row(
    request: Request, body: dict, trace: dict[str, Any], answer: dict, arrived: float
) -> Conversation:
    """The conversation-log row of an answered Responses request."""
    principal = getattr(request.state, "principal", None)
    key_name = getattr(principal, "name", None)
    usage = answer.get("usage")
    tokens = {k: v for k, v in usage.items() if isinstance(v, int)} if isinstance(
        usage, dict) else {}  # fmt: skip
    answer_id = answer.get("id")
    return Conversation(
        id=answer_id if isinstance(answer_id, str) else f"resp_{uuid.uuid4().hex}",
        created=arrived,
        tenant=tenant_of(principal),
        key_name=key_name if isinstance(key_name, str) else None,
        model=str(body.get("model")),
        deployment=trace["deployment"] or "",
        adapter=trace["adapter"],
        adapter_ref=trace["adapter_ref"],
        messages=_as_messages(body),
        response=output_text(answer),
        finish_reason=_finish_reason(answer),
        prompt_tokens=tokens.get("input_tokens"),
        completion_tokens=tokens.get("output_tokens"),
        latency_ms=round((time.time() - arrived) * 1000),
        endpoint=ENDPOINT,
    )


# ------------------------------------------------------------------------ the route


@dataclass
class _Call:
    """One Responses request, checked and routed, before it is sent."""

    arrived: float
    body: dict
    deployment: str
    adapter: str | None
    stream: bool
    trace: dict[str, Any]
    headers: dict[str, str]
    principal: Any
    timing: RequestTiming


class _Responses:
    """The route's logic over the app's parts."""

    def __init__(
        self, backend: Backend, quotas: Quotas, conversations: ConversationLog | None
    ) -> None:
        self.backend = backend
        self.quotas = quotas
        self.conversations = conversations
        self.images = ImageLimits.from_env()

    def lookup(self, dep: str, adapter: str | None) -> ModelEntry:
        return lookup_entry(self.backend, dep, adapter)

    async def prepare(self, request: Request) -> _Call:
        """The request read, checked, its images made ready, and routed."""
        timing = request_timing(request)
        arrived = time.time()
        body = await json_body(request)
        dep, adapter = parse_model(body.get("model"))
        entry = self.lookup(dep, adapter)
        stream = body.get("stream")
        if stream is not None and not isinstance(stream, bool):
            raise BadRequest("`stream` must be true or false", param="stream")
        checked(body, ResponsesBody)
        body, ignored = forwarded_responses(body)
        body, images = await prepare_input_images(
            body,
            deployment=dep,
            mode=entry.image_mode,
            max_per_prompt=entry.max_images,
            limits=self.images,
        )
        adapter, trace = routed(entry, adapter, body.get("user"))
        headers = trace_headers(trace)
        if images is not None:
            trace["images"] = images.trace()
            headers[IMAGES_HEADER] = images.header()
        if ignored:
            headers[IGNORED_HEADER] = ", ".join(ignored)
        return _Call(
            arrived=arrived,
            body=body,
            deployment=dep,
            adapter=adapter,
            stream=bool(stream),
            trace=trace,
            headers=headers,
            principal=getattr(request.state, "principal", None),
            timing=timing,
        )

    def record(self, request: Request, call: _Call, answer: dict) -> None:
        if self.conversations is None:
            return
        try:
            self.conversations.append(
                conversation_row(request, call.body, call.trace, answer, call.arrived)
            )
        except Exception:  # recording must never cost the client its answer
            logger.exception("could not record a conversation")

    async def answer(self, request: Request) -> Response:
        call = await self.prepare(request)
        dep, adapter = call.deployment, call.adapter
        try:
            if not call.stream:
                answer = await self.backend.generate(dep, ENDPOINT, call.body, adapter)
                await self.quotas.charge(call.principal, total_tokens(answer.get("usage")))
                self.record(request, call, answer)
                response = JSONResponse({**answer, "qingliang": call.trace}, headers=call.headers)
                gateway_s = call.timing.finish()
                response.headers["Server-Timing"] = server_timing(gateway_s, call.timing.replica)
                return response
            chunks = self.backend.stream(dep, ENDPOINT, call.body, adapter)
            # Pull the first event before answering, so errors found before generation
            # (bad parameters, prompt too long, saturation) get a real status code.
            first = await chunks.__anext__()
        except Saturated:
            self.backend.rejected(dep, adapter, ENDPOINT)
            raise
        except StopAsyncIteration:
            raise ApiError("the engine ended the stream before its first event") from None
        return StreamingResponse(
            self.relay(request, call, first, chunks),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no", **call.headers},
        )

    async def relay(
        self,
        request: Request,
        call: _Call,
        first: StreamChunk,
        chunks: AsyncIterator[StreamChunk],
    ) -> AsyncIterator[str]:
        """The events as the client gets them: the first traced; the last one's response
        charged and recorded when the stream ended normally."""
        final: dict | None = None
        chunk = first
        try:
            yield response_event(with_trace(first.data, call.trace))
            call.timing.waiting()
            final = _ended(first)
            async for chunk in chunks:
                yield response_event(chunk.data)
                call.timing.waiting()
                final = final or _ended(chunk)
        except ApiError as exc:
            sequence = chunk.data.get("sequence_number")
            yield error_event(exc, sequence + 1 if isinstance(sequence, int) else 0)
            return
        finally:
            if final is not None:
                await self.quotas.charge(call.principal, total_tokens(final.get("usage")))
        if final is not None and final.get("status") != "failed":  # errors are not recorded
            self.record(request, call, final)
        call.timing.finish()


def _ended(chunk: StreamChunk) -> dict | None:
    """The whole response, when ``chunk`` is the event that ends the stream."""
    response = chunk.data.get("response")
    return response if chunk.data.get("type") in _ENDS and isinstance(response, dict) else None


def add_responses_routes(
    app: FastAPI, backend: Backend, quotas: Quotas, conversations: ConversationLog | None
) -> None:
    """Add ``POST /v1/responses`` to ``app``."""
    responses = _Responses(backend, quotas, conversations)

    @app.post("/v1/responses", openapi_extra=request_body(ResponsesBody))
    async def create_response(request: Request) -> Response:
        """OpenAI's Responses API, streamed (`stream: true`) or not.

        `model` names a deployment or `deployment:adapter`. `input` is a text or a list
        of items: messages (text and `input_image` parts, under the deployment's image
        policy), `function_call` items and their `function_call_output`. Tools of type
        `function` come back as `function_call` output items. Responses are not stored:
        `previous_response_id`, `conversation`, `prompt` and `background: true` are a
        400; `store`, `service_tier`, `safety_identifier`, … are ignored and named in
        `X-Qingliang-Ignored-Fields`; any other unknown field is a 400 naming it.
        Served on vLLM deployments (vLLM's own Responses serving); a transformers
        deployment answers 400.
        """
        return await responses.answer(request)

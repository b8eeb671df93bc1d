"""OpenAI's Responses request (``POST /v1/responses``) as the gateway takes it.

The same policy as chat completions (:mod:`.openai_bodies`), for the fields of OpenAI's
``responses.create``:

* fields vLLM's ``OpenAIServingResponses`` implements, and its sampling extras
  (``top_k``, ``min_p``, ``repetition_penalty``, ``structured_outputs``, …), go to the
  engine as sent;
* documented fields that nothing here implements (:data:`IGNORED`: ``store``,
  ``service_tier``, ``safety_identifier``, ``prompt_cache_key``, ``stream_options``, …)
  are dropped before the engine and named in ``X-Qingliang-Ignored-Fields``; so are
  values of ``include`` that vLLM does not produce (``web_search_call.results``, …);
* documented fields whose meaning cannot be kept without storing responses
  (:data:`UNSUPPORTED`: ``previous_response_id``, ``conversation``, ``prompt``,
  ``background: true``) are a 400 that says what to send instead: dropping them would
  answer a different question than the one asked;
* vLLM's engine-internal fields are refused as for chat (:data:`.openai_bodies.INTERNAL`);
* any other field is a 400 naming it.

``input`` items are typed for what the gateway acts on: messages (their ``role`` checked,
as OpenAI does), their content parts (``input_image`` parts go through the deployment's
image policy, :mod:`qingliang.platform.gateway.responses`), function calls and their
outputs. Items of other types (``reasoning``, built-in tool calls) go to the engine to
judge.

Example:
    >>> body = {"model": "qwen", "input": "hi", "store": False, "top_k": 5}
    >>> checked(body, ResponsesBody)
    >>> sent, ignored = forwarded_responses(body)
    >>> sorted(sent), ignored
    (['input', 'model', 'top_k'], ['store'])
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Discriminator, Field, Tag

from qingliang.platform.errors import BadRequest
from qingliang.platform.gateway.http.openai_bodies import (
    _INT64,
    IGNORED_HEADER,
    JsonObjectFormat,
    TextFormat,
    _ignored,
    _Obj,
    _other,
    _tagged,
    _Top,
    checked,
)
from qingliang.platform.gateway.http.params import MAX_LOGPROBS, MAX_STOP

__all__ = ["IGNORED_HEADER", "ResponsesBody", "checked", "forwarded_responses"]


# ------------------------------------------------------------------- content parts


class InputText(_Obj):
    type: Literal["input_text"]
    text: str


class InputImage(_Obj):
    type: Literal["input_image"]
    image_url: str | None = Field(
        None, description="A data: URL with the image in base64 (network URLs are refused)."
    )
    file_id: str | None = Field(None, description="Not supported: files are not stored here.")
    detail: Literal["auto", "low", "high", "original"] | None = None


class InputFile(_Obj):
    type: Literal["input_file"]
    file_data: str | None = None
    file_id: str | None = None
    file_url: str | None = None
    filename: str | None = None


class OutputText(_Obj):
    """An earlier answer's text, sent back in an assistant message."""

    type: Literal["output_text"]
    text: str


class Refusal(_Obj):
    type: Literal["refusal"]
    refusal: str


_PARTS = ("input_text", "input_image", "input_file", "output_text", "refusal")


class OtherInputPart(_Obj):
    type: str = _other(_PARTS, "A content part")


InputPart = Annotated[
    Annotated[InputText, Tag("input_text")]
    | Annotated[InputImage, Tag("input_image")]
    | Annotated[InputFile, Tag("input_file")]
    | Annotated[OutputText, Tag("output_text")]
    | Annotated[Refusal, Tag("refusal")]
    | Annotated[OtherInputPart, Tag("other")],
    _tagged("type", _PARTS),
]


# --------------------------------------------------------------------------- items


class MessageItem(_Obj):
    """A message: ``type`` may be left out (OpenAI's "easy" input message)."""

    type: Literal["message"] | None = None
    role: Literal["user", "assistant", "system", "developer"]
    content: str | list[InputPart]


class FunctionCallItem(_Obj):
    """A function call the model made, sent back with the next turn."""

    type: Literal["function_call"]
    call_id: str
    name: str
    arguments: str = Field(description="The arguments, as a JSON string.")


class FunctionCallOutputItem(_Obj):
    """What the caller's function returned, for the call ``call_id``."""

    type: Literal["function_call_output"]
    call_id: str
    output: str | list[InputPart]


_ITEMS = ("message", "function_call", "function_call_output")


class OtherItem(_Obj):
    """An item of another type (``reasoning``, built-in tool calls), for the engine."""

    type: str = _other(_ITEMS, "An input item")


def _item_tag(value: Any) -> str:
    if not isinstance(value, dict):
        return "other"
    kind = value.get("type")
    if kind is None and "role" in value:
        return "message"
    return kind if isinstance(kind, str) and kind in _ITEMS else "other"


InputItem = Annotated[
    Annotated[MessageItem, Tag("message")]
    | Annotated[FunctionCallItem, Tag("function_call")]
    | Annotated[FunctionCallOutputItem, Tag("function_call_output")]
    | Annotated[OtherItem, Tag("other")],
    Discriminator(_item_tag),
]


# --------------------------------------------------------------------------- tools


class FunctionTool(_Obj):
    type: Literal["function"]
    name: str
    description: str | None = None
    parameters: dict[str, Any] | None = Field(
        None, description="The arguments, as a JSON Schema object."
    )
    strict: bool | None = None


class OtherTool(_Obj):
    """A built-in tool (web search, file search, …): vLLM runs none without a tool server."""

    type: str = _other(("function",), "A tool")


Tool = Annotated[
    Annotated[FunctionTool, Tag("function")] | Annotated[OtherTool, Tag("other")],
    _tagged("type", ("function",)),
]


class NamedFunction(_Obj):
    type: Literal["function"]
    name: str


class OtherToolChoice(_Obj):
    type: str = _other(("function",), "A tool choice")


ToolChoice = (
    Literal["none", "auto", "required"]
    | Annotated[
        Annotated[NamedFunction, Tag("function")] | Annotated[OtherToolChoice, Tag("other")],
        _tagged("type", ("function",)),
    ]
)


# ------------------------------------------------------------------------- options


class JsonSchemaText(_Obj):
    type: Literal["json_schema"]
    name: str
    schema_: dict[str, Any] = Field(alias="schema")
    description: str | None = None
    strict: bool | None = None


TextFormatConfig = Annotated[TextFormat | JsonObjectFormat | JsonSchemaText, Discriminator("type")]


class TextConfig(_Obj):
    format: TextFormatConfig | None = None
    verbosity: Literal["low", "medium", "high"] | None = None


class Reasoning(_Obj):
    effort: str | None = Field(None, description="none, minimal, low, medium, high, …")
    summary: Literal["auto", "concise", "detailed"] | None = None
    generate_summary: Literal["auto", "concise", "detailed"] | None = None


class ResponsesStreamOptions(_Obj):
    include_obfuscation: bool | None = Field(None, description="Ignored.")


#: ``include`` values vLLM's Responses serving knows; others are dropped and named.
INCLUDABLE = frozenset(
    {
        "code_interpreter_call.outputs",
        "computer_call_output.output.image_url",
        "file_search_call.results",
        "message.input_image.image_url",
        "message.output_text.logprobs",
        "reasoning.encrypted_content",
    }
)


def _unsupported(description: str) -> Any:
    return Field(None, description=f"Not supported (400): {description}")


# ------------------------------------------------------------------------- request


class ResponsesBody(_Top):
    """``POST /v1/responses``: OpenAI's Responses request."""

    model: str = Field(
        min_length=1, description="A deployment, or deployment:adapter (GET /v1/models)."
    )
    input: str | list[InputItem] = Field(
        description="A text, or the conversation as items (messages, function calls and "
        "their outputs)."
    )
    instructions: str | None = Field(None, description="A system message put first.")
    stream: bool | None = Field(False, description="Answer as server-sent events.")
    max_output_tokens: int | None = Field(None, ge=1, lt=_INT64)
    max_tool_calls: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    top_logprobs: int | None = Field(None, ge=0, le=MAX_LOGPROBS)
    tools: list[Tool] | None = None
    tool_choice: ToolChoice | None = None
    parallel_tool_calls: bool | None = None
    text: TextConfig | None = None
    reasoning: Reasoning | None = None
    include: list[str] | None = Field(
        None, description=f"Of OpenAI's values, vLLM produces: {', '.join(sorted(INCLUDABLE))}."
    )
    truncation: Literal["auto", "disabled"] | None = None
    metadata: dict[str, str] | None = Field(None, description="Returned in the response.")
    user: str | None = Field(
        None, description="The end user; a bare deployment's canary keeps one user on one arm."
    )
    background: bool | None = Field(
        None, description="Only false: responses are not stored, so none runs in the background."
    )
    # vLLM's sampling and output extras.
    top_k: int | None = Field(None, description="vLLM: sample from the k likeliest tokens.")
    min_p: float | None = Field(None, description="vLLM: minimum probability, relative.")
    repetition_penalty: float | None = Field(None, description="vLLM: > 1 discourages repeats.")
    presence_penalty: float | None = Field(None, ge=-2, le=2)
    frequency_penalty: float | None = Field(None, ge=-2, le=2)
    logit_bias: dict[str, float] | None = None
    seed: int | None = Field(None, ge=-_INT64, lt=_INT64)
    stop: str | Annotated[list[str], Field(max_length=MAX_STOP)] | None = None
    stop_token_ids: list[int] | None = None
    ignore_eos: bool | None = None
    skip_special_tokens: bool | None = None
    include_stop_str_in_output: bool | None = None
    structured_outputs: dict[str, Any] | None = Field(
        None, description="vLLM: constrain the answer (json, regex, choice, grammar)."
    )
    chat_template_kwargs: dict[str, Any] | None = Field(
        None, description="Passed to the model's chat template (e.g. enable_thinking)."
    )
    include_reasoning: bool | None = None
    enable_response_messages: bool | None = None
    cache_salt: str | None = Field(None, description="vLLM: isolates this prefix cache.")
    watermarking: bool | None = None
    # OpenAI's fields that no engine here implements: dropped, and named in the header.
    access_programs: dict[str, Any] | None = _ignored()
    background_options: dict[str, Any] | None = _ignored()
    context_management: list[dict[str, Any]] | None = _ignored()
    image: dict[str, Any] | None = _ignored("Image generation options.")
    moderation: dict[str, Any] | None = _ignored()
    prompt_cache_key: str | None = _ignored()
    prompt_cache_options: dict[str, Any] | None = _ignored()
    prompt_cache_retention: str | None = _ignored()
    safety_identifier: str | None = _ignored()
    service_tier: str | None = _ignored()
    store: bool | None = _ignored("Responses are never stored.")
    stream_options: ResponsesStreamOptions | None = _ignored()
    # OpenAI's fields that need stored responses or prompts: refused with the fix.
    previous_response_id: str | None = _unsupported("send the earlier turns in `input`.")
    conversation: str | dict[str, Any] | None = _unsupported("send the earlier turns in `input`.")
    prompt: dict[str, Any] | None = _unsupported(
        "prompt templates are stored at OpenAI; send `instructions` and `input`."
    )


#: Fields accepted and dropped before the engine.
IGNORED = frozenset(
    {
        "access_programs",
        "background_options",
        "context_management",
        "image",
        "moderation",
        "prompt_cache_key",
        "prompt_cache_options",
        "prompt_cache_retention",
        "safety_identifier",
        "service_tier",
        "store",
        "stream_options",
    }
)
#: Fields refused when set, and what to do instead.
UNSUPPORTED: dict[str, str] = {
    "previous_response_id": "responses are not stored here (vLLM keeps none across "
    "replicas); send the earlier turns in `input`, with the model's output items and "
    "your `function_call_output` items",
    "conversation": "conversations are not stored here; send the earlier turns in `input`",
    "prompt": "prompt templates are stored at OpenAI, not here; send `instructions` and `input`",
}


def forwarded_responses(body: dict) -> tuple[dict, list[str]]:
    """``body`` (checked) as the engine gets it, and the names of what was dropped.

    Raises:
        BadRequest: a field of :data:`UNSUPPORTED` is set, or ``background`` is true.
    """
    for name, why in UNSUPPORTED.items():
        if body.get(name) is not None:
            raise BadRequest(f"`{name}` is not supported: {why}", param=name)
    if body.get("background") is True:
        raise BadRequest(
            "`background: true` is not supported: responses are not stored here, so a "
            "background response could never be retrieved; leave it out and wait for the "
            "answer, or stream it",
            param="background",
        )
    ignored = sorted(IGNORED & set(body))
    # null is "not set", as in OpenAI's API (vLLM's model refuses null for some fields).
    sent = {
        k: v for k, v in body.items() if v is not None and k not in IGNORED and k not in UNSUPPORTED
    }
    include = body.get("include")
    if isinstance(include, list) and not set(include) <= INCLUDABLE:
        sent["include"] = [v for v in include if v in INCLUDABLE]
        ignored = sorted({*ignored, "include"})
    return sent, ignored

"""OpenAI's request bodies as the gateway takes them, and what it does with each field.

``/v1/chat/completions`` (:class:`ChatCompletionBody`), ``/v1/completions``
(:class:`CompletionBody`) and ``/v1/embeddings`` (:class:`EmbeddingBody`) are typed with
the fields of OpenAI's API reference, plus vLLM's own sampling and output extras. The
policy on top-level fields (docs/serving.md, "Request bodies"):

* every field of OpenAI's schema is accepted: a client written for OpenAI never gets a
  400 for sending one;
* fields an engine implements, and vLLM's extras (``top_k``, ``min_p``,
  ``repetition_penalty``, ``chat_template_kwargs``, ``structured_outputs``, …) go to the
  engine as sent; an engine that cannot honour one refuses it by name (the transformers
  engine takes few, see serving/engines/transformers_engine.py);
* OpenAI fields that no engine here implements (:data:`IGNORED`: ``store``, ``metadata``,
  ``service_tier``, ``functions``, …) are dropped before the engine, and the answer's
  ``X-Qingliang-Ignored-Fields`` header names them;
* vLLM's engine-internal fields (:data:`INTERNAL`: scheduling priority, request ids, KV
  transfer, chat templates sent in the request, …) are refused: one tenant's request
  must not steer the engine that serves every tenant;
* any other field is refused (400) naming it, with a "did you mean" hint, as OpenAI's
  API does: a misspelt or removed option is never a silent 200.

Nested objects (messages, content parts, tools) are typed for the fields OpenAI names;
other keys in them go to the engine, which ignores those it does not know (clients send
back an assistant message with ``refusal``, ``annotations`` or ``reasoning_content``).
A content part or response format of a type not listed here (vLLM's ``video_url``,
``structural_tag``) is passed on for the engine to judge.

The ranges of sampling parameters are checked first, with their own messages, by
:func:`.params.check_generation`; the ranges here document them.

Example:
    >>> body = {"model": "qwen", "messages": [{"role": "user", "content": "hi"}],
    ...         "store": False, "top_k": 5}
    >>> sent, ignored = forwarded(body, ChatCompletionBody)
    >>> sorted(sent), ignored
    (['messages', 'model', 'top_k'], ['store'])
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag

from qingliang.platform.errors import BadRequest
from qingliang.platform.gateway.http.bodies import validated
from qingliang.platform.gateway.http.params import MAX_LOGPROBS, MAX_STOP

#: Answer header naming the request fields that were accepted but not acted on.
IGNORED_HEADER = "X-Qingliang-Ignored-Fields"
#: Answer header saying what was done with the request's images (``ocr; count=2``).
IMAGES_HEADER = "X-Qingliang-Images"
_INT64 = 2**63


class _Obj(BaseModel):
    """A nested OpenAI object: its named fields typed, other keys kept for the engine."""

    model_config = ConfigDict(extra="allow", strict=True)


class _Top(BaseModel):
    """A request body: fields outside the model are refused (see the module docstring)."""

    model_config = ConfigDict(extra="forbid", strict=True)


def _tagged(key: str, known: tuple[str, ...]) -> Discriminator:
    """Choose a union member by ``value[key]``; values not in ``known`` go to ``other``."""

    def tag(value: Any) -> str:
        kind = value.get(key) if isinstance(value, dict) else getattr(value, key, None)
        return kind if isinstance(kind, str) and kind in known else "other"

    return Discriminator(tag)


def _other(known: tuple[str, ...], what: str) -> Any:
    """The tag field of a catch-all member: any string but the known ones."""
    return Field(
        description=f"{what} of another type, passed to the engine to judge.",
        json_schema_extra={"not": {"enum": list(known)}},
    )


# ------------------------------------------------------------------- content parts


class TextPart(_Obj):
    type: Literal["text"]
    text: str


class ImageURL(_Obj):
    url: str = Field(description="An https URL, or a data: URL with the image in base64.")
    detail: Literal["auto", "low", "high", "original"] | None = Field(
        None, description="Ignored by vLLM (it warns); accepted as OpenAI takes it."
    )


class ImagePart(_Obj):
    type: Literal["image_url"]
    image_url: ImageURL


class InputAudio(_Obj):
    data: str = Field(description="The audio, base64-encoded.")
    format: str = Field(description="wav or mp3.")


class AudioPart(_Obj):
    type: Literal["input_audio"]
    input_audio: InputAudio


class FileRef(_Obj):
    file_data: str | None = Field(None, description="The file, base64-encoded.")
    file_id: str | None = None
    filename: str | None = None


class FilePart(_Obj):
    type: Literal["file"]
    file: FileRef


class RefusalPart(_Obj):
    type: Literal["refusal"]
    refusal: str


_PARTS = ("text", "image_url", "input_audio", "file", "refusal")


class OtherPart(_Obj):
    """A content part of a type OpenAI does not list (vLLM's ``video_url``, …)."""

    type: str = _other(_PARTS, "A content part")


ContentPart = Annotated[
    Annotated[TextPart, Tag("text")]
    | Annotated[ImagePart, Tag("image_url")]
    | Annotated[AudioPart, Tag("input_audio")]
    | Annotated[FilePart, Tag("file")]
    | Annotated[RefusalPart, Tag("refusal")]
    | Annotated[OtherPart, Tag("other")],
    _tagged("type", _PARTS),
]


# ------------------------------------------------------------------------- messages


class FunctionCallMessage(_Obj):
    name: str
    arguments: str = Field(description="The arguments, as a JSON string.")


class FunctionToolCall(_Obj):
    id: str
    type: Literal["function"]
    function: FunctionCallMessage


class CustomCall(_Obj):
    name: str
    input: str


class CustomToolCall(_Obj):
    id: str
    type: Literal["custom"]
    custom: CustomCall


ToolCall = Annotated[FunctionToolCall | CustomToolCall, Discriminator("type")]


class SystemMessage(_Obj):
    role: Literal["system"]
    content: str | list[TextPart]
    name: str | None = None


class DeveloperMessage(_Obj):
    role: Literal["developer"]
    content: str | list[TextPart]
    name: str | None = None


class UserMessage(_Obj):
    role: Literal["user"]
    content: str | list[ContentPart]
    name: str | None = None


class AssistantAudio(_Obj):
    id: str


class AssistantMessage(_Obj):
    role: Literal["assistant"]
    content: str | list[TextPart | RefusalPart] | None = None
    refusal: str | None = None
    name: str | None = None
    tool_calls: list[ToolCall] | None = None
    function_call: FunctionCallMessage | None = Field(None, description="Deprecated by OpenAI.")
    audio: AssistantAudio | None = None


class ToolMessage(_Obj):
    role: Literal["tool"]
    content: str | list[TextPart]
    tool_call_id: str


class FunctionMessage(_Obj):
    role: Literal["function"]
    content: str | None
    name: str


Message = Annotated[
    SystemMessage
    | DeveloperMessage
    | UserMessage
    | AssistantMessage
    | ToolMessage
    | FunctionMessage,
    Discriminator("role"),
]


# ---------------------------------------------------------------------------- tools


class FunctionDefinition(_Obj):
    name: str
    description: str | None = None
    parameters: dict[str, Any] | None = Field(
        None, description="The arguments, as a JSON Schema object."
    )
    strict: bool | None = None


class FunctionTool(_Obj):
    type: Literal["function"]
    function: FunctionDefinition


class CustomDefinition(_Obj):
    name: str
    description: str | None = None
    format: dict[str, Any] | None = Field(None, description="text, or a grammar.")


class CustomTool(_Obj):
    type: Literal["custom"]
    custom: CustomDefinition


Tool = Annotated[FunctionTool | CustomTool, Discriminator("type")]


class ToolName(_Obj):
    name: str


class NamedToolChoice(_Obj):
    type: Literal["function"]
    function: ToolName


class NamedCustomChoice(_Obj):
    type: Literal["custom"]
    custom: ToolName


class AllowedTools(_Obj):
    mode: Literal["auto", "required"]
    tools: list[dict[str, Any]] = Field(description="Tool references, e.g. {type, function}.")


class AllowedToolsChoice(_Obj):
    type: Literal["allowed_tools"]
    allowed_tools: AllowedTools


ToolChoice = (
    Literal["none", "auto", "required"]
    | Annotated[NamedToolChoice | NamedCustomChoice | AllowedToolsChoice, Discriminator("type")]
)


# -------------------------------------------------------------------------- options


class JsonSchemaSpec(_Obj):
    name: str
    description: str | None = None
    schema_: dict[str, Any] | None = Field(None, alias="schema")
    strict: bool | None = None


class TextFormat(_Obj):
    type: Literal["text"]


class JsonObjectFormat(_Obj):
    type: Literal["json_object"]


class JsonSchemaFormat(_Obj):
    type: Literal["json_schema"]
    json_schema: JsonSchemaSpec


_FORMATS = ("text", "json_object", "json_schema")


class OtherFormat(_Obj):
    """A response format OpenAI does not list (vLLM's ``structural_tag``)."""

    type: str = _other(_FORMATS, "A response format")


ResponseFormat = Annotated[
    Annotated[TextFormat, Tag("text")]
    | Annotated[JsonObjectFormat, Tag("json_object")]
    | Annotated[JsonSchemaFormat, Tag("json_schema")]
    | Annotated[OtherFormat, Tag("other")],
    _tagged("type", _FORMATS),
]


class StreamOptions(_Obj):
    include_usage: bool | None = Field(None, description="A last event with the usage.")
    include_obfuscation: bool | None = Field(None, description="Ignored.")
    continuous_usage_stats: bool | None = Field(None, description="vLLM: usage in every event.")


class AudioOutput(_Obj):
    voice: str | dict[str, Any] = Field(description="A voice name, or {id} of a custom one.")
    format: str


class Prediction(_Obj):
    type: Literal["content"]
    content: str | list[TextPart]


class WebSearchOptions(_Obj):
    search_context_size: Literal["low", "medium", "high"] | None = None
    user_location: dict[str, Any] | None = None


class Moderation(_Obj):
    model: str


class PromptCacheOptions(_Obj):
    mode: str | None = None
    ttl: str | None = None


class RepetitionDetection(_Obj):
    """vLLM's repetition detection settings."""


Stop = str | Annotated[list[str], Field(max_length=MAX_STOP)] | None


def _ignored(description: str = "") -> Any:
    return Field(
        None, description=f"Accepted and ignored (named in {IGNORED_HEADER}). " + description
    )


# ------------------------------------------------------------------------- requests


class _Sampling(_Top):
    """Fields chat and legacy completions share (OpenAI's, then vLLM's extras)."""

    model: str = Field(
        min_length=1, description="A deployment, or deployment:adapter (GET /v1/models)."
    )
    stream: bool | None = Field(False, description="Answer as server-sent events.")
    stream_options: StreamOptions | None = None
    max_tokens: int | None = Field(None, ge=1, lt=_INT64)
    n: int | None = Field(
        None,
        ge=1,
        description="Choices to generate: at most QINGLIANG_MAX_N, 16 by default.",
        json_schema_extra={"maximum": 16},
    )
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    presence_penalty: float | None = Field(None, ge=-2, le=2)
    frequency_penalty: float | None = Field(None, ge=-2, le=2)
    logit_bias: dict[str, float] | None = Field(
        None, description="Token id (as a string) → bias from -100 to 100."
    )
    seed: int | None = Field(None, ge=-_INT64, lt=_INT64)
    stop: Stop = Field(None, description=f"A string, or at most {MAX_STOP}.")
    user: str | None = Field(
        None, description="The end user; a bare deployment's canary keeps one user on one arm."
    )
    # vLLM's sampling and output extras.
    top_k: int | None = Field(None, description="vLLM: sample from the k likeliest tokens.")
    min_p: float | None = Field(None, description="vLLM: minimum probability, relative.")
    repetition_penalty: float | None = Field(None, description="vLLM: > 1 discourages repeats.")
    length_penalty: float | None = Field(None, description="vLLM: beam search only.")
    min_tokens: int | None = Field(None, description="vLLM: tokens before a stop may end it.")
    ignore_eos: bool | None = None
    stop_token_ids: list[int] | None = None
    bad_words: list[str] | None = None
    allowed_token_ids: list[int] | None = None
    include_stop_str_in_output: bool | None = None
    skip_special_tokens: bool | None = None
    spaces_between_special_tokens: bool | None = None
    prompt_logprobs: int | None = None
    truncate_prompt_tokens: int | None = None
    truncation_side: Literal["left", "right"] | None = None
    use_beam_search: bool | None = None
    add_special_tokens: bool | None = None
    echo: bool | None = Field(None, description="Repeat the prompt before the answer.")
    structured_outputs: dict[str, Any] | None = Field(
        None, description="vLLM: constrain the answer (json, regex, choice, grammar)."
    )
    return_token_ids: bool | None = None
    return_tokens_as_token_ids: bool | None = None
    return_token_offsets: bool | None = None
    logprob_token_ids: list[int] | None = None
    cache_salt: str | None = Field(None, description="vLLM: isolates this prefix cache.")
    thinking_token_budget: int | None = None
    stream_interval: int | None = None
    watermarking: bool | None = None
    repetition_detection: RepetitionDetection | None = None


class ChatCompletionBody(_Sampling):
    """``POST /v1/chat/completions``: OpenAI's chat completions request."""

    messages: list[Message] = Field(min_length=1, description="The conversation so far.")
    max_completion_tokens: int | None = Field(None, ge=1, lt=_INT64)
    logprobs: bool | None = None
    top_logprobs: int | None = Field(None, ge=0, le=MAX_LOGPROBS)
    tools: list[Tool] | None = None
    tool_choice: ToolChoice | None = None
    parallel_tool_calls: bool | None = None
    response_format: ResponseFormat | None = None
    reasoning_effort: str | None = Field(
        None, description="none, minimal, low, medium, high, … (for reasoning models)."
    )
    # vLLM's chat extras.
    add_generation_prompt: bool | None = None
    continue_final_message: bool | None = None
    chat_template_kwargs: dict[str, Any] | None = Field(
        None, description="Passed to the model's chat template (e.g. enable_thinking)."
    )
    documents: list[dict[str, str]] | None = None
    include_reasoning: bool | None = None
    return_prompt_text: bool | None = None
    # OpenAI's fields that no engine here implements: dropped, and named in the header.
    audio: AudioOutput | None = _ignored("Audio output.")
    functions: list[FunctionDefinition] | None = _ignored("Deprecated: use tools.")
    function_call: Literal["none", "auto"] | ToolName | None = _ignored(
        "Deprecated: use tool_choice."
    )
    metadata: dict[str, str] | None = _ignored()
    modalities: list[Literal["text", "audio"]] | None = _ignored()
    moderation: Moderation | None = _ignored()
    prediction: Prediction | None = _ignored("Predicted output.")
    prompt_cache_key: str | None = _ignored()
    prompt_cache_options: PromptCacheOptions | None = _ignored()
    prompt_cache_retention: str | None = _ignored()
    safety_identifier: str | None = _ignored()
    service_tier: str | None = _ignored()
    store: bool | None = _ignored()
    verbosity: Literal["low", "medium", "high"] | None = _ignored()
    web_search_options: WebSearchOptions | None = _ignored()


class CompletionBody(_Sampling):
    """``POST /v1/completions``: OpenAI's legacy completions request."""

    prompt: str | list[str] | list[int] | list[list[int]] = Field(
        description="Text, texts, token ids, or lists of token ids."
    )
    logprobs: int | None = Field(None, ge=0, le=MAX_LOGPROBS)
    suffix: str | None = None
    response_format: ResponseFormat | None = None
    best_of: int | None = _ignored()


class EmbeddingBody(_Top):
    """``POST /v1/embeddings``: OpenAI's embeddings request."""

    model: str = Field(description="The embedding model (GET /v1/models lists it).")
    input: str | list[str] | list[int] | list[list[int]] = Field(
        description="A text, or at most 2048 of them; or token ids of cl100k_base (what "
        "OpenAI's clients send, LangChain's by default), decoded to text before embedding."
    )
    encoding_format: Literal["float", "base64"] | None = Field(
        None, description="float (default), or base64 of little-endian float32."
    )
    dimensions: int | None = Field(None, description="Only the model's own (384).")
    user: str | None = None
    input_type: Literal["query", "passage"] | None = Field(
        None,
        description="Qingliang: e5's prefix. Without it every text is embedded as a query, "
        "which suits comparing texts with each other; for retrieval embed the documents "
        "with passage and the searches with query.",
    )


#: Fields of each body that are accepted and dropped before the engine.
IGNORED: dict[type[_Top], frozenset[str]] = {
    ChatCompletionBody: frozenset(
        {
            "audio",
            "function_call",
            "functions",
            "metadata",
            "modalities",
            "moderation",
            "prediction",
            "prompt_cache_key",
            "prompt_cache_options",
            "prompt_cache_retention",
            "safety_identifier",
            "service_tier",
            "store",
            "verbosity",
            "web_search_options",
        }
    ),
    CompletionBody: frozenset({"best_of"}),
    EmbeddingBody: frozenset(),
}
#: vLLM's request fields that a gateway client may not set, and why.
INTERNAL: dict[str, str] = {
    "priority": "it would reorder every tenant's queue",
    "request_id": "the engine's ids are its own",
    "kv_transfer_params": "KV-cache transfer is the deployment's",
    "ec_transfer_params": "encoder-cache transfer is the deployment's",
    "vllm_xargs": "engine plug-in arguments are the deployment's",
    "chat_template": "the chat template is the deployment's",
    "mm_processor_kwargs": "the multimodal processor's settings are the deployment's",
    "media_io_kwargs": "media loading settings are the deployment's",
    "mm_payload": "multimodal tensors are not returned",
    "return_mm_kwargs": "multimodal tensors are not returned",
    "routed_experts_prompt_start": "expert routing is the deployment's",
    "session_id": "engine sessions are the deployment's",
    "prompt_embeds": "prompt embeddings are tensors loaded by the engine",
}
#: The request models, for the OpenAPI document.
OPENAI_BODIES: tuple[type[BaseModel], ...] = (ChatCompletionBody, CompletionBody, EmbeddingBody)


def checked(body: dict, model: type[_Top]) -> None:
    """Refuse ``body`` unless ``model`` takes it (400 naming the first bad field)."""
    for name in body:
        if name in INTERNAL and name not in model.model_fields:
            raise BadRequest(
                f"`{name}` cannot be set through the gateway: {INTERNAL[name]}", param=name
            )
    validated(model, body)


def forwarded(body: dict, model: type[_Top]) -> tuple[dict, list[str]]:
    """``body`` without the fields no engine implements, and those fields' names."""
    ignored = sorted(IGNORED[model] & set(body))
    if not ignored:
        return body, []
    return {k: v for k, v in body.items() if k not in IGNORED[model]}, ignored

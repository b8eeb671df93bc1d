"""Tool calls that small models write as text, recovered as OpenAI ``tool_calls``.

vLLM's tool parsers look for a model family's own markup (``hermes``: a JSON object
inside ``<tool_call>`` tags). Small models often leave it out: offered a
``get_weather`` tool, Qwen2.5-Coder-0.5B answers with the message text
``{"name": "get_weather", "arguments": {"city": "Fuzhou"}}`` (sometimes fenced in
```` ```json ````) and ``finish_reason`` ``stop``. This module reads such an answer
as the call it is, so OpenAI clients see ``tool_calls``:

- the whole answer (whitespace aside) must be calls: tagged
  (``<tool_call>{...}</tool_call>``, one or several), a fenced JSON block, bare JSON
  objects, or a JSON list of calls; ``parameters`` is read as ``arguments``;
- each call must name a function tool the request offered (the one ``tool_choice``
  names, where it names one), with arguments that are a JSON object valid against
  that tool's JSON schema (``jsonschema``);
- otherwise nothing changes: an answer that merely contains JSON stays an answer.

:func:`recover` applies this to what the vLLM engine returns for a chat request that
offered tools (``tool_choice`` not ``"none"``) when vLLM's own parser found no call:
a response body is rewritten; a stream is wrapped so that each choice's content
deltas are held back only while the text so far could still become a call, then
either flushed unchanged or replaced by ``tool_calls`` deltas at the choice's end.

Example:
    >>> offer = Offer.of({"tools": [{"type": "function", "function": {
    ...     "name": "get_weather", "parameters": {"type": "object",
    ...     "properties": {"city": {"type": "string"}}, "required": ["city"]}}}]})
    >>> parse_tool_calls('```json\\n{"name": "get_weather", "arguments": '
    ...                  '{"city": "Fuzhou"}}\\n```', offer)
    [Call(name='get_weather', arguments={'city': 'Fuzhou'})]
    >>> parse_tool_calls('Use {"name": "get_weather"} for that.', offer) is None
    True
"""

from __future__ import annotations

import json
import logging
import re
import secrets
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import Any

from qingliang.serving.engine import EngineOutput, StreamChunk

logger = logging.getLogger(__name__)

#: What an answer that may still become a tool call starts with (after whitespace).
OPENINGS = ("{", "[", "```", "<tool_call>")
_LONGEST_OPENING = max(len(o) for o in OPENINGS)
_TAGGED = re.compile(r"<tool_call>(.*?)(?:</tool_call>|\Z)", re.S)
_FENCED = re.compile(r"\A```[A-Za-z0-9_+-]*[ \t]*\n?(.*?)```\Z", re.S)
#: Keys a call object may have (``parameters``: what some models write for ``arguments``).
_CALL_KEYS = frozenset({"name", "arguments", "parameters"})
_DECODER = json.JSONDecoder()


@dataclass(frozen=True)
class Call:
    """One tool call read from an answer: a declared tool's name and valid arguments."""

    name: str
    arguments: dict[str, Any]


@dataclass(frozen=True)
class Offer:
    """The function tools a request lets the model call.

    Attributes:
        schemas: tool name -> its ``parameters`` JSON schema (``{}``: any object).
        named: ``tool_choice`` names one function (OpenAI then answers with
            ``finish_reason`` ``stop``, not ``tool_calls``).
        parallel: more than one call may be returned (``parallel_tool_calls``).
    """

    schemas: dict[str, dict[str, Any]] = field(default_factory=dict)
    named: bool = False
    parallel: bool = True

    @classmethod
    def of(cls, body: dict[str, Any]) -> Offer | None:
        """What chat request ``body`` offers; None when no function tool may be called."""
        tools, choice = body.get("tools"), body.get("tool_choice")
        if not tools or not isinstance(tools, list) or choice == "none":
            return None
        schemas: dict[str, dict[str, Any]] = {}
        for tool in tools:
            if not isinstance(tool, dict) or tool.get("type") != "function":
                continue
            fn = tool.get("function")
            if isinstance(fn, dict) and isinstance(fn.get("name"), str):
                params = fn.get("parameters")
                schemas[fn["name"]] = params if isinstance(params, dict) else {}
        allowed = _chosen_names(choice)
        if allowed is not None:
            schemas = {k: v for k, v in schemas.items() if k in allowed}
        if not schemas:
            return None
        named = isinstance(choice, dict) and choice.get("type") == "function"
        return cls(schemas, named, body.get("parallel_tool_calls") is not False)

    @classmethod
    def of_names(cls, names: set[str] | frozenset[str]) -> Offer:
        """Tools known by name only: any JSON object is valid arguments."""
        return cls({name: {} for name in names})

    @property
    def finish_reason(self) -> str:
        """OpenAI's ``finish_reason`` for an answer that is a call."""
        return "stop" if self.named else "tool_calls"


def _chosen_names(choice: object) -> set[str] | None:
    """The names a ``tool_choice`` object restricts calls to; None for no restriction."""
    if not isinstance(choice, dict):
        return None
    if choice.get("type") == "function":
        refs = [choice]
    elif choice.get("type") == "allowed_tools" and isinstance(choice.get("allowed_tools"), dict):
        refs = choice["allowed_tools"].get("tools") or []
    else:
        return None
    fns = [r.get("function") for r in refs if isinstance(r, dict)]
    return {f["name"] for f in fns if isinstance(f, dict) and isinstance(f.get("name"), str)}


# --------------------------------------------------------------------------- parsing


def parse_tool_calls(text: str, offer: Offer) -> list[Call] | None:
    """The calls ``text`` consists of, or None when it is (also) something else.

    All or nothing: one value that is not a valid call of an offered tool leaves the
    whole text as the answer. With ``offer.parallel`` false only the first call is kept
    (as vLLM does for the calls its own parser finds).
    """
    values = _values(text)
    if not values:
        return None
    calls: list[Call] = []
    for value in values:
        items = value if isinstance(value, list) else [value]
        if not items:
            return None
        for item in items:
            call = _call(item, offer)
            if call is None:
                return None
            calls.append(call)
    return calls if offer.parallel else calls[:1]


def _values(text: str) -> list[Any] | None:
    """The JSON values the whole of ``text`` is made of, in any of the accepted forms."""
    s = text.strip()
    if not s.startswith("<tool_call>"):
        return _fenced_or_bare(s)
    values: list[Any] = []
    end = 0
    for m in _TAGGED.finditer(s):
        if s[end : m.start()].strip():
            return None  # prose between the tagged calls
        inner = _fenced_or_bare(m.group(1).strip())
        if not inner:
            return None
        values += inner
        end = m.end()
    return values if not s[end:].strip() else None


def _fenced_or_bare(s: str) -> list[Any] | None:
    if s.startswith("```"):
        m = _FENCED.match(s)
        return _json_values(m.group(1).strip()) if m else None
    return _json_values(s) if s[:1] in ("{", "[") else None


def _json_values(s: str) -> list[Any] | None:
    """JSON values separated by whitespace only (one call a line, as some models write)."""
    values, pos = [], 0
    while pos < len(s):
        try:
            value, pos = _DECODER.raw_decode(s, pos)
        except ValueError:
            return None
        values.append(value)
        while pos < len(s) and s[pos].isspace():
            pos += 1
    return values or None


def _call(item: object, offer: Offer) -> Call | None:
    if not isinstance(item, dict):
        return None
    if isinstance(item.get("function"), dict) and set(item) <= {"type", "id", "function"}:
        item = item["function"]  # OpenAI's own shape, copied from the prompt
        assert isinstance(item, dict)
    if not set(item) <= _CALL_KEYS or not isinstance(item.get("name"), str):
        return None
    name = item["name"]
    args = item.get("arguments", item.get("parameters", {}))
    if isinstance(args, str):
        try:
            args = json.loads(args)
        except ValueError:
            return None
    if name not in offer.schemas or not isinstance(args, dict):
        return None
    if not _valid(args, offer.schemas[name], name):
        return None
    return Call(name, args)


def _valid(args: dict[str, Any], schema: dict[str, Any], name: str) -> bool:
    """Whether ``args`` fit ``schema``, read strictly: where the schema lists its
    ``properties`` and says nothing of others, an argument it does not list fails.

    Why strict: a text is read as a call only when it is unmistakably one. Measured: given
    a tool result, Qwen2.5-Coder-0.5B may write the call again with the result's fields
    as arguments (``{"city": "Fuzhou", "condition": "sunny", ...}``); that is not a call.
    """
    if not schema:
        return True
    import jsonschema  # a dependency of ray (and vLLM); imported when first needed

    try:
        cls = jsonschema.validators.validator_for(schema)
        cls.check_schema(schema)
    except jsonschema.SchemaError:
        logger.debug("tool %s: unreadable parameters schema; any object accepted", name)
        return True
    if isinstance(schema.get("properties"), dict) and "additionalProperties" not in schema:
        schema = {**schema, "additionalProperties": False}
    error = jsonschema.exceptions.best_match(cls(schema).iter_errors(args))
    if error is not None:
        logger.debug("tool %s: arguments not valid (%s); left as text", name, error.message)
        return False
    return True


# ----------------------------------------------------------------- OpenAI's shapes


def new_call_id() -> str:
    """A fresh OpenAI-style tool call id, ``call_<24 hex digits>``."""
    return f"call_{secrets.token_hex(12)}"


def openai_tool_calls(calls: list[Call]) -> list[dict[str, Any]]:
    """``calls`` as a message's ``tool_calls`` (arguments as a JSON string)."""
    return [
        {
            "id": new_call_id(),
            "type": "function",
            "function": {
                "name": c.name,
                "arguments": json.dumps(c.arguments, ensure_ascii=False),
            },
        }
        for c in calls
    ]


def recover(body: dict[str, Any], output: EngineOutput) -> EngineOutput:
    """``output`` of chat request ``body`` with calls written as text made real.

    Unchanged (the same object, no wrapping) when ``body`` offers no tool or
    ``tool_choice`` is ``"none"``.
    """
    offer = Offer.of(body)
    if offer is None:
        return output
    if isinstance(output, dict):
        return recover_response(output, offer)
    return recover_stream(output, offer)


def recover_response(response: dict[str, Any], offer: Offer) -> dict[str, Any]:
    """A chat completion body with each choice whose text is calls turned into them."""
    for choice in response.get("choices") or []:
        message = choice.get("message")
        if not isinstance(message, dict) or message.get("tool_calls"):
            continue  # the engine's own parser found the calls
        text = message.get("content")
        calls = parse_tool_calls(text, offer) if isinstance(text, str) else None
        if calls:
            logger.debug(
                "choice %s: %d tool call(s) read from text", choice.get("index"), len(calls)
            )
            message["content"] = None
            message["tool_calls"] = openai_tool_calls(calls)
            choice["finish_reason"] = offer.finish_reason
    return response


# -------------------------------------------------------------------------- streams


def may_be_call(text: str) -> bool:
    """Whether an answer starting with ``text`` could still turn out to be calls."""
    s = text.lstrip()
    return any(s.startswith(o) or o.startswith(s) for o in OPENINGS)


@dataclass
class _Held:
    """One choice of a stream: the chunks held back while it may still be calls."""

    chunks: list[StreamChunk] = field(default_factory=list)
    parts: list[str] = field(default_factory=list)
    #: Its opening is one of OPENINGS in full: no need to look at it again.
    opened: bool = False
    done: bool = False

    def add(self, content: str) -> bool:
        """Append ``content``; whether the text could still be calls."""
        self.parts.append(content)
        if self.opened:
            return True
        text = "".join(self.parts).lstrip()
        if len(text) >= _LONGEST_OPENING or (text and text[0] in "{["):
            self.opened = may_be_call(text)
            return self.opened
        return may_be_call(text)


async def recover_stream(
    chunks: AsyncIterator[StreamChunk], offer: Offer
) -> AsyncIterator[StreamChunk]:
    """``chunks`` with each choice's calls-as-text turned into ``tool_calls`` deltas.

    Per choice index, content deltas are held while the text so far could be calls
    (:func:`may_be_call`) and flushed unchanged, in order, as soon as it cannot. At the
    choice's finish the held text becomes OpenAI-shaped ``tool_calls`` deltas and a
    finish chunk, or is flushed. Chunks of other choices, the usage chunk and chunks of
    a choice whose calls vLLM already parsed pass through in order.
    """
    held: dict[int, _Held] = {}
    try:
        async for chunk in chunks:
            if not chunk.data.get("choices"):
                yield chunk  # the usage chunk
                continue
            for part in _per_choice(chunk):
                for out in _step(part, held, offer):
                    yield out
        for state in held.values():  # a stream that ended without a finish reason
            if not state.done:
                for out in state.chunks:
                    yield out
    finally:
        aclose = getattr(chunks, "aclose", None)
        if aclose is not None:
            await aclose()


def _per_choice(chunk: StreamChunk) -> list[StreamChunk]:
    choices = chunk.data["choices"]
    if len(choices) == 1:
        return [chunk]
    head = {k: v for k, v in chunk.data.items() if k != "choices"}
    return [StreamChunk.of(head | {"choices": [c]}) for c in choices]


def _step(part: StreamChunk, held: dict[int, _Held], offer: Offer) -> Iterator[StreamChunk]:
    choice = part.data["choices"][0]
    state = held.setdefault(choice.get("index", 0), _Held())
    if state.done:
        yield part
        return
    delta = choice.get("delta") or {}
    content = delta.get("content") or ""
    finish = choice.get("finish_reason")
    if delta.get("tool_calls"):  # vLLM's own parser is writing the calls
        state.done = True
        yield from state.chunks
        yield part
        return
    if finish is None and not content and not state.chunks:
        yield part  # the role chunk, before any text: nothing to decide yet
        return
    # Not done: everything so far could be calls, and an empty delta changes nothing.
    possible = state.add(content) if content else True
    if finish is None:
        if possible:
            state.chunks.append(part)
            return
        state.done = True
        yield from state.chunks
        yield part
        return
    state.done = True
    calls = parse_tool_calls("".join(state.parts), offer) if possible else None
    if not calls:
        yield from state.chunks
        yield part
        return
    role = any("role" in (c.data["choices"][0].get("delta") or {}) for c in state.chunks)
    yield from _call_chunks(part, calls, offer, role)


def _call_chunks(
    finish: StreamChunk, calls: list[Call], offer: Offer, role: bool
) -> Iterator[StreamChunk]:
    """OpenAI's stream of a choice's calls: one delta per call, then the finish chunk."""
    head = {k: v for k, v in finish.data.items() if k not in ("choices", "usage")}
    choice = finish.data["choices"][0]
    for i, call in enumerate(openai_tool_calls(calls)):
        delta: dict[str, Any] = {"role": "assistant"} if role and i == 0 else {}
        delta["tool_calls"] = [{"index": i, **call}]
        yield StreamChunk.of(
            head
            | {
                "choices": [
                    {
                        "index": choice.get("index", 0),
                        "delta": delta,
                        "logprobs": None,
                        "finish_reason": None,
                    }
                ]
            }
        )
    last = dict(choice, delta={}, logprobs=None, finish_reason=offer.finish_reason)
    data = head | {"choices": [last]}
    if "usage" in finish.data:
        data["usage"] = finish.data["usage"]
    yield StreamChunk.of(data)

"""Every value OpenAI's request types allow is one the gateway's bodies take.

``test_gateway_bodies`` checks that every top-level field of OpenAI's chat and completions
requests is declared. This checks the values too, nested ones included: each request type
of the official ``openai`` package (TypedDicts generated from OpenAI's OpenAPI document) is
walked, and for every field a set of values is built that uses every member of every union
and every literal at least once (an image part with ``detail: "original"``, an ``audio``
voice given as ``{id}``, a tool message with text parts, …). Each must pass the same check
the routes run (:func:`checked`), so a client written against the current SDK never gets a
400 for a value OpenAI documents. A new ``openai`` release that adds a value fails here.
"""

from __future__ import annotations

import collections.abc as cabc
import types
import typing
from typing import Any, Literal, Union, get_args, get_origin

import pytest
import typing_extensions as te

from qingliang.platform.errors import BadRequest
from qingliang.platform.gateway.http.openai_bodies import (
    IGNORED,
    ChatCompletionBody,
    CompletionBody,
    checked,
    forwarded,
)

openai_types = pytest.importorskip("openai.types")

_WRAPPERS = {te.Required, te.NotRequired, typing.Required, typing.NotRequired, te.Annotated}
_SEQUENCES = {list, cabc.Iterable, cabc.Sequence}


def values(tp: Any, depth: int = 0) -> list[Any]:
    """Values of type ``tp`` that together use every union member and literal once."""
    origin, args = get_origin(tp), get_args(tp)
    if depth > 12:  # no request type nests this deep; a guard against recursive types
        raise AssertionError(f"{tp!r} nests too deep")
    if tp is None or tp is type(None):
        return [None]
    if origin in _WRAPPERS or tp in _WRAPPERS:
        return values(args[0], depth)
    if origin in (Literal, te.Literal):
        return list(args)
    if origin in (Union, types.UnionType):
        return [v for member in args for v in values(member, depth + 1)]
    simple = {str: "x", bool: True, int: 1, float: 0.5, object: "x", Any: "x"}
    if tp in simple:
        return [simple[tp]]
    if origin in (dict, cabc.Mapping):
        return [{"k": v} for v in values(args[1], depth + 1)]
    if origin in _SEQUENCES or getattr(origin, "__name__", "") == "SequenceNotStr":
        return [[v] for v in values(args[0], depth + 1)]
    if te.is_typeddict(tp):
        fields = {
            name: values(hint, depth + 1)
            for name, hint in te.get_type_hints(tp, include_extras=True).items()
        }
        n = max((len(v) for v in fields.values()), default=1)
        return [{name: v[i % len(v)] for name, v in fields.items()} for i in range(n)]
    raise AssertionError(f"no values for {tp!r}: teach values() this type")


def _cases() -> list[Any]:
    from openai.types import completion_create_params as completion
    from openai.types.chat import completion_create_params as chat

    requests = [
        (
            chat.CompletionCreateParamsNonStreaming,
            ChatCompletionBody,
            {"messages": [{"role": "user", "content": "hi"}]},
        ),
        (completion.CompletionCreateParamsNonStreaming, CompletionBody, {"prompt": "x"}),
    ]
    cases = []
    for typed, body, base in requests:
        for name, hint in te.get_type_hints(typed, include_extras=True).items():
            if name == "model":  # any string; ChatModel's literals add nothing
                continue
            for i, value in enumerate(values(hint)):
                case_id = f"{body.__name__}.{name}[{i}]"
                cases.append(pytest.param(body, base, name, value, id=case_id))
    return cases


#: Values OpenAI's types allow that the gateway refuses, and why (each a 400 naming it).
REFUSED = [
    # The SDK types `prompt` as Optional, but a request needs one: vLLM answers "Either
    # prompt or prompt_embeds must be provided", and prompt_embeds is internal here.
    ("CompletionBody", "prompt", None),
]


@pytest.mark.parametrize(("model", "base", "name", "value"), _cases())
def test_every_value_openai_documents_is_taken(
    model: Any, base: dict, name: str, value: Any
) -> None:
    body = {"model": "m", **base, name: value}
    if (model.__name__, name, value) in REFUSED:
        with pytest.raises(BadRequest) as caught:
            checked(body, model)
        assert caught.value.param == name
        return
    checked(body, model)
    sent, ignored = forwarded(body, model)
    assert ignored == sorted(IGNORED[model] & {name})
    assert set(sent) == set(body) - set(ignored)


def test_the_walk_reaches_the_nested_values_it_is_for() -> None:
    """The walk is deep enough to find the values this file was written for."""
    import json

    seen = json.dumps([p.values[3] for p in _cases()])
    for fragment in (
        '"detail": "original"',
        '"voice": {"id": "x"}',
        '"role": "developer"',
        '"type": "input_audio"',
        '"type": "allowed_tools"',
        '"syntax": "lark"',
    ):
        assert fragment in seen, fragment

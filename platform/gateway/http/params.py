"""Checks of a generation request's sampling parameters, before it reaches an engine.

OpenAI's ranges: each bad value is a 400 whose ``param`` names it. ``null`` is "not
set" for every parameter, as in OpenAI's API. Fields not listed here are not looked at
(which unknown fields to refuse is a separate policy).

Example:
    >>> check_generation({"messages": [{"role": "user", "content": "hi"}], "n": 2}, "chat")
    >>> check_generation({"prompt": "hi", "max_tokens": -5}, "completion")
    Traceback (most recent call last):
    ...
    qingliang.platform.errors.BadRequest: `max_tokens` must be a positive integer, got -5
"""

from __future__ import annotations

from typing import Any

from qingliang.platform.errors import BadRequest

#: Roles a chat message may have (OpenAI's, ``developer`` and the legacy ``function``).
ROLES = ("system", "developer", "user", "assistant", "tool", "function")
MAX_STOP = 4
MAX_LOGPROBS = 20
_INT64 = 2**63

_RANGES: dict[str, tuple[float, float, bool]] = {
    # name: (low, high, low excluded)
    "temperature": (0.0, 2.0, False),
    "top_p": (0.0, 1.0, True),
    "presence_penalty": (-2.0, 2.0, False),
    "frequency_penalty": (-2.0, 2.0, False),
}


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _int_in(body: dict, name: str, low: int, high: int, what: str) -> None:
    value = body.get(name)
    if value is None:
        return
    if not _is_int(value) or not low <= value <= high:
        raise BadRequest(f"`{name}` must be {what}, got {value!r}", param=name)


def _messages(value: object) -> None:
    if not isinstance(value, list) or not value:
        raise BadRequest("`messages` must be a non-empty list of messages", param="messages")
    for i, message in enumerate(value):
        where = f"messages[{i}]"
        if not isinstance(message, dict):
            raise BadRequest(f"{where} must be an object with a role", param=where)
        role = message.get("role")
        if role not in ROLES:
            raise BadRequest(
                f"{where}.role {role!r} is not one of {', '.join(ROLES)}", param=f"{where}.role"
            )


def _stop(value: object) -> None:
    if value is None or isinstance(value, str):
        return
    if (
        not isinstance(value, list)
        or len(value) > MAX_STOP
        or not all(isinstance(s, str) for s in value)
    ):
        raise BadRequest(
            f"`stop` must be a string or a list of at most {MAX_STOP} strings", param="stop"
        )


def check_generation(body: dict[str, Any], endpoint: str, *, max_n: int = 16) -> None:
    """Refuse ``body`` (of ``/v1/chat/completions`` when ``endpoint`` is ``"chat"``, else
    ``/v1/completions``) when a sampling parameter is out of OpenAI's range.

    Raises:
        BadRequest: naming the first bad parameter in ``param``.
    """
    if endpoint == "chat":
        _messages(body.get("messages"))
    for name in ("max_tokens", "max_completion_tokens"):
        _int_in(body, name, 1, _INT64 - 1, "a positive integer")
    _int_in(body, "n", 1, max_n, f"an integer from 1 to {max_n}")
    for name, (low, high, open_low) in _RANGES.items():
        value = body.get(name)
        if value is None:
            continue
        number = isinstance(value, int | float) and not isinstance(value, bool)
        # NaN fails every comparison, so it is refused too.
        if not number or not (low < value <= high if open_low else low <= value <= high):
            span = f"({low:g}, {high:g}]" if open_low else f"[{low:g}, {high:g}]"
            raise BadRequest(f"`{name}` must be a number in {span}, got {value!r}", param=name)
    if endpoint == "chat":
        # Chat: `logprobs` says whether, `top_logprobs` how many per token.
        logprobs = body.get("logprobs")
        if logprobs is not None and not isinstance(logprobs, bool):
            raise BadRequest(
                f"`logprobs` must be true or false, got {logprobs!r}", param="logprobs"
            )
        _int_in(body, "top_logprobs", 0, MAX_LOGPROBS, f"an integer from 0 to {MAX_LOGPROBS}")
    else:
        _int_in(body, "logprobs", 0, MAX_LOGPROBS, f"an integer from 0 to {MAX_LOGPROBS}")
    _stop(body.get("stop"))
    _int_in(body, "seed", -_INT64, _INT64 - 1, "a 64-bit integer")

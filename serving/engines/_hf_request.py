"""Requests to the transformers engine: which parameters it honours, checked and parsed.

Example:
    >>> check_keys({"model": "tiny", "prompt": "hi", "logprobs": None}, COMPLETION_KEYS)
    >>> sampling_of({"temperature": 0}, {})["do_sample"]
    False
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from typing import Any, TypeGuard

from qingliang.platform.errors import BadRequest

#: Parameters each endpoint honours. Anything else is refused by name (400).
SAMPLING_KEYS = "max_tokens temperature top_p top_k repetition_penalty seed stop n stream"
CHAT_KEYS = frozenset(
    f"model messages max_completion_tokens stream_options user chat_template_kwargs "
    f"{SAMPLING_KEYS}".split()
)
COMPLETION_KEYS = frozenset(f"model prompt stream_options user {SAMPLING_KEYS}".split())
#: Parameters accepted only at their neutral value (clients often send the default).
NEUTRAL: dict[str, tuple[Any, ...]] = {
    "logprobs": (None, False),
    "top_logprobs": (None, 0),
    "presence_penalty": (None, 0, 0.0),
    "frequency_penalty": (None, 0, 0.0),
    "logit_bias": (None, {}),
    "tools": (None, []),
    "tool_choice": (None, "none"),
    "parallel_tool_calls": (None, True, False),
    "response_format": (None, {"type": "text"}),
    "echo": (None, False),
    "suffix": (None, ""),
    "best_of": (None, 1),
}
#: Default max_tokens for /v1/completions when absent (OpenAI's and vLLM's default).
COMPLETION_DEFAULT_MAX_TOKENS = 16


@dataclass(frozen=True)
class Request:
    """One validated request, ready to generate."""

    kind: str  # "chat" | "completion"
    id: str
    created: int
    model: str
    prompt_ids: list[int]
    max_tokens: int
    sampling: dict[str, Any]
    seed: int | None
    stop: tuple[str, ...]
    stream: bool
    include_usage: bool
    adapter: str | None


def build_request(
    kind: str,
    body: dict,
    ids: list[int],
    adapter: str | None,
    what: str,
    *,
    max_len: int | None,
    model_name: str,
    defaults: dict[str, Any],
) -> Request:
    """One request body checked against the model's context, as a :class:`Request`."""
    n = body.get("n", 1)
    if n not in (None, 1) or isinstance(n, bool):
        raise BadRequest(
            f"n={n!r} is not supported: the transformers engine generates one sequence "
            "per request (n must be 1)",
            param="n",
        )
    key = "max_tokens"
    max_tokens = body.get("max_tokens")
    if body.get("max_completion_tokens") is not None:
        key, max_tokens = "max_completion_tokens", body["max_completion_tokens"]
    if max_tokens is not None and (not is_int(max_tokens) or max_tokens < 1):
        raise BadRequest(f"`{key}` must be an integer >= 1", param=key)
    limit, n_in = max_len or 0, len(ids)
    if n_in >= limit:
        raise BadRequest(
            f"This model's maximum context length is {limit} tokens. However, your "
            f"request has {n_in} input tokens. Please reduce the length of the input "
            f"{'messages' if kind == 'chat' else 'prompt'}.",
            param=what,
        )
    if max_tokens is None:
        max_tokens = limit - n_in if kind == "chat" else COMPLETION_DEFAULT_MAX_TOKENS
        max_tokens = min(max_tokens, limit - n_in)
    elif n_in + max_tokens > limit:
        raise BadRequest(
            f"'{key}' is too large: {max_tokens}. This model's maximum context length is "
            f"{limit} tokens and your request has {n_in} input tokens "
            f"({max_tokens} > {limit} - {n_in}).",
            param=key,
        )
    stop = body.get("stop")
    if isinstance(stop, str):
        stop = [stop]
    if stop is not None and not (isinstance(stop, list) and all(isinstance(s, str) for s in stop)):
        raise BadRequest("`stop` must be a string or a list of strings", param="stop")
    seed = body.get("seed")
    if seed is not None and not is_int(seed):
        raise BadRequest("`seed` must be an integer", param="seed")
    options = body.get("stream_options") or {}
    stream = body.get("stream") or False
    if not isinstance(stream, bool):
        raise BadRequest("`stream` must be a boolean", param="stream")
    if not isinstance(options, dict) or (options and not stream):
        raise BadRequest(
            "`stream_options` is allowed only with stream: true", param="stream_options"
        )
    prefix = "chatcmpl" if kind == "chat" else "cmpl"
    return Request(
        kind=kind,
        id=f"{prefix}-{uuid.uuid4().hex}",
        created=int(time.time()),
        model=str(body.get("model") or model_name),
        prompt_ids=list(ids),
        max_tokens=int(max_tokens),
        sampling=sampling_of(body, defaults),
        seed=seed,
        stop=tuple(s for s in (stop or []) if s),
        stream=stream,
        include_usage=bool(options.get("include_usage")),
        adapter=adapter,
    )


def sampling_of(body: dict, defaults: dict[str, Any]) -> dict[str, Any]:
    """``GenerationConfig`` fields: request values over the model's defaults."""
    p = dict(defaults)
    for key in ("temperature", "top_p", "top_k", "repetition_penalty"):
        if body.get(key) is not None:
            p[key] = body[key]
    temperature, top_p = p.get("temperature", 1.0), p.get("top_p", 1.0)
    top_k, penalty = p.get("top_k", 0), p.get("repetition_penalty", 1.0)
    checks = {
        "temperature": is_num(temperature) and temperature >= 0,
        "top_p": is_num(top_p) and 0 < top_p <= 1,
        "top_k": is_int(top_k) and top_k >= -1,
        "repetition_penalty": is_num(penalty) and penalty > 0,
    }
    for name, ok in checks.items():
        if not ok:
            raise BadRequest(f"`{name}` is out of range: {p.get(name)!r}", param=name)
    if temperature < 1e-5:  # vLLM's greedy threshold
        # HF's neutral values, so the model's sampling defaults are not merged in.
        neutral = {"temperature": 1.0, "top_p": 1.0, "top_k": 50}
        return {"do_sample": False, **neutral, "repetition_penalty": float(penalty)}
    return {
        "do_sample": True,
        "temperature": float(temperature),
        "top_p": float(top_p),
        "top_k": max(int(top_k), 0),  # 0 / -1 (vLLM's "off") disable top-k in HF
        "repetition_penalty": float(penalty),
    }


def check_keys(body: dict, allowed: frozenset[str]) -> None:
    if not isinstance(body, dict):
        raise BadRequest("the request body must be a JSON object")
    for key, value in body.items():
        if key in allowed:
            continue
        if key in NEUTRAL and any(
            value == v and type(value) is type(v) for v in NEUTRAL[key]
        ):  # type check too: logprobs=0 asks for logprobs, it is not False
            continue
        if key in NEUTRAL:
            raise BadRequest(
                f"`{key}` is not supported by the transformers engine (got {value!r})", param=key
            )
        raise BadRequest(f"unknown or unsupported parameter `{key}`", param=key)


def message_of(m: Any) -> dict:
    """A chat message with text content (parts of type "text" are joined)."""
    if not isinstance(m, dict) or not isinstance(m.get("role"), str):
        raise BadRequest("each message must be an object with a `role`", param="messages")
    content = m.get("content")
    if isinstance(content, list):
        texts = []
        for part in content:
            if not (isinstance(part, dict) and part.get("type") == "text"):
                kind = part.get("type") if isinstance(part, dict) else type(part).__name__
                raise BadRequest(
                    f"message content of type {kind!r} is not supported (text only)",
                    param="messages",
                )
            texts.append(str(part.get("text", "")))
        content = "".join(texts)
    elif content is not None and not isinstance(content, str):
        raise BadRequest("message `content` must be a string or a list of parts", param="messages")
    if m.get("tool_calls"):
        raise BadRequest(
            "tool calls are not supported by the transformers engine", param="messages"
        )
    return {**{k: v for k, v in m.items() if k != "content"}, "content": content or ""}


def is_int(v: Any) -> TypeGuard[int]:
    return isinstance(v, int) and not isinstance(v, bool)


def is_num(v: Any) -> TypeGuard[int | float]:
    return isinstance(v, int | float) and not isinstance(v, bool)

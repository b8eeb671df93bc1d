"""The conversation-log rows of an answered generation request: one per choice.

Example:
    >>> rows = conversation_rows(request, "chat", body, trace, answer, arrived)  # doctest: +SKIP
"""

from __future__ import annotations

import time
import uuid
from typing import Any

from fastapi import Request

from qingliang.knowledge.vision import without_pixels
from qingliang.platform.gateway.auth.scopes import tenant_of
from qingliang.platform.storage.conversations import Conversation


def _prompt_messages(body: dict, endpoint: str, index: int) -> list | None:
    """The messages a choice answered: a chat request's ``messages``; for a legacy
    completion, its prompt as one user message (a batch of prompts: the one of choice
    ``index``). None when there is no text to record (token-id prompts)."""
    if endpoint == "chat":
        messages = body.get("messages")
        # An image is logged as its size and hash, never its pixels.
        return without_pixels(messages) if isinstance(messages, list) else []
    prompt = body.get("prompt")
    if isinstance(prompt, list) and prompt and all(isinstance(p, str) for p in prompt):
        n = body.get("n", 1)
        per_prompt = n if isinstance(n, int) and not isinstance(n, bool) and n > 0 else 1
        prompt = prompt[index // per_prompt] if index // per_prompt < len(prompt) else None
    if not isinstance(prompt, str):
        return None
    return [{"role": "user", "content": prompt}]


def conversation_rows(
    request: Request,
    endpoint: str,
    body: dict,
    trace: dict[str, Any],
    answer: dict,
    arrived: float,
) -> list[Conversation]:
    """The conversation-log rows of an answered request: one per choice."""
    principal = getattr(request.state, "principal", None)
    key_name = getattr(principal, "name", None)
    usage = answer.get("usage")
    if not isinstance(usage, dict):
        usage = {}

    def tokens(name: str) -> int | None:
        value = usage.get(name)
        return value if isinstance(value, int) else None

    answer_id = answer.get("id")
    if not isinstance(answer_id, str):
        prefix = "chatcmpl" if endpoint == "chat" else "cmpl"
        answer_id = f"{prefix}-{uuid.uuid4().hex}"
    latency_ms = round((time.time() - arrived) * 1000)
    rows = []
    choices = [c for c in answer.get("choices") or () if isinstance(c, dict)] or [{}]
    for position, choice in enumerate(choices):
        index = choice.get("index", position)
        if not isinstance(index, int) or isinstance(index, bool):
            index = position
        messages = _prompt_messages(body, endpoint, index)
        if messages is None:
            continue
        if endpoint == "chat":
            message = choice.get("message")
            text = message.get("content") if isinstance(message, dict) else None
        else:
            text = choice.get("text")
            # With `echo` the text starts with the prompt: keep only the answer.
            prompt = messages[0]["content"]
            if body.get("echo") is True and isinstance(text, str) and text.startswith(prompt):
                text = text[len(prompt) :]
        finish = choice.get("finish_reason")
        rows.append(
            Conversation(
                id=answer_id,
                created=arrived,
                tenant=tenant_of(principal),
                key_name=key_name if isinstance(key_name, str) else None,
                model=str(body.get("model")),
                deployment=trace["deployment"] or "",
                adapter=trace["adapter"],
                adapter_ref=trace["adapter_ref"],
                messages=messages,
                response=text if isinstance(text, str) else None,
                finish_reason=finish if isinstance(finish, str) else None,
                prompt_tokens=tokens("prompt_tokens"),
                completion_tokens=tokens("completion_tokens"),
                latency_ms=latency_ms,
                choice=index,
                endpoint=endpoint,
            )
        )
    return rows

"""What every tool is: a name, a JSON-schema for its arguments, and ``run``.

The runtime hands the model :meth:`Tool.openai_spec` (OpenAI ``tools`` format, which vLLM
renders with the model's native tool-calling template), validates nothing itself, and
calls :meth:`Tool.run` in a worker thread with the parsed arguments and a
:class:`ToolContext` (a tool with ``is_async = True`` has a coroutine ``run``, awaited on
the run's event loop instead). A tool raises :class:`ToolError` for arguments it cannot use; the
message goes back to the model (and to the event stream) so it can correct itself.

A tool with ``side_effect = True`` changes something outside the run. The runtime journals
its result under ``ctx.idempotency_key`` and never calls it twice for one key; a tool must
also make its effect idempotent under that key (e.g. a UNIQUE column), which covers a crash
between the effect and the journal entry.

Example:
    >>> class Upper:
    ...     name, description, side_effect = "upper", "Upper-case a text.", False
    ...     parameters = {"type": "object", "properties": {"text": {"type": "string"}},
    ...                   "required": ["text"]}
    ...     def run(self, args, ctx):
    ...         return ToolResult(content=args["text"].upper())
    >>> openai_spec(Upper())["function"]["name"]
    'upper'
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from qingliang.platform.errors import QingliangError


class ToolError(QingliangError):
    """A tool could not use its arguments or input; the message is shown to the model."""


@dataclass(frozen=True)
class ToolResult:
    """What a tool returns: ``content`` for the model, ``data`` for the run's state."""

    content: str
    data: Any = None
    citations: list[dict] = field(default_factory=list)


#: ``search(kb, query, *, tenant, limit, mode) -> list of hit dicts``: the ``citations`` of
#: the knowledge API's search answer (flat dicts: text, score, source, page, doc_id, ...).
#: An async function (the knowledge server's handle) or a plain one (an in-process
#: service, run in a worker thread).
KnowledgeSearch = Callable[..., list[dict] | Awaitable[list[dict]]]


@dataclass(frozen=True)
class ToolContext:
    """Everything a tool may use besides its arguments."""

    run_id: str
    tenant: str | None
    #: Files uploaded with the run (``name`` → path); the OCR tool reads from here.
    attachments: dict[str, Path] = field(default_factory=dict)
    #: Deterministic for one call of one node execution: the same after a resume or crash.
    idempotency_key: str = ""
    #: Forms the run has filled so far (form tool name → values).
    forms: dict[str, dict] = field(default_factory=dict)
    knowledge: KnowledgeSearch | None = None


class Tool(Protocol):
    name: str
    description: str
    #: JSON schema of the arguments object.
    parameters: dict[str, Any]
    side_effect: bool

    def run(self, args: dict[str, Any], ctx: ToolContext) -> ToolResult: ...


def openai_spec(tool: Tool) -> dict[str, Any]:
    """``tool`` in the OpenAI ``tools`` list format."""
    return {
        "type": "function",
        "function": {
            "name": tool.name,
            "description": tool.description,
            "parameters": tool.parameters,
        },
    }

"""The ``knowledge_search`` tool: the model searches one knowledge base and cites the hits.

The search itself is ``ctx.knowledge`` (see :data:`~.base.KnowledgeSearch`): in a
deployment the knowledge server's async ``search`` (awaited on the run's event loop), in
one process a plain function such as
:meth:`KnowledgeService.search <qingliang.knowledge.service.KnowledgeService.search>`
(run in a worker thread): :func:`search_knowledge` calls either.
Either answer is accepted: the service's ``{"kb", "version", "mode", "citations": [...]}``
or the list of citation dicts alone, each shaped like
:meth:`Citation.to_dict <qingliang.knowledge.retrieval.Citation.to_dict>` (``text``,
``score``, ``source``, ``page``, ``locator``, ...). The caller's tenant always applies.

The model reads numbered passages (``[1] text (source: guide.pdf, p. 3)``), trimmed so a
few long chunks cannot fill its context; the run's citations get every hit in full, with
the knowledge base's name added. A hit with a ``context`` (a knowledge base with
``spec.retrieval.context.neighbours``: the cited chunk with its neighbours) is read as that
context (:func:`passage_text`), while its citation still shows the chunk that matched.

Example:
    >>> from qingliang.agents.tools.specs import KnowledgeTool
    >>> from qingliang.agents.tools.base import ToolContext
    >>> def search(kb, query, *, tenant, limit, mode):
    ...     return [{"text": "Clinics open at 8:00.", "score": 0.9, "source": "hours.md",
    ...              "page": None, "locator": "#0"}]
    >>> tool = KnowledgeSearchTool(KnowledgeTool(kind="knowledge_search", name="policy",
    ...                                          knowledge="gov-policy"))
    >>> result = asyncio.run(tool.run({"query": "opening hours"},
    ...                   ToolContext(run_id="r1", tenant="city-a", knowledge=search)))
    >>> print(result.content)
    [1] Clinics open at 8:00. (source: hours.md, #0)
    >>> result.citations[0]["kb"]
    'gov-policy'
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from typing import Any

from qingliang.agents.tools.base import KnowledgeSearch, ToolContext, ToolError, ToolResult
from qingliang.agents.tools.specs import KnowledgeTool
from qingliang.platform.errors import ApiError, NotFound

log = logging.getLogger(__name__)

#: Characters of one passage the model reads (the citation keeps the whole text).
PASSAGE_CHARS = 700
#: Characters of all passages together.
CONTENT_CHARS = 4000
MAX_QUERY_CHARS = 4000
#: How much longer than a chunk's a passage from a hit's ``context`` may be.
CONTEXT_FACTOR = 2

DEFAULT_DESCRIPTION = (
    "Search the knowledge base {kb!r} for passages relevant to a question. Returns numbered "
    "passages with their sources; cite them by number."
)


async def search_knowledge(
    knowledge: KnowledgeSearch, kb: str, query: str, *, tenant: str | None, limit: int, mode: str
) -> Any:
    """The answer of ``knowledge`` for ``query`` in ``kb``, for ``tenant``.

    An async ``knowledge`` (the knowledge server's handle) is awaited here, on the event
    loop; a plain function (an in-process service, a test's fake) runs in a worker thread
    so it cannot hold the loop.
    """
    if inspect.iscoroutinefunction(knowledge):
        return await knowledge(kb, query, tenant=tenant, limit=limit, mode=mode)
    answer = await asyncio.to_thread(knowledge, kb, query, tenant=tenant, limit=limit, mode=mode)
    if inspect.isawaitable(answer):
        answer = await answer
    return answer


class KnowledgeSearchTool:
    """Searches ``config.knowledge`` with the model's query, for the run's tenant.

    Args:
        config: The manifest's ``knowledge_search`` tool.

    Example:
        >>> from qingliang.agents.tools.specs import KnowledgeTool
        >>> tool = KnowledgeSearchTool(KnowledgeTool(kind="knowledge_search", name="kb",
        ...                                          knowledge="gov-policy", limit=3))
        >>> tool.parameters["properties"]["limit"]["maximum"], tool.side_effect
        (3, False)
    """

    side_effect = False
    #: :meth:`run` is a coroutine: the runtime awaits it on the run's event loop.
    is_async = True

    def __init__(self, config: KnowledgeTool) -> None:
        self.config = config
        self.name = config.name
        self.description = config.description or DEFAULT_DESCRIPTION.format(kb=config.knowledge)
        self.parameters: dict[str, Any] = {
            "type": "object",
            "properties": {
                "query": {"type": "string", "description": "What to search for."},
                "limit": {
                    "type": "integer",
                    "minimum": 1,
                    "maximum": config.limit,
                    "description": f"How many passages (default {config.limit}).",
                },
            },
            "required": ["query"],
            "additionalProperties": False,
        }

    async def run(self, args: dict[str, Any], ctx: ToolContext) -> ToolResult:
        """Search and return the numbered passages and their citations.

        Raises:
            ToolError: no knowledge service in this run, a blank or over-long query, a
                bad ``limit``, an unknown knowledge base, or a search the service refused.
        """
        kb = self.config.knowledge
        if ctx.knowledge is None:
            raise ToolError(
                f"knowledge search is not available in this run (knowledge base {kb!r})"
            )
        unknown = sorted(set(args) - {"query", "limit"})
        if unknown:
            raise ToolError(f"unknown argument(s) {', '.join(unknown)}; accepted: query, limit")
        query = args.get("query")
        if not isinstance(query, str) or not query.strip():
            raise ToolError("`query` must be a non-empty string: what to search for")
        if len(query) > MAX_QUERY_CHARS:
            raise ToolError(f"`query` has {len(query)} characters, at most {MAX_QUERY_CHARS}")
        limit = args.get("limit", self.config.limit)
        if isinstance(limit, float) and limit.is_integer():
            limit = int(limit)
        if (
            isinstance(limit, bool)
            or not isinstance(limit, int)
            or not 1 <= limit <= self.config.limit
        ):
            raise ToolError(f"`limit` must be an integer in 1..{self.config.limit}, got {limit!r}")
        try:
            answer = await search_knowledge(
                ctx.knowledge,
                kb,
                query.strip(),
                tenant=ctx.tenant,
                limit=limit,
                mode=self.config.mode,
            )
        except NotFound as exc:
            raise ToolError(f"knowledge base {kb!r} is not available: {exc}") from exc
        except ApiError as exc:
            raise ToolError(f"searching knowledge base {kb!r} failed: {exc}") from exc
        hits = _hits(answer)
        log.debug("knowledge_search %s run=%s: %d hits", kb, ctx.run_id, len(hits))
        citations = [{**hit, "kb": kb, "score": float(hit.get("score", 0.0))} for hit in hits]
        return ToolResult(content=render(hits, kb), data={"kb": kb}, citations=citations)


def _hits(answer: Any) -> list[dict[str, Any]]:
    if isinstance(answer, dict):
        answer = answer.get("citations", [])
    if not isinstance(answer, list) or not all(isinstance(h, dict) for h in answer):
        raise ToolError(f"the knowledge search returned {type(answer).__name__}, not hits")
    return answer


def passage_text(hit: dict[str, Any], limit: int) -> str:
    """What the model reads of a hit: its ``context`` when it has one (at most
    ``CONTEXT_FACTOR * limit`` characters, a window kept around the cited ``text``), else
    its ``text`` (at most ``limit``); whitespace runs folded, a cut marked with ``…``.

    Example:
        >>> passage_text({"text": "b", "context": "a\\n b  c"}, 10)
        'a b c'
        >>> passage_text({"text": "0123456789"}, 5)
        '0123…'
    """
    text = " ".join(str(hit.get("text") or "").split())
    context = " ".join(str(hit.get("context") or "").split())
    if not context:
        return text if len(text) <= limit else text[: limit - 1].rstrip() + "…"
    limit *= CONTEXT_FACTOR
    if len(context) <= limit:
        return context
    at = max(context.find(text), 0)
    start = min(max(at - (limit - len(text)) // 2, 0), len(context) - limit)
    window = context[start : start + limit]
    return ("…" if start else "") + window + ("…" if start + limit < len(context) else "")


def render(hits: list[dict[str, Any]], kb: str) -> str:
    """Numbered passages for the model: ``[n] text (source: where, locator)``, trimmed."""
    if not hits:
        return f"No passages in knowledge base {kb!r} match the query."
    parts: list[str] = []
    used = 0
    for n, hit in enumerate(hits, 1):
        text = passage_text(hit, PASSAGE_CHARS)
        where = [str(hit.get("source") or "unknown source")]
        locator = hit.get("locator") or (f"p. {hit['page']}" if hit.get("page") else None)
        if locator:
            where.append(str(locator))
        line = f"[{n}] {text} (source: {', '.join(where)})"
        if parts and used + len(line) > CONTENT_CHARS:
            parts.append(f"({len(hits) - n + 1} more passages left out for length)")
            break
        parts.append(line)
        used += len(line) + 1
    return "\n".join(parts)

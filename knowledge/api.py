"""The knowledge area's public API: what the gateway, the CLI and the agents call.

Every knowledge-base operation reaches :class:`~qingliang.knowledge.service.KnowledgeService`
through one table and one dispatcher:

- :data:`METHODS`: the method names a backend may be asked for, with the keyword
  arguments each takes;
- :func:`dispatch`: the one place where a method name becomes a service call;
- :class:`KnowledgeClient`: what a caller holds, in production the Ray Serve handle to
  the knowledge server (:class:`~qingliang.knowledge.deployment.HandleKnowledge`), in
  tests and one-process setups :class:`LocalKnowledge`. Both are async: ``await
  client.search(kb, query, tenant=...)`` returns the citations, with no thread between
  the caller's event loop and the call;
- the request bodies of ``/v1/knowledge`` (:class:`SearchBody`, :class:`SyncBody`, …), as
  pydantic models the gateway checks requests against and documents in ``/openapi.json``.
  They refuse unknown fields and take JSON types as sent; the values (ranges, modes,
  dates) are the service's to check.

Example:
    >>> import asyncio
    >>> class Service:
    ...     def names(self, tenant):
    ...         return ["gov-policy"]
    >>> asyncio.run(LocalKnowledge(Service()).call("names", None, None, "api", {}))
    {'data': [{'id': 'gov-policy', 'object': 'knowledge_base'}]}
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Protocol

from pydantic import BaseModel, ConfigDict, Field

from qingliang.platform.bodies import Body, docs_only
from qingliang.platform.errors import BadRequest

logger = logging.getLogger(__name__)


# ---------------------------------------------------------------------- request bodies


class SearchBody(Body):
    """``POST /v1/knowledge/{kb}/search``: cited chunks of one knowledge base."""

    query: str | None = Field(
        None,
        description="What to search for: 1-4000 characters, not only whitespace. Required "
        "unless `image` is given.",
        json_schema_extra=docs_only(minLength=1, maxLength=4000),
    )
    image: str | None = Field(
        None,
        description="Search with a picture: a data URL (data:image/png;base64,...) or a "
        "file:// reference in a folder the administrator allowed (QINGLIANG_IMAGE_DIRS). "
        "The text OCR reads in it joins `query`; with kinds [image], its own vector finds "
        "the KB's similar images. The answer's `image_query` says which.",
    )
    limit: int = Field(
        5, description="How many citations.", json_schema_extra=docs_only(minimum=1, maximum=100)
    )
    mode: str | None = Field(
        None,
        description="dense, or hybrid (dense + BM25); the default is hybrid where the KB has BM25.",
        json_schema_extra=docs_only(enum=["dense", "hybrid", None]),
    )
    mmr: float | None = Field(
        None,
        description="Diversity re-ranking: MMR's lambda from 0 (diverse) to 1 (relevant).",
        json_schema_extra=docs_only(minimum=0, maximum=1),
    )
    domain: str | list[str] | None = Field(None, description="A domain, or any of several.")
    kinds: str | list[str] | None = Field(
        None,
        description="Chunk kinds to keep: text, table-row, table-summary, image-ocr; or "
        "[image] alone to search the KB's images.",
    )
    since: str | None = Field(None, description="Only chunks synced on or after (ISO 8601).")
    until: str | None = Field(None, description="Only chunks synced on or before (ISO 8601).")
    context: int | None = Field(
        None,
        description="Neighbouring chunks on each side that join each hit in its `context` "
        "(the cited `text` stays the chunk that matched). Default: the KB's "
        "spec.retrieval.context.neighbours; 0 leaves `context` out.",
        json_schema_extra=docs_only(minimum=0, maximum=3),
    )


class SyncBody(Body):
    """``POST /v1/knowledge/{kb}/sync``: ingest what changed in the KB's sources."""

    rebuild: bool = Field(False, description="Re-embed every document, changed or not.")


class SnapshotBody(Body):
    """``POST /v1/knowledge/{kb}/snapshots``: save the current version."""

    note: str = Field(
        "", description="Why, for the snapshot list.", json_schema_extra=docs_only(maxLength=500)
    )


class RollbackBody(Body):
    """``POST /v1/knowledge/{kb}/rollback``: restore a saved version."""

    version: int = Field(description="The snapshot's version.")


class Provenance(BaseModel):
    """Where a learned answer came from; other keys are kept with it."""

    model_config = ConfigDict(extra="allow", strict=True)
    source: str = Field(description="feedback, review, api, …")
    by: str | None = Field(None, description="Who; by default the key that adds it.")


class AnswerBody(Body):
    """``POST /v1/knowledge/{kb}/answers``: a question/answer pair, searchable at once."""

    question: str = Field(description="The question as users ask it.")
    answer: str = Field(description="The approved answer.")
    provenance: Provenance


class RetractBody(Body):
    """``POST /v1/knowledge/{kb}/answers/{answer_id}/retract``: take an answer out."""

    reason: str = Field(
        description="Why it is retracted.", json_schema_extra=docs_only(minLength=1)
    )


class UploadForm(Body):
    """``POST /v1/knowledge/{kb}/documents`` (multipart/form-data): one document."""

    file: bytes = Field(
        description="The document (PDF, DOCX, XLSX, Markdown, text, an image); its name is "
        "cut to its last part."
    )


#: The knowledge bodies, for the gateway's OpenAPI document.
BODIES: tuple[type[BaseModel], ...] = (
    SearchBody,
    SyncBody,
    SnapshotBody,
    RollbackBody,
    AnswerBody,
    RetractBody,
    UploadForm,
)


# ---------------------------------------------------------------------------- methods

#: Methods a backend may be asked for, with the keyword arguments each takes (the
#: request bodies are checked by the gateway against the models above).
METHODS: dict[str, frozenset[str]] = {
    "names": frozenset(),
    "stats": frozenset(),
    "search": frozenset(SearchBody.model_fields),
    "documents": frozenset(),
    "upload": frozenset({"filename", "data"}),
    "delete_document": frozenset({"doc"}),
    "sync": frozenset(SyncBody.model_fields),
    "remove": frozenset(),
    "snapshots": frozenset(),
    "history": frozenset({"limit"}),
    "snapshot": frozenset(SnapshotBody.model_fields),
    "rollback": frozenset(RollbackBody.model_fields),
    "answers": frozenset({"status"}),
    "add_answer": frozenset(AnswerBody.model_fields),
    "retract_answer": frozenset({"answer_id", *RetractBody.model_fields}),
}


class KnowledgeBackend(Protocol):
    """What the gateway's routes call: one method of :data:`METHODS`."""

    async def call(
        self, method: str, kb: str | None, tenant: str | None, actor: str, kwargs: dict
    ) -> Any: ...


class KnowledgeClient(KnowledgeBackend, Protocol):
    """A backend that also searches directly, as the agents' knowledge tool does."""

    async def search(
        self, kb: str, query: str, *, tenant: str | None, limit: int = 4, mode: str = "hybrid"
    ) -> list[dict]: ...


class Searches:
    """:meth:`search` over a backend's ``call`` (a base of the two clients)."""

    async def call(
        self, method: str, kb: str | None, tenant: str | None, actor: str, kwargs: dict
    ) -> Any:
        raise NotImplementedError

    async def search(
        self, kb: str, query: str, *, tenant: str | None, limit: int = 4, mode: str = "hybrid"
    ) -> list[dict]:
        """The citations for ``query`` in ``kb`` (searched as the actor ``agents``)."""
        result = await self.call(
            "search", kb, tenant, "agents", {"query": query, "limit": limit, "mode": mode}
        )
        return list(result["citations"])


def dispatch(
    service: Any, method: str, kb: str | None, tenant: str | None, actor: str, kwargs: dict
) -> Any:
    """Run ``method`` on a KnowledgeService and return a JSON-ready result."""
    if method not in METHODS:
        raise BadRequest(f"unknown knowledge method {method!r}")
    if method == "names":
        return {"data": [{"id": n, "object": "knowledge_base"} for n in service.names(tenant)]}
    assert kb is not None
    if method == "stats":
        return service.stats(kb, tenant=tenant)
    if method == "search":
        return service.search(kb, kwargs.pop("query", None), tenant=tenant, **kwargs)
    if method == "documents":
        return {"data": service.documents(kb, tenant=tenant)}
    if method == "remove":  # the gateway lets only admin keys ask (platform-wide)
        service.remove(kb, actor=actor)
        return {"id": kb, "object": "knowledge_base", "deleted": True}
    if method == "upload":
        out = service.upload(kb, kwargs["filename"], kwargs["data"], tenant=tenant, actor=actor)
        return out.to_dict()
    if method == "delete_document":
        return service.delete_document(kb, kwargs["doc"], tenant=tenant, actor=actor).to_dict()
    if method == "sync":
        rebuild = kwargs.get("rebuild", False)
        if not isinstance(rebuild, bool):
            raise BadRequest("rebuild must be true or false", param="rebuild")
        return service.sync(kb, tenant=tenant, actor=actor, rebuild=rebuild).to_dict()
    if method == "snapshots":
        return {"data": [s.to_dict() for s in service.snapshots(kb, tenant=tenant)]}
    if method == "history":
        limit = kwargs.get("limit", 100)
        if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= 1000:
            raise BadRequest(f"limit must be a whole number from 1 to 1000, got {limit!r}",
                             param="limit")  # fmt: skip
        return {"data": service.history(kb, tenant=tenant, limit=limit)}
    if method == "snapshot":
        note = kwargs.get("note", "")
        if not isinstance(note, str) or len(note) > 500:
            raise BadRequest("note must be a string of at most 500 characters", param="note")
        return service.snapshot(kb, note=note, tenant=tenant, actor=actor).to_dict()
    if method == "rollback":
        return service.rollback(kb, kwargs.get("version"), tenant=tenant, actor=actor)
    if method == "answers":
        recs = service.answers(kb, tenant=tenant, status=kwargs.get("status", "active"))
        return {"data": [r.to_dict() for r in recs]}
    if method == "add_answer":
        rec = service.add_answer(
            kb,
            kwargs.get("question"),
            kwargs.get("answer"),
            provenance=kwargs.get("provenance"),
            tenant=tenant,
            actor=actor,
        )
        return rec.to_dict()
    rec = service.retract_answer(
        kb, kwargs["answer_id"], reason=kwargs.get("reason"), tenant=tenant, actor=actor
    )
    return rec.to_dict()


class LocalKnowledge(Searches):
    """A backend over an in-process KnowledgeService (tests, and one-process setups).

    The service's work (parsing, embedding, the index) runs in a worker thread, so the
    caller's event loop keeps serving while it does.
    """

    def __init__(self, service: Any) -> None:
        self.service = service

    async def call(
        self, method: str, kb: str | None, tenant: str | None, actor: str, kwargs: dict
    ) -> Any:
        return await asyncio.to_thread(dispatch, self.service, method, kb, tenant, actor, kwargs)

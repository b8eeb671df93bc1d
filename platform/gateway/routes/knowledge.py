"""Knowledge-base routes of the gateway (``/v1/knowledge/...``) and their dispatcher.

Routes (every one scoped to the caller's tenant — see :func:`tenant_of`)::

    GET    /v1/knowledge                          the KBs the caller can see
    GET    /v1/knowledge/{kb}                     stats: version, counts, snapshots, last sync
    POST   /v1/knowledge/{kb}/search              {"query", "limit", "mode", "mmr", "domain",
                                                   "kinds", "since", "until"} → cited hits
    GET    /v1/knowledge/{kb}/documents           stored documents
    POST   /v1/knowledge/{kb}/documents           multipart upload (field ``file``)
    DELETE /v1/knowledge/{kb}/documents/{doc}     an uploaded document (doc_id or file name)
    POST   /v1/knowledge/{kb}/sync                {"rebuild": false} → what changed
    GET    /v1/knowledge/{kb}/snapshots           saved versions
    POST   /v1/knowledge/{kb}/snapshots           {"note"} → save the current version
    POST   /v1/knowledge/{kb}/rollback            {"version"} → restore a snapshot
    GET    /v1/knowledge/{kb}/answers?status=     learned answers
    POST   /v1/knowledge/{kb}/answers             {"question", "answer", "provenance"}
    POST   /v1/knowledge/{kb}/answers/{id}/retract {"reason"}

Each body is a model of :mod:`.bodies` (``SearchBody``, ``SyncBody``, …): documented in
``/openapi.json``, unknown fields refused with a "did you mean" hint, JSON types checked;
the values (ranges, modes, dates) are the service's to check.

The routes only parse and check requests; the work is a :class:`KnowledgeBackend` call
(in production a Ray Serve handle to the knowledge server that owns the embedded shards;
in tests :class:`LocalKnowledge` over a :class:`~qingliang.knowledge.service.KnowledgeService`).
:func:`dispatch` is the one place where a method name becomes a service call, for both.

**Tenancy**: a key with the scope ``tenant:<name>`` acts for that tenant only, an ``admin``
key (the operator's key ``qingliang up`` writes) or ``--no-auth`` for all, any other key for
the tenant ``default``. Which key may call which route: :mod:`.scopes`.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Protocol

from fastapi import FastAPI, Request
from pydantic import BaseModel

from qingliang.platform.errors import ApiError, BadRequest
from qingliang.platform.gateway.bodies import (
    AnswerBody,
    RetractBody,
    RollbackBody,
    SearchBody,
    SnapshotBody,
    SyncBody,
    UploadForm,
    request_body,
    validated,
)
from qingliang.platform.gateway.limits import BodyTooLarge, parse_json_body, size_text
from qingliang.platform.settings import GatewayLimits

logger = logging.getLogger(__name__)

TENANT_SCOPE = "tenant:"

#: Methods a backend may be asked for, with the keyword arguments each takes (the
#: request bodies are checked by the routes against the models of :mod:`.bodies`).
METHODS: dict[str, frozenset[str]] = {
    "names": frozenset(),
    "stats": frozenset(),
    "search": frozenset(SearchBody.model_fields),
    "documents": frozenset(),
    "upload": frozenset({"filename", "data"}),
    "delete_document": frozenset({"doc"}),
    "sync": frozenset(SyncBody.model_fields),
    "snapshots": frozenset(),
    "snapshot": frozenset(SnapshotBody.model_fields),
    "rollback": frozenset(RollbackBody.model_fields),
    "answers": frozenset({"status"}),
    "add_answer": frozenset(AnswerBody.model_fields),
    "retract_answer": frozenset({"answer_id", *RetractBody.model_fields}),
}


class KnowledgeBackend(Protocol):
    async def call(
        self, method: str, kb: str | None, tenant: str | None, actor: str, kwargs: dict
    ) -> Any: ...


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


class LocalKnowledge:
    """A backend over an in-process KnowledgeService (tests, and one-process setups)."""

    def __init__(self, service: Any) -> None:
        self.service = service

    async def call(
        self, method: str, kb: str | None, tenant: str | None, actor: str, kwargs: dict
    ) -> Any:
        return await asyncio.to_thread(dispatch, self.service, method, kb, tenant, actor, kwargs)


def tenant_of(principal: Any) -> str | None:
    """The tenant a caller acts for, or None for all (see :func:`.scopes.tenant_of`)."""
    from qingliang.platform.gateway.scopes import tenant_of as of

    return of(principal)


def _actor(principal: Any) -> str:
    name = getattr(principal, "name", None)
    return f"key:{name}" if name else "api"


async def read_json_object(request: Request) -> dict:
    """The request's JSON object body (an empty body is ``{}``); 400 otherwise, also for
    one nested too deeply (see :func:`.limits.parse_json_body`)."""
    return parse_json_body(await request.body(), allow_empty=True)


async def _body(request: Request, model: type[BaseModel]) -> dict:
    """The request's JSON object, checked against ``model`` (400 naming the field); the
    object as sent goes on, so the service sees what the client wrote."""
    body = await read_json_object(request)
    validated(model, body)
    return body


def add_knowledge_routes(
    app: FastAPI, knowledge: KnowledgeBackend | None, limits: GatewayLimits | None = None
) -> None:
    """Mount the ``/v1/knowledge`` routes on ``app`` (501 for each when ``knowledge`` is None).

    An upload's file may have at most ``limits.max_upload_bytes`` (the body as a whole is
    bounded by :class:`.limits.BodyLimitMiddleware` while it is parsed)."""
    max_upload = (limits or GatewayLimits()).max_upload_bytes

    async def run(request: Request, method: str, kb: str | None, kwargs: dict) -> Any:
        if knowledge is None:
            err = ApiError("knowledge bases are not enabled on this gateway")
            err.status_code = 501
            raise err
        principal = getattr(request.state, "principal", None)
        return await knowledge.call(method, kb, tenant_of(principal), _actor(principal), kwargs)

    @app.get("/v1/knowledge")
    async def list_kbs(request: Request) -> Any:
        return await run(request, "names", None, {})

    @app.get("/v1/knowledge/{kb}")
    async def stats(request: Request, kb: str) -> Any:
        return await run(request, "stats", kb, {})

    @app.post("/v1/knowledge/{kb}/search", openapi_extra=request_body(SearchBody))
    async def search(request: Request, kb: str) -> Any:
        return await run(request, "search", kb, await _body(request, SearchBody))

    @app.get("/v1/knowledge/{kb}/documents")
    async def documents(request: Request, kb: str) -> Any:
        return await run(request, "documents", kb, {})

    @app.post(
        "/v1/knowledge/{kb}/documents",
        openapi_extra=request_body(UploadForm, media_type="multipart/form-data"),
    )
    async def upload(request: Request, kb: str) -> Any:
        ctype = request.headers.get("content-type", "")
        if not ctype.startswith("multipart/form-data"):
            raise BadRequest(
                "upload a file as multipart/form-data in the field `file` "
                "(curl -F file=@policy.pdf ...)",
                param="file",
            )
        # Parsing spools the file to disk as it arrives, counted by BodyLimitMiddleware;
        # the form's temporary files are removed on leaving the block.
        async with request.form() as form:
            item = form.get("file")
            if item is None or isinstance(item, str):
                raise BadRequest("the multipart form has no file in the field `file`", param="file")
            if item.size is not None and item.size > max_upload:
                raise BodyTooLarge(
                    f"POST {request.url.path}: the file is {item.size} bytes and the upload "
                    f"limit is {size_text(max_upload)} (QINGLIANG_MAX_UPLOAD_BYTES)",
                    param="file",
                )
            data = await item.read()
            filename = item.filename or ""
        return await run(request, "upload", kb, {"filename": filename, "data": data})

    @app.delete("/v1/knowledge/{kb}/documents/{doc:path}")
    async def delete_document(request: Request, kb: str, doc: str) -> Any:
        return await run(request, "delete_document", kb, {"doc": doc})

    @app.post("/v1/knowledge/{kb}/sync", openapi_extra=request_body(SyncBody, required=False))
    async def sync(request: Request, kb: str) -> Any:
        return await run(request, "sync", kb, await _body(request, SyncBody))

    @app.get("/v1/knowledge/{kb}/snapshots")
    async def snapshots(request: Request, kb: str) -> Any:
        return await run(request, "snapshots", kb, {})

    @app.post(
        "/v1/knowledge/{kb}/snapshots", openapi_extra=request_body(SnapshotBody, required=False)
    )
    async def snapshot(request: Request, kb: str) -> Any:
        return await run(request, "snapshot", kb, await _body(request, SnapshotBody))

    @app.post("/v1/knowledge/{kb}/rollback", openapi_extra=request_body(RollbackBody))
    async def rollback(request: Request, kb: str) -> Any:
        return await run(request, "rollback", kb, await _body(request, RollbackBody))

    @app.get("/v1/knowledge/{kb}/answers")
    async def answers(request: Request, kb: str, status: str = "active") -> Any:
        return await run(request, "answers", kb, {"status": None if status == "all" else status})

    @app.post("/v1/knowledge/{kb}/answers", openapi_extra=request_body(AnswerBody))
    async def add_answer(request: Request, kb: str) -> Any:
        return await run(request, "add_answer", kb, await _body(request, AnswerBody))

    @app.post(
        "/v1/knowledge/{kb}/answers/{answer_id}/retract", openapi_extra=request_body(RetractBody)
    )
    async def retract(request: Request, kb: str, answer_id: str) -> Any:
        body = await _body(request, RetractBody)
        return await run(
            request, "retract_answer", kb, {"answer_id": answer_id, "reason": body.get("reason")}
        )

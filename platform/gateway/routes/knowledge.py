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
    GET    /v1/knowledge/{kb}/history?limit=      changes, newest first (with failed files)
    POST   /v1/knowledge/{kb}/snapshots           {"note"} → save the current version
    POST   /v1/knowledge/{kb}/rollback            {"version"} → restore a snapshot
    GET    /v1/knowledge/{kb}/answers?status=     learned answers
    POST   /v1/knowledge/{kb}/answers             {"question", "answer", "provenance"}
    POST   /v1/knowledge/{kb}/answers/{id}/retract {"reason"}

Each body is a model of :mod:`qingliang.knowledge.api` (``SearchBody``, ``SyncBody``, …):
documented in ``/openapi.json``, unknown fields refused with a "did you mean" hint, JSON
types checked; the values (ranges, modes, dates) are the service's to check.

The routes only parse and check requests; the work is a
:class:`~qingliang.knowledge.api.KnowledgeBackend` call (in production
:class:`~qingliang.knowledge.deployment.HandleKnowledge`, a Ray Serve handle to the
knowledge server that owns the embedded shards; in tests
:class:`~qingliang.knowledge.api.LocalKnowledge` over a
:class:`~qingliang.knowledge.service.KnowledgeService`). The knowledge area's
:func:`~qingliang.knowledge.api.dispatch` turns a method name into a service call.

**Tenancy**: a key with the scope ``tenant:<name>`` acts for that tenant only, an ``admin``
key (the operator's key ``qingliang up`` writes) or ``--no-auth`` for all, any other key for
the tenant ``default``. Which key may call which route: :mod:`.scopes`.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from pydantic import BaseModel

from qingliang.knowledge.api import (
    AnswerBody,
    KnowledgeBackend,
    RetractBody,
    RollbackBody,
    SearchBody,
    SnapshotBody,
    SyncBody,
    UploadForm,
)
from qingliang.platform.errors import ApiError, BadRequest
from qingliang.platform.gateway.http.bodies import request_body, validated
from qingliang.platform.gateway.http.limits import BodyTooLarge, parse_json_body, size_text
from qingliang.platform.settings import GatewayLimits

logger = logging.getLogger(__name__)

TENANT_SCOPE = "tenant:"

__all__ = ["KnowledgeBackend", "add_knowledge_routes", "read_json_object", "tenant_of"]


def tenant_of(principal: Any) -> str | None:
    """The tenant a caller acts for, or None for all (see :func:`.scopes.tenant_of`)."""
    from qingliang.platform.gateway.auth.scopes import tenant_of as of

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


async def _uploaded_file(request: Request, max_upload: int) -> tuple[str, bytes]:
    """The name and bytes of the multipart form's field ``file`` (400 without one, 413
    over ``max_upload`` bytes)."""
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
        return item.filename or "", await item.read()


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

    @app.delete("/v1/knowledge/{kb}")
    async def remove(request: Request, kb: str) -> Any:
        return await run(request, "remove", kb, {})

    @app.get("/v1/knowledge/{kb}/documents")
    async def documents(request: Request, kb: str) -> Any:
        return await run(request, "documents", kb, {})

    @app.post(
        "/v1/knowledge/{kb}/documents",
        openapi_extra=request_body(UploadForm, media_type="multipart/form-data"),
    )
    async def upload(request: Request, kb: str) -> Any:
        filename, data = await _uploaded_file(request, max_upload)
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

    @app.get("/v1/knowledge/{kb}/history")
    async def history(request: Request, kb: str, limit: str = "100") -> Any:
        try:
            count = int(limit)
        except ValueError:
            raise BadRequest(
                f"limit must be a whole number from 1 to 1000, got {limit!r}", param="limit"
            ) from None
        return await run(request, "history", kb, {"limit": count})

    @app.post(
        "/v1/knowledge/{kb}/snapshots", openapi_extra=request_body(SnapshotBody, required=False)
    )
    async def snapshot(request: Request, kb: str) -> Any:
        return await run(request, "snapshot", kb, await _body(request, SnapshotBody))

    @app.post("/v1/knowledge/{kb}/rollback", openapi_extra=request_body(RollbackBody))
    async def rollback(request: Request, kb: str) -> Any:
        return await run(request, "rollback", kb, await _body(request, RollbackBody))

    _add_answer_routes(app, run)


def _add_answer_routes(app: FastAPI, run: Any) -> None:
    """The learned-answer routes of ``/v1/knowledge/{kb}`` (``run``: the knowledge call)."""

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

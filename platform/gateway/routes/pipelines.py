"""Pipeline routes of the gateway (``/v1/pipelines/...``): start, watch, approve.

Routes (keys with ``deploy``, or ``approve`` to read and approve, never bound to a tenant:
a pipeline changes what every tenant is served; see :mod:`.scopes`)::

    GET  /v1/pipelines?pipeline=&limit=     runs, newest first
    POST /v1/pipelines                      {"manifest": {Pipeline}, "base_dir": "/abs/dir"}
                                            → 202, the run (driven in the background)
    GET  /v1/pipelines/{run}                the run: status, step, waiting, outputs
    GET  /v1/pipelines/{run}/events?after=  its event log after sequence number ``after``
    POST /v1/pipelines/{run}/approve        {"approve": true|false, "reason": "..."} → 202
    POST /v1/pipelines/{run}/resume         continue an interrupted or failed run → 202
    POST /v1/pipelines/{run}/cancel         {"reason": "..."} end a waiting, interrupted or
                                            failed run (a live canary is rolled back) → 200

Bodies are models of :mod:`.bodies` (``PipelineStartBody``, ``PipelineApproveBody``,
``PipelineCancelBody``): documented in ``/openapi.json``, unknown fields refused with a
"did you mean" hint; the manifest is checked as ``qingliang validate`` checks one.

Runs are driven in a background thread of the gateway replica, with each step a Ray
task; a replica that dies leaves its runs ``interrupted`` and ``resume`` (here or
``qingliang pipelines resume``) continues them from their last finished step.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse

from qingliang.platform.errors import ApiError, BadRequest, Conflict, ManifestError, QingliangError
from qingliang.platform.gateway.http.bodies import (
    PipelineApproveBody,
    PipelineCancelBody,
    PipelineStartBody,
    request_body,
    validated,
)
from qingliang.platform.gateway.routes.knowledge import _actor, read_json_object

logger = logging.getLogger(__name__)


def _background(fn: Any, *args: Any, **kwargs: Any) -> None:
    def work() -> None:
        try:
            fn(*args, **kwargs)
        except QingliangError as exc:  # recorded in the run where it matters
            logger.warning("pipeline driver: %s", exc)
        except Exception:
            logger.exception("pipeline driver crashed")

    threading.Thread(target=work, name="qingliang-pipeline", daemon=True).start()


def _operator(service: Any | None, request: Request) -> str:
    """Who calls a pipeline route (501 when pipelines are not enabled)."""
    if service is None:
        err = ApiError("pipelines are not enabled on this gateway")
        err.status_code = 501
        raise err
    # Which keys may call each route is checked before (see .scopes): deploy or
    # approve, never bound to a tenant.
    return _actor(getattr(request.state, "principal", None))


def _run_json(run: Any) -> dict:
    out = run.to_dict()
    out["object"] = "pipeline.run"
    return out


def _pipeline_of(body: dict[str, Any]) -> tuple[Any, Path]:
    """The Pipeline manifest a start request carries and the folder its files are in.

    Raises:
        BadRequest: ``base_dir`` is not an absolute folder, or the manifest is invalid or
            not a Pipeline.
    """
    from qingliang.platform.lifecycle.pipelines.manifest import Pipeline

    base_dir = validated(PipelineStartBody, body).base_dir
    if not Path(base_dir).is_absolute():
        raise BadRequest(
            "`base_dir` must be an absolute folder on the platform host: the files the "
            "steps name (dataset, job) are read from there",
            param="base_dir",
        )
    if not Path(base_dir).is_dir():
        raise BadRequest(f"base_dir {base_dir} is not a folder", param="base_dir")
    import qingliang.platform.lifecycle.pipelines.kinds  # noqa: F401
    from qingliang.platform.manifests.loader import validate_document

    try:
        item = validate_document(body.get("manifest"), "manifest")
    except ManifestError as exc:
        raise BadRequest(str(exc), param="manifest") from None
    if not isinstance(item.manifest, Pipeline):
        raise BadRequest(f"manifest is a {item.kind}, not a Pipeline", param="manifest")
    return item.manifest, Path(base_dir)


def add_pipeline_routes(app: FastAPI, service: Any | None) -> None:
    """Mount ``/v1/pipelines`` (501 on every route when ``service`` is None)."""

    @app.get("/v1/pipelines")
    async def list_runs(request: Request, pipeline: str | None = None, limit: int = 50) -> dict:
        _operator(service, request)
        assert service is not None
        if not 1 <= limit <= 1000:
            raise BadRequest("limit must be from 1 to 1000", param="limit")
        return {"object": "list", "data": [_run_json(r) for r in service.list(pipeline, limit)]}

    @app.post("/v1/pipelines", status_code=202, openapi_extra=request_body(PipelineStartBody))
    async def start(request: Request) -> Response:
        actor = _operator(service, request)
        assert service is not None
        pipeline, base_dir = _pipeline_of(await read_json_object(request))
        try:
            run = service.start(pipeline, base_dir=base_dir, actor=actor)
        except ApiError:
            raise
        except QingliangError as exc:
            raise BadRequest(str(exc)) from None
        _background(service.drive, run.id)
        return JSONResponse(_run_json(run), status_code=202)

    @app.get("/v1/pipelines/{run_id}")
    async def get_run(request: Request, run_id: str) -> dict:
        _operator(service, request)
        assert service is not None
        return _run_json(service.get(run_id))

    @app.get("/v1/pipelines/{run_id}/events")
    async def events(request: Request, run_id: str, after: int = 0) -> dict:
        _operator(service, request)
        assert service is not None
        data = [e.to_dict() for e in service.runs.events(run_id, after=after)]
        return {"object": "list", "data": data}

    @app.post(
        "/v1/pipelines/{run_id}/approve",
        status_code=202,
        openapi_extra=request_body(PipelineApproveBody),
    )
    async def approve(request: Request, run_id: str) -> Response:
        actor = _operator(service, request)
        assert service is not None
        decision = validated(PipelineApproveBody, await read_json_object(request))
        body, reason = {"approve": decision.approve}, decision.reason
        # Refused here, not in the background: waiting, and not the starter's own run.
        service.check_approval(run_id, approve=body["approve"], by=actor)
        run = service.get(run_id)
        _background(service.approve, run_id, approve=body["approve"], by=actor, reason=reason)
        return JSONResponse(_run_json(run), status_code=202)

    @app.post(
        "/v1/pipelines/{run_id}/cancel",
        openapi_extra=request_body(PipelineCancelBody, required=False),
    )
    async def cancel(request: Request, run_id: str) -> dict:
        import asyncio

        actor = _operator(service, request)
        assert service is not None
        reason = validated(PipelineCancelBody, await read_json_object(request)).reason
        run = await asyncio.to_thread(service.cancel, run_id, by=actor, reason=reason)
        return _run_json(run)

    @app.post("/v1/pipelines/{run_id}/resume", status_code=202)
    async def resume(request: Request, run_id: str) -> Response:
        _operator(service, request)
        assert service is not None
        run = service.get(run_id)
        if run.status not in ("interrupted", "failed"):
            raise Conflict(
                f"pipeline run {run_id} is {run.status}; only interrupted or failed runs resume"
            )
        _background(service.drive, run_id)
        return JSONResponse(_run_json(run), status_code=202)

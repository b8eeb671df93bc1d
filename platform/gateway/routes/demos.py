"""The demonstrations' routes (admin keys only): list them, bring them up or down.

Routes::

    GET  /v1/demos                     each demo: name, title, summary, state (up|down),
                                       its newest job (or null), its walkthrough's steps
                                       and sample pictures
    GET  /v1/demos/{name}/samples/{file}  a sample picture of the bundle's samples/
    POST /v1/demos/{name}/up           {"train": false, "approve": false} -> 202, the job
    POST /v1/demos/{name}/down         -> 202, the job

``name`` is ``gov``, ``healthcare``, ``manufacturing`` or ``all`` (``all``: not for
samples). A job runs the real
``qingliang demo up|down`` (:mod:`qingliang.platform.gateway.operator.demo_jobs`); poll ``GET
/v1/demos`` for its status and output. 404 names an unknown demo, 409 a demo whose job
is still running.
"""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse, Response

from qingliang.platform.errors import ApiError
from qingliang.platform.gateway.http.bodies import (
    DemoDownBody,
    DemoUpBody,
    request_body,
    validated,
)
from qingliang.platform.gateway.operator.demo_jobs import DemoJobs
from qingliang.platform.gateway.routes.knowledge import read_json_object


def _jobs(jobs: DemoJobs | None) -> DemoJobs:
    if jobs is None:
        err = ApiError("demos are not enabled on this gateway")
        err.status_code = 501
        raise err
    return jobs


def add_demo_routes(app: FastAPI, jobs: DemoJobs | None) -> None:
    """Mount ``/v1/demos`` (501 on every route when ``jobs`` is None)."""

    @app.get("/v1/demos")
    async def list_demos() -> dict:
        """The domain demonstrations, whether each is up, and its newest job."""
        data = await asyncio.to_thread(_jobs(jobs).catalog)
        return {"object": "list", "data": data}

    @app.get("/v1/demos/{name}/samples/{file}", response_class=FileResponse)
    async def sample(name: str, file: str) -> Response:
        """A sample picture of the demo's bundle (only image files of its ``samples/``),
        for the console to attach to a walkthrough step; 404 names a file that is not one."""
        path, media_type = await asyncio.to_thread(_jobs(jobs).sample, name, file)
        return FileResponse(path, media_type=media_type, headers={"Cache-Control": "private"})

    @app.post(
        "/v1/demos/{name}/up",
        status_code=202,
        openapi_extra=request_body(DemoUpBody, required=False),
    )
    async def up(request: Request, name: str) -> Response:
        """`qingliang demo up NAME` as a job (train and approve as its flags)."""
        runner = _jobs(jobs)
        body = validated(DemoUpBody, await read_json_object(request))
        job = await asyncio.to_thread(
            _start, runner, name, "up", {"train": body.train, "approve": body.approve}
        )
        return JSONResponse(job, status_code=202)

    @app.post(
        "/v1/demos/{name}/down",
        status_code=202,
        openapi_extra=request_body(DemoDownBody, required=False),
    )
    async def down(request: Request, name: str) -> Response:
        """`qingliang demo down NAME` as a job: removes what `demo up` created."""
        runner = _jobs(jobs)
        validated(DemoDownBody, await read_json_object(request))
        job = await asyncio.to_thread(_start, runner, name, "down", {})
        return JSONResponse(job, status_code=202)


def _start(jobs: DemoJobs, name: str, action: str, flags: dict[str, Any]) -> dict:
    return jobs.start(name, action, **flags)

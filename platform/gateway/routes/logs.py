"""The logs route of the gateway: a deployment's replica logs, for ``qingliang logs`` run
against a remote platform (``--server``). HTTP only: the reading is
:class:`~qingliang.platform.control.logs.DeploymentLogs`' (the Ray dashboard's log API).

Route (``admin`` keys only, see :mod:`..auth.scopes`)::

    GET /v1/deployments/{name}/logs?tail=200&follow=false&replica=&stream=err
        text/plain, one log line per line, each prefixed "(<replica id>) " when the
        deployment has several replicas; ``follow=true`` keeps streaming new lines
        until the client disconnects. Errors (before any line) in OpenAI's format:
        404 unknown deployment (with "did you mean") or replica, or none running (the
        cluster included), 400 a bad tail or stream, 503 the Ray dashboard does not answer.

Without an ``Operations`` (a gateway built without a data directory) it answers 501.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator

from fastapi import FastAPI
from fastapi.responses import StreamingResponse

from qingliang.platform.control.logs import (
    DEFAULT_TAIL,
    DeploymentLogs,
    check_options,
    prefixed,
)
from qingliang.platform.errors import ApiError, ClusterError, NotFound, Unavailable
from qingliang.platform.gateway.operator.operations import Operations

logger = logging.getLogger(__name__)


def add_log_routes(app: FastAPI, ops: Operations | None) -> None:
    """Register ``GET /v1/deployments/{name}/logs`` on ``app``."""

    @app.get("/v1/deployments/{name}/logs")
    async def deployment_logs(
        name: str,
        tail: int = DEFAULT_TAIL,
        follow: bool = False,
        replica: str | None = None,
        stream: str = "err",
    ) -> StreamingResponse:
        """The last `tail` lines (0: all) of each replica's log (`stream` err: every log
        line; out: stdout), or with `follow` every new line as it is written."""
        if ops is None:
            err = ApiError("the logs route is not enabled on this gateway")
            err.status_code = 501
            raise err
        check_options(tail, stream)
        url = await asyncio.to_thread(ops.dashboard_url)
        if url is None:  # as for a deployment with no replica running
            raise NotFound(
                f"deployment {name!r} has no replica running: the platform's Ray cluster "
                "is not running"
            )
        logs = DeploymentLogs(url)
        try:
            known = await asyncio.to_thread(ops.names)
            replicas = await asyncio.to_thread(logs.replicas, name, known, replica)
        except ClusterError as exc:
            logs.close()
            raise Unavailable(str(exc), retry_after=5, code="cluster_unavailable") from None
        except BaseException:
            logs.close()
            raise
        several = len(replicas) > 1
        lines = logs.lines_of(replicas, tail=tail, follow=follow, stream=stream)

        async def body() -> AsyncIterator[str]:
            try:
                while True:
                    item = await asyncio.to_thread(next, lines, None)
                    if item is None:
                        return
                    yield prefixed(item[0], item[1], several) + "\n"
            except ClusterError as exc:  # after the first line: the status is sent
                yield f"error: {exc}\n"
            finally:
                # Closing the client ends a read still waiting in a thread (a follow
                # whose client went away) instead of leaving it streaming.
                logs.close()

        return StreamingResponse(body(), media_type="text/plain; charset=utf-8")

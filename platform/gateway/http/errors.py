"""Errors as HTTP answers: every refusal in OpenAI's error format, in one place.

:func:`error_response` turns an :class:`~qingliang.platform.errors.ApiError` into its
JSON answer (with ``Retry-After`` for a retryable one and ``WWW-Authenticate`` for a
401); :func:`install_error_handlers` makes FastAPI's and Starlette's own refusals (bad
query parameters, unknown routes, wrong methods, a bug) answer the same way.

Example:
    >>> from qingliang.platform.errors import NotFound
    >>> error_response(NotFound("no such model")).status_code
    404
"""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from qingliang.platform.errors import ApiError, BadRequest, NotFound, Retryable, Unauthorized

logger = logging.getLogger(__name__)


def error_response(exc: ApiError, headers: dict[str, str] | None = None) -> JSONResponse:
    """``exc`` as its HTTP answer: its status, OpenAI's error body, and its headers."""
    headers = dict(headers or {})
    if isinstance(exc, Retryable):
        headers["Retry-After"] = str(max(1, round(exc.retry_after)))
    if isinstance(exc, Unauthorized):
        headers["WWW-Authenticate"] = "Bearer"
    return JSONResponse(exc.to_openai(), status_code=exc.status_code, headers=headers)


def install_error_handlers(app: FastAPI) -> None:
    """Answer every error ``app`` raises, or FastAPI / Starlette refuse, in OpenAI's format."""

    @app.exception_handler(ApiError)
    async def _api_error(_: Request, exc: ApiError) -> JSONResponse:
        return error_response(exc)

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        # Query and path parameters (bodies are read and checked by the routes).
        first = exc.errors()[0] if exc.errors() else {"loc": (), "msg": "invalid request"}
        loc = list(first["loc"])
        if loc and loc[0] in ("body", "query", "path", "header"):
            loc = loc[1:]
        where = ".".join(str(p) for p in loc)
        return error_response(BadRequest(f"{where}: {first['msg']}", param=where or None))

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        # Starlette's own refusals (a multipart body without a boundary, …): OpenAI's
        # format too, never FastAPI's {"detail": …}.
        err = ApiError(str(exc.detail))
        err.status_code = exc.status_code
        if exc.status_code < 500:
            err.error_type = "invalid_request_error"
        return error_response(err, getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        # A bug: still a 500 (and re-raised to the server, which logs the traceback), but
        # in OpenAI's format, and without the exception's text, which can name host paths.
        logger.error("%s %s: unhandled %s", request.method, request.url.path, type(exc).__name__)
        return error_response(
            ApiError(f"internal error ({type(exc).__name__}); the server log has the details")
        )

    @app.exception_handler(404)
    async def _not_found(request: Request, _: Exception) -> JSONResponse:
        return error_response(NotFound(f"no route {request.method} {request.url.path}"))

    @app.exception_handler(405)
    async def _method(request: Request, exc: Exception) -> JSONResponse:
        err = ApiError(f"method {request.method} is not allowed on {request.url.path}")
        err.status_code, err.error_type = 405, "invalid_request_error"
        # Keep Starlette's `Allow` header: a 405 must say which methods the route takes.
        return error_response(err, getattr(exc, "headers", None))

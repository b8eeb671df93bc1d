"""The gateway's one check of who may call what: key, route scope, then quota.

Example:
    >>> install_auth(app, KeyAuth(db, enabled=True), quotas)  # doctest: +SKIP
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from fastapi import FastAPI, Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from qingliang.platform.errors import ApiError, Unauthorized
from qingliang.platform.gateway.auth.keys import Auth
from qingliang.platform.gateway.auth.quotas import Quotas
from qingliang.platform.gateway.auth.scopes import authorize, route_of, rule_for, verify_key
from qingliang.platform.gateway.http.errors import error_response

logger = logging.getLogger(__name__)


def install_auth(app: FastAPI, auth: Auth, quotas: Quotas) -> None:
    """Check every request to ``app`` (when ``auth`` is enabled) before its route runs."""

    async def authorize_request(request: Request) -> None:
        """Check the key and the route's scope rule (see :mod:`.scopes`): one place."""
        route = route_of(app.router.routes, request.scope)
        rule = rule_for(request.method, route.path) if route is not None else None
        if rule is not None and rule.public:
            return
        if route is None and not request.url.path.startswith("/v1/"):
            return  # the router answers 404 / 405; nothing behind it
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise Unauthorized("missing API key: send 'Authorization: Bearer <key>'")
        principal = await verify_key(auth, token.strip())
        if not principal:
            raise Unauthorized("invalid or revoked API key")
        request.state.principal = principal
        if route is not None:  # else the router answers 404 / 405 to a known key
            authorize(principal, request.method, route.path)
            await quotas.admit(principal)

    app.add_middleware(AuthGuard, auth=auth, authorize_request=authorize_request)


class AuthGuard:
    """Pure ASGI middleware (Starlette's ``BaseHTTPMiddleware`` would pass every streamed
    chunk through a memory stream and a task): the check runs before the app; an
    :class:`ApiError` raised before the answer started (refused, or raised inside a
    streaming body before its headers) becomes the OpenAI error answer."""

    def __init__(
        self,
        app: ASGIApp,
        auth: Auth,
        authorize_request: Callable[[Request], Awaitable[None]],
    ) -> None:
        self.app = app
        self.auth = auth
        self.authorize_request = authorize_request

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def watch(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            if self.auth.enabled:
                await self.authorize_request(Request(scope, receive))
            await self.app(scope, receive, watch)
        except ApiError as exc:
            if started:
                raise
            await error_response(exc)(scope, receive, send)


async def has_valid_key(auth: Auth, request: Request) -> bool:
    """Whether ``request`` carries a valid key (for probes: never raises)."""
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return False
    try:
        # Off the event loop: verifying may wait on the key store's write lock.
        return bool(await asyncio.to_thread(auth.verify, token.strip()))
    except Exception:  # a probe must not fail on the key store: answer as for no key
        logger.debug("readyz: could not verify a key", exc_info=True)
        return False

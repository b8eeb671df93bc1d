"""The remote platform: which one (``--server`` / ``QINGLIANG_URL``, ``--api-key`` /
``QINGLIANG_API_KEY``) and an HTTP client for its API.

Without a server every command works on this machine as before. With one, every command
that reads or changes the platform calls its HTTP API with the key (an ``admin`` key:
``qingliang up`` writes one to ``$QINGLIANG_HOME/api-key``), and the few that cannot work
remotely by nature (``up``, ``down``) say so. Errors are worded for a person at the
boundary, as :class:`~qingliang.platform.errors.QingliangError`::

    QingliangError
    └── ApiError (from_status)   the server answered an error: its message and status
        └── Unauthorized         401: the key was refused; names QINGLIANG_API_KEY
    ClusterError                 the server cannot be reached: the URL and the cause

Example:
    >>> configure("http://10.0.0.5:8000/v1", "ql-…")
    >>> target().url
    'http://10.0.0.5:8000'
    >>> configure(None, None)
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from qingliang.platform.errors import ApiError, ClusterError, QingliangError, from_status

log = logging.getLogger(__name__)

URL_ENV = "QINGLIANG_URL"
KEY_ENV = "QINGLIANG_API_KEY"

#: The httpx transport of every remote client (None: the network). A unit test puts a
#: FastAPI ``TestClient``'s here, so the real gateway app answers without a socket.
transport: Any = None

#: What the global options chose (``None``: fall back to the environment).
_chosen: dict[str, str | None] = {"server": None, "api_key": None}


@dataclass(frozen=True)
class Target:
    """A remote platform: its base URL (no ``/v1``) and the key to call it with."""

    url: str
    key: str | None


def configure(server: str | None, api_key: str | None) -> None:
    """Record the global ``--server`` / ``--api-key`` options (``None``: not given)."""
    _chosen["server"] = server
    _chosen["api_key"] = api_key


def normal_url(url: str) -> str:
    """``http://h:8000/v1/`` → ``http://h:8000``; refuses what is not an http(s) URL."""
    url = url.strip().rstrip("/")
    if not url.startswith(("http://", "https://")) or len(url.split("://", 1)[1]) == 0:
        raise QingliangError(
            f"--server / {URL_ENV} {url!r} is not a URL: give http://HOST:PORT "
            "(e.g. http://10.0.0.5:8000)"
        )
    return url.removesuffix("/v1")


def target() -> Target | None:
    """The remote platform chosen for this run, or None (work locally)."""
    server = _chosen["server"] or os.environ.get(URL_ENV) or None
    if server is None:
        return None
    key = _chosen["api_key"] or os.environ.get(KEY_ENV) or None
    return Target(normal_url(server), key)


def local_only(command: str, why: str) -> None:
    """Refuse ``command`` when a server is chosen (QingliangError naming it and why)."""
    chosen = target()
    if chosen is not None:
        raise QingliangError(
            f"`qingliang {command}` works only on this machine ({why}); it does not run "
            f"against --server / {URL_ENV} ({chosen.url}). Unset {URL_ENV} or drop --server."
        )


def not_remote(command: str, instead: str) -> None:
    """Refuse ``command`` when a server is chosen: it reads this machine's files and has
    no route yet. QingliangError naming it and what to run instead."""
    chosen = target()
    if chosen is not None:
        raise QingliangError(
            f"`qingliang {command}` reads this machine's files and is not available against "
            f"--server / {URL_ENV} ({chosen.url}); {instead}"
        )


def error_of(status: int, body: object, text: str, where: str) -> ApiError:
    """The error of an HTTP answer: the server's message and the status, worded."""
    error = body.get("error") if isinstance(body, dict) else None
    error = error if isinstance(error, dict) else {}
    message = str(error.get("message") or text[:500] or "no message")
    if status == 401:
        message = (
            f"{where}: the server refused the API key (HTTP 401: {message}); set "
            f"{KEY_ENV} (or --api-key) to an admin key of that platform"
        )
    elif status == 403:
        message = f"{where}: HTTP 403: {message}; the remote CLI needs an admin key in {KEY_ENV}"
    else:
        message = f"{where}: HTTP {status}: {message}"
    return from_status(status, message, param=error.get("param"))


def check(response: Any, where: str) -> Any:
    """The JSON of a successful answer; the error of any other (see :func:`error_of`)."""
    try:
        body = response.json()
    except ValueError:
        body = None
    if response.status_code < 400:
        return body
    raise error_of(response.status_code, body, response.text, where)


class Remote:
    """The remote platform's HTTP API (what the remote paths of the commands call).

    ``transport`` is httpx's (default: the module's :data:`transport`, the network).
    """

    def __init__(self, chosen: Target, transport: Any = None, timeout_s: float = 3600) -> None:
        import httpx

        transport = transport if transport is not None else globals()["transport"]
        headers = {"Authorization": f"Bearer {chosen.key}"} if chosen.key else {}
        self.url = chosen.url
        self._http = httpx.Client(
            base_url=chosen.url,
            headers=headers,
            timeout=httpx.Timeout(timeout_s, connect=10),
            transport=transport,
        )

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Remote:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def reaching(self) -> Iterator[None]:
        """Translate a failure to connect into a ClusterError naming the URL and cause."""
        import httpx

        try:
            yield
        except httpx.TransportError as exc:
            cause = str(exc) or type(exc).__name__
            raise ClusterError(f"cannot reach the platform at {self.url}: {cause}") from None

    def request(self, method: str, path: str, **kw: Any) -> Any:
        """``method path`` with httpx's keyword arguments; the answer's JSON."""
        log.debug("%s %s%s", method, self.url, path)
        with self.reaching():
            response = self._http.request(method, path, **kw)
        return check(response, f"{method} {self.url}{path}")

    def get(self, path: str, params: dict | None = None) -> Any:
        return self.request("GET", path, params=params)

    def post(self, path: str, body: dict | None = None) -> Any:
        return self.request("POST", path, json=body if body is not None else {})

    def put(self, path: str, body: dict) -> Any:
        return self.request("PUT", path, json=body)

    def delete(self, path: str) -> Any:
        return self.request("DELETE", path)

    def text(self, path: str, params: dict | None = None) -> Iterator[str]:
        """GET ``path`` and yield its text body line by line (a JSONL export)."""
        with self.reaching(), self._http.stream("GET", path, params=params) as response:
            if response.status_code >= 400:
                response.read()
                check(response, f"GET {self.url}{path}")
            yield from response.iter_lines()


def connect() -> Remote:
    """The chosen remote platform's client (call only when :func:`target` is not None)."""
    chosen = target()
    if chosen is None:  # pragma: no cover - callers check first
        raise QingliangError(f"no server: pass --server URL or set {URL_ENV}")
    return Remote(chosen)


def dumps(value: Any) -> str:
    """``--json`` output: one JSON document, the same locally and remotely."""
    return json.dumps(value, ensure_ascii=False, indent=2)

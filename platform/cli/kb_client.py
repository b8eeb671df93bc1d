"""How the CLI reaches knowledge bases: in-process, or through the running gateway.

Qdrant Edge allows one opener per shard. While ``qingliang up`` runs, the gateway's
knowledge server owns the embedded shards, so the CLI must go through its HTTP API
(:class:`RemoteKnowledge`); otherwise it opens them itself (:class:`LocalKnowledge`).
:func:`connect` picks. Both answer the same JSON as ``/v1/knowledge``.

Example:
    >>> kb = connect(Settings())  # doctest: +SKIP
    >>> kb.call("search", "gov-policy", {"query": "返岗人员隔离"})["citations"][0]  # doctest: +SKIP
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import quote

from qingliang.platform.settings import Settings

log = logging.getLogger(__name__)

Progress = Callable[[str, int, int], None]

#: method -> (HTTP verb, path under /v1/knowledge/{kb})
_ROUTES: dict[str, tuple[str, str]] = {
    "stats": ("GET", ""),
    "search": ("POST", "/search"),
    "documents": ("GET", "/documents"),
    "sync": ("POST", "/sync"),
    "snapshots": ("GET", "/snapshots"),
    "snapshot": ("POST", "/snapshots"),
    "rollback": ("POST", "/rollback"),
    "answers": ("GET", "/answers"),
    "add_answer": ("POST", "/answers"),
}


class LocalKnowledge:
    """In-process: a KnowledgeService over ``settings.home``; the operator sees every KB."""

    remote = False

    def __init__(self, settings: Settings) -> None:
        from qingliang.knowledge.service import KnowledgeService

        self.service = KnowledgeService(settings.home)

    def call(
        self, method: str, kb: str | None, kwargs: dict, progress: Progress | None = None
    ) -> Any:
        from qingliang.knowledge.api import dispatch

        if method == "sync" and progress is not None:
            return self.service.sync(
                kb, actor="cli", rebuild=bool(kwargs.get("rebuild")), progress=progress
            ).to_dict()
        if method == "rollback" and progress is not None:
            return self.service.rollback(kb, kwargs.get("version"), actor="cli", progress=progress)
        return dispatch(self.service, method, kb, None, "cli", dict(kwargs))

    def close(self) -> None:
        self.service.close()


class RemoteKnowledge:
    """Through the gateway's ``/v1/knowledge`` API (the platform is running)."""

    remote = True

    def __init__(self, base_url: str, api_key: str | None, timeout_s: float = 3600) -> None:
        from qingliang.platform.cli._remote import Remote, Target

        self._api = Remote(Target(base_url, api_key), timeout_s=timeout_s)
        self._http = self._api._http

    def call(
        self, method: str, kb: str | None, kwargs: dict, progress: Progress | None = None
    ) -> Any:
        with self._api.reaching():
            return self._call(method, kb, kwargs)

    def _call(self, method: str, kb: str | None, kwargs: dict) -> Any:
        if method == "names":
            return self._check(self._http.get("/v1/knowledge"))
        assert kb is not None
        base = f"/v1/knowledge/{quote(kb, safe='')}"
        if method == "upload":
            files = {"file": (kwargs["filename"], kwargs["data"])}
            return self._check(self._http.post(base + "/documents", files=files))
        if method == "delete_document":
            return self._check(self._http.delete(f"{base}/documents/{quote(kwargs['doc'])}"))
        if method == "retract_answer":
            url = f"{base}/answers/{quote(kwargs['answer_id'], safe='')}/retract"
            return self._check(self._http.post(url, json={"reason": kwargs.get("reason")}))
        verb, path = _ROUTES[method]
        if verb == "GET":
            params = {"status": kwargs["status"] or "all"} if method == "answers" else None
            return self._check(self._http.get(base + path, params=params))
        return self._check(self._http.post(base + path, json=kwargs))

    def _check(self, response: Any) -> Any:
        from qingliang.platform.cli._remote import check

        return check(response, f"{response.request.method} {response.request.url}")

    def close(self) -> None:
        self._api.close()


def connect(settings: Settings) -> LocalKnowledge | RemoteKnowledge:
    """The platform of ``--server`` / ``QINGLIANG_URL`` when one is chosen; else the gateway
    when ``qingliang up`` runs here (it owns the shards); else in-process."""
    from qingliang.platform.cli import _remote
    from qingliang.platform.control import cluster

    chosen = _remote.target()
    if chosen is not None:
        return RemoteKnowledge(chosen.url, chosen.key)
    info = cluster.running(settings)
    if info is None:
        return LocalKnowledge(settings)
    key_file = settings.home / "api-key"
    key = key_file.read_text().strip() if key_file.is_file() else None
    base = f"http://{settings.host}:{info.http_port}"
    log.debug("platform is running: knowledge calls go to %s", base)
    return RemoteKnowledge(base, key)


def read_upload(path: Path) -> dict[str, Any]:
    return {"filename": path.name, "data": path.read_bytes()}

"""One Ray actor hosts every router, so all gateway replicas share what the router learns.

A thin shell: :class:`RouterActor` delegates each call to a :class:`RouterService` over the
SQLite file; the actor is named, detached and restarted on failure (the service restores
routers from the file at their first use, so nothing learned is lost). :func:`router_actor`
gets or creates it; :class:`RouterClient` gives async methods over either the actor handle
or an in-process service (:class:`LocalRouter`), so callers need not know which.

Calls are retried up to ``max_task_retries`` times while the actor restarts. Every method
is safe to repeat except ``decide``, whose repeat can leave one extra open decision in the
log; it never receives a reward part, so no policy learns from it.

Example:
    >>> import asyncio, tempfile
    >>> client = RouterClient(RouterService(Path(tempfile.mkdtemp()) / "router.sqlite"))
    >>> asyncio.run(client.register("desk/triage", RouterConfig(("a", "b"), "linucb")))
    >>> asyncio.run(client.routers())
    ['desk/triage']
    >>> client = RouterClient(router_actor("/srv/ql/router.sqlite", "qingliang"))  # doctest: +SKIP
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

from qingliang.agents.routing.features import RequestFeatures
from qingliang.agents.routing.ope import OpeReport
from qingliang.agents.routing.report import router_report
from qingliang.agents.routing.router import RouteDecision, RouterConfig, RouterService
from qingliang.platform import metrics
from qingliang.platform.errors import ClusterError, QingliangError

log = logging.getLogger(__name__)

ACTOR_NAME = "qingliang-router"
#: Ray namespace of the platform's own detached actors (the shared router).
ROUTER_NAMESPACE = "qingliang"
#: Retries of a call while the actor restarts (see the module notes on ``decide``).
MAX_TASK_RETRIES = 3
#: Long-running calls that a local client runs in a worker thread.
_SLOW = frozenset({"evaluate", "switch", "report"})


class RouterActor:
    """The Ray actor's class: each method is the service's."""

    def __init__(self, db_path: str) -> None:
        self._service = RouterService(Path(db_path))

    def register(self, router: str, config: RouterConfig) -> None:
        self._service.register(router, config)

    def decide(
        self, router: str, features: RequestFeatures, *, run_id: str, tenant: str | None = None
    ) -> RouteDecision:
        decision = self._service.decide(router, features, run_id=run_id, tenant=tenant)
        metrics.ROUTER_DECISIONS.inc(1, router=router, arm=decision.arm)
        return decision

    def untaught(self, router: str, keys: list[str]) -> list[str]:
        return self._service.untaught(router, keys)

    def teach(self, router: str, examples: list[tuple[str, str, RequestFeatures]]) -> int:
        return self._service.teach(router, examples)

    def add_reward(self, decision_id: str, part: str, value: float) -> dict[str, float]:
        return self._service.add_reward(decision_id, part, value)

    def close(self, decision_id: str) -> float | None:
        return self._service.close(decision_id)

    def finish_run(self, run_id: str, **outcome: Any) -> int:
        return self._service.finish_run(run_id, **outcome)

    def feedback(self, run_id: str, score: float) -> int:
        return self._service.feedback(run_id, score)

    def sweep(self, now: float | None = None) -> int:
        return self._service.sweep(now)

    def set_exploration(self, router: str, **changes: Any) -> dict[str, Any]:
        return self._service.set_exploration(router, **changes)

    def stats(self, router: str) -> dict[str, Any]:
        return self._service.stats(router)

    def routers(self) -> list[str]:
        return self._service.routers()

    def report(self, router: str, **kw: Any) -> dict[str, Any]:
        return router_report(self._service, router, **kw)

    def evaluate(self, router: str, candidate: RouterConfig) -> OpeReport:
        return self._service.evaluate(router, candidate)

    def switch(self, router: str, candidate: RouterConfig, **kw: Any) -> OpeReport | None:
        return self._service.switch(router, candidate, **kw)


def router_actor(db_path: str, namespace: str) -> Any:
    """The shared router actor in ``namespace``: the running one, or a new one over
    ``db_path`` (needs a connected Ray; raises ClusterError otherwise)."""
    import ray

    try:
        return (
            ray.remote(RouterActor)
            .options(
                name=ACTOR_NAME,
                namespace=namespace,
                lifetime="detached",
                get_if_exists=True,
                num_cpus=0,
                max_restarts=-1,
                max_task_retries=MAX_TASK_RETRIES,
            )
            .remote(db_path)
        )
    except Exception as exc:  # Ray not initialised, or the GCS unreachable
        raise ClusterError(f"cannot get or start the router actor: {exc}") from exc


class _Methods:
    """The async surface shared by :class:`LocalRouter` and :class:`RouterClient`."""

    async def _call(self, method: str, *args: Any, **kw: Any) -> Any:
        raise NotImplementedError

    async def register(self, router: str, config: RouterConfig) -> None:
        await self._call("register", router, config)

    async def decide(
        self, router: str, features: RequestFeatures, *, run_id: str, tenant: str | None = None
    ) -> RouteDecision:
        return await self._call("decide", router, features, run_id=run_id, tenant=tenant)

    async def untaught(self, router: str, keys: list[str]) -> list[str]:
        return await self._call("untaught", router, keys)

    async def teach(self, router: str, examples: list[tuple[str, str, RequestFeatures]]) -> int:
        return await self._call("teach", router, examples)

    async def add_reward(self, decision_id: str, part: str, value: float) -> dict[str, float]:
        return await self._call("add_reward", decision_id, part, value)

    async def close(self, decision_id: str) -> float | None:
        return await self._call("close", decision_id)

    async def finish_run(
        self,
        run_id: str,
        *,
        success: bool,
        latency_s: float,
        tokens: int,
        approval: float | None = None,
    ) -> int:
        outcome = {"success": success, "latency_s": latency_s, "tokens": tokens}
        return await self._call("finish_run", run_id, approval=approval, **outcome)

    async def feedback(self, run_id: str, score: float) -> int:
        return await self._call("feedback", run_id, score)

    async def sweep(self, now: float | None = None) -> int:
        return await self._call("sweep", now)

    async def set_exploration(
        self, router: str, floor: float | None = None, frozen: bool | None = None
    ) -> dict[str, Any]:
        return await self._call("set_exploration", router, floor=floor, frozen=frozen)

    async def stats(self, router: str) -> dict[str, Any]:
        return await self._call("stats", router)

    async def routers(self) -> list[str]:
        return await self._call("routers")

    async def report(
        self,
        router: str,
        *,
        window_s: float | None = None,
        buckets: int | None = None,
        ope: bool = True,
        now: float | None = None,
    ) -> dict[str, Any]:
        """:meth:`stats` with the decisions over time and the candidates compared
        (:func:`~qingliang.agents.routing.report.router_report`; None takes its default)."""
        kw = {"window_s": window_s, "buckets": buckets, "ope": ope, "now": now}
        return await self._call("report", router, **{k: v for k, v in kw.items() if v is not None})

    async def evaluate(self, router: str, candidate: RouterConfig) -> OpeReport:
        return await self._call("evaluate", router, candidate)

    async def switch(
        self, router: str, candidate: RouterConfig, *, min_margin: float = 0.0, force: bool = False
    ) -> OpeReport | None:
        return await self._call("switch", router, candidate, min_margin=min_margin, force=force)


class LocalRouter(_Methods):
    """The async methods over an in-process :class:`RouterService` (no Ray).

    Calls run inline (they take well under a millisecond) except ``evaluate``, ``switch``
    and ``report``, which refit policies on the log and run in a worker thread.
    """

    def __init__(self, service: RouterService) -> None:
        self.service = service

    def _report(self, router: str, **kw: Any) -> dict[str, Any]:
        return router_report(self.service, router, **kw)

    async def _call(self, method: str, *args: Any, **kw: Any) -> Any:
        fn = getattr(self.service, method) if method != "report" else self._report
        if method in _SLOW:
            return await asyncio.to_thread(fn, *args, **kw)
        return fn(*args, **kw)


class RouterClient(_Methods):
    """Async access to the routers through the actor handle, a :class:`LocalRouter` or a
    :class:`RouterService`. Errors come back as the service raised them (``NotFound``,
    ``Conflict``, ``ValueError``); Ray's own failures as :class:`ClusterError`."""

    def __init__(self, handle: Any) -> None:
        self._local = handle if isinstance(handle, LocalRouter) else None
        if isinstance(handle, RouterService):
            self._local = LocalRouter(handle)
        self._handle = handle

    async def _call(self, method: str, *args: Any, **kw: Any) -> Any:
        if self._local is not None:
            return await self._local._call(method, *args, **kw)
        try:
            remote = getattr(self._handle, method)
        except AttributeError:
            # A detached actor outlives an upgrade made while Ray kept running.
            raise ClusterError(
                f"the running router actor has no {method!r}: it was started by an older "
                "Qingliang; restart the platform (qingliang down, then up) to replace it"
            ) from None
        try:
            return await remote.remote(*args, **kw)
        except Exception as exc:
            cause = getattr(exc, "cause", None)  # Ray's task error wraps the original
            if isinstance(cause, QingliangError | ValueError):
                raise cause from None
            if isinstance(exc, QingliangError | ValueError):
                raise
            raise ClusterError(f"router actor call {method} failed: {exc}") from exc

"""A deployment's replica logs, read through the Ray dashboard (``qingliang logs``).

Each replica of a deployment is a Ray actor; Ray writes its stderr and stdout to
``worker-*.err`` / ``.out`` under the session's logs folder on the node it runs on. Every
log line of a model replica lands in its stderr: the platform's own (``logging``), vLLM's
(its engine statistics included) and Ray Serve's. The dashboard's log API (what Ray's
State API, ``ray.util.state.get_log``, calls: ``/api/v0/logs/file`` and
``/api/v0/logs/stream`` by ``actor_id``) finds that file on whichever node holds it, so
this works on a multi-node cluster as on a laptop. The replicas come from Serve's REST API
(``/api/serve/applications/``); a deployment is a Serve application (a model deployment's
name, or ``qingliang-gateway``).

Errors (``QingliangError`` subclasses, raised before any line is yielded where possible)::

    NotFound       unknown deployment (with "did you mean"), unknown replica,
                   a deployment with no replica running
    BadRequest     a bad tail or stream
    ClusterError   the dashboard does not answer, or cannot read a log

Example:
    >>> logs = DeploymentLogs("http://127.0.0.1:8265")                 # doctest: +SKIP
    >>> for replica, line in logs.lines("tiny", tail=20):               # doctest: +SKIP
    ...     print(replica, line)
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from qingliang.platform.errors import BadRequest, ClusterError, NotFound, did_you_mean

logger = logging.getLogger(__name__)

#: The replica's stderr (every log line) or stdout (``print``).
STREAMS = ("err", "out")
#: Lines shown when no ``tail`` is given.
DEFAULT_TAIL = 200
#: Seconds between two reads of a followed log (the dashboard polls the file).
FOLLOW_INTERVAL_S = 0.5

#: The httpx transport of every :class:`DeploymentLogs` (None: the network). A unit test
#: puts an ``httpx.MockTransport`` here, standing in for the dashboard.
transport: Any = None


@dataclass(frozen=True)
class Replica:
    """One replica of a deployment, as Serve reports it."""

    replica_id: str
    actor_id: str
    node_id: str
    state: str
    pid: int | None = None

    @classmethod
    def of(cls, row: dict[str, Any]) -> Replica:
        return cls(
            replica_id=str(row.get("replica_id") or ""),
            actor_id=str(row.get("actor_id") or ""),
            node_id=str(row.get("node_id") or ""),
            state=str(row.get("state") or ""),
            pid=row.get("pid"),
        )


def _split(text: str, pending: str) -> tuple[list[str], str]:
    """Complete lines of ``pending + text`` and what is left of an unfinished one."""
    parts = (pending + text).split("\n")
    return [p.rstrip("\r") for p in parts[:-1]], parts[-1]


class DeploymentLogs:
    """The dashboard's Serve and log APIs, for one platform.

    ``transport`` is httpx's (default: the module's :data:`transport`, the network).
    """

    def __init__(self, dashboard_url: str, transport: Any = None, timeout_s: float = 30) -> None:
        import httpx

        transport = transport if transport is not None else globals()["transport"]
        self.url = dashboard_url.rstrip("/")
        self._timeout = timeout_s
        self._http = httpx.Client(
            base_url=self.url,
            timeout=httpx.Timeout(timeout_s, connect=10, read=None),
            transport=transport,
        )

    def close(self) -> None:
        self._http.close()

    def _get_json(self, path: str) -> Any:
        import httpx

        try:
            r = self._http.get(path, timeout=self._timeout)
            r.raise_for_status()
            return r.json()
        except (httpx.HTTPError, ValueError) as exc:
            raise ClusterError(f"the Ray dashboard at {self.url} does not answer: {exc}") from None

    def applications(self) -> dict[str, Any]:
        """Serve's applications by name (``/api/serve/applications/``)."""
        return dict(self._get_json("/api/serve/applications/").get("applications") or {})

    def replicas(
        self, deployment: str, known: Iterable[str] = (), replica: str | None = None
    ) -> list[Replica]:
        """The replicas of ``deployment`` (all its Serve deployments'), or the one whose id
        is, starts or ends with ``replica``. ``known``: more names the platform knows (applied
        deployments that are not running), for the error and its "did you mean"."""
        apps = self.applications()
        app = apps.get(deployment)
        if app is None:
            names = sorted({*apps, *known})
            if deployment in known:
                raise NotFound(f"deployment {deployment!r} has no Serve application running")
            more = did_you_mean(deployment, names)
            listed = ", ".join(names) or "none"
            raise NotFound(f"unknown deployment {deployment!r}{more}; deployments: {listed}")
        rows = [
            Replica.of(r)
            for dep in (app.get("deployments") or {}).values()
            for r in dep.get("replicas") or []
        ]
        if replica:
            chosen = [r for r in rows if replica in (r.replica_id, *_ends(r.replica_id, replica))]
            if len(chosen) != 1:
                ids = [r.replica_id for r in rows]
                more = did_you_mean(replica, ids)
                why = "matches several replicas" if chosen else "is not a replica"
                raise NotFound(
                    f"{replica!r} {why} of {deployment!r}{more}; replicas: "
                    f"{', '.join(ids) or 'none'}"
                )
            rows = chosen
        if not rows:
            raise NotFound(
                f"deployment {deployment!r} has no replica running "
                f"(status {app.get('status', 'unknown')})"
            )
        return rows

    def _params(self, r: Replica, tail: int, stream: str) -> dict[str, Any]:
        params: dict[str, Any] = {"actor_id": r.actor_id, "suffix": stream, "lines": tail}
        if r.node_id:
            params["node_id"] = r.node_id
        return params

    def read(self, r: Replica, *, tail: int = DEFAULT_TAIL, stream: str = "err") -> list[str]:
        """The last ``tail`` lines of the replica's log (``0``: all of it)."""
        import httpx

        _check(tail, stream)
        params = self._params(r, tail or -1, stream)
        try:
            resp = self._http.get("/api/v0/logs/file", params=params)
        except httpx.HTTPError as exc:
            raise ClusterError(f"cannot read the log of replica {r.replica_id}: {exc}") from None
        if resp.status_code != 200:
            raise ClusterError(
                f"cannot read the log of replica {r.replica_id}: HTTP {resp.status_code}: "
                f"{resp.text[:300]}"
            )
        lines, last = _split(resp.text, "")
        return lines + ([last] if last else [])

    def follow(self, r: Replica, *, tail: int = DEFAULT_TAIL, stream: str = "err") -> Iterator[str]:
        """The last ``tail`` lines, then each new line as the replica writes it."""
        import httpx

        _check(tail, stream)
        params = self._params(r, tail or -1, stream) | {"interval": FOLLOW_INTERVAL_S}
        pending = ""
        try:
            with self._http.stream("GET", "/api/v0/logs/stream", params=params) as resp:
                if resp.status_code != 200:
                    resp.read()
                    raise ClusterError(
                        f"cannot follow the log of replica {r.replica_id}: HTTP "
                        f"{resp.status_code}: {resp.text[:300]}"
                    )
                for chunk in resp.iter_text():
                    lines, pending = _split(chunk, pending)
                    yield from lines
        except httpx.HTTPError as exc:
            raise ClusterError(f"lost the log of replica {r.replica_id}: {exc}") from None

    def lines(
        self,
        deployment: str,
        *,
        tail: int = DEFAULT_TAIL,
        follow: bool = False,
        replica: str | None = None,
        stream: str = "err",
        known: Iterable[str] = (),
    ) -> Iterator[tuple[str, str]]:
        """``(replica id, line)`` of the deployment's replicas (``replica``: only that
        one); see :meth:`lines_of`. Errors come before the first line."""
        _check(tail, stream)
        replicas = self.replicas(deployment, known, replica)
        return self.lines_of(replicas, tail=tail, follow=follow, stream=stream)

    def lines_of(
        self,
        replicas: list[Replica],
        *,
        tail: int = DEFAULT_TAIL,
        follow: bool = False,
        stream: str = "err",
    ) -> Iterator[tuple[str, str]]:
        """Each replica's last ``tail`` lines in turn, or, following, every replica's lines
        as they come, as ``(replica id, line)``."""
        _check(tail, stream)
        if not follow:
            for r in replicas:
                for line in self.read(r, tail=tail, stream=stream):
                    yield r.replica_id, line
        elif len(replicas) == 1:
            for line in self.follow(replicas[0], tail=tail, stream=stream):
                yield replicas[0].replica_id, line
        else:
            yield from self._follow_all(replicas, tail, stream)

    def _follow_all(
        self, replicas: list[Replica], tail: int, stream: str
    ) -> Iterator[tuple[str, str]]:
        """Several replicas followed at once, one thread each, lines as they arrive."""
        out: queue.Queue[tuple[str, str] | BaseException | None] = queue.Queue(maxsize=10_000)
        stop = threading.Event()

        def pump(r: Replica) -> None:
            try:
                for line in self.follow(r, tail=tail, stream=stream):
                    if stop.is_set():
                        return
                    out.put((r.replica_id, line))
            except BaseException as exc:  # handed to the reader, which raises it
                out.put(exc)
            finally:
                out.put(None)

        threads = [threading.Thread(target=pump, args=(r,), daemon=True) for r in replicas]
        for t in threads:
            t.start()
        running = len(threads)
        try:
            while running:
                item = out.get()
                if item is None:
                    running -= 1
                elif isinstance(item, BaseException):
                    raise item
                else:
                    yield item
        finally:
            stop.set()


def _ends(replica_id: str, given: str) -> tuple[str, ...]:
    """``given`` when it starts or ends ``replica_id`` (a short form of the id)."""
    return (given,) if replica_id.startswith(given) or replica_id.endswith(given) else ()


def check_options(tail: int, stream: str) -> None:
    """Refuse a negative ``tail`` or an unknown ``stream`` (BadRequest naming it)."""
    _check(tail, stream)


def _check(tail: int, stream: str) -> None:
    if tail < 0:
        raise BadRequest(f"tail must be 0 (the whole log) or more, got {tail}", param="tail")
    if stream not in STREAMS:
        more = did_you_mean(stream, STREAMS)
        raise BadRequest(f"stream {stream!r} is not one of err, out{more}", param="stream")


def prefixed(replica_id: str, line: str, several: bool) -> str:
    """A log line as ``qingliang logs`` prints it: with its replica when there are several."""
    return f"({replica_id}) {line}" if several else line

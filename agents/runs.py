"""Runs, their events, and the journal that makes side effects happen once.

Tables in ``agents.sqlite`` under the data directory, or in the PostgreSQL database of
``$QINGLIANG_DATABASE_URL`` (the storage layer, :mod:`~qingliang.platform.storage.database`;
migrations in ``platform/storage/migrations/agent_runs``):

- ``runs``: one row per run — graph, tenant, status, answer, the pending approval. Status
  changes are conditional updates (``... WHERE status = 'waiting'``), so two resumes of one
  run cannot both win: the second finds the run no longer waiting.
- ``events``: what the run streamed (node transitions, routes, citations, approvals), in
  order, for ``GET /v1/agents/runs/{id}`` after the stream is gone.
- ``journal``: results of the non-repeatable steps of a node execution (model calls, tool
  calls, routing decisions) under a key that is the same when LangGraph re-executes the
  node — after an interrupt, a resume or a crash. A replayed node reads its earlier results
  instead of doing the step again.

Statuses::

    running ──> waiting (an approval node asked) ──> running (resumed) ──> ...
       └──> done | rejected | stopped (limit, timeout: reason) | failed (error: reason)

Example:
    >>> import tempfile, pathlib
    >>> store = RunStore(pathlib.Path(tempfile.mkdtemp()) / "agents.sqlite")
    >>> run = store.create("desk", {"input": "hi"}, tenant=None, actor="ops")
    >>> store.set_status(run, "waiting", expect="running", pending={"prompt": "ok?"})
    True
    >>> store.set_status(run, "running", expect="waiting")
    True
    >>> store.set_status(run, "running", expect="waiting")  # a second resume loses
    False
"""

from __future__ import annotations

import asyncio
import json
import logging
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from qingliang.platform.storage.handles import MIGRATIONS, Statements, StoreDatabase, in_list
from qingliang.platform.storage.sqlite import write

log = logging.getLogger(__name__)

STATUSES = ("running", "waiting", "done", "rejected", "stopped", "failed")
FINAL = frozenset({"done", "rejected", "stopped", "failed"})

#: The store's name on the storage layer (version table ``qingliang_agent_runs_version``).
STORE = "agent_runs"
#: A write's statements, run in its transaction.
Write = Callable[[Statements], Any]


@dataclass(frozen=True)
class Run:
    """One row of ``runs``."""

    id: str
    graph: str
    tenant: str | None
    actor: str
    status: str
    input: dict
    answer: str | None
    reason: str | None
    pending: dict | None
    parent: str | None
    created: float
    updated: float
    tokens: int
    active_s: float

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": "agent.run",
            "graph": self.graph,
            "tenant": self.tenant,
            "actor": self.actor,
            "status": self.status,
            "input": self.input,
            "answer": self.answer,
            "reason": self.reason,
            "pending": self.pending,
            "parent": self.parent,
            "created": self.created,
            "updated": self.updated,
            "tokens": self.tokens,
            "active_s": round(self.active_s, 4),
        }


_COLUMNS = (
    "id, graph, tenant, actor, status, input, answer, reason, pending, parent, created, "
    "updated, tokens, active_s"
)


def _row(r: tuple) -> Run:
    return Run(
        id=r[0],
        graph=r[1],
        tenant=r[2],
        actor=r[3],
        status=r[4],
        input=json.loads(r[5]),
        answer=r[6],
        reason=r[7],
        pending=json.loads(r[8]) if r[8] else None,
        parent=r[9],
        created=r[10],
        updated=r[11],
        tokens=r[12],
        active_s=r[13],
    )


def _create(
    run_id: str,
    graph: str,
    payload: dict,
    tenant: str | None,
    actor: str,
    parent: str | None,
    events: list[dict] | None,
) -> Write:
    now = time.time()
    row = {
        "id": run_id, "graph": graph, "tenant": tenant, "actor": actor, "status": "running",
        "input": json.dumps(payload, ensure_ascii=False), "answer": None, "reason": None,
        "pending": None, "parent": parent, "created": now, "updated": now, "tokens": 0,
        "active_s": 0.0,
    }  # fmt: skip
    sql = f"INSERT INTO runs ({_COLUMNS}) VALUES ({', '.join(':' + k for k in row)})"

    def write(c: Statements) -> None:
        c.execute(sql, row)
        if events:
            _insert_events(c, run_id, events)

    return write


def _status_change(
    run_id: str,
    status: str,
    expect: str | tuple[str, ...] | None = None,
    answer: str | None = None,
    reason: str | None = None,
    pending: dict | None = None,
    tokens: int | None = None,
    active_s: float | None = None,
    events: list[dict] | None = None,
) -> Write:
    if status not in STATUSES:
        raise ValueError(f"unknown run status {status!r}")
    sets = ["status = :status", "updated = :updated", "pending = :pending"]
    args: dict[str, Any] = {
        "status": status,
        "updated": time.time(),
        "pending": json.dumps(pending) if pending else None,
        "id": run_id,
    }
    for col, val in (("answer", answer), ("reason", reason), ("tokens", tokens)):
        if val is not None:
            sets.append(f"{col} = :{col}")
            args[col] = val
    if active_s is not None:
        sets.append("active_s = active_s + :active_s")
        args["active_s"] = float(active_s)
    sql = f"UPDATE runs SET {', '.join(sets)} WHERE id = :id"
    if expect is not None:
        names, bound = in_list("expect", (expect,) if isinstance(expect, str) else expect)
        sql += f" AND status IN {names}"
        args.update(bound)

    def write(c: Statements) -> bool:
        changed = bool(c.execute(sql, args))
        if events:
            _insert_events(c, run_id, events)
        return changed

    return write


_JOURNAL_INSERT = (
    "INSERT INTO journal (run_id, key, value, at) VALUES (:run_id, :key, :value, :at) "
    "ON CONFLICT (run_id, key) DO NOTHING"
)


def _journal_entry(run_id: str, key: str, value: Any) -> Write:
    """Insert ``value`` unless the key has one: None, or the stored text."""
    row = {"run_id": run_id, "key": key, "value": json.dumps(value, ensure_ascii=False)}

    def write(c: Statements) -> Any:
        if c.execute(_JOURNAL_INSERT, {**row, "at": time.time()}) == 1:
            return None
        stored = c.first("SELECT value FROM journal WHERE run_id = :run_id AND key = :key", row)
        return None if stored is None else stored[0]

    return write


def new_run_id() -> str:
    """``run_`` + the time in ms (12 hex digits) + 80 random bits (20 hex digits)."""
    # Time first: the runs, events and journal rows of new runs (and their checkpoints,
    # keyed by run id) go to the right edge of each index instead of random pages, so a
    # commit writes a few pages, not one per row.
    return f"run_{time.time_ns() // 1_000_000:012x}{uuid.uuid4().hex[:20]}"


def _insert_events(c: Statements, run_id: str, events: list[dict]) -> None:
    """Append ``events`` to the run's, inside the caller's (write) transaction."""
    (last,) = c.first(
        "SELECT COALESCE(MAX(seq), 0) FROM events WHERE run_id = :run_id", {"run_id": run_id}
    ) or (0,)
    now = time.time()
    c.executemany(
        "INSERT INTO events (run_id, seq, at, event) VALUES (:run_id, :seq, :at, :event)",
        [
            {"run_id": run_id, "seq": int(last) + i + 1, "at": now,
             "event": json.dumps(e, ensure_ascii=False)}
            for i, e in enumerate(events)
        ],
    )  # fmt: skip


class WriteGroups:
    """Group commit for the async writes on one SQLite connection.

    A commit costs more than the few statements of a run's write, and concurrent runs
    write all the time; :meth:`write` queues a write and waits, and at the next turn of
    the event loop the queued writes run in one ``BEGIN IMMEDIATE`` transaction, each in
    a savepoint of its own (one that fails is undone alone and raises in its writer), and
    commit together. A writer resumes only after that commit, so its write is as durable
    on return as one with a commit of its own; a writer cancelled while waiting has its
    write made all the same, as a sync write would have been.

    The transaction lives within one callback: no lock is held between turns of the
    loop, and none is waited for while one is held (two stores, two processes).

    Example:
        >>> groups = WriteGroups(conn, threading.Lock())  # doctest: +SKIP
        >>> await groups.write(lambda: conn.execute("INSERT INTO t VALUES (1)"))  # doctest: +SKIP
    """

    def __init__(self, conn: sqlite3.Connection, lock: Any) -> None:
        self._conn = conn
        self._lock = lock
        self._queue: list[tuple[Callable[[], Any], asyncio.Future]] = []
        #: True while the writes of a group run (a saver's statements must not commit).
        self.active = False

    async def write(self, fn: Callable[[], Any]) -> Any:
        """``fn()`` (statements on the connection, no commit) in the next group; its
        result once committed."""
        loop = asyncio.get_running_loop()
        if not self._queue:
            loop.call_soon(self.flush)
        fut = loop.create_future()
        self._queue.append((fn, fut))
        return await fut

    def flush(self) -> None:
        """Run and commit the queued writes now (also before the connection closes)."""
        queue, self._queue = self._queue, []
        if not queue:
            return
        with self._lock:
            self.active = True
            try:
                outcomes, fatal = self._commit([fn for fn, _fut in queue])
            finally:
                self.active = False
        for (_fn, fut), (ok, value) in zip(queue, outcomes, strict=True):
            if fut.done() or fut.get_loop().is_closed():
                continue  # its writer was cancelled, or is gone
            if ok:
                fut.set_result(value)
            else:
                fut.set_exception(value)
        if fatal is not None:
            raise fatal

    def _commit(
        self, fns: list[Callable[[], Any]]
    ) -> tuple[list[tuple[bool, Any]], BaseException | None]:
        """Run ``fns`` in one transaction, each in a savepoint: per write (ok, result or
        error), and the error that must go on after the writers are told (not an
        Exception: a KeyboardInterrupt, a cancellation)."""
        c = self._conn
        outcomes: list[tuple[bool, Any]] = []
        try:
            with write(c):
                for fn in fns:
                    c.execute("SAVEPOINT write")
                    try:
                        outcomes.append((True, fn()))
                    except Exception as exc:
                        c.execute("ROLLBACK TO write")
                        outcomes.append((False, exc))
                    c.execute("RELEASE write")
        except BaseException as exc:  # no write of the group is kept (rolled back)
            return [(False, exc)] * len(fns), None if isinstance(exc, Exception) else exc
        return outcomes, None


class _DatabaseGroups(WriteGroups):
    """:class:`WriteGroups` on the storage layer: each queued write is ``fn(statements)``,
    the group one write transaction of the store, each write in a savepoint."""

    def __init__(self, db: StoreDatabase) -> None:
        super().__init__(None, threading.Lock())  # type: ignore[arg-type]
        self._db = db

    def _commit(self, fns: list[Any]) -> tuple[list[tuple[bool, Any]], BaseException | None]:
        outcomes: list[tuple[bool, Any]] = []
        try:
            with self._db.transaction() as c:
                for fn in fns:
                    c.execute("SAVEPOINT write")
                    try:
                        outcomes.append((True, fn(c)))
                    except Exception as exc:
                        c.execute("ROLLBACK TO SAVEPOINT write")
                        outcomes.append((False, self._db.error(exc)))
                    c.execute("RELEASE SAVEPOINT write")
        except BaseException as exc:  # no write of the group is kept (rolled back)
            return [(False, exc)] * len(fns), None if isinstance(exc, Exception) else exc
        return outcomes, None


class RunStore:
    """Runs, events, journal and feedback in one database (``path``, a SQLite file, or
    ``url`` / ``$QINGLIANG_DATABASE_URL``); safe across threads and processes (the storage
    layer's write transactions, pooled connections).

    The async writes (``acreate``, ``aset_status``, ``ajournal``) commit in groups with
    the other runs' (:class:`WriteGroups`); each returns once committed, as a sync one.
    """

    def __init__(self, path: Path, *, url: str | None = None) -> None:
        self.path = Path(path)
        # A SQLite file is created owner-only (runs hold users' questions and answers).
        self._db = StoreDatabase(self.path, STORE, MIGRATIONS / STORE, url=url)
        self._db.database  # noqa: B018  (opened and migrated here, as before)
        self._groups = _DatabaseGroups(self._db)
        #: ``tenant = :tenant`` that also matches None to None.
        self._same = "IS" if self._db.dialect == "sqlite" else "IS NOT DISTINCT FROM"

    def close(self) -> None:
        self._groups.flush()
        self._db.close()

    def _write(self, fn: Write) -> Any:
        with self._db.transaction() as c:
            return fn(c)

    async def _awrite(self, fn: Write) -> Any:
        """``fn(connection)`` in a group commit; returns once it is committed."""
        return await self._groups.write(fn)  # type: ignore[arg-type]

    def _read(self, sql: str, **params: Any) -> list[tuple]:
        return self._db.query(sql, params)

    # runs -------------------------------------------------------------------------------

    def create(
        self,
        graph: str,
        payload: dict,
        *,
        tenant: str | None,
        actor: str,
        parent: str | None = None,
        run_id: str | None = None,
        events: list[dict] | None = None,
    ) -> str:
        """A new run in status ``running``; returns its id. ``events`` (its first ones)
        are stored in the same transaction."""
        rid = run_id or new_run_id()
        self._write(_create(rid, graph, payload, tenant, actor, parent, events))
        return rid

    async def acreate(
        self,
        graph: str,
        payload: dict,
        *,
        tenant: str | None,
        actor: str,
        parent: str | None = None,
        run_id: str | None = None,
        events: list[dict] | None = None,
    ) -> str:
        """:meth:`create`, committed with the open group of writes."""
        rid = run_id or new_run_id()
        await self._awrite(_create(rid, graph, payload, tenant, actor, parent, events))
        return rid

    def get(self, run_id: str) -> Run | None:
        rows = self._read(f"SELECT {_COLUMNS} FROM runs WHERE id = :id", id=run_id)
        return _row(rows[0]) if rows else None

    def list(
        self,
        *,
        tenant: str | None = None,
        all_tenants: bool = False,
        status: str | None = None,
        graph: str | None = None,
        limit: int = 50,
    ) -> list[Run]:
        where: list[str] = []
        args: dict[str, Any] = {"limit": limit}
        if not all_tenants:
            where.append(f"tenant {self._same} :tenant")
            args["tenant"] = tenant
        if status:
            where.append("status = :status")
            args["status"] = status
        if graph:
            where.append("graph = :graph")
            args["graph"] = graph
        sql = f"SELECT {_COLUMNS} FROM runs"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY created DESC LIMIT :limit"
        return [_row(r) for r in self._read(sql, **args)]

    def set_status(
        self,
        run_id: str,
        status: str,
        *,
        expect: str | tuple[str, ...] | None = None,
        answer: str | None = None,
        reason: str | None = None,
        pending: dict | None = None,
        tokens: int | None = None,
        active_s: float | None = None,
        events: list[dict] | None = None,
    ) -> bool:
        """Move a run to ``status`` if it is in ``expect`` (any status when None).

        Returns False, changing nothing, when the run is not in an expected status.
        ``pending`` is the approval waited for (cleared on any other status). ``events``
        are stored in the same transaction, whether or not the status changed.
        """
        return bool(
            self._write(
                _status_change(
                    run_id, status, expect, answer, reason, pending, tokens, active_s, events
                )
            )
        )

    async def aset_status(self, run_id: str, status: str, **changes: Any) -> bool:
        """:meth:`set_status` (same arguments), committed with the open group of writes."""
        return bool(await self._awrite(_status_change(run_id, status, **changes)))

    # events -----------------------------------------------------------------------------

    def add_events(self, run_id: str, events: list[dict]) -> None:
        if events:
            self._write(lambda c: _insert_events(c, run_id, events))

    def events(self, run_id: str, after: int = 0) -> list[dict]:
        rows = self._read(
            "SELECT seq, at, event FROM events WHERE run_id = :run_id AND seq > :after "
            "ORDER BY seq",
            run_id=run_id,
            after=after,
        )
        # ``at``: when the event happened where the service stamped it, else when its
        # batch was stored (at most a quarter of a second later).
        return [{"seq": seq, "at": at, **json.loads(text)} for seq, at, text in rows]

    # journal ----------------------------------------------------------------------------

    def journaled(self, run_id: str, key: str) -> tuple[bool, Any]:
        """(True, value) when ``key`` was recorded for the run, else (False, None)."""
        rows = self._read(
            "SELECT value FROM journal WHERE run_id = :run_id AND key = :key",
            run_id=run_id,
            key=key,
        )
        return (True, json.loads(rows[0][0])) if rows else (False, None)

    def journal(self, run_id: str, key: str, value: Any) -> Any:
        """Record ``value`` under ``key`` unless a value is there already; returns the
        recorded one (the first writer wins)."""
        stored = self._write(_journal_entry(run_id, key, value))
        return value if stored is None else json.loads(stored)

    async def ajournal(self, run_id: str, key: str, value: Any) -> Any:
        """:meth:`journal`, committed with the open group of writes."""
        stored = await self._awrite(_journal_entry(run_id, key, value))
        return value if stored is None else json.loads(stored)

    def journal_size(self, run_id: str) -> int:
        return int(
            self._read("SELECT COUNT(*) FROM journal WHERE run_id = :run_id", run_id=run_id)[0][0]
        )

    # feedback ---------------------------------------------------------------------------

    def add_feedback(self, run_id: str, score: float, comment: str | None, actor: str) -> None:
        self._write(
            lambda c: c.execute(
                "INSERT INTO feedback (run_id, at, score, comment, actor) "
                "VALUES (:run_id, :at, :score, :comment, :actor)",
                {
                    "run_id": run_id,
                    "at": time.time(),
                    "score": float(score),
                    "comment": comment,
                    "actor": actor,
                },
            )  # fmt: skip
        )

    def feedback(self, run_id: str) -> list[dict]:
        rows = self._read(
            "SELECT at, score, comment, actor FROM feedback WHERE run_id = :run_id ORDER BY at",
            run_id=run_id,
        )
        return [{"at": a, "score": s, "comment": c, "actor": w} for a, s, c, w in rows]

"""Pipeline runs and their event logs, in SQLite under the data directory.

The LangGraph checkpointer holds each run's *state* (which steps finished, their
outputs); this store holds what people look at: the run's status, the step it is on,
what it waits for, and an append-only event log (step started / progress / finished /
failed, approvals). One process drives a run at a time: :meth:`RunStore.lock` takes an
``flock`` on the run's lock file, which the kernel releases when the driver dies, so a
run whose status says ``running`` but whose lock is free was interrupted.

A store keeps one SQLite connection per thread (a run's driver writes an event per training
step, and opening a connection each time costs more than the write); a process forked from
one that used the store opens its own. :meth:`RunStore.close` closes them.

Statuses::

    queued -> running -> waiting (an approval) -> running -> succeeded
                      \\-> failed | gated (an evaluation threshold missed)
                      \\-> rejected (approval refused) | rolled_back (canary refused)
    waiting | interrupted | failed -> cancelled (`pipelines cancel`; a live canary is
                                      rolled back first)
    running, lock free -> interrupted (shown so; `pipelines resume` continues it)

A process that holds a run's lock (``pipelines cancel``, ``resume``) finds a stored
``running`` only where a driver died: ``get(run, holder=True)`` reads it as
``interrupted``.
"""

from __future__ import annotations

import builtins
import contextlib
import fcntl
import json
import os
import re
import sqlite3
import threading
import time
import weakref
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from qingliang.platform.errors import Conflict, NotFound, did_you_mean
from qingliang.platform.storage.sqlite import connect, write

SCHEMA = """
CREATE TABLE IF NOT EXISTS pipeline_runs (
    id TEXT PRIMARY KEY, pipeline TEXT NOT NULL, manifest TEXT NOT NULL,
    base_dir TEXT NOT NULL, status TEXT NOT NULL, step TEXT, waiting TEXT,
    error TEXT, outputs TEXT NOT NULL DEFAULT '{}', actor TEXT NOT NULL,
    created REAL NOT NULL, updated REAL NOT NULL);
CREATE INDEX IF NOT EXISTS pipeline_runs_by_name ON pipeline_runs (pipeline, created);
CREATE TABLE IF NOT EXISTS pipeline_events (
    run_id TEXT NOT NULL, seq INTEGER NOT NULL, at REAL NOT NULL, step TEXT,
    kind TEXT NOT NULL, data TEXT NOT NULL, PRIMARY KEY (run_id, seq));
"""
FINAL = ("succeeded", "failed", "gated", "rejected", "rolled_back", "cancelled")
#: What a run id may look like where it names a lock file (ids are ``pl-…``).
_LOCK_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}\Z")


@dataclass(frozen=True)
class Run:
    id: str
    pipeline: str
    manifest: dict[str, Any]
    base_dir: str
    status: str
    step: str | None
    waiting: dict[str, Any] | None
    error: str | None
    outputs: dict[str, Any]
    actor: str
    created: float
    updated: float

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "pipeline": self.pipeline,
            "status": self.status,
            "step": self.step,
            "waiting": self.waiting,
            "error": self.error,
            "outputs": self.outputs,
            "actor": self.actor,
            "created": self.created,
            "updated": self.updated,
        }


@dataclass(frozen=True)
class Event:
    seq: int
    at: float
    step: str | None
    kind: str
    data: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return {**self.data, "seq": self.seq, "at": self.at, "step": self.step, "kind": self.kind}


class _Connection:
    """A store's connection in one thread, and the process that opened it."""

    __slots__ = ("__weakref__", "closed", "db", "pid")

    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db
        self.pid = os.getpid()
        self.closed = False


# Connections a forked child inherited: never used or closed there (SQLite forbids using a
# connection across fork(), and closing it could act on the parent's locks), only kept
# referenced so that garbage collection does not close them either.
_INHERITED: list[_Connection] = []


class RunStore:
    """Runs and events in ``<root>/runs.sqlite``; lock files in ``<root>/locks``.

    Safe to use from several threads (each has its own connection) and after ``fork()``.

    Example:
        >>> with RunStore(tmp_path / "pipelines") as runs:  # doctest: +SKIP
        ...     runs.create("pl-1", "faq", manifest, "/srv/pipelines", actor="alice")
    """

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        (self.root / "locks").mkdir(exist_ok=True)
        self.path = self.root / "runs.sqlite"
        self._local = threading.local()
        # Every thread's connection, for close(); a thread's goes when the thread ends.
        self._open: weakref.WeakSet[_Connection] = weakref.WeakSet()
        self._open_lock = threading.Lock()
        with self._db() as db:
            db.executescript(SCHEMA)

    def __enter__(self) -> RunStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the connections this process opened, in every thread.

        Call it when no other thread is using the store; a later call reopens one.
        """
        with self._open_lock:
            conns = [c for c in self._open if c.pid == os.getpid() and not c.closed]
            self._open.clear()
        for conn in conns:
            conn.closed = True
            conn.db.close()

    def _connection(self) -> _Connection:
        conn: _Connection | None = getattr(self._local, "conn", None)
        if conn is not None and conn.pid != os.getpid():
            _INHERITED.append(conn)
            conn = None
        if conn is None or conn.closed:
            # check_same_thread=False only so that close() can close other threads'
            # connections; each is otherwise used by the thread that opened it.
            conn = _Connection(connect(self.path, timeout=30))
            self._local.conn = conn
            with self._open_lock:
                self._open.add(conn)
        return conn

    def _forget(self, conn: _Connection) -> None:
        if getattr(self._local, "conn", None) is conn:
            del self._local.conn
        with self._open_lock:
            self._open.discard(conn)
        conn.closed = True
        with contextlib.suppress(sqlite3.Error):
            conn.db.close()

    @contextlib.contextmanager
    def _db(self) -> Iterator[sqlite3.Connection]:
        """This thread's connection; what fails leaves no transaction open on it."""
        conn = self._connection()
        try:
            yield conn.db
        except sqlite3.Error:
            self._forget(conn)  # closing rolls back; the next call opens a fresh one
            raise
        except BaseException:
            if conn.db.in_transaction:
                try:
                    conn.db.execute("ROLLBACK")
                except sqlite3.Error:
                    self._forget(conn)
            raise

    def create(self, run_id: str, pipeline: str, manifest: dict, base_dir: str, actor: str) -> Run:
        now = time.time()
        with self._db() as db:
            db.execute(
                "INSERT INTO pipeline_runs (id, pipeline, manifest, base_dir, status, actor, "
                "created, updated) VALUES (?, ?, ?, ?, 'queued', ?, ?, ?)",
                (run_id, pipeline, json.dumps(manifest), base_dir, actor, now, now),
            )
        self.event(run_id, None, "created", {"actor": actor})
        return self.get(run_id)

    def get(self, run_id: str, *, holder: bool = False) -> Run:
        """The run; ``running`` with no driver is shown ``interrupted``.

        ``holder``: the caller holds the run's lock (:meth:`lock`) and has not started
        driving it, so a stored ``running`` is a dead driver's.
        """
        with self._db() as db:
            row = db.execute("SELECT * FROM pipeline_runs WHERE id = ?", (run_id,)).fetchone()
            if row is None:
                ids = [r[0] for r in db.execute("SELECT id FROM pipeline_runs")]
        if row is None:
            raise NotFound(f"no pipeline run {run_id!r}{did_you_mean(run_id, ids)}", param="run")
        run = _run(row)
        if run.status == "running" and (holder or not self.locked(run_id)):
            run = _replace_status(run, "interrupted")
        return run

    def list(self, pipeline: str | None = None, limit: int = 50) -> builtins.list[Run]:
        q = "SELECT * FROM pipeline_runs"
        args: tuple = ()
        if pipeline:
            q += " WHERE pipeline = ?"
            args = (pipeline,)
        with self._db() as db:
            rows = db.execute(q + " ORDER BY created DESC LIMIT ?", (*args, limit)).fetchall()
        out = []
        for row in rows:
            run = _run(row)
            if run.status == "running" and not self.locked(run.id):
                run = _replace_status(run, "interrupted")
            out.append(run)
        return out

    def update(self, run_id: str, **fields: Any) -> None:
        allowed = {"status", "step", "waiting", "error", "outputs"}
        bad = set(fields) - allowed
        if bad:
            raise ValueError(f"cannot update {bad}")
        values = {
            k: (json.dumps(v) if k in ("waiting", "outputs") else v) for k, v in fields.items()
        }
        sets = ", ".join(f"{k} = ?" for k in values)
        with self._db() as db:
            db.execute(
                f"UPDATE pipeline_runs SET {sets}, updated = ? WHERE id = ?",
                (*values.values(), time.time(), run_id),
            )

    def event(self, run_id: str, step: str | None, kind: str, data: dict[str, Any]) -> int:
        with self._db() as db, write(db):
            (seq,) = db.execute(
                "SELECT COALESCE(MAX(seq), 0) + 1 FROM pipeline_events WHERE run_id = ?",
                (run_id,),
            ).fetchone()
            db.execute(
                "INSERT INTO pipeline_events VALUES (?, ?, ?, ?, ?, ?)",
                (run_id, seq, time.time(), step, kind, json.dumps(data, default=str)),
            )
        return int(seq)

    def events(self, run_id: str, after: int = 0, limit: int = 10_000) -> builtins.list[Event]:
        self.get(run_id)
        with self._db() as db:
            rows = db.execute(
                "SELECT seq, at, step, kind, data FROM pipeline_events WHERE run_id = ? "
                "AND seq > ? ORDER BY seq LIMIT ?",
                (run_id, after, limit),
            ).fetchall()
        return [Event(r[0], r[1], r[2], r[3], json.loads(r[4])) for r in rows]

    def locked(self, run_id: str) -> bool:
        """Whether some process is driving the run now."""
        path = self.root / "locks" / f"{run_id}.lock"
        if not path.exists():
            return False
        with path.open("a") as fh:
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return True
            fcntl.flock(fh, fcntl.LOCK_UN)
            return False

    @contextlib.contextmanager
    def lock(self, run_id: str, *, wait_s: float = 0.0) -> Iterator[None]:
        """Hold the run's driver lock (Conflict if another process drives it).

        ``wait_s``: how long to wait for a lock held only for a moment (a status read
        that settles a dead driver's run holds it for milliseconds).
        """
        if not _LOCK_NAME_RE.match(run_id):  # a run id names a file here: never a path
            raise NotFound(f"no pipeline run {run_id[:80]!r}", param="run")
        path = self.root / "locks" / f"{run_id}.lock"
        fd = os.open(path, os.O_CREAT | os.O_RDWR, 0o600)
        try:
            deadline = time.monotonic() + wait_s
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() >= deadline:
                        raise Conflict(
                            f"pipeline run {run_id} is being driven by another process; "
                            "see `qingliang pipelines status`",
                            param="run",
                        ) from None
                    time.sleep(0.05)
            os.ftruncate(fd, 0)
            os.write(fd, str(os.getpid()).encode())
            yield
        finally:
            os.close(fd)


def _run(row: tuple) -> Run:
    return Run(
        id=row[0],
        pipeline=row[1],
        manifest=json.loads(row[2]),
        base_dir=row[3],
        status=row[4],
        step=row[5],
        waiting=json.loads(row[6]) if row[6] else None,
        error=row[7],
        outputs=json.loads(row[8] or "{}"),
        actor=row[9],
        created=row[10],
        updated=row[11],
    )


def _replace_status(run: Run, status: str) -> Run:
    import dataclasses

    return dataclasses.replace(run, status=status)

"""Pipeline runs and their event logs: ``runs.sqlite`` under the data directory, or the
PostgreSQL database of ``$QINGLIANG_DATABASE_URL`` (the storage layer,
:mod:`~qingliang.platform.storage.database`; migrations in
``platform/storage/migrations/pipeline_runs``).

The LangGraph checkpointer holds each run's *state* (which steps finished, their
outputs); this store holds what people look at: the run's status, the step it is on,
what it waits for, and an append-only event log (step started / progress / finished /
failed, approvals). One process drives a run at a time: :meth:`RunStore.lock` takes an
``flock`` on the run's lock file, which the kernel releases when the driver dies, so a
run whose status says ``running`` but whose lock is free was interrupted.

A store uses the layer's pooled connections (a run's driver writes an event per training
step, and opening a connection each time would cost more than the write); a process forked
from one that used the store opens its own. :meth:`RunStore.close` closes them. The driver
lock is a file under the store's folder and, where the store is on a PostgreSQL server,
also the run's advisory lock there: a machine that shares the database but not the folder
sees a run driven elsewhere as running, not interrupted.

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
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import text

from qingliang.platform.errors import Conflict, NotFound, did_you_mean
from qingliang.platform.storage.handles import MIGRATIONS, StoreDatabase

#: The store's name on the storage layer (version table ``qingliang_pipeline_runs_version``).
STORE = "pipeline_runs"
_RUN_COLUMNS = (
    "id, pipeline, manifest, base_dir, status, step, waiting, error, outputs, actor, "
    "created, updated"
)
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


class RunStore:
    """Runs and events in ``<root>/runs.sqlite``; lock files in ``<root>/locks``.

    Safe to use from several threads (each has its own connection) and after ``fork()``.

    Example:
        >>> with RunStore(tmp_path / "pipelines") as runs:  # doctest: +SKIP
        ...     runs.create("pl-1", "faq", manifest, "/srv/pipelines", actor="alice")
    """

    def __init__(self, root: Path, *, url: str | None = None) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        (self.root / "locks").mkdir(exist_ok=True)
        self.path = self.root / "runs.sqlite"
        self._db = StoreDatabase(self.path, STORE, MIGRATIONS / STORE, url=url)
        self._db.database  # noqa: B018  (opened and migrated here, as before)

    def __enter__(self) -> RunStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close this process's pooled connections to the store; a later call reopens."""
        self._db.close()

    def create(self, run_id: str, pipeline: str, manifest: dict, base_dir: str, actor: str) -> Run:
        now = time.time()
        with self._db.write() as db:
            if db.execute(
                text("SELECT 1 FROM pipeline_runs WHERE id = :id"), {"id": run_id}
            ).first():
                raise Conflict(f"pipeline run {run_id!r} exists already", param="run")
            db.execute(
                text(
                    "INSERT INTO pipeline_runs (id, pipeline, manifest, base_dir, status, "
                    "actor, created, updated) VALUES (:id, :pipeline, :manifest, :base_dir, "
                    "'queued', :actor, :now, :now)"
                ),
                {"id": run_id, "pipeline": pipeline, "manifest": json.dumps(manifest),
                 "base_dir": base_dir, "actor": actor, "now": now},
            )  # fmt: skip
        self.event(run_id, None, "created", {"actor": actor})
        return self.get(run_id)

    def get(self, run_id: str, *, holder: bool = False) -> Run:
        """The run; ``running`` with no driver is shown ``interrupted``.

        ``holder``: the caller holds the run's lock (:meth:`lock`) and has not started
        driving it, so a stored ``running`` is a dead driver's.
        """
        with self._db.read() as db:
            row = db.execute(
                text(f"SELECT {_RUN_COLUMNS} FROM pipeline_runs WHERE id = :id"), {"id": run_id}
            ).first()
            if row is None:
                ids = [r[0] for r in db.execute(text("SELECT id FROM pipeline_runs"))]
        if row is None:
            raise NotFound(f"no pipeline run {run_id!r}{did_you_mean(run_id, ids)}", param="run")
        run = _run(row)
        if run.status == "running" and (holder or not self.locked(run_id)):
            run = _replace_status(run, "interrupted")
        return run

    def list(self, pipeline: str | None = None, limit: int = 50) -> builtins.list[Run]:
        q = f"SELECT {_RUN_COLUMNS} FROM pipeline_runs"
        args: dict[str, Any] = {"limit": limit}
        if pipeline:
            q += " WHERE pipeline = :pipeline"
            args["pipeline"] = pipeline
        with self._db.read() as db:
            rows = db.execute(text(q + " ORDER BY created DESC LIMIT :limit"), args).all()
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
        sets = ", ".join(f"{k} = :{k}" for k in values)
        with self._db.write() as db:
            db.execute(
                text(f"UPDATE pipeline_runs SET {sets}, updated = :updated_ WHERE id = :id_"),
                {**values, "updated_": time.time(), "id_": run_id},
            )

    def event(self, run_id: str, step: str | None, kind: str, data: dict[str, Any]) -> int:
        # A driver writes one per training step: straight on a pooled driver connection.
        with self._db.transaction() as db:
            (seq,) = db.first(
                "SELECT COALESCE(MAX(seq), 0) + 1 FROM pipeline_events WHERE run_id = :run_id",
                {"run_id": run_id},
            ) or (1,)
            db.execute(
                "INSERT INTO pipeline_events (run_id, seq, at, step, kind, data) "
                "VALUES (:run_id, :seq, :at, :step, :kind, :data)",
                {"run_id": run_id, "seq": int(seq), "at": time.time(), "step": step,
                 "kind": kind, "data": json.dumps(data, default=str)},
            )  # fmt: skip
        return int(seq)

    def events(self, run_id: str, after: int = 0, limit: int = 10_000) -> builtins.list[Event]:
        self.get(run_id)
        with self._db.read() as db:
            rows = db.execute(
                text(
                    "SELECT seq, at, step, kind, data FROM pipeline_events WHERE run_id = :run_id "
                    "AND seq > :after ORDER BY seq LIMIT :limit"
                ),
                {"run_id": run_id, "after": after, "limit": limit},
            ).all()
        return [Event(r[0], r[1], r[2], r[3], json.loads(r[4])) for r in rows]

    def locked(self, run_id: str) -> bool:
        """Whether some process is driving the run now (on any machine, where the store is
        on a PostgreSQL server shared by several)."""
        path = self.root / "locks" / f"{run_id}.lock"
        if path.exists():
            with path.open("a") as fh:
                try:
                    fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    return True
                fcntl.flock(fh, fcntl.LOCK_UN)
        if self._db.dialect == "sqlite":
            return False
        with self._db.advisory_lock(f"pipeline_run_{run_id}") as had:
            return not had

    @contextlib.contextmanager
    def lock(self, run_id: str, *, wait_s: float = 0.0) -> Iterator[None]:
        """Hold the run's driver lock (Conflict if another process drives it): a lock file
        on this machine and, on a PostgreSQL server, the run's advisory lock there, which
        the server releases when this process's connection goes.

        ``wait_s``: how long to wait for a lock held only for a moment (a status read
        that settles a dead driver's run holds it for milliseconds).
        """
        if not _LOCK_NAME_RE.match(run_id):  # a run id names a file here: never a path
            raise NotFound(f"no pipeline run {run_id[:80]!r}", param="run")
        busy = Conflict(
            f"pipeline run {run_id} is being driven by another process; "
            "see `qingliang pipelines status`",
            param="run",
        )
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
                        raise busy from None
                    time.sleep(0.05)
            os.ftruncate(fd, 0)
            os.write(fd, str(os.getpid()).encode())
            remaining = max(0.0, deadline - time.monotonic())
            with self._db.advisory_lock(f"pipeline_run_{run_id}", wait_s=remaining) as had:
                if not had:
                    raise busy
                yield
        finally:
            os.close(fd)


def _run(row: Any) -> Run:
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

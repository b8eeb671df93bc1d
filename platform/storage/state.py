"""The applied-manifest store: what `qingliang apply` asked for, in SQLite.

`apply` writes a row only after the deployment was handed to Ray Serve; the gateway
reads it to know which deployments and adapters exist; `get`, `diff` and `delete`
read it too. Each write is one transaction, so a failed apply leaves the previous
rows untouched.

Example:
    >>> store = StateStore(Path("/tmp/ql/state.sqlite"))   # doctest: +SKIP
    >>> store.put("ModelDeployment", "qwen", {"spec": {}})  # doctest: +SKIP
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

_SCHEMA = """
CREATE TABLE IF NOT EXISTS manifests (
    kind TEXT NOT NULL,
    name TEXT NOT NULL,
    body TEXT NOT NULL,
    plan TEXT,
    generation INTEGER NOT NULL DEFAULT 1,
    applied_at REAL NOT NULL,
    PRIMARY KEY (kind, name)
);
"""


@dataclass(frozen=True)
class Applied:
    kind: str
    name: str
    body: dict
    generation: int
    applied_at: float
    plan: dict | None = None


def create_private(path: Path) -> None:
    """Create the file ``path`` readable by its owner only (0600), and its directory (0700)
    if missing; an existing file or directory is left as it is.

    SQLite creates a database with the process's umask (usually 0644) and gives its
    ``-wal`` and ``-shm`` files the database's mode, so the file is created here first.
    Whichever of the platform's stores opens a new file first (the state store and the key
    store share ``state.sqlite``), it ends up owner-only.

    Example:
        >>> import tempfile, stat
        >>> p = Path(tempfile.mkdtemp()) / "new" / "x.sqlite"
        >>> create_private(p)
        >>> oct(stat.S_IMODE(p.stat().st_mode)), oct(stat.S_IMODE(p.parent.stat().st_mode))
        ('0o600', '0o700')
    """
    # Parents above it keep the default mode; the data directory itself is owner-only.
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    with suppress(FileExistsError):
        os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))


@contextmanager
def open_db(path: Path, schema: str) -> Iterator[sqlite3.Connection]:
    """An autocommit connection to ``path`` in WAL mode with ``schema`` applied (idempotent
    ``CREATE ... IF NOT EXISTS`` statements), closed on exit. Callers open their own
    ``BEGIN IMMEDIATE`` transactions for writes. A new file is created owner-only
    (:func:`create_private`)."""
    create_private(path)
    conn = sqlite3.connect(path, timeout=30, isolation_level=None)
    try:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.executescript(schema)
        yield conn
    finally:
        conn.close()


class StateStore:
    """Applied manifests by (kind, name). Safe to share between processes."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)

    @contextmanager
    def _conn(self) -> Iterator[sqlite3.Connection]:
        with open_db(self.path, _SCHEMA) as conn:
            yield conn

    def put(self, kind: str, name: str, body: dict, plan: dict | None = None) -> Applied:
        now = time.time()
        text = json.dumps(body, sort_keys=True)
        plan_text = None if plan is None else json.dumps(plan, sort_keys=True)
        with self._conn() as c:
            c.execute("BEGIN IMMEDIATE")
            row = c.execute(
                "SELECT generation, body FROM manifests WHERE kind=? AND name=?", (kind, name)
            ).fetchone()
            gen = 1 if row is None else row[0] + (0 if row[1] == text else 1)
            c.execute(
                "INSERT INTO manifests(kind, name, body, plan, generation, applied_at) "
                "VALUES (?,?,?,?,?,?) ON CONFLICT(kind, name) DO UPDATE SET "
                "body=excluded.body, plan=excluded.plan, generation=excluded.generation, "
                "applied_at=excluded.applied_at",
                (kind, name, text, plan_text, gen, now),
            )
            c.execute("COMMIT")
        return Applied(kind, name, body, gen, now, plan)

    def get(self, kind: str, name: str) -> Applied | None:
        with self._conn() as c:
            row = c.execute(
                "SELECT kind, name, body, generation, applied_at, plan FROM manifests "
                "WHERE kind=? AND name=?",
                (kind, name),
            ).fetchone()
        return None if row is None else _row(row)

    def list(self, kind: str | None = None) -> list[Applied]:
        q = "SELECT kind, name, body, generation, applied_at, plan FROM manifests"
        args: tuple = ()
        if kind:
            q += " WHERE kind=?"
            args = (kind,)
        with self._conn() as c:
            rows = c.execute(q + " ORDER BY kind, name", args).fetchall()
        return [_row(r) for r in rows]

    def delete(self, kind: str, name: str) -> bool:
        with self._conn() as c:
            cur = c.execute("DELETE FROM manifests WHERE kind=? AND name=?", (kind, name))
        return cur.rowcount > 0


def _row(r: tuple) -> Applied:
    plan = json.loads(r[5]) if r[5] else None
    return Applied(r[0], r[1], json.loads(r[2]), r[3], r[4], plan)

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
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from qingliang.platform.storage.sqlite import open_db, write

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
        with self._conn() as c, write(c):
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

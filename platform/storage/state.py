"""The applied-manifest store: what `qingliang apply` asked for.

`apply` writes a row only after the deployment was handed to Ray Serve; the gateway
reads it to know which deployments and adapters exist; `get`, `diff` and `delete`
read it too. Each write is one transaction, so a failed apply leaves the previous
rows untouched. It lives in ``state.sqlite`` or, when ``$QINGLIANG_DATABASE_URL`` is set,
in that database (:mod:`~qingliang.platform.storage.database`, docs/storage.md).

Example:
    >>> import tempfile
    >>> store = StateStore(Path(tempfile.mkdtemp()) / "state.sqlite", url=None)
    >>> store.put("ModelDeployment", "qwen", {"spec": {}}).generation
    1
    >>> [a.name for a in store.list("ModelDeployment")]
    ['qwen']
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import text

from qingliang.platform.storage.database import Database, database_url, open_database

STORE = "state"
MIGRATIONS = Path(__file__).resolve().parent / "migrations" / STORE
_COLUMNS = "kind, name, body, generation, applied_at, plan"


@dataclass(frozen=True)
class Applied:
    kind: str
    name: str
    body: dict
    generation: int
    applied_at: float
    plan: dict | None = None


class StateStore:
    """Applied manifests by (kind, name). Safe to share between threads and processes.

    Args:
        path: The SQLite file (usually ``Settings.state_db``), used when no shared database
            is configured.
        url: The database; default ``$QINGLIANG_DATABASE_URL`` when set, else ``path``.
            Nothing is opened until a method needs it.
    """

    def __init__(self, path: Path, *, url: str | None = None) -> None:
        self.path = Path(path)
        self.url = url or database_url(self.path.parent, STORE, file=self.path.name)
        self._db: Database | None = None

    def __repr__(self) -> str:
        return f"StateStore({self.path.name!r})"

    @property
    def db(self) -> Database:
        """The store's database, opened (and migrated) on first use."""
        if self._db is None:
            self._db = open_database(self.url, store=STORE, migrations=MIGRATIONS)
        return self._db

    def put(self, kind: str, name: str, body: dict, plan: dict | None = None) -> Applied:
        now = time.time()
        body_text = json.dumps(body, sort_keys=True)
        plan_text = None if plan is None else json.dumps(plan, sort_keys=True)
        with self.db.write() as c:
            row = c.execute(
                text("SELECT generation, body FROM manifests WHERE kind = :kind AND name = :name"),
                {"kind": kind, "name": name},
            ).first()
            gen = 1 if row is None else int(row[0]) + (0 if row[1] == body_text else 1)
            c.execute(
                text(
                    "INSERT INTO manifests (kind, name, body, plan, generation, applied_at) "
                    "VALUES (:kind, :name, :body, :plan, :gen, :now) "
                    "ON CONFLICT (kind, name) DO UPDATE SET body = excluded.body, "
                    "plan = excluded.plan, generation = excluded.generation, "
                    "applied_at = excluded.applied_at"
                ),
                {
                    "kind": kind,
                    "name": name,
                    "body": body_text,
                    "plan": plan_text,
                    "gen": gen,
                    "now": now,
                },
            )
        return Applied(kind, name, body, gen, now, plan)

    def get(self, kind: str, name: str) -> Applied | None:
        with self.db.read() as c:
            row = c.execute(
                text(f"SELECT {_COLUMNS} FROM manifests WHERE kind = :kind AND name = :name"),
                {"kind": kind, "name": name},
            ).first()
        return None if row is None else _row(tuple(row))

    def list(self, kind: str | None = None) -> list[Applied]:
        query = f"SELECT {_COLUMNS} FROM manifests"
        args: dict[str, str] = {}
        if kind:
            query += " WHERE kind = :kind"
            args = {"kind": kind}
        with self.db.read() as c:
            rows = c.execute(text(query + " ORDER BY kind, name"), args).all()
        return [_row(tuple(r)) for r in rows]

    def delete(self, kind: str, name: str) -> bool:
        with self.db.write() as c:
            result = c.execute(
                text("DELETE FROM manifests WHERE kind = :kind AND name = :name"),
                {"kind": kind, "name": name},
            )
        return result.rowcount > 0


def _row(r: tuple) -> Applied:
    plan = json.loads(r[5]) if r[5] else None
    return Applied(r[0], r[1], json.loads(r[2]), int(r[3]), float(r[4]), plan)

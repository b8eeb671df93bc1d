"""The decision log and the router state, in one SQLite file.

Every routing decision is a row of ``decisions`` with the propensity it was made with, the
encoded features and the policy version; reward parts are added as they arrive and the
row is closed once, with its combined reward. Closed rows are what off-policy evaluation
and refits read. ``router_state`` holds each router's configuration and policy state.

Writes that belong together (closing a decision and saving the policy it updated) are one
``BEGIN IMMEDIATE`` transaction, so a crash leaves either both or neither. The file is in
WAL mode with ``synchronous=NORMAL``: a crash of the process loses nothing committed, a
power loss may lose the last few commits (never corrupts the file).

Connections are opened lazily (not in the constructor), one per thread (SQLite
connections are bound to their thread); :meth:`DecisionLog.disconnect` closes the calling
thread's.

Example:
    >>> import tempfile
    >>> log = DecisionLog(Path(tempfile.mkdtemp()) / "router.sqlite")
    >>> log.record(decision_id="d1", router="desk/triage", run_id="r1", tenant=None,
    ...            arm="fast", propensity=0.9, features=[1.0], scores={"fast": 0.2},
    ...            policy_version=1)
    >>> log.add_part("d1", "success", 1.0)
    {'success': 1.0}
    >>> log.close("d1", 1.0), log.close("d1", 1.0)
    (True, False)
    >>> [d.reward for d in log.logged("desk/triage")]
    [1.0]
"""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
import time
from collections.abc import Mapping, Sequence
from contextlib import AbstractContextManager, ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from qingliang.platform.errors import Conflict, NotFound
from qingliang.platform.storage.sqlite import open_db, write

log = logging.getLogger(__name__)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS decisions (
    id TEXT PRIMARY KEY,
    router TEXT NOT NULL,
    run_id TEXT NOT NULL,
    tenant TEXT,
    arm TEXT NOT NULL,
    propensity REAL NOT NULL,
    features TEXT NOT NULL,
    scores TEXT NOT NULL,
    policy_version INTEGER NOT NULL,
    created REAL NOT NULL,
    parts TEXT NOT NULL DEFAULT '{}',
    reward REAL,
    closed REAL
);
CREATE INDEX IF NOT EXISTS decisions_run ON decisions(run_id);
CREATE INDEX IF NOT EXISTS decisions_router ON decisions(router, created);
CREATE INDEX IF NOT EXISTS decisions_closed ON decisions(router, closed);
CREATE TABLE IF NOT EXISTS router_state (
    router TEXT PRIMARY KEY,
    config TEXT NOT NULL,
    state TEXT NOT NULL,
    version INTEGER NOT NULL,
    updated REAL NOT NULL
);
"""

#: State saves between two explicit WAL checkpoints (a save is tens of kB), and the
#: WAL size (pages) past which SQLite checkpoints by itself, on whichever commit crosses it.
_CHECKPOINT_EVERY = 256
_AUTO_CHECKPOINT_PAGES = 8192

_COLUMNS = (
    "id, router, run_id, tenant, arm, propensity, features, scores, policy_version, "
    "created, parts, reward, closed"
)


@dataclass(frozen=True)
class LoggedDecision:
    """One row of the decision log (``reward`` and ``closed`` are None while open)."""

    id: str
    router: str
    run_id: str
    tenant: str | None
    arm: str
    propensity: float
    features: list[float]
    scores: dict[str, float]
    policy_version: int
    created: float
    parts: dict[str, float]
    reward: float | None
    closed: float | None

    @property
    def is_closed(self) -> bool:
        return self.closed is not None


@dataclass(frozen=True)
class StoredState:
    """A router's saved configuration and policy state."""

    router: str
    config: dict[str, Any]
    state: dict[str, Any]
    version: int
    updated: float = 0.0


def _row(r: Sequence[Any]) -> LoggedDecision:
    return LoggedDecision(
        r[0], r[1], r[2], r[3], r[4], r[5], json.loads(r[6]), json.loads(r[7]), r[8], r[9],
        json.loads(r[10]), r[11], r[12],
    )  # fmt: skip


class DecisionLog:
    """Decisions, their rewards and the routers' state in the SQLite file ``path``."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._local = threading.local()

    def _conn(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            stack = ExitStack()
            conn = stack.enter_context(open_db(self.path, _SCHEMA))
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute(f"PRAGMA wal_autocheckpoint={_AUTO_CHECKPOINT_PAGES}")
            self._local.conn, self._local.stack = conn, stack
        return conn

    def disconnect(self) -> None:
        """Close the calling thread's connection (a later call opens a new one)."""
        stack = getattr(self._local, "stack", None)
        if stack is not None:
            stack.close()
            self._local.conn = self._local.stack = None

    def _tx(self) -> AbstractContextManager[sqlite3.Connection]:
        """One write transaction on the calling thread's connection."""
        return write(self._conn())

    # -- decisions ---------------------------------------------------------------------
    def record(
        self,
        *,
        decision_id: str,
        router: str,
        run_id: str,
        tenant: str | None,
        arm: str,
        propensity: float,
        features: Sequence[float],
        scores: Mapping[str, float],
        policy_version: int,
        created: float | None = None,
    ) -> None:
        """Log a decision (open, no parts yet)."""
        self._conn().execute(
            f"INSERT INTO decisions({_COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?,?,'{{}}',NULL,NULL)",
            (
                decision_id, router, run_id, tenant, arm, float(propensity),
                json.dumps([float(v) for v in features]), json.dumps(dict(scores)),
                int(policy_version), time.time() if created is None else created,
            ),
        )  # fmt: skip

    def get(self, decision_id: str) -> LoggedDecision | None:
        r = (
            self._conn()
            .execute(f"SELECT {_COLUMNS} FROM decisions WHERE id=?", (decision_id,))
            .fetchone()
        )
        return None if r is None else _row(r)

    def add_parts(self, decision_id: str, parts: Mapping[str, float]) -> dict[str, float]:
        """Merge ``parts`` into an open decision's parts (a part given again replaces the
        earlier value); returns all its parts. NotFound / Conflict (closed) otherwise."""
        with self._tx() as c:
            r = c.execute("SELECT parts, closed FROM decisions WHERE id=?", (decision_id,))
            row = r.fetchone()
            if row is None:
                raise NotFound(f"no routing decision {decision_id!r}")
            if row[1] is not None:
                raise Conflict(f"routing decision {decision_id!r} is already closed")
            merged = {**json.loads(row[0]), **{k: float(v) for k, v in parts.items()}}
            c.execute("UPDATE decisions SET parts=? WHERE id=?", (json.dumps(merged), decision_id))
        return merged

    def add_part(self, decision_id: str, part: str, value: float) -> dict[str, float]:
        """:meth:`add_parts` with one part."""
        return self.add_parts(decision_id, {part: value})

    def close(
        self,
        decision_id: str,
        reward: float,
        *,
        closed_at: float | None = None,
        save: StoredState | None = None,
    ) -> bool:
        """Close an open decision with ``reward`` and, in the same transaction, save the
        router state ``save``. False (and nothing written) if it was closed already."""
        with self._tx() as c:
            cur = c.execute(
                "UPDATE decisions SET reward=?, closed=? WHERE id=? AND closed IS NULL",
                (float(reward), time.time() if closed_at is None else closed_at, decision_id),
            )
            if cur.rowcount != 1:
                return False
            if save is not None:
                self._save(c, save)
        if save is not None:
            self._saved()
        return True

    def revise(
        self,
        decision_id: str,
        parts: Mapping[str, float],
        reward: float,
        *,
        save: StoredState | None = None,
    ) -> bool:
        """Replace a closed decision's parts and reward (late feedback), saving ``save`` in
        the same transaction. False (nothing written) if it is not closed."""
        with self._tx() as c:
            cur = c.execute(
                "UPDATE decisions SET parts=?, reward=? WHERE id=? AND closed IS NOT NULL",
                (json.dumps(dict(parts)), float(reward), decision_id),
            )
            if cur.rowcount != 1:
                return False
            if save is not None:
                self._save(c, save)
        if save is not None:
            self._saved()
        return True

    def by_run(self, run_id: str) -> list[LoggedDecision]:
        """A run's decisions, oldest first."""
        rows = self._conn().execute(
            f"SELECT {_COLUMNS} FROM decisions WHERE run_id=? ORDER BY created, rowid", (run_id,)
        )
        return [_row(r) for r in rows.fetchall()]

    def logged(self, router: str, limit: int | None = None) -> list[LoggedDecision]:
        """The router's closed decisions, oldest first (the latest ``limit`` if given)."""
        q = f"SELECT {_COLUMNS} FROM decisions WHERE router=? AND closed IS NOT NULL"
        if limit is None:
            rows = self._conn().execute(q + " ORDER BY created, rowid", (router,)).fetchall()
        else:
            rows = (
                self._conn()
                .execute(q + " ORDER BY created DESC, rowid DESC LIMIT ?", (router, int(limit)))
                .fetchall()[::-1]
            )
        return [_row(r) for r in rows]

    def open_before(self, before: float) -> list[LoggedDecision]:
        """Open decisions created before ``before`` (every router), oldest first."""
        rows = self._conn().execute(
            f"SELECT {_COLUMNS} FROM decisions WHERE closed IS NULL AND created < ? "
            "ORDER BY created, rowid",
            (before,),
        )
        return [_row(r) for r in rows.fetchall()]

    def counts(self, router: str) -> dict[str, Any]:
        """Decisions, closed ones and, per arm, count / closed / mean reward / mean logged
        propensity."""
        rows = (
            self._conn()
            .execute(
                "SELECT arm, COUNT(*), COUNT(closed), AVG(reward), AVG(propensity) FROM decisions "
                "WHERE router=? GROUP BY arm ORDER BY arm",
                (router,),
            )
            .fetchall()
        )
        arms = {
            a: {"count": n, "closed": k, "mean_reward": m, "mean_propensity": p}
            for a, n, k, m, p in rows
        }
        total = sum(v["count"] for v in arms.values())
        closed = sum(v["closed"] for v in arms.values())
        return {"decisions": total, "closed": closed, "open": total - closed, "arms": arms}

    def histogram(
        self, router: str, start: float, bucket_s: float, buckets: int
    ) -> dict[str, list[tuple[int, str, int, float | None]]]:
        """Per time bucket ``[start + i·bucket_s, start + (i+1)·bucket_s)``, ``i < buckets``:
        ``decisions`` made, ``(i, arm, count, None)``, and ``rewards`` (decisions closed),
        ``(i, arm, count, sum of rewards)``. Aggregated in SQLite over the router's
        indexes, so the work grows with the decisions in the window, not the whole log."""
        end = start + bucket_s * buckets
        out: dict[str, list[tuple[int, str, int, float | None]]] = {}
        for key, col, agg in (
            ("decisions", "created", "NULL"),
            ("rewards", "closed", "SUM(reward)"),
        ):
            rows = self._conn().execute(
                f"SELECT CAST((({col}) - ?) / ? AS INTEGER) AS b, arm, COUNT(*), {agg} "
                f"FROM decisions WHERE router=? AND {col} >= ? AND {col} < ? GROUP BY b, arm",
                (start, bucket_s, router, start, end),
            )
            out[key] = [(min(int(b), buckets - 1), a, n, v) for b, a, n, v in rows.fetchall()]
        return out

    # -- router state ------------------------------------------------------------------
    @staticmethod
    def _save(c: sqlite3.Connection, s: StoredState) -> None:
        c.execute(
            "INSERT INTO router_state(router, config, state, version, updated) VALUES (?,?,?,?,?) "
            "ON CONFLICT(router) DO UPDATE SET config=excluded.config, state=excluded.state, "
            "version=excluded.version, updated=excluded.updated",
            (
                s.router,
                json.dumps(s.config, sort_keys=True),
                json.dumps(s.state),
                int(s.version),
                s.updated or time.time(),
            ),
        )

    def save_state(self, stored: StoredState) -> None:
        """Write a router's configuration and policy state (one transaction)."""
        with self._tx() as c:
            self._save(c, stored)
        self._saved()

    def _saved(self) -> None:
        # State saves are what grows the WAL; checkpointing here, on the learning path, and
        # rarely (a checkpoint slows the next few operations) keeps SQLite's automatic
        # checkpoint from landing on a decision.
        n = getattr(self._local, "saves", 0) + 1
        self._local.saves = n
        if n % _CHECKPOINT_EVERY == 0:
            self._conn().execute("PRAGMA wal_checkpoint(PASSIVE)")

    def load_state(self, router: str) -> StoredState | None:
        r = (
            self._conn()
            .execute(
                "SELECT router, config, state, version, updated FROM router_state WHERE router=?",
                (router,),
            )
            .fetchone()
        )
        if r is None:
            return None
        return StoredState(r[0], json.loads(r[1]), json.loads(r[2]), r[3], r[4])

    def stored_routers(self) -> list[str]:
        rows = self._conn().execute("SELECT router FROM router_state ORDER BY router")
        return [r[0] for r in rows.fetchall()]

"""The decision log and the router state, in one database (SQLite file or PostgreSQL).

Every routing decision is a row of ``decisions`` with the propensity it was made with, the
encoded features and the policy version; reward parts are added as they arrive and the
row is closed once, with its combined reward. Closed rows are what off-policy evaluation
and refits read. ``router_state`` holds each router's configuration and policy state.

Writes that belong together (closing a decision and saving the policy it updated) are one
write transaction of the storage layer (:mod:`~qingliang.platform.storage.database`), so a
crash leaves either both or neither. A SQLite file is in WAL mode with
``synchronous=NORMAL``: a crash of the process loses nothing committed, a power loss may
lose the last few commits (never corrupts the file). With ``$QINGLIANG_DATABASE_URL`` the
tables live in that PostgreSQL database (migrations: ``platform/storage/migrations/router_log``).

The database is opened lazily (not in the constructor), its connections pooled across
threads; :meth:`DecisionLog.disconnect` closes this process's pooled connections.

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
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from qingliang.platform.errors import Conflict, NotFound
from qingliang.platform.storage.handles import MIGRATIONS, Statements, StoreDatabase

log = logging.getLogger(__name__)

#: The store's name on the storage layer (version table ``qingliang_router_log_version``).
STORE = "router_log"

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
    """Decisions, their rewards and the routers' state in the SQLite file ``path``, or in
    ``url`` / ``$QINGLIANG_DATABASE_URL`` where given."""

    def __init__(self, path: Path, *, url: str | None = None) -> None:
        self.path = Path(path)
        self._db = StoreDatabase(
            self.path,
            STORE,
            MIGRATIONS / STORE,
            url=url,
            pragmas=("synchronous=NORMAL", f"wal_autocheckpoint={_AUTO_CHECKPOINT_PAGES}"),
        )
        self._saves = 0
        #: What breaks ties between decisions made at the same instant: the order they
        #: were logged in (SQLite's rowid; an identity column on PostgreSQL).
        self._order = "rowid" if self._db.dialect == "sqlite" else "seq"

    def disconnect(self) -> None:
        """Close this process's pooled connections (a later call opens new ones)."""
        self._db.close()

    def _rows(self, sql: str, **params: Any) -> list[tuple]:
        # One statement straight on a pooled driver connection: decisions are a hot path.
        return self._db.query(sql, params)

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
        with self._db.transaction() as c:
            c.execute(
                f"INSERT INTO decisions({_COLUMNS}) VALUES (:id, :router, :run_id, :tenant, "
                ":arm, :propensity, :features, :scores, :policy_version, :created, '{}', "
                "NULL, NULL)",
                {
                    "id": decision_id, "router": router, "run_id": run_id, "tenant": tenant,
                    "arm": arm, "propensity": float(propensity),
                    "features": json.dumps([float(v) for v in features]),
                    "scores": json.dumps(dict(scores)), "policy_version": int(policy_version),
                    "created": time.time() if created is None else float(created),
                },
            )  # fmt: skip

    def get(self, decision_id: str) -> LoggedDecision | None:
        rows = self._rows(f"SELECT {_COLUMNS} FROM decisions WHERE id = :id", id=decision_id)
        return _row(rows[0]) if rows else None

    def add_parts(self, decision_id: str, parts: Mapping[str, float]) -> dict[str, float]:
        """Merge ``parts`` into an open decision's parts (a part given again replaces the
        earlier value); returns all its parts. NotFound / Conflict (closed) otherwise."""
        with self._db.transaction() as c:
            row = c.first("SELECT parts, closed FROM decisions WHERE id = :id", {"id": decision_id})
            if row is None:
                raise NotFound(f"no routing decision {decision_id!r}")
            if row[1] is not None:
                raise Conflict(f"routing decision {decision_id!r} is already closed")
            merged = {**json.loads(row[0]), **{k: float(v) for k, v in parts.items()}}
            c.execute(
                "UPDATE decisions SET parts = :parts WHERE id = :id",
                {"parts": json.dumps(merged), "id": decision_id},
            )
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
        with self._db.transaction() as c:
            changed = c.execute(
                "UPDATE decisions SET reward = :reward, closed = :closed "
                "WHERE id = :id AND closed IS NULL",
                {
                    "reward": float(reward),
                    "closed": time.time() if closed_at is None else closed_at,
                    "id": decision_id,
                },
            )
            if changed != 1:
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
        with self._db.transaction() as c:
            changed = c.execute(
                "UPDATE decisions SET parts = :parts, reward = :reward "
                "WHERE id = :id AND closed IS NOT NULL",
                {"parts": json.dumps(dict(parts)), "reward": float(reward), "id": decision_id},
            )
            if changed != 1:
                return False
            if save is not None:
                self._save(c, save)
        if save is not None:
            self._saved()
        return True

    def by_run(self, run_id: str) -> list[LoggedDecision]:
        """A run's decisions, oldest first."""
        rows = self._rows(
            f"SELECT {_COLUMNS} FROM decisions WHERE run_id = :run ORDER BY created, {self._order}",
            run=run_id,
        )
        return [_row(r) for r in rows]

    def logged(self, router: str, limit: int | None = None) -> list[LoggedDecision]:
        """The router's closed decisions, oldest first (the latest ``limit`` if given)."""
        q = f"SELECT {_COLUMNS} FROM decisions WHERE router = :router AND closed IS NOT NULL"
        if limit is None:
            rows = self._rows(q + f" ORDER BY created, {self._order}", router=router)
        else:
            rows = self._rows(
                q + f" ORDER BY created DESC, {self._order} DESC LIMIT :limit",
                router=router,
                limit=int(limit),
            )[::-1]
        return [_row(r) for r in rows]

    def open_before(self, before: float) -> list[LoggedDecision]:
        """Open decisions created before ``before`` (every router), oldest first."""
        rows = self._rows(
            f"SELECT {_COLUMNS} FROM decisions WHERE closed IS NULL AND created < :before "
            f"ORDER BY created, {self._order}",
            before=before,
        )
        return [_row(r) for r in rows]

    def counts(self, router: str) -> dict[str, Any]:
        """Decisions, closed ones and, per arm, count / closed / mean reward / mean logged
        propensity."""
        rows = self._rows(
            "SELECT arm, COUNT(*), COUNT(closed), AVG(reward), AVG(propensity) FROM decisions "
            "WHERE router = :router GROUP BY arm ORDER BY arm",
            router=router,
        )
        arms = {
            a: {"count": int(n), "closed": int(k), "mean_reward": _float(m),
                "mean_propensity": _float(p)}
            for a, n, k, m, p in rows
        }  # fmt: skip
        total = sum(v["count"] for v in arms.values())
        closed = sum(v["closed"] for v in arms.values())
        return {"decisions": total, "closed": closed, "open": total - closed, "arms": arms}

    def histogram(
        self, router: str, start: float, bucket_s: float, buckets: int
    ) -> dict[str, list[tuple[int, str, int, float | None]]]:
        """Per time bucket ``[start + i·bucket_s, start + (i+1)·bucket_s)``, ``i < buckets``:
        ``decisions`` made, ``(i, arm, count, None)``, and ``rewards`` (decisions closed),
        ``(i, arm, count, sum of rewards)``. Aggregated in the database over the router's
        indexes, so the work grows with the decisions in the window, not the whole log."""
        end = start + bucket_s * buckets
        out: dict[str, list[tuple[int, str, int, float | None]]] = {}
        for key, col, agg in (
            ("decisions", "created", "NULL"),
            ("rewards", "closed", "SUM(reward)"),
        ):
            # The bucket: the whole part of a non-negative quotient (CAST truncates on
            # SQLite but rounds on PostgreSQL, hence FLOOR there).
            quotient = f"(({col}) - :start) / :bucket_s"
            if self._db.dialect != "sqlite":
                quotient = f"FLOOR({quotient})"
            rows = self._rows(
                f"SELECT CAST({quotient} AS INTEGER) AS b, arm, COUNT(*), {agg} "
                f"FROM decisions WHERE router = :router AND {col} >= :start AND {col} < :end "
                "GROUP BY b, arm",
                start=float(start), bucket_s=float(bucket_s), router=router, end=float(end),
            )  # fmt: skip
            out[key] = [(min(int(b), buckets - 1), a, int(n), _float(v)) for b, a, n, v in rows]
        return out

    # -- router state ------------------------------------------------------------------
    @staticmethod
    def _save(c: Statements, s: StoredState) -> None:
        c.execute(
            "INSERT INTO router_state(router, config, state, version, updated) "
            "VALUES (:router, :config, :state, :version, :updated) "
            "ON CONFLICT(router) DO UPDATE SET config=excluded.config, state=excluded.state, "
            "version=excluded.version, updated=excluded.updated",
            {
                "router": s.router,
                "config": json.dumps(s.config, sort_keys=True),
                "state": json.dumps(s.state),
                "version": int(s.version),
                "updated": s.updated or time.time(),
            },
        )

    def save_state(self, stored: StoredState) -> None:
        """Write a router's configuration and policy state (one transaction)."""
        with self._db.transaction() as c:
            self._save(c, stored)
        self._saved()

    def _saved(self) -> None:
        # State saves are what grows a SQLite WAL; checkpointing here, on the learning path,
        # and rarely (a checkpoint slows the next few operations) keeps SQLite's automatic
        # checkpoint from landing on a decision.
        self._saves += 1
        if self._saves % _CHECKPOINT_EVERY == 0:
            self._db.checkpoint()

    def load_state(self, router: str) -> StoredState | None:
        rows = self._rows(
            "SELECT router, config, state, version, updated FROM router_state "
            "WHERE router = :router",
            router=router,
        )
        if not rows:
            return None
        r = rows[0]
        return StoredState(r[0], json.loads(r[1]), json.loads(r[2]), int(r[3]), float(r[4]))

    def stored_routers(self) -> list[str]:
        return [r[0] for r in self._rows("SELECT router FROM router_state ORDER BY router")]


def _float(v: Any) -> float | None:
    return None if v is None else float(v)

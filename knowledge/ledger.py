"""The knowledge layer's own records, in SQLite: versions, snapshots, learned answers, audit.

The vector store holds the chunks; this ledger holds what is *about* a knowledge base:

- ``versions``: a KB's version counter. Every change of its points (a sync that wrote or
  deleted something, a rollback, an answer added or retracted) makes a new version, and the
  points written by it carry that number, so a citation names the version its text is from.
- ``snapshots``: which versions were saved (by :mod:`qingliang.knowledge.snapshots`) and where.
- ``answers``: approved question/answer pairs and corrections that joined a KB, with their
  provenance; a retracted one keeps its row (status ``retracted``, who and why) so the
  history stays auditable and a rollback never brings it back.
- ``events``: an append-only audit log (who did what to which KB, when).

Every write is one ``BEGIN IMMEDIATE`` transaction, so concurrent writers (the CLI and the
gateway's knowledge server) serialise and a failure leaves the previous rows.

Example:
    >>> ledger = KnowledgeLedger(Path("/tmp/ql/knowledge.sqlite"))  # doctest: +SKIP
    >>> ledger.bump("gov-policy", actor="cli", action="sync", detail={"added": 3})  # doctest: +SKIP
    1
"""

from __future__ import annotations

import json
import logging
import sqlite3
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from qingliang.platform.storage.sqlite import open_db, write

log = logging.getLogger(__name__)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS versions (
    kb TEXT PRIMARY KEY,
    version INTEGER NOT NULL,
    updated_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS snapshots (
    kb TEXT NOT NULL,
    version INTEGER NOT NULL,
    created_at REAL NOT NULL,
    points INTEGER NOT NULL,
    path TEXT NOT NULL,
    note TEXT NOT NULL DEFAULT '',
    PRIMARY KEY (kb, version)
);
CREATE TABLE IF NOT EXISTS answers (
    id TEXT PRIMARY KEY,
    kb TEXT NOT NULL,
    tenant TEXT NOT NULL,
    question TEXT NOT NULL,
    answer TEXT NOT NULL,
    provenance TEXT NOT NULL,
    status TEXT NOT NULL,
    version INTEGER NOT NULL,
    created_at REAL NOT NULL,
    retracted_at REAL,
    retracted_by TEXT,
    reason TEXT
);
CREATE INDEX IF NOT EXISTS answers_kb ON answers (kb, status);
CREATE TABLE IF NOT EXISTS events (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    kb TEXT NOT NULL,
    at REAL NOT NULL,
    actor TEXT NOT NULL,
    action TEXT NOT NULL,
    version INTEGER,
    detail TEXT NOT NULL
);
"""

AnswerStatus = Literal["active", "retracted"]


@dataclass(frozen=True)
class SnapshotRecord:
    kb: str
    version: int
    created_at: float
    points: int
    path: str
    note: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "created_at": self.created_at,
            "points": self.points,
            "note": self.note,
        }


@dataclass(frozen=True)
class AnswerRecord:
    """A learned question/answer pair (or correction) and where it came from."""

    id: str
    kb: str
    tenant: str
    question: str
    answer: str
    provenance: dict[str, Any]
    status: AnswerStatus
    version: int
    created_at: float
    retracted_at: float | None = None
    retracted_by: str | None = None
    reason: str | None = None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "id": self.id,
            "kb": self.kb,
            "tenant": self.tenant,
            "question": self.question,
            "answer": self.answer,
            "provenance": self.provenance,
            "status": self.status,
            "version": self.version,
            "created_at": self.created_at,
        }
        if self.status == "retracted":
            out.update(
                retracted_at=self.retracted_at, retracted_by=self.retracted_by, reason=self.reason
            )
        return out


@dataclass(frozen=True)
class Event:
    seq: int
    kb: str
    at: float
    actor: str
    action: str
    version: int | None
    detail: dict[str, Any] = field(default_factory=dict)


class KnowledgeLedger:
    """Versions, snapshots, learned answers and the audit log of every knowledge base."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)

    @contextmanager
    def _conn(self) -> Iterator[sqlite3.Connection]:
        with open_db(self.path, _SCHEMA) as conn:
            yield conn

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        with self._conn() as c, write(c):
            yield c

    # -- versions --------------------------------------------------------------------------

    def version(self, kb: str) -> int:
        """The KB's current version (0 before its first change)."""
        with self._conn() as c:
            row = c.execute("SELECT version FROM versions WHERE kb=?", (kb,)).fetchone()
        return 0 if row is None else int(row[0])

    def next_version(self, kb: str) -> int:
        """The version the next change will get (not reserved: see :meth:`bump`)."""
        return self.version(kb) + 1

    def bump(
        self, kb: str, *, actor: str, action: str, detail: dict[str, Any] | None = None
    ) -> int:
        """Record a change: the version goes up by one and an event is logged; returns it."""
        with self._tx() as c:
            return _bump(c, kb, actor, action, detail or {})

    def log(
        self,
        kb: str,
        *,
        actor: str,
        action: str,
        detail: dict[str, Any] | None = None,
        version: int | None = None,
    ) -> None:
        """Append an audit event that does not change the version (a refused request...)."""
        with self._tx() as c:
            _event(c, kb, actor, action, version, detail or {})

    def events(self, kb: str, limit: int = 100) -> list[Event]:
        with self._conn() as c:
            rows = c.execute(
                "SELECT seq, kb, at, actor, action, version, detail FROM events WHERE kb=? "
                "ORDER BY seq DESC LIMIT ?",
                (kb, limit),
            ).fetchall()
        return [Event(r[0], r[1], r[2], r[3], r[4], r[5], json.loads(r[6])) for r in rows]

    def forget(self, kb: str) -> None:
        """Drop a KB's versions, snapshots and answers rows (its events stay)."""
        with self._tx() as c:
            for table in ("versions", "snapshots", "answers"):
                c.execute(f"DELETE FROM {table} WHERE kb=?", (kb,))  # noqa: S608 (fixed names)

    # -- snapshots -------------------------------------------------------------------------

    def add_snapshot(self, rec: SnapshotRecord, *, actor: str) -> None:
        with self._tx() as c:
            c.execute(
                "INSERT OR REPLACE INTO snapshots(kb, version, created_at, points, path, note) "
                "VALUES (?,?,?,?,?,?)",
                (rec.kb, rec.version, rec.created_at, rec.points, rec.path, rec.note),
            )
            _event(c, rec.kb, actor, "snapshot", rec.version, {"points": rec.points})

    def snapshots(self, kb: str) -> list[SnapshotRecord]:
        with self._conn() as c:
            rows = c.execute(
                "SELECT kb, version, created_at, points, path, note FROM snapshots WHERE kb=? "
                "ORDER BY version",
                (kb,),
            ).fetchall()
        return [SnapshotRecord(*r) for r in rows]

    def snapshot(self, kb: str, version: int) -> SnapshotRecord | None:
        return next((s for s in self.snapshots(kb) if s.version == version), None)

    def drop_snapshot(self, kb: str, version: int) -> None:
        with self._tx() as c:
            c.execute("DELETE FROM snapshots WHERE kb=? AND version=?", (kb, version))

    # -- learned answers -------------------------------------------------------------------

    def add_answer(
        self,
        kb: str,
        *,
        tenant: str,
        question: str,
        answer: str,
        provenance: dict[str, Any],
        actor: str,
    ) -> AnswerRecord:
        """Insert an active answer and bump the version in one transaction."""
        aid = uuid.uuid4().hex[:16]
        now = time.time()
        with self._tx() as c:
            version = _bump(c, kb, actor, "answer.add", {"id": aid, "tenant": tenant})
            c.execute(
                "INSERT INTO answers(id, kb, tenant, question, answer, provenance, status, "
                "version, created_at) VALUES (?,?,?,?,?,?,?,?,?)",
                (aid, kb, tenant, question, answer, json.dumps(provenance), "active", version, now),
            )
        return AnswerRecord(aid, kb, tenant, question, answer, provenance, "active", version, now)

    def retract_answer(self, kb: str, aid: str, *, actor: str, reason: str) -> AnswerRecord:
        """Mark an answer retracted (bumping the version); KeyError if unknown or done."""
        with self._tx() as c:
            row = c.execute("SELECT status FROM answers WHERE kb=? AND id=?", (kb, aid)).fetchone()
            if row is None:
                raise KeyError(f"knowledge base {kb!r} has no answer {aid!r}")
            if row[0] == "retracted":
                raise KeyError(f"answer {aid!r} of {kb!r} is already retracted")
            _bump(c, kb, actor, "answer.retract", {"id": aid, "reason": reason})
            c.execute(
                "UPDATE answers SET status='retracted', retracted_at=?, retracted_by=?, reason=? "
                "WHERE id=?",
                (time.time(), actor, reason, aid),
            )
        found = self.answer(kb, aid)
        assert found is not None
        return found

    def answer(self, kb: str, aid: str) -> AnswerRecord | None:
        return next(iter(self.answers(kb, aid=aid, status=None)), None)

    def answers(
        self, kb: str, *, status: AnswerStatus | None = "active", aid: str | None = None
    ) -> list[AnswerRecord]:
        q = (
            "SELECT id, kb, tenant, question, answer, provenance, status, version, created_at, "
            "retracted_at, retracted_by, reason FROM answers WHERE kb=?"
        )
        args: list[Any] = [kb]
        if status is not None:
            q += " AND status=?"
            args.append(status)
        if aid is not None:
            q += " AND id=?"
            args.append(aid)
        with self._conn() as c:
            rows = c.execute(q + " ORDER BY created_at, id", args).fetchall()
        return [AnswerRecord(r[0], r[1], r[2], r[3], r[4], json.loads(r[5]), *r[6:]) for r in rows]


def _event(
    c: sqlite3.Connection,
    kb: str,
    actor: str,
    action: str,
    version: int | None,
    detail: dict[str, Any],
) -> None:
    c.execute(
        "INSERT INTO events(kb, at, actor, action, version, detail) VALUES (?,?,?,?,?,?)",
        (kb, time.time(), actor, action, version, json.dumps(detail, sort_keys=True)),
    )


def _bump(c: sqlite3.Connection, kb: str, actor: str, action: str, detail: dict[str, Any]) -> int:
    row = c.execute("SELECT version FROM versions WHERE kb=?", (kb,)).fetchone()
    version = 1 if row is None else int(row[0]) + 1
    c.execute(
        "INSERT INTO versions(kb, version, updated_at) VALUES (?,?,?) "
        "ON CONFLICT(kb) DO UPDATE SET version=excluded.version, updated_at=excluded.updated_at",
        (kb, version, time.time()),
    )
    _event(c, kb, actor, action, version, detail)
    log.debug("knowledge base %s is now version %d (%s)", kb, version, action)
    return version

"""API keys for the gateway, kept as SHA-256 hashes only.

A key reads ``ql-<id>-<secret>``: ``<id>`` is 12 hex characters, public, and names the
key in listings and logs; ``<secret>`` is 32 random bytes, URL-safe base64. The plaintext
is returned once by :meth:`KeyStore.create` and never stored: the database holds the
SHA-256 of the whole key, compared in constant time by :meth:`KeyStore.verify`.

Names are unique among active keys: creating a second active key named ``ci`` is refused,
so ``revoke("ci")`` is never ambiguous. Once a key is revoked its name may be reused
(rotate: create ``ci`` anew after revoking the old one); the revoked record keeps its id.

The keys live in ``state.sqlite`` or, when ``$QINGLIANG_DATABASE_URL`` is set, in that
database (:mod:`~qingliang.platform.storage.database`, docs/storage.md). The store draws
pooled connections from that layer (a key check is one indexed read on a connection
already open), so one ``KeyStore`` may be shared by threads, and several processes
(gateway replicas, the CLI) may use the same database at once.

Example:
    >>> import tempfile, pathlib
    >>> store = KeyStore(pathlib.Path(tempfile.mkdtemp()) / "state.sqlite")
    >>> record, key = store.create("ci")
    >>> key.startswith(f"ql-{record.id}-")
    True
    >>> store.verify(key).name
    'ci'
    >>> store.revoke("ci").revoked
    True
    >>> store.verify(key) is None
    True
"""

from __future__ import annotations

import builtins
import hashlib
import hmac
import logging
import os
import re
import secrets
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, text

from qingliang.platform.errors import BadRequest, NotFound
from qingliang.platform.storage.database import (
    Database,
    DatabaseError,
    database_url,
    open_database,
)

logger = logging.getLogger(__name__)

KEY_PREFIX = "ql"
ID_HEX_CHARS = 12
SECRET_BYTES = 32
#: ``last_used_at`` is written at most this often per key, so verifying is a read.
LAST_USED_RESOLUTION_S = 60.0
#: How long a call waits for another process's write lock before failing.
BUSY_TIMEOUT_S = 30.0
#: How long a key check waits to write ``last_used_at`` before skipping it.
TOUCH_BUSY_TIMEOUT_MS = 50

ADMIN = "admin"
DEPLOY = "deploy"
INFERENCE = "inference"
KNOWLEDGE_READ = "knowledge:read"
KNOWLEDGE_WRITE = "knowledge:write"
AGENTS_RUN = "agents:run"
APPROVE = "approve"
TENANT_PREFIX = "tenant:"
DEFAULT_TENANT = "default"

#: Every scope a key may carry, besides ``tenant:<id>``, with what it is for.
SCOPES: dict[str, str] = {
    ADMIN: "every route and every tenant",
    DEPLOY: "pipelines (start, watch, cancel, resume); never bound to a tenant",
    INFERENCE: "chat, completions, embeddings, models",
    KNOWLEDGE_READ: "read and search knowledge bases",
    KNOWLEDGE_WRITE: "upload, delete, sync, snapshot, roll back knowledge bases",
    AGENTS_RUN: "start and read agent runs, give feedback",
    APPROVE: "approve, edit or reject waiting agent and pipeline runs",
}
#: What ``qingliang keys create NAME`` gives when no ``--scope`` is named: what a domain
#: application needs to chat, search and run agents.
DEFAULT_SCOPES = (INFERENCE, KNOWLEDGE_READ, AGENTS_RUN)


NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}\Z")
SCOPE_RE = re.compile(r"^[a-z][a-z0-9_.:-]{0,63}\Z")
_ID_RE = re.compile(rf"^[0-9a-f]{{{ID_HEX_CHARS}}}\Z")
# token_urlsafe(32) gives 43 characters of [A-Za-z0-9_-].
_KEY_RE = re.compile(rf"^{KEY_PREFIX}-([0-9a-f]{{{ID_HEX_CHARS}}})-([A-Za-z0-9_-]{{43}})\Z")
_MAX_KEY_CHARS = 128

STORE = "keys"
#: The key store's Alembic revisions (its schema: ``versions/0001_baseline.py``).
MIGRATIONS = Path(__file__).resolve().parent / "migrations" / STORE
_COLUMNS = (
    "id, name, scopes, created_at, revoked_at, last_used_at, requests_per_minute, tokens_per_day"
)


class _Keep:
    """The default of :meth:`KeyStore.set_limits`: leave this limit as it is."""


KEEP = _Keep()


def _utc(ts: float | None) -> datetime | None:
    return None if ts is None else datetime.fromtimestamp(ts, UTC)


@dataclass(frozen=True)
class KeyRecord:
    """What is known about a key besides its secret. Safe to print and log."""

    id: str
    name: str
    scopes: tuple[str, ...]
    created_at: datetime
    revoked_at: datetime | None
    last_used_at: datetime | None
    #: At most this many requests a minute (None: no limit of its own).
    requests_per_minute: int | None = None
    #: At most this many tokens (prompt and completion) a UTC day (None: no limit).
    tokens_per_day: int | None = None

    @property
    def prefix(self) -> str:
        """The public start of the key (``ql-<id>``), to tell keys apart in listings."""
        return f"{KEY_PREFIX}-{self.id}"

    @property
    def revoked(self) -> bool:
        return self.revoked_at is not None

    def allows(self, scope: str) -> bool:
        """Whether this key carries ``scope`` (``inference``, ...)."""
        return scope in self.scopes

    @classmethod
    def _from_row(cls, row: tuple) -> KeyRecord:
        key_id, name, scopes, created, revoked, used, rpm, tpd = row
        return cls(
            id=key_id,
            name=name,
            scopes=tuple(scopes.split()),
            created_at=datetime.fromtimestamp(created, UTC),
            revoked_at=_utc(revoked),
            last_used_at=_utc(used),
            requests_per_minute=rpm,
            tokens_per_day=tpd,
        )


def _one(conn: Connection, sql: str, params: Mapping[str, Any]) -> tuple | None:
    """The first row (the statement run to completion), as a tuple."""
    rows = conn.execute(text(sql), params).all()
    return tuple(rows[0]) if rows else None


def _key_id(text: str) -> str:
    """The id in ``ql-<id>`` (what ``keys list`` prints) or in a whole key; else ``text``."""
    if isinstance(text, str):
        whole = _KEY_RE.match(text)
        if whole:
            return whole.group(1)
        shown = re.match(rf"^{KEY_PREFIX}-([0-9a-f]{{{ID_HEX_CHARS}}})\Z", text)
        if shown:
            return shown.group(1)
    return text


def _digest(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def _check_name(name: object) -> str:
    if not isinstance(name, str) or not NAME_RE.match(name):
        raise BadRequest(
            f"key name {name!r} is invalid: use 1-64 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit",
            param="name",
        )
    if _ID_RE.match(name):
        raise BadRequest(
            f"key name {name!r} looks like a key id ({ID_HEX_CHARS} hex characters); "
            "choose another name",
            param="name",
        )
    return name


def check_scope_set(scopes: tuple[str, ...]) -> None:
    """Refuse a scope set that makes no sense (raises BadRequest naming why)."""
    tenants = [s for s in scopes if s.startswith(TENANT_PREFIX)]
    unknown = [s for s in scopes if s not in SCOPES and not s.startswith(TENANT_PREFIX)]
    if unknown:
        raise BadRequest(
            f"unknown scope(s) {', '.join(unknown)}; known: {', '.join(SCOPES)}, tenant:<id>",
            param="scopes",
        )
    if any(not t[len(TENANT_PREFIX) :] for t in tenants):
        raise BadRequest("a tenant scope names its tenant: tenant:<id>", param="scopes")
    if len(tenants) > 1:
        raise BadRequest(
            f"a key acts for one tenant at most, not {', '.join(tenants)}", param="scopes"
        )
    if tenants and ADMIN in scopes:
        raise BadRequest(
            "an admin key acts for every tenant; drop the tenant scope", param="scopes"
        )
    if tenants and DEPLOY in scopes:
        raise BadRequest(
            "deploy changes what every tenant is served, so a deploy key cannot be "
            "bound to one tenant",
            param="scopes",
        )


def _check_limit(value: object, param: str) -> int | None:
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise BadRequest(
            f"{param} must be a whole number of at least 1, not {value!r}", param=param
        )
    return value


def _check_scopes(scopes: Iterable[str]) -> tuple[str, ...]:
    if isinstance(scopes, str):
        raise BadRequest(
            f"scopes must be a list of names, not the string {scopes!r}", param="scopes"
        )
    out = tuple(dict.fromkeys(scopes))
    if not out:
        raise BadRequest("a key needs at least one scope", param="scopes")
    for scope in out:
        if not isinstance(scope, str) or not SCOPE_RE.match(scope):
            raise BadRequest(
                f"scope {scope!r} is invalid: lower-case letters, digits and '_.:-', "
                "starting with a letter",
                param="scopes",
            )
    check_scope_set(out)
    return out


class KeyStore:
    """API keys in one database; its tables are created on first use.

    Args:
        path: The SQLite file (usually ``Settings.state_db``), used when no shared database
            is configured. Nothing is opened until a method needs it.
        url: The database; default ``$QINGLIANG_DATABASE_URL`` when set, else ``path``.
        clock: Seconds since the epoch; tests pass a fake one.
        busy_timeout_s: How long to wait for another writer.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        url: str | None = None,
        clock: Callable[[], float] = time.time,
        busy_timeout_s: float = BUSY_TIMEOUT_S,
    ) -> None:
        self.path = Path(path)
        self.url = url or database_url(self.path.parent, STORE, file=self.path.name)
        self._clock = clock
        self._busy_timeout_s = busy_timeout_s
        # The layer's own default is the same 30 s; only a different one is set per write.
        self._wait = None if busy_timeout_s == BUSY_TIMEOUT_S else busy_timeout_s
        self._lock = threading.Lock()
        self._db: Database | None = None

    def __repr__(self) -> str:
        return f"KeyStore({str(self.path)!r})"

    @property
    def db(self) -> Database:
        """The store's database, opened (and migrated) on first use; pooled connections,
        a new engine in a forked child."""
        db = self._db
        if db is None:
            with self._lock:
                if self._db is None:
                    self._db = open_database(self.url, store=STORE, migrations=MIGRATIONS)
                db = self._db
        return db

    def close(self) -> None:
        """Close the pooled connections; a later call opens new ones."""
        if self._db is not None:
            self._db.close()

    def _write(self) -> Any:
        return self.db.write(wait_s=self._wait)

    # ---------------------------------------------------------------------- public

    def create(
        self,
        name: str,
        *,
        scopes: Iterable[str] = DEFAULT_SCOPES,
        requests_per_minute: int | None = None,
        tokens_per_day: int | None = None,
    ) -> tuple[KeyRecord, str]:
        """Create a key; return its record and the plaintext, which is not kept.

        Raises:
            BadRequest: ``name`` or ``scopes`` is invalid, or an active key has this name.
        """
        name = _check_name(name)
        scope_tuple = _check_scopes(scopes)
        rpm = _check_limit(requests_per_minute, "requests_per_minute")
        tpd = _check_limit(tokens_per_day, "tokens_per_day")
        with self._write() as conn:
            clash = _one(
                conn,
                "SELECT id FROM api_keys WHERE name = :name AND revoked_at IS NULL",
                {"name": name},
            )
            if clash:
                raise BadRequest(
                    f"an active key named {name!r} exists (id {clash[0]}); revoke it "
                    "first or choose another name",
                    param="name",
                    code="duplicate_name",
                )
            now = self._clock()
            # Writes hold the store's write lock, so an id seen unused here stays unused.
            for _ in range(8):
                key_id = secrets.token_hex(ID_HEX_CHARS // 2)
                if _one(conn, "SELECT id FROM api_keys WHERE id = :id", {"id": key_id}) is None:
                    break
            else:  # pragma: no cover - 8 collisions of 48 random bits
                raise RuntimeError("could not draw an unused key id")
            key = f"{KEY_PREFIX}-{key_id}-{secrets.token_urlsafe(SECRET_BYTES)}"
            conn.execute(
                text(
                    "INSERT INTO api_keys (id, name, key_sha256, scopes, created_at, "
                    "requests_per_minute, tokens_per_day) "
                    "VALUES (:id, :name, :sha, :scopes, :now, :rpm, :tpd)"
                ),
                {
                    "id": key_id,
                    "name": name,
                    "sha": _digest(key),
                    "scopes": " ".join(scope_tuple),
                    "now": now,
                    "rpm": rpm,
                    "tpd": tpd,
                },
            )
        record = KeyRecord(
            key_id, name, scope_tuple, datetime.fromtimestamp(now, UTC), None, None, rpm, tpd
        )
        logger.info("created API key %s (%s)", key_id, name)
        return record, key

    def revoke(self, key_id_or_name: str) -> KeyRecord:
        """Revoke a key by id (``ql-<id>`` as listed, or the bare id), the whole key, or
        the name of an active key; return its record.

        Raises:
            NotFound: no key has this id or name.
            BadRequest: the key is already revoked.
        """
        given, key_id_or_name = key_id_or_name, _key_id(key_id_or_name)
        if isinstance(given, str) and _KEY_RE.match(given):
            given = f"{KEY_PREFIX}-{key_id_or_name}"  # never echo a secret
        with self._write() as conn:
            row = _one(
                conn, f"SELECT {_COLUMNS} FROM api_keys WHERE id = :id", {"id": key_id_or_name}
            ) or _one(
                conn,
                f"SELECT {_COLUMNS} FROM api_keys WHERE name = :name "
                "ORDER BY revoked_at IS NOT NULL, created_at DESC LIMIT 1",
                {"name": key_id_or_name},
            )
            if row is None:
                raise NotFound(f"no API key with id or name {given!r}", code="key_not_found")
            record = KeyRecord._from_row(row)
            if record.revoked_at is not None:
                raise BadRequest(
                    f"API key {record.id} ({record.name}) was already revoked at "
                    f"{record.revoked_at.isoformat(timespec='seconds')}",
                    code="already_revoked",
                )
            now = self._clock()
            conn.execute(
                text("UPDATE api_keys SET revoked_at = :now WHERE id = :id"),
                {"now": now, "id": record.id},
            )
        logger.info("revoked API key %s (%s)", record.id, record.name)
        return replace(record, revoked_at=datetime.fromtimestamp(now, UTC))

    def verify(self, plaintext: str) -> KeyRecord | None:
        """The record of a valid, unrevoked key, or None for anything else.

        Never raises for a malformed key. Updates ``last_used_at`` at most once a minute.
        """
        if not isinstance(plaintext, str) or len(plaintext) > _MAX_KEY_CHARS:
            return None
        match = _KEY_RE.match(plaintext)
        if match is None:
            return None
        key_id = match.group(1)
        # One indexed read straight on a pooled connection: this runs on every request.
        rows = self.db.query(
            f"SELECT {_COLUMNS}, key_sha256 FROM api_keys WHERE id = :id", {"id": key_id}
        )
        row = rows[0] if rows else None
        # Compare against something even for an unknown id, so timing does not tell
        # unknown ids from wrong secrets.
        stored = row[-1] if row else "0" * 64
        if not hmac.compare_digest(stored, _digest(plaintext)) or row is None:
            logger.debug("API key %s rejected", key_id)
            return None
        record = KeyRecord._from_row(row[:-1])
        if record.revoked_at is not None:
            logger.debug("API key %s is revoked", key_id)
            return None
        now = self._clock()
        last = record.last_used_at.timestamp() if record.last_used_at else None
        if (last is None or now - last >= LAST_USED_RESOLUTION_S) and self._touch(key_id, now):
            record = replace(record, last_used_at=datetime.fromtimestamp(now, UTC))
        return record

    def _touch(self, key_id: str, now: float) -> bool:
        """Best effort: write ``last_used_at`` unless another writer holds the lock.

        A key check must not wait for the write lock (another process may hold it for
        seconds): the write is skipped and tried again on a later request.
        """
        try:
            with self.db.write(wait_s=TOUCH_BUSY_TIMEOUT_MS / 1000) as conn:
                conn.execute(
                    text(
                        "UPDATE api_keys SET last_used_at = :now WHERE id = :id AND "
                        "(last_used_at IS NULL OR last_used_at <= :before)"
                    ),
                    {"now": now, "id": key_id, "before": now - LAST_USED_RESOLUTION_S},
                )
            return True
        except DatabaseError as exc:
            logger.debug("last_used_at of key %s not written: %s", key_id, exc)
            return False

    def set_limits(
        self,
        key_id_or_name: str,
        *,
        requests_per_minute: int | None | _Keep = KEEP,
        tokens_per_day: int | None | _Keep = KEEP,
    ) -> KeyRecord:
        """Change an active key's limits (None lifts one); return the record.

        Raises:
            NotFound: no active key has this id or name.
            BadRequest: a limit is not a whole number of at least 1.
        """
        changes: dict[str, int | None] = {}
        if not isinstance(requests_per_minute, _Keep):
            changes["requests_per_minute"] = _check_limit(
                requests_per_minute, "requests_per_minute"
            )
        if not isinstance(tokens_per_day, _Keep):
            changes["tokens_per_day"] = _check_limit(tokens_per_day, "tokens_per_day")
        key_id = _key_id(key_id_or_name)
        with self._write() as conn:
            row = _one(
                conn,
                f"SELECT {_COLUMNS} FROM api_keys WHERE (id = :id OR name = :name) "
                "AND revoked_at IS NULL",
                {"id": key_id, "name": key_id_or_name},
            )
            if row is None:
                raise NotFound(
                    f"no active API key with id or name {key_id_or_name!r}",
                    code="key_not_found",
                )
            record = KeyRecord._from_row(row)
            for column, value in changes.items():  # column: one of two names above
                conn.execute(
                    text(f"UPDATE api_keys SET {column} = :value WHERE id = :id"),
                    {"value": value, "id": record.id},
                )
        logger.info("changed the limits of API key %s: %s", record.id, changes)
        return replace(record, **changes)  # type: ignore[arg-type]

    def tokens_used(self, key_id: str, day: str) -> int:
        """Tokens charged to a key on a UTC day (``YYYY-MM-DD``)."""
        rows = self.db.query(
            "SELECT tokens FROM api_key_usage WHERE key_id = :id AND day = :day",
            {"id": key_id, "day": day},
        )
        return int(rows[0][0]) if rows else 0

    def charge(self, key_id: str, day: str, tokens: int) -> None:
        """Add ``tokens`` to a key's use on ``day`` (one short write transaction)."""
        if tokens <= 0:
            return
        with self._write() as conn:
            conn.execute(
                text(
                    "INSERT INTO api_key_usage (key_id, day, tokens) VALUES (:id, :day, :n) "
                    "ON CONFLICT (key_id, day) DO UPDATE "
                    "SET tokens = api_key_usage.tokens + excluded.tokens"
                ),
                {"id": key_id, "day": day, "n": int(tokens)},
            )

    def list(self) -> builtins.list[KeyRecord]:
        """Every key, revoked ones included, oldest first."""
        with self.db.read() as conn:
            rows = conn.execute(
                text(f"SELECT {_COLUMNS} FROM api_keys ORDER BY created_at, id")
            ).all()
        return [KeyRecord._from_row(tuple(r)) for r in rows]

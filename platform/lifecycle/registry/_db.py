"""Engines, transactions, the write lock and schema migrations for the registry.

* SQLite: WAL journal, foreign keys on, a 30 s busy timeout; pysqlite's own transaction
  handling is switched off so that reads run in ``BEGIN`` and writes in ``BEGIN
  IMMEDIATE`` (the database's write lock is taken up front, so two writers queue instead
  of failing with "database is locked" half-way).
* PostgreSQL (psycopg 3): every write transaction first takes one transaction-level
  advisory lock, so writes are serialised exactly as on SQLite; reads take nothing.
* Migrations: Alembic, run from code. :func:`upgrade` checks the revision without a lock
  (the usual case: already at head); otherwise it takes the write lock, checks again and
  upgrades inside that one transaction, so of several processes opening a fresh database
  at once exactly one migrates and the others then find it done. A database at a revision
  this code does not know (written by a newer Qingliang) is refused.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine, create_engine, event, exc, text
from sqlalchemy.engine import URL, make_url
from sqlalchemy.orm import Session
from sqlalchemy.pool import StaticPool

from qingliang.platform.errors import Conflict, QingliangError
from qingliang.platform.lifecycle.registry.tables import VERSION_TABLE

logger = logging.getLogger(__name__)

MIGRATIONS = Path(__file__).resolve().parent / "migrations"
#: The advisory lock (PostgreSQL) that serialises registry writes and migrations.
LOCK_KEY = 0x716C5F7265676973  # "ql_regis"
_WRITE = "qingliang_registry_write"


class RegistryError(QingliangError):
    """The registry database cannot be used: unreachable, unsupported, or its schema was
    written by a newer Qingliang."""


def normalize_url(url: str) -> URL:
    """A SQLAlchemy URL; ``postgresql://`` and ``postgres://`` mean psycopg 3."""
    try:
        parsed = make_url(url)
    except exc.ArgumentError as e:
        raise RegistryError(f"registry URL is not a database URL: {e}") from None
    backend = parsed.get_backend_name()
    if parsed.drivername in ("postgres", "postgresql"):
        parsed = parsed.set(drivername="postgresql+psycopg")
    elif backend not in ("sqlite", "postgresql"):
        raise RegistryError(
            f"registry URL {safe(parsed)}: only sqlite:/// and postgresql+psycopg:// are supported"
        )
    return parsed


def safe(url: URL) -> str:
    """The URL as it may appear in messages and logs (no password)."""
    return url.render_as_string(hide_password=True)


def make_engine(url: URL) -> Engine:
    """An engine with the transaction behaviour described in the module docstring."""
    if url.get_backend_name() == "postgresql":
        return create_engine(
            url,
            pool_pre_ping=True,
            pool_size=2,
            max_overflow=4,
            connect_args={"connect_timeout": 10},
        )
    memory = url.database in (None, "", ":memory:")
    if not memory:
        Path(url.database).expanduser().parent.mkdir(parents=True, exist_ok=True)  # type: ignore[arg-type]
    engine = create_engine(
        url,
        connect_args={"timeout": 30, "check_same_thread": False},
        **({"poolclass": StaticPool} if memory else {}),
    )

    @event.listens_for(engine, "connect")
    def _connect(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.isolation_level = None  # we send BEGIN ourselves (below)
        cur = dbapi_conn.cursor()
        if not memory:
            cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.close()

    @event.listens_for(engine, "begin")
    def _begin(conn: Connection) -> None:
        conn.exec_driver_sql(
            "BEGIN IMMEDIATE" if conn.get_execution_options().get(_WRITE) else "BEGIN"
        )

    return engine


def _lock(conn: Connection) -> None:
    if conn.dialect.name == "postgresql":
        conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": LOCK_KEY})


@contextmanager
def translated(url: URL) -> Iterator[None]:
    """Database errors become Qingliang errors (our own pass through untouched)."""
    try:
        yield
    except QingliangError:
        raise
    except exc.IntegrityError as e:
        raise Conflict(f"the registry refused a conflicting write: {_first_line(e)}") from e
    except exc.DBAPIError as e:
        raise RegistryError(f"registry database {safe(url)}: {_first_line(e)}") from e


def _first_line(e: exc.DBAPIError) -> str:
    lines = str(e.orig).strip().splitlines()
    return lines[0] if lines else type(e.orig).__name__


@contextmanager
def read_session(engine: Engine, url: URL) -> Iterator[Session]:
    """A read-only unit of work (one snapshot on SQLite, READ COMMITTED on PostgreSQL)."""
    with translated(url), Session(engine, expire_on_commit=False) as s, s.begin():
        yield s


@contextmanager
def write_session(engine: Engine, url: URL) -> Iterator[Session]:
    """One write transaction holding the registry's write lock; commits on success,
    rolls back on any error (nothing half-written)."""
    with (
        translated(url),
        Session(engine.execution_options(**{_WRITE: True}), expire_on_commit=False) as s,
        s.begin(),
    ):
        _lock(s.connection())
        yield s


def _alembic_config(conn: Connection | None = None) -> Any:
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    if conn is not None:
        cfg.attributes["connection"] = conn
    return cfg


def revisions() -> tuple[str, set[str]]:
    """The head revision of the migration scripts and every revision they know."""
    from alembic.script import ScriptDirectory

    script = ScriptDirectory.from_config(_alembic_config())
    heads = script.get_heads()
    if len(heads) != 1:  # a packaging mistake, never a user's
        raise RegistryError(f"registry migrations have {len(heads)} heads: {heads}")
    return heads[0], {s.revision for s in script.walk_revisions()}


def current_revision(conn: Connection) -> str | None:
    """The revision a database is at (None: no registry schema yet)."""
    from alembic.runtime.migration import MigrationContext

    ctx = MigrationContext.configure(conn, opts={"version_table": VERSION_TABLE})
    return ctx.get_current_revision()


def upgrade(engine: Engine, url: URL, target: str | None = None) -> bool:
    """Bring the schema to ``target`` (default: head); True if this call migrated."""
    head, known = revisions()
    target = target or head
    with translated(url):
        with engine.connect() as conn:
            found = current_revision(conn)
            conn.rollback()
        _check_known(found, known, head, url)
        if found == target:
            return False
        with engine.connect() as conn:
            conn.execution_options(**{_WRITE: True})
            with conn.begin():
                _lock(conn)
                found = current_revision(conn)
                _check_known(found, known, head, url)
                if found == target:
                    return False
                from alembic import command

                from qingliang.platform.storage.database import ALEMBIC_LOCK

                with ALEMBIC_LOCK:  # Alembic's context is process-global (see there)
                    command.upgrade(_alembic_config(conn), target)
    logger.info("registry %s: schema upgraded from %s to %s", safe(url), found, target)
    return True


def _check_known(found: str | None, known: set[str], head: str, url: URL) -> None:
    if found is not None and found not in known:
        raise RegistryError(
            f"registry database {safe(url)} is at schema revision {found!r}, which this "
            f"Qingliang does not know (its newest is {head!r}): it was written by a newer "
            "Qingliang; upgrade Qingliang or use another database"
        )

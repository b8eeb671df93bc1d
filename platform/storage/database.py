"""The one database layer of the platform's stores: SQLite by default, PostgreSQL for a cluster.

Every store (applied state, keys, arm statistics, the conversation log, the router log,
agent and pipeline runs) opens its database with :func:`open_database` and does each unit
of work in :meth:`Database.read` or :meth:`Database.write`:

* Where: :func:`database_url` gives ``$QINGLIANG_DATABASE_URL`` when it is set
  (``postgresql://user:pw@host:5432/db``, ``postgres://`` or ``postgresql+psycopg://``: all
  mean psycopg 3), so every store lives in that one database with its own tables; unset, the
  store's own SQLite file under ``$QINGLIANG_HOME``, exactly as before (docs/storage.md).
* SQLite: WAL journal, a 30 s busy timeout, new files owner-only (:func:`~.sqlite.create_private`);
  pysqlite's own transaction handling is off, so reads run in ``BEGIN`` and writes in
  ``BEGIN IMMEDIATE`` (the write lock is taken up front: two writers queue instead of one
  failing half-way).
* PostgreSQL: every write transaction first takes a transaction-level advisory lock of its
  store (:func:`lock_key`), so a store's writes serialise exactly as on SQLite; reads take
  nothing. Pooled connections, no ping per checkout (a connection the server dropped fails
  one call, and the pool is then renewed).
* Migrations: each store has its own Alembic revisions (a folder; the revisions are the
  ``.py`` files in its ``versions/`` subfolder, or in the folder itself) and its own version
  table ``qingliang_<store>_version``. :func:`open_database` runs them from code under the
  store's write lock, so of several processes opening a fresh database at once exactly one
  migrates; a database at a revision this code does not know (a newer Qingliang wrote it)
  is refused. A revision ``0001`` creates the store's schema with ``IF NOT EXISTS``
  semantics, so a SQLite file from before Alembic adopts it with its rows.
* Errors: database errors become :class:`DatabaseError` (:class:`DatabaseBusy` when a write
  lock was not had in time; a unique-constraint violation becomes ``Conflict``), naming the
  store and the database, password hidden.
* Processes: :func:`open_database` caches one :class:`Database` per (URL, store, process) on
  one engine per (URL, process); a forked child gets new ones and never touches its parent's
  connections.

Example (a store's module):
    >>> import tempfile
    >>> from sqlalchemy import text
    >>> home = Path(tempfile.mkdtemp())
    >>> MIGRATIONS = Path(__file__).parent / "migrations" / "state"  # doctest: +SKIP
    >>> db = open_database(database_url(home, "state"), store="state",
    ...                    migrations=MIGRATIONS)  # doctest: +SKIP
    >>> with db.write() as conn:  # doctest: +SKIP
    ...     conn.execute(text("DELETE FROM manifests WHERE kind = :k"), {"k": "X"})
    >>> with db.read() as conn:  # doctest: +SKIP
    ...     conn.execute(text("SELECT count(*) FROM manifests")).scalar_one()
    0

A revision (``migrations/state/versions/0001_baseline.py``) is plain Alembic; it may branch
on ``op.get_bind().dialect.name`` (``"sqlite"`` or ``"postgresql"``) for DDL that differs.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
import re
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine, create_engine, event, exc, text
from sqlalchemy.engine import URL, make_url
from sqlalchemy.pool import StaticPool

from qingliang.platform.errors import Conflict, QingliangError
from qingliang.platform.settings import database_url_from_env
from qingliang.platform.storage import _revisions
from qingliang.platform.storage.sqlite import BUSY_TIMEOUT_S, create_private

logger = logging.getLogger(__name__)

__all__ = [
    "Database",
    "DatabaseBusy",
    "DatabaseError",
    "database_url",
    "lock_key",
    "open_database",
    "safe_url",
    "sqlite_url",
]

_STORE_RE = re.compile(r"^[a-z][a-z0-9_]{0,39}\Z")
_WRITE = "qingliang_write"


class DatabaseError(QingliangError):
    """A store's database cannot be used: a bad URL, an unreachable server, a failed
    statement, or a schema written by a newer Qingliang. The message names the database."""


class DatabaseBusy(DatabaseError):
    """A write did not get its store's write lock within the time it was willing to wait."""


def sqlite_url(path: str | os.PathLike[str]) -> str:
    """The SQLAlchemy URL of a SQLite file.

    Example:
        >>> sqlite_url("/tmp/ql/state.sqlite")
        'sqlite:////tmp/ql/state.sqlite'
    """
    return f"sqlite:///{Path(path)}"


def database_url(
    home: str | os.PathLike[str],
    store: str,
    *,
    file: str | None = None,
    environ: Mapping[str, str] | None = None,
) -> str:
    """Where ``store`` lives: ``$QINGLIANG_DATABASE_URL`` when set, else its SQLite file
    under ``home`` (``file``, default ``<store>.sqlite``).

    Example:
        >>> database_url("/tmp/ql", "keys", file="state.sqlite", environ={})
        'sqlite:////tmp/ql/state.sqlite'
        >>> database_url("/tmp/ql", "keys", environ={"QINGLIANG_DATABASE_URL": "postgres://h/q"})
        'postgres://h/q'
    """
    shared = database_url_from_env(environ)
    if shared:
        return shared
    return sqlite_url(Path(home) / (file or f"{store}.sqlite"))


def _normalize(url: str) -> URL:
    """A SQLAlchemy URL; ``postgresql://`` and ``postgres://`` mean psycopg 3."""
    if not isinstance(url, str) or not url.strip():
        raise DatabaseError(f"database URL {url!r} is empty or not text")
    try:
        parsed = make_url(url.strip())
    except (exc.ArgumentError, ValueError):  # ValueError: a port that is not a number
        raise DatabaseError(
            f"database URL {_mask(url)!r} is not a database URL: give sqlite:///PATH or "
            "postgresql://USER:PASSWORD@HOST:5432/DB"
        ) from None
    if parsed.drivername in ("postgres", "postgresql"):
        parsed = parsed.set(drivername="postgresql+psycopg")
    elif parsed.drivername not in ("sqlite", "sqlite+pysqlite", "postgresql+psycopg"):
        raise DatabaseError(
            f"database URL {safe_url(parsed)}: only sqlite:/// and postgresql:// "
            "(psycopg 3) are supported"
        )
    return parsed


def _mask(url: str) -> str:
    return re.sub(r"(://[^:/@]*:)[^@]*@", r"\1***@", url)


def safe_url(url: URL | str) -> str:
    """The URL as it may appear in messages and logs (no password).

    Example:
        >>> safe_url("postgresql://ql:secret@db:5432/ql")
        'postgresql://ql:***@db:5432/ql'
    """
    if isinstance(url, URL):
        return url.render_as_string(hide_password=True)
    try:
        return make_url(url).render_as_string(hide_password=True)
    except exc.ArgumentError:
        return _mask(url)


def lock_key(store: str) -> int:
    """The PostgreSQL advisory lock (a signed 64-bit number) that serialises ``store``'s
    writes and migrations; stable across processes and versions."""
    digest = hashlib.sha256(f"qingliang_{store}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


def _use_wal(dbapi_conn: Any) -> None:
    """Switch a file to WAL; changing the journal mode needs an exclusive lock that SQLite
    does not wait for on the busy handler, so processes racing on a new file retry."""
    import sqlite3

    deadline = time.monotonic() + BUSY_TIMEOUT_S
    while True:
        cur = dbapi_conn.cursor()
        try:
            if cur.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
                cur.execute("PRAGMA journal_mode=WAL").fetchall()
            return
        except sqlite3.OperationalError as e:
            if "locked" not in str(e) or time.monotonic() > deadline:
                raise
            time.sleep(0.02)
        finally:
            cur.close()


def _make_engine(url: URL) -> Engine:
    """An engine with the transaction behaviour described in the module docstring."""
    if url.get_backend_name() == "postgresql":
        return create_engine(
            url,
            pool_size=4,
            max_overflow=8,
            pool_recycle=1800,
            connect_args={"connect_timeout": 10},
        )
    memory = url.database in (None, "", ":memory:")
    if not memory:
        create_private(Path(url.database).expanduser())  # type: ignore[arg-type]
    engine = create_engine(
        url,
        connect_args={"timeout": BUSY_TIMEOUT_S, "check_same_thread": False},
        **({"poolclass": StaticPool} if memory else {}),
    )

    @event.listens_for(engine, "connect")
    def _connect(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.isolation_level = None  # we send BEGIN ourselves (below)
        if not memory:
            _use_wal(dbapi_conn)
        dbapi_conn.execute("PRAGMA foreign_keys=ON")

    @event.listens_for(engine, "begin")
    def _begin(conn: Connection) -> None:
        conn.exec_driver_sql(
            "BEGIN IMMEDIATE" if conn.get_execution_options().get(_WRITE) else "BEGIN"
        )

    return engine


class Database:
    """One store's database in this process. Thread-safe; get it from :func:`open_database`.

    Attributes:
        url: The URL as given (may hold a password: print :attr:`safe_url`).
        dialect: ``"sqlite"`` or ``"postgresql"``.
        store: The store's name (its version table is ``qingliang_<store>_version``).
    """

    def __init__(self, url: str, *, store: str, engine: Engine) -> None:
        self.url = url
        self.store = store
        self._own_engine = engine
        self._pid = os.getpid()
        self.dialect: str = engine.dialect.name
        self.safe_url = safe_url(engine.url)

    @property
    def _engine(self) -> Engine:
        """This process's engine: a forked child (whoever kept this object) gets its own."""
        if self._pid != os.getpid():
            self._own_engine = _shared_engine(self._own_engine.url, self.store)
            self._pid = os.getpid()
        return self._own_engine

    def __repr__(self) -> str:
        return f"Database({self.store!r}, {self.safe_url!r})"

    @contextmanager
    def read(self) -> Iterator[Connection]:
        """One read transaction: ``BEGIN`` (one snapshot) on SQLite, READ COMMITTED on
        PostgreSQL (each statement sees what was committed when it started)."""
        with self.translated(), self._engine.connect() as conn, conn.begin():
            yield conn

    def query(self, sql: str, params: Mapping[str, Any] | None = None) -> list[tuple]:
        """The rows of one read statement (``:name`` parameters), run straight on a pooled
        driver connection: for hot paths (the gateway's key check on every request), where
        :meth:`read`'s transaction and SQLAlchemy's statement handling cost several times
        the query itself. One statement reads one consistent state on both databases.
        A `:word` inside a string literal would be taken for a parameter: pass it as one.

        Example:
            >>> db.query("SELECT name FROM api_keys WHERE id = :id",
            ...          {"id": key_id})  # doctest: +SKIP
            [('ci',)]
        """
        statement = _driver_sql(sql, self.dialect)
        args = dict(params or {})
        for attempt in (1, 2):
            try:
                raw = self._engine.raw_connection()
            except exc.DBAPIError as e:
                raise self._error(e) from e
            try:
                return self._query_on(raw, statement, args)
            except self._engine.dialect.loaded_dbapi.Error as e:
                dropped = self._engine.dialect.is_disconnect(e, raw.dbapi_connection, None)
                if dropped:  # the server went away: none of the pooled ones is any good
                    raw.invalidate(e)
                    self._engine.dispose()
                if not (dropped and attempt == 1):  # a dropped pooled connection: once more
                    raise DatabaseError(
                        f"{self.store} database {self.safe_url}: {_first_line(e)}"
                    ) from e
            finally:
                raw.close()  # back to the pool
        raise AssertionError("unreachable")  # pragma: no cover

    def _query_on(self, raw: Any, statement: str, args: dict[str, Any]) -> list[tuple]:
        cursor = raw.cursor()
        try:
            cursor.execute(statement, args)
            rows = [tuple(r) for r in cursor.fetchall()]
        finally:
            cursor.close()
        if self.dialect == "postgresql":
            raw.rollback()  # end the transaction psycopg opened for the statement
        return rows

    def _error(self, e: exc.DBAPIError) -> DatabaseError:
        kind = DatabaseBusy if _busy(e) else DatabaseError
        return kind(f"{self.store} database {self.safe_url}: {_first_line(e)}")

    @contextmanager
    def write(self, *, wait_s: float | None = None) -> Iterator[Connection]:
        """One write transaction holding the store's write lock: committed when the block
        ends, rolled back when it raises (nothing half-written).

        Args:
            wait_s: Wait at most this long for another writer's lock, then raise
                :class:`DatabaseBusy` (default: the 30 s busy timeout on SQLite, no limit
                on PostgreSQL).
        """
        with self.translated(), self._engine.connect() as conn:
            conn.execution_options(**{_WRITE: True})
            raw = conn.connection.driver_connection if self.dialect == "sqlite" else None
            if raw is not None and wait_s is not None:
                raw.execute(f"PRAGMA busy_timeout = {max(1, int(wait_s * 1000))}")
            try:
                with conn.begin():
                    if self.dialect == "postgresql":
                        if wait_s is not None:
                            ms = max(1, int(wait_s * 1000))
                            conn.exec_driver_sql(f"SET LOCAL lock_timeout = {ms}")
                        _lock(conn, self.store)
                        if wait_s is not None:
                            conn.exec_driver_sql("SET LOCAL lock_timeout = 0")
                    yield conn
            finally:
                if raw is not None and wait_s is not None:
                    with suppress(Exception):
                        raw.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT_S * 1000)}")

    @contextmanager
    def translated(self) -> Iterator[None]:
        """Database errors raised in the block become :class:`DatabaseError` (or
        ``Conflict``, :class:`DatabaseBusy`) naming this database; ours pass through."""
        try:
            yield
        except QingliangError:
            raise
        except exc.IntegrityError as e:
            raise Conflict(
                f"{self.store} database {self.safe_url} refused a conflicting write: "
                f"{_first_line(e)}"
            ) from e
        except exc.DBAPIError as e:
            raise self._error(e) from e
        except exc.SQLAlchemyError as e:
            raise DatabaseError(f"{self.store} database {self.safe_url}: {e}") from e

    def close(self) -> None:
        """Close the pooled connections (of every store on this URL in this process); a
        later call opens new ones."""
        self._engine.dispose()


@functools.lru_cache(maxsize=256)
def _driver_sql(sql: str, dialect: str) -> str:
    """``sql`` in the driver's parameter style: pysqlite takes ``:name``; psycopg takes
    ``%(name)s`` (and a literal ``%`` doubled)."""
    if dialect != "postgresql":
        return sql
    return re.sub(r"(?<![:\w]):([A-Za-z_]\w*)", r"%(\1)s", sql.replace("%", "%%"))


def _lock(conn: Connection, store: str) -> None:
    conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": lock_key(store)})


def _busy(e: exc.DBAPIError) -> bool:
    orig = e.orig
    if getattr(orig, "sqlstate", None) == "55P03":  # lock_not_available (lock_timeout)
        return True
    message = str(orig)
    return "database is locked" in message or "database table is locked" in message


def _first_line(e: BaseException) -> str:
    orig = getattr(e, "orig", None) or e
    lines = str(orig).strip().splitlines()
    return lines[0] if lines else type(orig).__name__


# ---------------------------------------------------------------------------- opening

_cache_lock = threading.RLock()
_engines: dict[tuple[str, int], Engine] = {}
_databases: dict[tuple[str, str, int], Database] = {}
#: A forked child's inherited engines: kept referenced (never used, never closed), so the
#: child does not close connections its parent still uses.
_inherited: list[Any] = []


def _forget_after_fork() -> None:
    global _cache_lock
    _inherited.append((dict(_engines), dict(_databases)))
    _engines.clear()
    _databases.clear()
    _cache_lock = threading.RLock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_after_fork)


def open_database(url: str, *, store: str, migrations: Path) -> Database:
    """``store``'s database at ``url``, its schema brought to the newest revision of
    ``migrations`` (once per process; cached).

    Args:
        url: ``sqlite:///PATH`` or ``postgresql://USER:PW@HOST:PORT/DB`` (see
            :func:`database_url`).
        store: The store's name: lower-case letters, digits, ``_``.
        migrations: The store's Alembic revisions: a folder whose ``versions/`` subfolder
            (or the folder itself) holds them.

    Raises:
        DatabaseError: a bad URL, an unreachable server, a failed migration, or a database
            at a revision these migrations do not know.
    """
    if not _STORE_RE.match(store or ""):
        raise ValueError(f"store name {store!r}: lower-case letters, digits and '_'")
    try:
        return _open(url, store, Path(migrations))
    except DatabaseError as e:
        if url != database_url_from_env():
            raise
        raise type(e)(f"{e} (the URL is $QINGLIANG_DATABASE_URL)") from e.__cause__


def _open(url: str, store: str, migrations: Path) -> Database:
    pid = os.getpid()
    parsed = _normalize(url)
    ident = parsed.render_as_string(hide_password=False)
    with _cache_lock:
        db = _databases.get((ident, store, pid))
        if db is not None:
            return db
        db = Database(url, store=store, engine=_shared_engine(parsed, store))
        upgrade(db, migrations)
        _databases[(ident, store, pid)] = db
        return db


def _shared_engine(url: URL, store: str) -> Engine:
    """This process's engine for ``url``, created on first use."""
    ident = url.render_as_string(hide_password=False)
    with _cache_lock:  # re-entrant: open_database holds it already
        engine = _engines.get((ident, os.getpid()))
        if engine is None:
            try:
                engine = _make_engine(url)
            except (exc.SQLAlchemyError, OSError) as e:
                raise DatabaseError(
                    f"{store} database {safe_url(url)} cannot be opened: {e}"
                ) from e
            _engines[(ident, os.getpid())] = engine
        return engine


def version_table(store: str) -> str:
    """The Alembic version table of ``store``."""
    return f"qingliang_{store}_version"


def _script(migrations: Path) -> Any:
    from alembic.script import ScriptDirectory

    versions = migrations / "versions"
    location = versions if versions.is_dir() else migrations
    if not location.is_dir():
        raise DatabaseError(f"migrations folder {location} does not exist")
    return ScriptDirectory(str(migrations), version_locations=[str(location)])


def revisions(migrations: Path) -> tuple[str, set[str]]:
    """The head revision of a store's migrations and every revision they know."""
    versions = migrations / "versions"
    found = _revisions.scan(versions if versions.is_dir() else migrations)
    if found is not None:
        return found[0], set(found[1])
    script = _script(migrations)
    heads = script.get_heads()
    if len(heads) != 1:  # a packaging mistake, never a user's
        raise DatabaseError(f"migrations in {migrations} have {len(heads)} heads: {heads}")
    return heads[0], {s.revision for s in script.walk_revisions()}


def current_revision(conn: Connection, store: str) -> str | None:
    """The revision ``store``'s schema is at in this database (None: none yet)."""
    from alembic.runtime.migration import MigrationContext

    ctx = MigrationContext.configure(conn, opts={"version_table": version_table(store)})
    return ctx.get_current_revision()


def upgrade(db: Database, migrations: Path, target: str | None = None) -> bool:
    """Bring ``db``'s store schema to ``target`` (default: head); True if this call migrated.

    The revision is read without a lock (the usual case: at head already); otherwise the
    store's write lock is taken, the revision read again and the upgrade run inside that one
    transaction.
    """
    head, known = revisions(migrations)
    target = target or head
    with db.read() as conn:
        found = _found(conn, db)
    _check_known(db, found, known, head)
    if found == target:
        return False
    with db.write() as conn:
        found = _found(conn, db)
        _check_known(db, found, known, head)
        if found == target:
            return False
        _run_migrations(conn, db.store, migrations, target)
    logger.info("%s database %s: schema %s -> %s", db.store, db.safe_url, found, target)
    return True


def _found(conn: Connection, db: Database) -> str | None:
    stamps = _revisions.stamped(conn, version_table(db.store))
    if len(stamps) > 1:
        raise DatabaseError(
            f"{db.store} database {db.safe_url} records several schema revisions "
            f"({', '.join(stamps)}) in {version_table(db.store)}; this Qingliang expects one"
        )
    return stamps[0] if stamps else None


#: Alembic's EnvironmentContext installs itself as module globals (``alembic.context``)
#: and removes them on exit: two threads migrating two stores at once in one process
#: (the arm-stats flusher opening its store while another store opens) broke each other
#: (``KeyError: 'script'``). One migration at a time per process, the registry's
#: (lifecycle/registry/_db.py) included. No deadlock: a thread takes this only inside its
#: own store's write lock, and never waits for another store's lock while holding it.
ALEMBIC_LOCK = threading.Lock()


def _run_migrations(conn: Connection, store: str, migrations: Path, target: str) -> None:
    """Alembic's upgrade, run on ``conn`` (already in the locked transaction) with no
    ``env.py``: the store's folder holds only its revisions."""
    from alembic.config import Config
    from alembic.runtime.environment import EnvironmentContext

    script = _script(migrations)
    cfg = Config()
    cfg.set_main_option("script_location", str(migrations))

    def steps(rev: Any, _context: Any) -> Any:
        return script._upgrade_revs(target, rev)

    with (
        ALEMBIC_LOCK,
        EnvironmentContext(cfg, script, fn=steps, destination_rev=target) as env,
    ):
        env.configure(connection=conn, version_table=version_table(store))
        with env.begin_transaction():
            env.run_migrations()


def _check_known(db: Database, found: str | None, known: set[str], head: str) -> None:
    if found is not None and found not in known:
        raise DatabaseError(
            f"{db.store} database {db.safe_url} is at schema revision {found!r}, which this "
            f"Qingliang does not know (its newest is {head!r}): a newer Qingliang wrote it; "
            "upgrade Qingliang or use another database"
        )

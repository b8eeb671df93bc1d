"""A store's handle on its database: opened on first use, again in a forked child.

The conversation log, the router log, agent runs and pipeline runs each keep one
:class:`StoreDatabase`. It resolves where the store lives once (an explicit URL,
``$QINGLIANG_DATABASE_URL``, or the store's SQLite file as before) and opens it with
:func:`~qingliang.platform.storage.database.open_database` on the first read or write
(never in a constructor), so its migrations run once per process. A process forked from
one that used the store opens its own (the layer's cache forgets its parent's engines).

For hot paths (the router's log is written on every decision) :meth:`StoreDatabase.transaction`
runs a write transaction's statements straight on a pooled driver connection (the same
lock, ``BEGIN IMMEDIATE`` on SQLite and the store's advisory lock on PostgreSQL, and the same
errors as :meth:`~qingliang.platform.storage.database.Database.write`), and
:meth:`StoreDatabase.query` reads one statement the same way: SQLAlchemy's statement handling
costs several times the statements themselves there.

On SQLite each pooled connection also gets the store's per-connection settings when it is
first checked out (``synchronous=NORMAL``, which is safe in WAL mode: a crash of the
process loses nothing committed), as the stores had before they moved onto the layer.

Example:
    >>> import tempfile
    >>> from sqlalchemy import text
    >>> db = StoreDatabase(Path(tempfile.mkdtemp()) / "x.sqlite", "state",
    ...                    MIGRATIONS / "state")  # doctest: +SKIP
    >>> with db.read() as c:  # doctest: +SKIP
    ...     c.execute(text("SELECT count(*) FROM manifests")).scalar_one()
    0
"""

from __future__ import annotations

import functools
import os
import re
import threading
import time
import weakref
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine, event, exc
from sqlalchemy.engine import make_url

from qingliang.platform.storage.database import (
    Database,
    database_url,
    lock_key,
    open_database,
)
from qingliang.platform.storage.sqlite import BUSY_TIMEOUT_S

#: The stores' Alembic revisions, one folder per store.
MIGRATIONS = Path(__file__).resolve().parent / "migrations"


class StoreDatabase:
    """One store's database in this process (thread-safe; reopened after ``fork()``).

    Args:
        path: The store's SQLite file, used when neither ``url`` nor
            ``$QINGLIANG_DATABASE_URL`` is given (its name is the store's file name).
        store: The store's name (its version table is ``qingliang_<store>_version``).
        migrations: The store's revisions folder.
        url: A database URL that wins over both.
        pragmas: SQLite only: ``PRAGMA`` statements run once on each new connection.
    """

    def __init__(
        self,
        path: Path,
        store: str,
        migrations: Path,
        *,
        url: str | None = None,
        pragmas: Sequence[str] = ("synchronous=NORMAL",),
    ) -> None:
        path = Path(path)
        self.url = url or database_url(path.parent, store, file=path.name)
        self.store = store
        self._migrations = migrations
        self._pragmas = tuple(pragmas)
        try:
            parsed = make_url(self.url)
        except (exc.ArgumentError, ValueError):  # opening it says what is wrong with it
            parsed = None
        backend = parsed.get_backend_name() if parsed is not None else ""
        #: The SQLite file, or None on a server.
        self.sqlite_path: Path | None = (
            Path(parsed.database) if parsed is not None and backend == "sqlite" and parsed.database
            else None
        )  # fmt: skip
        self._lock = threading.Lock()
        self._db: Database | None = None
        self._pid = 0
        self._engine_of: tuple[Database, Engine] | None = None

    def __repr__(self) -> str:
        return f"StoreDatabase({self.store!r}, {self.database.safe_url if self._db else '…'})"

    @property
    def database(self) -> Database:
        """The opened database (migrated; opened now if it was not)."""
        db = self._db
        if db is not None and self._pid == os.getpid():
            return db
        with self._lock:
            if self._db is None or self._pid != os.getpid():
                db = open_database(self.url, store=self.store, migrations=self._migrations)
                if db.dialect == "sqlite" and self._pragmas:
                    with db.read() as conn:
                        _tune(conn.engine, self._pragmas)
                self._db, self._pid = db, os.getpid()
            return self._db

    @property
    def opened(self) -> bool:
        """Whether this process has opened the database."""
        return self._db is not None and self._pid == os.getpid()

    @property
    def dialect(self) -> str:
        """``sqlite`` or ``postgresql`` (without opening anything)."""
        return "sqlite" if self.sqlite_path is not None or self.url.startswith("sqlite") else (
            "postgresql"
        )  # fmt: skip

    def exists(self) -> bool:
        """False only for a SQLite file that is not there yet (reading it must not create
        it); a server database is always there."""
        return self.sqlite_path is None or self.opened or self.sqlite_path.exists()

    @contextmanager
    def read(self) -> Iterator[Connection]:
        """One read transaction."""
        with self.database.read() as conn:
            yield conn

    @contextmanager
    def write(self, *, wait_s: float | None = None) -> Iterator[Connection]:
        """One write transaction holding the store's write lock."""
        with self.database.write(wait_s=wait_s) as conn:
            yield conn

    def query(self, sql: str, params: Mapping[str, Any] | None = None) -> list[tuple]:
        """The rows of one read statement (``:name`` parameters), on a pooled driver
        connection (:meth:`~qingliang.platform.storage.database.Database.query`)."""
        return self.database.query(sql, params)

    @contextmanager
    def transaction(self, *, wait_s: float | None = None) -> Iterator[Statements]:
        """One write transaction holding the store's write lock, its statements run straight
        on a pooled driver connection: committed when the block ends, rolled back when it
        raises. Driver errors become the layer's (``Conflict``, ``DatabaseError`` naming the
        database; ``DatabaseBusy`` when the lock was not had within ``wait_s``, by default
        the 30 s busy timeout on SQLite and no limit on PostgreSQL)."""
        db = self.database
        engine = self._engine(db)
        sqlite = db.dialect == "sqlite"
        with db.translated():
            raw, cursor = self._begun(engine, sqlite, wait_s)

            def end(commit: bool) -> None:
                if sqlite:
                    cursor.execute("COMMIT" if commit else "ROLLBACK")
                elif commit:
                    raw.driver_connection.commit()
                else:
                    raw.driver_connection.rollback()

            try:
                try:
                    yield Statements(cursor, db.dialect)
                except BaseException:
                    with suppress(Exception):
                        end(commit=False)
                    raise
                end(commit=True)
            except engine.dialect.loaded_dbapi.Error as e:
                if engine.dialect.is_disconnect(e, raw.dbapi_connection, None):
                    raw.invalidate(e)
                else:
                    with suppress(Exception):
                        end(commit=False)
                raise _wrapped(engine, e) from e
            finally:
                with suppress(Exception):
                    cursor.close()
                raw.close()  # back to the pool

    def _begun(self, engine: Engine, sqlite: bool, wait_s: float | None) -> tuple[Any, Any]:
        """A pooled driver connection and its cursor, the write transaction begun and the
        store's lock held. A pooled connection the server dropped (a restart, a fail-over)
        is replaced, and the pool renewed, once: nothing had run on it."""
        for attempt in (1, 2):
            raw = engine.raw_connection()
            try:
                cursor = raw.cursor()
                ms = None if wait_s is None else max(1, int(wait_s * 1000))
                if sqlite:
                    if ms is not None:
                        cursor.execute(f"PRAGMA busy_timeout = {ms}")
                    try:
                        cursor.execute("BEGIN IMMEDIATE")
                    finally:
                        if ms is not None:
                            cursor.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT_S * 1000)}")
                else:
                    if ms is not None:
                        cursor.execute(f"SET LOCAL lock_timeout = {ms}")
                    cursor.execute(
                        "SELECT pg_advisory_xact_lock(%(key)s)", {"key": lock_key(self.store)}
                    )
                    if ms is not None:
                        cursor.execute("SET LOCAL lock_timeout = 0")
                return raw, cursor
            except engine.dialect.loaded_dbapi.Error as e:
                dropped = engine.dialect.is_disconnect(e, raw.dbapi_connection, None)
                if dropped:
                    raw.invalidate(e)
                    engine.dispose()  # the others in the pool went with it
                else:
                    with suppress(Exception):
                        raw.driver_connection.rollback()  # type: ignore[union-attr]
                raw.close()
                if not (dropped and attempt == 1):
                    raise _wrapped(engine, e) from e
        raise AssertionError("unreachable")  # pragma: no cover

    @contextmanager
    def advisory_lock(self, name: str, *, wait_s: float = 0.0) -> Iterator[bool]:
        """PostgreSQL: take the session-level advisory lock ``name`` on a pooled connection
        kept for the block (released at its end, or by the server when this process's
        connection goes), retrying for up to ``wait_s``; yields whether it was had. SQLite:
        yields True (a file is one machine's: its stores lock with files).
        """
        if self.dialect != "postgresql":
            yield True
            return
        db = self.database
        engine = self._engine(db)
        key = {"key": lock_key(f"lock_{name}")}
        with db.translated():
            raw = engine.raw_connection()
            driver: Any = raw.driver_connection
            got = False
            try:
                cursor = raw.cursor()
                deadline = time.monotonic() + wait_s
                while True:
                    cursor.execute("SELECT pg_try_advisory_lock(%(key)s)", key)
                    row = cursor.fetchone()
                    got = bool(row and row[0])
                    driver.commit()  # a session lock outlives the statement's transaction
                    if got or time.monotonic() >= deadline:
                        break
                    time.sleep(0.05)
                yield got
            except engine.dialect.loaded_dbapi.Error as e:
                raise _wrapped(engine, e) from e
            finally:
                if got:
                    try:
                        cursor.execute("SELECT pg_advisory_unlock(%(key)s)", key)
                        driver.commit()
                    except Exception as e:  # closing the connection releases it
                        raw.invalidate(e)
                raw.close()

    def error(self, e: Exception) -> Exception:
        """The layer's error for the driver's error ``e`` (``Conflict``, ``DatabaseError``
        naming the database); any other error as it is."""
        db = self.database
        engine = self._engine(db)
        if not isinstance(e, engine.dialect.loaded_dbapi.Error):
            return e
        try:
            with db.translated():
                raise _wrapped(engine, e) from e
        except Exception as out:  # what translated() made of it
            return out

    def _engine(self, db: Database) -> Engine:
        """``db``'s engine (for its pooled driver connections)."""
        if self._engine_of is None or self._engine_of[0] is not db:
            with db.read() as conn:
                self._engine_of = (db, conn.engine)
        return self._engine_of[1]

    def checkpoint(self) -> None:
        """SQLite: move the WAL into the file now (PASSIVE: never waits); else nothing."""
        if self.dialect != "sqlite":
            return
        db = self.database
        with db.translated(), db.read() as conn:
            engine = conn.engine
        with db.translated(), engine.connect() as conn:
            # The driver's own connection: no transaction around the checkpoint.
            conn.connection.driver_connection.execute("PRAGMA wal_checkpoint(PASSIVE)")  # type: ignore[union-attr]

    def close(self) -> None:
        """Close this process's pooled connections to the database (a later call reopens)."""
        with self._lock:
            db, self._db = self._db, None
        if db is not None and self._pid == os.getpid():
            db.close()


class Statements:
    """The statements of one :meth:`StoreDatabase.transaction` (``:name`` parameters)."""

    def __init__(self, cursor: Any, dialect: str) -> None:
        self._cursor = cursor
        self._pg = dialect == "postgresql"

    def execute(self, sql: str, params: Mapping[str, Any] | None = None) -> int:
        """Run one statement; the rows it changed."""
        self._cursor.execute(_driver_sql(sql, self._pg), params or {})
        return int(self._cursor.rowcount)

    def executemany(self, sql: str, rows: Sequence[Mapping[str, Any]]) -> None:
        """Run one statement once per parameter set."""
        self._cursor.executemany(_driver_sql(sql, self._pg), rows)

    def rows(self, sql: str, params: Mapping[str, Any] | None = None) -> list[tuple]:
        """The rows of one statement."""
        self._cursor.execute(_driver_sql(sql, self._pg), params or {})
        return [tuple(r) for r in self._cursor.fetchall()]

    def first(self, sql: str, params: Mapping[str, Any] | None = None) -> tuple | None:
        """The first row of one statement, or None."""
        self._cursor.execute(_driver_sql(sql, self._pg), params or {})
        row = self._cursor.fetchone()
        return None if row is None else tuple(row)


def _wrapped(engine: Engine, e: Exception) -> exc.DBAPIError:
    """SQLAlchemy's exception for the driver's (what the layer translates)."""
    error = engine.dialect.loaded_dbapi.Error
    return exc.DBAPIError.instance(None, None, e, error, dialect=engine.dialect)  # type: ignore[arg-type,return-value]


@functools.lru_cache(maxsize=512)
def _driver_sql(sql: str, pg: bool) -> str:
    """``sql`` in the driver's parameter style: pysqlite takes ``:name``; psycopg takes
    ``%(name)s`` (and a literal ``%`` doubled)."""
    if not pg:
        return sql
    return re.sub(r"(?<![:\w]):([A-Za-z_]\w*)", r"%(\1)s", sql.replace("%", "%%"))


def in_list(prefix: str, values: Sequence[Any]) -> tuple[str, dict[str, Any]]:
    """``(:p0, :p1, …)`` and its parameters, for ``column IN (…)``.

    Example:
        >>> in_list("t", ["a", "b"])
        ('(:t0, :t1)', {'t0': 'a', 't1': 'b'})
    """
    names = [f"{prefix}{i}" for i in range(len(values))]
    return "(" + ", ".join(f":{n}" for n in names) + ")", dict(zip(names, values, strict=True))


def _tune(engine: Engine, pragmas: tuple[str, ...]) -> None:
    """Run ``pragmas`` on each connection of ``engine`` at its first checkout (outside any
    transaction: some, such as ``synchronous``, cannot change inside one)."""

    def checkout(dbapi_conn: Any, record: Any, _proxy: Any) -> None:
        done = record.info.setdefault("qingliang_pragmas", set())
        for pragma in pragmas:
            if pragma not in done:
                dbapi_conn.execute(f"PRAGMA {pragma}")
                done.add(pragma)

    with _tuned_lock:
        done = _tuned.setdefault(engine, set())
        if pragmas not in done:
            event.listen(engine, "checkout", checkout)
            done.add(pragmas)


_tuned_lock = threading.Lock()
#: The pragma sets already hooked onto each engine (a store opened twice hooks once).
_tuned: weakref.WeakKeyDictionary[Engine, set[tuple[str, ...]]] = weakref.WeakKeyDictionary()

"""The SQLite helper of the files that stay on one machine: owner-only files, WAL, and
write transactions.

The platform's shared stores (applied state, keys, arm statistics, conversations, the router
log, agent and pipeline runs, the registry) go through
:mod:`~qingliang.platform.storage.database` instead, which can also put them on PostgreSQL;
it creates their SQLite files with :func:`create_private`. The stores still on plain SQLite
(the KB ledger, dataset versions, agent checkpoints' inline saver, demo jobs) open their
file with :func:`open_db` and wrap every write in :func:`write`: one ``BEGIN IMMEDIATE``
transaction, committed on success and rolled back on any error, so concurrent writers
serialise behind SQLite's busy timeout and a failure leaves the previous rows as they were.

Example:
    >>> import tempfile
    >>> path = Path(tempfile.mkdtemp()) / "x.sqlite"
    >>> with open_db(path, "CREATE TABLE IF NOT EXISTS t (v INTEGER);") as conn:
    ...     with write(conn):
    ...         _ = conn.execute("INSERT INTO t VALUES (1)")
    ...     conn.execute("SELECT v FROM t").fetchall()
    [(1,)]
"""

from __future__ import annotations

import os
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

#: Seconds a writer waits for another's transaction before SQLite gives up (busy timeout).
BUSY_TIMEOUT_S = 30.0


def create_private(path: Path) -> None:
    """Create the file ``path`` readable by its owner only (0600), and its directory (0700)
    if missing; an existing file or directory is left as it is.

    SQLite creates a database with the process's umask (usually 0644) and gives its
    ``-wal`` and ``-shm`` files the database's mode, so the file is created here first.
    Whichever of the platform's stores opens a new file first (the state store and the key
    store share ``state.sqlite``), it ends up owner-only: the database layer calls this
    before SQLite opens a file.

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


def connect(path: Path, *, timeout: float = BUSY_TIMEOUT_S, wal: bool = True) -> sqlite3.Connection:
    """An autocommit connection to ``path`` in WAL mode; a new file is created owner-only.

    Autocommit (``isolation_level=None``) so that reads take no lock and every write opens
    its own transaction with :func:`write`, where the busy timeout applies.

    Args:
        path: The database file.
        timeout: The busy timeout, in seconds.
        wal: Switch the file to WAL here; a store that does so once, when it prepares the
            file (with :func:`use_wal`), opens its later connections with ``wal=False``.
    """
    path = Path(path)
    create_private(path)
    conn = sqlite3.connect(path, timeout=timeout, isolation_level=None, check_same_thread=False)
    if wal:
        try:
            conn.execute("PRAGMA journal_mode=WAL")
        except sqlite3.Error:
            conn.close()
            raise
    return conn


def use_wal(conn: sqlite3.Connection, *, timeout: float = BUSY_TIMEOUT_S) -> None:
    """Switch ``conn``'s file to WAL, retrying for up to ``timeout`` seconds while locked.

    Changing the journal mode needs an exclusive lock and SQLite does not wait for it on
    the busy handler, so processes racing on a new file retry here.
    """
    deadline = time.monotonic() + timeout
    while True:
        try:
            if conn.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
                conn.execute("PRAGMA journal_mode=WAL").fetchall()
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.02)


@contextmanager
def open_db(
    path: Path, schema: str, *, timeout: float = BUSY_TIMEOUT_S
) -> Iterator[sqlite3.Connection]:
    """A :func:`connect` connection with ``schema`` applied (idempotent ``CREATE ... IF NOT
    EXISTS`` statements), closed on exit."""
    conn = connect(path, timeout=timeout)
    try:
        conn.executescript(schema)
        yield conn
    finally:
        conn.close()


@contextmanager
def write(conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """One ``BEGIN IMMEDIATE`` transaction on an autocommit connection: committed when the
    block ends, rolled back when it (or the commit) raises; the exception goes on."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield conn
        conn.execute("COMMIT")
    except BaseException:
        with suppress(sqlite3.Error):
            conn.execute("ROLLBACK")
        raise

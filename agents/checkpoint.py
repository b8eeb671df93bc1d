"""Durable checkpointers for agent runs: SQLite in the data directory, or PostgreSQL.

LangGraph writes a checkpoint after every step of a run (``durability="sync"``: the write
finishes before the next step starts), so a run resumes from its last finished step
after an interrupt, a restart or a crash. One checkpointer serves every graph of a kind;
runs are separated by thread id (the run id).

PostgreSQL (``checkpointer: {kind: postgres, dsn_env: VAR}``): the DSN comes from the
environment variable the manifest names, never from the manifest, and is never logged or
put in an error. The tables are created on first use (LangGraph's migrations, one process
at a time under an advisory lock). Connections come from a small pool that checks each
one before use, so a server restart or a dropped connection costs no run.

Example:
    >>> async with Checkpointers(home) as cps:            # doctest: +SKIP
    ...     saver = await cps.get(graph.spec.checkpointer)
"""

from __future__ import annotations

import asyncio
import logging
import os
from pathlib import Path
from typing import Any

from qingliang.agents.manifest import Checkpointer
from qingliang.platform.errors import ResolveError
from qingliang.platform.storage.sqlite import create_private

log = logging.getLogger(__name__)

CHECKPOINT_DB = "checkpoints.sqlite"
#: Seconds to wait for a PostgreSQL connection when the DSN (or PGCONNECT_TIMEOUT) does
#: not say: libpq's default is to wait forever on a host that drops packets.
PG_CONNECT_TIMEOUT_S = 10
#: pg_advisory_lock key held while the checkpoint tables are created or migrated, so that
#: replicas starting together do not run LangGraph's migrations twice.
PG_SETUP_LOCK = 0x51_4C_43_4B_50_54  # "QLCKPT"
PG_SETUP_WAIT_S = 120


def inline_sqlite_saver(path: Path) -> Any:
    """LangGraph's :class:`SqliteSaver` with its async methods run inline, its async
    writes committed in groups.

    ``AsyncSqliteSaver`` hands every statement to aiosqlite's worker thread and back; a
    checkpoint is a few sub-millisecond statements on a local WAL file, so the hops cost
    more than the work (a 3-node run: 18 ms with it, 8 ms inline; see bench/RESULTS.md
    "Agents"). Same schema and code as LangGraph's savers; the connection is shared
    under the saver's lock.

    A commit costs more than a checkpoint's statements, and a run writes nine times, so
    ``aput``, ``aput_writes`` and ``adelete_thread`` commit together with the other
    runs' writes of the same turn of the event loop
    (:class:`~qingliang.agents.runs.WriteGroups`). Each returns only once committed, as
    with a commit of its own: with ``durability="sync"`` a step's checkpoint is still
    committed before the next step starts. The sync methods commit at once.
    """
    import contextlib
    import inspect
    import sqlite3
    import threading

    from langgraph.checkpoint.sqlite import SqliteSaver

    from qingliang.agents.runs import WriteGroups

    class InlineSqliteSaver(SqliteSaver):
        def __init__(self, conn: sqlite3.Connection) -> None:
            super().__init__(conn)
            # Reentrant: a group holds it around the writes it runs, which take it again.
            self.lock = threading.RLock()  # type: ignore[assignment]
            self._groups = WriteGroups(conn, self.lock)

        @contextlib.contextmanager
        def cursor(self, transaction: bool = True) -> Any:
            with self.lock:
                self.setup()
                cur = self.conn.cursor()
                try:
                    yield cur
                finally:
                    if transaction and not self._groups.active:
                        self.conn.commit()
                    cur.close()

        async def aget_tuple(self, config: Any) -> Any:
            return self.get_tuple(config)

        async def alist(self, config: Any, **kw: Any) -> Any:
            for item in self.list(config, **kw):
                yield item

        async def aput(self, config: Any, checkpoint: Any, metadata: Any, versions: Any) -> Any:
            return await self._groups.write(
                lambda: self.put(config, checkpoint, metadata, versions)
            )

        async def aput_writes(
            self, config: Any, writes: Any, task_id: str, task_path: str = ""
        ) -> None:
            await self._groups.write(lambda: self.put_writes(config, writes, task_id, task_path))

        async def adelete_thread(self, thread_id: str) -> None:
            await self._groups.write(lambda: self.delete_thread(thread_id))

        async def aget_delta_channel_history(self, *args: Any, **kw: Any) -> Any:
            return self.get_delta_channel_history(*args, **kw)

    # LangGraph asks inspect.signature whether aput_writes takes task_path at every run
    # (about 20 µs); a precomputed __signature__ answers in a third of that.
    method: Any = InlineSqliteSaver.aput_writes
    method.__signature__ = inspect.signature(method)

    create_private(path)  # checkpoints hold users' conversations: owner-only
    conn = sqlite3.connect(str(path), timeout=30, check_same_thread=False)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    saver = InlineSqliteSaver(conn)
    saver.setup()
    return saver


def postgres_saver(conn: Any) -> Any:
    """LangGraph's :class:`AsyncPostgresSaver` on ``conn`` (a connection or a pool) that
    also stores strings containing NUL.

    The saver keeps str/int/float/bool channel values inline in the checkpoint's JSONB
    column, and JSONB cannot hold ``\\u0000`` (SQLite and the blob table can): a run
    whose input had a NUL byte failed at its first checkpoint. Such values go to the blob
    table instead; reading needs no change (a channel missing inline is read from there).
    """
    from langgraph.checkpoint.postgres.aio import AsyncPostgresSaver

    class PostgresSaver(AsyncPostgresSaver):
        async def aput(self, config: Any, checkpoint: Any, metadata: Any, versions: Any) -> Any:
            values = checkpoint["channel_values"]
            nul = {k: v for k, v in values.items() if isinstance(v, str) and "\x00" in v}
            if nul:
                cfg = config["configurable"]
                new = {k: versions[k] for k in nul if k in versions}
                if new:
                    rows = self._dump_blobs(
                        cfg["thread_id"], cfg.get("checkpoint_ns", ""), nul, new
                    )
                    async with self._cursor(pipeline=True) as cur:
                        await cur.executemany(self.UPSERT_CHECKPOINT_BLOBS_SQL, rows)
                kept = {k: v for k, v in values.items() if k not in nul}
                checkpoint = {**checkpoint, "channel_values": kept}
            return await super().aput(config, checkpoint, metadata, versions)

    return PostgresSaver(conn)


def _pg_conninfo(var: str, dsn: str) -> tuple[str, str | None]:
    """The DSN with a connect timeout, and its password (to keep it out of messages)."""
    from psycopg import ProgrammingError
    from psycopg.conninfo import conninfo_to_dict, make_conninfo

    try:
        params = conninfo_to_dict(dsn)
    except ProgrammingError:
        # libpq's message quotes the string, which may hold the password: not repeated.
        raise ResolveError(
            f"checkpointer.dsn_env: environment variable {var} does not hold a valid "
            "PostgreSQL DSN (postgresql://user:password@host:port/database, or "
            "key=value pairs)"
        ) from None
    password = params.get("password")
    if "connect_timeout" not in params and not os.environ.get("PGCONNECT_TIMEOUT"):
        dsn = make_conninfo(dsn, connect_timeout=PG_CONNECT_TIMEOUT_S)
    return dsn, str(password) if password else None


def _scrub(exc: BaseException, password: str | None) -> str:
    """The server's message of ``exc``, on one line, without ``password``."""
    from urllib.parse import quote

    text = " ".join(str(exc).split()) or type(exc).__name__
    if password:
        for form in {password, quote(password, safe="")}:
            text = text.replace(form, "***")
    return text


async def _pg_setup(conn: Any) -> None:
    """Create or migrate the checkpoint tables, one process at a time."""
    from langgraph.checkpoint.postgres.aio import AsyncPostgresSaver

    # Polled, not a blocking pg_advisory_lock(): a waiter's open statement would hold up
    # the holder's CREATE INDEX CONCURRENTLY (which waits for older transactions).
    deadline = asyncio.get_running_loop().time() + PG_SETUP_WAIT_S
    while True:
        row = await (
            await conn.execute("SELECT pg_try_advisory_lock(%s)", (PG_SETUP_LOCK,))
        ).fetchone()
        if row and next(iter(row.values())):
            break
        if asyncio.get_running_loop().time() > deadline:
            raise TimeoutError(f"another process held the setup lock for {PG_SETUP_WAIT_S} s")
        await asyncio.sleep(0.1)
    try:
        await AsyncPostgresSaver(conn).setup()
    finally:
        await conn.execute("SELECT pg_advisory_unlock(%s)", (PG_SETUP_LOCK,))


class Checkpointers:
    """Opens each configured checkpointer once and closes them together."""

    def __init__(self, home: Path) -> None:
        self.home = Path(home)
        self._open: dict[tuple[str, str | None], Any] = {}
        self._contexts: list[Any] = []
        self._lock = asyncio.Lock()

    async def __aenter__(self) -> Checkpointers:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def get(self, spec: Checkpointer) -> Any:
        key = (spec.kind, spec.dsn_env)
        # Locked: opening PostgreSQL awaits, and two runs starting together must share
        # one saver (and one pool).
        async with self._lock:
            if key not in self._open:
                self._open[key] = await self._make(spec)
        return self._open[key]

    async def _make(self, spec: Checkpointer) -> Any:
        if spec.kind == "sqlite":
            path = self.home / CHECKPOINT_DB
            saver = inline_sqlite_saver(path)
            self._contexts.append(saver.conn)
            return saver
        return await self._postgres(str(spec.dsn_env))

    async def _postgres(self, var: str) -> Any:
        dsn = os.environ.get(var)
        if not dsn:
            raise ResolveError(f"checkpointer.dsn_env: environment variable {var} is not set")
        try:
            from langgraph.checkpoint.postgres.aio import AsyncPostgresSaver  # noqa: F401
            from psycopg import AsyncConnection, Error
            from psycopg.rows import dict_row
            from psycopg_pool import AsyncConnectionPool, PoolTimeout
        except ImportError as exc:
            raise ResolveError(
                f"checkpointer.kind postgres needs langgraph-checkpoint-postgres and psycopg "
                f"({exc}); reinstall qingliang"
            ) from None
        conninfo, password = _pg_conninfo(var, dsn)
        where = f"the PostgreSQL server in {var}"
        # The saver's own settings: autocommit (its migrations create indexes
        # CONCURRENTLY), no server-side prepared statements (PgBouncer), dict rows.
        kwargs: dict[str, Any] = {
            "autocommit": True,
            "prepare_threshold": 0,
            "row_factory": dict_row,
        }
        # One direct connection first: its error says why (a pool would only time out).
        try:
            conn = await AsyncConnection.connect(conninfo, **kwargs)
        except Error as exc:
            raise ResolveError(
                f"checkpointer.dsn_env: cannot connect to {where}: {_scrub(exc, password)}"
            ) from None
        try:
            async with conn:
                await _pg_setup(conn)
        except (Error, TimeoutError) as exc:
            raise ResolveError(
                f"checkpointer.dsn_env: cannot create the checkpoint tables on {where}: "
                f"{_scrub(exc, password)}"
            ) from None
        pool = AsyncConnectionPool(
            conninfo,
            min_size=1,
            max_size=2,  # the saver runs one statement at a time under its own lock
            kwargs=kwargs,
            check=AsyncConnectionPool.check_connection,
            open=False,
            name=f"checkpoints-{var}",
        )
        try:
            await pool.open(wait=True, timeout=PG_CONNECT_TIMEOUT_S + 5)
        except PoolTimeout as exc:
            await pool.close()
            raise ResolveError(
                f"checkpointer.dsn_env: cannot open a connection pool to {where}: "
                f"{_scrub(exc, password)}"
            ) from None
        self._contexts.append(pool)
        log.debug("PostgreSQL checkpointer from %s ready", var)
        return postgres_saver(pool)

    async def close(self) -> None:
        for ctx in reversed(self._contexts):
            try:
                if hasattr(ctx, "__aexit__"):
                    await ctx.__aexit__(None, None, None)
                else:
                    await ctx.close()
            except Exception:  # closing is best effort; the data is already durable
                log.debug("closing a checkpointer failed", exc_info=True)
        self._contexts.clear()
        self._open.clear()

"""Durable checkpointers for agent runs: SQLite in the data directory, or PostgreSQL.

LangGraph writes a checkpoint after every step of a run (``durability="sync"``: the write
finishes before the next step starts), so a run resumes from its last finished step
after an interrupt, a restart or a crash. One checkpointer serves every graph of a kind;
runs are separated by thread id (the run id).

PostgreSQL needs ``pip install 'qingliang[postgres]'`` (langgraph-checkpoint-postgres);
the DSN comes from the environment variable the manifest names, never from the manifest.

Example:
    >>> async with Checkpointers(home) as cps:            # doctest: +SKIP
    ...     saver = await cps.get(graph.spec.checkpointer)
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from qingliang.agents.manifest import Checkpointer
from qingliang.platform.errors import ResolveError

log = logging.getLogger(__name__)

CHECKPOINT_DB = "checkpoints.sqlite"


def inline_sqlite_saver(path: Path) -> Any:
    """LangGraph's :class:`SqliteSaver` with its async methods run inline.

    ``AsyncSqliteSaver`` hands every statement to aiosqlite's worker thread and back; a
    checkpoint is a few sub-millisecond statements on a local WAL file, so the hops cost
    more than the work (a 3-node run: 18 ms with it, 8 ms inline; see bench/RESULTS.md
    "Agents"). Same schema and code as LangGraph's savers; the connection is shared
    under the saver's lock.
    """
    import sqlite3

    from langgraph.checkpoint.sqlite import SqliteSaver

    class InlineSqliteSaver(SqliteSaver):
        async def aget_tuple(self, config: Any) -> Any:
            return self.get_tuple(config)

        async def alist(self, config: Any, **kw: Any) -> Any:
            for item in self.list(config, **kw):
                yield item

        async def aput(self, config: Any, checkpoint: Any, metadata: Any, versions: Any) -> Any:
            return self.put(config, checkpoint, metadata, versions)

        async def aput_writes(
            self, config: Any, writes: Any, task_id: str, task_path: str = ""
        ) -> None:
            self.put_writes(config, writes, task_id, task_path)

        async def adelete_thread(self, thread_id: str) -> None:
            self.delete_thread(thread_id)

        async def aget_delta_channel_history(self, *args: Any, **kw: Any) -> Any:
            return self.get_delta_channel_history(*args, **kw)

    path.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(str(path), timeout=30, check_same_thread=False)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    saver = InlineSqliteSaver(conn)
    saver.setup()
    return saver


class Checkpointers:
    """Opens each configured checkpointer once and closes them together."""

    def __init__(self, home: Path) -> None:
        self.home = Path(home)
        self._open: dict[tuple[str, str | None], Any] = {}
        self._contexts: list[Any] = []

    async def __aenter__(self) -> Checkpointers:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def get(self, spec: Checkpointer) -> Any:
        key = (spec.kind, spec.dsn_env)
        if key not in self._open:
            self._open[key] = await self._make(spec)
        return self._open[key]

    async def _make(self, spec: Checkpointer) -> Any:
        if spec.kind == "sqlite":
            path = self.home / CHECKPOINT_DB
            saver = inline_sqlite_saver(path)
            self._contexts.append(saver.conn)
            return saver
        dsn = os.environ.get(str(spec.dsn_env))
        if not dsn:
            raise ResolveError(
                f"checkpointer.dsn_env: environment variable {spec.dsn_env} is not set"
            )
        try:
            from langgraph.checkpoint.postgres.aio import AsyncPostgresSaver
        except ImportError:
            raise ResolveError(
                "checkpointer.kind postgres needs langgraph-checkpoint-postgres: "
                "pip install 'qingliang[postgres]'"
            ) from None
        ctx = AsyncPostgresSaver.from_conn_string(dsn)
        saver = await ctx.__aenter__()
        self._contexts.append(ctx)
        await saver.setup()
        return saver

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

"""The conversation log: answered requests, kept for review and training data.

When the gateway runs with ``conversation_log`` on (``qingliang up --log-conversations``)
every answered ``/v1/chat/completions`` and ``/v1/completions`` request becomes rows of
``$QINGLIANG_HOME/conversations.sqlite``, one per choice (``n > 1`` gives several): who
asked (tenant, key name), what model was asked for and what answered (deployment,
adapter, adapter ref), the messages (a legacy completion's prompt as one user message),
the choice's answer and finish reason, the response's token usage and latency, the choice
index and the endpoint. A file written before the last two columns existed gets them
(``choice`` 0, ``endpoint`` ``chat``) when it is first opened.
:meth:`ConversationLog.export` writes them as the JSONL that a Dataset's ``gateway_logs``
source reads, which closes the loop "answers → reviewed → training data";
:meth:`ConversationLog.purge` enforces retention.

Rows are only added (an UPDATE is refused) or purged by age. :meth:`ConversationLog.append`
never touches the disk: rows go onto a queue, bounded in rows and in bytes, that a
background thread writes in batches (one transaction per batch, at most every
``flush_interval_s``), so the gateway's event loop never pays for a commit.
:meth:`~ConversationLog.close` writes what is queued.
The file is created readable by its owner only: it holds prompts and answers in plain
text. Nothing here logs their content.

Example:
    >>> import io, tempfile, pathlib
    >>> log = ConversationLog(pathlib.Path(tempfile.mkdtemp()) / "conversations.sqlite")
    >>> log.append(Conversation(
    ...     id="chatcmpl-1", created=1_750_000_000.0, model="qwen", deployment="qwen",
    ...     messages=[{"role": "user", "content": "hi"}], response="Hello!"))
    >>> log.count()
    1
    >>> out = io.StringIO()
    >>> log.export(out)
    1
    >>> json.loads(out.getvalue())["response"]
    'Hello!'
    >>> log.close()
"""

from __future__ import annotations

import json
import logging
import queue
import sqlite3
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import closing, contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from qingliang.platform.storage.sqlite import connect, use_wal, write

logger = logging.getLogger(__name__)

FILE_NAME = "conversations.sqlite"
#: How long a call waits for another process's write lock before failing.
BUSY_TIMEOUT_S = 30.0

_SCHEMA = """
CREATE TABLE IF NOT EXISTS conversations (
    seq               INTEGER PRIMARY KEY AUTOINCREMENT,
    id                TEXT NOT NULL,
    created           REAL NOT NULL,
    tenant            TEXT,
    key_name          TEXT,
    model             TEXT NOT NULL,
    deployment        TEXT NOT NULL,
    adapter           TEXT,
    adapter_ref       TEXT,
    messages          TEXT NOT NULL,
    response          TEXT,
    finish_reason     TEXT,
    prompt_tokens     INTEGER,
    completion_tokens INTEGER,
    latency_ms        INTEGER,
    choice            INTEGER NOT NULL DEFAULT 0,
    endpoint          TEXT NOT NULL DEFAULT 'chat'
);
CREATE INDEX IF NOT EXISTS conversations_created ON conversations (created);
CREATE TRIGGER IF NOT EXISTS conversations_no_update BEFORE UPDATE ON conversations
BEGIN SELECT RAISE(ABORT, 'the conversation log is append-only'); END;
"""
#: Columns added after the first release, with their definitions: a file created before
#: them gets them by ALTER TABLE (its rows take the defaults).
_ADDED_COLUMNS = {
    "choice": "INTEGER NOT NULL DEFAULT 0",
    "endpoint": "TEXT NOT NULL DEFAULT 'chat'",
}
_COLUMNS = (
    "id, created, tenant, key_name, model, deployment, adapter, adapter_ref, messages, "
    "response, finish_reason, prompt_tokens, completion_tokens, latency_ms, choice, endpoint"
)
_INSERT = f"INSERT INTO conversations ({_COLUMNS}) VALUES ({', '.join(['?'] * 16)})"
_STOP = object()
#: Bytes of queued rows beyond which new ones are dropped (a stuck disk must not grow the
#: gateway's memory without bound: rows of 4 MiB prompts add up fast).
MAX_PENDING_BYTES = 64 * 1024 * 1024


@dataclass(frozen=True)
class Conversation:
    """One choice of an answered request, as the gateway saw it."""

    #: The response id (``chatcmpl-…``, ``cmpl-…``), shared by the response's choices.
    id: str
    #: When the request arrived (unix seconds).
    created: float
    #: ``model`` as the client sent it (``qwen`` or ``qwen:sql``).
    model: str
    deployment: str
    #: The request's ``messages``, as sent; a legacy completion's prompt as one user message.
    messages: Sequence[Any]
    #: The choice's text, or None when it had none (tool calls only).
    response: str | None
    #: The ``tenant:<name>`` scope of the API key; None for operator keys or no auth.
    tenant: str | None = None
    key_name: str | None = None
    adapter: str | None = None
    adapter_ref: str | None = None
    finish_reason: str | None = None
    #: Token usage and latency are the whole response's, shared by its choices.
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    latency_ms: int | None = None
    #: The choice's ``index`` in the response (``n > 1`` answers have several).
    choice: int = 0
    #: ``chat`` (``/v1/chat/completions``) or ``completion`` (``/v1/completions``).
    endpoint: str = "chat"

    def _row(self) -> tuple:
        return (
            self.id,
            float(self.created),
            self.tenant,
            self.key_name,
            self.model,
            self.deployment,
            self.adapter,
            self.adapter_ref,
            json.dumps(list(self.messages), ensure_ascii=False),
            self.response,
            self.finish_reason,
            self.prompt_tokens,
            self.completion_tokens,
            self.latency_ms,
            int(self.choice),
            self.endpoint,
        )


def _row_bytes(row: tuple) -> int:
    """Approximate memory of a stored row: its values' sizes (strings dominate)."""
    return sys.getsizeof(row) + sum(sys.getsizeof(value) for value in row)


def _plain_messages(messages: Any) -> Any:
    """Messages whose content is a list of text parts get that text as one string (the
    shape a ``gateway_logs`` source reads); anything else (images) is left as sent."""
    if not isinstance(messages, list):
        return messages
    out = []
    for m in messages:
        parts = m.get("content") if isinstance(m, dict) else None
        if isinstance(parts, list) and all(
            isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str)
            for p in parts
        ):
            m = {**m, "content": "\n".join(p["text"] for p in parts)}
        out.append(m)
    return out


def _export_line(row: tuple) -> dict[str, Any]:
    (id_, created, tenant, key_name, model, deployment, adapter, adapter_ref) = row[:8]
    messages, response, finish, prompt_tokens, completion_tokens, latency_ms = row[8:14]
    choice, endpoint = row[14:]
    usage = None
    if prompt_tokens is not None or completion_tokens is not None:
        usage = {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": (prompt_tokens or 0) + (completion_tokens or 0),
        }
    return {
        "id": id_,
        "created": int(created),
        "tenant": tenant,
        "key_name": key_name,
        "model": model,
        "deployment": deployment,
        "adapter": adapter,
        "adapter_ref": adapter_ref,
        "messages": _plain_messages(json.loads(messages)),
        "response": response,
        "finish_reason": finish,
        "usage": usage,
        "latency_ms": latency_ms,
        "choice": choice,
        "endpoint": endpoint,
    }


def _add_columns(conn: sqlite3.Connection) -> None:
    """Give a file written by an older gateway the columns added since (rows kept)."""

    def missing() -> list[str]:
        have = {r[1] for r in conn.execute("PRAGMA table_info(conversations)")}
        return [c for c in _ADDED_COLUMNS if c not in have]

    if not missing():
        return
    with write(conn):
        # Checked again under the write lock: another process may have added them.
        for column in missing():
            conn.execute(f"ALTER TABLE conversations ADD COLUMN {column} {_ADDED_COLUMNS[column]}")
            logger.info("conversation log: added column %r", column)


class ConversationLog:
    """Append-only SQLite store of answered requests, a row per choice (WAL, busy timeout).

    Nothing is opened until first use. Writes go through a background thread; reads
    (:meth:`export`, :meth:`count`) and :meth:`purge` first wait for what this object has
    queued, then use their own connection, so several processes (gateway replicas, the
    CLI) may use one file at once.

    Args:
        path: The database file (created owner-only on the first write).
        flush_interval_s: At most this long between a row's append and its commit.
        batch_size: At most this many rows per transaction.
        max_pending: Rows queued beyond this are dropped (and counted in ``dropped``)
            rather than growing memory without bound when the disk is stuck.
        max_pending_bytes: Likewise for the rows' size in memory (see
            :attr:`pending_bytes`), counted until each batch is written.
        busy_timeout_s: How long to wait for another writer's lock.
        clock: Time source for :meth:`purge`.
    """

    def __init__(
        self,
        path: Path,
        *,
        flush_interval_s: float = 0.5,
        batch_size: int = 256,
        max_pending: int = 10_000,
        max_pending_bytes: int = MAX_PENDING_BYTES,
        busy_timeout_s: float = BUSY_TIMEOUT_S,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.path = Path(path)
        self._interval = flush_interval_s
        self._batch_size = batch_size
        self._busy_timeout_s = busy_timeout_s
        self._clock = clock
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=max_pending)
        self._max_pending_bytes = max_pending_bytes
        #: Bytes of the rows queued or being written (guarded by _lock).
        self._pending_bytes = 0
        self._lock = threading.Lock()
        # Separate from _lock: preparing may wait on another process's lock, and append
        # (on the gateway's event loop) must never wait for that.
        self._prepare_lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._closed = False
        self._ready = False
        #: Rows that could not be recorded (queue full, closed, or a failed write).
        self.dropped = 0

    @classmethod
    def for_home(cls, home: Path, **kw: Any) -> ConversationLog:
        """The log of the data directory ``home`` (``home/conversations.sqlite``)."""
        return cls(Path(home) / FILE_NAME, **kw)

    def __repr__(self) -> str:
        return f"ConversationLog({str(self.path)!r})"

    # ----------------------------------------------------------------- writing

    @property
    def pending_bytes(self) -> int:
        """Approximate bytes of the rows queued or being written."""
        with self._lock:
            return self._pending_bytes

    def append(self, conversation: Conversation) -> None:
        """Queue one conversation; it is committed within ``flush_interval_s``.

        Never blocks and never raises for a full queue, a closed log or a row that cannot
        be stored: the row is dropped, counted in ``dropped`` and a warning says how many
        so far. The row is serialized here, so the queue holds its final size.
        """
        try:
            row = conversation._row()
        except (TypeError, ValueError) as exc:  # messages that are not JSON
            with self._lock:
                self._drop(1, f"not storable: {exc}")
            return
        size = _row_bytes(row)
        with self._lock:
            if self._closed:
                self._drop(1, "the log is closed")
                return
            if self._pending_bytes + size > self._max_pending_bytes:
                self._drop(
                    1,
                    f"{self._pending_bytes} bytes of conversations are waiting to be written "
                    f"(at most {self._max_pending_bytes})",
                )
                return
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="conversation-log", daemon=True
                )
                self._thread.start()
            try:
                self._queue.put_nowait((row, size))
            except queue.Full:
                self._drop(1, "too many conversations are waiting to be written")
                return
            self._pending_bytes += size

    def flush(self, timeout_s: float | None = BUSY_TIMEOUT_S) -> None:
        """Return once every conversation appended before this call is written."""
        with self._lock:
            running = self._thread is not None and self._thread.is_alive()
        if not running:
            return
        done = threading.Event()
        try:
            self._queue.put(done, timeout=timeout_s)
        except queue.Full:
            logger.warning("%s: the writer is behind; reading without waiting for it", self)
            return
        done.wait(timeout_s)

    def close(self) -> None:
        """Write what is queued and stop the writer; later appends are dropped."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            thread = self._thread
        if thread is not None and thread.is_alive():
            try:
                self._queue.put(_STOP, timeout=self._busy_timeout_s)
            except queue.Full:
                logger.error("%s: the writer is stuck; queued conversations are lost", self)
                return
            thread.join(self._busy_timeout_s + 5)

    def _drop(self, n: int, why: str) -> None:
        # Called with self._lock held.
        self.dropped += n
        if self.dropped == n or self.dropped % 1000 < n:
            logger.warning(
                "%s: %d conversation(s) not recorded so far (%s)", self, self.dropped, why
            )

    def _run(self) -> None:
        conn: sqlite3.Connection | None = None
        try:
            while True:
                rows, markers, stop = self._next_batch()
                if rows:
                    try:
                        conn = self._write(conn, [row for row, _ in rows])
                    finally:  # written or dropped: no longer held
                        with self._lock:
                            self._pending_bytes -= sum(size for _, size in rows)
                for done in markers:
                    done.set()
                if stop:
                    return
        finally:
            if conn is not None:
                conn.close()

    def _next_batch(self) -> tuple[list[tuple[tuple, int]], list[threading.Event], bool]:
        """The rows to write next, each with its size: what arrives within the flush
        interval after the first one, up to ``batch_size``, stopping early at a flush
        marker or the stop signal."""
        item = self._queue.get()
        deadline = time.monotonic() + self._interval
        rows: list[tuple[tuple, int]] = []
        while True:
            if item is _STOP:
                return rows, [], True
            if isinstance(item, threading.Event):
                return rows, [item], False
            rows.append(item)
            remaining = deadline - time.monotonic()
            if len(rows) >= self._batch_size or remaining <= 0:
                return rows, [], False
            try:
                item = self._queue.get(timeout=remaining)
            except queue.Empty:
                return rows, [], False

    def _write(
        self, conn: sqlite3.Connection | None, rows: list[tuple]
    ) -> sqlite3.Connection | None:
        try:
            if conn is None:
                self._prepare()
                conn = self._open()
            with write(conn):
                conn.executemany(_INSERT, rows)
            logger.debug("%s: recorded %d conversation(s)", self, len(rows))
            return conn
        except (sqlite3.Error, OSError, TypeError, ValueError) as exc:
            # A failed write must not stop the writer: the next batch opens afresh.
            logger.error("%s: could not record %d conversation(s): %s", self, len(rows), exc)
            with self._lock:
                self.dropped += len(rows)
            if conn is not None:
                with suppress(sqlite3.Error):
                    conn.close()
            return None

    # ------------------------------------------------------------ connections

    def _open(self) -> sqlite3.Connection:
        # Autocommit, with BEGIN IMMEDIATE for writes (sqlite.write) so the busy timeout
        # applies when the write lock is taken; the file is WAL since _prepare.
        conn = connect(self.path, timeout=self._busy_timeout_s, wal=False)
        conn.execute("PRAGMA synchronous=NORMAL")
        return conn

    def _prepare(self) -> None:
        """Create the file (owner-only), switch it to WAL and create the table."""
        with self._prepare_lock:
            if self._ready:
                return
            # Prompts and answers in plain text: connect() creates the file owner-only
            # (SQLite gives -wal/-shm the same mode).
            with closing(self._open()) as conn:
                use_wal(conn, timeout=self._busy_timeout_s)
                conn.executescript(_SCHEMA)
                _add_columns(conn)
            self._ready = True

    @contextmanager
    def _reading(self) -> Iterator[sqlite3.Connection | None]:
        """A connection after this object's queued rows are written; None when there is
        no log yet (reading never creates the file)."""
        self.flush()
        if not self._ready and not self.path.exists():
            yield None
            return
        self._prepare()
        with closing(self._open()) as conn:
            yield conn

    # ----------------------------------------------------------------- reading

    def count(self) -> int:
        """How many conversations are stored."""
        with self._reading() as conn:
            if conn is None:
                return 0
            return int(conn.execute("SELECT COUNT(*) FROM conversations").fetchone()[0])

    def export(
        self,
        out: IO[str],
        *,
        since: float | None = None,
        until: float | None = None,
        tenants: Iterable[str] = (),
        models: Iterable[str] = (),
    ) -> int:
        """Write conversations to ``out`` as ``gateway_logs`` JSONL; return how many.

        Each line is ``{"id", "created", "tenant", "key_name", "model", "deployment",
        "adapter", "adapter_ref", "messages", "response", "finish_reason", "usage",
        "latency_ms", "choice", "endpoint"}``, oldest first: one line per choice, so an
        ``n > 1`` answer gives several lines with the same ``id``. ``since`` (inclusive)
        and ``until`` (exclusive) are unix seconds; ``tenants`` and ``models`` keep only
        those values of ``tenant`` and ``model`` (the model as the client sent it), as a
        source's filters do.
        """
        where: list[str] = []
        params: list[float | str] = []
        if since is not None:
            where.append("created >= ?")
            params.append(float(since))
        if until is not None:
            where.append("created < ?")
            params.append(float(until))
        for column, values in (("tenant", list(tenants)), ("model", list(models))):
            if values:
                where.append(f"{column} IN ({', '.join(['?'] * len(values))})")
                params.extend(values)
        sql = f"SELECT {_COLUMNS} FROM conversations"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY created, seq"
        n = 0
        with self._reading() as conn:
            if conn is None:
                return 0
            for row in conn.execute(sql, params):
                out.write(json.dumps(_export_line(row), ensure_ascii=False) + "\n")
                n += 1
        return n

    def purge(self, older_than_s: float) -> int:
        """Delete conversations that arrived more than ``older_than_s`` ago; return how
        many."""
        if older_than_s < 0:
            raise ValueError(f"older_than_s must be >= 0, got {older_than_s}")
        cutoff = self._clock() - older_than_s
        with self._reading() as conn:
            if conn is None:
                return 0
            with write(conn):
                n = conn.execute("DELETE FROM conversations WHERE created < ?", (cutoff,)).rowcount
        logger.info("%s: purged %d conversation(s) older than %.0f s", self, n, older_than_s)
        return int(n)

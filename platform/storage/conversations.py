"""The conversation log: answered requests, kept for review and training data.

When the gateway runs with ``conversation_log`` on (``qingliang up --log-conversations``)
every answered ``/v1/chat/completions`` and ``/v1/completions`` request becomes rows of
the ``conversations`` table (``$QINGLIANG_HOME/conversations.sqlite``, or the PostgreSQL
database of ``$QINGLIANG_DATABASE_URL``: :mod:`~qingliang.platform.storage.database`), one
per choice (``n > 1`` gives several): who
asked (tenant, key name), what model was asked for and what answered (deployment,
adapter, adapter ref), the messages (a legacy completion's prompt as one user message),
the choice's answer and finish reason, the response's token usage and latency, the choice
index and the endpoint. A file written before the last two columns existed gets them
(``choice`` 0, ``endpoint`` ``chat``) when it is first opened (the store's Alembic
baseline, ``platform/storage/migrations/conversations``).
:meth:`ConversationLog.export` writes them as the JSONL that a Dataset's ``gateway_logs``
source reads, which closes the loop "answers → reviewed → training data";
:meth:`ConversationLog.purge` enforces retention.

Rows are only added (a trigger refuses any UPDATE) or purged by age. :meth:`ConversationLog.append`
never touches the disk: rows go onto a queue, bounded in rows and in bytes, that a
background thread writes in batches (one transaction per batch, at most every
``flush_interval_s``), so the gateway's event loop never pays for a commit.
:meth:`~ConversationLog.close` writes what is queued.
A SQLite file is created readable by its owner only: it holds prompts and answers in plain
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
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from sqlalchemy import Connection, text

from qingliang.platform.errors import QingliangError
from qingliang.platform.storage.handles import MIGRATIONS, StoreDatabase, in_list

logger = logging.getLogger(__name__)

FILE_NAME = "conversations.sqlite"
#: The store's name on the storage layer (its version table: ``qingliang_conversations_version``).
STORE = "conversations"
#: How long a call waits for another process's write lock before failing.
BUSY_TIMEOUT_S = 30.0

_FIELDS = (
    "id", "created", "tenant", "key_name", "model", "deployment", "adapter", "adapter_ref",
    "messages", "response", "finish_reason", "prompt_tokens", "completion_tokens",
    "latency_ms", "choice", "endpoint",
)  # fmt: skip
_COLUMNS = ", ".join(_FIELDS)
_INSERT = f"INSERT INTO conversations ({_COLUMNS}) VALUES ({', '.join(':' + f for f in _FIELDS)})"
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


class ConversationLog:
    """Append-only store of answered requests, a row per choice, on the storage layer:
    ``path`` (SQLite, WAL) or ``$QINGLIANG_DATABASE_URL`` (PostgreSQL).

    Nothing is opened until first use. Writes go through a background thread; reads
    (:meth:`export`, :meth:`count`) and :meth:`purge` first wait for what this object has
    queued, then use a pooled connection, so several processes (gateway replicas, the
    CLI) may use one database at once.

    Args:
        path: The SQLite file (created owner-only on the first write), used unless ``url``
            or ``$QINGLIANG_DATABASE_URL`` names a database.
        flush_interval_s: At most this long between a row's append and its commit.
        batch_size: At most this many rows per transaction.
        max_pending: Rows queued beyond this are dropped (and counted in ``dropped``)
            rather than growing memory without bound when the disk is stuck.
        max_pending_bytes: Likewise for the rows' size in memory (see
            :attr:`pending_bytes`), counted until each batch is written.
        busy_timeout_s: How long to wait for another writer's lock.
        clock: Time source for :meth:`purge`.
        url: A database URL (``sqlite:///…``, ``postgresql://…``) that wins over ``path``
            and the environment.
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
        url: str | None = None,
    ) -> None:
        self.path = Path(path)
        self._db = StoreDatabase(self.path, STORE, MIGRATIONS / STORE, url=url)
        self._interval = flush_interval_s
        self._batch_size = batch_size
        self._busy_timeout_s = busy_timeout_s
        self._clock = clock
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=max_pending)
        self._max_pending_bytes = max_pending_bytes
        #: Bytes of the rows queued or being written (guarded by _lock).
        self._pending_bytes = 0
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._closed = False
        #: Rows that could not be recorded (queue full, closed, or a failed write).
        self.dropped = 0

    @classmethod
    def for_home(cls, home: Path, **kw: Any) -> ConversationLog:
        """The log of the data directory ``home`` (``home/conversations.sqlite``)."""
        return cls(Path(home) / FILE_NAME, **kw)

    def __repr__(self) -> str:
        where = self._db.sqlite_path or self._db.store
        return f"ConversationLog({str(where)!r})"

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
        while True:
            rows, markers, stop = self._next_batch()
            if rows:
                try:
                    self._write([row for row, _ in rows])
                finally:  # written or dropped: no longer held
                    with self._lock:
                        self._pending_bytes -= sum(size for _, size in rows)
            for done in markers:
                done.set()
            if stop:
                return

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

    def _write(self, rows: list[tuple]) -> None:
        try:
            # A pooled connection the server dropped is replaced before the batch is sent.
            with self._db.transaction(wait_s=self._busy_timeout_s) as conn:
                conn.executemany(_INSERT, [dict(zip(_FIELDS, row, strict=True)) for row in rows])
            logger.debug("%s: recorded %d conversation(s)", self, len(rows))
        except (QingliangError, OSError, TypeError, ValueError) as exc:
            # A failed write must not stop the writer: the next batch tries again.
            logger.error("%s: could not record %d conversation(s): %s", self, len(rows), exc)
            with self._lock:
                self.dropped += len(rows)

    @contextmanager
    def _reading(self) -> Iterator[Connection | None]:
        """A read transaction after this object's queued rows are written; None when there
        is no log yet (reading never creates a SQLite file)."""
        self.flush()
        if not self._db.exists():
            yield None
            return
        with self._db.read() as conn:
            yield conn

    # ----------------------------------------------------------------- reading

    def count(self) -> int:
        """How many conversations are stored."""
        with self._reading() as conn:
            if conn is None:
                return 0
            return int(conn.execute(text("SELECT COUNT(*) FROM conversations")).scalar_one())

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
        params: dict[str, float | str] = {}
        if since is not None:
            where.append("created >= :since")
            params["since"] = float(since)
        if until is not None:
            where.append("created < :until")
            params["until"] = float(until)
        for column, values in (("tenant", list(tenants)), ("model", list(models))):
            if values:
                names, bound = in_list(column, values)
                where.append(f"{column} IN {names}")
                params.update(bound)
        sql = f"SELECT {_COLUMNS} FROM conversations"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY created, seq"
        n = 0
        with self._reading() as conn:
            if conn is None:
                return 0
            rows = conn.execution_options(stream_results=True, yield_per=500).execute(
                text(sql), params
            )
            for row in rows:
                out.write(json.dumps(_export_line(row), ensure_ascii=False) + "\n")
                n += 1
        return n

    def purge(self, older_than_s: float) -> int:
        """Delete conversations that arrived more than ``older_than_s`` ago; return how
        many."""
        if older_than_s < 0:
            raise ValueError(f"older_than_s must be >= 0, got {older_than_s}")
        cutoff = self._clock() - older_than_s
        self.flush()
        if not self._db.exists():
            return 0
        with self._db.write(wait_s=self._busy_timeout_s) as conn:
            n = conn.execute(
                text("DELETE FROM conversations WHERE created < :cutoff"), {"cutoff": cutoff}
            ).rowcount
        logger.info("%s: purged %d conversation(s) older than %.0f s", self, n, older_than_s)
        return int(n)

"""How each arm of a deployment is answering: requests, server errors and latency.

An *arm* is what one request to a deployment ran on: one of its LoRA adapters
(``gov-desk-v2``) or the base model (``""``). The gateway's backend records every
request it sends to a model deployment here, from the OpenAI routes and from agent
graphs alike, as counts in 10-second buckets of ``$QINGLIANG_HOME/arm_stats.sqlite``:
requests answered or failed, server errors among them (5xx, a replica that died, a
stream that broke), and the latency sum of the answered ones. A request refused as bad
input (4xx) or for saturation (429) says nothing about the arm and is not counted; nor
is a stream the client walked away from.

A pipeline's ``promote`` step with ``mode: auto`` reads :func:`summary` to compare a
canary adapter with what it would replace before it promotes it (docs/pipelines.md).
No prompt or answer is stored: only counts.

:meth:`ArmStats.observe` never touches the disk; a background thread adds the counts
to the file every ``flush_s`` (an upsert per bucket, so several gateway replicas on one
host add to the same rows), and :meth:`~ArmStats.close` writes what is pending.

Example:
    >>> import tempfile, pathlib
    >>> home, start = pathlib.Path(tempfile.mkdtemp()), time.time()
    >>> stats = ArmStats.for_home(home)
    >>> stats.observe("qwen", "faq-v2", ok=True, latency_s=0.8)
    >>> stats.observe("qwen", "faq-v2", ok=False, latency_s=0.1)
    >>> stats.close()
    >>> s = summary(home, "qwen", since=start)["faq-v2"]
    >>> (s.requests, s.errors, s.error_rate, s.mean_latency_ms)
    (2, 1, 0.5, 800.0)
"""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
import time
from collections.abc import Iterable
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path

logger = logging.getLogger(__name__)

FILE_NAME = "arm_stats.sqlite"
#: Width of one bucket: a canary's window starts at most this much before it did.
BUCKET_S = 10
#: Buckets older than this are deleted (at most once an hour, by a writer).
RETENTION_S = 30 * 86400
BUSY_TIMEOUT_S = 30.0

_SCHEMA = """
CREATE TABLE IF NOT EXISTS arm_buckets (
    deployment     TEXT NOT NULL,
    arm            TEXT NOT NULL,
    bucket         INTEGER NOT NULL,
    requests       INTEGER NOT NULL,
    errors         INTEGER NOT NULL,
    latency_ms_sum REAL NOT NULL,
    PRIMARY KEY (deployment, arm, bucket)
);
"""


@dataclass(frozen=True)
class ArmSummary:
    """An arm's counts over a window. ``latency`` covers answered requests only."""

    arm: str
    requests: int = 0
    errors: int = 0
    latency_ms_sum: float = 0.0

    @property
    def error_rate(self) -> float:
        return self.errors / self.requests if self.requests else 0.0

    @property
    def mean_latency_ms(self) -> float | None:
        answered = self.requests - self.errors
        return round(self.latency_ms_sum / answered, 1) if answered else None

    def describe(self) -> str:
        latency = self.mean_latency_ms
        return f"{self.requests} requests, {self.errors} server errors ({self.error_rate:.1%})" + (
            f", mean {latency:.0f} ms" if latency is not None else ""
        )

    def to_dict(self) -> dict[str, object]:
        return {
            "arm": self.arm,
            "requests": self.requests,
            "errors": self.errors,
            "error_rate": round(self.error_rate, 4),
            "mean_latency_ms": self.mean_latency_ms,
        }


def _connect(path: Path) -> sqlite3.Connection:
    from qingliang.platform.storage.sqlite import create_private

    create_private(path)  # owner-only: who called which adapter is nobody else's business
    conn = sqlite3.connect(path, timeout=BUSY_TIMEOUT_S)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.executescript(_SCHEMA)
    return conn


class ArmStats:
    """The recording side, one per gateway replica. Thread-safe; never raises to callers."""

    def __init__(self, path: Path, flush_s: float = 2.0) -> None:
        self.path = Path(path)
        self._flush_s = flush_s
        self._lock = threading.Lock()
        self._pending: dict[tuple[str, str, int], list[float]] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._pid = os.getpid()
        self._pruned_at = 0.0

    @classmethod
    def for_home(cls, home: Path, **kw: float) -> ArmStats:
        return cls(Path(home) / FILE_NAME, **kw)

    def observe(
        self,
        deployment: str,
        arm: str | None,
        *,
        ok: bool,
        latency_s: float,
        at: float | None = None,
    ) -> None:
        """Count one request to ``deployment`` that ran on ``arm`` (None: the base model)."""
        when = time.time() if at is None else at
        key = (deployment, arm or "", int(when // BUCKET_S) * BUCKET_S)
        with self._lock:
            counts = self._pending.setdefault(key, [0, 0, 0.0])
            counts[0] += 1
            if ok:
                counts[2] += latency_s * 1000
            else:
                counts[1] += 1
            if self._thread is None and not self._stop.is_set():
                self._thread = threading.Thread(
                    target=self._run, name="qingliang-arm-stats", daemon=True
                )
                self._thread.start()

    def flush(self) -> None:
        """Add what is pending to the file (a failed write is logged and kept pending)."""
        with self._lock:
            pending, self._pending = self._pending, {}
        if not pending:
            return
        rows = [(d, a, b, int(c[0]), int(c[1]), float(c[2])) for (d, a, b), c in pending.items()]
        try:
            with closing(_connect(self.path)) as conn, conn:
                conn.executemany(
                    "INSERT INTO arm_buckets VALUES (?, ?, ?, ?, ?, ?) "
                    "ON CONFLICT (deployment, arm, bucket) DO UPDATE SET "
                    "requests = requests + excluded.requests, "
                    "errors = errors + excluded.errors, "
                    "latency_ms_sum = latency_ms_sum + excluded.latency_ms_sum",
                    rows,
                )
                now = time.time()
                if now - self._pruned_at > 3600:
                    conn.execute("DELETE FROM arm_buckets WHERE bucket < ?", (now - RETENTION_S,))
                    self._pruned_at = now
        except (sqlite3.Error, OSError) as exc:
            logger.warning(
                "%s: could not record arm counts (%s); kept for the next try", self.path, exc
            )
            with self._lock:
                for key, c in pending.items():
                    mine = self._pending.setdefault(key, [0, 0, 0.0])
                    for i in range(3):
                        mine[i] += c[i]

    def close(self) -> None:
        """Write what is pending and stop the writer."""
        self._stop.set()
        thread = self._thread
        if thread is not None and thread.is_alive() and os.getpid() == self._pid:
            thread.join(timeout=BUSY_TIMEOUT_S)
        self.flush()

    def _run(self) -> None:
        while not self._stop.wait(self._flush_s):
            self.flush()


def summary(
    home: Path, deployment: str, since: float, until: float | None = None
) -> dict[str, ArmSummary]:
    """Each arm's counts on ``deployment`` in the buckets from ``since`` to ``until``.

    The window starts at the bucket holding ``since`` (up to ``BUCKET_S`` earlier).
    Arms with no request in it are absent; the base model is the arm ``""``.
    """
    path = Path(home) / FILE_NAME
    if not path.exists():
        return {}
    start = int(since // BUCKET_S) * BUCKET_S
    end = time.time() + BUCKET_S if until is None else until
    with closing(_connect(path)) as conn:
        rows = conn.execute(
            "SELECT arm, SUM(requests), SUM(errors), SUM(latency_ms_sum) FROM arm_buckets "
            "WHERE deployment = ? AND bucket >= ? AND bucket <= ? GROUP BY arm",
            (deployment, start, end),
        ).fetchall()
    return {arm: ArmSummary(arm, int(r), int(e), float(lat)) for arm, r, e, lat in rows}


def combined(arms: dict[str, ArmSummary], names: Iterable[str]) -> ArmSummary:
    """The counts of ``names`` together (an empty summary when none has any)."""
    names = list(names)
    total = ArmSummary("+".join(sorted(n or "base" for n in names)))
    for name in names:
        if name in arms:
            total = ArmSummary(
                total.arm,
                total.requests + arms[name].requests,
                total.errors + arms[name].errors,
                total.latency_ms_sum + arms[name].latency_ms_sum,
            )
    return total

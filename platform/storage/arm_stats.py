"""How each arm of a deployment is answering: requests, server errors, latency, tokens.

An *arm* is what one request to a deployment ran on: one of its LoRA adapters
(``gov-desk-v2``) or the base model (``""``). The gateway's backend records every
request it sends to a model deployment here, from the OpenAI routes and from agent
graphs alike, as counts in 10-second buckets of ``$QINGLIANG_HOME/arm_stats.sqlite`` (or
of the shared database when ``$QINGLIANG_DATABASE_URL`` is set: docs/storage.md):
requests answered or failed, server errors among them (5xx, a replica that died, a
stream that broke), and the latency sum of the answered ones. A request refused as bad
input (4xx) or for saturation (429) says nothing about the arm and is not counted as a
request; nor is a stream the client walked away from. Beside them, for the console's
metrics (:func:`series`): 429 rejections (:meth:`ArmStats.rejected`), the output tokens
of answered requests, and their time to first token in a fixed histogram
(:data:`TTFT_BOUNDS_MS`, table ``ttft_buckets``), so a percentile over any steps is read
from summed bin counts.

A file written before those counts existed is upgraded in place when it is opened
(columns ``output_tokens`` and ``rejected`` added with 0, the histogram table created, by
the store's baseline migration): its old rows read as before.

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
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import text

from qingliang.platform.errors import QingliangError
from qingliang.platform.storage.database import (
    Database,
    database_url,
    open_database,
    sqlite_url,
)

logger = logging.getLogger(__name__)

FILE_NAME = "arm_stats.sqlite"
#: Width of one bucket: a canary's window starts at most this much before it did.
BUCKET_S = 10
#: Buckets older than this are deleted (at most once an hour, by a writer).
RETENTION_S = 30 * 86400
BUSY_TIMEOUT_S = 30.0

STORE = "arm_stats"
#: The store's Alembic revisions (its schema: ``versions/0001_baseline.py``).
MIGRATIONS = Path(__file__).resolve().parent / "migrations" / STORE
#: Upper bounds (ms) of the time-to-first-token histogram's bins; a last bin holds the
#: rest. Fixed: summed bin counts give a percentile over any window.
TTFT_BOUNDS_MS = (25, 50, 100, 250, 500, 1000, 2500, 5000, 10_000, 30_000, 60_000)


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


def _open(url: str) -> Database:
    return open_database(url, store=STORE, migrations=MIGRATIONS)


def _reader(home: Path) -> Database | None:
    """The database to read ``home``'s counts from; None when its SQLite file does not
    exist (nothing was counted; reading must not create it)."""
    url = database_url(home, STORE, file=FILE_NAME)
    if url == sqlite_url(Path(home) / FILE_NAME) and not (Path(home) / FILE_NAME).exists():
        return None
    return _open(url)


def ttft_bin(ttft_ms: float) -> int:
    """The histogram bin of a time to first token: the first bound it is under.

    Example:
        >>> ttft_bin(10), ttft_bin(25), ttft_bin(26), ttft_bin(1e9) == len(TTFT_BOUNDS_MS)
        (0, 0, 1, True)
    """
    for i, bound in enumerate(TTFT_BOUNDS_MS):
        if ttft_ms <= bound:
            return i
    return len(TTFT_BOUNDS_MS)


class ArmStats:
    """The recording side, one per gateway replica. Thread-safe; never raises to callers."""

    def __init__(self, path: Path, flush_s: float = 2.0, *, url: str | None = None) -> None:
        self.path = Path(path)
        self.url = url or database_url(self.path.parent, STORE, file=self.path.name)
        self._flush_s = flush_s
        self._lock = threading.Lock()
        #: (deployment, arm, bucket) -> [requests, errors, latency ms, output tokens, 429s]
        self._pending: dict[tuple[str, str, int], list[float]] = {}
        #: (deployment, arm, bucket, bin) -> time-to-first-token count
        self._ttft: dict[tuple[str, str, int, int], int] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._pid = os.getpid()
        self._pruned_at = 0.0
        # Flushes are serialised by _write_lock; each is one write transaction on a pooled
        # connection of the store's database (opened, and its schema checked, once).
        self._write_lock = threading.Lock()
        self._db: Database | None = None

    @classmethod
    def for_home(cls, home: Path, *, flush_s: float = 2.0) -> ArmStats:
        """The stats of the platform whose data directory is ``home`` (its
        ``arm_stats.sqlite``, or the shared database when one is configured)."""
        return cls(Path(home) / FILE_NAME, flush_s=flush_s)

    def observe(
        self,
        deployment: str,
        arm: str | None,
        *,
        ok: bool,
        latency_s: float,
        at: float | None = None,
        output_tokens: int = 0,
        ttft_s: float | None = None,
    ) -> None:
        """Count one request to ``deployment`` that ran on ``arm`` (None: the base model);
        an answered one with its ``output_tokens`` and time to first token ``ttft_s``."""
        key = _key(deployment, arm, at)
        with self._lock:
            counts = self._counts(key)
            counts[0] += 1
            if ok:
                counts[2] += latency_s * 1000
                counts[3] += max(0, int(output_tokens))
                if ttft_s is not None:
                    hist = (*key, ttft_bin(ttft_s * 1000))
                    self._ttft[hist] = self._ttft.get(hist, 0) + 1
            else:
                counts[1] += 1

    def rejected(self, deployment: str, arm: str | None, *, at: float | None = None) -> None:
        """Count one request to ``deployment`` refused with 429 (saturated): not a request
        of the arm (it says nothing about it), but what an operator watches."""
        with self._lock:
            self._counts(_key(deployment, arm, at))[4] += 1

    def _counts(self, key: tuple[str, str, int]) -> list[float]:
        """The pending counts of ``key`` (caller holds the lock); starts the writer."""
        if self._thread is None and not self._stop.is_set():
            self._thread = threading.Thread(
                target=self._run, name="qingliang-arm-stats", daemon=True
            )
            self._thread.start()
        return self._pending.setdefault(key, [0, 0, 0.0, 0, 0])

    def flush(self) -> None:
        """Add what is pending to the file (a failed write is logged and kept pending)."""
        with self._lock:
            pending, self._pending = self._pending, {}
            ttft, self._ttft = self._ttft, {}
        if not pending and not ttft:
            return
        rows = [
            (d, a, b, int(c[0]), int(c[1]), float(c[2]), int(c[3]), int(c[4]))
            for (d, a, b), c in pending.items()
        ]
        try:
            with self._write_lock:
                self._write(rows, ttft)
        except (QingliangError, OSError) as exc:
            logger.warning(
                "%s: could not record arm counts (%s); kept for the next try", self.path, exc
            )
            with self._lock:
                for key, c in pending.items():
                    mine = self._pending.setdefault(key, [0, 0, 0.0, 0, 0])
                    for i, value in enumerate(c):
                        mine[i] += value
                for hist, n in ttft.items():
                    self._ttft[hist] = self._ttft.get(hist, 0) + n

    def _write(self, rows: list[tuple], ttft: dict[tuple[str, str, int, int], int]) -> None:
        if self._db is None:
            self._db = _open(self.url)
        with self._db.write() as conn:
            if rows:
                conn.execute(
                    text(
                        "INSERT INTO arm_buckets (deployment, arm, bucket, requests, errors, "
                        "latency_ms_sum, output_tokens, rejected) VALUES (:d, :a, :b, :r, :e, "
                        ":l, :t, :j) ON CONFLICT (deployment, arm, bucket) DO UPDATE SET "
                        "requests = arm_buckets.requests + excluded.requests, "
                        "errors = arm_buckets.errors + excluded.errors, "
                        "latency_ms_sum = arm_buckets.latency_ms_sum + excluded.latency_ms_sum, "
                        "output_tokens = arm_buckets.output_tokens + excluded.output_tokens, "
                        "rejected = arm_buckets.rejected + excluded.rejected"
                    ),
                    [dict(zip("dabreltj", row, strict=True)) for row in rows],
                )
            if ttft:
                conn.execute(
                    text(
                        "INSERT INTO ttft_buckets (deployment, arm, bucket, bin, count) "
                        "VALUES (:d, :a, :b, :i, :n) "
                        "ON CONFLICT (deployment, arm, bucket, bin) DO UPDATE SET "
                        "count = ttft_buckets.count + excluded.count"
                    ),
                    [dict(zip("dabin", (*k, n), strict=True)) for k, n in ttft.items()],
                )
            now = time.time()
            if now - self._pruned_at > 3600:
                for table in ("arm_buckets", "ttft_buckets"):
                    conn.execute(
                        text(f"DELETE FROM {table} WHERE bucket < :cut"),
                        {"cut": int(now - RETENTION_S)},
                    )
                self._pruned_at = now

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


def _key(deployment: str, arm: str | None, at: float | None) -> tuple[str, str, int]:
    when = time.time() if at is None else at
    return (deployment, arm or "", int(when // BUCKET_S) * BUCKET_S)


def summary(
    home: Path, deployment: str, since: float, until: float | None = None
) -> dict[str, ArmSummary]:
    """Each arm's counts on ``deployment`` in the buckets from ``since`` to ``until``.

    The window starts at the bucket holding ``since`` (up to ``BUCKET_S`` earlier).
    Arms with no request in it are absent; the base model is the arm ``""``.
    """
    db = _reader(home)
    if db is None:
        return {}
    start = int(since // BUCKET_S) * BUCKET_S
    end = time.time() + BUCKET_S if until is None else until
    with db.read() as conn:
        rows = conn.execute(
            text(
                "SELECT arm, SUM(requests), SUM(errors), SUM(latency_ms_sum) FROM arm_buckets "
                "WHERE deployment = :dep AND bucket >= :start AND bucket <= :end GROUP BY arm "
                "HAVING SUM(requests) > 0"
            ),
            {"dep": deployment, "start": start, "end": end},
        ).all()
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


#: The lists of one deployment's series (:func:`series`), besides ``t``.
SERIES_FIELDS = (
    "requests",
    "errors",
    "rejected_429",
    "output_tokens",
    "tokens_per_s",
    "ttft_p50_ms",
    "ttft_p95_ms",
    "latency_mean_ms",
)


def series(
    home: Path,
    since: float,
    step_s: int,
    *,
    until: float | None = None,
    deployments: Iterable[str] = (),
    only: str | None = None,
) -> tuple[int, dict[str, dict[str, list]]]:
    """Each deployment's counts per ``step_s`` seconds (all arms together), from the step
    holding ``since`` to the one holding ``until`` (now).

    Returns ``(t0, {deployment: {"t": [...], "requests": [...], ...}})`` (see
    :data:`SERIES_FIELDS`): ``t`` the start of each step; ``tokens_per_s`` the output
    tokens over the step; ``ttft_p50_ms``/``ttft_p95_ms`` read from the summed histogram
    (linear within a bin; None for a step without an answered request), and
    ``latency_mean_ms`` over answered requests (None without one). ``deployments`` get a
    series even with nothing counted (zeros); ``only`` keeps one deployment.

    Example:
        >>> import tempfile, pathlib
        >>> home = pathlib.Path(tempfile.mkdtemp())
        >>> t = int(time.time()) // 60 * 60 - 120  # two minutes ago, on a step
        >>> stats = ArmStats.for_home(home)
        >>> stats.observe("qwen", None, ok=True, latency_s=0.5, at=t, output_tokens=30,
        ...               ttft_s=0.2)
        >>> stats.rejected("qwen", None, at=t + 10)
        >>> stats.close()
        >>> t0, out = series(home, since=t, step_s=60, until=t + 119)
        >>> t0 == t, out["qwen"]["requests"], out["qwen"]["rejected_429"]
        (True, [1, 0], [1, 0])
        >>> out["qwen"]["tokens_per_s"], out["qwen"]["latency_mean_ms"]
        ([0.5, 0.0], [500.0, None])
    """
    if step_s < BUCKET_S or step_s % BUCKET_S:
        raise ValueError(f"step_s must be a multiple of {BUCKET_S} s")
    t0 = int(since // step_s) * step_s
    end = time.time() if until is None else until
    steps = max(1, int((end - t0) // step_s) + 1)
    names = {d for d in deployments if only is None or d == only}
    counts: dict[str, list[list[float]]] = {}
    hists: dict[str, list[list[int]]] = {}

    def blank(dep: str) -> None:
        counts.setdefault(dep, [[0, 0, 0.0, 0, 0] for _ in range(steps)])
        hists.setdefault(dep, [[0] * (len(TTFT_BOUNDS_MS) + 1) for _ in range(steps)])

    for dep in names:
        blank(dep)
    db = _reader(home)
    if db is not None:
        where = "bucket >= :t0 AND bucket < :end" + (" AND deployment = :only" if only else "")
        args = {"t0": t0, "step": step_s, "end": t0 + steps * step_s, "only": only}
        with db.read() as conn:
            rows = conn.execute(
                text(
                    "SELECT deployment, (bucket - :t0) / :step, SUM(requests), SUM(errors), "
                    "SUM(latency_ms_sum), SUM(output_tokens), SUM(rejected) FROM arm_buckets "
                    f"WHERE {where} GROUP BY 1, 2"
                ),
                args,
            ).all()
            bins = conn.execute(
                text(
                    "SELECT deployment, (bucket - :t0) / :step, bin, SUM(count) "
                    f"FROM ttft_buckets WHERE {where} GROUP BY 1, 2, 3"
                ),
                args,
            ).all()
        for dep, i, req, err, lat, tokens, rejected in rows:
            blank(dep)
            # PostgreSQL sums integers as numeric (Decimal): back to plain numbers.
            counts[dep][int(i)] = [int(req), int(err), float(lat), int(tokens), int(rejected)]
        for dep, i, b, n in bins:
            blank(dep)
            hists[dep][int(i)][min(int(b), len(TTFT_BOUNDS_MS))] += int(n)
    return t0, {dep: _series_of(t0, step_s, counts[dep], hists[dep]) for dep in sorted(counts)}


def _series_of(t0: int, step_s: int, counts: list[list[float]], hists: list[list[int]]) -> dict:
    out: dict[str, list] = {"t": [t0 + i * step_s for i in range(len(counts))]}
    for name in SERIES_FIELDS:
        out[name] = []
    for (req, err, lat, tokens, rejected), hist in zip(counts, hists, strict=True):
        answered = int(req) - int(err)
        out["requests"].append(int(req))
        out["errors"].append(int(err))
        out["rejected_429"].append(int(rejected))
        out["output_tokens"].append(int(tokens))
        out["tokens_per_s"].append(round(tokens / step_s, 3))
        out["ttft_p50_ms"].append(percentile(hist, 0.5))
        out["ttft_p95_ms"].append(percentile(hist, 0.95))
        out["latency_mean_ms"].append(round(lat / answered, 1) if answered > 0 else None)
    return out


def percentile(hist: list[int], q: float) -> float | None:
    """The ``q`` quantile (0..1) of a :data:`TTFT_BOUNDS_MS` histogram, linear within its
    bin (the last, unbounded bin reads as its lower bound); None when it is empty.

    Example:
        >>> percentile([0, 4, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0], 0.5)  # 4 in (25, 50] ms
        37.5
    """
    total = sum(hist)
    if total == 0:
        return None
    target = q * total
    seen = 0
    for i, n in enumerate(hist):
        if n and seen + n >= target:
            low = TTFT_BOUNDS_MS[i - 1] if i > 0 else 0
            if i >= len(TTFT_BOUNDS_MS):
                return float(low)
            return round(low + (TTFT_BOUNDS_MS[i] - low) * (target - seen) / n, 1)
        seen += n
    return float(TTFT_BOUNDS_MS[-1])

"""Per-key limits: requests a minute and tokens a day, answered 429 with ``Retry-After``.

A key's limits are stored with it (``qingliang keys create --rpm 60 --tokens-per-day
200000``, ``qingliang keys limits``); a key without a limit has none (``default_rpm`` and
``default_tokens_per_day`` give one to every such key, for embedding the gateway).

- **Requests a minute** are counted in this gateway replica, in a sliding window of the
  last 60 s: no disk write per request. With several gateway replicas a key can get up to
  that many times its limit; the limit is a guard against a runaway client, not billing.
- **Tokens a day** (prompt and completion, UTC day) are charged to the key store after
  each answer (one small write, off the event loop, only for keys that have a token
  limit) and read back at most every :data:`USAGE_REFRESH_S`, so every replica sees
  them. An answer is never cut off midway: a key goes over its limit by at most the
  answers that were under way, and the next request gets the 429.

Example:
    >>> from types import SimpleNamespace as K
    >>> q = Quotas(None, clock=lambda: 1000.0)
    >>> key = K(id="k1", requests_per_minute=1, tokens_per_day=None)
    >>> q.admit_sync(key)
    >>> try:
    ...     q.admit_sync(key)
    ... except Exception as exc:
    ...     print(exc.status_code, exc.retry_after)
    429 60.0
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

from qingliang.platform.errors import Saturated

logger = logging.getLogger(__name__)

WINDOW_S = 60.0
#: How stale this replica's copy of a key's token use may be before it is read again.
USAGE_REFRESH_S = 2.0


class Usage(Protocol):
    """Where token use is kept (the :class:`~qingliang.platform.storage.keys.KeyStore`)."""

    def tokens_used(self, key_id: str, day: str) -> int: ...

    def charge(self, key_id: str, day: str, tokens: int) -> None: ...


def _day(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d")


def _until_midnight(ts: float) -> float:
    now = datetime.fromtimestamp(ts, UTC)
    midnight = (now + timedelta(days=1)).replace(hour=0, minute=0, second=0, microsecond=0)
    return max(1.0, (midnight - now).total_seconds())


class Quotas:
    """The limits of every key this replica sees.

    Args:
        usage: Where tokens are charged and read; None counts requests only.
        default_rpm: Requests a minute for a key with no limit of its own (None: none).
        default_tokens_per_day: Likewise for tokens a day.
        clock: Seconds since the epoch; tests pass a fake one.
    """

    def __init__(
        self,
        usage: Usage | None,
        *,
        default_rpm: int | None = None,
        default_tokens_per_day: int | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._usage = usage
        self._default_rpm = default_rpm
        self._default_tpd = default_tokens_per_day
        self._clock = clock
        self._lock = threading.Lock()
        self._hits: dict[str, deque[float]] = {}
        #: (key id, day) → (tokens used, when read from the store).
        self._used: dict[tuple[str, str], tuple[int, float]] = {}

    def limits(self, principal: Any) -> tuple[int | None, int | None]:
        rpm = getattr(principal, "requests_per_minute", None) or self._default_rpm
        tpd = getattr(principal, "tokens_per_day", None) or self._default_tpd
        return rpm, tpd

    async def admit(self, principal: Any) -> None:
        """Raise :class:`Saturated` (429) when the key is over a limit; else count it."""
        if principal is None or getattr(principal, "id", None) is None:
            return
        _rpm, tpd = self.limits(principal)
        if tpd is not None and self._usage is not None and self._stale(principal.id):
            used = await asyncio.to_thread(self._read, principal.id)
        else:
            used = None
        self.admit_sync(principal, used)

    def admit_sync(self, principal: Any, used: int | None = None) -> None:
        key_id = principal.id
        rpm, tpd = self.limits(principal)
        now = self._clock()
        with self._lock:
            if tpd is not None:
                day = _day(now)
                if used is not None:
                    self._used[(key_id, day)] = (used, now)
                spent = self._used.get((key_id, day), (0, 0.0))[0]
                if spent >= tpd:
                    raise Saturated(
                        f"API key {principal.name if hasattr(principal, 'name') else key_id} "
                        f"used {spent} of its {tpd} tokens for today (UTC); the limit "
                        "resets at midnight UTC",
                        retry_after=_until_midnight(now),
                        code="token_quota_exceeded",
                    )
            if rpm is not None:
                hits = self._hits.setdefault(key_id, deque())
                while hits and hits[0] <= now - WINDOW_S:
                    hits.popleft()
                if len(hits) >= rpm:
                    raise Saturated(
                        f"API key {getattr(principal, 'name', key_id)} sent {len(hits)} "
                        f"requests in the last minute; its limit is {rpm} a minute",
                        retry_after=max(1.0, hits[0] + WINDOW_S - now),
                        code="rate_limit_exceeded",
                    )
                hits.append(now)

    async def charge(self, principal: Any, tokens: int | None) -> None:
        """Count an answer's tokens against the key's daily limit (if it has one)."""
        if principal is None or not tokens or tokens <= 0:
            return
        _rpm, tpd = self.limits(principal)
        if tpd is None:
            return
        key_id, day = principal.id, _day(self._clock())
        with self._lock:
            used, read_at = self._used.get((key_id, day), (0, 0.0))
            self._used[(key_id, day)] = (used + tokens, read_at)
        if self._usage is None:
            return
        try:
            await asyncio.to_thread(self._usage.charge, key_id, day, int(tokens))
        except Exception as exc:  # the answer went out; never fail it for the count
            logger.warning("could not charge %d tokens to key %s: %s", tokens, key_id, exc)

    def _stale(self, key_id: str) -> bool:
        entry = self._used.get((key_id, _day(self._clock())))
        return entry is None or self._clock() - entry[1] > USAGE_REFRESH_S

    def _read(self, key_id: str) -> int | None:
        assert self._usage is not None
        try:
            return self._usage.tokens_used(key_id, _day(self._clock()))
        except Exception as exc:  # keep the last count rather than fail the request
            logger.warning("could not read the token use of key %s: %s", key_id, exc)
            return None

"""Per-deployment and per-adapter serving metrics through ``ray.util.metrics``.

They appear on the Ray dashboard's metrics view and on the Prometheus export port
(prefixed ``ray_``), e.g. ``ray_qingliang_requests_total{deployment="qwen",adapter="",
endpoint="chat",status="200"}``.

The framework's own share of each request is split four ways (docs/serving.md, "Where
the time goes"): ``qingliang_gateway_seconds`` (the gateway's own work),
``qingliang_queue_seconds`` (handed to the Serve handle → started by the replica),
``qingliang_engine_ttft_seconds`` (replica start → first token) and
``qingliang_time_per_output_token_seconds{side="replica"|"gateway"}``. The gateway keeps
one :class:`RequestTiming` per request; the replica's figures come from
:meth:`ServingMetrics.replica_split`.

Example:
    >>> m = ServingMetrics.create()          # doctest: +SKIP  (inside a Ray worker)
    >>> m.request("qwen", "", "chat", 200, latency_s=0.4)  # doctest: +SKIP
    >>> time_per_token(first=1.0, last=1.5, tokens=6)
    0.1
"""

from __future__ import annotations

import contextvars
import logging
import time
from collections.abc import Callable
from typing import Any

logger = logging.getLogger(__name__)

_LATENCY_BOUNDS = [0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 4, 8, 16, 32, 64, 128]


def geometric_bounds(low: float, high: float, ratio: float = 1.5) -> list[float]:
    """Bucket bounds from ``low`` to at least ``high``, each ``ratio`` times the last.

    Ray exports a histogram's ``_sum`` from its buckets' midpoints (its OpenTelemetry
    recorder), so a mean read from ``_sum / _count`` is only as fine as the buckets: with
    ×1.5 steps it is within about 20 % of the true mean, with 1-2.5-5 steps it was off by
    up to 40 % (a 60 ms token read as 75 ms).

    >>> geometric_bounds(0.001, 0.004)
    [0.001, 0.0015, 0.00225, 0.00337, 0.00506]
    """
    bounds = [low]
    while bounds[-1] < high:
        bounds.append(float(f"{bounds[-1] * ratio:.3g}"))
    return bounds


#: The gateway's own work is tens of microseconds to a few milliseconds.
_GATEWAY_BOUNDS = geometric_bounds(0.0001, 0.5)
_QUEUE_BOUNDS = geometric_bounds(0.0002, 64)
_TTFT_BOUNDS = geometric_bounds(0.002, 128)
_TOKEN_BOUNDS = geometric_bounds(0.0005, 2.5)
_TAGS = ("deployment", "adapter")

#: Key of the replica's figures in a non-streamed answer on its way to the gateway
#: (``{"queue_s": …, "engine_s": …}``); the gateway's handle takes it out.
TIMING_KEY = "_qingliang_timing"


class ServingMetrics:
    """Counters, histograms and a gauge; a no-op when Ray metrics are unavailable."""

    def __init__(self, metrics: dict[str, Any] | None) -> None:
        self._m = metrics

    @classmethod
    def create(cls) -> ServingMetrics:
        try:
            from ray.util.metrics import Counter, Gauge, Histogram
        except ImportError:  # pragma: no cover - ray is a hard dependency
            return cls(None)
        tags = (*_TAGS, "endpoint")
        m = {
            "requests": Counter(
                "qingliang_requests_total",
                description="Requests answered, by status code.",
                tag_keys=(*tags, "status"),
            ),
            "rejected": Counter(
                "qingliang_rejected_total",
                description="Requests refused with 429 because the deployment was saturated.",
                tag_keys=tags,
            ),
            "tokens_in": Counter(
                "qingliang_prompt_tokens_total", description="Prompt tokens.", tag_keys=tags
            ),
            "tokens_out": Counter(
                "qingliang_completion_tokens_total",
                description="Generated tokens.",
                tag_keys=tags,
            ),
            "ttft": Histogram(
                "qingliang_time_to_first_token_seconds",
                description="Time from request arrival at the replica to the first token.",
                boundaries=_LATENCY_BOUNDS,
                tag_keys=tags,
            ),
            "latency": Histogram(
                "qingliang_request_latency_seconds",
                description="Time from request arrival at the replica to the last byte.",
                boundaries=_LATENCY_BOUNDS,
                tag_keys=tags,
            ),
            "gateway": Histogram(
                "qingliang_gateway_seconds",
                description="The gateway's own work per answered request: arrival to the "
                "hand-off to the model's Serve handle, plus relaying the answer (not the "
                "wait for the model).",
                boundaries=_GATEWAY_BOUNDS,
                tag_keys=_TAGS,
            ),
            "queue": Histogram(
                "qingliang_queue_seconds",
                description="From the gateway handing a request to the Serve handle to the "
                "replica starting it (transport and Serve's queue; wall clocks).",
                boundaries=_QUEUE_BOUNDS,
                tag_keys=_TAGS,
            ),
            "engine_ttft": Histogram(
                "qingliang_engine_ttft_seconds",
                description="From the replica starting a request to the engine's first token "
                "(a non-streamed answer: to the whole answer).",
                boundaries=_TTFT_BOUNDS,
                tag_keys=_TAGS,
            ),
            "tpot": Histogram(
                "qingliang_time_per_output_token_seconds",
                description="(last token - first token) / (tokens - 1) of a stream, seen at "
                "the replica or at the gateway (side).",
                boundaries=_TOKEN_BOUNDS,
                tag_keys=(*_TAGS, "side"),
            ),
            "ongoing": Gauge(
                "qingliang_ongoing_requests",
                description="Requests running or queued in this replica (queue depth).",
                tag_keys=("deployment",),
            ),
        }
        return cls(m)

    @staticmethod
    def _tags(deployment: str, adapter: str | None, endpoint: str | None = None) -> dict:
        tags = {"deployment": deployment, "adapter": adapter or ""}
        if endpoint is not None:
            tags["endpoint"] = endpoint
        return tags

    def request(
        self,
        deployment: str,
        adapter: str | None,
        endpoint: str,
        status: int,
        *,
        latency_s: float | None = None,
        ttft_s: float | None = None,
        prompt_tokens: int = 0,
        completion_tokens: int = 0,
    ) -> None:
        if self._m is None:
            return
        tags = self._tags(deployment, adapter, endpoint)
        self._m["requests"].inc(1, tags={**tags, "status": str(status)})
        if prompt_tokens:
            self._m["tokens_in"].inc(prompt_tokens, tags=tags)
        if completion_tokens:
            self._m["tokens_out"].inc(completion_tokens, tags=tags)
        if ttft_s is not None:
            self._m["ttft"].observe(ttft_s, tags=tags)
        if latency_s is not None:
            self._m["latency"].observe(latency_s, tags=tags)

    def rejected(self, deployment: str, adapter: str | None, endpoint: str) -> None:
        if self._m is not None:
            self._m["rejected"].inc(1, tags=self._tags(deployment, adapter, endpoint))

    def ongoing(self, deployment: str, value: int) -> None:
        if self._m is not None:
            self._m["ongoing"].set(value, tags={"deployment": deployment})

    def replica_split(
        self,
        deployment: str,
        adapter: str | None,
        *,
        queue_s: float | None,
        engine_ttft_s: float | None,
        tpot_s: float | None,
    ) -> None:
        """The replica's share of one request (each figure observed when known)."""
        if self._m is None:
            return
        tags = self._tags(deployment, adapter)
        if queue_s is not None:
            self._m["queue"].observe(queue_s, tags=tags)
        if engine_ttft_s is not None:
            self._m["engine_ttft"].observe(engine_ttft_s, tags=tags)
        if tpot_s is not None:
            self._m["tpot"].observe(tpot_s, tags={**tags, "side": "replica"})

    def gateway_split(
        self, deployment: str, adapter: str | None, *, gateway_s: float, tpot_s: float | None
    ) -> None:
        """The gateway's share of one answered request."""
        if self._m is None:
            return
        tags = self._tags(deployment, adapter)
        self._m["gateway"].observe(gateway_s, tags=tags)
        if tpot_s is not None:
            self._m["tpot"].observe(tpot_s, tags={**tags, "side": "gateway"})


def time_per_token(first: float | None, last: float | None, tokens: int) -> float | None:
    """``(last - first) / (tokens - 1)``: None without two tokens and both times."""
    if first is None or last is None or tokens < 2:
        return None
    return max(0.0, last - first) / (tokens - 1)


def queue_time(sent_at: object, now: float) -> float | None:
    """Seconds from ``sent_at`` (the gateway's wall clock) to ``now`` (the replica's).

    None when no send time came; 0 when the clocks disagree (across nodes this relies on
    synchronised clocks).
    """
    if not isinstance(sent_at, (int, float)) or isinstance(sent_at, bool):
        return None
    return max(0.0, now - float(sent_at))


class RequestTiming:
    """One request's clock at the gateway: its own work, its tokens, the replica's figures.

    The gateway is *busy* from the request's arrival until it hands the request over
    (:meth:`send`), and again from each thing it gets back (:meth:`received`) until it
    waits for the next (:meth:`waiting`); :attr:`gateway_s` adds up those spans. The
    Serve handle (``ServeBackend``) marks the hand-off and each chunk and gives the metrics
    (:meth:`bind`); the route ends it (:meth:`finish`), which observes them once.

    Per chunk this costs a clock read and an add on each side of the relay.

    Example:
        >>> ticks = iter([0.0, 0.001, 0.5, 0.502, 0.6, 0.6005])
        >>> t = RequestTiming(clock=lambda: next(ticks), wall=lambda: 1e9)
        >>> t.send()
        1000000000.0
        >>> t.received(token=True); t.waiting(); t.received(token=True); t.waiting()
        0.5
        0.6
        >>> round(t.finish() * 1000, 1)  # ms of the gateway's own work
        3.5
    """

    __slots__ = (
        "_busy_since",
        "_clock",
        "_sink",
        "_wall",
        "first_token",
        "gateway_s",
        "last_token",
        "replica",
        "tokens",
    )

    def __init__(
        self,
        arrived: float | None = None,
        *,
        clock: Callable[[], float] = time.perf_counter,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self._clock = clock
        self._wall = wall
        self._busy_since: float | None = clock() if arrived is None else arrived
        self._sink: tuple[ServingMetrics, str, str | None] | None = None
        self.gateway_s = 0.0
        self.first_token: float | None = None
        self.last_token: float | None = None
        self.tokens = 0
        #: The replica's figures of a non-streamed answer (``queue_s``, ``engine_s``).
        self.replica: dict[str, float] = {}

    def bind(self, metrics: ServingMetrics, deployment: str, adapter: str | None) -> None:
        """Where :meth:`finish` observes the figures."""
        self._sink = (metrics, deployment, adapter)

    def send(self) -> float:
        """The request goes to the replica now; the wall-clock send time for its queue time."""
        self.waiting()
        return self._wall()

    def received(self, *, token: bool = False) -> float:
        """Something came back (a chunk, an answer, the end): the gateway is busy again.

        ``token``: it carries output tokens (the first and last such mark the gateway's
        time per output token).
        """
        now = self._clock()
        if self._busy_since is None:
            self._busy_since = now
        if token:
            if self.first_token is None:
                self.first_token = now
            self.last_token = now
        return now

    def waiting(self) -> None:
        """The gateway waits for the model from now on (its busy span ends)."""
        if self._busy_since is not None:
            self.gateway_s += self._clock() - self._busy_since
            self._busy_since = None

    def finish(self) -> float:
        """The request is answered: observe its figures (once) and return :attr:`gateway_s`."""
        self.waiting()
        sink, self._sink = self._sink, None
        if sink is not None:
            metrics, deployment, adapter = sink
            tpot = time_per_token(self.first_token, self.last_token, self.tokens)
            try:
                metrics.gateway_split(deployment, adapter, gateway_s=self.gateway_s, tpot_s=tpot)
            except Exception:  # metering must never cost the client its answer
                logger.exception("could not observe the gateway's time for %s", deployment)
        return self.gateway_s


_CURRENT: contextvars.ContextVar[RequestTiming | None] = contextvars.ContextVar(
    "qingliang_request_timing", default=None
)


def start_timing(timing: RequestTiming) -> RequestTiming:
    """Make ``timing`` the current request's (the Serve handle marks it, the route finishes it).

    It travels in a context variable, as tracing spans do: the gateway's ``Backend``
    protocol (and its test fakes) stay as they are, and a request never sees another's.
    """
    _CURRENT.set(timing)
    return timing


def current_timing() -> RequestTiming | None:
    """The current request's :class:`RequestTiming`, if its route started one."""
    return _CURRENT.get()

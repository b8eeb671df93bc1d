"""The platform's metrics beyond serving's: knowledge, agents, the router, pipelines, canary.

Each metric is declared once, in :data:`CATALOG`, and recorded through
``ray.util.metrics`` like the serving metrics (:mod:`qingliang.serving.metrics`): Ray
exports them on the platform's metrics port prefixed ``ray_``, e.g.
``ray_qingliang_knowledge_search_seconds_bucket{kb="gov-policy",le="0.1"}``, where
Prometheus scrapes them and the Ray dashboard and Grafana (``deploy/grafana/``) read them.
docs/operations.md lists every metric, its labels and what it means.

A metric's Ray object is made once per process, on its first use inside a Ray process (a
Serve replica, an actor, a task, a connected driver); elsewhere (unit tests, a CLI command
that runs in its own process) recording is a no-op, and Ray is never imported for it.
Labels come only from names the platform knows (applied manifests, statuses), never from
a request's text: an unknown knowledge base is not a new series.

Example:
    >>> KNOWLEDGE_SEARCH.observe(0.042, kb="gov-policy")  # outside Ray: nothing happens
    >>> sorted(spec.name for spec in CATALOG)[:2]
    ['qingliang_agent_approvals_waiting', 'qingliang_agent_run_seconds']
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

logger = logging.getLogger(__name__)

COUNTER, GAUGE, HISTOGRAM = "counter", "gauge", "histogram"

#: Seconds, from a fast search to a long ingest or fine-tune step (×2 steps).
_SECONDS = tuple(0.005 * 2**i for i in range(18))  # 5 ms .. 655 s


@dataclass(frozen=True)
class MetricSpec:
    """One metric: its name (as Ray gets it; exported with ``ray_`` in front), kind,
    description, label names and, for a histogram, its bucket bounds."""

    name: str
    kind: str
    description: str
    tags: tuple[str, ...]
    boundaries: tuple[float, ...] = ()


def _ray_metrics() -> Any:
    """``ray.util.metrics`` inside a Ray process; None elsewhere (Ray is not imported)."""
    ray = sys.modules.get("ray")
    if ray is None or not ray.is_initialized():
        return None
    from ray.util import metrics

    return metrics


#: A gauge's values are recorded again this often: Ray 2.60 drops a gauge series that was
#: not recorded for two report intervals (~20 s), so a state held for hours (a canary
#: share, a reward sum) would vanish from Prometheus soon after it was set.
REFRESH_S = 5.0


class Metric:
    """A metric of :data:`CATALOG`; recording never raises (metering must never cost a
    request its answer) and costs a dict of labels per call. A gauge keeps its values and
    a background thread of the process records them again every :data:`REFRESH_S`."""

    __slots__ = ("_lock", "_ray", "_values", "spec")

    def __init__(self, spec: MetricSpec) -> None:
        self.spec = spec
        self._ray: Any = None
        self._lock = threading.Lock()
        self._values: dict[tuple[tuple[str, str], ...], float] = {}

    def _impl(self) -> Any:
        if self._ray is not None:
            return self._ray
        module = _ray_metrics()
        if module is None:
            return None
        with self._lock:
            if self._ray is None:
                s = self.spec
                if s.kind == HISTOGRAM:
                    self._ray = module.Histogram(
                        s.name,
                        description=s.description,
                        boundaries=list(s.boundaries),
                        tag_keys=s.tags,
                    )
                else:
                    cls = module.Counter if s.kind == COUNTER else module.Gauge
                    self._ray = cls(s.name, description=s.description, tag_keys=s.tags)
        return self._ray

    def _record(self, method: str, value: float, tags: Mapping[str, str]) -> None:
        try:
            impl = self._impl()
            if impl is not None:
                getattr(impl, method)(value, tags={k: str(v) for k, v in tags.items()})
        except Exception:
            logger.debug("could not record %s", self.spec.name, exc_info=True)

    def inc(self, value: float = 1.0, **tags: str) -> None:
        if value > 0:  # Ray refuses a counter's zero or negative step
            self._record("inc", value, tags)

    def observe(self, value: float, **tags: str) -> None:
        self._record("observe", value, tags)

    def set(self, value: float, **tags: str) -> None:
        self._values[tuple(sorted(tags.items()))] = value
        self._record("set", value, tags)
        if self._ray is not None:
            _refresher.ensure()

    def refresh(self) -> None:
        """Record every value :meth:`set` gave again (see :data:`REFRESH_S`)."""
        for key, value in list(self._values.items()):
            self._record("set", value, dict(key))


class _Refresher:
    """The one thread of a process that records its gauges again (started on first use)."""

    def __init__(self) -> None:
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def ensure(self) -> None:
        if self._thread is not None:
            return
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="qingliang-gauges", daemon=True
                )
                self._thread.start()

    @staticmethod
    def _run() -> None:
        while True:
            time.sleep(REFRESH_S)
            for gauge in _GAUGES:
                gauge.refresh()


_refresher = _Refresher()


CATALOG: list[MetricSpec] = []


_GAUGES: list[Metric] = []


def _metric(name: str, kind: str, description: str, *tags: str, bounds: tuple = ()) -> Metric:
    spec = MetricSpec(name, kind, description, tags, tuple(bounds))
    CATALOG.append(spec)
    metric = Metric(spec)
    if kind == GAUGE:
        _GAUGES.append(metric)
    return metric


# -- knowledge ------------------------------------------------------------------------------
KNOWLEDGE_DOCUMENTS = _metric(
    "qingliang_knowledge_documents_ingested_total",
    COUNTER,
    "Documents read by a knowledge sync or upload (action: sync, upload).",
    "kb",
    "action",
)
KNOWLEDGE_CHUNKS = _metric(
    "qingliang_knowledge_chunks_ingested_total",
    COUNTER,
    "Chunks of a sync or upload by what it did with them (change: added, updated, "
    "unchanged, deleted).",
    "kb",
    "change",
)
KNOWLEDGE_INGEST_ERRORS = _metric(
    "qingliang_knowledge_ingest_errors_total",
    COUNTER,
    "Files a sync or upload could not ingest.",
    "kb",
)
KNOWLEDGE_INGEST_SECONDS = _metric(
    "qingliang_knowledge_ingest_seconds",
    HISTOGRAM,
    "Wall time of one sync or upload: parsing, embedding and writing.",
    "kb",
    "action",
    bounds=_SECONDS,
)
KNOWLEDGE_SEARCH = _metric(
    "qingliang_knowledge_search_seconds",
    HISTOGRAM,
    "Answered knowledge searches, from the knowledge server taking one to its answer "
    "(query embedding included).",
    "kb",
    bounds=_SECONDS,
)

# -- agents ---------------------------------------------------------------------------------
AGENT_RUNS_STARTED = _metric(
    "qingliang_agent_runs_started_total", COUNTER, "Agent runs started.", "graph"
)
AGENT_RUNS_ENDED = _metric(
    "qingliang_agent_runs_ended_total",
    COUNTER,
    "Segments of agent runs that ended, by the status they ended in: done, rejected, "
    "stopped, failed, or waiting (paused for an approval; its resume ends again).",
    "graph",
    "status",
)
AGENT_RUN_SECONDS = _metric(
    "qingliang_agent_run_seconds",
    HISTOGRAM,
    "Active time of one run segment (start or resume to its end or pause).",
    "graph",
    "status",
    bounds=_SECONDS,
)
AGENT_APPROVALS_WAITING = _metric(
    "qingliang_agent_approvals_waiting",
    GAUGE,
    "Agent runs waiting for an approval now (refreshed every health check, ~10 s).",
    "graph",
)

# -- router ---------------------------------------------------------------------------------
ROUTER_DECISIONS = _metric(
    "qingliang_router_decisions_total",
    COUNTER,
    "Arms chosen by an agent graph's router node (router: graph/node).",
    "router",
    "arm",
)
ROUTER_REWARDS = _metric(
    "qingliang_router_rewards_total",
    COUNTER,
    "Decisions closed with a reward (learned from).",
    "router",
    "arm",
)
ROUTER_REWARD_SUM = _metric(
    "qingliang_router_reward_sum",
    GAUGE,
    "Running sum of those rewards since the router actor started (rewards may be "
    "negative, so a gauge): mean reward = delta(sum) / increase(rewards_total).",
    "router",
    "arm",
)

# -- pipelines ------------------------------------------------------------------------------
PIPELINE_STEPS = _metric(
    "qingliang_pipeline_steps_total",
    COUNTER,
    "Pipeline steps that ended, by step type and outcome (ok, gated, rejected, rolled "
    "back, waiting for an approval, failed).",
    "kind",
    "outcome",
)
PIPELINE_STEP_SECONDS = _metric(
    "qingliang_pipeline_step_seconds",
    HISTOGRAM,
    "Wall time of one pipeline step.",
    "kind",
    "outcome",
    bounds=_SECONDS,
)

# -- canary ---------------------------------------------------------------------------------
CANARY_SHARE = _metric(
    "qingliang_canary_share",
    GAUGE,
    "Configured share of a deployment's bare-name requests per arm (adapter; base: the "
    "base model), as the gateway routes them now.",
    "deployment",
    "arm",
)

_REWARDS: dict[tuple[str, str], float] = {}
_WAITING: set[str] = set()
_SHARES: dict[str, set[str]] = {}
_state_lock = threading.Lock()


def knowledge_ingested(kb: str, action: str, outcome: Any) -> None:
    """Count one sync or upload from its ``SyncOutcome`` (files, report, seconds)."""
    report = outcome.report
    KNOWLEDGE_DOCUMENTS.inc(outcome.files, kb=kb, action=action)
    for change in ("added", "updated", "unchanged", "deleted"):
        KNOWLEDGE_CHUNKS.inc(getattr(report, change), kb=kb, change=change)
    KNOWLEDGE_INGEST_ERRORS.inc(len(report.errors), kb=kb)
    KNOWLEDGE_INGEST_SECONDS.observe(outcome.seconds, kb=kb, action=action)


def agent_run_ended(graph: str, status: str, seconds: float) -> None:
    """A run's segment ended in ``status`` after ``seconds`` of active time."""
    AGENT_RUNS_ENDED.inc(1, graph=graph, status=status)
    AGENT_RUN_SECONDS.observe(seconds, graph=graph, status=status)


def approvals_waiting(graphs: list[str], waiting: list[str]) -> None:
    """Set the waiting approvals per graph: ``graphs`` applied now, ``waiting`` the graph
    of each waiting run; a graph seen before and gone now reads 0."""
    counts = dict.fromkeys([*graphs, *waiting], 0)
    for graph in waiting:
        counts[graph] += 1
    with _state_lock:
        for gone in _WAITING - set(counts):
            counts[gone] = 0
        _WAITING.update(counts)
    for graph, n in counts.items():
        AGENT_APPROVALS_WAITING.set(n, graph=graph)


def route_rewarded(router: str, arm: str, reward: float) -> float:
    """A decision of ``router`` closed with ``reward``; returns ``reward``."""
    with _state_lock:
        total = _REWARDS[(router, arm)] = _REWARDS.get((router, arm), 0.0) + float(reward)
    ROUTER_REWARDS.inc(1, router=router, arm=arm)
    ROUTER_REWARD_SUM.set(total, router=router, arm=arm)
    return reward


@contextmanager
def pipeline_step(kind: str) -> Iterator[dict[str, str]]:
    """Time one step of type ``kind``; the caller sets ``["outcome"]`` (default ok). An
    exception counts as ``failed``, LangGraph's interrupt (an approval) as ``waiting``."""
    started = time.monotonic()
    box = {"outcome": "ok"}
    try:
        yield box
    except BaseException as exc:
        box["outcome"] = "waiting" if "Interrupt" in type(exc).__name__ else "failed"
        raise
    finally:
        outcome = box["outcome"] or "ok"
        PIPELINE_STEPS.inc(1, kind=kind, outcome=outcome)
        PIPELINE_STEP_SECONDS.observe(time.monotonic() - started, kind=kind, outcome=outcome)


def canary_shares(shares: Mapping[str, Mapping[str, float]]) -> None:
    """Set each deployment's arms' shares (``{deployment: {arm: share}}``); an arm that
    left a deployment reads 0."""
    with _state_lock:
        gone = {d: seen - set(shares.get(d, {})) for d, seen in _SHARES.items()}
        for deployment, arms in shares.items():
            _SHARES.setdefault(deployment, set()).update(arms)
    for deployment, left in gone.items():
        for arm in left:
            CANARY_SHARE.set(0.0, deployment=deployment, arm=arm)
    for deployment, arms in shares.items():
        for arm, share in arms.items():
            CANARY_SHARE.set(share, deployment=deployment, arm=arm)

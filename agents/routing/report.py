"""A router as the console shows it: :meth:`RouterService.stats` plus its decisions and
rewards over time and the off-policy comparison of candidate policies.

- :func:`timeline` — decisions per time bucket per arm (by the time each was made) and the
  rewards per bucket (by the time each decision was closed with its reward): their count,
  mean, and mean per arm. Buckets are aligned to multiples of their width, so two reads a
  few seconds apart draw the same buckets. SQLite aggregates them
  (:meth:`~qingliang.agents.routing.log.DecisionLog.histogram`): the work grows with the
  decisions in the window, not with the whole log.
- :func:`compare` — every candidate of :func:`candidates` scored by
  :meth:`RouterService.evaluate` on the same records (the latest :data:`OPE_LATEST` closed
  decisions; fitted candidates learn on the older half, all are scored on the newer half)
  with IPS, SNIPS and doubly robust estimates and their standard errors, next to the
  logged policy's own mean reward there. Candidates: the router's settings in effect,
  the same algorithm exploring less and more (α × ½, α × 2), without or with more
  random exploration (another floor), the other algorithm, uniform random, and always
  each arm. Cached per router until its log or settings change; with decisions closing
  all the time, recomputed at most every :data:`OPE_REFRESH_S` (``stale`` in between).
- :func:`router_report` — the three together, what ``GET /v1/agents/{graph}/routers``
  answers per router node.

Example:
    >>> import tempfile
    >>> from pathlib import Path
    >>> svc = RouterService(Path(tempfile.mkdtemp()) / "router.sqlite")
    >>> svc.register("desk/triage", RouterConfig(("a", "b"), "linucb"))
    >>> out = router_report(svc, "desk/triage", window_s=3600, buckets=4)
    >>> out["timeline"]["bucket_s"], out["ope"]["candidates"]
    (900.0, [])
"""

from __future__ import annotations

import dataclasses
import logging
import math
import threading
import time
import weakref
from dataclasses import dataclass
from typing import Any

from qingliang.agents.routing.ope import Always, Candidate, Estimate, OpeReport, Uniform
from qingliang.agents.routing.router import (
    ALGORITHMS,
    DEFAULT_ALPHA,
    MIN_LOGGED,
    RouterConfig,
    RouterService,
)
from qingliang.platform.errors import Conflict

log = logging.getLogger(__name__)

#: Defaults and bounds of the timeline's window and bucket count.
DEFAULT_WINDOW_S = 24 * 3600.0
DEFAULT_BUCKETS = 48
MAX_WINDOW_S = 366 * 24 * 3600.0
MAX_BUCKETS = 500
#: Closed decisions (the latest) the off-policy comparison reads (about 0.5 s of work).
OPE_LATEST = 2000
#: A comparison is reused this long even if decisions closed since (it runs on the router
#: actor, between decisions: with live traffic, at most one a router per this many seconds).
OPE_REFRESH_S = 30.0


@dataclass(frozen=True)
class Choice:
    """A candidate policy: a stable ``name``, what it is, and the policy itself (a
    :class:`RouterConfig` to fit on the log, or a fixed :class:`~.ope.Candidate`)."""

    name: str
    description: str
    kind: str  # current | variant | algorithm | uniform | always
    policy: RouterConfig | Candidate
    changes: dict[str, Any] = dataclasses.field(default_factory=dict)


def candidates(config: RouterConfig) -> list[Choice]:
    """The policies :func:`compare` scores for a router with settings ``config``."""
    alpha = float(config.alpha or 0.0)
    out = [
        Choice(
            "current",
            f"the settings in effect ({config.algorithm}, alpha {alpha:g}, floor "
            f"{config.floor:g}), refitted on the older half",
            "current",
            config,
        )
    ]

    def variant(name: str, description: str, kind: str, **changes: Any) -> None:
        policy = dataclasses.replace(config, **changes)
        out.append(Choice(name, description, kind, policy, changes))

    if alpha > 0:
        variant(f"alpha={alpha / 2:g}", f"alpha {alpha / 2:g}: explores less", "variant",
                alpha=alpha / 2)  # fmt: skip
        variant(f"alpha={alpha * 2:g}", f"alpha {alpha * 2:g}: explores more", "variant",
                alpha=alpha * 2)  # fmt: skip
    floor = 0.2 if config.floor < 0.1 else 0.0
    what = "never picks at random" if floor == 0 else f"picks at random {floor:.0%} of the time"
    variant(f"floor={floor:g}", f"floor {floor:g}: {what}", "variant", floor=floor)
    for algo in ALGORITHMS:
        if algo != config.algorithm:
            a = DEFAULT_ALPHA[algo]
            variant(algo, f"{algo} with its default alpha {a:g}", "algorithm",
                    algorithm=algo, alpha=a)  # fmt: skip
    out.append(Choice("uniform", "each arm with the same chance", "uniform", Uniform(config.arms)))
    for arm in config.arms:
        always = Always(arm, config.arms)
        out.append(Choice(f"always:{arm}", f"always {arm}", "always", always, {"arm": arm}))
    return out


def _num(v: float) -> float | None:
    """A finite number rounded for JSON; None for inf / nan (not valid JSON)."""
    return round(float(v), 6) if math.isfinite(v) else None


def _estimate(e: Estimate) -> dict[str, Any]:
    return {"value": _num(e.value), "stderr": _num(e.stderr), "ess": _num(e.ess)}


def compare(service: RouterService, router: str, config: RouterConfig) -> dict[str, Any]:
    """Every candidate of :func:`candidates` on the latest :data:`OPE_LATEST` closed
    decisions (see the module notes). With fewer than ``MIN_LOGGED`` usable closed
    decisions: no candidates, and ``reason`` says why."""
    started = time.perf_counter()
    out: dict[str, Any] = {"min_closed": MIN_LOGGED, "latest": OPE_LATEST, "n": 0,
                           "logged": None, "candidates": [], "best": None,
                           "reason": None}  # fmt: skip
    report: OpeReport | None = None
    for c in candidates(config):
        try:
            report = service.evaluate(router, c.policy, latest=OPE_LATEST)
        except Conflict as exc:  # too few closed decisions: the same for every candidate
            out["reason"] = str(exc)
            break
        except ValueError as exc:  # a variant the configuration refuses
            log.debug("router %s: candidate %s not evaluated: %s", router, c.name, exc)
            continue
        out["candidates"].append({
            "name": c.name, "description": c.description, "kind": c.kind,
            "changes": c.changes, "n": report.n, "ips": _estimate(report.ips),
            "snips": _estimate(report.snips), "dr": _estimate(report.dr),
        })  # fmt: skip
    if report is not None and out["candidates"]:
        out["logged"] = {"value": _num(report.logged_value),
                         "stderr": _num(report.logged_stderr), "n": report.n}  # fmt: skip
        out["n"] = report.n
        scored = [c for c in out["candidates"] if c["dr"]["value"] is not None]
        if scored:
            out["best"] = max(scored, key=lambda c: c["dr"]["value"])["name"]
    out["computed_at"] = round(time.time(), 3)
    out["stale"] = False
    out["seconds"] = round(time.perf_counter() - started, 4)
    return out


def timeline(
    service: RouterService,
    router: str,
    arms: tuple[str, ...] | list[str],
    *,
    window_s: float = DEFAULT_WINDOW_S,
    buckets: int = DEFAULT_BUCKETS,
    now: float | None = None,
) -> dict[str, Any]:
    """Decisions per bucket per arm and the rewards per bucket over the last ``window_s``
    seconds, in ``buckets`` buckets aligned to multiples of their width (the last one
    holds ``now``). ``t`` are the buckets' starts (Unix seconds)."""
    if not (isinstance(window_s, int | float) and 0 < window_s <= MAX_WINDOW_S):
        raise ValueError(f"window_s: must be a number in (0, {MAX_WINDOW_S:g}], got {window_s!r}")
    if isinstance(buckets, bool) or not isinstance(buckets, int) or not 1 <= buckets <= MAX_BUCKETS:
        raise ValueError(f"buckets: must be an integer in 1..{MAX_BUCKETS}, got {buckets!r}")
    now = time.time() if now is None else now
    width = float(window_s) / buckets
    start = (math.floor(now / width) + 1) * width - buckets * width
    rows = service.log.histogram(router, start, width, buckets)
    names = list(arms) + sorted(
        {a for _, a, _, _ in rows["decisions"] + rows["rewards"]} - set(arms)
    )
    decisions = {a: [0] * buckets for a in names}
    for i, arm, n, _ in rows["decisions"]:
        decisions[arm][i] += n
    count = [0] * buckets
    total = [0.0] * buckets
    arm_count = {a: [0] * buckets for a in names}
    arm_total = {a: [0.0] * buckets for a in names}
    for i, arm, n, s in rows["rewards"]:
        count[i] += n
        total[i] += s or 0.0
        arm_count[arm][i] += n
        arm_total[arm][i] += s or 0.0
    mean = lambda s, n: round(s / n, 4) if n else None  # noqa: E731
    return {
        "window_s": float(window_s),
        "bucket_s": width,
        "t": [round(start + i * width, 3) for i in range(buckets)],
        "decisions": decisions,
        "rewards": count,
        "mean_reward": [mean(s, n) for s, n in zip(total, count, strict=True)],
        "arm_reward": {
            a: [mean(s, n) for s, n in zip(arm_total[a], arm_count[a], strict=True)] for a in names
        },
    }


class _Cache:
    """The last comparison per service and router, with what it was computed from."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._data: weakref.WeakKeyDictionary[Any, dict[str, tuple[Any, float, dict]]] = (
            weakref.WeakKeyDictionary()
        )

    def get(self, service: Any, router: str, key: Any) -> dict | None:
        """The comparison computed from ``key``, or one younger than :data:`OPE_REFRESH_S`
        computed with the same settings (``stale``: decisions closed since)."""
        with self._lock:
            hit = self._data.get(service, {}).get(router)
        if hit is None:
            return None
        old, at, value = hit
        if old == key:
            return value
        if old[:2] == key[:2] and time.monotonic() - at < OPE_REFRESH_S:
            return {**value, "stale": True}
        return None

    def put(self, service: Any, router: str, key: Any, value: dict) -> None:
        with self._lock:
            self._data.setdefault(service, {})[router] = (key, time.monotonic(), value)


_CACHE = _Cache()


def router_report(
    service: RouterService,
    router: str,
    *,
    window_s: float = DEFAULT_WINDOW_S,
    buckets: int = DEFAULT_BUCKETS,
    ope: bool = True,
    now: float | None = None,
) -> dict[str, Any]:
    """:meth:`RouterService.stats` with ``timeline`` (:func:`timeline`) and, with ``ope``,
    ``ope`` (:func:`compare`, cached until the router's log or settings change; None
    without ``ope``). ValueError names a bad ``window_s`` or ``buckets``."""
    stats = service.stats(router)
    config = RouterConfig.from_dict(stats["config"])
    out = {**stats, "timeline": timeline(service, router, config.arms, window_s=window_s,
                                         buckets=buckets, now=now)}  # fmt: skip
    if not ope:
        return {**out, "ope": None}
    # What the comparison reads: the settings, and every closed decision and its reward
    # (late feedback changes a closed decision's reward, hence the means).
    arms = sorted((a, v["closed"], v["mean_reward"]) for a, v in stats["arms"].items())
    key = (stats["version"], stats["config"], stats["closed"], arms)
    cached = _CACHE.get(service, router, key)
    if cached is None:
        cached = compare(service, router, config)
        _CACHE.put(service, router, key, cached)
        log.debug("router %s: candidates compared in %.3f s", router, cached["seconds"])
    return {**out, "ope": cached}

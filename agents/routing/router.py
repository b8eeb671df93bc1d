"""The router service: every router of every agent graph, learning online, persisted.

:class:`RouterService` is a plain, thread-safe class (the Ray actor in ``actor.py`` is a
thin shell around it). A router (key ``"<graph>/<node>"``) is registered with a
:class:`RouterConfig` from the manifest; then, per request:

1. :meth:`~RouterService.decide` encodes the request, lets the policy choose an arm, and
   logs the decision with its propensity;
2. reward parts arrive (:meth:`~RouterService.add_reward`, :meth:`~RouterService.finish_run`,
   :meth:`~RouterService.feedback`);
3. the decision is closed once (:meth:`~RouterService.close`, or by ``finish_run`` when the
   router waits for no feedback, or by :meth:`~RouterService.sweep` after its
   ``feedback_window_s``): the parts are combined, the policy learns (unless frozen), and
   the closed row and the new policy state are written in one transaction.

What survives a restart: everything. A new service on the same file restores a router's
state when it is registered again, or lazily at its first use. Registering a changed
configuration keeps what was learned for the arms that remain (new arms start from the
prior); floor and freeze set by an operator (:meth:`~RouterService.set_exploration`) and
a switched-in candidate (:meth:`~RouterService.switch`) stay in effect as long as the
manifest's configuration is unchanged.

Feedback on a decision that is already closed (it arrived after ``finish_run`` closed it,
or after the window) is written into the decision's parts and its logged reward is
recomputed, so the log, off-policy evaluation and refits see the full reward; the live
policy learns it as one more observation of the same features and arm with reward
``weights.feedback × score``. An update already applied is not rewritten in place because
the policy may have been frozen or replaced since; a separate observation is valid in every
case. When feedback is common, set ``feedback_window_s`` so most of it arrives in time.

Example:
    >>> import tempfile
    >>> svc = RouterService(Path(tempfile.mkdtemp()) / "router.sqlite")
    >>> svc.register("desk/triage", RouterConfig(("fast", "careful"), "linucb"))
    >>> d = svc.decide("desk/triage", RequestFeatures("hi"), run_id="r1")
    >>> d.arm in ("fast", "careful")
    True
    >>> svc.finish_run("r1", success=True, latency_s=0.4, tokens=120)
    1
    >>> svc.stats("desk/triage")["updates"]
    1
"""

from __future__ import annotations

import dataclasses
import logging
import math
import threading
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from qingliang.agents.routing.features import FeatureEncoder, RequestFeatures
from qingliang.agents.routing.learning import learning
from qingliang.agents.routing.log import DecisionLog, LoggedDecision, StoredState
from qingliang.agents.routing.ope import Candidate, Logged, OpeReport, evaluate
from qingliang.agents.routing.policy import PolicySpec, make_policy, policy_from_state
from qingliang.agents.routing.rewards import RewardWeights, combine, validate_part
from qingliang.agents.routing.teach import teach_policy
from qingliang.platform import metrics
from qingliang.platform.errors import Conflict, NotFound, did_you_mean

log = logging.getLogger(__name__)

ALGORITHMS = ("linucb", "thompson")
#: Exploration strength when the manifest gives none (see :class:`RouterConfig`).
DEFAULT_ALPHA = {"linucb": 1.0, "thompson": 0.5}
#: Closed decisions needed before a candidate can be evaluated (half fits, half scores).
MIN_LOGGED = 20

#: Closed decisions (the latest) the learning summary of :meth:`RouterService.stats` reads.
LEARNING_WINDOW = 5000


@dataclass(frozen=True)
class RouterConfig:
    """A router's settings, from the manifest.

    Attributes:
        arms: the agents, models or adapters it chooses among.
        algorithm: ``linucb`` or ``thompson``.
        alpha: exploration strength in units of the estimated reward noise σ̂ (LinUCB's
            bound width, Thompson's posterior scale), so it means the same whatever the
            scale the reward weights give rewards. None takes the algorithm's default
            (:data:`DEFAULT_ALPHA`: LinUCB 1.0, Thompson 0.5, the best of a grid on the
            simulated environment of bench/agents.py over 20 seeds).
        floor: share of uniformly random choices (ε), 0..1.
        frozen: choose but never learn.
        prior: per-arm prior mean reward (on the bias feature), for a cold start.
        prior_weight: how many pseudo-observations the prior is worth.
        seed: the policy's random seed (None: fresh randomness).
        domains: domain labels with their own feature (others count as ``other``).
        embedding_dims: size of the projected query embedding in the features.
        tenant_buckets: size of the hashed tenant block in the features.
        reward: weights of the reward parts.
        feedback_window_s: 0 closes decisions when their run finishes; otherwise they stay
            open this long for feedback and :meth:`RouterService.sweep` closes them.
    """

    arms: tuple[str, ...]
    algorithm: str
    alpha: float | None = None
    floor: float = 0.05
    frozen: bool = False
    prior: Mapping[str, float] = field(default_factory=dict)
    prior_weight: float = 1.0
    seed: int | None = 0
    domains: tuple[str, ...] = ()
    embedding_dims: int = 8
    tenant_buckets: int = 4
    reward: RewardWeights = field(default_factory=RewardWeights)
    feedback_window_s: float = 0.0

    def __post_init__(self) -> None:
        set_ = lambda k, v: object.__setattr__(self, k, v)  # noqa: E731
        set_("arms", tuple(self.arms))
        set_("domains", tuple(self.domains))
        set_("prior", dict(self.prior))
        if not self.arms or len(set(self.arms)) != len(self.arms):
            raise ValueError(f"arms: must be distinct and at least one, got {list(self.arms)}")
        if any(not isinstance(a, str) or not a for a in self.arms):
            raise ValueError(f"arms: must be non-empty strings, got {list(self.arms)}")
        if self.algorithm not in ALGORITHMS:
            raise ValueError(
                f"algorithm: must be one of {', '.join(ALGORITHMS)}, got {self.algorithm!r}"
            )
        if self.alpha is None:
            set_("alpha", DEFAULT_ALPHA[self.algorithm])
        low = 0.0 if self.algorithm == "linucb" else 1e-9
        _number("alpha", self.alpha, low)
        _number("floor", self.floor, 0.0, 1.0)
        _number("prior_weight", self.prior_weight, 1e-9)
        _number("feedback_window_s", self.feedback_window_s, 0.0)
        if not isinstance(self.frozen, bool):
            raise ValueError(f"frozen: must be true or false, got {self.frozen!r}")
        for arm, mean in self.prior.items():
            if arm not in self.arms:
                hint = did_you_mean(str(arm), self.arms)
                raise ValueError(f"prior: unknown arm {arm!r}{hint}; arms: {', '.join(self.arms)}")
            _number(f"prior.{arm}", mean)
        if self.seed is not None and (
            isinstance(self.seed, bool) or not isinstance(self.seed, int)
        ):
            raise ValueError(f"seed: must be an integer or null, got {self.seed!r}")
        for name in ("embedding_dims", "tenant_buckets"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise ValueError(f"{name}: must be an integer >= 0, got {v!r}")
        if not isinstance(self.reward, RewardWeights):
            raise ValueError(f"reward: must be RewardWeights, got {type(self.reward).__name__}")
        FeatureEncoder(self.domains, self.embedding_dims, self.tenant_buckets)  # checks domains

    def encoder(self) -> FeatureEncoder:
        # The projection seed is fixed: it defines the feature layout, not the policy.
        return FeatureEncoder(self.domains, self.embedding_dims, self.tenant_buckets, seed=0)

    def layout(self) -> tuple[Any, ...]:
        """What the encoded features mean; stored statistics only carry over if it matches."""
        return (self.domains, self.embedding_dims, self.tenant_buckets)

    def policy_spec(self) -> PolicySpec:
        d = self.encoder().dimensions
        prior = {a: [0.0] * (d - 1) + [float(m)] for a, m in self.prior.items()}
        return PolicySpec(
            self.algorithm, self.arms, d, alpha=self.alpha, floor=self.floor, prior_mean=prior,
            prior_weight=self.prior_weight, seed=self.seed, frozen=self.frozen,
            noise_scaled=True,
        )  # fmt: skip

    def to_dict(self) -> dict[str, Any]:
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        out.update(arms=list(self.arms), domains=list(self.domains), prior=dict(self.prior))
        out["reward"] = self.reward.to_dict()
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RouterConfig:
        names = [f.name for f in dataclasses.fields(cls)]
        for key in data:
            if key not in names:
                hint = did_you_mean(key, names)
                raise ValueError(f"{key}: unknown router setting{hint}")
        kw = dict(data)
        if isinstance(kw.get("reward"), Mapping):
            kw["reward"] = RewardWeights.from_dict(kw["reward"])
        return cls(**kw)


def _number(name: str, v: Any, low: float | None = None, high: float | None = None) -> None:
    if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
        raise ValueError(f"{name}: must be a finite number, got {v!r}")
    if (low is not None and v < low) or (high is not None and v > high):
        raise ValueError(
            f"{name}: must be in {low}..{high if high is not None else '∞'}, got {v!r}"
        )


@dataclass(frozen=True)
class RouteDecision:
    """The arm chosen for a request, with its propensity and the encoded features."""

    decision_id: str
    router: str
    arm: str
    propensity: float
    scores: dict[str, float]
    features: list[float]

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass
class _Router:
    name: str
    manifest: RouterConfig  # what register() was last called with
    config: RouterConfig  # in effect (after set_exploration / switch)
    policy: Any
    version: int
    #: Labelled examples taught (``key``, ``arm``, encoded ``x``), see ``teach.py``.
    taught: list[dict[str, Any]] = field(default_factory=list)
    encoder: FeatureEncoder = field(init=False)

    def __post_init__(self) -> None:
        self.encoder = self.config.encoder()

    def stored(self) -> StoredState:
        cfg = {
            "manifest": self.manifest.to_dict(),
            "active": self.config.to_dict(),
            "taught": self.taught,
        }
        return StoredState(
            self.name, cfg, self.policy.state(packed=True), self.version, time.time()
        )

    def learnable(self, d: LoggedDecision) -> bool:
        return d.arm in self.config.arms and len(d.features) == self.encoder.dimensions


class RouterService:
    """Every router, its policy and its decision log in the SQLite file ``db_path``."""

    def __init__(self, db_path: Path) -> None:
        self.log = DecisionLog(Path(db_path))
        self._routers: dict[str, _Router] = {}
        self._lock = threading.RLock()

    # -- routers -----------------------------------------------------------------------
    def register(self, router: str, config: RouterConfig) -> None:
        """Register (or re-register) ``router``; learned statistics carry over."""
        if not isinstance(router, str) or not router.strip():
            raise ValueError(f"router must be a non-empty name, got {router!r}")
        if not isinstance(config, RouterConfig):
            raise ValueError(f"config must be a RouterConfig, got {type(config).__name__}")
        with self._lock:
            r = self._build(router, config, self.log.load_state(router))
            self.log.save_state(r.stored())
            self._routers[router] = r

    def _build(self, name: str, manifest: RouterConfig, stored: StoredState | None) -> _Router:
        if stored is None:
            return _Router(name, manifest, manifest, make_policy(manifest.policy_spec()), 1)
        try:
            old_manifest = RouterConfig.from_dict(stored.config["manifest"])
            old_active = RouterConfig.from_dict(stored.config["active"])
        except (KeyError, TypeError, ValueError) as exc:
            raise Conflict(f"stored state of router {name!r} cannot be read: {exc}") from exc
        if old_manifest == manifest:
            active, version = old_active, stored.version
        else:
            active, version = manifest, stored.version + 1
            changed = [k for k, v in manifest.to_dict().items() if old_manifest.to_dict()[k] != v]
            log.info("router %s: configuration changed (%s)", name, ", ".join(changed))
        policy = make_policy(active.policy_spec())
        if old_active.layout() != active.layout():
            log.warning("router %s: feature layout changed; starting from the prior", name)
            return _Router(name, manifest, active, policy, version)  # examples: taught again
        state, old = policy.state(), stored.state
        kept = [a for a in active.arms if a in old["arms"]]
        for a in kept:
            state["A"][a], state["b"][a] = old["A"][a], old["b"][a]
        state["updates"] = old["updates"]
        state["residuals"] = old.get("residuals", state["residuals"])
        added = [a for a in active.arms if a not in old["arms"]]
        dropped = [a for a in old["arms"] if a not in active.arms]
        if added or dropped:
            log.info("router %s: arms added %s (from the prior), dropped %s", name, added, dropped)
        policy = policy_from_state(state, seed=active.seed)
        taught = list(stored.config.get("taught") or [])
        return _Router(name, manifest, active, policy, version, taught)

    def _get(self, router: str) -> _Router:
        r = self._routers.get(router)
        if r is None:
            stored = self.log.load_state(router)
            if stored is None:
                known = ", ".join(self.routers()) or "none"
                raise NotFound(f"router {router!r} is not registered (registered: {known})")
            r = self._build(router, RouterConfig.from_dict(stored.config["manifest"]), stored)
            self._routers[router] = r
            log.info("router %s restored from its saved state (version %d)", router, r.version)
        return r

    def routers(self) -> list[str]:
        """Routers registered here or saved in the file."""
        return sorted(set(self._routers) | set(self.log.stored_routers()))

    # -- decisions and rewards ---------------------------------------------------------
    def decide(
        self, router: str, features: RequestFeatures, *, run_id: str, tenant: str | None = None
    ) -> RouteDecision:
        """Choose an arm for a request and log the decision; ``tenant`` fills in
        ``features.tenant`` when that is None."""
        if not isinstance(features, RequestFeatures):
            raise ValueError(f"features must be RequestFeatures, got {type(features).__name__}")
        if not isinstance(run_id, str) or not run_id:
            raise ValueError("run_id must be a non-empty string")
        if features.tenant is None and tenant is not None:
            features = dataclasses.replace(features, tenant=tenant)
        with self._lock:
            r = self._get(router)
            x = r.encoder.encode(features)
            d = r.policy.choose(x)
            decision_id = uuid.uuid4().hex
            self.log.record(
                decision_id=decision_id, router=router, run_id=run_id,
                tenant=features.tenant, arm=d.arm, propensity=d.propensity, features=x,
                scores=d.scores, policy_version=r.version,
            )  # fmt: skip
        log.debug("route %s run=%s -> %s (p=%.3f)", router, run_id, d.arm, d.propensity)
        return RouteDecision(decision_id, router, d.arm, d.propensity, d.scores, x.tolist())

    def untaught(self, router: str, keys: list[str]) -> list[str]:
        """Those of ``keys`` (example keys, see ``teach.py``) the router was not taught."""
        with self._lock:
            known = {t["key"] for t in self._get(router).taught}
        return [k for k in keys if k not in known]

    def teach(self, router: str, examples: list[tuple[str, str, RequestFeatures]]) -> int:
        """Teach labelled examples ``(key, arm, features)`` not taught before (full
        information, no decision logged) and save the state; returns how many."""
        with self._lock:
            r = self._get(router)
            known = {t["key"] for t in r.taught}
            new = {
                k: (arm, r.encoder.encode(f))
                for k, arm, f in examples
                if k not in known and arm in r.config.arms
            }
            if not new:
                return 0
            teach_policy(r.policy, list(new.values()))
            r.taught.extend({"key": k, "arm": a, "x": x.tolist()} for k, (a, x) in new.items())
            self._commit(r, True, lambda save: self.log.save_state(save) or True)
        log.info(
            "router %s: taught %d labelled examples (%d in all)", router, len(new), len(r.taught)
        )
        return len(new)

    def add_reward(self, decision_id: str, part: str, value: float) -> dict[str, float]:
        """Add one reward part to an open decision; returns its parts so far."""
        v = validate_part(part, value)
        with self._lock:
            return self.log.add_part(decision_id, part, v)

    def close(self, decision_id: str) -> float | None:
        """Combine the parts, learn, persist; None if it was closed already."""
        with self._lock:
            d = self.log.get(decision_id)
            if d is None:
                raise NotFound(f"no routing decision {decision_id!r}")
            return None if d.is_closed else self._close(d)

    def _close(self, d: LoggedDecision) -> float | None:
        r = self._get(d.router)
        reward = combine(d.parts, r.config.reward)
        learn = r.learnable(d) and not r.policy.frozen
        if learn:
            r.policy.update(d.arm, d.features, reward)
        closed = self._commit(r, learn, self.log.close, d.id, reward)
        return metrics.route_rewarded(d.router, d.arm, reward) if closed else None

    def _commit(self, r: _Router, learned: bool, write: Any, *args: Any) -> bool:
        """Run a log write carrying the new policy state; on failure or refusal the
        in-memory router is dropped so it reloads what the file holds."""
        try:
            ok = write(*args, save=r.stored() if learned else None)
        except BaseException:
            self._routers.pop(r.name, None)
            raise
        if not ok and learned:
            self._routers.pop(r.name, None)
        return bool(ok)

    def finish_run(
        self,
        run_id: str,
        *,
        success: bool,
        latency_s: float,
        tokens: int,
        approval: float | None = None,
    ) -> int:
        """Add the run's outcome to its open decisions (closing them unless their router
        waits for feedback); returns how many decisions it reached."""
        parts = {
            "success": validate_part("success", float(success)),
            "latency_s": validate_part("latency_s", latency_s),
            "tokens": validate_part("tokens", tokens),
        }
        if approval is not None:
            parts["approval"] = validate_part("approval", approval)
        with self._lock:
            pending = [d for d in self.log.by_run(run_id) if not d.is_closed]
            for d in pending:
                merged = self.log.add_parts(d.id, parts)
                if self._get(d.router).config.feedback_window_s == 0:
                    self._close(dataclasses.replace(d, parts=merged))
        return len(pending)

    def feedback(self, run_id: str, score: float) -> int:
        """Explicit feedback (−1..1) on a run: a part of its open decisions (closing them),
        a late observation for closed ones (see the module notes). Returns how many
        decisions it reached; Conflict if every one already had feedback."""
        v = validate_part("feedback", score)
        with self._lock:
            decisions = self.log.by_run(run_id)
            if not decisions:
                raise NotFound(f"run {run_id!r} has no routing decisions")
            pending = [d for d in decisions if "feedback" not in d.parts]
            if not pending:
                raise Conflict(f"feedback on run {run_id!r} was already recorded")
            for d in pending:
                if not d.is_closed:
                    merged = self.log.add_parts(d.id, {"feedback": v})
                    self._close(dataclasses.replace(d, parts=merged))
                    continue
                r = self._get(d.router)
                parts = {**d.parts, "feedback": v}
                learn = r.learnable(d) and not r.policy.frozen
                if learn:
                    r.policy.update(d.arm, d.features, r.config.reward.feedback * v)
                reward = combine(parts, r.config.reward)
                self._commit(r, learn, self.log.revise, d.id, parts, reward)
        return len(pending)

    def sweep(self, now: float | None = None) -> int:
        """Close decisions whose router's feedback window has passed (only those with at
        least one reward part: a decision with none has nothing to learn from)."""
        now = time.time() if now is None else now
        closed = 0
        with self._lock:
            for d in self.log.open_before(now):
                window = self._get(d.router).config.feedback_window_s
                if window > 0 and d.parts and d.created + window <= now:
                    closed += self._close(d) is not None
        return closed

    # -- operations --------------------------------------------------------------------
    def set_exploration(
        self, router: str, floor: float | None = None, frozen: bool | None = None
    ) -> dict[str, Any]:
        """Change the exploration floor and/or freeze; returns :meth:`stats`."""
        with self._lock:
            r = self._get(router)
            config = dataclasses.replace(
                r.config,
                floor=r.config.floor if floor is None else floor,
                frozen=r.config.frozen if frozen is None else frozen,
            )
            policy = policy_from_state(r.policy.state(packed=True), seed=config.seed)
            policy.floor, policy.frozen = config.floor, config.frozen
            new = _Router(router, r.manifest, config, policy, r.version + 1, r.taught)
            self.log.save_state(new.stored())
            self._routers[router] = new
            log.info("router %s: floor %s, frozen %s", router, config.floor, config.frozen)
            return self.stats(router)

    def stats(self, router: str) -> dict[str, Any]:
        """Decisions, closed ones, per-arm count / mean reward / mean logged propensity,
        and the settings in effect (``config``: the :class:`RouterConfig` as a dict)."""
        with self._lock:
            r = self._get(router)
            counts = self.log.counts(router)
            recent = self.log.logged(router, limit=LEARNING_WINDOW)
        empty = {"count": 0, "closed": 0, "mean_reward": None, "mean_propensity": None}
        arms = {a: counts["arms"].get(a, empty) for a in r.config.arms}
        arms.update({a: v for a, v in counts["arms"].items() if a not in arms})
        return {
            "router": router, "algorithm": r.config.algorithm, "floor": r.config.floor,
            "frozen": r.config.frozen, "version": r.version, "updates": r.policy.updates,
            "decisions": counts["decisions"], "closed": counts["closed"], "taught": len(r.taught),
            "open": counts["open"], "arms": arms, "config": r.config.to_dict(),
            "learning": learning(recent, r.config.arms),
        }  # fmt: skip

    def _records(self, r: _Router, weights: RewardWeights, latest: int | None) -> list[Logged]:
        """Closed decisions usable under the current layout, rewards under ``weights``."""
        return [
            Logged(np.asarray(d.features), d.arm, d.propensity, combine(d.parts, weights))
            for d in self.log.logged(r.name, limit=latest)
            if len(d.features) == r.encoder.dimensions
        ]

    def _check_candidate(self, r: _Router, candidate: object) -> None:
        if not isinstance(candidate, RouterConfig):
            raise ValueError(f"candidate must be a RouterConfig, got {type(candidate).__name__}")
        if set(candidate.arms) != set(r.config.arms) or candidate.layout() != r.config.layout():
            raise ValueError(
                "candidate must have the router's arms and feature layout (domains, "
                "embedding_dims, tenant_buckets): the log cannot judge others"
            )

    @staticmethod
    def _fit(candidate: RouterConfig, records: list[Logged], taught: list[dict]) -> Any:
        """A fresh ``candidate`` taught the router's examples, then fitted on ``records``."""
        policy = make_policy(dataclasses.replace(candidate.policy_spec(), frozen=False))
        teach_policy(policy, [(t["arm"], t["x"]) for t in taught])
        for rec in records:
            if rec.arm in candidate.arms:
                policy.update(rec.arm, rec.features, rec.reward)
        return policy

    def evaluate(
        self, router: str, candidate: RouterConfig | Candidate, latest: int | None = None
    ) -> OpeReport:
        """Fit ``candidate`` on the older half of the closed log (its ``latest`` decisions if
        given), estimate its value on the newer half (IPS, SNIPS, DR) next to the logged
        policy's mean reward there. A fixed policy (an ``ope.Candidate``) is only scored."""
        with self._lock:
            r = self._get(router)
            if isinstance(candidate, RouterConfig) or not hasattr(candidate, "probabilities"):
                self._check_candidate(r, candidate)
            config = candidate if isinstance(candidate, RouterConfig) else r.config
            records = self._records(r, config.reward, latest)
        if len(records) < MIN_LOGGED:
            raise Conflict(
                f"router {router!r} has {len(records)} closed decisions; off-policy "
                f"evaluation needs at least {MIN_LOGGED}"
            )
        half = len(records) // 2
        if not isinstance(candidate, RouterConfig):
            return evaluate(candidate, records[half:])
        policy = self._fit(candidate, records[:half], r.taught)
        policy.frozen = True
        return evaluate(policy, records[half:])

    def switch(
        self,
        router: str,
        candidate: RouterConfig,
        *,
        min_margin: float = 0.0,
        confidence: float = 1.0,
        force: bool = False,
    ) -> OpeReport | None:
        """Put ``candidate`` in (refit on the whole log) if the lower confidence bound of its
        DR estimate (value − ``confidence`` × standard error) is at least the logged value
        + ``min_margin``, or with ``force``; Conflict with the figures if not.

        A point estimate would switch to a candidate that only looks better by chance about
        half the time when the two are equal; the bound asks the log for evidence."""
        if not (isinstance(confidence, int | float) and 0 <= confidence <= 10):
            raise ValueError(f"confidence: must be a number in 0..10, got {confidence!r}")
        with self._lock:
            r = self._get(router)
            self._check_candidate(r, candidate)
            try:
                report: OpeReport | None = self.evaluate(router, candidate)
            except Conflict:
                if not force:
                    raise
                report = None
            if report is not None and not force:
                bound = report.dr.value - confidence * report.dr.stderr
                if bound < report.logged_value + min_margin:
                    raise Conflict(
                        f"candidate for router {router!r} not switched in: doubly robust "
                        f"estimate {report.dr.value:.4f} − {confidence:g} × stderr "
                        f"{report.dr.stderr:.4f} = {bound:.4f} < logged value "
                        f"{report.logged_value:.4f} + margin {min_margin:g}; IPS "
                        f"{report.ips.value:.4f}, SNIPS {report.snips.value:.4f}, n={report.n}"
                    )
            policy = self._fit(candidate, self._records(r, candidate.reward, None), r.taught)
            policy.frozen = candidate.frozen
            new = _Router(router, r.manifest, candidate, policy, r.version + 1, r.taught)
            self.log.save_state(new.stored())
            self._routers[router] = new
            log.info(
                "router %s: switched to %s (version %d)", router, candidate.algorithm, new.version
            )
            return report

"""Off-policy evaluation: how a candidate policy would have done, from the decision log.

Every logged decision carries the propensity ``p`` with which the logging policy chose its
arm (the logged value is used as is, never recomputed). For a candidate ``π`` with choice
probabilities ``π(a|x)`` the importance weight of a record is ``w = π(a_logged|x) / p``:

- :func:`ips` — inverse propensity scoring, ``mean(w·r)``: unbiased when every arm ``π``
  can choose had a positive logged propensity, high variance when weights are large.
- :func:`snips` — self-normalised IPS, ``Σ w·r / Σ w``: slightly biased, steadier.
- :func:`doubly_robust` — ``mean(Σ_a π(a|x)·q(x,a) + w·(r − q(x,a_logged)))`` with a
  direct-method reward model ``q`` (per-arm ridge regression on the logged features,
  shrunk to the mean reward). ``q`` is cross-fitted: records are dealt (fixed-seed
  shuffle) into two folds and each fold is scored by the model fitted on the other, so a
  record never grades itself.
  Unbiased if either the propensities or ``q`` are right; lower variance than IPS when
  ``q`` explains part of the reward.

Each returns an :class:`Estimate` with its standard error and the effective sample size
``(Σw)² / Σw²`` (how many records the estimate really rests on). :class:`Always` and
:class:`Uniform` are fixed candidates (always one arm; every arm alike) to compare with.

Example:
    >>> class Always:
    ...     def probabilities(self, x): return {"a": 1.0, "b": 0.0}
    >>> logs = [Logged([1.0], "a", 0.5, 1.0), Logged([1.0], "b", 0.5, 0.0)] * 10
    >>> report = evaluate(Always(), logs)
    >>> report.logged_value, report.ips.value, round(report.dr.value, 1)
    (0.5, 1.0, 1.0)
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Protocol

import numpy as np

log = logging.getLogger(__name__)


class Candidate(Protocol):
    """A policy that can say how likely it is to choose each arm for a feature vector."""

    def probabilities(self, features: Sequence[float]) -> dict[str, float]: ...


class Record(Protocol):
    """What evaluation needs of a logged decision (a :class:`Logged` or a log row)."""

    @property
    def features(self) -> Sequence[float]: ...

    @property
    def arm(self) -> str: ...

    @property
    def propensity(self) -> float: ...

    @property
    def reward(self) -> float | None: ...


@dataclass(frozen=True)
class Logged:
    """One closed decision: features, the arm chosen, its logged propensity, its reward."""

    features: Sequence[float]
    arm: str
    propensity: float
    reward: float


@dataclass(frozen=True)
class Estimate:
    """An estimated policy value, its standard error, records used and effective size."""

    value: float
    stderr: float
    n: int
    ess: float


@dataclass(frozen=True)
class OpeReport:
    """The logged policy's mean reward (and its standard error) next to the candidate's
    three estimates."""

    logged_value: float
    ips: Estimate
    snips: Estimate
    dr: Estimate
    n: int
    logged_stderr: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Always:
    """The fixed policy that always takes ``arm`` (of ``arms``)."""

    arm: str
    arms: tuple[str, ...]

    def probabilities(self, features: Sequence[float]) -> dict[str, float]:
        return {a: float(a == self.arm) for a in self.arms}


@dataclass(frozen=True)
class Uniform:
    """The fixed policy that takes each of ``arms`` with the same probability."""

    arms: tuple[str, ...]

    def probabilities(self, features: Sequence[float]) -> dict[str, float]:
        return {a: 1.0 / len(self.arms) for a in self.arms}


Targets = Sequence[Mapping[str, float]]


def _arrays(records: Sequence[Record], targets: Targets) -> tuple[np.ndarray, np.ndarray]:
    """Rewards and importance weights; checks the records and targets agree."""
    if len(records) != len(targets):
        raise ValueError(f"{len(records)} records but {len(targets)} target distributions")
    if len(records) < 2:
        raise ValueError(f"off-policy evaluation needs at least 2 records, got {len(records)}")
    r = np.empty(len(records))
    w = np.empty(len(records))
    for i, (rec, pi) in enumerate(zip(records, targets, strict=True)):
        if rec.reward is None or not math.isfinite(rec.reward):
            raise ValueError(f"record {i}: reward must be a finite number, got {rec.reward!r}")
        if not 0 < rec.propensity <= 1:
            raise ValueError(f"record {i}: propensity must be in (0, 1], got {rec.propensity!r}")
        r[i] = rec.reward
        # An arm the candidate does not have gets probability 0 (weight 0).
        w[i] = float(pi.get(rec.arm, 0.0)) / rec.propensity
    return r, w


def _ess(w: np.ndarray) -> float:
    s2 = float(np.sum(w**2))
    return float(np.sum(w)) ** 2 / s2 if s2 > 0 else 0.0


def _mean_estimate(v: np.ndarray, w: np.ndarray) -> Estimate:
    n = len(v)
    return Estimate(float(np.mean(v)), float(np.std(v, ddof=1) / math.sqrt(n)), n, _ess(w))


def ips(records: Sequence[Record], targets: Targets) -> Estimate:
    """Inverse propensity scoring; ``targets[i]`` is the candidate's ``π(·|x_i)``."""
    r, w = _arrays(records, targets)
    return _mean_estimate(w * r, w)


def snips(records: Sequence[Record], targets: Targets) -> Estimate:
    """Self-normalised IPS, with a delta-method standard error."""
    r, w = _arrays(records, targets)
    total = float(np.sum(w))
    if total <= 0:
        return Estimate(0.0, math.inf, len(r), 0.0)
    value = float(np.sum(w * r)) / total
    stderr = math.sqrt(float(np.sum(w**2 * (r - value) ** 2))) / total
    return Estimate(value, stderr, len(r), _ess(w))


def _fit_ridge(x: np.ndarray, r: np.ndarray, arms: list[str], logged: list[str], ridge: float):
    """Per-arm ridge regression of (r − mean r) on x; returns (mean, {arm: θ})."""
    base = float(np.mean(r)) if len(r) else 0.0
    d = x.shape[1]
    thetas = {}
    for a in arms:
        m = np.array([arm == a for arm in logged], dtype=bool)
        xa, ra = x[m], r[m] - base
        thetas[a] = np.linalg.solve(ridge * np.eye(d) + xa.T @ xa, xa.T @ ra)
    return base, thetas


def doubly_robust(
    records: Sequence[Record], targets: Targets, *, ridge: float = 1.0, folds: int = 2
) -> Estimate:
    """Doubly robust estimate with a cross-fitted per-arm ridge reward model."""
    r, w = _arrays(records, targets)
    if folds < 2 or folds > len(r):
        raise ValueError(f"folds must be in 2..{len(r)}, got {folds}")
    x = np.asarray([rec.features for rec in records], dtype=np.float64)
    if x.ndim != 2 or not np.all(np.isfinite(x)):
        raise ValueError("records must have feature vectors of one length, finite numbers")
    logged = [rec.arm for rec in records]
    arms = sorted({a for pi in targets for a in pi} | set(logged))
    # A fixed-seed shuffle: each fold spans the whole log (a drifting logging policy) and no
    # periodic pattern in the log lines up with the folds.
    fold = np.random.default_rng(0).permutation(len(r)) % folds
    v = np.empty(len(r))
    for f in range(folds):
        test, train = fold == f, fold != f
        base, thetas = _fit_ridge(
            x[train], r[train], arms, [a for a, t in zip(logged, train, strict=True) if t], ridge
        )
        for i in np.flatnonzero(test):
            q = {a: base + float(thetas[a] @ x[i]) for a in arms}
            direct = sum(p * q[a] for a, p in targets[i].items() if a in q)
            v[i] = direct + w[i] * (r[i] - q[logged[i]])
    return _mean_estimate(v, w)


def evaluate(candidate: Candidate, records: Sequence[Record]) -> OpeReport:
    """IPS, SNIPS and DR estimates of ``candidate`` on ``records``, with the logged value."""
    targets = [candidate.probabilities(rec.features) for rec in records]
    r, _ = _arrays(records, targets)
    return OpeReport(
        logged_value=float(np.mean(r)),
        ips=ips(records, targets),
        snips=snips(records, targets),
        dr=doubly_robust(records, targets),
        n=len(records),
        logged_stderr=float(np.std(r, ddof=1) / math.sqrt(len(r))),
    )

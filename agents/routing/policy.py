"""Contextual-bandit routing policies: features in, an arm and its propensity out.

A policy is a plain object with no I/O: :meth:`choose` picks one of the manifest's arms
(agents, models or adapters) for a feature vector and returns the probability with which it
picked it (logged for off-policy evaluation); :meth:`update` learns from the reward that
came back. State is a dict of plain lists (:meth:`state` / :meth:`from_state`), so it can be
persisted as JSON and shared.

- :class:`LinUCB` (Li et al., 2010, disjoint model): per arm ``A = λI + Σ x xᵀ``,
  ``b = Σ r x``; score ``θᵀx + α·sqrt(xᵀA⁻¹x)``. Deterministic, so the propensity of the
  chosen arm is ``1 − ε + ε/K`` and of the others ``ε/K`` with the exploration floor ``ε``.
- :class:`LinearThompson`: samples ``θ ~ N(A⁻¹b, v²A⁻¹)`` per arm and picks the best
  sample; its propensity is estimated by re-sampling (``propensity_samples`` draws).

Both accept priors for a cold start (``prior_mean`` per arm, weighted as ``prior_weight``
pseudo-observations) and can be frozen (no updates: for evaluation or after an incident).

Example:
    >>> p = LinUCB(["fast", "careful"], dimensions=3, alpha=0.5, seed=7)
    >>> d = p.choose([1.0, 0.0, 0.2])
    >>> d.arm in ("fast", "careful") and 0 < d.propensity <= 1
    True
    >>> p.update(d.arm, [1.0, 0.0, 0.2], reward=1.0)
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Decision:
    """What a policy chose, with the probability of that choice and every arm's score."""

    arm: str
    propensity: float
    scores: dict[str, float]


class _Linear:
    """Shared state and checks of the linear policies (per-arm A and b)."""

    kind = "linear"

    def __init__(
        self,
        arms: Sequence[str],
        *,
        dimensions: int,
        ridge: float = 1.0,
        floor: float = 0.0,
        prior_mean: dict[str, Sequence[float]] | None = None,
        prior_weight: float = 1.0,
        seed: int | None = None,
    ) -> None:
        names = list(arms)
        if not names or len(set(names)) != len(names):
            raise ValueError(f"arms must be distinct and at least one, got {names!r}")
        if dimensions < 1:
            raise ValueError(f"dimensions must be at least 1, got {dimensions}")
        if ridge <= 0 or prior_weight <= 0:
            raise ValueError("ridge and prior_weight must be positive")
        if not 0 <= floor <= 1:
            raise ValueError(f"floor (exploration share) must be in 0..1, got {floor}")
        self.arms = names
        self.dimensions = dimensions
        self.floor = floor
        self.frozen = False
        self._rng = np.random.default_rng(seed)
        self._a = {a: np.eye(dimensions) * ridge for a in names}
        self._b = {a: np.zeros(dimensions) for a in names}
        for arm, mean in (prior_mean or {}).items():
            if arm not in self._a:
                raise ValueError(f"prior for unknown arm {arm!r}; arms: {', '.join(names)}")
            m = self._vector(mean, f"prior_mean[{arm}]")
            # prior_weight pseudo-observations of each basis direction e_i with reward m_i:
            # θ starts at w/(ridge+w)·m and real rewards outweigh it as they arrive.
            self._a[arm] += np.eye(dimensions) * prior_weight
            self._b[arm] += prior_weight * m
        self.updates = 0

    def _vector(self, x: Sequence[float], what: str = "features") -> np.ndarray:
        v = np.asarray(x, dtype=np.float64)
        if v.shape != (self.dimensions,):
            raise ValueError(f"{what} must have {self.dimensions} numbers, got shape {v.shape}")
        if not np.all(np.isfinite(v)):
            raise ValueError(f"{what} must be finite numbers")
        return v

    def _theta(self, arm: str) -> np.ndarray:
        return np.linalg.solve(self._a[arm], self._b[arm])

    def update(self, arm: str, features: Sequence[float], reward: float) -> None:
        """Learn from ``reward`` for ``arm`` chosen on ``features`` (ignored when frozen)."""
        if arm not in self._a:
            raise ValueError(f"unknown arm {arm!r}; arms: {', '.join(self.arms)}")
        if not np.isfinite(reward):
            raise ValueError(f"reward must be a finite number, got {reward!r}")
        x = self._vector(features)
        if self.frozen:
            return
        self._a[arm] += np.outer(x, x)
        self._b[arm] += reward * x
        self.updates += 1

    def _with_floor(self, best: str, scores: dict[str, float]) -> Decision:
        k = len(self.arms)
        arm = best
        if self.floor > 0 and self._rng.random() < self.floor:
            arm = self.arms[int(self._rng.integers(k))]
        share = self.floor / k
        propensity = (1 - self.floor) + share if arm == best else share
        return Decision(arm, float(propensity), scores)

    def state(self) -> dict[str, Any]:
        """JSON-ready state (``from_state`` restores it exactly)."""
        return {
            "kind": self.kind,
            "arms": self.arms,
            "dimensions": self.dimensions,
            "floor": self.floor,
            "frozen": self.frozen,
            "updates": self.updates,
            "A": {a: self._a[a].tolist() for a in self.arms},
            "b": {a: self._b[a].tolist() for a in self.arms},
            "params": self._params(),
        }

    def _params(self) -> dict[str, Any]:
        return {}

    def _restore(self, state: dict[str, Any]) -> None:
        self.frozen = bool(state["frozen"])
        self.updates = int(state["updates"])
        for a in self.arms:
            self._a[a] = np.asarray(state["A"][a], dtype=np.float64)
            self._b[a] = np.asarray(state["b"][a], dtype=np.float64)


class LinUCB(_Linear):
    """Disjoint LinUCB with an optional exploration floor ``floor`` (ε)."""

    kind = "linucb"

    def __init__(self, arms: Sequence[str], *, dimensions: int, alpha: float = 1.0, **kw: Any):
        super().__init__(arms, dimensions=dimensions, **kw)
        if alpha < 0:
            raise ValueError(f"alpha must be >= 0, got {alpha}")
        self.alpha = alpha

    def choose(self, features: Sequence[float]) -> Decision:
        x = self._vector(features)
        scores = {}
        for a in self.arms:
            a_inv_x = np.linalg.solve(self._a[a], x)
            scores[a] = float(self._theta(a) @ x + self.alpha * np.sqrt(max(x @ a_inv_x, 0.0)))
        best = max(self.arms, key=lambda a: (scores[a], -self.arms.index(a)))
        return self._with_floor(best, scores)

    def _params(self) -> dict[str, Any]:
        return {"alpha": self.alpha}

    @classmethod
    def from_state(cls, state: dict[str, Any], seed: int | None = None) -> LinUCB:
        p = cls(
            state["arms"],
            dimensions=state["dimensions"],
            alpha=state["params"]["alpha"],
            floor=state["floor"],
            seed=seed,
        )
        p._restore(state)
        return p


class LinearThompson(_Linear):
    """Linear Thompson sampling; ``v`` scales the posterior's spread."""

    kind = "thompson"

    def __init__(
        self,
        arms: Sequence[str],
        *,
        dimensions: int,
        v: float = 0.5,
        propensity_samples: int = 200,
        **kw: Any,
    ):
        super().__init__(arms, dimensions=dimensions, **kw)
        if v <= 0 or propensity_samples < 1:
            raise ValueError("v must be positive and propensity_samples at least 1")
        self.v = v
        self.propensity_samples = propensity_samples

    def _sample_scores(self, x: np.ndarray, n: int) -> np.ndarray:
        out = np.empty((n, len(self.arms)))
        for j, a in enumerate(self.arms):
            cov = np.linalg.inv(self._a[a]) * self.v**2
            draws = self._rng.multivariate_normal(self._theta(a), cov, size=n)
            out[:, j] = draws @ x
        return out

    def choose(self, features: Sequence[float]) -> Decision:
        x = self._vector(features)
        draw = self._sample_scores(x, 1)[0]
        best = self.arms[int(np.argmax(draw))]
        # Thompson's choice probability has no closed form: estimate it by re-sampling.
        wins = np.argmax(self._sample_scores(x, self.propensity_samples), axis=1)
        share = float(np.mean(wins == self.arms.index(best)))
        p = max(share, 1.0 / (self.propensity_samples + 1))
        decision = self._with_floor(best, dict(zip(self.arms, map(float, draw), strict=True)))
        if decision.arm == best:
            k = len(self.arms)
            return Decision(best, (1 - self.floor) * p + self.floor / k, decision.scores)
        return decision

    def _params(self) -> dict[str, Any]:
        return {"v": self.v, "propensity_samples": self.propensity_samples}

    @classmethod
    def from_state(cls, state: dict[str, Any], seed: int | None = None) -> LinearThompson:
        p = cls(
            state["arms"],
            dimensions=state["dimensions"],
            v=state["params"]["v"],
            propensity_samples=state["params"]["propensity_samples"],
            floor=state["floor"],
            seed=seed,
        )
        p._restore(state)
        return p

"""Contextual-bandit routing policies: features in, an arm and its propensity out.

A policy is a plain object with no I/O: :meth:`choose` picks one of the manifest's arms
(agents, models or adapters) for a feature vector and returns the probability with which it
picked it (logged for off-policy evaluation); :meth:`update` learns from the reward that
came back; :meth:`probabilities` gives the whole choice distribution for a feature vector
without drawing (what off-policy evaluation of a candidate needs). State is a dict of plain
lists, or base64 float64 when ``packed`` (:meth:`state` / :meth:`from_state`), so it can be
persisted as JSON and shared.

- :class:`LinUCB` (Li et al., 2010, disjoint model): per arm ``A = λI + Σ x xᵀ``,
  ``b = Σ r x``; score ``θᵀx + α·sqrt(xᵀA⁻¹x)``. Deterministic, so the propensity of the
  chosen arm is ``1 − ε + ε/K`` and of the others ``ε/K`` with the exploration floor ``ε``.
- :class:`LinearThompson`: samples ``θ ~ N(A⁻¹b, v²A⁻¹)`` per arm and picks the best
  sample; its propensity is estimated by re-sampling (``propensity_samples`` draws).

Both accept priors for a cold start (``prior_mean`` per arm, weighted as ``prior_weight``
pseudo-observations) and can be frozen (no updates: for evaluation or after an incident).
With ``noise_scaled`` the exploration strength (``α``, ``v``) is multiplied by the estimated
reward noise σ̂ (root mean squared prediction error of the updates so far, starting at 1),
so the same setting means the same amount of exploration whatever the rewards' scale.
``A⁻¹`` and ``θ`` are cached and kept current with Sherman–Morrison updates, so a choice
costs a few small matrix-vector products. :func:`make_policy` builds either policy from a
:class:`PolicySpec`; :func:`policy_from_state` restores either.

Example:
    >>> p = LinUCB(["fast", "careful"], dimensions=3, alpha=0.5, seed=7)
    >>> d = p.choose([1.0, 0.0, 0.2])
    >>> d.arm in ("fast", "careful") and 0 < d.propensity <= 1
    True
    >>> p.update(d.arm, [1.0, 0.0, 0.2], reward=1.0)
    >>> round(sum(p.probabilities([1.0, 0.0, 0.2]).values()), 6)
    1.0
"""

from __future__ import annotations

import base64
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

log = logging.getLogger(__name__)

#: Pseudo-observations behind the initial noise estimate σ̂ = 1.0.
_NOISE_PRIOR = 10.0
#: Sherman–Morrison updates between two exact re-inversions of A (bounds rounding drift).
_REFRESH_EVERY = 512


@dataclass(frozen=True)
class Decision:
    """What a policy chose, with the probability of that choice and every arm's score."""

    arm: str
    propensity: float
    scores: dict[str, float]


class RouterPolicy(Protocol):
    """What the router service needs from a policy."""

    arms: list[str]
    dimensions: int
    floor: float
    frozen: bool
    updates: int

    def choose(self, features: Sequence[float]) -> Decision: ...

    def update(self, arm: str, features: Sequence[float], reward: float) -> None: ...

    def probabilities(self, features: Sequence[float]) -> dict[str, float]: ...

    def state(self, *, packed: bool = False) -> dict[str, Any]: ...


def _pack(a: np.ndarray) -> str:
    return base64.b64encode(np.ascontiguousarray(a, dtype="<f8").tobytes()).decode("ascii")


def _array(value: str | Sequence[Any]) -> np.ndarray:
    """A state array from a packed string or (nested) lists."""
    if isinstance(value, str):
        return np.frombuffer(base64.b64decode(value), dtype="<f8").astype(np.float64)
    return np.asarray(value, dtype=np.float64)


class _Linear:
    """Shared state and checks of the linear policies (per-arm A and b).

    ``A`` and ``b`` are the persisted statistics; ``A⁻¹`` and ``θ = A⁻¹b`` are caches kept
    current with Sherman–Morrison rank-one updates, so choosing costs O(K·d²) with no solve.
    """

    kind = "linear"

    def __init__(
        self,
        arms: Sequence[str],
        *,
        dimensions: int,
        ridge: float = 1.0,
        floor: float = 0.0,
        prior_mean: Mapping[str, Sequence[float]] | None = None,
        prior_weight: float = 1.0,
        seed: int | None = None,
        noise_scaled: bool = False,
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
        self._index = {a: i for i, a in enumerate(names)}
        k = len(names)
        self._a = np.repeat(np.eye(dimensions)[None] * ridge, k, axis=0)
        self._b = np.zeros((k, dimensions))
        for arm, mean in (prior_mean or {}).items():
            if arm not in self._index:
                raise ValueError(f"prior for unknown arm {arm!r}; arms: {', '.join(names)}")
            m = self._vector(mean, f"prior_mean[{arm}]")
            # prior_weight pseudo-observations of each basis direction e_i with reward m_i:
            # θ starts at w/(ridge+w)·m and real rewards outweigh it as they arrive.
            i = self._index[arm]
            self._a[i] += np.eye(dimensions) * prior_weight
            self._b[i] += prior_weight * m
        self.updates = 0
        self.noise_scaled = bool(noise_scaled)
        self._residuals = [0.0, 0]  # Σ (r − θᵀx)² before each update, and how many
        self._refresh()

    @property
    def noise(self) -> float:
        """Estimated reward noise σ̂: the root mean squared prediction error of the updates
        so far, starting from 1.0 (worth ``_NOISE_PRIOR`` observations)."""
        ssr, n = self._residuals
        return math.sqrt((_NOISE_PRIOR + ssr) / (_NOISE_PRIOR + n))

    def _scale(self) -> float:
        return self.noise if self.noise_scaled else 1.0

    def _refresh(self) -> None:
        self._a_inv = np.linalg.inv(self._a)
        self._theta = np.einsum("kij,kj->ki", self._a_inv, self._b)
        self._since_refresh = 0

    def _vector(self, x: Sequence[float], what: str = "features") -> np.ndarray:
        v = np.asarray(x, dtype=np.float64)
        if v.shape != (self.dimensions,):
            raise ValueError(f"{what} must have {self.dimensions} numbers, got shape {v.shape}")
        if not np.all(np.isfinite(v)):
            raise ValueError(f"{what} must be finite numbers")
        return v

    def _moments(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Per arm: the estimate θᵀx and its width sqrt(xᵀA⁻¹x)."""
        mean = self._theta @ x
        var = np.einsum("kj,j->k", self._a_inv @ x, x)
        return mean, np.sqrt(np.maximum(var, 0.0))

    def update(self, arm: str, features: Sequence[float], reward: float) -> None:
        """Learn from ``reward`` for ``arm`` chosen on ``features`` (ignored when frozen)."""
        if arm not in self._index:
            raise ValueError(f"unknown arm {arm!r}; arms: {', '.join(self.arms)}")
        if not np.isfinite(reward):
            raise ValueError(f"reward must be a finite number, got {reward!r}")
        x = self._vector(features)
        if self.frozen:
            return
        i = self._index[arm]
        self._residuals[0] += float(reward - self._theta[i] @ x) ** 2
        self._residuals[1] += 1
        self._a[i] += np.outer(x, x)
        self._b[i] += reward * x
        self.updates += 1
        self._since_refresh += 1
        if self._since_refresh >= _REFRESH_EVERY:
            self._refresh()
            return
        a_inv_x = self._a_inv[i] @ x
        self._a_inv[i] -= np.outer(a_inv_x, a_inv_x) / (1.0 + x @ a_inv_x)
        self._theta[i] = self._a_inv[i] @ self._b[i]

    def _floor_mix(self, greedy: np.ndarray) -> dict[str, float]:
        k = len(self.arms)
        mixed = (1 - self.floor) * greedy + self.floor / k
        return dict(zip(self.arms, map(float, mixed), strict=True))

    def _with_floor(self, best: str, scores: dict[str, float]) -> Decision:
        k = len(self.arms)
        arm = best
        if self.floor > 0 and self._rng.random() < self.floor:
            arm = self.arms[int(self._rng.integers(k))]
        share = self.floor / k
        propensity = (1 - self.floor) + share if arm == best else share
        return Decision(arm, float(propensity), scores)

    def state(self, *, packed: bool = False) -> dict[str, Any]:
        """JSON-ready state (``from_state`` restores it exactly). With ``packed``, ``A`` and
        ``b`` are base64 strings of little-endian float64 (exact, and far cheaper to
        encode and store than decimal lists)."""

        def enc(a: np.ndarray) -> Any:
            return _pack(a) if packed else a.tolist()

        return {
            "kind": self.kind,
            "arms": self.arms,
            "dimensions": self.dimensions,
            "floor": self.floor,
            "frozen": self.frozen,
            "updates": self.updates,
            "residuals": list(self._residuals),
            "A": {a: enc(self._a[i]) for a, i in self._index.items()},
            "b": {a: enc(self._b[i]) for a, i in self._index.items()},
            "params": self._params(),
        }

    def _params(self) -> dict[str, Any]:
        return {"noise_scaled": self.noise_scaled}

    def _restore(self, state: Mapping[str, Any]) -> None:
        self.frozen = bool(state["frozen"])
        self.updates = int(state["updates"])
        ssr, n = state.get("residuals", (0.0, 0))
        self._residuals = [float(ssr), int(n)]
        d = self.dimensions
        for a, i in self._index.items():
            a_i, b_i = _array(state["A"][a]), _array(state["b"][a])
            if a_i.size != d * d or b_i.shape != (d,):
                raise ValueError(f"state of arm {a!r} does not have {d} dimensions")
            a_i = a_i.reshape(d, d)
            if not (np.all(np.isfinite(a_i)) and np.all(np.isfinite(b_i))):
                raise ValueError(f"state of arm {a!r} holds non-finite numbers")
            self._a[i], self._b[i] = a_i, b_i
        self._refresh()


class LinUCB(_Linear):
    """Disjoint LinUCB with an optional exploration floor ``floor`` (ε)."""

    kind = "linucb"

    def __init__(self, arms: Sequence[str], *, dimensions: int, alpha: float = 1.0, **kw: Any):
        super().__init__(arms, dimensions=dimensions, **kw)
        if alpha < 0:
            raise ValueError(f"alpha must be >= 0, got {alpha}")
        self.alpha = alpha

    def _scores(self, x: np.ndarray) -> np.ndarray:
        mean, width = self._moments(x)
        return mean + self.alpha * self._scale() * width

    def choose(self, features: Sequence[float]) -> Decision:
        s = self._scores(self._vector(features))
        best = self.arms[int(np.argmax(s))]  # ties go to the first arm declared
        return self._with_floor(best, dict(zip(self.arms, map(float, s), strict=True)))

    def probabilities(self, features: Sequence[float]) -> dict[str, float]:
        """``1 − ε + ε/K`` for the arm :meth:`choose` would pick greedily, ``ε/K`` for others."""
        greedy = np.zeros(len(self.arms))
        greedy[int(np.argmax(self._scores(self._vector(features))))] = 1.0
        return self._floor_mix(greedy)

    def _params(self) -> dict[str, Any]:
        return {"alpha": self.alpha, **super()._params()}

    @classmethod
    def from_state(cls, state: Mapping[str, Any], seed: int | None = None) -> LinUCB:
        p = cls(
            state["arms"],
            dimensions=state["dimensions"],
            alpha=state["params"]["alpha"],
            floor=state["floor"],
            seed=seed,
            noise_scaled=state["params"].get("noise_scaled", False),
        )
        p._restore(state)
        return p


class LinearThompson(_Linear):
    """Linear Thompson sampling; ``v`` scales the posterior's spread.

    For one feature vector the sampled scores ``θ_kᵀx`` are independent normals
    ``N(θ̂_kᵀx, v²·xᵀA_k⁻¹x)``, so they are drawn directly (K numbers, not K vectors).
    """

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

    def _shares(self, mean: np.ndarray, spread: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Each arm's share of wins over ``propensity_samples`` draws (float32 suffices)."""
        z = rng.standard_normal((self.propensity_samples, len(self.arms)), dtype=np.float32)
        wins = np.argmax(mean.astype(np.float32) + spread.astype(np.float32) * z, axis=1)
        return np.bincount(wins, minlength=len(self.arms)) / self.propensity_samples

    def choose(self, features: Sequence[float]) -> Decision:
        mean, width = self._moments(self._vector(features))
        spread = self.v * self._scale() * width
        draw = mean + spread * self._rng.standard_normal(len(self.arms))
        best = self.arms[int(np.argmax(draw))]
        decision = self._with_floor(best, dict(zip(self.arms, map(float, draw), strict=True)))
        # Thompson's choice probability has no closed form: estimate it by re-sampling;
        # P(arm) = (1 − ε)·P_thompson(arm) + ε/K whichever way the arm was picked.
        share = float(self._shares(mean, spread, self._rng)[self._index[decision.arm]])
        p = max(share, 1.0 / (self.propensity_samples + 1))
        k = len(self.arms)
        return Decision(decision.arm, (1 - self.floor) * p + self.floor / k, decision.scores)

    def probabilities(self, features: Sequence[float]) -> dict[str, float]:
        """Re-sampled choice shares mixed with the floor; a fixed-seed local generator is
        used, so the answer is repeatable and the policy's own generator is not advanced."""
        mean, width = self._moments(self._vector(features))
        spread = self.v * self._scale() * width
        return self._floor_mix(self._shares(mean, spread, np.random.default_rng(0)))

    def _params(self) -> dict[str, Any]:
        return {
            "v": self.v,
            "propensity_samples": self.propensity_samples,
            **super()._params(),
        }

    @classmethod
    def from_state(cls, state: Mapping[str, Any], seed: int | None = None) -> LinearThompson:
        p = cls(
            state["arms"],
            dimensions=state["dimensions"],
            v=state["params"]["v"],
            propensity_samples=state["params"]["propensity_samples"],
            floor=state["floor"],
            seed=seed,
            noise_scaled=state["params"].get("noise_scaled", False),
        )
        p._restore(state)
        return p


@dataclass(frozen=True)
class PolicySpec:
    """Everything needed to build a fresh policy.

    ``alpha`` is the exploration strength: LinUCB's bound width, Thompson's posterior
    scale ``v``.
    """

    kind: str
    arms: tuple[str, ...]
    dimensions: int
    alpha: float = 1.0
    floor: float = 0.0
    prior_mean: Mapping[str, Sequence[float]] | None = None
    prior_weight: float = 1.0
    seed: int | None = None
    frozen: bool = False
    propensity_samples: int = 1000
    noise_scaled: bool = False


POLICIES: dict[str, type[LinUCB] | type[LinearThompson]] = {
    "linucb": LinUCB,
    "thompson": LinearThompson,
}


def make_policy(spec: PolicySpec) -> LinUCB | LinearThompson:
    """A fresh policy for ``spec``.

    Example:
        >>> p = make_policy(PolicySpec("thompson", ("a", "b"), dimensions=2, seed=1))
        >>> p.kind, sorted(p.probabilities([1.0, 0.0]))
        ('thompson', ['a', 'b'])
    """
    common: dict[str, Any] = {
        "dimensions": spec.dimensions,
        "floor": spec.floor,
        "prior_mean": spec.prior_mean,
        "prior_weight": spec.prior_weight,
        "seed": spec.seed,
        "noise_scaled": spec.noise_scaled,
    }
    policy: LinUCB | LinearThompson
    if spec.kind == "linucb":
        policy = LinUCB(spec.arms, alpha=spec.alpha, **common)
    elif spec.kind == "thompson":
        policy = LinearThompson(
            spec.arms, v=spec.alpha, propensity_samples=spec.propensity_samples, **common
        )
    else:
        raise ValueError(f"unknown policy kind {spec.kind!r}; known: {', '.join(POLICIES)}")
    policy.frozen = spec.frozen
    return policy


def policy_from_state(state: Mapping[str, Any], seed: int | None = None) -> LinUCB | LinearThompson:
    """Restore whichever policy ``state`` (from :meth:`state`) describes."""
    cls = POLICIES.get(state.get("kind", ""))
    if cls is None:
        raise ValueError(f"unknown policy kind {state.get('kind')!r}; known: {', '.join(POLICIES)}")
    return cls.from_state(state, seed=seed)

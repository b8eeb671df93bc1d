"""The routing policies on a small simulated contextual problem (fixed seeds)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from qingliang.agents.routing.policy import LinearThompson, LinUCB

ARMS = ["tables", "prose", "images"]


def _context(rng: np.random.Generator) -> tuple[np.ndarray, str]:
    """Three kinds of request; each has one arm that answers it well."""
    kind = int(rng.integers(3))
    x = np.zeros(4)
    x[kind] = 1.0
    x[3] = 1.0  # bias
    return x, ARMS[kind]


def _play(policy, rounds: int, seed: int) -> tuple[float, list[float]]:
    rng = np.random.default_rng(seed)
    regret, props = 0.0, []
    for _ in range(rounds):
        x, best = _context(rng)
        d = policy.choose(x)
        props.append(d.propensity)
        reward = (0.9 if d.arm == best else 0.2) + rng.normal(0, 0.05)
        regret += 0.9 - (0.9 if d.arm == best else 0.2)
        policy.update(d.arm, x, reward)
    return regret, props


@pytest.mark.parametrize(
    "make",
    [
        lambda: LinUCB(ARMS, dimensions=4, alpha=0.5, seed=1),
        lambda: LinearThompson(ARMS, dimensions=4, v=0.3, propensity_samples=50, seed=1),
    ],
    ids=["linucb", "thompson"],
)
def test_learns_the_right_arm_per_context_far_below_random_regret(make) -> None:
    regret, props = _play(make(), 600, seed=2)
    random_regret = 600 * (2 / 3) * 0.7  # a uniform choice misses 2 times in 3
    assert regret < 0.1 * random_regret
    assert all(0 < p <= 1 for p in props)


def test_floor_keeps_exploring_with_honest_propensities() -> None:
    p = LinUCB(ARMS, dimensions=4, alpha=0.0, floor=0.3, seed=3)
    _play(p, 300, seed=4)
    x = np.array([1.0, 0, 0, 1.0])
    picks = [p.choose(x) for _ in range(3000)]
    greedy = [d for d in picks if d.arm == "tables"]
    assert {round(d.propensity, 6) for d in greedy} == {round(0.7 + 0.1, 6)}
    others = [d for d in picks if d.arm != "tables"]
    assert {round(d.propensity, 6) for d in others} == {0.1}
    assert 0.15 < len(others) / len(picks) < 0.25  # 0.3 · 2/3 = 0.2


def test_state_round_trips_through_json_and_freeze_stops_learning() -> None:
    p = LinUCB(ARMS, dimensions=4, alpha=0.5, seed=5)
    _play(p, 100, seed=6)
    restored = LinUCB.from_state(json.loads(json.dumps(p.state())))
    x = [0, 1.0, 0, 1.0]
    assert restored.choose(x).scores == pytest.approx(p.choose(x).scores)
    restored.frozen = True
    before = restored.state()
    restored.update("prose", x, 1.0)
    assert restored.state() == before
    t = LinearThompson(ARMS, dimensions=4, seed=7)
    _play(t, 50, seed=8)
    assert LinearThompson.from_state(json.loads(json.dumps(t.state()))).state() == t.state()


def test_priors_decide_a_cold_start() -> None:
    p = LinUCB(ARMS, dimensions=4, alpha=0.0, prior_mean={"prose": [0, 0, 0, 1.0]}, seed=9)
    assert p.choose([1.0, 0, 0, 1.0]).arm == "prose"


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda p: p.choose([1.0, 2.0]), "must have 4 numbers"),
        (lambda p: p.choose([1.0, float("nan"), 0, 0]), "finite"),
        (lambda p: p.update("video", [1.0, 0, 0, 1.0], 1.0), "unknown arm 'video'"),
        (lambda p: p.update("prose", [1.0, 0, 0, 1.0], float("inf")), "reward must be a finite"),
    ],
)
def test_bad_input_is_refused_and_state_untouched(call, match) -> None:
    p = LinUCB(ARMS, dimensions=4, seed=10)
    before = p.state()
    with pytest.raises(ValueError, match=match):
        call(p)
    assert p.state() == before


def test_bad_configuration() -> None:
    with pytest.raises(ValueError, match="distinct"):
        LinUCB(["a", "a"], dimensions=2)
    with pytest.raises(ValueError, match="floor"):
        LinUCB(["a"], dimensions=2, floor=1.5)
    with pytest.raises(ValueError, match="prior for unknown arm"):
        LinUCB(["a"], dimensions=2, prior_mean={"b": [0, 0]})

"""Off-policy evaluation on simulated logs whose true values are known exactly."""

from __future__ import annotations

import numpy as np
import pytest

from qingliang.agents.routing.ope import Logged, doubly_robust, evaluate, ips, snips

ARMS = ["a", "b", "c"]
# Expected reward of arm k for features x = [x0, x1, 1]: THETA[k] @ x.
THETA = np.array([[0.6, -0.2, 0.3], [-0.3, 0.5, 0.4], [0.1, 0.1, 0.2]])


def _contexts(rng: np.random.Generator, n: int) -> np.ndarray:
    x = rng.uniform(-1, 1, size=(n, 3))
    x[:, 2] = 1.0
    return x


class Target:
    """Greedy on the true model, with 10 % spread uniformly (a known stochastic policy)."""

    def probabilities(self, x) -> dict[str, float]:
        p = np.full(3, 0.1 / 3)
        p[int(np.argmax(THETA @ np.asarray(x)))] += 0.9
        return dict(zip(ARMS, p.tolist(), strict=True))


def _true_value(policy: Target) -> float:
    x = _contexts(np.random.default_rng(12345), 100_000)
    mu = x @ THETA.T
    greedy = mu.argmax(axis=1)
    return float(np.mean(0.9 * mu[np.arange(len(x)), greedy] + 0.1 * mu.mean(axis=1)))


def _log(rng: np.random.Generator, n: int, logging: str = "uniform") -> list[Logged]:
    out = []
    for x in _contexts(rng, n):
        # uniform, or a skewed logger that mostly plays arm c
        p = np.full(3, 1 / 3) if logging == "uniform" else np.array([0.15, 0.15, 0.7])
        k = int(rng.choice(3, p=p))
        reward = float(THETA[k] @ x + rng.normal(0, 0.5))
        out.append(Logged(x.tolist(), ARMS[k], float(p[k]), reward))
    return out


TRUE = _true_value(Target())


@pytest.mark.parametrize("logging", ["uniform", "skewed"])
def test_estimates_land_on_the_true_value(logging: str) -> None:
    records = _log(np.random.default_rng(1), 4000, logging)
    report = evaluate(Target(), records)
    assert report.n == 4000
    assert report.logged_value == pytest.approx(np.mean([r.reward for r in records]))
    for est in (report.ips, report.snips, report.dr):
        assert abs(est.value - TRUE) < max(3 * est.stderr, 0.02), (est, TRUE)
        assert 0 < est.ess <= est.n
    # The target is far better than the logging policy, and the estimates say so.
    assert report.dr.value > report.logged_value + 0.15


def test_ips_and_dr_are_unbiased_and_dr_has_lower_variance() -> None:
    rng = np.random.default_rng(2)
    target = Target()
    est = {"ips": [], "dr": [], "snips": []}
    for _ in range(40):
        records = _log(rng, 600)
        targets = [target.probabilities(r.features) for r in records]
        est["ips"].append(ips(records, targets).value)
        est["snips"].append(snips(records, targets).value)
        est["dr"].append(doubly_robust(records, targets).value)
    means = {k: float(np.mean(v)) for k, v in est.items()}
    sds = {k: float(np.std(v)) for k, v in est.items()}
    # Unbiased: the mean over 40 logs is within ~3 standard errors of the truth.
    assert abs(means["ips"] - TRUE) < 3 * sds["ips"] / np.sqrt(40)
    assert abs(means["dr"] - TRUE) < 3 * sds["dr"] / np.sqrt(40) + 0.005
    # The reward model explains part of the reward: DR's spread is well below IPS's.
    assert sds["dr"] < 0.75 * sds["ips"], sds


def test_logged_propensities_are_used_as_given() -> None:
    # Always-"a" target; the logged propensities are deliberately not the uniform 1/3.
    class AlwaysA:
        def probabilities(self, x) -> dict[str, float]:
            return {"a": 1.0, "b": 0.0, "c": 0.0}

    records = [
        Logged([1.0], "a", 0.5, 1.0),
        Logged([1.0], "a", 0.25, 2.0),
        Logged([1.0], "b", 0.25, 5.0),
        Logged([1.0], "c", 0.5, 7.0),
    ]
    report = evaluate(AlwaysA(), records)
    assert report.ips.value == pytest.approx((1.0 / 0.5 + 2.0 / 0.25) / 4)
    assert report.snips.value == pytest.approx((2 * 1.0 + 4 * 2.0) / (2 + 4))
    assert report.ips.ess == pytest.approx(36 / 20)


def test_an_arm_the_candidate_lacks_weighs_nothing() -> None:
    class OnlyA:
        def probabilities(self, x) -> dict[str, float]:
            return {"a": 1.0}

    records = [Logged([1.0], "a", 0.5, 1.0), Logged([1.0], "retired", 0.5, 9.0)]
    assert ips(records, [OnlyA().probabilities(r.features) for r in records]).value == 1.0


@pytest.mark.parametrize(
    ("records", "match"),
    [
        ([Logged([1.0], "a", 0.0, 1.0)] * 3, "propensity must be in"),
        ([Logged([1.0], "a", 1.5, 1.0)] * 3, "propensity must be in"),
        ([Logged([1.0], "a", 0.5, float("nan"))] * 3, "reward must be a finite"),
        ([Logged([1.0], "a", 0.5, 1.0)], "at least 2 records"),
    ],
)
def test_bad_records_are_refused(records: list[Logged], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        evaluate(Target(), records) if len(records[0].features) == 3 else ips(
            records, [{"a": 1.0}] * len(records)
        )

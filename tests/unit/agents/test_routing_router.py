"""RouterService on a real SQLite file: learning, persistence, rewards, evaluation, switching."""

from __future__ import annotations

import dataclasses
import logging
import sqlite3
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from qingliang.agents.routing.actor import LocalRouter, RouterClient
from qingliang.agents.routing.features import RequestFeatures, hash_embedding
from qingliang.agents.routing.policy import policy_from_state
from qingliang.agents.routing.rewards import RewardWeights, combine
from qingliang.agents.routing.router import RouterConfig, RouterService
from qingliang.platform.errors import Conflict, NotFound

ARMS = ("tables", "prose", "images")
BEST = {"table": "tables", "text": "prose", "image": "images"}
R = "desk/triage"
CONFIG = RouterConfig(ARMS, "linucb", alpha=0.5, domains=("gov", "finance"), embedding_dims=4)


def _request(rng: np.random.Generator, shares=(1 / 3, 1 / 3, 1 / 3)) -> RequestFeatures:
    modality = ["table", "text", "image"][int(rng.choice(3, p=shares))]
    domain = ["gov", "finance", None][int(rng.integers(3))]
    text = "x" * int(rng.integers(5, 800))
    return RequestFeatures(text, hash_embedding(f"{modality} {domain}"), domain, modality)


def _play(svc: RouterService, router: str, rounds: int, seed: int, **kw) -> tuple[float, float]:
    """Route ``rounds`` requests; the right arm succeeds 90 % of the time, others 20 %.
    Returns (regret, uniform's expected regret)."""
    rng = np.random.default_rng(seed)
    regret = 0.0
    for i in range(rounds):
        f = _request(rng, **kw)
        run = f"{router}-{seed}-{i}"
        d = svc.decide(router, f, run_id=run, tenant=f"t{i % 3}")
        good = d.arm == BEST[f.modality]
        regret += 0.0 if good else 0.7
        ok = rng.random() < (0.9 if good else 0.2)
        svc.finish_run(run, success=bool(ok), latency_s=0.5, tokens=100)
    return regret, rounds * (2 / 3) * 0.7


def _raw(db: Path) -> tuple[list, list]:
    """Every byte of the stored router state and of the decision log."""
    with sqlite3.connect(db) as c:
        state = c.execute("SELECT * FROM router_state ORDER BY router").fetchall()
        decisions = c.execute("SELECT * FROM decisions ORDER BY id").fetchall()
    return state, decisions


def _policy(svc: RouterService, router: str = R):
    return policy_from_state(svc.log.load_state(router).state)


PROBE = RequestFeatures("x" * 120, hash_embedding("table gov"), "gov", "table")


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "router.sqlite"


@pytest.mark.parametrize("algorithm", ["linucb", "thompson"])
def test_regret_far_below_uniform_through_the_service(db: Path, algorithm: str) -> None:
    svc = RouterService(db)
    svc.register(R, dataclasses.replace(CONFIG, algorithm=algorithm, seed=3))
    regret, uniform = _play(svc, R, 400, seed=4)
    assert regret < 0.25 * uniform, (regret, uniform)
    stats = svc.stats(R)
    assert stats["decisions"] == stats["closed"] == stats["updates"] == 400
    assert stats["open"] == 0 and stats["version"] == 1


def test_learning_persists_across_a_new_service(db: Path) -> None:
    svc = RouterService(db)
    svc.register(R, CONFIG)
    _play(svc, R, 200, seed=5)
    before = svc.decide(R, PROBE, run_id="probe-1")
    # Registered again in a new process: the same statistics, noise estimate and version.
    again = RouterService(db)
    again.register(R, CONFIG)
    after = again.decide(R, PROBE, run_id="probe-2")
    assert after.scores == pytest.approx(before.scores, rel=1e-9)
    assert again.stats(R)["updates"] == svc.stats(R)["updates"] == 200
    # Not registered at all: restored from the file at first use.
    lazy = RouterService(db)
    assert lazy.decide(R, PROBE, run_id="probe-3").scores == pytest.approx(before.scores)
    assert lazy.stats(R)["version"] == 1 and lazy.routers() == [R]


def test_changed_arms_keep_what_was_learned_and_new_arms_start_from_the_prior(
    db: Path, caplog: pytest.LogCaptureFixture
) -> None:
    greedy = dataclasses.replace(CONFIG, alpha=0.0, floor=0.0)
    svc = RouterService(db)
    svc.register(R, greedy)
    _play(svc, R, 150, seed=6)
    before = svc.decide(R, PROBE, run_id="p1").scores
    changed = dataclasses.replace(
        greedy, arms=("tables", "prose", "charts"), prior={"charts": 0.8}, prior_weight=1.0
    )
    with caplog.at_level(logging.INFO, logger="qingliang.agents.routing.router"):
        RouterService(db).register(R, changed)
    assert "arms added ['charts']" in caplog.text and "dropped ['images']" in caplog.text
    svc2 = RouterService(db)
    after = svc2.decide(R, PROBE, run_id="p2").scores
    assert set(after) == {"tables", "prose", "charts"}
    assert after["tables"] == pytest.approx(before["tables"])
    assert after["prose"] == pytest.approx(before["prose"])
    # Prior 0.8 on the bias worth 1 pseudo-observation against ridge 1: θ_bias = 0.4.
    assert after["charts"] == pytest.approx(0.4)
    stats = svc2.stats(R)
    assert stats["version"] == 2 and stats["updates"] == 150
    assert stats["arms"]["images"]["count"] > 0  # old decisions stay in the log


def test_changed_feature_layout_starts_over(db: Path, caplog: pytest.LogCaptureFixture) -> None:
    svc = RouterService(db)
    svc.register(R, CONFIG)
    _play(svc, R, 30, seed=7)
    with caplog.at_level(logging.WARNING):
        svc.register(R, dataclasses.replace(CONFIG, domains=("gov", "finance", "legal")))
    assert "feature layout changed" in caplog.text
    assert svc.stats(R)["updates"] == 0 and svc.stats(R)["version"] == 2


def test_frozen_router_logs_and_closes_but_never_learns(db: Path) -> None:
    svc = RouterService(db)
    svc.register(R, dataclasses.replace(CONFIG, frozen=True))
    state_before, _ = _raw(db)
    _play(svc, R, 40, seed=8)
    stats = svc.stats(R)
    assert stats["frozen"] and stats["updates"] == 0 and stats["closed"] == 40
    assert _raw(db)[0] == state_before  # the policy state was never rewritten
    # Freezing a learning router at run time stops its updates, and survives a restart.
    other = "desk/other"
    svc.register(other, CONFIG)
    _play(svc, other, 20, seed=9)
    svc.set_exploration(other, frozen=True)
    _play(svc, other, 20, seed=10)
    assert svc.stats(other)["updates"] == 20
    assert RouterService(db).stats(other)["frozen"] is True


def test_operator_settings_last_until_the_manifest_changes(db: Path) -> None:
    svc = RouterService(db)
    svc.register(R, CONFIG)
    stats = svc.set_exploration(R, floor=0.2, frozen=True)
    assert (stats["floor"], stats["frozen"], stats["version"]) == (0.2, True, 2)
    same = RouterService(db)
    same.register(R, CONFIG)  # the same manifest again: the operator's settings stay
    assert (same.stats(R)["floor"], same.stats(R)["frozen"], same.stats(R)["version"]) == (
        0.2,
        True,
        2,
    )
    same.register(R, dataclasses.replace(CONFIG, alpha=0.7))  # a new manifest wins
    assert (same.stats(R)["floor"], same.stats(R)["frozen"], same.stats(R)["version"]) == (
        0.05,
        False,
        3,
    )


@pytest.mark.parametrize("algorithm", ["linucb", "thompson"])
def test_logged_propensities_are_the_policys(db: Path, algorithm: str) -> None:
    svc = RouterService(db)
    svc.register(R, dataclasses.replace(CONFIG, algorithm=algorithm, floor=0.3, seed=11))
    _play(svc, R, 60, seed=12)
    policy = _policy(svc)  # nothing closes below, so this is the deciding policy
    rng = np.random.default_rng(13)
    for i in range(40):
        d = svc.decide(R, _request(rng), run_id=f"open-{i}")
        logged = svc.log.get(d.decision_id)
        assert logged.propensity == d.propensity and logged.features == d.features
        expected = policy.probabilities(d.features)[d.arm]
        if algorithm == "linucb":
            assert d.propensity == pytest.approx(expected, abs=1e-12)
            assert d.propensity in (pytest.approx(0.8), pytest.approx(0.1))
        else:  # both estimated by re-sampling
            assert d.propensity == pytest.approx(expected, abs=0.06)


def test_feedback_on_an_open_decision_is_a_part_and_closes_it(db: Path) -> None:
    weights = RewardWeights(feedback=0.5, latency=0.1, cost=0.2)
    svc = RouterService(db)
    svc.register(R, dataclasses.replace(CONFIG, reward=weights, feedback_window_s=60))
    d = svc.decide(R, PROBE, run_id="run-1")
    assert svc.finish_run("run-1", success=True, latency_s=1.0, tokens=100) == 1
    assert svc.stats(R)["open"] == 1  # waiting for feedback
    assert svc.feedback("run-1", 1.0) == 1
    row = svc.log.get(d.decision_id)
    assert row.is_closed and row.reward == pytest.approx(1 + 0.5 - 0.1 - 0.02)
    assert svc.stats(R)["updates"] == 1
    with pytest.raises(Conflict, match="already recorded"):
        svc.feedback("run-1", -1.0)


def test_feedback_on_a_closed_decision_revises_the_log_and_is_one_more_observation(
    db: Path,
) -> None:
    weights = RewardWeights(feedback=0.5, latency=0.1, cost=0.2)
    svc = RouterService(db)
    svc.register(R, dataclasses.replace(CONFIG, reward=weights))
    d = svc.decide(R, PROBE, run_id="run-2")
    svc.finish_run("run-2", success=True, latency_s=1.0, tokens=100)  # closes (window 0)
    assert svc.log.get(d.decision_id).reward == pytest.approx(0.88)
    before = _policy(svc).state()
    assert svc.feedback("run-2", -1.0) == 1
    row = svc.log.get(d.decision_id)
    assert row.parts["feedback"] == -1.0 and row.reward == pytest.approx(0.88 - 0.5)
    after = _policy(svc).state()
    x = np.array(d.features)
    assert after["updates"] == before["updates"] + 1
    db_ = np.array(after["b"][d.arm]) - np.array(before["b"][d.arm])
    assert np.allclose(db_, 0.5 * -1.0 * x)  # an observation with reward feedback × score
    assert np.allclose(np.array(after["A"][d.arm]) - before["A"][d.arm], np.outer(x, x))
    with pytest.raises(NotFound, match="no routing decisions"):
        svc.feedback("never-ran", 1.0)


def test_close_once_and_sweep_after_the_window(db: Path) -> None:
    svc = RouterService(db)
    svc.register(R, dataclasses.replace(CONFIG, feedback_window_s=60))
    d = svc.decide(R, PROBE, run_id="a")
    svc.add_reward(d.decision_id, "success", 1)
    svc.add_reward(d.decision_id, "approval", 0.5)
    assert svc.close(d.decision_id) == pytest.approx(1.5)
    assert svc.close(d.decision_id) is None
    assert svc.stats(R)["updates"] == 1
    with pytest.raises(Conflict, match="already closed"):
        svc.add_reward(d.decision_id, "success", 0)
    with_parts = svc.decide(R, PROBE, run_id="b")
    svc.finish_run("b", success=False, latency_s=2.0, tokens=10)
    without = svc.decide(R, PROBE, run_id="c")
    assert svc.sweep(time.time() + 30) == 0  # inside the window
    assert svc.sweep(time.time() + 61) == 1
    assert svc.log.get(with_parts.decision_id).reward == 0.0
    assert not svc.log.get(without.decision_id).is_closed  # nothing to learn from


def _bad_calls():
    nan = RequestFeatures("q", [0.1, float("nan"), 0.2], "gov")
    other = RouterConfig(("tables", "prose", "charts"), "linucb", domains=("gov", "finance"))
    return [
        (lambda s, d: s.decide(R, nan, run_id="r"), ValueError, "finite"),
        (lambda s, d: s.decide("ghost/router", PROBE, run_id="r"), NotFound, "ghost/router"),
        (lambda s, d: s.add_reward(d, "likes", 1.0), ValueError, "unknown reward part 'likes'"),
        (lambda s, d: s.add_reward(d, "approval", 0.3), ValueError, "'approval' must be"),
        (lambda s, d: s.add_reward("nope", "success", 1), NotFound, "nope"),
        (lambda s, d: s.close("nope"), NotFound, "nope"),
        (
            lambda s, d: s.finish_run("r0", success=True, latency_s=-1.0, tokens=5),
            ValueError,
            "latency_s",
        ),
        (lambda s, d: s.feedback("r0", 2.0), ValueError, "-1..1"),
        (lambda s, d: s.feedback("r0", float("nan")), ValueError, "finite"),
        (lambda s, d: s.set_exploration(R, floor=1.5), ValueError, "floor"),
        (lambda s, d: s.switch(R, other, force=True), ValueError, "arms and feature layout"),
        (lambda s, d: s.register(R, {"arms": ARMS}), ValueError, "RouterConfig"),
        (
            lambda s, d: s.register(R, dataclasses.replace(CONFIG, prior={"tabels": 1.0})),
            ValueError,
            "did you mean 'tables'",
        ),
        (
            lambda s, d: s.register(R, dataclasses.replace(CONFIG, algorithm="greedy")),
            ValueError,
            "algorithm",
        ),
    ]


@pytest.mark.parametrize(("call", "error", "match"), _bad_calls())
def test_bad_input_is_refused_and_the_stored_state_untouched(db: Path, call, error, match) -> None:
    svc = RouterService(db)
    svc.register(R, dataclasses.replace(CONFIG, feedback_window_s=60))
    _play(svc, R, 10, seed=14)
    d = svc.decide(R, PROBE, run_id="r0")
    before = _raw(db)
    with pytest.raises(error, match=match):
        call(svc, d.decision_id)
    assert _raw(db) == before
    assert svc.decide(R, PROBE, run_id="after").arm in ARMS  # still serving


def test_a_failed_write_leaves_memory_and_file_consistent(
    db: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    svc = RouterService(db)
    svc.register(R, CONFIG)
    _play(svc, R, 20, seed=15)
    d = svc.decide(R, PROBE, run_id="x")
    svc.add_reward(d.decision_id, "success", 1)
    before = _raw(db)[0]

    def broken(*a, **kw):
        raise sqlite3.OperationalError("disk I/O error")

    monkeypatch.setattr(svc.log, "close", broken)
    with pytest.raises(sqlite3.OperationalError):
        svc.close(d.decision_id)
    monkeypatch.undo()
    assert _raw(db)[0] == before
    assert svc.stats(R)["updates"] == 20  # the update made in memory was dropped
    assert svc.close(d.decision_id) == 1.0 and svc.stats(R)["updates"] == 21


def test_switch_refused_when_worse_accepted_when_better(db: Path) -> None:
    svc = RouterService(db)
    shares = {"shares": (0.3, 0.5, 0.2)}
    svc.register(R, dataclasses.replace(CONFIG, floor=1.0))  # uniform random logging
    with pytest.raises(Conflict, match="at least 20"):
        svc.evaluate(R, CONFIG)
    _play(svc, R, 600, seed=16, **shares)
    before = _raw(db)[0]
    # Always "images" (a prior no data can move): images fit only 20 % of the traffic.
    worse = dataclasses.replace(
        CONFIG, alpha=0.0, floor=0.0, prior={"images": 5.0}, prior_weight=1e6
    )
    with pytest.raises(Conflict, match="not switched in: doubly robust") as err:
        svc.switch(R, worse)
    assert "logged value" in str(err.value) and "IPS" in str(err.value)
    assert _raw(db)[0] == before
    report = svc.evaluate(R, CONFIG)
    assert report.dr.value > report.logged_value + 0.2  # learned routing beats random
    with pytest.raises(Conflict):
        svc.switch(R, CONFIG, min_margin=1.0)  # better, but not by the margin asked
    assert _raw(db)[0] == before
    thompson = dataclasses.replace(CONFIG, algorithm="thompson", alpha=0.3)
    # The switch asks the lower confidence bound, not the point estimate, to clear the
    # logged value + margin: with a margin half a standard error below the estimate the
    # point clears it, the bound (one standard error down) does not.
    est = svc.evaluate(R, thompson)
    margin = est.dr.value - est.logged_value - est.dr.stderr / 2
    with pytest.raises(Conflict, match=r"− 1 × stderr"):
        svc.switch(R, thompson, min_margin=margin)
    assert _raw(db)[0] == before
    with pytest.raises(ValueError, match="confidence"):
        svc.switch(R, thompson, confidence=-1)
    switched = svc.switch(R, thompson)
    assert switched is not None and switched.dr.value > switched.logged_value
    stats = svc.stats(R)
    assert (stats["algorithm"], stats["floor"], stats["version"]) == ("thompson", 0.05, 2)
    assert stats["updates"] == 600  # refit on the whole log
    # It routes by what the log taught it, and the switch survives a restart.
    assert RouterService(db).stats(R)["algorithm"] == "thompson"
    forced = svc.switch(R, worse, force=True)
    assert forced.dr.value < forced.logged_value and svc.stats(R)["version"] == 3


def test_threads_share_one_service(db: Path) -> None:
    svc = RouterService(db)
    svc.register(R, CONFIG)
    errors: list[BaseException] = []

    def work(seed: int) -> None:
        try:
            _play(svc, R, 50, seed=seed)
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(100 + i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    stats = svc.stats(R)
    assert stats["decisions"] == stats["closed"] == stats["updates"] == 200
    assert RouterService(db).stats(R)["updates"] == 200  # every update reached the file


def test_router_config_round_trips_and_refuses_unknown_settings() -> None:
    cfg = dataclasses.replace(CONFIG, prior={"prose": 0.3}, reward=RewardWeights(cost=0.1))
    assert RouterConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="did you mean 'floor'"):
        RouterConfig.from_dict({**cfg.to_dict(), "flor": 0.1})
    with pytest.raises(ValueError, match="arms"):
        RouterConfig(("a", "a"), "linucb")
    with pytest.raises(ValueError, match="reward.cost"):
        RewardWeights(cost=-1.0)
    assert combine({"tokens": 2000}, RewardWeights(cost=0.1)) == pytest.approx(-0.2)


async def test_client_over_a_local_service(db: Path) -> None:
    client = RouterClient(RouterService(db))
    assert isinstance(client._local, LocalRouter)
    await client.register(R, CONFIG)
    d = await client.decide(R, PROBE, run_id="c1", tenant="acme")
    assert d.arm in ARMS and 0 < d.propensity <= 1
    assert await client.finish_run("c1", success=True, latency_s=0.2, tokens=10) == 1
    assert (await client.stats(R))["closed"] == 1
    assert await client.routers() == [R]
    with pytest.raises(NotFound):
        await client.decide("ghost/router", PROBE, run_id="c2")

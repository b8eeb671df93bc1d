"""What GET /v1/agents/{graph}/routers adds for the console's Router page, on a real router
log (SQLite) filled with known decisions and rewards: the decisions and rewards over time
(exact counts and means per bucket), each arm's mean logged propensity, and the off-policy
comparison of candidate policies (IPS, SNIPS, DR with standard errors); bad parameters are
refused naming the parameter."""

from __future__ import annotations

import itertools
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from qingliang.agents.api import dispatch_call
from qingliang.agents.routing import report as report_module
from qingliang.agents.routing.report import candidates, router_report
from qingliang.agents.routing.rewards import RewardWeights, combine
from qingliang.agents.routing.router import MIN_LOGGED, RouterConfig, RouterService
from qingliang.platform.errors import BadRequest
from tests.unit.agents.test_agents_api import _h, client  # noqa: F401  (the fixture)

R = "desk/triage"
ARMS = ("good", "bad")
CONFIG = RouterConfig(ARMS, "linucb", embedding_dims=2, tenant_buckets=0)
#: A bucket start: 1 000 000 × 900 s (the buckets of a 3600 s window in 4 are 900 s wide).
T0 = 900.0 * 1_000_000
_ids = itertools.count()


def _decide(
    svc: RouterService,
    arm: str,
    *,
    at: float,
    propensity: float = 0.5,
    success: float | None = None,
    closed_at: float | None = None,
    router: str = R,
    config: RouterConfig = CONFIG,
) -> str:
    """Log a decision made at ``at``; with ``success``, close it at ``closed_at`` with the
    reward the router's weights give that part. Returns its id."""
    i = next(_ids)
    dims = config.encoder().dimensions
    decision = f"d{i}"
    svc.log.record(
        decision_id=decision, router=router, run_id=f"run{i}", tenant=None, arm=arm,
        propensity=propensity, features=[1.0] * dims, scores={}, policy_version=1,
        created=at,
    )  # fmt: skip
    if success is not None:
        parts = svc.log.add_part(decision, "success", success)
        reward = combine(parts, RewardWeights())
        svc.log.close(decision, reward, closed_at=at if closed_at is None else closed_at)
    return decision


@pytest.fixture
def svc(tmp_path: Path) -> RouterService:
    service = RouterService(tmp_path / "router.sqlite")
    service.register(R, CONFIG)
    return service


def test_the_timeline_counts_each_arms_decisions_and_the_rewards_per_bucket(svc) -> None:
    now = T0 + 3600 - 1  # the last of four 900 s buckets: [T0 + 2700, T0 + 3600)
    _decide(svc, "good", at=T0 - 1, success=1.0)  # before the window: not counted
    _decide(svc, "good", at=T0 + 10, success=1.0, closed_at=T0 + 20)
    _decide(svc, "bad", at=T0 + 100, success=0.0, closed_at=T0 + 950)  # rewarded in bucket 1
    _decide(svc, "good", at=T0 + 1000, propensity=0.9)  # open: a decision, no reward
    _decide(svc, "good", at=T0 + 2800, success=1.0, closed_at=T0 + 2810, propensity=0.9)
    _decide(svc, "bad", at=T0 + 2900, success=1.0, closed_at=T0 + 3000)
    _decide(svc, "good", at=T0 + 3600, success=1.0)  # after now's bucket: not counted

    out = router_report(svc, R, window_s=3600, buckets=4, now=now, ope=False)
    tl = out["timeline"]
    assert tl["bucket_s"] == 900.0 and tl["window_s"] == 3600.0
    assert tl["t"] == [T0, T0 + 900, T0 + 1800, T0 + 2700]
    assert tl["decisions"] == {"good": [1, 1, 0, 1], "bad": [1, 0, 0, 1]}
    assert tl["rewards"] == [1, 1, 0, 2]
    assert tl["mean_reward"] == [1.0, 0.0, None, 1.0]
    assert tl["arm_reward"] == {"good": [1.0, None, None, 1.0], "bad": [None, 0.0, None, 1.0]}
    # Per arm, over the whole log: the mean propensity each was chosen with.
    assert out["arms"]["good"]["mean_propensity"] == pytest.approx(
        (0.5 + 0.9 + 0.9 + 0.5 + 0.5) / 5
    )
    assert out["arms"]["bad"]["mean_propensity"] == pytest.approx(0.5)
    assert out["arms"]["good"]["count"] == 5 and out["ope"] is None
    # Every field stats() gives is still there.
    for key in ("router", "algorithm", "floor", "decisions", "closed", "learning", "config"):
        assert key in out


def test_a_router_with_no_decisions_has_an_empty_timeline_and_no_comparison(svc) -> None:
    out = router_report(svc, R, window_s=600, buckets=3, now=T0)
    assert out["timeline"]["decisions"] == {"good": [0, 0, 0], "bad": [0, 0, 0]}
    assert out["timeline"]["mean_reward"] == [None, None, None]
    assert out["arms"]["good"]["mean_propensity"] is None
    assert out["ope"]["candidates"] == [] and out["ope"]["best"] is None
    assert f"at least {MIN_LOGGED}" in out["ope"]["reason"]


def _bandit(svc: RouterService, n: int, seed: int = 0) -> None:
    """``n`` decisions logged by a uniform policy (propensity ½): good succeeds 90 % of
    the time, bad 10 %; the features carry nothing."""
    rng = np.random.default_rng(seed)
    for i in range(n):
        arm = ARMS[int(rng.integers(2))]
        ok = rng.random() < (0.9 if arm == "good" else 0.1)
        _decide(svc, arm, at=T0 + i, success=float(ok))


def _by_name(out: dict[str, Any]) -> dict[str, dict]:
    return {c["name"]: c for c in out["ope"]["candidates"]}


def test_the_comparison_ranks_always_the_best_arm_above_always_the_worst(svc) -> None:
    _bandit(svc, 400)
    out = router_report(svc, R, now=T0 + 400)
    ope = out["ope"]
    got = _by_name(out)
    assert [c.name for c in candidates(CONFIG)] == list(got)
    assert {"current", "alpha=0.5", "alpha=2", "floor=0.2", "thompson", "uniform",
            "always:good", "always:bad"} == set(got)  # fmt: skip
    assert ope["n"] == 200 and ope["reason"] is None and ope["stale"] is False
    for c in got.values():
        assert c["n"] == 200 and c["description"]
        for method in ("ips", "snips", "dr"):
            e = c[method]
            assert math.isfinite(e["value"]) and e["stderr"] > 0, (c["name"], method)
    good, bad = got["always:good"], got["always:bad"]
    for method in ("ips", "snips", "dr"):
        # 0.9 against 0.1, each within a few standard errors (100 records per arm).
        assert good[method]["value"] == pytest.approx(0.9, abs=0.15)
        assert bad[method]["value"] == pytest.approx(0.1, abs=0.15)
        hi = bad[method]["value"] + 1.96 * bad[method]["stderr"]
        assert good[method]["value"] - 1.96 * good[method]["stderr"] > hi
    assert got["uniform"]["snips"]["value"] == pytest.approx(ope["logged"]["value"], abs=1e-9)
    assert ope["logged"]["value"] == pytest.approx(0.5, abs=0.1) and ope["logged"]["n"] == 200
    assert ope["best"] != "always:bad" and ope["best"] != "uniform"
    assert got[ope["best"]]["dr"]["value"] == max(c["dr"]["value"] for c in got.values())
    assert got["floor=0.2"]["changes"] == {"floor": 0.2}
    assert got["always:good"]["kind"] == "always" and got["always:good"]["changes"] == {
        "arm": "good"
    }


def test_the_comparison_is_reused_until_the_log_changes(svc, monkeypatch) -> None:
    _bandit(svc, 60)
    first = router_report(svc, R, now=T0 + 60)["ope"]
    assert router_report(svc, R, now=T0 + 60)["ope"] == first  # nothing changed: reused
    _bandit(svc, 10, seed=1)
    stale = router_report(svc, R)["ope"]  # within OPE_REFRESH_S: the last one, marked
    assert stale["stale"] is True and stale["computed_at"] == first["computed_at"]
    monkeypatch.setattr(report_module, "OPE_REFRESH_S", 0.0)
    fresh = router_report(svc, R)["ope"]
    assert fresh["stale"] is False and fresh["n"] == 35 and first["n"] == 30


def test_the_comparison_reads_only_the_latest_decisions(svc, monkeypatch) -> None:
    monkeypatch.setattr(report_module, "OPE_LATEST", 40)
    _bandit(svc, 100)
    assert router_report(svc, R)["ope"]["n"] == 20


@pytest.mark.parametrize(
    ("query", "param"),
    [
        ({"window_s": "-1"}, "window_s"),
        ({"window_s": "0"}, "window_s"),
        ({"window_s": "abc"}, "window_s"),
        ({"window_s": "nan"}, "window_s"),
        ({"window_s": str(400 * 86400)}, "window_s"),
        ({"buckets": "0"}, "buckets"),
        ({"buckets": "2.5"}, "buckets"),
        ({"buckets": "many"}, "buckets"),
        ({"buckets": "501"}, "buckets"),
        ({"ope": "maybe"}, "ope"),
        ({"bukets": "4"}, "bukets"),
    ],
)
def test_bad_parameters_are_refused_naming_the_parameter(client, query, param) -> None:  # noqa: F811
    r = client.get("/v1/agents/desk/routers", params=query, headers=_h(client, "ops"))
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["param"] == param and param in error["message"]
    if param == "bukets":
        assert "did you mean 'buckets'" in error["message"]


def test_the_route_answers_the_timeline_and_the_comparison(client) -> None:  # noqa: F811
    router: RouterService = client.router
    config = RouterConfig(("quick", "careful"), "linucb")
    router.register("desk/triage", config)
    now = time.time()
    for i in range(30):
        arm = ("quick", "careful")[i % 2]
        _decide(router, arm, at=now - 60 + i, success=float(arm == "careful"),
                router="desk/triage", config=config)  # fmt: skip
    r = client.get(
        "/v1/agents/desk/routers",
        params={"window_s": 3600, "buckets": 6},
        headers=_h(client, "ops"),
    )
    assert r.status_code == 200, r.text
    (triage,) = r.json()["data"]
    tl = triage["timeline"]
    assert len(tl["t"]) == 6 and tl["bucket_s"] == 600
    assert sum(map(sum, tl["decisions"].values())) == 30 and sum(tl["rewards"]) == 30
    names = [c["name"] for c in triage["ope"]["candidates"]]
    assert "always:careful" in names and triage["ope"]["best"] is not None
    off = client.get("/v1/agents/desk/routers?ope=0", headers=_h(client, "ops")).json()
    assert off["data"][0]["ope"] is None and off["data"][0]["timeline"]["bucket_s"] == 1800


async def test_dispatch_refuses_a_bad_parameter_before_reading_any_router(tmp_path) -> None:
    class NoService:
        catalog = None

    with pytest.raises(BadRequest) as err:
        await dispatch_call(
            NoService(), "routers", None, True, "ops", {"graph": "desk", "buckets": 0}
        )
    assert err.value.param == "buckets"

"""A graph's learned routers as an operator sees them: decisions, rewards per arm, the
learning curve and the estimated regret (real router and LangGraph runtime; the chat
model is scripted at the model boundary)."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest

from qingliang.agents.api import dispatch_call
from qingliang.agents.routing.learning import learning
from qingliang.platform.errors import NotFound
from tests.unit.agents.test_agent_runtime import ROUTED, _drain, graph, run, service


def test_regret_is_against_the_best_single_arm_by_ips() -> None:
    d = SimpleNamespace
    log = [d(arm="a", propensity=0.5, reward=1.0)] * 4 + [
        d(arm="b", propensity=0.5, reward=0.0)
    ] * 4
    out = learning(log, ["a", "b"], window=4)
    assert out["ips_value"] == {"a": 1.0, "b": 0.0} and out["best_arm"] == "a"
    assert out["estimated_regret"] == 4.0  # always "a" would have earned 8, it earned 4
    assert out["reward_by_window"] == [1.0, 0.0] and out["mean_reward"] == 0.5
    assert learning([], ["a"])["estimated_regret"] is None


async def test_the_routers_of_a_graph_show_learning(tmp_path: Path) -> None:
    async with service(tmp_path, graph(ROUTED)) as svc:
        for i in range(40):
            table = i % 2 == 0
            text = f"table rows columns totals {i}" if table else f"write a friendly letter {i}"
            run_id, events = await run(svc, {"input": text})
            arm = next(e for e in events if e["type"] == "route")["arm"]
            if svc.get(run_id, "city-a").status == "waiting":
                await _drain(svc.resume(run_id, {"action": "approve"}, tenant="city-a", actor="b"))
            right = arm == ("tables" if table else "prose")
            await svc.feedback(run_id, 1.0 if right else -1.0, tenant="city-a", actor="u")
        out = await dispatch_call(svc, "routers", "city-a", False, "ops", {"graph": "desk"})
        (triage,) = out["data"]
        assert triage["node"] == "triage" and triage["decisions"] == 40
        learn = triage["learning"]
        assert learn["closed"] == 40 and len(learn["reward_by_window"]) == 4
        assert learn["reward_by_window"][-1] > learn["reward_by_window"][0]  # it learned
        # routing by context beats either fixed desk: the estimated regret is below zero
        assert learn["estimated_regret"] < 0
        assert set(triage["arms"]) == {"tables", "prose"}
        with pytest.raises(NotFound, match="did you mean 'desk'"):
            await dispatch_call(svc, "routers", "city-a", False, "ops", {"graph": "dsk"})


async def test_a_router_inside_a_nested_graph_decides_too(tmp_path: Path) -> None:
    """The front desk's case: its router picks a desk, the desk's own router picks next."""
    front = graph(
        {
            "nodes": [
                {"name": "triage", "type": "router", "routes": ["desk", "other"]},
                {"name": "desk", "type": "graph", "graph": "desk"},
                {"name": "other", "type": "graph", "graph": "desk"},
            ]
        },
        name="front",
    )
    async with service(tmp_path, graph(ROUTED), front) as svc:
        run_id, events = await run(svc, {"input": "sum the table of permits"}, name="front")
        routes = [e["router"] for e in events if e["type"] == "route"]
        assert routes == ["front/triage", "desk/triage"], events[-1]
        assert svc.get(run_id, "city-a").status in ("done", "waiting")
        out = await dispatch_call(svc, "routers", "city-a", False, "ops", {"graph": "desk"})
        assert out["data"][0]["decisions"] == 1

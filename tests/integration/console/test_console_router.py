"""The console's Router page in a real Chromium against the real gateway: a small agent
graph whose router picks between the tiny model and its adapter, a few runs and their
ratings through the API, then the page: the decision and rating counts, the estimated
regret with its sentence, the arms table, the off-policy comparison and both charts."""

from __future__ import annotations

import re
from collections.abc import Iterator

import httpx
import pytest
from _console import login, shot
from _platform import Platform
from playwright.sync_api import Page, expect

pytestmark = [pytest.mark.integration, pytest.mark.slow]

GRAPH = "console-router"
MANIFEST = f"""apiVersion: qingliang.io/v1
kind: AgentGraph
metadata: {{name: {GRAPH}}}
spec:
  agents:
    - {{name: clerk, model: tiny, max_tokens: 4}}
    - {{name: expert, model: "tiny:a", max_tokens: 4}}
  nodes:
    - {{name: triage, type: router, routes: [quick, careful], router: {{seed: 3}}}}
    - {{name: quick, type: agent, agent: clerk}}
    - {{name: careful, type: agent, agent: expert}}
"""
RUNS = 6


@pytest.fixture(scope="module")
def routed(platform: Platform) -> Iterator[dict]:
    """The graph, RUNS runs rated +1 on `careful` and -1 on `quick`; the routers answer."""
    platform.ctl.apply([platform.manifest(GRAPH, MANIFEST)], wait=False, progress=False)
    with httpx.Client(
        base_url=platform.base_url.removesuffix("/v1"),
        headers={"Authorization": f"Bearer {platform.key}"},
        timeout=300,
    ) as api:
        for i in range(RUNS):
            r = api.post(f"/v1/agents/{GRAPH}/runs", json={"input": f"问题 {i}", "stream": False})
            assert r.status_code == 200, r.text
            run = r.json()
            arm = next(e["arm"] for e in run["events"] if e["type"] == "route")
            fb = api.post(
                "/v1/feedback", json={"run_id": run["id"], "score": 1 if arm == "careful" else -1}
            )
            assert fb.status_code == 200, fb.text
        r = api.get(f"/v1/agents/{GRAPH}/routers")
        assert r.status_code == 200, r.text
        yield next(x for x in r.json()["data"] if x["node"] == "triage")


def test_the_router_page_shows_decisions_regret_and_charts(
    page: Page, platform: Platform, routed: dict
) -> None:
    assert routed["decisions"] == RUNS and routed["closed"] == RUNS
    login(page, platform.key)
    page.get_by_test_id("nav-router").click()
    page.get_by_test_id("router-graph").select_option(GRAPH)
    expect(page).to_have_url(re.compile(rf"#/router/{GRAPH}$"))

    expect(page.get_by_test_id("router-decisions-triage")).to_have_text(str(RUNS))
    expect(page.get_by_test_id("router-closed-triage")).to_have_text(str(RUNS))
    learn = routed["learning"]
    regret = page.get_by_test_id("router-regret-triage")
    expect(regret).to_have_text(re.compile(r"^-?\d+(\.\d+)?$"))
    assert float(regret.inner_text()) == pytest.approx(learn["estimated_regret"], abs=0.01)
    expect(page.get_by_test_id("router-regret-explain-triage")).to_contain_text(learn["best_arm"])

    for arm, stats in routed["arms"].items():
        expect(page.get_by_test_id(f"router-arm-count-triage-{arm}")).to_have_text(
            str(stats["count"])
        )
    ope = page.get_by_test_id("router-ope-triage")
    for arm in learn["ips_value"]:
        expect(ope).to_contain_text(arm)

    # Decisions over time per route (from the runs' route events) and the reward curve.
    decisions = page.get_by_test_id("router-decisions-chart-triage")
    expect(decisions.locator(".uplot canvas")).to_have_count(1)
    taken = [arm for arm, s in routed["arms"].items() if s["count"]]
    for arm in taken:
        expect(decisions.locator(".u-legend")).to_contain_text(arm)
    expect(
        page.get_by_test_id("router-reward-chart-triage").locator(".uplot canvas")
    ).to_have_count(1)
    shot(page, "router")

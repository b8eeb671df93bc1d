"""The console's Router page in a real Chromium against the real gateway: a small agent
graph whose router picks between the tiny model and its adapter, enough runs and ratings
through the API for off-policy evaluation, then the page: the decision and rating counts,
the estimated regret with its sentence, the arms table with the logged propensities, the
decisions and rewards over time drawn from the API's timeline, and the off-policy
comparison of every candidate policy with its intervals and the best one marked."""

from __future__ import annotations

import re
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

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
#: Enough rated decisions for off-policy evaluation (MIN_LOGGED, 20).
RUNS = 24


@pytest.fixture(scope="module")
def routed(platform: Platform) -> Iterator[dict]:
    """The graph, RUNS runs rated +1 on `careful` and -1 on `quick`; the routers answer."""
    platform.ctl.apply([platform.manifest(GRAPH, MANIFEST)], wait=False, progress=False)
    with httpx.Client(
        base_url=platform.base_url.removesuffix("/v1"),
        headers={"Authorization": f"Bearer {platform.key}"},
        timeout=300,
    ) as api:

        def rated_run(i: int) -> None:
            r = api.post(f"/v1/agents/{GRAPH}/runs", json={"input": f"问题 {i}", "stream": False})
            assert r.status_code == 200, r.text
            run = r.json()
            arm = next(e["arm"] for e in run["events"] if e["type"] == "route")
            fb = api.post(
                "/v1/feedback", json={"run_id": run["id"], "score": 1 if arm == "careful" else -1}
            )
            assert fb.status_code == 200, fb.text

        with ThreadPoolExecutor(4) as pool:
            list(pool.map(rated_run, range(RUNS)))
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
        if stats["count"]:  # the mean logged propensity, as the API gives it
            shown = page.get_by_test_id(f"router-arm-propensity-triage-{arm}").inner_text()
            assert float(shown) == pytest.approx(stats["mean_propensity"], abs=5e-4)

    # Decisions over time per route: the page's series are the API's timeline, and over
    # the 24 h window they add up to every run this test made.
    timeline = routed["timeline"]
    assert sum(map(sum, timeline["decisions"].values())) == RUNS
    assert sum(timeline["rewards"]) == RUNS
    expect(page.get_by_test_id("router-window-total-triage")).to_have_attribute(
        "data-count", str(RUNS)
    )
    for arm, counts in timeline["decisions"].items():
        expect(page.get_by_test_id(f"router-window-count-triage-{arm}")).to_have_text(
            str(sum(counts))
        )
        assert sum(counts) == routed["arms"][arm]["count"]
    expect(page.get_by_test_id("router-window-rewards-triage")).to_have_attribute(
        "data-count", str(RUNS)
    )
    decisions = page.get_by_test_id("router-decisions-chart-triage")
    expect(decisions.locator(".uplot canvas")).to_have_count(1)
    rewards = page.get_by_test_id("router-reward-chart-triage")
    expect(rewards.locator(".uplot canvas")).to_have_count(1)
    for arm in routed["arms"]:
        expect(decisions.locator(".u-legend")).to_contain_text(arm)
        expect(rewards.locator(".u-legend")).to_contain_text(arm)
    expect(rewards.locator(".u-legend")).to_contain_text("全部")
    expect(
        page.get_by_test_id("router-learning-chart-triage").locator(".uplot canvas")
    ).to_have_count(1)

    # The off-policy comparison: every candidate, each estimator with its 95 % interval,
    # the API's values; the best marked, and a sentence naming the samples it rests on.
    ope = routed["ope"]
    names = [c["name"] for c in ope["candidates"]]
    assert ope["reason"] is None and {
        "current",
        "uniform",
        "always:quick",
        "always:careful",
    } <= set(names), ope
    table = page.get_by_test_id("router-ope-triage")
    expect(table.locator("tbody tr")).to_have_count(len(names) + 1)  # and the logged row
    for c in ope["candidates"]:
        for method in ("ips", "snips", "dr"):
            cell = page.get_by_test_id(f"router-ope-{method}-triage-{c['name']}")
            expect(cell).to_contain_text("±")
            assert float(cell.get_attribute("data-value")) == pytest.approx(c[method]["value"])
            lo, hi = float(cell.get_attribute("data-lo")), float(cell.get_attribute("data-hi"))
            assert lo == pytest.approx(c[method]["value"] - 1.96 * c[method]["stderr"])
            assert hi == pytest.approx(c[method]["value"] + 1.96 * c[method]["stderr"])
    expect(page.get_by_test_id("router-ope-name-triage-always:careful")).to_have_text(
        "总是选 careful"
    )
    best_row = table.locator("tr.selected")
    expect(best_row).to_have_count(1)
    expect(best_row.get_by_test_id("router-ope-best-triage")).to_be_visible()
    expect(best_row.get_by_test_id(f"router-ope-name-triage-{ope['best']}")).to_be_visible()
    expect(page.get_by_test_id("router-ope-logged-triage")).to_contain_text("±")
    explain = page.get_by_test_id("router-ope-explain-triage")
    expect(explain).to_contain_text(f"{ope['n']} 个样本")
    expect(explain).to_contain_text("95% 区间")
    shot(page, "router")


def test_the_router_page_fits_a_tablet(
    tablet_page: Page, console_url: str, platform: Platform, routed: dict
) -> None:
    """With its charts and the wide comparison table drawn, no horizontal scroll bar: the
    table scrolls inside its own box. In English, the candidates read in English."""
    page = tablet_page
    login(page, platform.key, console_url)
    page.goto(f"{console_url}#/router/{GRAPH}")
    expect(page.get_by_test_id("router-ope-dr-triage-always:careful")).to_contain_text("±")
    expect(
        page.get_by_test_id("router-reward-chart-triage").locator(".uplot canvas")
    ).to_have_count(1)
    overflow = page.evaluate(
        "() => document.documentElement.scrollWidth - document.documentElement.clientWidth"
    )
    assert overflow <= 1, f"the router page is {overflow} px wider than the tablet's screen"
    page.get_by_test_id("lang-switch").click()
    expect(page.get_by_test_id("router-ope-name-triage-always:careful")).to_have_text(
        "Always careful"
    )
    expect(page.get_by_test_id("router-ope-explain-triage")).to_contain_text(
        f"{routed['ope']['n']} samples"
    )
    shot(page, "router-tablet")

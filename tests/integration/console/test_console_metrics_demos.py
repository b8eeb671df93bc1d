"""The console's Metrics and Demos pages in a real Chromium against the real gateway.

Metrics: after chat requests to the tiny deployment, its totals row and chart count them
(exactly what the platform's series API counts), and the Ray dashboard link points at the
platform's dashboard in a new tab. Demos: the three domain demonstrations and the front
desk are listed with their state; the options explain themselves (approve needs train);
stopping a demonstration that is not up asks first, then runs the real `demo down` as a
job whose output the page shows when it ends."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator

import httpx
import pytest
from _console import login, shot
from _platform import Platform
from playwright.sync_api import Page, expect

pytestmark = [pytest.mark.integration, pytest.mark.slow]

#: The page's longest window: nothing this test sends ages out of it while it runs.
DAY_S = 86400
DAY_STEP_S = 1200
#: A `demo down` job starts a Python process that imports the CLI: seconds on a busy CPU.
JOB_MS = 120_000


@pytest.fixture
def api(platform: Platform) -> Iterator[httpx.Client]:
    with httpx.Client(
        base_url=platform.base_url.removesuffix("/v1"),
        headers={"Authorization": f"Bearer {platform.key}"},
        timeout=120,
    ) as c:
        yield c


def _requests_today(api: httpx.Client) -> int:
    r = api.get(
        "/v1/metrics/series",
        params={"window_s": DAY_S, "step_s": DAY_STEP_S, "deployment": "tiny"},
    )
    assert r.status_code == 200, r.text
    return sum(r.json()["series"]["tiny"]["requests"])


def test_metrics_count_the_requests_and_link_the_ray_dashboard(
    page: Page, platform: Platform, api: httpx.Client
) -> None:
    before = _requests_today(api)
    sent = 4
    for i in range(sent):
        r = api.post(
            "/v1/chat/completions",
            json={
                "model": "tiny",
                "messages": [{"role": "user", "content": f"hi {i}"}],
                "max_tokens": 2,
            },
        )
        assert r.status_code == 200, r.text
    deadline = time.monotonic() + 30  # the gateway writes its counts every 2 s
    while _requests_today(api) < before + sent:
        assert time.monotonic() < deadline, "the platform never counted the requests"
        time.sleep(1)
    counted = _requests_today(api)

    login(page, platform.key)
    page.get_by_test_id("nav-metrics").click()
    link = page.get_by_test_id("metrics-ray-dashboard")
    expect(link).to_have_attribute("href", f"http://127.0.0.1:{platform.settings.dashboard_port}")
    expect(link).to_have_attribute("target", "_blank")

    expect(page.get_by_test_id("metrics-requests-tiny")).not_to_have_text("0")
    page.get_by_test_id("metrics-window").select_option(str(DAY_S))
    expect(page.get_by_test_id("metrics-requests-tiny")).to_have_text(str(counted))
    chart = page.get_by_test_id("metrics-chart-requests-tiny")
    expect(chart.locator(".uplot canvas")).to_have_count(1)
    expect(page.get_by_test_id("metrics-chart-tps-tiny").locator(".uplot canvas")).to_have_count(1)
    expect(page.get_by_test_id("metrics-chart-ttft-tiny").locator(".uplot canvas")).to_have_count(1)
    shot(page, "metrics")


def test_demos_are_listed_and_stopping_one_runs_a_job_with_its_output(
    page: Page, platform: Platform, api: httpx.Client
) -> None:
    listed = api.get("/v1/demos")
    assert listed.status_code == 200, listed.text
    demos = {d["name"]: d for d in listed.json()["data"]}
    assert set(demos) == {"gov", "healthcare", "manufacturing"}

    login(page, platform.key)
    page.get_by_test_id("nav-demos").click()
    for name, demo in demos.items():
        card = page.get_by_test_id(f"demos-card-{name}")
        expect(card).to_contain_text(demo["title"])
        expect(page.get_by_test_id(f"demos-state-{name}")).to_be_visible()
    expect(page.get_by_test_id("demos-card-front-desk")).to_be_visible()

    # Approving the training needs the training.
    approve = page.get_by_test_id("demos-approve-gov")
    expect(approve).to_be_disabled()
    page.get_by_test_id("demos-train-gov").check()
    expect(approve).to_be_enabled()
    page.get_by_test_id("demos-train-gov").uncheck()
    expect(approve).to_be_disabled()

    target = next((n for n, d in demos.items() if d["state"] == "down"), None)
    if target is None:
        pytest.skip("every demonstration is up on this platform; stopping one is not quick")
    stop = page.get_by_test_id(f"demos-stop-{target}")
    stop.click()
    expect(page.get_by_test_id("confirm")).to_be_visible()
    page.get_by_test_id("confirm-cancel").click()
    expect(page.get_by_test_id("confirm")).to_have_count(0)
    # Cancelled: no job was started.
    again = next(d for d in api.get("/v1/demos").json()["data"] if d["name"] == target)
    assert again["job"] == demos[target]["job"], again["job"]

    stop.click()
    page.get_by_test_id("confirm-ok").click()
    status = page.get_by_test_id(f"demos-job-status-{target}")
    expect(status).to_have_text(re.compile("running|succeeded"))
    expect(status).to_have_text("succeeded", timeout=JOB_MS)
    job = next(d for d in api.get("/v1/demos").json()["data"] if d["name"] == target)["job"]
    assert job["action"] == "down" and job["status"] == "succeeded", job
    log = page.get_by_test_id(f"demos-log-{target}")
    expect(log).to_contain_text("nothing to remove")
    # The job has ended: the buttons are back.
    expect(stop).to_be_enabled()
    expect(page.get_by_test_id(f"demos-start-{target}")).to_be_enabled()
    shot(page, "demos")

    page.get_by_test_id(f"demos-approvals-{target}").click()
    expect(page.locator("main[data-testid=page-approvals]")).to_be_visible()

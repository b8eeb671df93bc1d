"""The console's Deployments page in a real Chromium against the real gateway: the tiny
vLLM deployment RUNNING with its Serve replica, a canary share on its adapter whose per-arm
request counts move on the open page as requests arrive (no reload), an adapter's lineage
answer, and the read-only manifest editor: a bad field's error shown at its path and line,
a good manifest validated, and its diff as a change row."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator

import httpx
import pytest
from _console import login, shot
from _platform import Platform, tiny_manifest
from playwright.sync_api import Page, expect

pytestmark = [pytest.mark.integration, pytest.mark.slow]

#: The page's longest window, so no request of this test ages out while it runs.
WINDOW_S = 3600


@pytest.fixture
def api(platform: Platform) -> Iterator[httpx.Client]:
    with httpx.Client(
        base_url=platform.base_url.removesuffix("/v1"),
        headers={"Authorization": f"Bearer {platform.key}"},
        timeout=120,
    ) as c:
        yield c


def _arm_requests(api: httpx.Client, arm: str) -> int:
    r = api.get("/v1/deployments/tiny", params={"window_s": WINDOW_S})
    assert r.status_code == 200, r.text
    return int((r.json()["arms"].get(arm) or {}).get("requests", 0))


def _open(page: Page, platform: Platform, route: str) -> None:
    login(page, platform.key)
    page.evaluate(f"location.hash = '#/{route}'")
    expect(page.locator("main[data-testid=page-deployments]")).to_be_visible()


def test_tiny_is_running_with_its_replica(page: Page, platform: Platform) -> None:
    _open(page, platform, "deployments")
    expect(page.get_by_test_id("deployments-status-tiny")).to_have_text("RUNNING")
    expect(page.get_by_test_id("deployments-replicas-tiny")).to_contain_text("RUNNING")

    page.get_by_test_id("deployments-link-tiny").click()
    expect(page).to_have_url(re.compile(r"#/deployments/tiny$"))
    pids = {str(r["pid"]) for r in platform.replicas("tiny")}
    replicas = page.get_by_test_id("deployments-replicas")
    expect(replicas.locator("tbody tr")).to_have_count(len(pids))
    for pid in pids:
        expect(replicas).to_contain_text(pid)
    expect(page.get_by_test_id("deployments-engine")).to_contain_text("max_model_len")
    expect(page.get_by_test_id("deployments-adapters")).to_contain_text("a")


def test_a_canarys_per_arm_counts_move_on_the_open_page(
    page: Page, platform: Platform, api: httpx.Client
) -> None:
    platform.ctl.set_traffic("tiny", {"a": 0.5})
    try:
        time.sleep(1.0)  # the gateway reads manifests with a 0.5 s cache
        _open(page, platform, "deployments/tiny")
        page.get_by_test_id("deployments-window").select_option(str(WINDOW_S))
        expect(page.get_by_test_id("deployments-canary")).to_contain_text("50%")
        before = {arm: _arm_requests(api, arm) for arm in ("", "a")}
        base_cell = page.get_by_test_id("deployments-arm-requests-base")
        canary_cell = page.get_by_test_id("deployments-arm-requests-a")
        if before["a"]:
            expect(canary_cell).to_have_text(str(before["a"]))
        page.evaluate("window.__sameDocument = true")

        sent = {"": 0, "a": 0}
        for i in range(10):
            r = api.post(
                "/v1/chat/completions",
                json={
                    "model": "tiny",
                    "messages": [{"role": "user", "content": "hi"}],
                    "max_tokens": 2,
                    "user": f"console-canary-{i}",
                },
            )
            assert r.status_code == 200, r.text
            sent[r.headers["x-qingliang-adapter"]] += 1
        assert sent["a"] and sent[""], f"the 50% canary should split 10 users: {sent}"

        # The page polls; the counts grow by exactly what this test sent to each arm.
        expect(canary_cell).to_have_text(str(before["a"] + sent["a"]))
        expect(base_cell).to_have_text(str(before[""] + sent[""]))
        assert page.evaluate("window.__sameDocument === true"), "the page was reloaded"
        expect(page.get_by_test_id("deployments-arm-a")).to_be_visible()
        shot(page, "deployments")
    finally:
        platform.ctl.set_traffic("tiny", {})


def test_an_adapters_lineage_shows_the_servers_answer(
    page: Page, platform: Platform, api: httpx.Client
) -> None:
    _open(page, platform, "deployments/tiny")
    page.get_by_test_id("deployments-lineage-a").click()
    panel = page.get_by_test_id("deployments-lineage")
    expect(panel).to_be_visible()
    r = api.get("/v1/adapters/a/lineage", params={"deployment": "tiny"})
    if r.status_code == 200:
        # A registered adapter: its record, and the dataset versions its job trained on.
        for ds in r.json()["datasets"]:
            expect(panel).to_contain_text(ds["dataset"])
        expect(page.get_by_test_id("deployments-lineage-record")).to_be_visible()
    else:
        # The fixture's adapter is a local folder with no registry record: the server says so.
        expect(page.get_by_test_id("deployments-lineage-error")).to_contain_text(
            r.json()["error"]["message"]
        )


def _manifest_tab(page: Page, platform: Platform) -> None:
    _open(page, platform, "deployments")
    page.get_by_test_id("tab-deployments-manifest").click()
    expect(page.get_by_test_id("deployments-readonly")).to_be_visible()
    # Read-only: nothing on the page applies a manifest.
    expect(page.get_by_role("button", name=re.compile("apply|应用", re.I))).to_have_count(0)


def test_a_bad_field_is_shown_at_its_path_and_line(
    page: Page, platform: Platform, api: httpx.Client
) -> None:
    text = tiny_manifest("console-bad", platform.models / "tiny").replace(
        "max_model_len: 256", "max_model_len: lots"
    )
    line = next(i for i, s in enumerate(text.splitlines(), 1) if "lots" in s)
    expected = api.post("/v1/manifests/validate", json={"yaml": text}).json()
    assert not expected["ok"]
    error = next(e for e in expected["errors"] if e["path"] == "spec.engine.max_model_len")

    _manifest_tab(page, platform)
    page.get_by_test_id("deployments-manifest-input").fill(text)
    page.get_by_test_id("deployments-validate").click()
    item = page.locator(
        "[data-testid=deployments-manifest-error][data-path='spec.engine.max_model_len']"
    )
    expect(item.get_by_test_id("deployments-error-path")).to_contain_text(
        "spec.engine.max_model_len"
    )
    expect(item.get_by_test_id("deployments-error-message")).to_have_text(error["message"])
    # The line with the bad value is highlighted, the message beside it.
    marked = page.get_by_test_id(f"deployments-line-{line}")
    expect(marked).to_contain_text("max_model_len: lots")
    expect(marked.get_by_test_id("deployments-line-message")).to_contain_text(error["message"])
    expect(page.get_by_test_id("deployments-manifest-ok")).to_have_count(0)
    shot(page, "deployments-manifest-error")


def test_a_good_manifest_validates_and_diffs_as_a_create(page: Page, platform: Platform) -> None:
    text = tiny_manifest("console-new", platform.models / "tiny")
    _manifest_tab(page, platform)
    page.get_by_test_id("deployments-manifest-input").fill(text)
    page.get_by_test_id("deployments-validate").click()
    expect(page.get_by_test_id("deployments-manifest-ok")).to_contain_text(
        "ModelDeployment/console-new"
    )
    expect(page.get_by_test_id("deployments-manifest-errors")).to_have_count(0)

    page.get_by_test_id("deployments-diff").click()
    row = page.get_by_test_id("deployments-diff-row")
    expect(row).to_have_count(1)
    expect(row).to_have_attribute("data-action", "create")
    expect(row).to_contain_text("console-new")
    expect(row).to_contain_text("ModelDeployment")
    # Nothing was applied.
    assert "console-new" not in [d["name"] for d in platform.ctl.get(live=False)]

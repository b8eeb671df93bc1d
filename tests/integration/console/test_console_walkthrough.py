"""The gov walkthrough (deploy/domains/gov/README.md) done from the web console alone, in a
real Chromium against the real platform with the packaged Qwen model.

Demos page: start gov without training (the real `demo up gov --no-train` job) and wait
for it; its walkthrough steps appear. Step "search": the knowledge page opens with the
query filled in and searched, RP-002 first. Step "agent" with the photographed form: the
chat opens with the request typed and the bundle's sample picture attached (fetched from
the gateway: the browser has no deploy/domains/), the streamed run stops `waiting`. The
starter may not approve it: a second admin key signs in (the run, started by the admin
key, belongs to no tenant; made here with KeyStore, the Keys page is where a person makes
one) and approves it in the approvals
inbox; the run is done and filed once into the bundle's requests.sqlite. Step "router"
shows gov-desk's router. The Demos page stops gov (and a finally does, if the test broke
before).

The demo job writes git-ignored files into the repository's deploy/domains/gov/data (the
prepared offices.sqlite, the filings in requests.sqlite); the filing this test made is
deleted again at the end.
"""

from __future__ import annotations

import re
import secrets
import sqlite3
import time
from collections.abc import Iterator

import httpx
import pytest
from _console import REPO, login, shot
from _platform import Platform
from playwright.sync_api import Page, expect

from qingliang.platform.storage.keys import KeyStore

pytestmark = [pytest.mark.integration, pytest.mark.slow]

#: `demo up gov --no-train`: a CLI process, the desk applied, gov-policy embedded (~1-2 min).
JOB_MS = 300_000
#: One run of the packaged 0.5B model on CPU: OCR of the form, the intake agent fills it.
RUN_MS = 300_000
FILINGS = REPO / "deploy" / "domains" / "gov" / "data" / "requests.sqlite"


@pytest.fixture
def api(platform: Platform) -> Iterator[httpx.Client]:
    with httpx.Client(
        base_url=platform.base_url.removesuffix("/v1"),
        headers={"Authorization": f"Bearer {platform.key}"},
        timeout=120,
    ) as c:
        yield c


@pytest.fixture
def operator_key(platform: Platform) -> Iterator[None]:
    """The operator key in ``$QINGLIANG_HOME/api-key``, where ``qingliang up`` writes it and
    ``demo up`` reads it to sync the knowledge bases through the gateway."""
    path = platform.settings.home / "api-key"
    if path.exists():
        yield
        return
    path.write_text(platform.key + "\n")
    path.chmod(0o600)
    try:
        yield
    finally:
        path.unlink()


def _gov(api: httpx.Client) -> dict:
    r = api.get("/v1/demos")
    assert r.status_code == 200, r.text
    return next(d for d in r.json()["data"] if d["name"] == "gov")


def _down(api: httpx.Client) -> None:
    """Stop gov through the API unless it is down (the test broke before the page did)."""
    deadline = time.monotonic() + JOB_MS / 1000
    while _gov(api)["job"] and _gov(api)["job"]["status"] == "running":
        assert time.monotonic() < deadline, "a gov job never ended"
        time.sleep(2)
    if _gov(api)["state"] == "down":
        return
    r = api.post("/v1/demos/gov/down")
    assert r.status_code == 202, r.text
    while _gov(api)["job"]["status"] == "running":
        assert time.monotonic() < deadline, "demo down gov never ended"
        time.sleep(2)


def _filed(run_id: str) -> list[str]:
    if not FILINGS.exists():
        return []
    with sqlite3.connect(FILINGS) as db:
        rows = db.execute(
            "SELECT values_json FROM permit_applications WHERE run_id = ?", (run_id,)
        ).fetchall()
    return [r[0] for r in rows]


def _unfile(run_id: str) -> None:
    if FILINGS.exists():
        with sqlite3.connect(FILINGS) as db:
            db.execute("DELETE FROM permit_applications WHERE run_id = ?", (run_id,))


def _step(page: Page, n: int) -> None:
    """On the Demos page, click "try it" of gov's step ``n``."""
    page.get_by_test_id("nav-demos").click()
    page.get_by_test_id(f"demos-step-go-gov-{n}").click()


@pytest.mark.usefixtures("operator_key")
def test_the_gov_walkthrough_from_the_console_alone(
    page: Page, platform: Platform, qwen: str, api: httpx.Client
) -> None:
    steps = {s["kind"]: i + 1 for i, s in reversed(list(enumerate(_gov(api)["steps"])))}
    form = next(
        i + 1 for i, s in enumerate(_gov(api)["steps"]) if s["kind"] == "agent" and s["attachment"]
    )
    run_id = ""
    try:
        login(page, platform.key)
        page.get_by_test_id("nav-demos").click()
        expect(page.get_by_test_id("demos-train-gov")).not_to_be_checked()
        page.get_by_test_id("demos-start-gov").click()
        status = page.get_by_test_id("demos-job-status-gov")
        expect(status).to_have_text("running")
        expect(status).to_have_text("succeeded", timeout=JOB_MS)
        expect(page.get_by_test_id("demos-state-gov")).to_have_text("已启动")
        walkthrough = page.get_by_test_id("demos-steps-gov")
        expect(walkthrough).to_contain_text("办理居住证需要什么材料")
        approvals = page.get_by_test_id(f"demos-step-gov-{steps['approvals']}")
        note = approvals.get_by_test_id("demos-self-approval-gov")
        expect(note).to_contain_text("第二个管理员（admin）密钥")
        expect(note.get_by_test_id("demos-keys-link")).to_have_attribute("href", "#/keys")
        shot(page, "walkthrough-demos")

        # Search: the knowledge page, the query filled in and run; RP-002 first.
        page.get_by_test_id(f"demos-step-go-gov-{steps['search']}").click()
        expect(page).to_have_url(re.compile(r"#/knowledge/gov-policy/search$"))
        expect(page.get_by_test_id("knowledge-search-query")).to_have_value(
            "办理居住证需要什么材料"
        )
        first = page.get_by_test_id("knowledge-hit").first
        expect(first).to_contain_text("RP-002")
        expect(first).to_contain_text("居住证办理所需材料清单")

        # The application with the photographed form: typed, attached, streamed, waiting.
        _step(page, form)
        expect(page).to_have_url(re.compile(r"#/chat/agent/gov-desk$"))
        expect(page.get_by_test_id("chat-target")).to_have_value("gov-desk")
        expect(page.get_by_test_id("chat-input")).to_have_value("我要申请居住证，申请表照片附上")
        expect(page.get_by_test_id("chat-attached")).to_contain_text("residence_permit_form.png")
        page.get_by_test_id("chat-send").click()
        expect(page.get_by_test_id("chat-msg-user").locator("img")).to_have_attribute(
            "alt", "residence_permit_form.png"
        )
        expect(page.get_by_test_id("chat-trace-route").first).to_contain_text("apply")
        ended = page.locator("[data-testid=chat-waiting], [data-testid=chat-answer-error]")
        expect(ended.first).to_be_visible(timeout=RUN_MS)
        if page.get_by_test_id("chat-answer-error").count():
            run_id = page.get_by_test_id("chat-run-link").inner_text().strip()
            run = api.get(f"/v1/agents/runs/{run_id}").json()
            pytest.fail(
                f"the chat's stream broke: {page.get_by_test_id('chat-answer-error').inner_text()}"
                f"; the run on the server: {run.get('status')} {run.get('reason')}"
            )
        expect(page.get_by_test_id("chat-waiting")).to_be_visible()
        expect(page.get_by_test_id("chat-trace-status")).to_contain_text("waiting")
        run_id = page.get_by_test_id("chat-run-link").inner_text().strip()
        run = api.get(f"/v1/agents/runs/{run_id}").json()
        assert run["status"] == "waiting" and "residence_permit" in run["pending"]["forms"], run
        shot(page, "walkthrough-chat")

        # The starter may not approve: a second key does. The run belongs to no tenant
        # (the admin key started it), so only an admin key sees it: an officer as the
        # README's `keys create officer --admin`, made here as the Keys page would.
        officer = KeyStore(platform.settings.state_db).create(
            f"walkthrough-officer-{secrets.token_hex(3)}", scopes=["admin"]
        )[1]
        page.get_by_test_id("logout").click()
        login(page, officer)
        page.get_by_test_id("nav-approvals").click()
        page.get_by_test_id(f"approvals-item-{run_id}").click()
        expect(page.get_by_test_id("approvals-detail")).to_contain_text("林晓雨")
        page.get_by_test_id("approvals-approve").click()
        expect(page.get_by_test_id("approvals-outcome-status")).to_have_text("done")
        assert api.get(f"/v1/agents/runs/{run_id}").json()["status"] == "done"
        (filed,) = _filed(run_id)
        assert "林晓雨" in filed
        shot(page, "walkthrough-approval")

        # The router: back as the operator, from the walkthrough's step.
        page.get_by_test_id("logout").click()
        login(page, platform.key)
        _step(page, steps["router"])
        expect(page).to_have_url(re.compile(r"#/router/gov-desk$"))
        expect(page.get_by_test_id("router-node-triage")).to_be_visible()
        expect(page.get_by_test_id("router-taught-triage")).to_have_text("50")

        # Done: stop gov from the Demos page.
        page.get_by_test_id("nav-demos").click()
        page.get_by_test_id("demos-stop-gov").click()
        page.get_by_test_id("confirm-ok").click()
        expect(status).to_have_text("succeeded", timeout=JOB_MS)
        expect(page.get_by_test_id("demos-state-gov")).to_have_text("未启动")
        expect(page.get_by_test_id("demos-steps-after-gov")).to_be_visible()
    finally:
        _down(api)
        if run_id:
            _unfile(run_id)
    assert "gov-desk" not in {g["id"] for g in api.get("/v1/agents").json()["data"]}

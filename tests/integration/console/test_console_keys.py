"""The console's Keys page in a real Chromium against the real gateway.

An admin makes an approver's key in the page (the step of each domain walkthrough that
needs a second key: a run's starter may not approve it), copies the secret the page shows
once, and that key reads the approvals inbox over HTTP; revoked in the page after a
confirmation, the same call gets 401. A bad name shows the server's refusal; a key may
not revoke itself (409, in the server's words). A key that is not admin (here an
approver bound to a tenant) gets no Keys page: no menu entry, and the address typed by
hand is refused without loading the page's code.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

import httpx
import pytest
from _console import PageLog, login, shot
from _platform import Platform
from playwright.sync_api import Page, expect

from qingliang.platform.storage.keys import KeyStore

pytestmark = [pytest.mark.integration, pytest.mark.slow]

NAME = "keys-approver"
SECRET = re.compile(r"^ql-[0-9a-f]{12}-[A-Za-z0-9_-]{43}$")


@pytest.fixture
def origin(platform: Platform) -> str:
    return platform.base_url.removesuffix("/v1")


def approvals_status(origin: str, key: str) -> int:
    r = httpx.get(
        f"{origin}/v1/agents/approvals", headers={"Authorization": f"Bearer {key}"}, timeout=60
    )
    return r.status_code


@pytest.fixture
def second_admin(platform: Platform) -> Iterator[str]:
    """An admin key of this test's own, so a wrong answer to a self-revoke can only lock
    out this key, never the session's."""
    store = KeyStore(platform.settings.state_db)
    record, key = store.create("keys-admin-2", scopes=["admin"])
    yield key
    if not next(r for r in store.list() if r.id == record.id).revoked:
        store.revoke(record.id)


def test_an_admin_makes_an_approver_key_that_works_until_revoked_in_the_page(
    page: Page, console_url: str, origin: str, platform: Platform
) -> None:
    page.context.grant_permissions(["clipboard-read", "clipboard-write"])
    login(page, platform.key, console_url)
    page.get_by_test_id("nav-keys").click()
    expect(page.locator("main[data-testid=page-keys]")).to_be_visible()
    expect(page.get_by_test_id("keys-row-integration")).to_contain_text("当前登录所用")
    expect(page.get_by_test_id("keys-scopes-integration")).to_have_text("admin")

    # The server's refusal of a bad name, in its own words; nothing is created.
    page.get_by_test_id("keys-name").fill("nurse approver")
    page.get_by_test_id("keys-submit").click()
    expect(page.get_by_test_id("keys-create-error")).to_contain_text(
        "400 key name 'nurse approver' is invalid"
    )
    expect(page.get_by_test_id("keys-secret-panel")).to_have_count(0)

    page.get_by_test_id("keys-name").fill(NAME)
    for scope in ("inference", "knowledge-read", "agents-run"):  # the CLI's defaults, ticked
        page.get_by_test_id(f"keys-scope-{scope}").uncheck()
    page.get_by_test_id("keys-scope-approve").check()
    page.get_by_test_id("keys-submit").click()
    expect(page.get_by_test_id("keys-secret-panel")).to_be_visible()
    expect(page.get_by_test_id("keys-create-error")).to_have_count(0)
    expect(page.get_by_test_id("keys-secret-warning")).to_contain_text("只显示这一次")
    shown = page.get_by_test_id("keys-secret").input_value()
    assert SECRET.match(shown), shown
    page.get_by_test_id("keys-copy").click()
    expect(page.get_by_test_id("keys-copied")).to_have_text("已复制到剪贴板")
    copied = page.evaluate("navigator.clipboard.readText()")
    assert copied == shown
    page.evaluate("window.scrollTo(0, 0)")
    shot(page, "keys")

    row = page.get_by_test_id(f"keys-row-{NAME}")
    expect(page.get_by_test_id(f"keys-scopes-{NAME}")).to_have_text("approve")
    expect(page.get_by_test_id(f"keys-state-{NAME}")).to_have_text("有效")
    expect(page.get_by_test_id(f"keys-prefix-{NAME}")).to_have_text(copied[: len("ql-") + 12])
    assert approvals_status(origin, copied) == 200

    # Shown once: closed, or the page reloaded, the secret is nowhere on it.
    page.get_by_test_id("keys-secret-done").click()
    expect(page.get_by_test_id("keys-secret-panel")).to_have_count(0)
    page.reload()
    expect(row).to_be_visible()
    assert copied not in page.content()
    assert copied.split("-")[-1] not in page.content()

    # Revoke asks first; cancelling changes nothing.
    page.get_by_test_id(f"keys-revoke-{NAME}").click()
    expect(page.get_by_test_id("confirm")).to_contain_text(NAME)
    page.get_by_test_id("confirm-cancel").click()
    expect(page.get_by_test_id("confirm")).to_have_count(0)
    expect(page.get_by_test_id(f"keys-state-{NAME}")).to_have_text("有效")
    assert approvals_status(origin, copied) == 200

    page.get_by_test_id(f"keys-revoke-{NAME}").click()
    page.get_by_test_id("confirm-ok").click()
    expect(page.get_by_test_id("keys-revoked-done")).to_contain_text(NAME)
    expect(page.get_by_test_id(f"keys-state-{NAME}")).to_contain_text("已撤销")
    expect(page.get_by_test_id(f"keys-revoke-{NAME}")).to_have_count(0)
    assert approvals_status(origin, copied) == 401
    shot(page, "keys-revoked")


def test_a_key_may_not_revoke_itself_from_the_page(
    page: Page, console_url: str, second_admin: str, origin: str
) -> None:
    login(page, second_admin, console_url)
    page.get_by_test_id("nav-keys").click()
    me = "keys-admin-2"
    expect(page.get_by_test_id(f"keys-row-{me}")).to_contain_text("当前登录所用")
    page.get_by_test_id(f"keys-revoke-{me}").click()
    page.get_by_test_id("confirm-ok").click()
    error = page.get_by_test_id("keys-revoke-error")
    expect(error).to_contain_text("409")
    expect(error).to_contain_text("lock you out")
    expect(page.get_by_test_id(f"keys-state-{me}")).to_have_text("有效")
    # Still signed in, and the key still works.
    expect(page.get_by_test_id("logout")).to_be_visible()
    r = httpx.get(f"{origin}/v1/keys", headers={"Authorization": f"Bearer {second_admin}"})
    assert r.status_code == 200


def test_a_key_that_is_not_admin_gets_no_keys_page(
    page: Page, page_log: PageLog, console_url: str, platform: Platform, origin: str
) -> None:
    store = KeyStore(platform.settings.state_db)
    record, key = store.create(
        "keys-tenant-approver", scopes=["approve", "agents:run", "tenant:hospital-a"]
    )
    try:
        login(page, key, console_url)
        expect(page.get_by_test_id("nav-approvals")).to_be_visible()
        expect(page.get_by_test_id("nav-keys")).to_have_count(0)
        page.goto(console_url + "#/keys")
        refusal = page.locator("main[data-testid=page-keys] [role=alert]")
        expect(refusal).to_be_visible()
        expect(refusal).to_contain_text("keys")
        expect(page.get_by_test_id("keys-list")).to_have_count(0)
        assert not [u for u in page_log.requests if "/pages/keys.js" in u]
        r = httpx.get(f"{origin}/v1/keys", headers={"Authorization": f"Bearer {key}"})
        assert r.status_code == 403 and "needs admin" in r.json()["error"]["message"]
    finally:
        store.revoke(record.id)

"""The console's shell in a real Chromium against the real gateway: signing in and out,
the navigation a key's scopes allow, the language switch, the tablet layout, and that the
page talks to nobody but the gateway."""

from __future__ import annotations

import re

import httpx
import pytest
from _console import PageLog, login, shot
from _platform import Platform
from playwright.sync_api import Page, expect

from qingliang.platform.storage.keys import KeyStore

PAGES = ("chat", "approvals", "knowledge", "runs", "deployments", "router", "metrics", "demos")
CJK = re.compile(r"[\u4e00-\u9fff]")


def nav_ids(page: Page) -> list[str]:
    testids = page.locator("nav[data-testid=nav] a[data-testid^=nav-]").evaluate_all(
        "links => links.map(a => a.dataset.testid)"
    )
    return [t.removeprefix("nav-") for t in testids if t.removeprefix("nav-") in PAGES]


@pytest.fixture(scope="module")
def inference_key(platform: Platform) -> str:
    _record, key = KeyStore(platform.settings.state_db).create(
        "console-inference", scopes=["inference"]
    )
    return key


def test_a_wrong_key_shows_the_servers_message_and_nothing_else(
    page: Page, console_url: str
) -> None:
    page.goto(console_url)
    page.get_by_test_id("login-key").fill("ql-0000-not-a-key")
    page.get_by_test_id("login-submit").click()
    error = page.get_by_test_id("login-error")
    expect(error).to_be_visible()
    # The gateway's own words (OpenAI error format) for the call the console makes.
    r = httpx.get(
        console_url.removesuffix("/ui/") + "/v1/whoami",
        headers={"Authorization": "Bearer ql-0000-not-a-key"},
    )
    assert r.status_code == 401
    expect(error).to_contain_text(r.json()["error"]["message"])
    expect(page.locator("nav[data-testid=nav]")).to_have_count(0)
    expect(page.get_by_test_id("logout")).to_have_count(0)
    expect(page.locator("main[data-testid^=page-]:not([data-testid=page-login])")).to_have_count(0)
    assert page.evaluate("sessionStorage.getItem('qingliang.key')") is None


def test_admin_signs_in_switches_language_reloads_and_signs_out(
    page: Page, console_url: str, platform: Platform
) -> None:
    page.goto(console_url)
    expect(page.locator("html")).to_have_attribute("lang", "zh-CN")
    login(page, platform.key)
    assert nav_ids(page) == list(PAGES)
    expect(page.locator("main[data-testid=page-chat]")).to_be_visible()
    chat = page.get_by_test_id("nav-chat")
    zh_label = chat.inner_text()
    assert CJK.search(zh_label), zh_label

    page.get_by_test_id("lang-switch").click()
    expect(page.locator("html")).to_have_attribute("lang", "en")
    expect(chat).not_to_have_text(zh_label)
    assert re.fullmatch(r"[A-Za-z ]+", chat.inner_text().strip()), chat.inner_text()
    shot(page, "shell-admin-en")
    page.get_by_test_id("lang-switch").click()
    expect(page.locator("html")).to_have_attribute("lang", "zh-CN")
    expect(chat).to_have_text(zh_label)

    page.get_by_test_id("nav-knowledge").click()
    expect(page.locator("main[data-testid=page-knowledge]")).to_be_visible()
    page.reload()
    # Same tab: the key in sessionStorage survives, and so does the route.
    expect(page.locator("main[data-testid=page-knowledge]")).to_be_visible()
    assert nav_ids(page) == list(PAGES)
    assert page.evaluate("sessionStorage.getItem('qingliang.key')") == platform.key

    page.get_by_test_id("logout").click()
    expect(page.get_by_test_id("login-key")).to_be_visible()
    expect(page.locator("nav[data-testid=nav]")).to_have_count(0)
    assert page.evaluate("sessionStorage.getItem('qingliang.key')") is None
    page.reload()
    expect(page.get_by_test_id("login-key")).to_be_visible()


def test_the_boot_placeholder_goes_once_the_console_runs(
    page: Page, console_url: str, platform: Platform
) -> None:
    login(page, platform.key, console_url)
    expect(page.get_by_text("轻量 Qingliang…", exact=True)).to_have_count(0, timeout=2000)


def test_an_inference_key_sees_chat_but_not_the_operator_pages(
    page: Page, page_log: PageLog, console_url: str, inference_key: str
) -> None:
    login(page, inference_key, console_url)
    ids = nav_ids(page)
    assert "chat" in ids
    assert not {"approvals", "deployments", "demos"} & set(ids), ids
    expect(page.locator("main[data-testid=page-chat]")).to_be_visible()
    # Typing an operator page's address does not open it either: a refusal, and the
    # page's code is never loaded.
    page.goto(console_url + "#/deployments")
    refusal = page.locator("main[data-testid=page-deployments] [role=alert]")
    expect(refusal).to_be_visible()
    expect(refusal).to_contain_text("deployments")
    assert not [u for u in page_log.requests if "/pages/deployments.js" in u]


def test_the_tablet_navigation_folds_behind_the_menu_button(
    tablet_page: Page, console_url: str, platform: Platform
) -> None:
    login(tablet_page, platform.key, console_url)
    menu = tablet_page.get_by_test_id("menu")
    expect(menu).to_be_visible()
    expect(tablet_page.get_by_test_id("nav-runs")).to_be_hidden()
    menu.click()
    for name in PAGES:
        expect(tablet_page.get_by_test_id(f"nav-{name}")).to_be_visible()
    shot(tablet_page, "shell-tablet-menu-open")
    tablet_page.get_by_test_id("nav-runs").click()
    expect(tablet_page.locator("main[data-testid=page-runs]")).to_be_visible()
    expect(tablet_page.get_by_test_id("nav-runs")).to_be_hidden()
    expect(tablet_page.get_by_test_id("logout")).to_be_visible()


def test_the_console_talks_only_to_its_gateway(
    page: Page, page_log: PageLog, console_url: str, platform: Platform
) -> None:
    r = httpx.get(console_url)
    assert r.status_code == 200
    csp = {
        d.split()[0]: d.split()[1:]
        for d in r.headers["content-security-policy"].split(";")
        if d.strip()
    }
    assert csp["default-src"] in (["'self'"], ["'none'"]), csp
    sources = [s for values in csp.values() for s in values]
    # Only keywords, hashes and local schemes: no host of anyone else's may be named.
    assert all(s.startswith("'") or s in ("data:", "blob:") for s in sources), csp
    login(page, platform.key, console_url)
    for name in PAGES:
        page.get_by_test_id(f"nav-{name}").click()
        expect(page.locator(f"main[data-testid=page-{name}]")).to_be_visible()
    assert page_log.requests, "the page made no request at all"
    assert page_log.foreign_requests() == []
    blocked = [e for e in page_log.console_errors if "Content Security Policy" in e]
    assert blocked == []

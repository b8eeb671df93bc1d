"""Browser fixtures for the web console: the system Chromium driven by Playwright's sync API
against the integration platform's gateway (``platform`` in ../conftest.py).

Every page a test opens is watched: its requests, its console errors and its uncaught
errors. An uncaught JavaScript error fails the test (the message lists them). At teardown
each page leaves a full-page screenshot named after the test in
``$QINGLIANG_ARTIFACTS/console/`` (default ``tests/artifacts/console/``). Without Chromium
(``_chromium.missing()``) every test here skips, saying how to install it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
from _chromium import ARGS, CHROMIUM, missing
from _console import CONSOLE_URL, TIMEOUT_MS, PageLog, shot
from _platform import Platform
from playwright.sync_api import Browser, Page, Playwright, expect, sync_playwright

LOG = pytest.StashKey[PageLog]()
# expect() waits 5 s by default; a busy 2-core CI needs the same bound as every other wait.
expect.set_options(timeout=TIMEOUT_MS)


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    # Before any fixture: a missing browser must not start the platform first.
    if reason := missing():
        pytest.skip(reason)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Iterator[None]:
    try:
        result = yield
    except BaseException:
        # The test failed on its own: show what the browser said next to its traceback.
        log = item.stash.get(LOG, None)
        if log and (text := log.report()):
            item.add_report_section("call", "browser", text)
        raise
    log = item.stash.get(LOG, None)
    if log and log.page_errors:
        pytest.fail(log.report(), pytrace=False)
    return result


@pytest.fixture(scope="module")
def playwright() -> Iterator[Playwright]:
    with sync_playwright() as p:
        yield p


@pytest.fixture(scope="module")
def browser(playwright: Playwright) -> Iterator[Browser]:
    """Headless system Chromium with a fresh temporary profile; one per test module
    (starting it takes well under a second)."""
    b = playwright.chromium.launch(executable_path=CHROMIUM, args=list(ARGS))
    yield b
    b.close()


@pytest.fixture
def console_url(platform: Platform) -> str:
    """The console of the running integration gateway."""
    return CONSOLE_URL


@pytest.fixture
def page_log(request: pytest.FixtureRequest) -> PageLog:
    """Requests, console errors and uncaught errors of every page this test opens."""
    log = PageLog()
    request.node.stash[LOG] = log
    return log


@pytest.fixture
def new_page(
    browser: Browser, page_log: PageLog, request: pytest.FixtureRequest
) -> Iterator[Callable[[int, int], Page]]:
    """Opens a page in a fresh context (no storage shared) with the given viewport; at
    teardown each one is screenshotted, then closed."""
    opened: list[tuple[Page, str]] = []

    def open_page(width: int, height: int) -> Page:
        context = browser.new_context(viewport={"width": width, "height": height}, locale="zh-CN")
        context.set_default_timeout(TIMEOUT_MS)
        page = context.new_page()
        page_log.watch(page)
        name = f"{request.node.name}-{width}x{height}"
        taken = sum(1 for _, n in opened if n.startswith(name))
        opened.append((page, f"{name}-{taken + 1}" if taken else name))
        return page

    yield open_page
    for page, name in opened:
        try:
            if not page.is_closed():
                shot(page, name)
        finally:
            page.context.close()


@pytest.fixture
def page(new_page: Callable[[int, int], Page]) -> Page:
    """A fresh desktop page, 1280x800."""
    return new_page(1280, 800)


@pytest.fixture
def tablet_page(new_page: Callable[[int, int], Page]) -> Page:
    """A fresh tablet page, 820x1180 (portrait)."""
    return new_page(820, 1180)

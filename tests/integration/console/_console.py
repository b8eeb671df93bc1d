"""Helpers of the console's browser tests (the fixtures are in conftest.py).

Tests import them by module name, as the integration tests import ``_platform``::

    from _console import login, shot

    def test_something(page, console_url, platform):
        login(page, platform.key)
        shot(page, "after-login")
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from playwright.sync_api import Page, expect

CONSOLE_URL = "http://127.0.0.1:28000/ui/"
ORIGIN = "127.0.0.1:28000"
REPO = Path(__file__).resolve().parents[3]
#: How long a wait for the console may take before the test fails (busy 2-core CI).
TIMEOUT_MS = 30_000


def artifacts() -> Path:
    """``$QINGLIANG_ARTIFACTS/console``, by default ``tests/artifacts/console`` (git-ignored)."""
    root = Path(os.environ.get("QINGLIANG_ARTIFACTS", REPO / "tests" / "artifacts"))
    path = root / "console"
    path.mkdir(parents=True, exist_ok=True)
    return path


def shot(page: Page, name: str) -> Path:
    """Save a full-page screenshot as ``<artifacts>/console/<name>.png`` and return its path."""
    path = artifacts() / (re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("_") + ".png")
    page.screenshot(path=str(path), full_page=True)
    return path


def login(page: Page, key: str, url: str = CONSOLE_URL) -> None:
    """Open the console if it is not open, sign in with ``key`` and wait for the navigation.

    Fails with the console's own message when the key is refused."""
    if not page.url.startswith(url):
        page.goto(url)
    page.get_by_test_id("login-key").fill(key)
    page.get_by_test_id("login-submit").click()
    outcome = page.locator("nav[data-testid=nav], [data-testid=login-error]").first
    outcome.wait_for(state="attached")
    error = page.get_by_test_id("login-error")
    if error.count():
        raise AssertionError(f"the console refused the key: {error.inner_text()!r}")
    expect(page.get_by_test_id("login-key")).to_have_count(0)


@dataclass
class PageLog:
    """What the browser pages of one test did: every request URL, console errors, and
    uncaught errors (exceptions and unhandled rejections), which fail the test."""

    requests: list[str] = field(default_factory=list)
    console_errors: list[str] = field(default_factory=list)
    page_errors: list[str] = field(default_factory=list)

    def watch(self, page: Page) -> None:
        page.on("request", lambda r: self.requests.append(r.url))
        page.on(
            "console",
            lambda m: (
                self.console_errors.append(f"{m.text} ({m.location.get('url', '')})")
                if m.type == "error"
                else None
            ),
        )
        page.on("pageerror", lambda e: self.page_errors.append(e.stack or f"{e.name}: {e.message}"))

    def foreign_requests(self) -> list[str]:
        """Requests to any host but the gateway (``data:`` and ``blob:`` URLs stay local)."""
        return [
            u
            for u in self.requests
            if urlsplit(u).scheme not in ("data", "blob", "about") and urlsplit(u).netloc != ORIGIN
        ]

    def report(self) -> str:
        """The uncaught errors and console errors, for a failure message ('' if none)."""
        lines = []
        if self.page_errors:
            lines += ["uncaught JavaScript errors in the console:", *self.page_errors]
        if self.console_errors:
            lines += ["browser console errors:", *self.console_errors]
        return "\n".join(lines)

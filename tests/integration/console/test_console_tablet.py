"""Every page of the console on a tablet (820 x 1180, portrait): it opens, draws without
a horizontal scroll bar (wide tables scroll inside their own box), and leaves a screenshot."""

from __future__ import annotations

import pytest
from _console import login, shot
from _platform import Platform
from playwright.sync_api import Page, expect

pytestmark = [pytest.mark.integration, pytest.mark.slow]

PAGES = [
    "chat",
    "approvals",
    "knowledge",
    "runs",
    "deployments",
    "router",
    "metrics",
    "demos",
    "keys",
]


def test_every_page_fits_a_tablet(tablet_page: Page, console_url: str, platform: Platform) -> None:
    page = tablet_page
    login(page, platform.key, console_url)
    for name in PAGES:
        page.goto(f"{console_url}#/{name}")
        main = page.locator(f"main[data-testid=page-{name}]")
        expect(main).to_be_visible()
        # The page's own content is drawn (its title), and nothing is still loading.
        expect(main.locator("h2, h3").first).to_be_visible()
        expect(main.locator("[aria-busy=true]")).to_have_count(0)
        expect(main.get_by_role("alert")).to_have_count(0)
        overflow = page.evaluate(
            "() => document.documentElement.scrollWidth - document.documentElement.clientWidth"
        )
        assert overflow <= 1, f"#/{name} is {overflow} px wider than the tablet's screen"
        shot(page, f"tablet-{name}")

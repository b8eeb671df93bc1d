"""Take the screenshots of docs/console.md from a running platform (a developer's script).

Needs: `make up`, then `qingliang demo up gov` (with or without training), Debian's
chromium and the dev extra's playwright. Run from the repository root:

    QINGLIANG_URL=http://127.0.0.1:8000 .venv/bin/python docs/console/capture.py

It signs in with $QINGLIANG_API_KEY (default: ~/.qingliang/api-key), asks the gov desk a
policy question in the chat, starts a residence-permit application with the sample form
photo (it waits for approval: reject or approve it afterwards), and saves one PNG per page
next to this file. The browser tests take screenshots of every page too
(tests/artifacts/console/), on the tiny test model.
"""

from __future__ import annotations

import base64
import io
import os
from pathlib import Path

import httpx
from PIL import Image
from playwright.sync_api import Page, expect, sync_playwright

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
URL = os.environ.get("QINGLIANG_URL", "http://127.0.0.1:8000").rstrip("/")
KEY_FILE = Path(os.environ.get("QINGLIANG_HOME", Path.home() / ".qingliang")) / "api-key"
KEY = os.environ.get("QINGLIANG_API_KEY") or KEY_FILE.read_text().strip()
FORM = REPO / "deploy" / "domains" / "gov" / "samples" / "residence_permit_form.png"
ARGS = [
    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]  # fmt: skip
SLOW_MS = 240_000


def save(page: Page, name: str) -> None:
    """A full-page PNG, reduced to 256 colours (a few hundred KB at most)."""
    raw = page.screenshot(full_page=True)
    image = Image.open(io.BytesIO(raw)).convert("RGB").quantize(colors=256)
    image.save(HERE / f"{name}.png", optimize=True)
    print("saved", HERE / f"{name}.png")


def main() -> None:
    api = httpx.Client(base_url=URL, headers={"Authorization": f"Bearer {KEY}"}, timeout=600)
    data = base64.b64encode(FORM.read_bytes()).decode()
    waiting: dict = {}
    for _ in range(4):  # the learned router explores now and then: ask again until it files
        waiting = api.post(
            "/v1/agents/gov-desk/runs",
            json={
                "input": "我要申请居住证，申请表照片附上",
                "attachments": [{"name": FORM.name, "data": data}],
                "stream": False,
            },
        ).json()
        if waiting.get("status") == "waiting":
            break
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=ARGS)
        page = browser.new_page(viewport={"width": 1280, "height": 800})
        page.goto(f"{URL}/ui/#/chat/agent/gov-desk")
        page.get_by_test_id("login-key").fill(KEY)
        page.get_by_test_id("login-submit").click()
        page.get_by_test_id("chat-input").fill("租房的话每年能提取多少住房公积金？")
        page.get_by_test_id("chat-send").click()
        expect(page.get_by_test_id("chat-rate-up")).to_be_visible(timeout=SLOW_MS)
        save(page, "chat")
        page.get_by_test_id("chat-run-link").click()
        expect(page.get_by_test_id("runs-timeline")).to_be_visible()
        save(page, "runs")
        if waiting.get("status") == "waiting":
            page.goto(f"{URL}/ui/#/approvals/agent/{waiting.get('id') or waiting.get('run_id')}")
            expect(page.get_by_role("button", name="批准")).to_be_visible(timeout=60_000)
            save(page, "approvals")
        page.goto(f"{URL}/ui/#/knowledge/gov-policy/search")
        page.get_by_test_id("knowledge-search-query").fill("办理居住证需要什么材料")
        page.get_by_test_id("knowledge-search-submit").click()
        expect(page.get_by_test_id("knowledge-hit").first).to_be_visible(timeout=60_000)
        save(page, "knowledge")
        for name, route in (
            ("router", "router/gov-desk"),
            ("deployments", "deployments/qwen-coder"),
            ("metrics", "metrics"),
            ("demos", "demos"),
        ):
            page.goto(f"{URL}/ui/#/{route}")
            page.wait_for_timeout(4000)  # the charts and polled tables fill in
            save(page, name)
        browser.close()


if __name__ == "__main__":
    main()

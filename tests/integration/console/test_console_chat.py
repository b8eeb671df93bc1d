"""The console's chat playground in a real Chromium against the real gateway: a streamed
answer from a deployment's adapter with the trace that names it, an image refused by a
text-only deployment with the server's reason, and an agent run routed by the learned
router with its propensity, the cited passage one click away, and a rating that reaches
the router as a reward."""

from __future__ import annotations

import base64
from pathlib import Path

import httpx
import pytest
import yaml
from _console import login, shot
from _platform import Platform
from playwright.sync_api import Page, expect

pytestmark = [pytest.mark.integration, pytest.mark.slow]

GRAPH = "console-chat-desk"
KB = "console-chat-kb"
PASSAGE = "Ferry night tickets: gate two, until 11 pm."
#: A tiny PNG (1x1): the tiny deployment declares no image mode, so it refuses it.
PNG = base64.b64decode(
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg=="
)
ANSWER_MS = 120_000


@pytest.fixture(scope="module")
def desk(platform: Platform, tmp_path_factory: pytest.TempPathFactory) -> str:
    """A graph that searches a knowledge base, then routes between the tiny model and its
    adapter (the tiny model reads 256 tokens at most: the agents get no passages)."""
    folder = tmp_path_factory.mktemp("console-chat-kb")
    (folder / "ferry.txt").write_text(PASSAGE, encoding="utf-8")
    kb = {
        "apiVersion": "qingliang.io/v1",
        "kind": "KnowledgeBase",
        "metadata": {"name": KB},
        "spec": {"sources": [{"folder": str(folder)}]},
    }
    graph = {
        "apiVersion": "qingliang.io/v1",
        "kind": "AgentGraph",
        "metadata": {"name": GRAPH, "labels": {"domain": "gov"}},
        "spec": {
            "agents": [
                {"name": "clerk", "model": "tiny", "max_tokens": 8},
                {"name": "expert", "model": "tiny:a", "max_tokens": 8},
            ],
            "tools": [{"name": "lookup", "kind": "knowledge_search", "knowledge": KB}],
            "nodes": [
                # A search node: its hits are the run's citations whatever the model says.
                {
                    "name": "search",
                    "type": "tool",
                    "tool": "lookup",
                    "arguments": {"query": "ferry night tickets"},
                    "next": "triage",
                },
                {"name": "triage", "type": "router", "routes": ["quick", "careful"]},
                {"name": "quick", "type": "agent", "agent": "clerk"},
                {"name": "careful", "type": "agent", "agent": "expert"},
            ],
        },
    }
    paths = [
        platform.manifest(KB, yaml.safe_dump(kb, allow_unicode=True)),
        platform.manifest(GRAPH, yaml.safe_dump(graph, allow_unicode=True)),
    ]
    platform.ctl.apply(paths, wait=False, progress=False)
    with httpx.Client(
        base_url=platform.base_url, headers={"Authorization": f"Bearer {platform.key}"}, timeout=300
    ) as http:
        r = http.post(f"/knowledge/{KB}/sync", json={})
        assert r.status_code == 200 and r.json()["added"] >= 1, r.text
    return GRAPH


def test_a_streamed_answer_names_the_adapter_that_made_it(
    page: Page, console_url: str, platform: Platform
) -> None:
    page.goto(console_url + "#/chat/model/tiny:a")
    login(page, platform.key, console_url)
    expect(page.get_by_test_id("chat-target")).to_have_value("tiny:a")
    page.get_by_test_id("chat-max-tokens").fill("8")
    page.get_by_test_id("chat-input").fill("hello")
    page.get_by_test_id("chat-send").click()
    expect(page.get_by_test_id("chat-trace-timing")).to_have_count(1, timeout=ANSWER_MS)
    assert page.get_by_test_id("chat-answer").inner_text().strip(), "the answer streamed in"
    page.locator("[data-testid=chat-trace] > summary").click()
    expect(page.get_by_test_id("chat-trace-deployment")).to_have_text("tiny")
    expect(page.get_by_test_id("chat-trace-adapter")).to_have_text("a")
    expect(page.get_by_test_id("chat-trace-usage")).to_contain_text("· 输出 8")
    shot(page, "chat-model")

    # A picture to a deployment that takes none: the server's reason, named, in the page.
    image = page.get_by_test_id("chat-attach")
    image.set_input_files(files=[{"name": "form.png", "mimeType": "image/png", "buffer": PNG}])
    expect(page.get_by_test_id("chat-attached")).to_contain_text("form.png")
    page.get_by_test_id("chat-input").fill("what does the form say?")
    page.get_by_test_id("chat-send").click()
    error = page.get_by_test_id("chat-answer-error")
    expect(error).to_contain_text("400", timeout=ANSWER_MS)
    expect(error).to_contain_text("image")

    # Not a picture: refused in the page before anything is sent.
    image.set_input_files(files=[{"name": "notes.txt", "mimeType": "text/plain", "buffer": b"x"}])
    expect(page.get_by_test_id("chat-error")).to_contain_text("notes.txt")


def test_an_agent_answer_shows_its_route_cites_its_source_and_takes_a_rating(
    page: Page, console_url: str, platform: Platform, desk: str, tmp_path: Path
) -> None:
    page.goto(console_url + f"#/chat/agent/{desk}")
    login(page, platform.key, console_url)
    expect(page.get_by_test_id("chat-mode")).to_have_value("agent")
    expect(page.get_by_test_id("chat-target")).to_have_value(desk)
    page.get_by_test_id("chat-input").fill("ferry night tickets?")
    page.get_by_test_id("chat-send").click()
    expect(page.get_by_test_id("chat-trace-status")).to_have_text("done", timeout=ANSWER_MS)

    route = page.get_by_test_id("chat-trace-route")
    expect(route).to_have_count(1)
    arm = "quick" if "quick" in route.inner_text() else "careful"
    assert f"{GRAPH}/triage" in route.inner_text() and "0." in route.inner_text()
    expect(page.get_by_test_id("chat-trace-nodes")).to_contain_text(f"triage → {arm}")
    expect(page.get_by_test_id("chat-trace-tool")).to_contain_text("lookup")
    # The model call names what answered: the adapter on the careful route, else the base.
    served = "tiny:a → a" if arm == "careful" else "tiny → "
    expect(page.get_by_test_id("chat-trace-model")).to_contain_text(served)

    page.get_by_test_id("chat-citation").first.click()
    expect(page.get_by_test_id("chat-passage-text")).to_contain_text("gate two")
    shot(page, "chat-agent")
    page.get_by_test_id("chat-passage-close").click()

    run_link = page.get_by_test_id("chat-run-link")
    run_id = run_link.inner_text()
    with httpx.Client(
        base_url=platform.base_url, headers={"Authorization": f"Bearer {platform.key}"}, timeout=60
    ) as http:
        before = http.get(f"/agents/{GRAPH}/routers").json()
        page.get_by_test_id("chat-rate-up").click()
        expect(page.get_by_test_id("chat-rated")).to_be_visible()
        after = http.get(f"/agents/{GRAPH}/routers").json()
        run = http.get(f"/agents/runs/{run_id}").json()
    assert _updates(after) > _updates(before), (before, after)
    assert run["status"] == "done"
    # The link opens the run's timeline.
    run_link.click()
    expect(page).to_have_url(f"{console_url}#/runs/agent/{run_id}")
    # The timeline shows the rating and when each event happened.
    expect(page.get_by_test_id("runs-feedback")).to_contain_text("+1")
    expect(page.get_by_test_id("runs-timeline")).to_contain_text("+")


def _updates(routers: dict) -> int:
    """How many times the graph's router has learned from a reward."""
    return sum(r["updates"] for r in routers["data"])

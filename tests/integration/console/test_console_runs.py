"""The console's Runs page in a real Chromium against the real gateway: agent runs of a graph
on the tiny vLLM model (a learned router, an approval, a `submit` tool) listed and filtered,
a finished run's timeline (route and propensity, nodes, the tool call with its arguments and
result, the approval with who decided and why), a waiting run that the page follows until
it ends, and pipeline runs (a one-step `govern` pipeline, and one whose dataset is missing)
with their step states, attempts, logs and outputs, resume, and the server's refusal."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from _console import login, shot
from _platform import Platform
from playwright.sync_api import Page, expect

from qingliang.platform.storage.keys import KeyStore

pytestmark = [pytest.mark.integration, pytest.mark.slow]

GRAPH = "console-runs"
MANIFEST = """apiVersion: qingliang.io/v1
kind: AgentGraph
metadata: {{name: {name}, labels: {{domain: gov}}}}
spec:
  agents:
    - {{name: clerk, model: tiny, max_tokens: 8}}
    - {{name: expert, model: "tiny:a", max_tokens: 8}}
  tools:
    - {{name: intake, kind: form, fields: [{{name: applicant}}]}}
    - {{name: file, kind: submit, form: intake, database: {db}}}
  nodes:
    - {{name: triage, type: router, routes: [quick, careful], router: {{seed: 1}}}}
    - {{name: quick, type: agent, agent: clerk, next: review}}
    - {{name: careful, type: agent, agent: expert, next: review}}
    - {{name: review, type: approval, prompt: "File this request?", next: submit}}
    - {{name: submit, type: tool, tool: file}}
"""
DATASET = """apiVersion: qingliang.io/v1
kind: Dataset
metadata: {{name: {name}}}
spec:
  format: chat
  sources: [{{path: {source}}}]
  governance: [{{step: schema}}, {{step: pii}}]
  split: {{eval_fraction: 0.25, seed: 0}}
"""
#: A pipeline step is a Ray task on the busy test cluster.
PIPELINE_MS = 90_000


def _go(page: Page, route: str) -> None:
    """Open ``#/<route>`` of the signed-in console (the menu is folded on a tablet)."""
    page.evaluate("route => { location.hash = '#/' + route; }", route)


def _client(p: Platform, key: str) -> httpx.Client:
    return httpx.Client(
        base_url=p.base_url.removesuffix("/v1"),
        headers={"Authorization": f"Bearer {key}"},
        timeout=120,
    )


class Desk:
    def __init__(self, p: Platform) -> None:
        keys = KeyStore(p.settings.state_db)
        self.starter = _client(p, keys.create("console-runs-clerk", scopes=["agents:run"])[1])
        self.lead = _client(p, keys.create("console-runs-lead", scopes=["approve"])[1])

    def waiting(self, text: str) -> str:
        r = self.starter.post(f"/v1/agents/{GRAPH}/runs", json={"input": text, "stream": False})
        assert r.status_code == 200, r.text
        assert r.json()["status"] == "waiting", r.json()
        return str(r.json()["id"])

    def decide(self, run_id: str, body: dict) -> dict:
        r = self.lead.post(f"/v1/agents/runs/{run_id}/resume", json={**body, "stream": False})
        assert r.status_code == 200, r.text
        return dict(r.json())


@pytest.fixture(scope="module")
def desk(platform: Platform, tmp_path_factory: pytest.TempPathFactory) -> Desk:
    db = tmp_path_factory.mktemp("console-runs") / "filings.sqlite"
    path = platform.manifest(GRAPH, MANIFEST.format(name=GRAPH, db=db))
    platform.ctl.apply([path], wait=False, progress=False)
    return Desk(platform)


def test_a_finished_runs_timeline_shows_route_nodes_tool_call_and_approval(
    desk: Desk, platform: Platform, page: Page
) -> None:
    filed = desk.waiting("我要办理居住证")
    comment = "材料齐全,同意归档"
    edit = {"action": "edit", "forms": {"intake": {"applicant": "李雷"}}, "comment": comment}
    done = desk.decide(filed, edit)
    assert done["status"] == "done", done
    refused = desk.waiting("我要办理居住证(材料不全)")
    assert desk.decide(refused, {"action": "reject", "comment": "缺少租房合同"})["status"] == (
        "rejected"
    )

    login(page, platform.key)
    page.get_by_test_id("nav-runs").click()
    expect(page.get_by_test_id(f"runs-row-{filed}")).to_contain_text("done")
    expect(page.get_by_test_id(f"runs-row-{refused}")).to_contain_text("rejected")
    page.get_by_test_id("runs-status").select_option("rejected")
    expect(page.get_by_test_id(f"runs-row-{filed}")).to_have_count(0)
    expect(page.get_by_test_id(f"runs-row-{refused}")).to_be_visible()
    page.get_by_test_id("runs-status").select_option("")
    page.get_by_test_id("runs-graph").select_option(GRAPH)
    page.get_by_test_id(f"runs-row-{filed}").click()

    expect(page.get_by_test_id("runs-run-status")).to_have_text("done")
    expect(page.get_by_test_id("runs-run-input")).to_contain_text("我要办理居住证")
    route = page.get_by_test_id("runs-event-route")
    arm = next(e for e in done["events"] if e["type"] == "route")["arm"]
    expect(route).to_contain_text(f"triage:选择 {arm}")
    expect(route).to_contain_text("倾向概率")
    nodes = page.get_by_test_id("runs-event-node")
    # triage, the arm's agent, review (asked, then resumed) and the submit tool node.
    expect(nodes).to_have_count(sum(1 for e in done["events"] if e["type"] == "node"))
    expect(nodes.filter(has_text=f"进入节点 {arm}")).to_have_count(1)
    tool = page.get_by_test_id("runs-event-tool")
    expect(tool).to_contain_text("调用工具 file")
    expect(tool).to_contain_text("Submitted form 'intake'")
    approval = page.get_by_test_id("runs-event-approval")
    expect(approval).to_contain_text("修改后批准")
    expect(approval.get_by_test_id("runs-approval-actor")).to_contain_text("key:console-runs-lead")
    expect(approval.get_by_test_id("runs-approval-comment")).to_contain_text(comment)
    expect(page.get_by_test_id("runs-event-status").last).to_contain_text("done")
    expect(page.get_by_test_id("runs-run-tokens")).to_have_text(f"{done['tokens']:,}")
    shot(page, "runs-timeline")


def test_a_waiting_run_is_followed_until_it_ends(
    desk: Desk, platform: Platform, page: Page
) -> None:
    run_id = desk.waiting("我要办理居住证(等待审批)")
    login(page, platform.key)
    _go(page, f"runs/agent/{run_id}")
    expect(page.get_by_test_id("runs-run-status")).to_have_text("waiting")
    expect(page.get_by_test_id("runs-waiting")).to_contain_text("review")
    expect(page.get_by_test_id("runs-open-approval")).to_be_visible()
    desk.decide(run_id, {"action": "edit", "forms": {"intake": {"applicant": "韩梅梅"}}})
    # No reload: the page reads a live run again every few seconds.
    expect(page.get_by_test_id("runs-run-status")).to_have_text("done")
    expect(page.get_by_test_id("runs-event-tool")).to_contain_text("file")
    expect(page.get_by_test_id("runs-waiting")).to_have_count(0)


def _pipeline(http: httpx.Client, root: Path, name: str, dataset: str) -> str:
    body = {
        "manifest": {
            "apiVersion": "qingliang.io/v1",
            "kind": "Pipeline",
            "metadata": {"name": name},
            "spec": {"steps": [{"type": "govern", "dataset": dataset}]},
        },
        "base_dir": str(root),
    }
    r = http.post("/v1/pipelines", json=body)
    assert r.status_code == 202, r.text
    return str(r.json()["id"])


def test_pipeline_runs_show_steps_attempts_logs_and_the_servers_refusal(
    platform: Platform,
    http: httpx.Client,
    tmp_path: Path,
    new_page: Callable[[int, int], Page],
) -> None:
    (tmp_path / "data").mkdir()
    turns = [
        [
            {"role": "user", "content": f"How do I renew permit {i}?"},
            {"role": "assistant", "content": f"At window {i % 3}."},
        ]
        for i in range(8)
    ]
    lines = [json.dumps({"messages": m}) for m in turns]
    (tmp_path / "data" / "qa.jsonl").write_text("\n".join(lines) + "\n")
    (tmp_path / "good.yaml").write_text(
        DATASET.format(name="console-permits", source="data/qa.jsonl")
    )
    (tmp_path / "bad.yaml").write_text(
        DATASET.format(name="console-lost", source="data/lost.jsonl")
    )
    good = _pipeline(http, tmp_path, "console-govern", "good.yaml")
    bad = _pipeline(http, tmp_path, "console-broken", "bad.yaml")

    page = new_page(1280, 900)
    login(page, platform.key)
    page.get_by_test_id("nav-runs").click()
    page.get_by_test_id("tab-pipeline").click()
    # Both listed; the page reads the list again while they run.
    expect(page.get_by_test_id(f"runs-prow-{good}")).to_contain_text(
        "succeeded", timeout=PIPELINE_MS
    )
    expect(page.get_by_test_id(f"runs-prow-{bad}")).to_contain_text("failed", timeout=PIPELINE_MS)

    page.get_by_test_id(f"runs-prow-{good}").click()
    expect(page.get_by_test_id("runs-prun-status")).to_have_text("succeeded")
    expect(page.get_by_test_id("runs-step-state-govern")).to_have_text("完成")
    expect(page.get_by_test_id("runs-step-attempts-govern")).to_have_text("1")
    log = page.get_by_test_id("runs-step-log-govern")
    log.locator("summary").first.click()
    expect(log).to_contain_text("cutting dataset console-permits")
    expect(log).to_contain_text('"records": 8')
    page.get_by_test_id("runs-back").click()

    page.get_by_test_id(f"runs-prow-{bad}").click()
    error = http.get(f"/v1/pipelines/{bad}").json()["error"]
    expect(page.get_by_test_id("runs-prun-error")).to_have_text(error)
    assert "lost.jsonl" in error
    expect(page.get_by_test_id("runs-step-attempts-govern")).to_have_text("1")
    page.get_by_test_id("runs-resume").click()
    expect(page.get_by_test_id("runs-action-done")).to_be_visible()
    # The retry ran and failed again: two attempts, both in the step's log.
    expect(page.get_by_test_id("runs-step-attempts-govern")).to_have_text("2", timeout=PIPELINE_MS)
    expect(page.get_by_test_id("runs-step-state-govern")).to_have_text("失败", timeout=PIPELINE_MS)
    shot(page, "runs-pipeline")

    # A second operator has the failed run open while the first cancels it: the resume
    # the second then asks for is refused by the server, in its words.
    other = new_page(820, 1180)
    login(other, platform.key)
    _go(other, f"runs/pipeline/{bad}")
    expect(other.get_by_test_id("runs-prun-status")).to_have_text("failed", timeout=PIPELINE_MS)
    cancelled = http.post(f"/v1/pipelines/{bad}/cancel", json={"reason": "数据集文件丢失"})
    assert cancelled.status_code == 200, cancelled.text
    other.get_by_test_id("runs-resume").click()
    refusal = other.get_by_test_id("runs-action-error")
    expect(refusal).to_contain_text("409")
    again = http.post(f"/v1/pipelines/{bad}/resume")
    assert again.status_code == 409, again.text
    expect(refusal).to_contain_text(again.json()["error"]["message"])

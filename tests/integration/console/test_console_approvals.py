"""The console's approvals inbox in a real Chromium against the real gateway: agent runs of
a graph on the tiny vLLM model that wait at an approval node, with the evidence shown,
decided in the browser (approve, edit then approve, reject with a reason), the filing
happening exactly once, the server's refusals shown in its words, and a tenant's approver
seeing only its tenant's runs.

The graph is deterministic on a random model: the clerk's draft is a few tokens; a first
approval (`check`, answered through the API) fills the form, as a clerk completing an
application would, and the second (`review`) is the one decided in the browser before the
`submit` tool files the form into a SQLite file."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from _console import login, shot
from _platform import Platform
from playwright.sync_api import Page, expect

from qingliang.platform.storage.keys import KeyStore

pytestmark = [pytest.mark.integration, pytest.mark.slow]

GRAPH = "console-approvals"
MANIFEST = """apiVersion: qingliang.io/v1
kind: AgentGraph
metadata: {{name: {name}, labels: {{domain: gov}}}}
spec:
  agents:
    - {{name: clerk, model: tiny, max_tokens: 8}}
  tools:
    - {{name: intake, kind: form, fields: [{{name: applicant}}]}}
    - {{name: file, kind: submit, form: intake, database: {db}}}
  nodes:
    - {{name: draft, type: agent, agent: clerk, next: check}}
    - {{name: check, type: approval, prompt: "Complete the application", next: review}}
    - {{name: review, type: approval, prompt: "File this application?", next: submit}}
    - {{name: submit, type: tool, tool: file}}
"""
#: A decision runs the rest of the graph (the filing) before the server answers.
DECIDE_MS = 60_000


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
    """The applied graph, its filings database and the keys that use it."""

    def __init__(self, p: Platform, db: Path) -> None:
        self.p = p
        self.db = db
        keys = KeyStore(p.settings.state_db)
        self.starter_key = keys.create("console-clerk", scopes=["agents:run"])[1]
        self.lead_key = keys.create("console-lead", scopes=["approve", "agents:run"])[1]
        self.starter = _client(p, self.starter_key)
        self.lead = _client(p, self.lead_key)

    def start(self, client: httpx.Client, text: str) -> str:
        """A run waiting at `check`."""
        r = client.post(f"/v1/agents/{GRAPH}/runs", json={"input": text, "stream": False})
        assert r.status_code == 200, r.text
        run = r.json()
        assert run["status"] == "waiting" and run["pending"]["node"] == "check", run
        return str(run["id"])

    def waiting_review(self, applicant: str, text: str = "我要办理居住证") -> str:
        """A run of the clerk's, its form filled at `check`, waiting at `review`."""
        run_id = self.start(self.starter, f"{text},申请人{applicant}")
        body = {
            "action": "edit",
            "forms": {"intake": {"applicant": applicant}},
            "comment": "补全申请人",
            "stream": False,
        }
        r = self.lead.post(f"/v1/agents/runs/{run_id}/resume", json=body)
        assert r.status_code == 200, r.text
        run = r.json()
        assert run["status"] == "waiting" and run["pending"]["node"] == "review", run
        return run_id

    def filings(self, run_id: str) -> list[dict]:
        if not self.db.exists():
            return []
        with sqlite3.connect(self.db) as c:
            rows = c.execute("SELECT values_json FROM submissions WHERE run_id = ?", (run_id,))
            return [json.loads(v) for (v,) in rows.fetchall()]


@pytest.fixture(scope="module")
def desk(platform: Platform, tmp_path_factory: pytest.TempPathFactory) -> Desk:
    db = tmp_path_factory.mktemp("console-approvals") / "filings.sqlite"
    path = platform.manifest(GRAPH, MANIFEST.format(name=GRAPH, db=db))
    platform.ctl.apply([path], wait=False, progress=False)
    return Desk(platform, db)


def _open(page: Page, run_id: str) -> None:
    """Click the run's line in the inbox (open) and wait for its evidence."""
    page.get_by_test_id(f"approvals-item-{run_id}").click()
    expect(page.get_by_test_id("approvals-detail")).to_be_visible()


def test_approve_files_once_and_a_second_approval_is_refused_in_the_servers_words(
    desk: Desk, new_page: Callable[[int, int], Page]
) -> None:
    run_id = desk.waiting_review("李雷")
    first, second = new_page(1280, 900), new_page(820, 1180)  # two approvers, one a tablet
    for page in (first, second):
        login(page, desk.lead_key)
        _go(page, "approvals")
        _open(page, run_id)

    # The evidence: the request, the question, the filled form, the draft, the decisions so far.
    pending = desk.lead.get(f"/v1/agents/runs/{run_id}").json()["pending"]
    expect(first.get_by_test_id("approvals-request")).to_contain_text("我要办理居住证,申请人李雷")
    expect(first.get_by_test_id("approvals-prompt")).to_have_text(pending["prompt"])
    expect(first.get_by_test_id("approvals-node")).to_have_text("review")
    expect(first.get_by_test_id("approvals-field-intake-applicant")).to_have_value("李雷")
    expect(first.get_by_test_id("approvals-answer")).to_have_value(pending["answer"])
    expect(first.get_by_test_id("approvals-approve")).to_have_text("批准")
    shot(first, "approvals")

    first.get_by_test_id("approvals-approve").click()
    outcome = first.get_by_test_id("approvals-outcome-status")
    expect(outcome).to_have_text("done", timeout=DECIDE_MS)
    answer = desk.lead.get(f"/v1/agents/runs/{run_id}").json()["answer"]
    assert answer == pending["answer"]  # approved as drafted
    expect(first.get_by_test_id("approvals-outcome-answer")).to_have_text(answer or "—")
    assert desk.filings(run_id) == [{"applicant": "李雷"}]
    # The item left the inbox.
    first.get_by_test_id("approvals-back").click()
    expect(first.get_by_test_id("approvals-refreshed")).to_be_visible()
    expect(first.get_by_test_id(f"approvals-item-{run_id}")).to_have_count(0)

    # The second approver still has the item open: the server refuses, and says why.
    second.get_by_test_id("approvals-approve").click()
    error = second.get_by_test_id("approvals-decision-error")
    expect(error).to_be_visible(timeout=DECIDE_MS)
    again = desk.lead.post(
        f"/v1/agents/runs/{run_id}/resume", json={"action": "approve", "stream": False}
    )
    assert again.status_code == 409, again.text
    expect(error).to_contain_text("409")
    expect(error).to_contain_text(again.json()["error"]["message"])
    # Opened again, it says it was decided and offers no buttons.
    second.reload()
    expect(second.get_by_test_id("approvals-decided")).to_contain_text("done")
    expect(second.get_by_test_id("approvals-approve")).to_have_count(0)
    assert desk.filings(run_id) == [{"applicant": "李雷"}]


def test_reject_needs_a_reason_and_the_run_history_shows_it_with_the_approver(
    desk: Desk, page: Page
) -> None:
    run_id = desk.waiting_review("王芳")
    login(page, desk.lead_key)
    _go(page, "approvals")
    _open(page, run_id)

    page.get_by_test_id("approvals-reject").click()
    expect(page.get_by_test_id("approvals-reason-error")).to_have_text("驳回必须填写理由。")
    assert desk.lead.get(f"/v1/agents/runs/{run_id}").json()["status"] == "waiting"

    reason = "居住证明材料不全,请补充租房合同后重新申请。"
    page.get_by_test_id("approvals-comment").fill(reason)
    page.get_by_test_id("approvals-reject").click()
    expect(page.get_by_test_id("approvals-outcome-status")).to_have_text(
        "rejected", timeout=DECIDE_MS
    )
    assert desk.filings(run_id) == []

    page.get_by_test_id("approvals-open-run").click()
    expect(page.get_by_test_id("runs-run-status")).to_have_text("rejected")
    decisions = page.get_by_test_id("runs-event-approval")
    expect(decisions).to_have_count(2)  # the API's edit at check, the browser's reject
    expect(decisions.nth(1)).to_contain_text("驳回")
    expect(decisions.nth(1).get_by_test_id("runs-approval-actor")).to_contain_text(
        "key:console-lead"
    )
    expect(decisions.nth(1).get_by_test_id("runs-approval-comment")).to_contain_text(reason)


def test_an_edited_answer_and_form_are_what_the_run_answers_and_files(
    desk: Desk, page: Page
) -> None:
    run_id = desk.waiting_review("张伟")
    login(page, desk.lead_key)
    _go(page, "approvals")
    _open(page, run_id)

    edited = "您的居住证申请已受理,请于 5 个工作日后到青石区政务服务中心领取。"
    page.get_by_test_id("approvals-answer").fill(edited)
    page.get_by_test_id("approvals-field-intake-applicant").fill("张伟华")
    approve = page.get_by_test_id("approvals-approve")
    expect(approve).to_have_text("按修改后的内容批准")
    expect(page.get_by_test_id("approvals-edited")).to_be_visible()
    approve.click()
    expect(page.get_by_test_id("approvals-outcome-status")).to_have_text("done", timeout=DECIDE_MS)
    expect(page.get_by_test_id("approvals-outcome-answer")).to_have_text(edited)
    run = desk.lead.get(f"/v1/agents/runs/{run_id}").json()
    assert run["answer"] == edited
    assert desk.filings(run_id) == [{"applicant": "张伟华"}]
    last = [e for e in run["events"] if e["type"] == "approval"][-1]
    assert last["action"] == "edit" and last["actor"] == "key:console-lead", last


def test_the_starters_own_approval_is_refused_with_the_servers_message(
    desk: Desk, platform: Platform, page: Page
) -> None:
    admin = _client(platform, platform.key)
    run_id = desk.start(admin, "我要办理居住证(管理员自己发起)")
    login(page, platform.key)
    _go(page, "approvals")
    _open(page, run_id)
    page.get_by_test_id("approvals-approve").click()
    error = page.get_by_test_id("approvals-decision-error")
    expect(error).to_contain_text("403", timeout=DECIDE_MS)
    expect(error).to_contain_text("another key with the `approve` scope must answer")
    assert admin.get(f"/v1/agents/runs/{run_id}").json()["status"] == "waiting"


def test_a_tenant_approver_sees_only_its_tenants_runs(
    desk: Desk, platform: Platform, page: Page
) -> None:
    keys = KeyStore(platform.settings.state_db)
    t1_clerk = keys.create("console-clerk-t1", scopes=["agents:run", "tenant:t1"])[1]
    t2_clerk = keys.create("console-clerk-t2", scopes=["agents:run", "tenant:t2"])[1]
    t1_lead = keys.create("console-lead-t1", scopes=["approve", "agents:run", "tenant:t1"])[1]
    mine = desk.start(_client(platform, t1_clerk), "t1 的居住证申请")
    theirs = desk.start(_client(platform, t2_clerk), "t2 的居住证申请")

    login(page, t1_lead)
    expect(page.get_by_test_id("whoami")).to_contain_text("租户: t1")
    _go(page, "approvals")
    expect(page.get_by_test_id(f"approvals-item-{mine}")).to_contain_text("t1 的居住证申请")
    # The same answer of the inbox holds (or not) the other tenant's run.
    expect(page.get_by_test_id(f"approvals-item-{theirs}")).to_have_count(0)
    expect(page.get_by_test_id("approvals-pipelines-hidden")).to_be_visible()
    shot(page, "approvals-tenant-t1")

    page.get_by_test_id("nav-runs").click()
    expect(page.get_by_test_id(f"runs-row-{mine}")).to_be_visible()
    expect(page.get_by_test_id(f"runs-row-{theirs}")).to_have_count(0)
    page.get_by_test_id("tab-pipeline").click()
    expect(page.get_by_test_id("runs-pipelines-hidden")).to_be_visible()

    # Another tenant's run by its address: the server's 404, not the run.
    _go(page, f"approvals/agent/{theirs}")
    error = page.get_by_test_id("approvals-load-error")
    expect(error).to_contain_text("404")
    expect(error).to_contain_text(f"run '{theirs}' not found")
    expect(page.get_by_test_id("approvals-evidence")).to_have_count(0)


RELEASE = {
    "dataset.yaml": """apiVersion: qingliang.io/v1
kind: Dataset
metadata: {name: console-permits}
spec:
  format: chat
  sources: [{path: data/qa.jsonl}]
  governance: [{step: schema}]
  split: {eval_fraction: 0.25, seed: 0}
""",
    "job.yaml": """apiVersion: qingliang.io/v1
kind: FineTuneJob
metadata: {{name: console-permits-lora}}
spec:
  base_model: {{source: {model}, name: tiny-llama}}
  lora: {{r: 4, alpha: 8, dropout: 0.0, target_modules: [all-linear]}}
  train: {{max_steps: 4, learning_rate: 0.01, batch_size: 4, max_seq_len: 64,
          lr_schedule: constant, checkpoint_every: 2}}
  data: {{dataset: console-permits, max_eval_records: 2}}
  output: {{adapter: console-permits-bot}}
  resources: {{cpus: 0.5}}
""",
}
STEPS = [
    {"type": "govern", "dataset": "dataset.yaml"},
    {"type": "finetune", "job": "job.yaml"},
    {"type": "evaluate", "max_records": 2, "max_new_tokens": 4},
    {"type": "approval", "message": "Release console-permits-bot?"},
]
#: Governing, training 4 steps of a LoRA on the tiny model and scoring it, on busy CPUs.
TRAIN_MS = 300_000


def test_a_pipelines_approval_shows_its_evaluation_and_is_decided_in_the_browser(
    desk: Desk, platform: Platform, http: httpx.Client, tmp_path: Path, page: Page
) -> None:
    (tmp_path / "data").mkdir()
    with (tmp_path / "data" / "qa.jsonl").open("w") as fh:
        for i in range(12):
            q, a = f"Where do I renew permit {i}?", f"Permit {i} is renewed at window {i % 4}."
            msgs = [{"role": "user", "content": q}, {"role": "assistant", "content": a}]
            fh.write(json.dumps({"messages": msgs}) + "\n")
    (tmp_path / "dataset.yaml").write_text(RELEASE["dataset.yaml"])
    (tmp_path / "job.yaml").write_text(RELEASE["job.yaml"].format(model=platform.models / "tiny"))
    manifest = {
        "apiVersion": "qingliang.io/v1",
        "kind": "Pipeline",
        "metadata": {"name": "console-release"},
        "spec": {"steps": STEPS},
    }
    r = http.post("/v1/pipelines", json={"manifest": manifest, "base_dir": str(tmp_path)})
    assert r.status_code == 202, r.text
    run_id = r.json()["id"]

    login(page, desk.lead_key)
    _go(page, "approvals")
    # The inbox is read every few seconds: the run shows once it waits.
    item = page.get_by_test_id(f"approvals-item-{run_id}")
    expect(item).to_contain_text("console-release", timeout=TRAIN_MS)
    waiting = http.get(f"/v1/pipelines/{run_id}").json()["waiting"]
    assert waiting["kind"] == "approval" and waiting["metrics"], waiting
    item.click()
    expect(page.get_by_test_id("approvals-prompt")).to_have_text("Release console-permits-bot?")
    expect(page.get_by_test_id("approvals-adapter")).to_have_text(waiting["adapter"])
    metrics = page.get_by_test_id("approvals-metrics")
    for name in waiting["metrics"]:
        expect(metrics).to_contain_text(name)
    shot(page, "approvals-pipeline")

    page.get_by_test_id("approvals-reject").click()
    expect(page.get_by_test_id("approvals-reason-error")).to_be_visible()
    page.get_by_test_id("approvals-comment").fill("评估结果符合要求")
    page.get_by_test_id("approvals-approve").click()
    expect(page.get_by_test_id("approvals-outcome-status")).to_have_text(
        "succeeded", timeout=DECIDE_MS
    )
    events = http.get(f"/v1/pipelines/{run_id}/events").json()["data"]
    decisions = [e for e in events if e["kind"] == "decision"]
    assert decisions == [
        {**decisions[0], "approve": True, "by": "key:console-lead", "reason": "评估结果符合要求"}
    ]

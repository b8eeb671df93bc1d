"""Agent graphs on the running platform: an AgentGraph applied like `qingliang apply`
answers through `/v1/agents`, routes with the shared router actor (the tiny vLLM model and
its adapter are the arms), pauses for approval, survives a SIGKILL of the Agents replica
while waiting, and submits its form exactly once."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import time
from pathlib import Path

import httpx
import pytest
from _platform import Platform, sse_events

from qingliang.platform.errors import ResolveError
from qingliang.platform.storage.keys import KeyStore

pytestmark = pytest.mark.integration

GRAPH = """apiVersion: qingliang.io/v1
kind: AgentGraph
metadata: {{name: it-desk, labels: {{domain: gov}}}}
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


def test_a_bad_graph_is_refused_naming_the_field(platform: Platform) -> None:
    path = platform.manifest("it-bad", GRAPH.format(db="x.sqlite").replace("tiny:a", "tiny:zz"))
    with pytest.raises(ResolveError, match=r"spec\.agents\[1\]\.model: deployment 'tiny' has no"):
        platform.ctl.apply([path], wait=False, progress=False)


def test_graph_routes_pauses_survives_a_replica_kill_and_submits_once(
    platform: Platform, http: httpx.Client, tmp_path: Path
) -> None:
    db = tmp_path / "requests.sqlite"
    path = platform.manifest("it-desk", GRAPH.format(db=db))
    changes = platform.ctl.apply([path], wait=False, progress=False)
    assert [(c.kind, c.action) for c in changes] == [("AgentGraph", "create")]
    listed = http.get("/v1/agents").json()
    assert "it-desk" in [g["id"] for g in listed["data"]]

    with http.stream("POST", "/v1/agents/it-desk/runs", json={"input": "我要办理居住证"}) as r:
        assert r.status_code == 200, r.read()
        events = sse_events(r)
    run_id = events[0]["run_id"]
    route = next(e for e in events if e["type"] == "route")
    assert route["arm"] in ("quick", "careful") and 0 < route["propensity"] <= 1
    assert events[-1]["type"] == "status" and events[-1]["status"] == "waiting"
    inbox = http.get("/v1/agents/approvals").json()["data"]
    assert run_id in [a["run_id"] if "run_id" in a else a["id"] for a in inbox]

    # The replica hosting the runs dies while the run waits; Serve starts a new one.
    platform.kill_agents()

    # The key that started the run may not approve it; a second operator key may.
    edit = {"action": "edit", "forms": {"intake": {"applicant": "李雷"}}, "stream": False}
    r = http.post(f"/v1/agents/runs/{run_id}/resume", json=edit)
    assert r.status_code == 403 and r.json()["error"]["code"] == "self_approval", r.text
    lead = KeyStore(platform.settings.state_db).create("it-agents-lead", scopes=["admin"])[1]
    r = http.post(
        f"/v1/agents/runs/{run_id}/resume",
        json=edit,
        headers={"Authorization": f"Bearer {lead}"},
    )
    assert r.status_code == 200, r.text
    run = r.json()
    assert run["status"] == "done", run
    again = http.post(f"/v1/agents/runs/{run_id}/resume", json={"action": "approve"})
    assert again.status_code == 409
    with sqlite3.connect(db) as c:
        rows = c.execute("SELECT values_json FROM submissions").fetchall()
    assert [json.loads(v) for (v,) in rows] == [{"applicant": "李雷"}]

    fb = http.post("/v1/feedback", json={"run_id": run_id, "score": 1})
    assert fb.status_code == 200 and fb.json()["decisions"] == 1
    bad = http.post("/v1/feedback", json={"run_id": run_id, "score": 7})
    assert bad.status_code == 400 and "score" in bad.text
    shown = http.get(f"/v1/agents/runs/{run_id}").json()
    kinds = [e["type"] for e in shown["events"]]
    assert "route" in kinds and "approval" in kinds and kinds[-1] == "status"
    assert (platform.settings.home / "router.sqlite").exists()


ROUTED = """apiVersion: qingliang.io/v1
kind: AgentGraph
metadata: {name: it-route}
spec:
  agents:
    - {name: clerk, model: tiny, max_tokens: 4}
    - {name: expert, model: "tiny:a", max_tokens: 4}
  nodes:
    - {name: triage, type: router, routes: [quick, careful]}
    - {name: quick, type: agent, agent: clerk}
    - {name: careful, type: agent, agent: expert}
"""


def _router_updates(home: Path) -> int:
    """How many rewards the stored policy has learned from."""
    with sqlite3.connect(home / "router.sqlite") as c:
        row = c.execute(
            "SELECT state FROM router_state WHERE router = 'it-route/triage'"
        ).fetchone()
    return int(json.loads(row[0])["updates"]) if row else 0


def _router_actor_pid(p: Platform) -> int:
    url = f"http://127.0.0.1:{p.settings.dashboard_port}/api/v0/actors"
    actors = httpx.get(url, params={"detail": "true", "limit": 1000}, timeout=30).json()
    for a in actors["data"]["result"]["result"]:
        if a.get("name") == "qingliang-router" and a.get("state") == "ALIVE":
            return int(a["pid"])
    raise AssertionError("no live qingliang-router actor")


def test_the_shared_router_keeps_what_it_learned_when_its_actor_dies(
    platform: Platform, http: httpx.Client
) -> None:
    platform.ctl.apply([platform.manifest("it-route", ROUTED)], wait=False, progress=False)

    def one_run() -> None:
        r = http.post("/v1/agents/it-route/runs", json={"input": "问一下", "stream": False})
        assert r.status_code == 200 and r.json()["status"] == "done", r.text
        assert (
            http.post("/v1/feedback", json={"run_id": r.json()["id"], "score": 1}).json()[
                "decisions"
            ]
            == 1
        )

    for _ in range(3):
        one_run()
    learned = _router_updates(platform.settings.home)
    assert learned >= 3  # one update per finished run (and per feedback)
    os.kill(_router_actor_pid(platform), signal.SIGKILL)
    deadline = time.monotonic() + 60
    while True:  # Ray restarts the detached actor (max_restarts=-1)
        try:
            _router_actor_pid(platform)
            break
        except (AssertionError, httpx.HTTPError, KeyError):
            if time.monotonic() > deadline:
                raise
            time.sleep(1)
    one_run()
    # The restarted actor loaded the stored policy and went on from it.
    assert _router_updates(platform.settings.home) > learned

"""Crash and resume: a real process running a graph is killed with SIGKILL mid-run; a new
process continues the run from its checkpoint, and the side effect (a submitted form, a
row in SQLite) happens exactly once — in a tool node, in a nested graph, and in a nested
graph called as a tool (the case LangGraph's own subgraph resume repeats)."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

CHILD = Path(__file__).with_name("_agents_child.py")

FORMS = """
  - name: intake
    kind: form
    fields:
      - {name: applicant}
      - {name: phone, pattern: "1[3-9][0-9]{9}"}
  - name: file
    kind: submit
    form: intake
    database: requests.sqlite
    table: requests
"""

GRAPHS = {
    "desk.yaml": f"""apiVersion: qingliang.io/v1
kind: AgentGraph
metadata: {{name: desk}}
spec:
  agents:
    - {{name: clerk, model: clerk, tools: [intake]}}
  tools:{FORMS}
  nodes:
    - {{name: take, type: agent, agent: clerk, next: review}}
    - {{name: review, type: approval, next: submit}}
    - {{name: submit, type: tool, tool: file}}
""",
    "filing.yaml": f"""apiVersion: qingliang.io/v1
kind: AgentGraph
metadata: {{name: filing}}
spec:
  agents:
    - {{name: confirmer, model: confirm}}
  tools:{FORMS}
  nodes:
    - {{name: submit, type: tool, tool: file, next: check}}
    - {{name: check, type: approval, next: confirm}}
    - {{name: confirm, type: agent, agent: confirmer}}
""",
    "front.yaml": f"""apiVersion: qingliang.io/v1
kind: AgentGraph
metadata: {{name: front}}
spec:
  agents:
    - {{name: clerk, model: clerk, tools: [intake]}}
  tools:{FORMS}
  nodes:
    - {{name: take, type: agent, agent: clerk, next: filing}}
    - {{name: filing, type: graph, graph: filing}}
""",
    "front2.yaml": f"""apiVersion: qingliang.io/v1
kind: AgentGraph
metadata: {{name: front2}}
spec:
  agents:
    - {{name: clerk2, model: clerk2, tools: [intake, ask_filing]}}
  tools:{FORMS}
  - {{name: ask_filing, kind: call_agent, graph: filing}}
  nodes:
    - {{name: take, type: agent, agent: clerk2}}
""",
}


@pytest.fixture
def world(tmp_path: Path) -> tuple[Path, Path]:
    manifests = tmp_path / "graphs"
    manifests.mkdir()
    for name, text in GRAPHS.items():
        (manifests / name).write_text(text)
    return tmp_path / "home", manifests


def _run(world, *args: str, env: dict | None = None) -> dict:
    home, manifests = world
    out = subprocess.run(
        [sys.executable, str(CHILD), str(home), str(manifests), *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **(env or {})},
    )
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def _run_until_killed(world, marker: str, *args: str, env: dict) -> None:
    """Start a child, wait for ``marker`` on its stdout, then SIGKILL it."""
    home, manifests = world
    proc = subprocess.Popen(
        [sys.executable, str(CHILD), str(home), str(manifests), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, **env},
    )
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            if line.strip() == marker:
                break
        else:
            raise AssertionError(f"child ended without {marker}: {proc.stderr.read()[-3000:]}")
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL


def _rows(world) -> list[tuple]:
    db = world[1] / "requests.sqlite"
    with sqlite3.connect(db) as c:
        return c.execute("SELECT id, idempotency_key, values_json FROM requests").fetchall()


def _model_calls(world) -> list[str]:
    return (world[0] / "model-calls.log").read_text().split()


def test_killed_right_after_the_submit_commits_submits_once(world) -> None:
    first = _run(world, "start", "desk")
    assert first["status"] == "waiting"
    run_id = first["run_id"]
    # Approve in a process that dies right after the row is committed, before the
    # node finishes (so neither the journal nor the checkpoint knows it happened).
    _run_until_killed(world, "SUBMITTED", "resume", run_id, env={"QL_BLOCK_AFTER_SUBMIT": "1"})
    assert len(_rows(world)) == 1
    done = _run(world, "recover")
    assert done["run_id"] == run_id and done["status"] == "done"
    rows = _rows(world)
    assert len(rows) == 1, rows
    assert json.loads(rows[0][2]) == {"applicant": "Li Lei", "phone": "13800000000"}
    assert done["results"]["submit"]["submission_id"] == rows[0][0]
    assert _model_calls(world) == ["clerk", "clerk"]  # form call + answer; never repeated


def test_nested_graph_resumes_after_a_kill_without_repeating_its_submit(world) -> None:
    first = _run(world, "start", "front")
    assert first["status"] == "waiting"  # the nested graph's approval pauses the parent
    assert len(_rows(world)) == 1
    _run_until_killed(
        world, "BLOCKED", "resume", first["run_id"], env={"QL_BLOCK_MODEL": "confirm"}
    )
    done = _run(world, "recover")
    assert done["status"] == "done"
    assert done["answer"] == "Confirmed: the request is filed."
    assert len(_rows(world)) == 1
    # The parent's agent node re-executed twice (resume, recovery); its model calls were
    # replayed from the journal, not repeated.
    assert _model_calls(world).count("clerk") == 2
    assert _model_calls(world).count("confirm") == 2  # the killed call, then the real one


def test_nested_graph_called_as_a_tool_keeps_its_side_effect_once(world) -> None:
    first = _run(world, "start", "front2")
    assert first["status"] == "waiting"
    assert len(_rows(world)) == 1
    _run_until_killed(
        world, "BLOCKED", "resume", first["run_id"], env={"QL_BLOCK_MODEL": "confirm"}
    )
    done = _run(world, "recover")
    assert done["status"] == "done"
    assert done["answer"] == "Filed, and the filing desk confirmed."
    assert len(_rows(world)) == 1
    calls = _model_calls(world)
    assert calls.count("clerk2") == 3  # intake, ask_filing, answer: each exactly once

"""``qingliang agents …`` against a real HTTP server: uvicorn on 127.0.0.1 (a free port)
serving the gateway app with real keys and a real AgentService (see test_agents_api.py for
what is scripted). The run file points the CLI at it, as ``qingliang up`` would."""

from __future__ import annotations

import asyncio
import json
import os
import re
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import uvicorn
from typer.testing import CliRunner

from qingliang.platform.cli.main import app
from qingliang.platform.control.cluster import RunInfo
from qingliang.platform.settings import Settings
from tests.unit.agents.test_agents_api import AGENT, MODEL, make_app, make_keys, make_service

runner = CliRunner()


class Server:
    """The app on a uvicorn server in a thread; the service closes on the server's loop."""

    def __init__(self, home: Path, base: Path) -> None:
        self.service, self.router = make_service(home, base)
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        config = uvicorn.Config(make_app(home, self.service), log_level="warning", lifespan="off")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self._serve, daemon=True)

    def _serve(self) -> None:
        loop = asyncio.new_event_loop()
        try:
            loop.run_until_complete(self.server.serve(sockets=[self.sock]))
            loop.run_until_complete(self.service.close())
        finally:
            loop.close()

    def __enter__(self) -> Server:
        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started:
            assert time.monotonic() < deadline and self.thread.is_alive(), "server did not start"
            time.sleep(0.01)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(10)
        self.sock.close()


def point_cli_at(home: Path, port: int) -> None:
    """Write the run file ``qingliang up`` leaves (this process stands in for Ray's)."""
    RunInfo(
        pid=os.getpid(),
        pgid=os.getpgid(0),
        gcs_address="127.0.0.1:0",
        dashboard_url="",
        metrics_port=0,
        http_port=port,
        temp_dir="",
        started_at=time.time(),
    ).save(Settings(home=home).run_file)


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    h = tmp_path / "home"
    monkeypatch.setenv("QINGLIANG_HOME", str(h))
    monkeypatch.delenv("QINGLIANG_API_KEY", raising=False)
    monkeypatch.setenv("COLUMNS", "300")  # rich tables would cut long ids
    return h


@pytest.fixture
def platform(home: Path, tmp_path: Path) -> Iterator[Any]:
    with Server(home, tmp_path / "desk") as server:
        server.keys = make_keys(home)  # type: ignore[attr-defined]
        (home / "api-key").write_text(server.keys["ops"] + "\n")  # type: ignore[attr-defined]
        point_cli_at(home, server.port)
        yield server


def _ok(args: list[str], env: dict[str, str] | None = None) -> str:
    result = runner.invoke(app, args, env=env)
    assert result.exit_code == 0, result.output
    return result.output


def _fails(args: list[str], env: dict[str, str] | None = None) -> str:
    result = runner.invoke(app, args, env=env)
    assert result.exit_code == 1, result.output
    return result.output


def _run_id(out: str) -> str:
    found = re.search(r"\brun (run_[0-9a-f]+)", out)
    assert found, out
    return found.group(1)


def test_help_names_every_command() -> None:
    out = runner.invoke(app, ["agents", "--help"]).output
    for cmd in ("list", "run", "runs", "show", "approvals", "approve", "reject", "feedback"):
        assert re.search(rf"│ {cmd}\s", out), cmd
    assert "agents" in runner.invoke(app, ["--help"]).output


def test_list_run_streamed_and_show(platform: Any) -> None:
    out = _ok(["agents", "list"])
    assert "desk" in out and "echo" in out and "triage: quick | careful" in out
    assert "clerk=m1" in out and "senior=m2:ad" in out

    out = _ok(["agents", "run", "desk", "quick: when do clinics open?"])
    lines = out.splitlines()
    run_id = _run_id(lines[0])
    assert lines[0] == f"run {run_id} (desk)"
    assert lines[1] == "▸ triage"
    route = re.fullmatch(
        r"  route → (\w+) \(propensity (0\.\d\d|1\.00), router desk/triage\)", lines[2]
    )
    assert route, lines[2]
    arm = route.group(1)
    assert lines[3] == f"▸ {arm} (agent {AGENT[arm]})"
    # Each model call names what answered (a base model here), after its streamed text.
    assert lines[4] == f"  model {MODEL[arm]} → base model"
    assert lines[5].startswith('  tool clinics({"query": "SELECT name FROM clinic"}) → ')
    assert "Peking Union" in lines[5]
    assert lines[6] == f"{MODEL[arm]} answers: quick: when do clinics open?"  # the deltas
    assert lines[7] == f"  model {MODEL[arm]} → base model"
    assert lines[8] == "  [1] policy: policy.md §2"
    assert lines[9:] == ["▸ review", "done"]
    assert out.count(" answers: ") == 1  # streamed once, not repeated at the end

    out = _ok(["agents", "show", run_id])
    assert f"{run_id}  desk  done" in out and "input: quick: when do clinics open?" in out
    assert lines[2] in out and " answers: quick" in out
    shown = json.loads(_ok(["agents", "show", run_id, "--json"]))
    assert shown["status"] == "done" and shown["events"][0]["type"] == "run"

    out = _ok(["agents", "runs"])
    assert run_id in out and "done" in out and " answers: quick" in out


def test_waiting_run_then_approve_edit_and_reject(platform: Any) -> None:
    out = _ok(["agents", "run", "desk", "careful: may I visit?"])
    run_id = _run_id(out)
    assert "  route → " in out and "answers: careful: may I visit?" in out
    assert "waiting for approval at node review: Send this careful answer?" in out
    assert f"  qingliang agents approve {run_id}\n" in out
    assert f"  qingliang agents reject {run_id}\n" in out

    out = _ok(["agents", "approvals"])
    assert run_id in out and "review" in out and "Send this careful answer?" in out
    assert " answers: careful" in out
    assert _ok(["agents", "runs", "--status", "waiting"]).count("run_") == 1

    # The operator key started the run: it may not answer the approval; another key may.
    assert "another key with the `approve` scope" in _fails(["agents", "approve", run_id])
    lead = {"QINGLIANG_API_KEY": platform.keys["lead"]}
    out = _ok(
        ["agents", "approve", run_id, "--edit-answer", "Yes, from 8 am.", "--comment", "short"],
        env=lead,
    )
    assert out.splitlines() == [
        f"run {run_id} (desk)",
        "  edit by key:lead: short",
        "▸ review",
        "Yes, from 8 am.",
        "done",
    ]
    assert "not waiting" in _fails(["agents", "approve", run_id], env=lead)
    assert _ok(["agents", "approvals"]).strip() == "no runs are waiting for approval"

    second = _run_id(_ok(["agents", "run", "desk", "careful: and on Sunday?"]))
    out = _ok(["agents", "reject", second, "--comment", "check the rota"], env=lead)
    assert "  reject by key:lead" in out and out.rstrip().endswith("rejected: rejected at approval")
    third = _run_id(_ok(["agents", "run", "desk", "careful: a third one"]))
    out = _ok(["agents", "approve", third], env=lead)
    assert "  approve by key:lead" in out and out.rstrip().endswith("done")


def test_no_stream_json_attachments_and_feedback(platform: Any, tmp_path: Path) -> None:
    out = _ok(["agents", "run", "echo", "hello there", "--no-stream", "--json"])
    run = json.loads(out)
    assert run["status"] == "done" and run["answer"] == "m3 answers: hello there"

    out = _ok(["agents", "run", "echo", "hello again", "--no-stream"])
    assert "m3 answers: hello again\ndone" in out

    lines = _ok(["agents", "run", "echo", "as lines", "--json"]).splitlines()
    events = [json.loads(line) for line in lines]
    assert events[0]["type"] == "run" and events[-1]["status"] == "done"
    assert any(e["type"] == "token" for e in events)

    note = tmp_path / "note.txt"
    note.write_text("hello", encoding="utf-8")
    out = _ok(["agents", "run", "echo", "with a file", "--attach", str(note), "--domain", "gov"])
    run_id = _run_id(out)
    shown = json.loads(_ok(["agents", "show", run_id, "--json"]))
    assert shown["input"] == {"input": "with a file", "domain": "gov", "attachments": ["note.txt"]}

    routed = _run_id(_ok(["agents", "run", "desk", "quick one"]))
    out = _ok(["agents", "feedback", routed, "-1", "--comment", "wrong clinic"])
    assert out.strip() == f"feedback -1 recorded for {routed} (1 routing decision updated)"
    out = _ok(["agents", "feedback", run_id, "0.5"])
    assert "(0 routing decisions updated)" in out


def test_errors_exit_1_with_the_api_message(platform: Any, monkeypatch: Any) -> None:
    out = _fails(["agents", "run", "dsek", "hi"])
    assert "agent graph 'dsek' not found (did you mean 'desk'?)" in out
    out = _fails(["agents", "run", "desk", "hi", "--no-stream", "--attach", "/no/such/file"])
    assert "no such file: /no/such/file" in out
    waiting = _run_id(_ok(["agents", "run", "desk", "careful: wait"]))
    assert "outside -1..1" in _fails(["agents", "feedback", waiting, "2"])
    assert "is not one of" in _fails(["agents", "runs", "--status", "sleeping"])
    assert "not found" in _fails(["agents", "show", "run_nope"])
    assert "not found" in _fails(["agents", "approve", "run_nope"])

    # Another tenant's key: the run does not exist for it.
    monkeypatch.setenv("QINGLIANG_API_KEY", platform.keys["b"])
    assert f"run {waiting!r} not found" in _fails(["agents", "show", waiting])
    assert f"run {waiting!r} not found" in _fails(["agents", "reject", waiting])
    assert _ok(["agents", "approvals"]).strip() == "no runs are waiting for approval"
    monkeypatch.setenv("QINGLIANG_API_KEY", "ql-not-a-key")
    assert "invalid or revoked API key" in _fails(["agents", "runs"])


def test_a_platform_that_is_not_running(home: Path) -> None:
    out = _fails(["agents", "runs"])
    assert "the platform is not running: start it with `qingliang up`" in out
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    point_cli_at(home, port)
    out = _fails(["agents", "run", "desk", "hi"])
    assert "cannot reach the platform at http://127.0.0.1:" in out
    assert "start it with `qingliang up`" in out

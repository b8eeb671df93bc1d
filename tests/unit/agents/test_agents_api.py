"""The /v1/agents and /v1/feedback routes through the gateway app, with real keys (KeyAuth
over SQLite) and a real AgentService: LangGraph with the SQLite checkpointer, the run store,
the real router (LinUCB, seed 0, in-process) and the real SQL tool. Only two boundaries are
scripted: the chat model (calls the SQL tool once when offered, then answers word by word,
repeating the request) and the knowledge search (one hit). The approval node asks when the
answer says "careful", so tests choose which runs wait whatever arm the router picks.

One TestClient (one event loop) serves each test: runs execute in background tasks on it.
"""

from __future__ import annotations

import json
import re
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from qingliang.agents.api import LocalAgents
from qingliang.agents.catalog import StaticCatalog
from qingliang.agents.llm import ChatReply, ToolCall
from qingliang.agents.manifest import AgentGraph
from qingliang.agents.routing.actor import LocalRouter
from qingliang.agents.routing.router import RouterService
from qingliang.agents.service import AgentService
from qingliang.agents.state import GraphDef
from qingliang.platform.errors import Conflict
from qingliang.platform.gateway.app import create_app
from qingliang.platform.gateway.auth.keys import KeyAuth
from qingliang.platform.storage.keys import KeyStore


class ScriptedChat:
    """Calls the ``clinics`` tool once when tools are offered, then answers word by word."""

    async def complete(
        self,
        model: str,
        messages: list[dict],
        *,
        tools: list | None = None,
        max_tokens: int = 256,
        temperature: float = 0.0,
        on_delta: Any = None,
        user: str | None = None,
    ) -> ChatReply:
        if tools and not any(m["role"] == "tool" for m in messages):
            call = ToolCall("call-1", "clinics", {"query": "SELECT name FROM clinic"})
            return ChatReply("", [call], 3, model)
        words = [model, "answers:", *messages[1]["content"].splitlines()[0].split()]
        if on_delta is not None:
            for i, word in enumerate(words):
                on_delta(word if i == 0 else " " + word)
        return ChatReply(" ".join(words), [], len(words), model)


def search(kb: str, query: str, *, tenant: str | None, limit: int, mode: str) -> list[dict]:
    return [{"source": "policy.md", "locator": "§2", "text": "Clinics open at 8.", "score": 0.9}]


DESK = {
    "apiVersion": "qingliang.io/v1",
    "kind": "AgentGraph",
    "metadata": {"name": "desk", "description": "Front desk: quick or careful answers."},
    "spec": {
        "agents": [
            {
                "name": "clerk",
                "model": "m1",
                "role": "answers quickly",
                "tools": ["clinics"],
                "knowledge": ["policy"],
            },
            {
                "name": "senior",
                "model": "m2:ad",
                "role": "answers carefully",
                "tools": ["clinics"],
                "knowledge": ["policy"],
            },
        ],
        "tools": [{"kind": "sql", "name": "clinics", "database": "clinics.sqlite"}],
        "nodes": [
            {"name": "triage", "type": "router", "routes": ["quick", "careful"]},
            {"name": "quick", "type": "agent", "agent": "clerk", "next": "review"},
            {"name": "careful", "type": "agent", "agent": "senior", "next": "review"},
            {
                "name": "review",
                "type": "approval",
                "when": {"pattern": "careful"},
                "prompt": "Send this careful answer?",
            },
        ],
    },
}
ECHO = {
    "apiVersion": "qingliang.io/v1",
    "kind": "AgentGraph",
    "metadata": {"name": "echo"},
    "spec": {
        "agents": [{"name": "parrot", "model": "m3"}],
        "nodes": [{"name": "say", "type": "agent", "agent": "parrot"}],
    },
}


#: The agent and model behind each arm of the ``desk`` router.
AGENT = {"quick": "clerk", "careful": "senior"}
MODEL = {"quick": "m1", "careful": "m2:ad"}


def make_service(home: Path, base: Path) -> tuple[AgentService, RouterService]:
    """A real AgentService over the ``desk`` and ``echo`` graphs (``base`` holds the DB)."""
    base.mkdir(parents=True, exist_ok=True)
    with sqlite3.connect(base / "clinics.sqlite") as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS clinic (name TEXT)")
        conn.execute("INSERT INTO clinic VALUES ('Peking Union')")
    graphs = [GraphDef(AgentGraph.model_validate(g), base) for g in (DESK, ECHO)]
    router = RouterService(home / "router.sqlite")
    service = AgentService(
        home,
        chat=ScriptedChat(),
        catalog=StaticCatalog(graphs),
        router=LocalRouter(router),
        knowledge=search,
    )
    return service, router


class NoModels:
    def models(self) -> list:
        return []

    async def ready(self) -> dict:
        return {}


def make_app(home: Path, service: AgentService) -> Any:
    db = home / "state.sqlite"
    return create_app(NoModels(), None, KeyAuth(db, True), agents=LocalAgents(service))  # type: ignore[arg-type]


def make_keys(home: Path) -> dict[str, str]:
    keys = KeyStore(home / "state.sqlite")
    return {
        name: keys.create(name, scopes=scopes)[1]
        for name, scopes in {
            "a": ("inference", "agents:run", "approve", "tenant:city-a"),
            "a-lead": ("approve", "tenant:city-a"),
            "b": ("inference", "agents:run", "approve", "tenant:city-b"),
            "ops": ("admin",),
            "lead": ("admin",),
        }.items()
    }


@pytest.fixture
def client(tmp_path: Path) -> Iterator[Any]:
    home = tmp_path / "home"
    service, router = make_service(home, tmp_path / "desk")
    with TestClient(make_app(home, service)) as c:
        c.keys = make_keys(home)  # type: ignore[attr-defined]
        c.router = router  # type: ignore[attr-defined]
        yield c
        c.portal.call(service.close)  # type: ignore[union-attr]


def _h(client: Any, who: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {client.keys[who]}"}


def sse(text: str) -> list[Any]:
    """The ``data:`` payloads of an event stream (``[DONE]`` kept as a string)."""
    out: list[Any] = []
    for block in text.split("\n\n"):
        if block.startswith("data: "):
            data = block[len("data: ") :]
            out.append(data if data == "[DONE]" else json.loads(data))
    assert text.endswith("\n\n")
    return out


def start(client: Any, text: str, who: str = "ops", graph: str = "desk", **body: Any) -> Any:
    return client.post(
        f"/v1/agents/{graph}/runs", json={"input": text, **body}, headers=_h(client, who)
    )


def waiting_run(client: Any, who: str = "ops") -> str:
    r = start(client, "careful: when do clinics open?", who, stream=False)
    assert r.status_code == 200, r.text
    assert r.json()["status"] == "waiting"
    return r.json()["id"]


def _error(r: Any, status: int, param: str | None = None) -> str:
    assert r.status_code == status, r.text
    err = r.json()["error"]
    if param is not None:
        assert err["param"] == param, err
    return str(err["message"])


def test_streamed_run_sends_every_event_in_order_then_done(client: Any) -> None:
    r = start(client, "quick: when do clinics open?")
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/event-stream")
    events = sse(r.text)
    assert events[-1] == "[DONE]"
    events = events[:-1]
    kinds = [e["type"] for e in events]
    squeezed = [k for i, k in enumerate(kinds) if k != "token" or kinds[i - 1] != "token"]
    assert squeezed == [
        "run",
        "node",
        "route",
        "node",
        "model",
        "tool",
        "token",
        "model",
        "citations",
        "node",
        "status",
    ]
    run_id = events[0]["run_id"]
    assert events[0] == {"type": "run", "run_id": run_id, "graph": "desk"}
    route = events[2]
    assert route["node"] == "triage" and route["router"] == "desk/triage"
    assert route["arm"] in ("quick", "careful") and 0 < route["propensity"] <= 1
    assert route["decision_id"]
    assert events[3] == {"type": "node", "node": route["arm"], "agent": AGENT[route["arm"]]}
    assert events[5]["tool"] == "clinics" and "Peking Union" in events[5]["result"]
    # Each model call says what answered (here a base model: no adapter).
    models = [e for e in events if e["type"] == "model"]
    assert [e["node"] for e in models] == [route["arm"]] * 2
    assert all(e["adapter"] is None and e["adapter_ref"] is None for e in models)
    tokens = "".join(e["delta"] for e in events if e["type"] == "token")
    assert kinds.count("token") > 3  # deltas, not one lump
    final = events[-1]
    assert final["status"] == "done" and final["answer"] == tokens
    assert tokens == f"{MODEL[route['arm']]} answers: quick: when do clinics open?"
    assert events[-3]["citations"][0]["source"] == "policy.md"

    got = client.get(f"/v1/agents/runs/{run_id}", headers=_h(client, "ops")).json()
    assert got["status"] == "done" and got["answer"] == tokens and got["tenant"] is None
    assert got["actor"].startswith("key:ops")
    stored = [e["type"] for e in got["events"]]
    assert stored == [k for k in squeezed if k != "token"]  # the same, without token deltas
    listed = client.get(f"/v1/agents/runs/{run_id}/events", headers=_h(client, "ops")).json()
    assert listed["data"] == got["events"]


def test_non_stream_run_returns_the_run_and_its_events(client: Any) -> None:
    r = start(client, "hello there", graph="echo", stream=False)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("application/json")
    run = r.json()
    assert run["object"] == "agent.run" and run["graph"] == "echo"
    assert run["status"] == "done" and run["answer"] == "m3 answers: hello there"
    assert run["input"]["input"] == "hello there" and run["tokens"] == 4
    assert [e["type"] for e in run["events"]] == ["run", "node", "model", "status"]


def test_approval_inbox_and_resume_with_approve_edit_reject(client: Any) -> None:
    ids = [waiting_run(client) for _ in range(3)]
    inbox = client.get("/v1/agents/approvals", headers=_h(client, "ops")).json()["data"]
    assert sorted(i["run_id"] for i in inbox) == sorted(ids)
    item = next(i for i in inbox if i["run_id"] == ids[0])
    assert item["graph"] == "desk" and item["node"] == "review"
    assert item["prompt"] == "Send this careful answer?"
    assert re.fullmatch(r"(m1|m2:ad) answers: careful: when do clinics open\?", item["answer"])
    assert item["forms"] == {} and item["waiting_since"] > 0
    assert item["input"] == "careful: when do clinics open?"

    # approve, streamed: the run event, the approval, the approval node again, the end
    r = client.post(
        f"/v1/agents/runs/{ids[0]}/resume",
        json={"action": "approve", "comment": "fine"},
        headers=_h(client, "lead"),
    )
    assert r.status_code == 200, r.text
    events = sse(r.text)
    assert events[-1] == "[DONE]"
    assert [e["type"] for e in events[:-1]] == ["run", "approval", "node", "status"]
    assert events[0] == {"type": "run", "run_id": ids[0], "graph": "desk"}
    assert events[1]["action"] == "approve" and events[1]["comment"] == "fine"
    assert events[1]["actor"].startswith("key:lead")
    assert events[-2]["status"] == "done" and events[-2]["answer"] == item["answer"]

    # edit, not streamed: the edited answer is the run's answer
    r = client.post(
        f"/v1/agents/runs/{ids[1]}/resume",
        json={"action": "edit", "answer": "Clinics open at 8.", "stream": False},
        headers=_h(client, "lead"),
    )
    assert r.status_code == 200, r.text
    assert r.json()["status"] == "done" and r.json()["answer"] == "Clinics open at 8."
    assert "approval" in [e["type"] for e in r.json()["events"]]

    # reject
    r = client.post(
        f"/v1/agents/runs/{ids[2]}/resume",
        json={"action": "reject", "comment": "no", "stream": False},
        headers=_h(client, "lead"),
    )
    assert r.status_code == 200, r.text
    assert r.json()["status"] == "rejected" and r.json()["reason"] == "rejected at approval"

    assert client.get("/v1/agents/approvals", headers=_h(client, "ops")).json()["data"] == []
    # Each finished run closed its routing decision (the router learned from the verdict).
    assert client.router.stats("desk/triage")["closed"] == 3

    # a second resume, and a resume of a run that never waited: 409, nothing changes
    for run_id in ids:
        r = client.post(
            f"/v1/agents/runs/{run_id}/resume",
            json={"action": "approve"},
            headers=_h(client, "ops"),
        )
        assert "not waiting" in _error(r, 409)
    done = sse(start(client, "quick question").text)[0]["run_id"]
    r = client.post(
        f"/v1/agents/runs/{done}/resume", json={"action": "reject"}, headers=_h(client, "ops")
    )
    assert "is done, not waiting" in _error(r, 409)
    after = client.get(f"/v1/agents/runs/{ids[2]}", headers=_h(client, "ops")).json()
    assert after["status"] == "rejected"


def test_bad_requests_are_4xx_naming_the_field(client: Any) -> None:
    ops = _h(client, "ops")
    r = start(client, "hi", graph="dsek")
    msg = _error(r, 404, "name")
    assert "'dsek' not found (did you mean 'desk'?)" in msg and "applied: desk, echo" in msg
    assert r.json()["error"]["code"] == "agent_not_found"
    r = client.post("/v1/agents/desk/runs", json={"inptu": "hi"}, headers=ops)
    assert "did you mean 'input'?" in _error(r, 400, "inptu")
    r = client.post("/v1/agents/desk/runs", json={"domain": "gov"}, headers=ops)
    assert "`input` is required" in _error(r, 400, "input")
    r = client.post("/v1/agents/desk/runs", json={"input": "hi", "stream": "yes"}, headers=ops)
    _error(r, 400, "stream")
    r = client.post("/v1/agents/desk/runs", content=b"{nope", headers=ops)
    assert "not valid JSON" in _error(r, 400)
    r = client.post("/v1/agents/desk/runs", json=["hi"], headers=ops)
    assert "JSON object" in _error(r, 400)
    r = client.post(
        "/v1/agents/desk/runs",
        json={"input": "hi", "attachments": [{"name": "../x.png", "data": "AA=="}]},
        headers=ops,
    )
    _error(r, 400, "attachments[0]")

    run_id = waiting_run(client)
    resume = f"/v1/agents/runs/{run_id}/resume"
    assert "approve, edit or reject" in _error(
        client.post(resume, json={"action": "ok"}, headers=ops), 400, "action"
    )
    _error(client.post(resume, json={}, headers=ops), 400, "action")
    _error(client.post(resume, json={"action": "edit"}, headers=ops), 400, "answer")
    r = client.post(resume, json={"action": "edit", "forms": {"nope": {}}}, headers=ops)
    assert "forms.nope: unknown form" in _error(r, 400, "forms.nope")
    r = client.post(resume, json={"action": "approve", "anwser": "x"}, headers=ops)
    assert "did you mean 'answer'?" in _error(r, 400, "anwser")
    _error(
        client.post("/v1/agents/runs/run_nope/resume", json={"action": "approve"}, headers=ops), 404
    )
    # None of that touched the run: it still waits.
    assert client.get(f"/v1/agents/runs/{run_id}", headers=ops).json()["status"] == "waiting"

    fb = "/v1/feedback"
    assert "outside -1..1" in _error(
        client.post(fb, json={"run_id": run_id, "score": 2}, headers=ops), 400, "score"
    )
    _error(client.post(fb, json={"run_id": run_id, "score": "good"}, headers=ops), 400, "score")
    _error(client.post(fb, json={"run_id": run_id, "score": True}, headers=ops), 400, "score")
    _error(client.post(fb, json={"run_id": run_id}, headers=ops), 400, "score")
    _error(client.post(fb, json={"score": 1}, headers=ops), 400, "run_id")
    _error(client.post(fb, json={"run_id": 7, "score": 1}, headers=ops), 400, "run_id")
    r = client.post(fb, json={"run_id": run_id, "scroe": 1}, headers=ops)
    assert "did you mean 'score'?" in _error(r, 400, "scroe")
    _error(client.post(fb, json={"run_id": run_id, "score": 1, "comment": 3}, headers=ops), 400)
    _error(client.post(fb, json={"run_id": "run_nope", "score": 1}, headers=ops), 404)

    _error(client.get("/v1/agents/runs?status=sleeping", headers=ops), 400, "status")
    _error(client.get("/v1/agents/runs?limit=0", headers=ops), 400, "limit")
    _error(client.get("/v1/agents/runs?limit=many", headers=ops), 400, "limit")
    r = client.get("/v1/agents/runs?stauts=done", headers=ops)
    assert "did you mean 'status'?" in _error(r, 400, "stauts")
    _error(client.get("/v1/agents/runs/run_nope", headers=ops), 404, "run_id")
    assert client.get("/v1/agents", headers={}).status_code == 401


def test_a_tenant_never_sees_or_touches_another_tenants_run(client: Any) -> None:
    run_id = waiting_run(client, "a")
    a, b, ops = _h(client, "a"), _h(client, "b"), _h(client, "ops")
    run = client.get(f"/v1/agents/runs/{run_id}", headers=a).json()
    assert run["tenant"] == "city-a" and run["actor"].startswith("key:a")
    # B: the same 404 as a run that does not exist, for every route.
    for r in (
        client.get(f"/v1/agents/runs/{run_id}", headers=b),
        client.get(f"/v1/agents/runs/{run_id}/events", headers=b),
        client.post(f"/v1/agents/runs/{run_id}/resume", json={"action": "approve"}, headers=b),
        client.post("/v1/feedback", json={"run_id": run_id, "score": -1}, headers=b),
    ):
        assert f"run {run_id!r} not found" in _error(r, 404)
    assert client.get("/v1/agents/runs", headers=b).json()["data"] == []
    assert client.get("/v1/agents/approvals", headers=b).json()["data"] == []
    # A sees its own; the operator key sees every tenant's.
    assert [i["run_id"] for i in client.get("/v1/agents/approvals", headers=a).json()["data"]] == [
        run_id
    ]
    assert [
        i["tenant"] for i in client.get("/v1/agents/approvals", headers=ops).json()["data"]
    ] == ["city-a"]
    sse(start(client, "b's own question", "b", graph="echo").text)
    assert [r["tenant"] for r in client.get("/v1/agents/runs", headers=b).json()["data"]] == [
        "city-b"
    ]
    assert len(client.get("/v1/agents/runs", headers=ops).json()["data"]) == 2
    # The run is untouched by B's attempts; A may not approve its own run, another key
    # of A's tenant with `approve` may.
    r = client.post(f"/v1/agents/runs/{run_id}/resume", json={"action": "approve"}, headers=a)
    assert "another key with the `approve` scope" in _error(r, 403)
    r = client.post(
        f"/v1/agents/runs/{run_id}/resume",
        json={"action": "approve", "stream": False},
        headers=_h(client, "a-lead"),
    )
    assert r.status_code == 200 and r.json()["status"] == "done"


def test_feedback_reaches_the_routing_decisions_of_the_run(client: Any) -> None:
    ops = _h(client, "ops")
    routed = sse(start(client, "quick one").text)[0]["run_id"]
    r = client.post(
        "/v1/feedback", json={"run_id": routed, "score": 0.5, "comment": "ok"}, headers=ops
    )
    assert r.status_code == 200, r.text
    assert r.json() == {"run_id": routed, "score": 0.5, "decisions": 1}
    plain = start(client, "no routing here", graph="echo", stream=False).json()["id"]
    r = client.post("/v1/feedback", json={"run_id": plain, "score": -1}, headers=ops)
    assert r.json() == {"run_id": plain, "score": -1.0, "decisions": 0}  # kept, not learned


def test_run_listing_filters(client: Any) -> None:
    ops = _h(client, "ops")
    waiting = waiting_run(client)
    done = [start(client, f"echo {i}", graph="echo", stream=False).json()["id"] for i in range(3)]
    data = client.get("/v1/agents/runs", headers=ops).json()["data"]
    assert [r["id"] for r in data] == [*reversed(done), waiting]  # newest first
    by_status = client.get("/v1/agents/runs?status=waiting", headers=ops).json()["data"]
    assert [r["id"] for r in by_status] == [waiting]
    by_graph = client.get("/v1/agents/runs", params={"graph": "echo"}, headers=ops).json()["data"]
    assert {r["id"] for r in by_graph} == set(done)
    one = client.get("/v1/agents/runs?graph=echo&status=done&limit=1", headers=ops).json()
    assert [r["id"] for r in one["data"]] == [done[-1]]


def test_graph_listing(client: Any) -> None:
    data = client.get("/v1/agents", headers=_h(client, "ops")).json()["data"]
    assert [g["id"] for g in data] == ["desk", "echo"]
    desk = data[0]
    assert desk["description"] == "Front desk: quick or careful answers."
    assert desk["entry"] == "triage"
    assert [(n["name"], n["type"]) for n in desk["nodes"]] == [
        ("triage", "router"),
        ("quick", "agent"),
        ("careful", "agent"),
        ("review", "approval"),
    ]
    assert desk["nodes"][0]["next"] == ["quick", "careful"]
    assert desk["routers"] == [
        {
            "node": "triage",
            "picks": "nodes",
            "arms": ["quick", "careful"],
            "algorithm": "linucb",
            "frozen": False,
        }
    ]
    assert [(a["name"], a["model"], a["tools"]) for a in desk["agents"]] == [
        ("clerk", "m1", ["clinics"]),
        ("senior", "m2:ad", ["clinics"]),
    ]


class _BreaksMidStream:
    """A backend whose stream fails after its first event (the relay's error path)."""

    async def call(self, *args: Any) -> Any:
        return {}

    async def stream(self, *args: Any) -> Any:
        yield {"type": "run", "run_id": "run_x", "graph": "desk"}
        raise Conflict("run 'run_x' was resumed already")


def test_an_error_after_the_stream_began_is_an_sse_error_then_done(tmp_path: Path) -> None:
    app = create_app(
        NoModels(), None, KeyAuth(tmp_path / "s.sqlite", False), agents=_BreaksMidStream()
    )  # type: ignore[arg-type]
    with TestClient(app) as c:
        r = c.post("/v1/agents/desk/runs", json={"input": "hi"})
    events = sse(r.text)
    assert r.status_code == 200 and events[0]["run_id"] == "run_x"
    assert events[1]["error"]["type"] == "conflict_error"
    assert "resumed already" in events[1]["error"]["message"] and events[2] == "[DONE]"


def test_without_an_agents_backend_the_routes_answer_501(tmp_path: Path) -> None:
    app = create_app(NoModels(), None, KeyAuth(tmp_path / "s.sqlite", False))  # type: ignore[arg-type]
    with TestClient(app) as c:
        for r in (
            c.get("/v1/agents"),
            c.post("/v1/agents/desk/runs", json={"input": "hi"}),
            c.post("/v1/feedback", json={"run_id": "x", "score": 1}),
        ):
            assert r.status_code == 501 and "not enabled" in r.json()["error"]["message"]


def test_self_approval_only_where_the_graph_allows_it(tmp_path: Path) -> None:
    """Issue 13 item 3: by default the key that started a run cannot approve it; a graph
    whose approval node says ``allow_self_approval: true`` lets it."""
    import copy

    home = tmp_path / "home"
    service, _router = make_service(home, tmp_path / "desk")
    lenient = copy.deepcopy(DESK)
    lenient["metadata"]["name"] = "lenient"
    lenient["spec"]["nodes"][-1]["allow_self_approval"] = True
    gdef = GraphDef(AgentGraph.model_validate(lenient), tmp_path / "desk")
    service.catalog.add(gdef)  # type: ignore[attr-defined]
    with TestClient(make_app(home, service)) as c:
        c.keys = make_keys(home)  # type: ignore[attr-defined]
        for graph, status in (("desk", 403), ("lenient", 200)):
            r = start(c, "careful: when?", "a", graph=graph, stream=False)
            assert r.json()["status"] == "waiting", r.text
            run_id = r.json()["id"]
            r = c.post(
                f"/v1/agents/runs/{run_id}/resume",
                json={"action": "approve", "stream": False},
                headers=_h(c, "a"),
            )
            assert r.status_code == status, r.text
            state = c.get(f"/v1/agents/runs/{run_id}", headers=_h(c, "a")).json()["status"]
            assert state == ("waiting" if status == 403 else "done")
        c.portal.call(service.close)  # type: ignore[union-attr]

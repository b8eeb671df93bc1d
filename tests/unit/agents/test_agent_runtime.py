"""Agent runs through the real LangGraph runtime, SQLite checkpointer, run store and router
(``RouterService``); only the chat model is scripted (a fake at the model boundary)."""

from __future__ import annotations

import asyncio
import base64
import time
from pathlib import Path

import pytest

from qingliang.agents.catalog import StaticCatalog
from qingliang.agents.llm import ChatReply
from qingliang.agents.manifest import AgentGraph
from qingliang.agents.routing.actor import RouterClient
from qingliang.agents.routing.router import RouterService
from qingliang.agents.service import AgentService
from qingliang.agents.state import GraphDef
from qingliang.platform.errors import BadRequest, Conflict, NotFound


class Scripted:
    """Answers ``<model>: <first 30 chars of the request>``; optional delay per model."""

    def __init__(self, delay: dict[str, float] | None = None, tokens: int = 10) -> None:
        self.calls: list[str] = []
        self.delay = delay or {}
        self.tokens = tokens

    async def complete(
        self,
        model,
        messages,
        *,
        tools=None,
        max_tokens=256,
        temperature=0.0,
        on_delta=None,
        user=None,
    ):
        self.calls.append(model)
        await asyncio.sleep(self.delay.get(model, 0))
        user = [m for m in messages if m["role"] == "user"][-1]["content"]
        text = f"{model}: {user[:30]}"
        if on_delta:
            on_delta(text)
        return ChatReply(text, [], self.tokens, model)


def graph(spec: dict, name: str = "desk") -> AgentGraph:
    return AgentGraph.model_validate(
        {
            "apiVersion": "qingliang.io/v1",
            "kind": "AgentGraph",
            "metadata": {"name": name},
            "spec": spec,
        }
    )


ROUTED = {
    "agents": [{"name": "tabler", "model": "tables"}, {"name": "writer", "model": "prose"}],
    "nodes": [
        {
            "name": "triage",
            "type": "router",
            "routes": ["tables", "prose"],
            "router": {"alpha": 0.3, "floor": 0.05, "seed": 3},
        },
        {"name": "tables", "type": "agent", "agent": "tabler", "next": "review"},
        {"name": "prose", "type": "agent", "agent": "writer", "next": "review"},
        {"name": "review", "type": "approval", "when": {"pattern": "^prose"}},
    ],
}


def service(tmp_path: Path, *graphs: AgentGraph, chat=None, router: bool = True) -> AgentService:
    client = RouterClient(RouterService(tmp_path / "router.sqlite")) if router else None
    return AgentService(
        tmp_path / "home",
        chat=chat or Scripted(),
        catalog=StaticCatalog([GraphDef(g, tmp_path) for g in graphs]),
        router=client,
        tools_for=lambda g: {},
    )


async def run(svc: AgentService, body: dict, name: str = "desk") -> tuple[str, list[dict]]:
    run_id, events = await svc.start(name, body, tenant="city-a", actor="tester")
    return run_id, [e async for e in events]


async def test_a_routed_run_streams_the_route_with_its_propensity(tmp_path: Path) -> None:
    async with service(tmp_path, graph(ROUTED)) as svc:
        run_id, events = await run(svc, {"input": "sum the table of permits"})
        kinds = [e["type"] for e in events]
        assert kinds[0] == "run" and kinds[-1] == "status"
        route = next(e for e in events if e["type"] == "route")
        assert route["arm"] in ("tables", "prose") and 0 < route["propensity"] <= 1
        assert route["router"] == "desk/triage" and route["decision_id"]
        assert any(e["type"] == "token" for e in events)
        stored = [e["type"] for e in svc.events(run_id, "city-a")]
        assert "token" not in stored and "route" in stored
        stats = await svc.router.stats("desk/triage")
        assert stats["decisions"] == 1


async def test_the_router_learns_from_feedback(tmp_path: Path) -> None:
    """Table questions should go to `tables`, prose to `prose`; feedback says so."""
    async with service(tmp_path, graph(ROUTED)) as svc:
        picks = []
        for i in range(80):
            table = i % 2 == 0
            text = f"table rows columns totals {i}" if table else f"write a friendly letter {i}"
            run_id, events = await run(svc, {"input": text})
            arm = next(e for e in events if e["type"] == "route")["arm"]
            if svc.get(run_id, "city-a").status == "waiting":
                await _drain(
                    svc.resume(run_id, {"action": "approve"}, tenant="city-a", actor="boss")
                )
            right = arm == ("tables" if table else "prose")
            await svc.feedback(run_id, 1.0 if right else -1.0, tenant="city-a", actor="user")
            picks.append(right)
        assert sum(picks[-20:]) >= 17, picks  # learned: at least 85 % right at the end
        assert sum(picks[:20]) < sum(picks[-20:])


async def _drain(coro) -> None:
    _run_id, events = await coro
    async for _ in events:
        pass


async def test_approval_edit_reject_and_double_resume(tmp_path: Path) -> None:
    spec = {
        "agents": [{"name": "w", "model": "prose"}],
        "nodes": [
            {"name": "draft", "type": "agent", "agent": "w", "next": "review"},
            {"name": "review", "type": "approval", "prompt": "Send this reply?"},
        ],
    }
    async with service(tmp_path, graph(spec), router=False) as svc:
        run_id, events = await run(svc, {"input": "reply to the citizen"})
        waiting = svc.get(run_id, "city-a")
        assert waiting.status == "waiting"
        assert waiting.pending["prompt"] == "Send this reply?"
        assert [r.id for r in svc.approvals(tenant="city-a")] == [run_id]
        assert svc.approvals(tenant="city-b") == []
        with pytest.raises(BadRequest, match="action"):
            await svc.resume(run_id, {"action": "maybe"}, tenant="city-a", actor="boss")
        with pytest.raises(BadRequest, match="answer"):
            await svc.resume(run_id, {"action": "edit"}, tenant="city-a", actor="boss")
        with pytest.raises(NotFound):
            await svc.resume(run_id, {"action": "approve"}, tenant="city-b", actor="x")
        assert svc.get(run_id, "city-a").status == "waiting"  # bad resumes changed nothing
        await _drain(
            svc.resume(
                run_id,
                {"action": "edit", "answer": "Dear citizen, yes."},
                tenant="city-a",
                actor="boss",
            )
        )
        done = svc.get(run_id, "city-a")
        assert done.status == "done" and done.answer == "Dear citizen, yes."
        with pytest.raises(Conflict, match="not waiting"):
            await svc.resume(run_id, {"action": "approve"}, tenant="city-a", actor="boss")
        approvals = [e for e in svc.events(run_id, "city-a") if e["type"] == "approval"]
        # Stored events say when they happened (the run's timeline in the console), to the
        # millisecond: rounding may put a stamp up to half a millisecond ahead of now.
        assert all(
            time.time() - 60 < e["at"] < time.time() + 1 for e in svc.events(run_id, "city-a")
        )
        assert approvals == [
            {
                "seq": approvals[0]["seq"],
                "at": approvals[0]["at"],
                "type": "approval",
                "run_id": run_id,
                "action": "edit",
                "actor": "boss",
                "comment": None,
                "answer": "Dear citizen, yes.",
            }
        ]

        second, _ = await run(svc, {"input": "another reply"})
        await _drain(
            svc.resume(
                second, {"action": "reject", "comment": "wrong tone"}, tenant="city-a", actor="boss"
            )
        )
        rejected = svc.get(second, "city-a")
        assert rejected.status == "rejected" and rejected.reason == "rejected at approval"


async def test_concurrent_resumes_only_one_wins(tmp_path: Path) -> None:
    spec = {
        "agents": [{"name": "w", "model": "prose"}],
        "nodes": [
            {"name": "d", "type": "agent", "agent": "w", "next": "r"},
            {"name": "r", "type": "approval"},
        ],
    }
    async with service(tmp_path, graph(spec), router=False) as svc:
        run_id, _ = await run(svc, {"input": "x"})
        results = await asyncio.gather(
            *(
                svc.resume(run_id, {"action": "approve"}, tenant="city-a", actor=f"u{i}")
                for i in range(5)
            ),
            return_exceptions=True,
        )
        wins = [r for r in results if not isinstance(r, Exception)]
        assert len(wins) == 1 and all(isinstance(r, Conflict) for r in results if r not in wins)
        async for _ in wins[0][1]:
            pass
        assert svc.get(run_id, "city-a").status == "done"


async def test_parallel_branches_both_answer_before_the_join(tmp_path: Path) -> None:
    spec = {
        "agents": [
            {"name": "a", "model": "alpha"},
            {"name": "b", "model": "beta"},
            {"name": "j", "model": "judge"},
        ],
        "nodes": [
            {"name": "fan", "type": "parallel", "branches": ["left", "right"], "next": "join"},
            {"name": "left", "type": "agent", "agent": "a"},
            {"name": "right", "type": "agent", "agent": "b"},
            {"name": "join", "type": "agent", "agent": "j"},
        ],
    }
    chat = Scripted(delay={"alpha": 0.2, "beta": 0.2})
    async with service(tmp_path, graph(spec), chat=chat, router=False) as svc:
        run_id, events = await run(svc, {"input": "compare"})
        assert chat.calls[:2] in (["alpha", "beta"], ["beta", "alpha"]) and chat.calls[2] == "judge"
        assert svc.get(run_id, "city-a").answer.startswith("judge: compare")
        nodes = [e["node"] for e in events if e["type"] == "node"]
        assert nodes.index("join") > max(nodes.index("left"), nodes.index("right"))


async def test_limits_stop_a_run_cleanly_with_the_reason(tmp_path: Path) -> None:
    chain = {
        "agents": [{"name": "w", "model": "m"}],
        "nodes": [
            {"name": "a", "type": "agent", "agent": "w", "next": "b"},
            {"name": "b", "type": "agent", "agent": "w", "next": "c"},
            {"name": "c", "type": "agent", "agent": "w"},
        ],
    }
    budget = graph({**chain, "limits": {"token_budget": 15}}, "budget")
    steps = graph({**chain, "limits": {"max_steps": 2}}, "steps")
    slow = graph({**chain, "limits": {"timeout_s": 0.3}}, "slow")
    chat = Scripted(delay={"m": 0.0})
    async with service(tmp_path, budget, steps, chat=chat, router=False) as svc:
        run_id, _ = await run(svc, {"input": "go"}, "budget")
        r = svc.get(run_id, "city-a")
        assert r.status == "stopped" and "token budget of 15" in r.reason and r.tokens == 20
        run_id, _ = await run(svc, {"input": "go"}, "steps")
        r = svc.get(run_id, "city-a")
        assert r.status == "stopped" and r.reason == "max_steps (2) reached"
    async with service(tmp_path / "t", slow, chat=Scripted(delay={"m": 0.2}), router=False) as svc:
        run_id, _ = await run(svc, {"input": "go"}, "slow")
        r = svc.get(run_id, "city-a")
        assert r.status == "stopped" and "timeout_s (0.3 s)" in r.reason


@pytest.mark.parametrize(
    ("body", "needle"),
    [
        ({"input": "x", "inptu": 1}, "unknown field 'inptu'"),
        ({}, "`input` is required"),
        ({"input": "   "}, "`input` is required"),
        ({"input": "x", "attachments": [{"name": "a.png", "data": "%%%"}]}, "not valid base64"),
        ({"input": "x", "attachments": [{"name": "../etc/passwd", "data": ""}]}, "plain file name"),
        ({"input": "x", "domain": 3}, "`domain` must be a string"),
    ],
)
async def test_bad_run_requests_are_refused_and_create_nothing(tmp_path, body, needle) -> None:
    async with service(tmp_path, graph(ROUTED)) as svc:
        with pytest.raises(BadRequest, match=needle.replace("(", r"\(").replace(")", r"\)")):
            await svc.start("desk", body, tenant=None, actor="t")
        assert svc.runs(tenant=None, all_tenants=True) == []


async def test_unknown_graph_and_bad_feedback(tmp_path: Path) -> None:
    async with service(tmp_path, graph(ROUTED)) as svc:
        with pytest.raises(NotFound, match="did you mean 'desk'"):
            await svc.start("dsk", {"input": "x"}, tenant=None, actor="t")
        run_id, _ = await run(svc, {"input": "sum the table"})
        for score in (2, "good", True, float("nan")):
            with pytest.raises(BadRequest, match="score"):
                await svc.feedback(run_id, score, tenant="city-a", actor="u")
        stats = await svc.router.stats("desk/triage")
        out = await svc.feedback(run_id, 0.5, tenant="city-a", actor="u")
        assert out["decisions"] == 1
        assert (await svc.router.stats("desk/triage"))["decisions"] == stats["decisions"]


async def test_a_waiting_run_survives_a_service_restart(tmp_path: Path) -> None:
    spec = {
        "agents": [{"name": "w", "model": "prose"}],
        "nodes": [
            {"name": "d", "type": "agent", "agent": "w", "next": "r"},
            {"name": "r", "type": "approval"},
            {"name": "after", "type": "agent", "agent": "w"},
        ],
    }
    spec["nodes"][1]["next"] = "after"
    chat = Scripted()
    async with service(tmp_path, graph(spec), chat=chat, router=False) as svc:
        run_id, _ = await run(svc, {"input": "letter"})
    async with service(tmp_path, graph(spec), chat=chat, router=False) as svc:
        assert svc.get(run_id, "city-a").status == "waiting"
        await _drain(svc.resume(run_id, {"action": "approve"}, tenant="city-a", actor="boss"))
        assert svc.get(run_id, "city-a").status == "done"
    assert chat.calls == ["prose", "prose"]  # the first node was not run again


async def test_attachments_are_stored_for_the_run(tmp_path: Path) -> None:
    async with service(tmp_path, graph(ROUTED)) as svc:
        data = base64.b64encode(b"\x89PNG fake").decode()
        run_id, _ = await run(
            svc, {"input": "read this", "attachments": [{"name": "scan.png", "data": data}]}
        )
        path = tmp_path / "home" / "agents" / "uploads" / run_id / "scan.png"
        assert path.read_bytes() == b"\x89PNG fake"
        assert svc.get(run_id, "city-a").input["attachments"] == ["scan.png"]


async def test_a_second_feedback_on_a_routed_run_is_refused_and_not_stored(tmp_path) -> None:
    async with service(tmp_path, graph(ROUTED)) as svc:
        run_id, _ = await run(svc, {"input": "sum the table"})
        if svc.get(run_id, "city-a").status == "waiting":
            await _drain(svc.resume(run_id, {"action": "approve"}, tenant="city-a", actor="b"))
        await svc.feedback(run_id, 1.0, tenant="city-a", actor="u")
        with pytest.raises(Conflict):
            await svc.feedback(run_id, -1.0, tenant="city-a", actor="u")
        assert [f["score"] for f in svc.store.feedback(run_id)] == [1.0]


async def test_a_run_whose_settling_fails_ends_failed_and_its_stream_closes(tmp_path) -> None:
    class BrokenRouter:
        async def register(self, *a, **kw):
            return None

        async def decide(self, *a, **kw):
            raise RuntimeError("router down")

    svc = AgentService(
        tmp_path / "home",
        chat=Scripted(),
        catalog=StaticCatalog([GraphDef(graph(ROUTED), tmp_path)]),
        router=BrokenRouter(),
        tools_for=lambda g: {},
    )
    async with svc:
        run_id, events = await svc.start("desk", {"input": "x"}, tenant=None, actor="t")
        got = await asyncio.wait_for(_collect(events), timeout=20)
        assert got[-1]["status"] == "failed" and "router down" in got[-1]["reason"]
        assert svc.get(run_id).status == "failed"


async def _collect(events) -> list[dict]:
    return [e async for e in events]


@pytest.mark.parametrize(
    ("text", "called"),
    [
        ('```json\n{\n  "name": "intake",\n  "arguments": {"applicant": "Li Lei"}\n}\n```', True),
        (
            '<tool_call>\n{"name": "intake", "arguments": {"applicant": "Li Lei"}}\n</tool_call>',
            True,
        ),
        ('{"name": "intake", "arguments": {"applicant": "Li Lei"}}', True),
        ('{"name": "delete_everything", "arguments": {}}', False),  # not offered
        ('{"name": "intake", "arguments": "applicant=Li"}', False),  # not an object
        ('Sure! {"name": "intake", "arguments": {}} done', False),  # not the whole reply
        ("The applicant is Li Lei.", False),
    ],
)
def test_a_tool_call_written_as_text_is_recovered_only_when_unambiguous(text, called) -> None:
    from qingliang.agents.llm import recover_tool_call

    out = recover_tool_call(ChatReply(text, [], 5, "qwen"), {"intake"})
    assert bool(out.tool_calls) is called
    if called:
        assert out.tool_calls[0].name == "intake" and out.text == ""
        assert out.tool_calls[0].arguments == {"applicant": "Li Lei"}
    else:
        assert out.text == text

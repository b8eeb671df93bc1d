"""A run's structured output: the values its form tools hold come back in the final
``status`` event (what ``qingliang eval`` reads as ``fields``)."""

from __future__ import annotations

from pathlib import Path

from qingliang.agents.catalog import StaticCatalog
from qingliang.agents.llm import ChatReply, ToolCall
from qingliang.agents.service import AgentService
from qingliang.agents.state import GraphDef
from tests.unit.agents.test_agent_runtime import graph, run


def service(tmp_path: Path, g, chat=None) -> AgentService:
    """The graph's own tools (forms), no router."""
    return AgentService(
        tmp_path / "home",
        chat=chat or FillsTheForm(),
        catalog=StaticCatalog([GraphDef(g, tmp_path)]),
    )


TRIAGE = {
    "agents": [{"name": "t", "model": "m", "tools": ["ticket"], "max_tool_rounds": 1}],
    "tools": [
        {
            "name": "ticket",
            "kind": "form",
            "fields": [{"name": "department", "enum": ["心血管科", "消化内科"]}],
        }
    ],
    "nodes": [{"name": "n", "type": "agent", "agent": "t"}],
}


class FillsTheForm:
    def __init__(self) -> None:
        self.calls = 0

    async def complete(self, model, messages, *, tools=None, max_tokens=256, temperature=0.0,
                       on_delta=None, user=None):  # fmt: skip
        self.calls += 1
        if tools and self.calls == 1:
            call = ToolCall("c1", "ticket", {"department": "心血管科"})
            return ChatReply("", [call], 5, model)
        return ChatReply("已分诊到心血管科。", [], 5, model)


async def test_the_status_event_carries_the_forms(tmp_path: Path) -> None:
    async with service(tmp_path, graph(TRIAGE), chat=FillsTheForm()) as svc:
        run_id, events = await run(svc, {"input": "胸闷心慌"})
        status = events[-1]
        assert status["type"] == "status" and status["status"] == "done"
        assert status["forms"] == {"ticket": {"department": "心血管科"}}
        stored = svc.events(run_id, "city-a")[-1]
        assert stored["forms"] == status["forms"]


async def test_a_run_without_forms_has_none(tmp_path: Path) -> None:
    plain = {
        "agents": [{"name": "a", "model": "m"}],
        "nodes": [{"name": "n", "type": "agent", "agent": "a"}],
    }
    async with service(tmp_path, graph(plain)) as svc:
        _, events = await run(svc, {"input": "hi"})
        assert "forms" not in events[-1]

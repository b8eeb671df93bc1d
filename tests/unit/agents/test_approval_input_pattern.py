"""``when.input_pattern``: an approval node that gates on the request text, so a graph can
hand a request to a person before any model has answered it (real LangGraph runtime, run
store and checkpointer; only the chat model is scripted)."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from qingliang.agents.catalog import StaticCatalog
from qingliang.agents.llm import ChatReply
from qingliang.agents.manifest import AgentGraph, ApprovalCondition
from qingliang.agents.service import AgentService
from qingliang.agents.state import GraphDef


class Scripted:
    """Answers ``answered: <request>`` and counts its calls."""

    def __init__(self) -> None:
        self.calls = 0

    async def complete(self, model, messages, **_kw):
        self.calls += 1
        user = [m for m in messages if m["role"] == "user"][-1]["content"]
        return ChatReply(f"answered: {user}", [], 5, model)


GATED = {
    "agents": [{"name": "helper", "model": "m"}],
    "nodes": [
        {
            "name": "red_flags",
            "type": "approval",
            "when": {"input_pattern": "胸痛|口角歪斜"},
            "prompt": "Red flag: call the patient first.",
            "next": "answer",
            "on_reject": "end",
        },
        {"name": "answer", "type": "agent", "agent": "helper"},
    ],
}


def graph(spec: dict) -> AgentGraph:
    return AgentGraph.model_validate(
        {"apiVersion": "qingliang.io/v1", "kind": "AgentGraph", "metadata": {"name": "desk"},
         "spec": spec}
    )  # fmt: skip


def service(tmp_path: Path, chat: Scripted) -> AgentService:
    return AgentService(
        tmp_path / "home",
        chat=chat,
        catalog=StaticCatalog([GraphDef(graph(GATED), tmp_path)]),
        tools_for=lambda g: {},
    )


async def _run(svc: AgentService, text: str) -> tuple[str, list[dict]]:
    run_id, events = await svc.start("desk", {"input": text}, tenant="t", actor="patient")
    return run_id, [e async for e in events]


def test_input_pattern_alone_is_a_condition_and_must_be_a_valid_regex() -> None:
    assert ApprovalCondition(input_pattern="胸痛").input_pattern == "胸痛"
    with pytest.raises(ValidationError, match="input_pattern"):
        ApprovalCondition(input_pattern="胸痛(")
    with pytest.raises(ValidationError, match="input_pattern"):
        ApprovalCondition()  # no condition at all: the message lists input_pattern


async def test_a_matching_request_waits_before_any_model_answers(tmp_path: Path) -> None:
    chat = Scripted()
    async with service(tmp_path, chat) as svc:
        run_id, events = await _run(svc, "我爸突然口角歪斜，怎么办")
        run = svc.get(run_id, "t")
        assert run.status == "waiting"
        assert run.pending["node"] == "red_flags"
        assert run.pending["prompt"] == "Red flag: call the patient first."
        assert run.pending["answer"] == ""
        assert chat.calls == 0  # nothing was answered
        assert not [e for e in events if e["type"] == "token"]

        _, resumed = await svc.resume(run_id, {"action": "approve"}, tenant="t", actor="nurse")
        [e async for e in resumed]
        done = svc.get(run_id, "t")
        assert done.status == "done" and done.answer == "answered: 我爸突然口角歪斜，怎么办"
        assert chat.calls == 1


async def test_a_rejected_red_flag_never_gets_an_answer(tmp_path: Path) -> None:
    chat = Scripted()
    async with service(tmp_path, chat) as svc:
        run_id, _ = await _run(svc, "胸痛半小时了")
        _, resumed = await svc.resume(run_id, {"action": "reject"}, tenant="t", actor="nurse")
        [e async for e in resumed]
        run = svc.get(run_id, "t")
        assert run.status == "rejected" and not run.answer
        assert chat.calls == 0


async def test_other_requests_pass_the_gate(tmp_path: Path) -> None:
    chat = Scripted()
    async with service(tmp_path, chat) as svc:
        run_id, _ = await _run(svc, "胃胀反酸看哪个科")
        run = svc.get(run_id, "t")
        assert run.status == "done" and run.answer == "answered: 胃胀反酸看哪个科"
        assert chat.calls == 1

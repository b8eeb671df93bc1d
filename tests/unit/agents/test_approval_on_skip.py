"""An approval gate whose condition does not hold can end the run (``on_skip``) instead of
going on to a step that needs what the gate guards: a clerk who asked for missing details
filled no form, so there is nothing to file, and the run ends with the clerk's question."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.unit.agents.test_agent_runtime import Scripted, graph, run
from tests.unit.agents.test_status_forms import service


def desk(on_skip: str | None) -> dict:
    review = {
        "name": "review",
        "type": "approval",
        "when": {"tools": ["permit"]},
        "next": "file",
        **({"on_skip": on_skip} if on_skip else {}),
    }
    return {
        "agents": [{"name": "clerk", "model": "m", "tools": ["permit"]}],
        "tools": [
            {"name": "permit", "kind": "form", "fields": [{"name": "applicant"}]},
            {
                "name": "file_permit",
                "kind": "submit",
                "form": "permit",
                "database": "requests.sqlite",
                "table": "permits",
            },
        ],
        "nodes": [
            {"name": "apply", "type": "agent", "agent": "clerk", "next": "review"},
            review,
            {"name": "file", "type": "tool", "tool": "file_permit"},
        ],
    }


async def test_nothing_to_approve_ends_the_run_with_the_clerks_answer(tmp_path: Path) -> None:
    async with service(tmp_path, graph(desk("end")), chat=Scripted()) as svc:
        _, events = await run(svc, {"input": "我要申请居住证"})
    status = events[-1]
    assert status["status"] == "done", status
    assert status["answer"] == "m: 我要申请居住证"  # the clerk asks; nothing was filed
    assert "file" not in [e.get("node") for e in events if e.get("type") == "node"]
    assert not (tmp_path / "requests.sqlite").exists()


async def test_without_on_skip_the_filing_step_runs_and_says_why_it_cannot(
    tmp_path: Path,
) -> None:
    async with service(tmp_path, graph(desk(None)), chat=Scripted()) as svc:
        _, events = await run(svc, {"input": "我要申请居住证"})
    assert "has not been filled in this run" in events[-1].get("error", str(events[-1]))


def test_on_skip_names_a_node_and_belongs_to_approvals() -> None:
    with pytest.raises(
        ValueError, match=r"nodes\[1\].on_skip: unknown node 'fil' \(did you mean 'file'"
    ):
        graph(desk("fil"))
    wrong = desk(None)
    wrong["nodes"][0]["on_skip"] = "end"
    with pytest.raises(ValueError, match="`on_skip` does not apply to a agent node"):
        graph(wrong)

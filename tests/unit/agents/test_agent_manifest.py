"""The AgentGraph manifest: whole-graph checks that name the field, and resolve()."""

from __future__ import annotations

from pathlib import Path

import pytest

import qingliang.platform.lifecycle.pipelines.kinds  # noqa: F401
from qingliang.agents.manifest import AgentGraph
from qingliang.agents.resolve import resolve_graph
from qingliang.platform.errors import ManifestError
from qingliang.platform.manifests.loader import parse_documents

HEAD = "apiVersion: qingliang.io/v1\nkind: AgentGraph\nmetadata: {name: desk}\nspec:\n"
AGENTS = "  agents: [{name: helper, model: qwen}, {name: expert, model: 'qwen:legal'}]\n"


def _errors(body: str) -> list[str]:
    with pytest.raises(ManifestError) as info:
        parse_documents(HEAD + body, "g.yaml")
    return [f"{i.path}: {i.message}" for i in info.value.issues]


def _ok(body: str) -> AgentGraph:
    (doc,) = parse_documents(HEAD + body, "g.yaml")
    assert isinstance(doc.manifest, AgentGraph)
    return doc.manifest


def test_a_full_graph_validates_with_defaults() -> None:
    g = _ok(
        AGENTS
        + """  tools:
    - {name: search, kind: knowledge_search, knowledge: gov}
    - {name: intake, kind: form, fields: [{name: applicant}, {name: day, type: date}]}
    - {name: file, kind: submit, form: intake, database: req.sqlite}
  nodes:
    - {name: triage, type: router, routes: [quick, deep]}
    - {name: quick, type: agent, agent: helper, next: review}
    - {name: deep, type: parallel, branches: [a, b], next: review}
    - {name: a, type: agent, agent: helper}
    - {name: b, type: agent, agent: expert}
    - {name: review, type: approval, when: {routes: [deep]}, next: submit, on_reject: quick}
    - {name: submit, type: tool, tool: file}
"""
    )
    assert g.spec.entry_node == "triage"
    assert g.spec.router.algorithm == "linucb" and g.spec.router.floor == 0.05
    assert g.spec.limits.max_steps == 25


def test_unknown_references_name_the_field_with_a_hint() -> None:
    errors = _errors(
        AGENTS
        + """  tools: [{name: search, kind: knowledge_search, knowledge: gov}]
  nodes:
    - {name: first, type: agent, agent: helpr, next: reviw}
    - {name: review, type: approval}
"""
    )
    assert "spec.nodes[0].agent: unknown agent 'helpr' (did you mean 'helper'?)" in errors[0]
    assert any(
        e.startswith("spec.nodes[0].next: unknown node 'reviw' (did you mean") for e in errors
    )


def test_unreachable_nodes_and_loops_without_exit_are_errors() -> None:
    errors = _errors(
        AGENTS
        + """  nodes:
    - {name: start, type: agent, agent: helper, next: ping}
    - {name: ping, type: agent, agent: helper, next: pong}
    - {name: pong, type: agent, agent: expert, next: ping}
    - {name: orphan, type: agent, agent: helper}
"""
    )
    assert "spec.nodes[3]: 'orphan' cannot be reached from entry 'start'" in errors
    assert any(
        "spec.nodes[0]: 'start' is in a loop that never reaches the end" in e for e in errors
    )
    assert any("'ping' is in a loop" in e for e in errors)


def test_a_loop_with_an_exit_is_allowed() -> None:
    g = _ok(
        AGENTS
        + """  nodes:
    - {name: draft, type: agent, agent: helper, next: check}
    - {name: check, type: approval, next: end, on_reject: draft}
"""
    )
    assert [n.name for n in g.spec.nodes] == ["draft", "check"]


@pytest.mark.parametrize(
    ("nodes", "needle"),
    [
        (
            "[{name: r, type: router, routes: [r2]}, {name: r2, type: agent, agent: helper}]",
            "at least two distinct arms",
        ),
        ("[{name: r, type: router, routes: [a, b], models: [qwen]}]", "not both"),
        ("[{name: p, type: parallel, branches: [a, a]}]", "two distinct branches"),
        ("[{name: t, type: tool}]", "a tool node needs `tool`"),
        ("[{name: x, type: agent, agent: helper, branches: [y]}]", "does not apply"),
        ("[{name: end, type: agent, agent: helper}]", "reserved"),
    ],
)
def test_node_shapes_are_checked(nodes: str, needle: str) -> None:
    errors = _errors(AGENTS + f"  nodes: {nodes}\n")
    assert any(needle in e for e in errors), errors


def test_submit_tools_are_not_offered_to_models() -> None:
    errors = _errors(
        """  agents: [{name: helper, model: qwen, tools: [file]}]
  tools:
    - {name: intake, kind: form, fields: [{name: applicant}]}
    - {name: file, kind: submit, form: intake, database: x.sqlite}
  nodes: [{name: a, type: agent, agent: helper}]
"""
    )
    assert any("spec.agents[0].tools[0]" in e and "submit tool" in e for e in errors)


def test_parallel_branches_must_not_continue_on_their_own() -> None:
    errors = _errors(
        AGENTS
        + """  nodes:
    - {name: p, type: parallel, branches: [a, b]}
    - {name: a, type: agent, agent: helper, next: b}
    - {name: b, type: agent, agent: expert}
"""
    )
    assert any(e.startswith("spec.nodes[1].next:") and "branch of 'p'" in e for e in errors)


def test_postgres_checkpointer_needs_an_env_name_not_a_dsn() -> None:
    errors = _errors(
        AGENTS
        + """  nodes: [{name: a, type: agent, agent: helper}]
  checkpointer: {kind: postgres, dsn_env: "postgres://u:p@h/db"}
"""
    )
    assert any("spec.checkpointer.dsn_env" in e for e in errors)


def test_resolve_names_missing_deployments_adapters_kbs_and_graphs(tmp_path: Path) -> None:
    g = _ok(
        """  agents:
    - {name: helper, model: qwn, knowledge: [gov]}
    - {name: expert, model: 'qwen:lega'}
  tools:
    - {name: ask, kind: call_agent, graph: legal}
    - {name: db, kind: sql, database: missing.sqlite}
  nodes:
    - {name: a, type: agent, agent: helper, next: b}
    - {name: b, type: agent, agent: expert, next: c}
    - {name: c, type: graph, graph: desk}
"""
    )
    problems = resolve_graph(g, tmp_path, models={"qwen": ("legal",)}, kbs=set(), graphs={"desk"})
    text = "\n".join(problems)
    assert "spec.agents[0].model: no ModelDeployment 'qwn' (did you mean 'qwen'?)" in text
    assert "spec.agents[0].knowledge[0]: no KnowledgeBase 'gov'" in text
    assert "spec.agents[1].model: deployment 'qwen' has no adapter 'lega'" in text
    assert "spec.nodes[2].graph: a graph cannot nest itself" in text
    assert "spec.tools[0].graph: no AgentGraph 'legal'" in text
    assert "missing.sqlite" in text and "spec.tools[1].database" in text


def test_the_gov_desk_example_resolves_against_its_data_folder() -> None:
    repo = Path(__file__).resolve().parents[3]
    path = repo / "deploy" / "examples" / "agents-gov.yaml"
    (doc,) = parse_documents(path.read_text(encoding="utf-8"), str(path))
    problems = resolve_graph(
        doc.manifest,  # type: ignore[arg-type]
        path.parent,
        models={"qwen-coder": ()},
        kbs={"gov-policy"},
        graphs={"gov-desk-example"},
    )
    assert problems == []

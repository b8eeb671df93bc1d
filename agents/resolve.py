"""Resolving an ``AgentGraph`` against the platform before it is recorded (``apply``).

Validation (:mod:`qingliang.agents.manifest`) is pure; this step looks outside the
manifest: the model deployments and adapters the agents and routers name, the knowledge
bases, the nested graphs, and the tools' databases. Each problem names the file's field.

Example:
    >>> problems = resolve_graph(graph, base, models={"qwen": ()}, kbs=set(),
    ...                          graphs=set())                      # doctest: +SKIP
"""

from __future__ import annotations

from pathlib import Path

from qingliang.agents.manifest import AgentGraph
from qingliang.platform.errors import did_you_mean


def _hint(value: str, known: list[str]) -> str:
    more = did_you_mean(value, known)
    return f"{more}; known: {', '.join(sorted(known)) or 'none'}"


def _model_problem(ref: str, models: dict[str, tuple[str, ...]]) -> str | None:
    dep, _, adapter = ref.partition(":")
    if dep not in models:
        return f"no ModelDeployment {dep!r}{_hint(dep, list(models))}"
    if adapter and adapter not in models[dep]:
        return f"deployment {dep!r} has no adapter {adapter!r}{_hint(adapter, list(models[dep]))}"
    return None


def resolve_graph(
    graph: AgentGraph,
    base_dir: Path,
    *,
    models: dict[str, tuple[str, ...]],
    kbs: set[str],
    graphs: set[str],
) -> list[str]:
    """Problems as ``spec.<field>: <what>``; empty when everything named exists.

    ``models`` maps applied deployments to their adapters; ``kbs`` and ``graphs`` are the
    applied knowledge bases and agent graphs (including those applied in the same batch).
    """
    from qingliang.agents.toolbox import check_tools

    spec = graph.spec
    problems = []
    for i, a in enumerate(spec.agents):
        if (p := _model_problem(a.model, models)) is not None:
            problems.append(f"spec.agents[{i}].model: {p}")
        for j, kb in enumerate(a.knowledge):
            if kb not in kbs:
                problems.append(
                    f"spec.agents[{i}].knowledge[{j}]: "
                    f"no KnowledgeBase {kb!r}{_hint(kb, list(kbs))}"
                )
    for i, n in enumerate(spec.nodes):
        for j, ref in enumerate(n.models):
            if (p := _model_problem(ref, models)) is not None:
                problems.append(f"spec.nodes[{i}].models[{j}]: {p}")
        if n.graph is not None:
            if n.graph == graph.name:
                problems.append(f"spec.nodes[{i}].graph: a graph cannot nest itself")
            elif n.graph not in graphs:
                problems.append(
                    f"spec.nodes[{i}].graph: "
                    f"no AgentGraph {n.graph!r}{_hint(n.graph, list(graphs))}"
                )
    for i, t in enumerate(spec.tools):
        if t.kind == "knowledge_search" and t.knowledge not in kbs:
            problems.append(
                f"spec.tools[{i}].knowledge: no KnowledgeBase {t.knowledge!r}"
                f"{_hint(t.knowledge, list(kbs))}"
            )
        if t.kind == "call_agent":
            if t.graph == graph.name:
                problems.append(f"spec.tools[{i}].graph: a graph cannot call itself")
            elif t.graph not in graphs:
                problems.append(
                    f"spec.tools[{i}].graph: "
                    f"no AgentGraph {t.graph!r}{_hint(t.graph, list(graphs))}"
                )
    problems += [f"spec.{p}" for p in check_tools(spec, base_dir)]
    return problems + _example_problems(graph, base_dir)


def _example_problems(graph: AgentGraph, base_dir: Path) -> list[str]:
    """Each router node's ``examples`` file: there, every line a labelled example whose
    route is one of that node's arms (problems name ``file:line`` and the field)."""
    from qingliang.agents.routing.teach import read_examples
    from qingliang.agents.toolbox import database_path

    spec, problems = graph.spec, []
    domain = graph.metadata.labels.get("domain")
    for i, n in enumerate(spec.nodes):
        settings = n.router or spec.router
        if n.type != "router" or settings.examples is None:
            continue
        at = f"spec.nodes[{i}].router.examples" if n.router else "spec.router.examples"
        path = database_path(settings.examples, base_dir)
        try:
            read_examples(path, n.routes or n.models, domain=domain, shown=settings.examples)
        except ValueError as exc:
            problems.append(f"{at}: {exc} (node {n.name!r})")
    return problems

"""Router warm start from labelled examples (``examples:``): checked at apply time, taught
once before the first decision with full information, kept across restarts, never logged
as decisions (off-policy evaluation, regret and the learning curve see live traffic only),
and feedback still moves the router afterwards. Real RouterService, LangGraph runtime and
run store; the chat model is scripted and the embedding is the hashing one (the real
embedder on the bundles' files: tests/unit/domains/test_router_examples.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from qingliang.agents.api import dispatch_call
from qingliang.agents.catalog import StaticCatalog
from qingliang.agents.manifest import AgentGraph
from qingliang.agents.resolve import resolve_graph
from qingliang.agents.routing.actor import RouterClient
from qingliang.agents.routing.features import RequestFeatures, hash_embedding
from qingliang.agents.routing.router import RouterConfig, RouterService
from qingliang.agents.routing.teach import example_key, read_examples
from qingliang.agents.service import AgentService
from qingliang.agents.state import GraphDef
from qingliang.platform.errors import Conflict
from tests.unit.agents.test_agent_runtime import Scripted

ARMS = ("tables", "prose")
TABLE = [
    "sum the permit table by district",
    "count rows per column",
    "totals of the fee table",
    "average of the numbers in column B",
    "rank the rows by amount",
]
PROSE = [
    "write a friendly letter to a citizen",
    "draft a polite reply about the delay",
    "compose a short thank-you note",
    "write an apology email",
    "a warm welcome message",
]


def write_examples(path: Path, rows: list[dict] | None = None) -> Path:
    rows = rows or [{"text": t, "route": "tables"} for t in TABLE] + [
        {"text": t, "route": "prose"} for t in PROSE
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def graph(examples: str | None = "ex.jsonl", *, on_node: bool = True) -> AgentGraph:
    settings = {"alpha": 0.3, "floor": 0.0, "seed": 3, "embedding_dims": 64, "domains": ["gov"]}
    if examples is not None:
        settings["examples"] = examples
    node = {"name": "triage", "type": "router", "routes": list(ARMS)}
    spec: dict = {
        "agents": [{"name": "tabler", "model": "tables"}, {"name": "writer", "model": "prose"}],
        "nodes": [node, {"name": "tables", "type": "agent", "agent": "tabler"},
                  {"name": "prose", "type": "agent", "agent": "writer"}],
    }  # fmt: skip
    if on_node:
        node["router"] = settings
    else:
        spec["router"] = settings
    return AgentGraph.model_validate(
        {"apiVersion": "qingliang.io/v1", "kind": "AgentGraph",
         "metadata": {"name": "desk", "labels": {"domain": "gov"}}, "spec": spec}
    )  # fmt: skip


def problems(g: AgentGraph, base: Path) -> list[str]:
    return resolve_graph(g, base, models={"tables": (), "prose": ()}, kbs=set(), graphs=set())


# ------------------------------------------------------------------------- validation


def test_apply_time_checks_name_the_file_the_line_and_the_field(tmp_path: Path) -> None:
    assert problems(graph(), tmp_path) == [
        f"spec.nodes[0].router.examples: ex.jsonl does not exist ({tmp_path / 'ex.jsonl'}) "
        "(node 'triage')"
    ]
    (tmp_path / "ex.jsonl").write_text(
        '{"text": "sum it", "route": "tables"}\n'
        "not json\n"
        '{"text": "write", "route": "poetry"}\n'
        '{"route": "prose"}\n'
        '{"text": "x", "route": "prose", "lang": "en"}\n'
        '{"text": "y", "route": "prose", "modality": "video"}\n',
        encoding="utf-8",
    )
    (p,) = problems(graph(), tmp_path)
    assert p.startswith("spec.nodes[0].router.examples: ex.jsonl:2: not a JSON object")
    assert "ex.jsonl:3: route: 'poetry' is not one of the router's arms (tables, prose)" in p
    assert "ex.jsonl:4: text: required" in p
    assert "ex.jsonl:5: lang: unknown field" in p
    assert "ex.jsonl:6: modality: must be one of text, image, table, mixed" in p
    assert "ex.jsonl:1" not in p  # the good line is not blamed

    (tmp_path / "ex.jsonl").write_text("\n\n", encoding="utf-8")
    (p,) = problems(graph(on_node=False), tmp_path)
    assert (
        p
        == "spec.router.examples: ex.jsonl has no examples (one JSON object a line) (node 'triage')"
    )

    write_examples(tmp_path / "ex.jsonl")
    assert problems(graph(), tmp_path) == [] and problems(graph(on_node=False), tmp_path) == []
    with pytest.raises(ValueError, match="examples"):
        graph("")


def test_a_line_takes_the_graphs_domain_label_unless_it_names_one(tmp_path: Path) -> None:
    f = write_examples(
        tmp_path / "ex.jsonl",
        [{"text": "a", "route": "tables"}, {"text": "b", "route": "prose", "domain": "health"}],
    )
    a, b = read_examples(f, ARMS, domain="gov")
    assert (a.domain, b.domain, a.modality, a.line, b.line) == ("gov", "health", "text", 1, 2)


# ------------------------------------------------------------------------- the service


def features(text: str, tenant: str | None = None) -> RequestFeatures:
    return RequestFeatures(text, hash_embedding(text), "gov", tenant=tenant)


def taught_batch() -> list[tuple[str, str, RequestFeatures]]:
    rows = [(t, "tables") for t in TABLE] + [(t, "prose") for t in PROSE]
    return [(example_key(t, a, "gov", "text"), a, features(t)) for t, a in rows]


CONFIG = RouterConfig(ARMS, "linucb", alpha=0.3, floor=0.0, embedding_dims=64)


def greedy(svc: RouterService, text: str, run_id: str) -> tuple[str, dict[str, float]]:
    d = svc.decide("desk/triage", features(text, "city-a"), run_id=run_id)
    return d.arm, d.scores


def test_teaching_is_full_information_once_and_never_a_logged_decision(tmp_path: Path) -> None:
    svc = RouterService(tmp_path / "router.sqlite")
    svc.register("desk/triage", CONFIG)
    batch = taught_batch()
    assert svc.teach("desk/triage", batch) == 10
    assert svc.teach("desk/triage", batch) == 0  # already taught: nothing twice
    assert svc.untaught("desk/triage", [k for k, _, _ in batch] + ["new"]) == ["new"]
    stats = svc.stats("desk/triage")
    assert stats["taught"] == 10 and stats["decisions"] == 0 and stats["updates"] == 0
    assert stats["learning"]["closed"] == 0 and stats["learning"]["estimated_regret"] is None
    # Held-out paraphrases go where the examples point, before any feedback.
    assert greedy(svc, "sum the fee table per district", "r1")[0] == "tables"
    assert greedy(svc, "write a friendly thank-you letter", "r2")[0] == "prose"
    with pytest.raises(Conflict, match="has 0 closed decisions"):
        svc.evaluate("desk/triage", CONFIG)  # ten taught examples are not a log


def test_a_restart_keeps_what_was_taught_and_does_not_teach_it_again(tmp_path: Path) -> None:
    db = tmp_path / "router.sqlite"
    first = RouterService(db)
    first.register("desk/triage", CONFIG)
    first.teach("desk/triage", taught_batch())
    _, before = greedy(first, "count the rows of the permit table", "r1")

    again = RouterService(db)  # a new process on the same file
    again.register("desk/triage", CONFIG)
    batch = taught_batch()
    assert again.untaught("desk/triage", [k for k, _, _ in batch]) == []
    assert again.teach("desk/triage", batch) == 0
    _, after = greedy(again, "count the rows of the permit table", "r2")
    assert after == pytest.approx(before)  # the same statistics, not taught twice
    assert again.stats("desk/triage")["taught"] == 10

    # A changed feature layout starts from the prior: the examples are taught again.
    wider = RouterConfig(ARMS, "linucb", alpha=0.3, floor=0.0, embedding_dims=32)
    again.register("desk/triage", wider)
    assert again.stats("desk/triage")["taught"] == 0
    assert again.teach("desk/triage", taught_batch()) == 10


def test_regret_and_off_policy_evaluation_see_only_live_decisions(tmp_path: Path) -> None:
    svc = RouterService(tmp_path / "router.sqlite")
    svc.register("desk/triage", CONFIG)
    svc.teach("desk/triage", taught_batch())
    texts = [f"{t} #{i}" for i in range(2) for t in TABLE + PROSE]
    for i, text in enumerate(texts):
        arm, _ = greedy(svc, text, f"r{i}")
        svc.finish_run(f"r{i}", success=True, latency_s=1.0, tokens=10)
        right = "tables" if text.split(" #")[0] in TABLE else "prose"
        svc.feedback(f"r{i}", 1.0 if arm == right else -1.0)
    stats = svc.stats("desk/triage")
    assert stats["taught"] == 10 and stats["decisions"] == stats["closed"] == len(texts)
    assert stats["learning"]["closed"] == len(texts)  # the 10 taught ones are not in it
    assert sum(a["count"] for a in stats["arms"].values()) == len(texts)
    report = svc.evaluate("desk/triage", CONFIG)
    assert report.n == len(texts) - len(texts) // 2  # scored on the live log's newer half


def test_feedback_still_moves_a_taught_router(tmp_path: Path) -> None:
    svc = RouterService(tmp_path / "router.sqlite")
    svc.register("desk/triage", CONFIG)
    svc.teach("desk/triage", taught_batch())
    text = "totals of the permit table, as a letter"
    arm, scores = greedy(svc, text, "r0")
    svc.finish_run("r0", success=True, latency_s=1.0, tokens=10)
    svc.feedback("r0", -1.0)
    _, after = greedy(svc, text, "r1")
    assert after[arm] < scores[arm]  # one correction lowers the desk it went to
    for i in range(2, 12):  # the people keep saying it was the wrong desk: it moves
        svc.finish_run(f"r{i - 1}", success=True, latency_s=1.0, tokens=10)
        svc.feedback(f"r{i - 1}", -1.0 if greedy(svc, text, f"r{i}")[0] == arm else 1.0)
    assert greedy(svc, text, "last")[0] != arm
    assert svc.stats("desk/triage")["updates"] > 0


# ------------------------------------------------------------------------- through the runtime


async def test_the_first_run_teaches_the_router_and_a_restart_does_not(tmp_path: Path) -> None:
    write_examples(tmp_path / "ex.jsonl")
    gdef = GraphDef(graph(), tmp_path)

    def service() -> AgentService:
        return AgentService(
            tmp_path / "home",
            chat=Scripted(),
            catalog=StaticCatalog([gdef]),
            router=RouterClient(RouterService(tmp_path / "router.sqlite")),
            tools_for=lambda g: {},
        )

    async def route(svc: AgentService, text: str) -> str:
        _, events = await svc.start("desk", {"input": text}, tenant="city-a", actor="t")
        return next(e for e in [e async for e in events] if e["type"] == "route")["arm"]

    async with service() as svc:
        assert await route(svc, "rank the permit table rows by fee") == "tables"
        assert await route(svc, "write a kind letter to the citizen") == "prose"
        stats = await svc.router.stats("desk/triage")
        assert stats["taught"] == 10 and stats["decisions"] == 2
        # GET /v1/agents/desk/routers (and `qingliang agents router desk`) shows it.
        shown = await dispatch_call(svc, "routers", "city-a", False, "t", {"graph": "desk"})
        assert shown["data"][0]["taught"] == 10 and shown["data"][0]["decisions"] == 2
    async with service() as svc:
        assert await route(svc, "sum the column of fees") == "tables"
        assert (await svc.router.stats("desk/triage"))["taught"] == 10
    # A line added to the file is taught the next time the graph is loaded, alone.
    with (tmp_path / "ex.jsonl").open("a", encoding="utf-8") as fh:
        fh.write(json.dumps({"text": "a table of fees per month", "route": "tables"}) + "\n")
    async with service() as svc:
        await route(svc, "sum the column of fees")
        assert (await svc.router.stats("desk/triage"))["taught"] == 11


async def test_a_broken_examples_file_stops_the_run_naming_it(tmp_path: Path) -> None:
    (tmp_path / "ex.jsonl").write_text('{"text": "x", "route": "nowhere"}\n', encoding="utf-8")
    async with AgentService(
        tmp_path / "home",
        chat=Scripted(),
        catalog=StaticCatalog([GraphDef(graph(), tmp_path)]),
        router=RouterClient(RouterService(tmp_path / "router.sqlite")),
        tools_for=lambda g: {},
    ) as svc:
        run_id, events = await svc.start("desk", {"input": "hi"}, tenant="a", actor="t")
        [e async for e in events]
        run = svc.get(run_id, "a")
        assert run.status == "stopped"
        assert "ex.jsonl:1: route: 'nowhere'" in (run.reason or "")


async def test_a_nested_desk_routes_a_request_without_a_domain_as_its_own(tmp_path: Path) -> None:
    """The front desk's requests carry no domain label; the gov desk it nests was taught
    `gov` examples, and routes them as the `gov` requests they are (as when asked directly)."""
    write_examples(tmp_path / "ex.jsonl")
    front = AgentGraph.model_validate(
        {"apiVersion": "qingliang.io/v1", "kind": "AgentGraph", "metadata": {"name": "front"},
         "spec": {"nodes": [{"name": "go", "type": "graph", "graph": "desk"}]}}
    )  # fmt: skip
    routers = RouterService(tmp_path / "router.sqlite")
    async with AgentService(
        tmp_path / "home",
        chat=Scripted(),
        catalog=StaticCatalog([GraphDef(graph(), tmp_path), GraphDef(front, tmp_path)]),
        router=RouterClient(routers),
        tools_for=lambda g: {},
    ) as svc:
        run_id, events = await svc.start(
            "front", {"input": "sum the fee table"}, tenant="a", actor="t"
        )
        route = next(e for e in [e async for e in events] if e["type"] == "route")
        assert route["router"] == "desk/triage" and route["arm"] == "tables"
    (decision,) = routers.log.by_run(run_id)
    names = RouterConfig(ARMS, "linucb", domains=("gov",), embedding_dims=64).encoder().names
    assert decision.features[names.index("domain=gov")] == 1.0

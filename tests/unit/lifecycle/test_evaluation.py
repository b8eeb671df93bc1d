"""``qingliang eval``: the questions file, the metrics, and the runner against the real gateway.

The runner tests use the gateway app in-process (FastAPI's TestClient is an httpx client)
with real keys, a real KnowledgeService on embedded Qdrant (the small bigram embedder of
the knowledge tests) and a real AgentService (LangGraph, the router, the form and
knowledge tools over that same KnowledgeService). Only the chat model is scripted: it
searches the knowledge base, fills the ``intake`` form from a keyword of the request and
answers with the first passage. Each gold file's metrics are worked out by hand below.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from qingliang.agents.api import LocalAgents
from qingliang.agents.catalog import StaticCatalog
from qingliang.agents.llm import ChatReply, ToolCall
from qingliang.agents.manifest import AgentGraph
from qingliang.agents.routing.actor import LocalRouter
from qingliang.agents.routing.router import RouterService
from qingliang.agents.service import AgentService
from qingliang.agents.state import GraphDef
from qingliang.knowledge.api import LocalKnowledge
from qingliang.knowledge.service import KnowledgeService
from qingliang.platform.cli.main import app
from qingliang.platform.errors import QingliangError
from qingliang.platform.gateway.app import create_app
from qingliang.platform.gateway.auth.keys import KeyAuth
from qingliang.platform.lifecycle.evaluation import metrics, runner
from qingliang.platform.lifecycle.evaluation.questions import (
    EvalInputError,
    parse_line,
    read_questions,
)
from qingliang.platform.storage.keys import KeyStore
from tests.unit.knowledge.test_knowledge_service import BigramEmbedder, _manifest

# -- the questions file -------------------------------------------------------------------


def _write(path: Path, lines: list[Any]) -> Path:
    path.write_text(
        "\n".join(x if isinstance(x, str) else json.dumps(x, ensure_ascii=False) for x in lines)
        + "\n",
        encoding="utf-8",
    )
    return path


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("{not json", "line 4: not valid JSON"),
        ("[1, 2]", "line 4: must be a JSON object, not list"),
        ('{"question": "q"}', "line 4: id: is required"),
        ('{"id": true, "question": "q"}', "line 4: id: is required"),
        ('{"id": "a", "question": "  "}', "line 4: question: is required"),
        ('{"id": "a", "question": "q", "answers": "七天"}', "line 4: answers: must be a list"),
        ('{"id": "a", "question": "q", "nuggets": []}', "line 4: nuggets: must be a list"),
        ('{"id": "a", "question": "q", "labels": {"d": [1]}}', "line 4: labels: must be an obj"),
        ('{"id": "a", "question": "q", "doc_id": 3}', "line 4: doc_id: must be a string or"),
        ('{"id": "a", "question": "q", "image": "x.txt"}', "line 4: image: 'x.txt' is not a pic"),
        ('{"id": "a", "question": "q", "image": "no.png"}', "line 4: image: no such file"),
        ('{"id": "a", "question": "q", "domain": 5}', "line 4: domain: must be a non-empty"),
    ],
)
def test_a_bad_line_is_named_by_its_number_and_field(
    tmp_path: Path, line: str, message: str
) -> None:
    with pytest.raises(EvalInputError) as info:
        parse_line(line, 4, tmp_path)
    assert str(info.value).startswith(message)


def test_the_whole_file_is_checked_before_anything_runs(tmp_path: Path) -> None:
    (tmp_path / "scan.png").write_bytes(b"\x89PNG fake")
    good = {"id": 1, "question": "q1", "image": "scan.png", "doc_id": "d1", "note": "kept"}
    path = _write(tmp_path / "q.jsonl", [good, "", {"id": "2", "question": "q2"}])
    qs = read_questions(path, limit=1)
    assert [(q.id, q.line) for q in qs] == [("1", 1)]
    assert qs[0].image == tmp_path / "scan.png"
    assert qs[0].gold == {"doc_id": ["d1"]}  # a single doc id becomes a list; notes ignored
    # A bad line past --limit still stops the run.
    _write(path, [good, {"id": "2", "question": "q2"}, {"id": "3"}])
    with pytest.raises(EvalInputError, match="line 3: question"):
        read_questions(path, limit=1)
    _write(path, [good, {"id": 1, "question": "again"}])
    with pytest.raises(EvalInputError, match="line 2: id: '1' repeats line 1"):
        read_questions(path)
    _write(path, ["", "  "])
    with pytest.raises(EvalInputError, match="no questions"):
        read_questions(path)
    with pytest.raises(EvalInputError, match="no such questions file"):
        read_questions(tmp_path / "missing.jsonl")


# -- metrics ------------------------------------------------------------------------------


def test_text_is_compared_across_width_case_and_whitespace() -> None:
    assert metrics.normalize("ＡＢ Ｃ\n１２") == "abc12"
    assert metrics.span_hit(["居家 隔离 ７天"], "应当居家隔离7天。")
    assert not metrics.span_hit(["十四天"], "居家隔离7天")
    assert not metrics.span_hit(["  "], "anything")  # a blank span never matches
    assert metrics.nugget_recall(["隔离", "体温", "核酸"], "隔离期间每日报告体温") == 2 / 3


def test_a_citation_matches_by_doc_id_record_or_source_tail() -> None:
    c = {"doc_id": "h1", "record": "faq-7", "source": "data/policy.jsonl"}
    assert metrics.citation_matches({"record": ["faq-7"]}, c)
    assert metrics.citation_matches({"source": ["policy.jsonl"]}, c)
    assert metrics.citation_matches({"doc_id": ["x", "h1"]}, c)
    assert not metrics.citation_matches({"source": ["licy.jsonl"]}, c)
    assert not metrics.citation_matches({"record": ["faq-8"]}, c)


def test_metrics_of_a_graph_run_by_hand() -> None:
    gold = [
        {"answers": ["七天"], "doc_id": ["d2"], "labels": {"department": "卫健委"}},
        {"answer_span": "社区", "record": ["r9"], "labels": {"department": "民政局", "route": "a"}},
        {"nuggets": ["口罩", "药店", "处方"]},
        {"answers": ["x"], "doc_id": ["d1"], "labels": {"department": "x"}},  # failed
    ]
    outputs = [
        {
            "answer": "居家观察七 天",
            "citations": [{"doc_id": "d1"}, {"doc_id": "d2"}],
            "fields": {"department": "卫健委"},
            "latency_s": 1.0,
        },
        {
            "answer": "到街道办理",
            "citations": [{"doc_id": "d5", "record": "r1"}] * 5 + [{"record": "r9"}],
            "fields": {"department": "民政局"},
            "route": "a",
            "latency_s": 2.0,
        },
        {"answer": "口罩在药店买", "citations": [], "latency_s": 3.0},
        {"answer": None, "citations": [{"doc_id": "d1"}], "error": "HTTP 500", "latency_s": 0.5},
    ]
    m = metrics.compute(gold, outputs, k=5, kind="graph")
    assert (m["questions"], m["errors"], m["k"]) == (4, 1, 5)
    # spans: q1 hit (whitespace ignored), q2 miss, q4 failed
    assert m["answer_span_hit"] == {"value": round(1 / 3, 4), "n": 3}
    # docs: q1 rank 2 (1/2), q2 gold beyond k=5 (0), q4 failed (0)
    assert m["doc_hit_at_k"] == {"value": round(1 / 3, 4), "n": 3}
    assert m["doc_mrr"] == {"value": round(0.5 / 3, 4), "n": 3}
    # labels: q1 right, q2 both right, q4 wrong: 3 of 4 pairs
    assert m["label_accuracy"] == {"value": 0.75, "n": 4}
    assert m["labels"] == {
        "department": {"value": round(2 / 3, 4), "n": 3},
        "route": {"value": 1.0, "n": 1},
    }
    assert m["nugget_recall"] == {"value": round(2 / 3, 4), "n": 1}
    # cited: of the three answered, two have citations
    assert m["cited"] == {"value": round(2 / 3, 4), "n": 3}
    assert m["latency"] == {"n": 4, "mean_s": 1.625, "p50_s": 1.5, "p95_s": 3.0}


def test_kb_metrics_read_the_top_k_text_and_absent_gold_gives_no_metric() -> None:
    gold = [{"answers": ["十四天"], "nuggets": ["体温", "口罩"]}, {}]
    cites = [{"text": "返岗人员居家隔离"}, {"text": "十四天，每日报告体温"}]
    outputs = [{"citations": cites, "answer": None}, {"citations": [], "answer": None}]
    at1 = metrics.compute(gold, outputs, k=1, kind="kb")
    at2 = metrics.compute(gold, outputs, k=2, kind="kb")
    assert at1["answer_span_hit"]["value"] == 0.0 and at2["answer_span_hit"]["value"] == 1.0
    assert at1["nugget_recall"]["value"] == 0.0 and at2["nugget_recall"]["value"] == 0.5
    assert "doc_hit_at_k" not in at2 and "label_accuracy" not in at2
    assert at2["cited"] == {"value": 0.5, "n": 2}
    with pytest.raises(ValueError, match="2 gold entries for 1 outputs"):
        metrics.compute(gold, outputs[:1])


# -- the runner against the gateway -------------------------------------------------------


DOCS = {
    "quarantine.md": "# 返岗隔离\n\n返岗人员应居家隔离十四天，每日报告体温。\n",
    "masks.md": "# 口罩购买\n\n口罩可以在社区卫生服务中心免费领取。\n",
    "reopening.md": "# 企业复工\n\n企业复工须制定防控方案并报属地街道备案。\n",
}
#: The department the scripted model files a request under, by a keyword of the request.
DEPARTMENTS = {"隔离": "卫健委", "口罩": "卫健委", "复工": "发改委"}

DESK = {
    "apiVersion": "qingliang.io/v1",
    "kind": "AgentGraph",
    "metadata": {"name": "desk"},
    "spec": {
        "agents": [{"name": "clerk", "model": "m1", "tools": ["policy", "intake"]}],
        "tools": [
            {"kind": "knowledge_search", "name": "policy", "knowledge": "policy", "limit": 3},
            {"kind": "form", "name": "intake", "fields": [{"name": "department"}]},
        ],
        "nodes": [
            {"name": "triage", "type": "router", "routes": ["quick", "careful"]},
            {"name": "quick", "type": "agent", "agent": "clerk"},
            {"name": "careful", "type": "agent", "agent": "clerk"},
        ],
    },
}


class ScriptedChat:
    """Searches and fills the form on the first turn; then answers with the first passage."""

    async def complete(self, model: str, messages: list[dict], **kw: Any) -> ChatReply:
        request = str(messages[1]["content"]).splitlines()[0]
        if "失败" in request:
            raise RuntimeError("the model is down")
        done = [m for m in messages if m["role"] == "tool"]
        if not done:
            dept = next((d for word, d in DEPARTMENTS.items() if word in request), "市长热线")
            calls = [
                ToolCall("c1", "policy", {"query": request}),
                ToolCall("c2", "intake", {"department": dept}),
            ]
            return ChatReply("", calls, 3, model)
        passage = str(done[0]["content"]).split("] ", 1)[-1].split(" (source:")[0]
        return ChatReply(f"答：{passage}", [], 5, model)


class NoModels:
    def models(self) -> list:
        return []

    async def ready(self) -> dict:
        return {}


@pytest.fixture
def platform(tmp_path: Path) -> Iterator[runner.PlatformApi]:
    home, docs, base = tmp_path / "home", tmp_path / "docs", tmp_path / "desk"
    docs.mkdir()
    base.mkdir()
    for name, text in DOCS.items():
        (docs / name).write_text(text, encoding="utf-8")
    kb = KnowledgeService(home, embedder_factory=lambda _m: BigramEmbedder())
    kb.register(_manifest("policy", docs, tenant="default"), base=docs)
    kb.sync("policy")
    agents = AgentService(
        home,
        chat=ScriptedChat(),
        catalog=StaticCatalog([GraphDef(AgentGraph.model_validate(DESK), base)]),
        router=LocalRouter(RouterService(home / "router.sqlite")),
        knowledge=kb.search,
    )
    auth = KeyAuth(home / "state.sqlite", True)
    gateway = create_app(NoModels(), None, auth, LocalKnowledge(kb), LocalAgents(agents))  # type: ignore[arg-type]
    _record, key = KeyStore(home / "state.sqlite").create("eval", scopes=["admin"])
    with TestClient(gateway) as client:
        yield runner.PlatformApi(api_key=key, client=client)
        client.portal.call(agents.close)  # type: ignore[union-attr]
    kb.close()


def test_the_target_kind_is_asked_of_the_platform(platform: runner.PlatformApi) -> None:
    assert runner.detect_kind(platform, "policy") == "kb"
    assert runner.detect_kind(platform, "desk") == "graph"
    assert runner.detect_kind(platform, "desk", "graph") == "graph"
    with pytest.raises(
        QingliangError, match=r"neither .* \(graphs: desk; knowledge bases: policy\)"
    ):
        runner.detect_kind(platform, "nope")
    with pytest.raises(QingliangError, match="no knowledge base 'desk' on the platform"):
        runner.detect_kind(platform, "desk", "kb")
    with pytest.raises(QingliangError, match="--kind must be one of graph, kb"):
        runner.detect_kind(platform, "desk", "agent")


KB_GOLD = [
    {
        "id": "q1",
        "question": "返岗人员要隔离几天",
        "answers": ["十四天"],
        "source": "quarantine.md",
    },
    {
        "id": "q2",
        "question": "口罩在哪里领取",
        "nuggets": ["社区", "免费", "药店"],
        "source": "masks.md",
    },
    {"id": "q3", "question": "企业复工要备案吗", "answer_span": "报属地街道备案", "doc_id": "nope"},
]


def test_a_kb_is_searched_and_scored(platform: runner.PlatformApi, tmp_path: Path) -> None:
    qs = read_questions(_write(tmp_path / "gold.jsonl", KB_GOLD))
    out_path = tmp_path / "out" / "kb.jsonl"
    outputs = runner.run(platform, "policy", qs, out_path, kind="kb", k=1, concurrency=2)
    lines = [json.loads(line) for line in out_path.read_text(encoding="utf-8").splitlines()]
    assert lines == outputs and [o["id"] for o in lines] == ["q1", "q2", "q3"]
    for o, name in zip(lines, ("quarantine.md", "masks.md", "reopening.md"), strict=True):
        assert o["answer"] is None and o["route"] is None and o["fields"] == {}
        assert len(o["citations"]) == 1 and o["citations"][0]["source"].endswith(name)
        assert set(o["citations"][0]) == set(runner.CITATION_FIELDS)
    m = metrics.compute([q.gold for q in qs], outputs, k=1, kind="kb")
    # By hand: each question's own document is its first hit; q3's gold doc_id names none.
    assert m["answer_span_hit"] == {"value": 1.0, "n": 2}
    assert m["doc_hit_at_k"] == {"value": round(2 / 3, 4), "n": 3}
    assert m["doc_mrr"] == {"value": round(2 / 3, 4), "n": 3}
    assert m["nugget_recall"] == {"value": round(2 / 3, 4), "n": 1}  # 社区, 免费; not 药店
    assert m["errors"] == 0


GRAPH_GOLD = [
    {"id": 1, "question": "返岗人员要隔离几天", "answers": ["十四天"],
     "labels": {"department": "卫健委"}},
    {"id": 2, "question": "企业复工要备案吗", "nuggets": ["备案", "防控方案", "审批"],
     "labels": {"department": "民政局"}, "source": "reopening.md"},
    {"id": 3, "question": "失败的请求", "answers": ["x"], "labels": {"department": "x"}},
]  # fmt: skip


def test_a_graph_is_run_and_scored_through_the_cli(
    platform: runner.PlatformApi, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    questions = _write(tmp_path / "gold.jsonl", GRAPH_GOLD)
    out_path = tmp_path / "graph.jsonl"
    # The CLI's own connection is the one piece replaced: it gets the in-process gateway.
    monkeypatch.setattr("qingliang.platform.cli.eval_cmd._connect", lambda url, key: platform)
    args = ["eval", "run", "desk", "-q", str(questions), "-o", str(out_path), "--json"]
    result = CliRunner().invoke(app, [*args, "--no-progress"])
    assert result.exit_code == 0, result.output
    m = json.loads(result.stdout)
    lines = [json.loads(line) for line in out_path.read_text(encoding="utf-8").splitlines()]
    assert [o["id"] for o in lines] == ["1", "2", "3"]
    first, second, third = lines
    assert "返岗人员应居家隔离十四天" in first["answer"]
    assert first["fields"] == {"department": "卫健委"}
    assert first["route"] in ("quick", "careful") and first["status"] == "done"
    assert first["citations"][0]["source"].endswith("quarantine.md")
    assert first["citations"][0]["kb"] == "policy"
    assert second["fields"] == {"department": "发改委"}
    assert third["error"].startswith("run failed") and third["answer"] is None
    # By hand: q1 span hit, q3 failed -> 1/2; labels q1 right, q2 wrong, q3 failed -> 1/3;
    # nuggets of q2: 备案 and 防控方案 in the answer, 审批 not -> 2/3; q2's document cited first.
    assert m["target_kind"] == "graph" and m["errors"] == 1
    assert m["answer_span_hit"] == {"value": 0.5, "n": 2}
    assert m["label_accuracy"] == {"value": round(1 / 3, 4), "n": 3}
    assert m["nugget_recall"] == {"value": round(2 / 3, 4), "n": 1}
    assert m["doc_hit_at_k"] == {"value": 1.0, "n": 1} and m["doc_mrr"]["value"] == 1.0
    # `eval score` recomputes the same numbers from the files alone.
    again = CliRunner().invoke(
        app,
        ["eval", "score", "-q", str(questions), "-o", str(out_path), "--kind", "graph", "--json"],
    )
    assert again.exit_code == 0, again.output
    assert json.loads(again.stdout) == {**m, "latency": json.loads(again.stdout)["latency"]}
    table = CliRunner().invoke(
        app, ["eval", "score", "-q", str(questions), "-o", str(out_path), "--kind", "graph"]
    )
    assert table.exit_code == 0, table.output
    for row in ("answer-span hit", "0.500", "label accuracy", "0.333", "label department"):
        assert row in table.stdout


def test_the_cli_refuses_a_bad_file_before_asking_anything(tmp_path: Path) -> None:
    questions = _write(tmp_path / "gold.jsonl", [{"id": 1, "question": "q"}, {"id": 2}])
    out_path = tmp_path / "out.jsonl"
    args = ["eval", "run", "desk", "-q", str(questions), "-o", str(out_path)]
    result = CliRunner().invoke(app, [*args, "--url", "http://127.0.0.1:9"])
    assert result.exit_code == 1
    assert "line 2: question: is required" in result.stderr
    assert not out_path.exists()


def test_a_platform_without_agents_still_evaluates_its_knowledge_bases(tmp_path: Path) -> None:
    home, docs = tmp_path / "home", tmp_path / "docs"
    docs.mkdir()
    (docs / "masks.md").write_text(DOCS["masks.md"], encoding="utf-8")
    kb = KnowledgeService(home, embedder_factory=lambda _m: BigramEmbedder())
    kb.register(_manifest("policy", docs, tenant="default"), base=docs)
    kb.sync("policy")
    gateway = create_app(NoModels(), None, KeyAuth(home / "x.sqlite", False), LocalKnowledge(kb))  # type: ignore[arg-type]
    with TestClient(gateway) as client:
        api = runner.PlatformApi(client=client)
        assert runner.detect_kind(api, "policy") == "kb"  # /v1/agents answers 501 here
        with pytest.raises(QingliangError, match="no agent graph 'policy' on the .*known: none"):
            runner.detect_kind(api, "policy", "graph")
    kb.close()

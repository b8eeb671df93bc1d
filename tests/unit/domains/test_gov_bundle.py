"""The gov demonstration bundle (deploy/domains/gov): its manifests load and resolve, its
data is well-formed and consistent with the desk's forms, the SQL tool answers over the
prepared table, the policy KB finds the right record with the packaged embedder, and the
desk runs on the real LangGraph runtime: routing learned from feedback, the hotline
classification as form values, cited policy answers, and a photographed residence-permit
form read by OCR into the form, approved by a second person and filed exactly once.

Only the chat model is scripted (a fake at the model boundary); the knowledge service,
embedder, OCR, router, forms and SQLite tools are the real ones.
"""

from __future__ import annotations

import base64
import csv
import json
import re
import shutil
import sqlite3
from pathlib import Path
from typing import Any

import pytest

import qingliang.platform.lifecycle.pipelines.kinds  # noqa: F401  (registers every kind)
from qingliang.agents.catalog import StaticCatalog
from qingliang.agents.llm import ChatReply, ToolCall
from qingliang.agents.resolve import resolve_graph
from qingliang.agents.routing.actor import RouterClient
from qingliang.agents.routing.router import RouterService
from qingliang.agents.service import AgentService, default_tools
from qingliang.agents.state import GraphDef
from qingliang.agents.tools.base import ToolContext
from qingliang.knowledge.service import KnowledgeService
from qingliang.platform.control import demos
from qingliang.platform.errors import Conflict
from qingliang.platform.manifests.loader import load_paths
from qingliang.serving.embeddings import PackagedEmbedder
from tests.unit.domains._training import check_training

BUNDLE = Path(__file__).resolve().parents[3] / "deploy" / "domains" / "gov"
DATA = BUNDLE / "data"
FORM_PNG = BUNDLE / "samples" / "residence_permit_form.png"
TENANT = "city-a"


def _policy() -> list[dict]:
    lines = (DATA / "policy" / "policy.jsonl").read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines]


def _taxonomy() -> list[dict]:
    with (DATA / "hotline_taxonomy.csv").open(encoding="utf-8", newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture
def bundle(tmp_path: Path) -> Path:
    """A prepared copy of the bundle (the repository stays clean)."""
    root = tmp_path / "gov"
    shutil.copytree(BUNDLE, root, ignore=shutil.ignore_patterns("*.sqlite*"))
    demos.prepare(root)
    return root


def _loaded(root: Path) -> dict[str, Any]:
    b = demos.Bundle.load(root)
    return {i.manifest.metadata.name: i.manifest for i in load_paths(b.manifests)}


# ---------------------------------------------------------------- manifests and data


def test_the_bundle_loads_and_the_desk_resolves_against_its_prepared_data(bundle: Path) -> None:
    b = demos.Bundle.load(bundle)
    assert b.spec.manifests == ["knowledge.yaml", "desk.yaml"]
    assert any("gov-desk" in line for line in b.spec.try_)
    manifests = _loaded(bundle)
    assert set(manifests) == {"gov-policy", "gov-desk"}
    desk = manifests["gov-desk"]
    # The answer writers call the gov adapter by its alias; the form fillers the base model.
    assert {a.name: a.model for a in desk.spec.agents} == {
        "hotline": "qwen-coder",
        "reply": "qwen-coder:gov",
        "policy": "qwen-coder:gov",
        "intake": "qwen-coder",
    }
    problems = resolve_graph(
        desk, bundle, models={"qwen-coder": ()}, kbs={"gov-policy"}, graphs=set()
    )
    assert any("has no adapter 'gov'" in str(p) for p in problems), problems
    problems = resolve_graph(
        desk, bundle, models={"qwen-coder": ("gov",)}, kbs={"gov-policy"}, graphs=set()
    )
    assert problems == []
    # Without the prepared table the desk does not resolve, and says which file is missing.
    (bundle / "data" / "offices.sqlite").unlink()
    problems = resolve_graph(
        desk, bundle, models={"qwen-coder": ("gov",)}, kbs={"gov-policy"}, graphs=set()
    )
    assert any("offices.sqlite" in p for p in map(str, problems)), problems


def test_the_policy_notes_have_stable_ids_titles_and_cover_every_topic() -> None:
    records = _policy()
    ids = [r["id"] for r in records]
    assert len(records) >= 36 and len(set(ids)) == len(ids)
    assert all(re.fullmatch(r"[A-Z]{2}-\d{3}", i) for i in ids)
    assert all(r["title"].strip() and len(r["text"]) >= 60 for r in records)
    topics = {r["topic"] for r in records}
    assert {
        "社会保险",
        "居住证",
        "住房公积金",
        "营业执照",
        "养老服务",
        "教育入学",
        "12345热线",
    } <= topics
    readme = (DATA / "README.md").read_text(encoding="utf-8")
    assert "fictional" in readme and "Qingliang" in readme


def test_the_hotline_form_offers_exactly_the_taxonomy_and_its_departments() -> None:
    rows = _taxonomy()
    assert len(rows) >= 20 and all(r["level1"] and r["level2"] and r["department"] for r in rows)
    leaves = [r["level2"] for r in rows]  # the leaves name their level1 uniquely
    assert len(set(leaves)) == len(leaves)
    desk = _loaded(BUNDLE)["gov-desk"]
    (ticket,) = [t for t in desk.spec.tools if t.name == "hotline_ticket"]
    fields = {f.name: f for f in ticket.fields}
    assert fields["category"].enum == leaves
    assert set(fields["department"].enum) == {r["department"] for r in rows}
    # The classifier's prompt pairs every leaf with its department, as the CSV does.
    (hotline,) = [a for a in desk.spec.agents if a.name == "hotline"]
    pairs = re.findall(r"^(\S+) → (\S+)$", hotline.system, re.M)
    assert pairs == [(leaf, r["department"]) for leaf, r in zip(leaves, rows, strict=True)]


def test_the_sql_tool_answers_over_the_prepared_offices_table(bundle: Path) -> None:
    desk = _loaded(bundle)["gov-desk"]
    tools = default_tools(GraphDef(desk, bundle))
    ctx = ToolContext(run_id="r1", tenant=TENANT)

    def ask(sql: str) -> str:
        return str(tools["offices"].run({"query": sql}, ctx).content)

    saturday = ask("SELECT COUNT(*) AS n FROM offices WHERE saturday_hours <> '不开放'")
    assert re.search(r"\b5\b", saturday), saturday
    permits = ask("SELECT name FROM offices WHERE services LIKE '%居住证%' AND district = '青石区'")
    assert "青石区政务服务中心" in permits and "明湖区" not in permits
    with pytest.raises(Exception, match="(?i)read|not allowed|authori"):
        tools["offices"].run({"query": "DELETE FROM offices"}, ctx)


# ---------------------------------------------------------------- knowledge


@pytest.fixture(scope="module")
def embedder(tmp_path_factory: pytest.TempPathFactory) -> PackagedEmbedder:
    return PackagedEmbedder(cache_dir=tmp_path_factory.getbasetemp() / "e5-model-cache")


@pytest.fixture
def kb(bundle: Path, tmp_path: Path, embedder: PackagedEmbedder) -> KnowledgeService:
    service = KnowledgeService(tmp_path / "kb-home", embedder_factory=lambda _m: embedder)
    manifest = _loaded(bundle)["gov-policy"]
    body = manifest.model_dump(mode="json", by_alias=True, exclude_none=True)
    body["spec"]["labels"]["tenant"] = TENANT
    service.register(type(manifest).model_validate(body), base=bundle)
    report = service.sync("gov-policy").report
    assert report.added == len(_policy()) and not report.errors
    yield service
    service.close()


def test_the_policy_kb_finds_the_right_record_for_written_questions(kb: KnowledgeService) -> None:
    lines = (DATA / "questions.jsonl").read_text(encoding="utf-8").splitlines()
    questions = [json.loads(line) for line in lines]
    hits, ranks = 0, []
    for q in questions:
        found = kb.search("gov-policy", q["question"], tenant=TENANT, limit=5)["citations"]
        records = [c["record"] for c in found]
        hits += q["record"] in records
        ranks.append(records.index(q["record"]) + 1 if q["record"] in records else None)
    print(f"gov-policy hit@5 {hits}/{len(questions)}; ranks {ranks}")
    assert hits >= len(questions) - 1, ranks
    top = kb.search("gov-policy", "办理居住证需要带哪些材料", tenant=TENANT)["citations"][0]
    assert top["record"] == "RP-002" and top["text"].startswith("居住证办理所需材料清单")
    # spec.retrieval.context: each record is one chunk, so the context the desk reads is it
    assert top["context"] == top["text"]


# ---------------------------------------------------------------- the desk


def _text(content: Any) -> str:
    if isinstance(content, str) or content is None:
        return content or ""
    return "\n".join(p.get("text", "") for p in content if isinstance(p, dict))


#: What the scripted clerk files for a hotline message: keyword -> (category, department).
HOTLINE = {
    "施工": ("噪音扰民", "清源市生态环境局"),
    "工资": ("欠薪讨薪", "清源市人力资源和社会保障局"),
}
#: The OCR labels of the paper form -> the residence_permit fields.
LABELS = {
    "姓名": "applicant",
    "身份证号": "id_number",
    "手机号": "phone",
    "居住区": "district",
    "居住地址": "address",
    "入住日期": "move_in",
    "申领依据": "basis",
}


class Clerk:
    """Plays qwen-coder: the desk asking is known by the tools it offers. The hotline desk
    fills its ticket from keywords, the intake desk copies the OCR text of the attached
    form into the form, and every answer cites passage [1]."""

    def __init__(self) -> None:
        self.prompts: list[str] = []

    async def complete(self, model, messages, *, tools=None, max_tokens=256, temperature=0.0,
                       on_delta=None, user=None):  # fmt: skip
        offered = {t["function"]["name"] for t in tools or []}
        asked = _text([m for m in messages if m["role"] == "user"][-1]["content"])
        self.prompts.append("\n".join(_text(m["content"]) for m in messages))
        if not any(m["role"] == "tool" for m in messages):
            if "hotline_ticket" in offered:
                category, department = next(v for k, v in HOTLINE.items() if k in asked)
                args = {"category": category, "department": department, "summary": asked[:30]}
                return ChatReply("", [ToolCall("c1", "hotline_ticket", args)], 9, model)
            if "residence_permit" in offered:
                args = {}
                for line in asked.splitlines():
                    label, _, value = line.strip().partition(" ")
                    if label in LABELS and value:
                        args[LABELS[label]] = value.strip()
                return ChatReply("", [ToolCall("c1", "residence_permit", args)], 9, model)
        text = "根据[1]，答复如下。"
        if on_delta:
            on_delta(text)
        return ChatReply(text, [], 6, model)


def _searcher(kb: KnowledgeService):
    def search(name: str, query: str, *, tenant, limit, mode):
        return kb.search(name, query, tenant=tenant, limit=limit, mode=mode)["citations"]

    return search


async def _events(pair) -> tuple[str, list[dict]]:
    run_id, events = await pair
    return run_id, [e async for e in events]


async def _routed(svc: AgentService, body: dict, arm: str, tries: int = 12) -> tuple[str, list]:
    """Ask until the learned router sends the request to ``arm``; a wrong desk is told so
    (feedback -1, a waiting run rejected), as a user of the demo would."""
    for _ in range(tries):
        run_id, events = await _events(svc.start("gov-desk", body, tenant=TENANT, actor="citizen"))
        route = next(e for e in events if e["type"] == "route")
        if route["arm"] == arm:
            return run_id, events
        if svc.get(run_id, TENANT).status == "waiting":
            await _events(svc.resume(run_id, {"action": "reject"}, tenant=TENANT, actor="clerk"))
        await svc.feedback(run_id, -1.0, tenant=TENANT, actor="citizen")
    raise AssertionError(f"the router never chose {arm!r}")


@pytest.fixture
async def desk(bundle: Path, tmp_path: Path, kb: KnowledgeService):
    manifest = _loaded(bundle)["gov-desk"]
    chat = Clerk()
    svc = AgentService(
        tmp_path / "home",
        chat=chat,
        catalog=StaticCatalog([GraphDef(manifest, bundle)]),
        router=RouterClient(RouterService(tmp_path / "router.sqlite")),
        knowledge=_searcher(kb),
    )
    async with svc:
        yield svc, chat, bundle


async def test_a_hotline_message_is_classified_into_the_form_and_the_reply_cites(desk) -> None:
    svc, _chat, _root = desk
    body = {"input": "我家楼下工地每天晚上十一点还在施工，噪音太大睡不着，请处理"}
    run_id, events = await _routed(svc, body, "hotline")
    (ticket,) = [e for e in events if e["type"] == "tool" and e["tool"] == "hotline_ticket"]
    assert ticket["arguments"]["category"] == "噪音扰民"
    assert ticket["arguments"]["department"] == "清源市生态环境局"
    assert "missing" not in ticket["result"].lower()
    cited = [c for e in events if e["type"] == "citations" for c in e["citations"]]
    assert "HL-005" in [c["record"] for c in cited]
    assert svc.get(run_id, TENANT).status == "done"


async def test_a_policy_question_is_answered_with_the_record_cited(desk) -> None:
    svc, chat, _root = desk
    run_id, events = await _routed(svc, {"input": "租房可以提取多少住房公积金？"}, "policy")
    cited = [c for e in events if e["type"] == "citations" for c in e["citations"]]
    assert cited[0]["record"] == "HF-001"
    assert "租房提取住房公积金" in chat.prompts[-1]  # the passage reached the model
    run = svc.get(run_id, TENANT)
    assert run.status == "done" and "[1]" in (run.answer or "")


async def test_a_photographed_form_is_read_into_the_application_approved_and_filed_once(
    desk,
) -> None:
    svc, _chat, root = desk
    photo = base64.b64encode(FORM_PNG.read_bytes()).decode()
    body = {
        "input": "我要申请居住证，申请表照片附上。",
        "attachments": [{"name": "residence_permit_form.png", "data": photo}],
    }
    run_id, events = await _routed(svc, body, "apply")
    run = svc.get(run_id, TENANT)
    assert run.status == "waiting", run
    filled = run.pending["forms"]["residence_permit"]
    assert filled == {
        "applicant": "林晓雨",
        "id_number": "330102199203154528",
        "phone": "13957112345",
        "district": "青石区",
        "address": "青石区建设路88号3幢502室",
        "move_in": "2025-03-01",
        "basis": "合法稳定就业",
    }
    db = root / "data" / "requests.sqlite"
    assert (
        not db.exists()
        or not sqlite3.connect(db)
        .execute("SELECT name FROM sqlite_master WHERE name = 'permit_applications'")
        .fetchall()
    )
    await _events(svc.resume(run_id, {"action": "approve"}, tenant=TENANT, actor="officer"))
    assert svc.get(run_id, TENANT).status == "done"
    with pytest.raises(Conflict):
        await _events(svc.resume(run_id, {"action": "approve"}, tenant=TENANT, actor="officer"))
    with sqlite3.connect(db) as c:
        rows = c.execute("SELECT values_json FROM permit_applications").fetchall()
    assert [json.loads(v)["id_number"] for (v,) in rows] == ["330102199203154528"]


# ---------------------------------------------------------------- training


def test_the_training_pipeline_loads_and_its_pairs_pass_governance(tmp_path: Path) -> None:
    check_training(BUNDLE, "gov", DATA / "sft" / "gov_sft.jsonl", tmp_path)
    # No hotline message of the gold file is trained on.
    gold = [
        json.loads(line)["question"]
        for line in (DATA / "hotline_questions.jsonl").read_text(encoding="utf-8").splitlines()
    ]
    trained = (DATA / "sft" / "gov_sft.jsonl").read_text(encoding="utf-8")
    assert not [q for q in gold if q in trained]

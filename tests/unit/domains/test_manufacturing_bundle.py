"""The manufacturing demonstration bundle (``deploy/domains/manufacturing``) on the real parts.

The manifests go through the real loader, the SQLite tables are built by the demos'
``prepare``, the ``plant_db`` tool is the real read-only SQL tool, the knowledge bases are
ingested and searched with the packaged multilingual-e5 embedder on embedded Qdrant, and
``plant-desk`` runs on LangGraph with its real tools, OCR and approvals. Only the chat model
is scripted (a fake at the model boundary), so what is checked is what the desk does with
a model's tool calls: the numbers SQL returns, the nameplate text OCR puts in the prompt,
and a work order filed once after a person approves.
"""

from __future__ import annotations

import asyncio
import base64
import csv
import json
import re
import shutil
import sqlite3
from pathlib import Path
from typing import Any

import pytest

import qingliang.platform.control.kinds  # noqa: F401  (registers the manifest kinds)
from qingliang.agents.catalog import StaticCatalog
from qingliang.agents.llm import ChatReply, ToolCall
from qingliang.agents.manifest import AgentGraph
from qingliang.agents.service import AgentService
from qingliang.agents.state import GraphDef
from qingliang.agents.toolbox import build_tools
from qingliang.agents.tools.base import ToolContext
from qingliang.knowledge.api import LocalKnowledge
from qingliang.knowledge.manifest import KnowledgeBase
from qingliang.knowledge.service import KnowledgeService
from qingliang.platform.control.demos import Bundle, prepare
from qingliang.platform.errors import Conflict
from qingliang.platform.manifests.loader import load_paths
from qingliang.serving.embeddings import PackagedEmbedder
from tests.unit.domains._training import check_training

BUNDLE = Path(__file__).resolve().parents[3] / "deploy" / "domains" / "manufacturing"
FMEA_COLUMNS = [
    "fmea_id",
    "equipment_id",
    "equipment",
    "system",
    "component",
    "failure_mode",
    "effect",
    "severity",
    "cause",
    "occurrence",
    "controls",
    "detection",
    "rpn",
    "recommended_action",
]


def _csv(name: str) -> list[dict[str, str]]:
    with (BUNDLE / "data" / name).open(encoding="utf-8", newline="") as f:
        return list(csv.DictReader(f))


def _log() -> list[dict[str, Any]]:
    lines = (BUNDLE / "data" / "maintenance_log.jsonl").read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines]


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the bundle with its prepare step done (the repository stays clean)."""
    root = tmp_path_factory.mktemp("bundle") / "manufacturing"
    shutil.copytree(BUNDLE, root, ignore=shutil.ignore_patterns("*.sqlite*"))
    built = prepare(root)
    assert built == [root / "data" / "plant.sqlite"] * 2
    return root


@pytest.fixture(scope="module")
def manifests(bundle: Path) -> dict[str, Any]:
    demo = Bundle.load(bundle)
    loaded = load_paths(demo.manifests)
    return {m.manifest.metadata.name: m.manifest for m in loaded}


# ------------------------------------------------------------------ manifests and data


def test_the_bundle_follows_the_demo_contract(manifests: dict[str, Any]) -> None:
    demo = Bundle.load(BUNDLE)
    assert demo.spec.manifests == ["knowledge.yaml", "desk.yaml"]
    assert [(t.csv, t.database, t.table) for t in demo.spec.prepare.sqlite] == [
        ("data/fmea.csv", "data/plant.sqlite", "fmea"),
        ("data/equipment.csv", "data/plant.sqlite", "equipment"),
    ]
    assert sorted(manifests) == [
        "plant-desk",
        "plant-fmea",
        "plant-maintenance",
        "plant-work-order",
    ]
    desk, orders = manifests["plant-desk"], manifests["plant-work-order"]
    # The engineer answers with the plant adapter (by its alias); the work-order clerks
    # fill and file forms with the base model.
    assert {a.model for a in desk.spec.agents} == {"qwen-coder:plant"}
    assert {a.model for a in orders.spec.agents} == {"qwen-coder"}
    assert demo.adapter_aliases() == [("qwen-coder", "plant")]
    assert desk.spec.agent("engineer").images == "ocr"
    for name in ("plant-fmea", "plant-maintenance"):
        assert manifests[name].spec.labels.domain == "manufacturing"
    # every `try` line and README command names the bundle's real objects
    for line in demo.spec.try_:
        assert line.startswith("qingliang ")
        assert any(n in line for n in ("plant-desk", "plant-fmea", "plant-maint", "approvals"))
    for sample in ("nameplate.png", "fault_panel.png"):
        size = (BUNDLE / "samples" / sample).stat().st_size
        assert 0 < size < 100_000, (sample, size)
    ignored = (BUNDLE.parents[2] / ".gitignore").read_text(encoding="utf-8")
    assert "deploy/domains/manufacturing/data/plant.sqlite" in ignored
    assert "deploy/domains/manufacturing/data/work_orders.sqlite" in ignored


def test_the_fmea_table_is_well_formed_and_its_rpn_is_right() -> None:
    rows = _csv("fmea.csv")
    equipment = {r["equipment_id"]: r for r in _csv("equipment.csv")}
    assert list(rows[0]) == FMEA_COLUMNS
    assert 70 <= len(rows) <= 90
    assert len({r["fmea_id"] for r in rows}) == len(rows)
    for r in rows:
        s, o, d = int(r["severity"]), int(r["occurrence"]), int(r["detection"])
        assert all(1 <= v <= 10 for v in (s, o, d)), r["fmea_id"]
        assert int(r["rpn"]) == s * o * d, r["fmea_id"]
        assert r["equipment"] == equipment[r["equipment_id"]]["name"], r["fmea_id"]
        assert all(r[c].strip() for c in FMEA_COLUMNS), r["fmea_id"]
    assert len({r["equipment_id"] for r in rows}) == len(equipment) == 12
    assert len({r["serial"] for r in equipment.values()}) == 12


def test_the_maintenance_log_is_well_formed() -> None:
    records = _log()
    known = {r["equipment_id"] for r in _csv("equipment.csv")}
    assert 140 <= len(records) <= 160
    assert len({r["id"] for r in records}) == len(records)
    for r in records:
        assert r["id"].startswith(f"ML-{r['date'][:4]}-")
        assert r["equipment_id"] in known
        assert r["symptom"] and r["diagnosed_cause"] and r["action"]
        # No template placeholder left unfilled (one shipped as "at {p} %").
        for field in ("symptom", "diagnosed_cause", "action"):
            assert not re.search(r"\{\w*\}", r[field]), (r["id"], r[field])
        assert r["downtime_h"] >= 0
    assert [r["date"] for r in records] == sorted(r["date"] for r in records)


# ------------------------------------------------------------------ SQL: numeric questions


def _sql(bundle: Path, manifests: dict[str, Any], query: str) -> list[list[Any]]:
    tool = build_tools(manifests["plant-desk"].spec, bundle)["plant_db"]
    out = tool.run({"query": query}, ToolContext("r1", None))
    return [list(row) for row in out.data["rows"]]


def test_the_sql_tool_answers_the_numeric_fmea_questions_exactly(
    bundle: Path, manifests: dict[str, Any]
) -> None:
    rows = _csv("fmea.csv")
    # "How many failure modes have severity 8 or higher?"
    severe = sum(1 for r in rows if int(r["severity"]) >= 8)
    got = _sql(bundle, manifests, "SELECT COUNT(*) FROM fmea WHERE severity >= 8")
    assert got == [[severe]]
    # "Top 5 failure modes by RPN for the jaw crusher"
    jaw = sorted((r for r in rows if r["equipment_id"] == "CR-101"), key=lambda r: -int(r["rpn"]))[
        :5
    ]
    got = _sql(
        bundle,
        manifests,
        "SELECT failure_mode, rpn FROM fmea WHERE equipment LIKE '%jaw crusher%' "
        "ORDER BY rpn DESC LIMIT 5",
    )
    assert got == [[r["failure_mode"], int(r["rpn"])] for r in jaw]
    # "Which machine has the highest average RPN?"
    by: dict[str, list[int]] = {}
    for r in rows:
        by.setdefault(r["equipment_id"], []).append(int(r["rpn"]))
    best = max(by, key=lambda e: sum(by[e]) / len(by[e]))
    got = _sql(
        bundle,
        manifests,
        "SELECT equipment_id, AVG(rpn) AS a FROM fmea GROUP BY equipment_id "
        "ORDER BY a DESC LIMIT 1",
    )
    assert got[0][0] == best and got[0][1] == pytest.approx(sum(by[best]) / len(by[best]))
    # "Failure modes that are hard to detect (detection >= 7) with severity >= 9"
    hard = sorted(
        r["fmea_id"] for r in rows if int(r["detection"]) >= 7 and int(r["severity"]) >= 9
    )
    got = _sql(
        bundle,
        manifests,
        "SELECT fmea_id FROM fmea WHERE detection >= 7 AND severity >= 9 ORDER BY fmea_id",
    )
    assert [g[0] for g in got] == hard and hard
    # the nameplate's serial finds its machine
    got = _sql(
        bundle,
        manifests,
        "SELECT equipment_id, rated_power_kw FROM equipment WHERE serial = 'QY-JC-2019-0417'",
    )
    assert got == [["CR-101", 160]]


def test_the_sql_tool_refuses_to_write(bundle: Path, manifests: dict[str, Any]) -> None:
    from qingliang.agents.tools.base import ToolError

    tool = build_tools(manifests["plant-desk"].spec, bundle)["plant_db"]
    with pytest.raises(ToolError):
        tool.run({"query": "DELETE FROM fmea"}, ToolContext("r1", None))
    assert _sql(bundle, manifests, "SELECT COUNT(*) FROM fmea") == [[len(_csv("fmea.csv"))]]


# ------------------------------------------------------------------ knowledge retrieval


@pytest.fixture(scope="module")
def knowledge(
    bundle: Path, manifests: dict[str, Any], tmp_path_factory: pytest.TempPathFactory
) -> Any:
    embedder = PackagedEmbedder()
    svc = KnowledgeService(tmp_path_factory.mktemp("kb-home"), embedder_factory=lambda _m: embedder)
    for name in ("plant-fmea", "plant-maintenance"):
        kb: KnowledgeBase = manifests[name]
        svc.register(kb, base=bundle)
        out = svc.sync(name)
        assert out.report.errors == [] and out.report.added == out.report.total
    yield svc
    svc.close()


def _fmea_id(citation: dict) -> str:
    return str(citation["text"].splitlines()[-1].split("|")[1].strip())


#: Written questions and the FMEA row each must find (also kept out of the training data).
FMEA_QUESTIONS = [
    ("What happens when the jaw crusher's eccentric shaft bearing overheats?", "FM-002"),
    ("pull-wire emergency stop on the belt conveyor does not trip", "FM-019"),
    ("wire rope broken wires on the overhead crane hoist", "FM-035"),
    ("transformer oil dielectric strength low, moisture through the breather", "FM-065"),
    ("boiler feed pump standby does not start automatically", "FM-076"),
]


@pytest.mark.parametrize(("question", "fmea_id"), FMEA_QUESTIONS)
def test_fmea_questions_find_their_row(knowledge: Any, question: str, fmea_id: str) -> None:
    rows = {r["fmea_id"]: r for r in _csv("fmea.csv")}
    hits = knowledge.search("plant-fmea", question, limit=3)["citations"]
    found = [_fmea_id(h) for h in hits if h["kind"] == "table-row"]
    assert fmea_id in found, (question, found)
    hit = next(h for h in hits if h["kind"] == "table-row" and _fmea_id(h) == fmea_id)
    # the cited chunk is that row, with the column names in front, and cites its CSV row
    assert hit["text"].splitlines()[0].startswith("| fmea_id | equipment_id |")
    assert rows[fmea_id]["failure_mode"] in hit["text"]
    assert hit["row_start"] == hit["row_end"] == int(fmea_id[3:]) + 1


@pytest.mark.parametrize(
    ("question", "cause"),
    [
        ("compressor trips on high discharge temperature", "Air/oil cooler clogged with dust"),
        ("belt runs off to one side at the tail, spillage", "Carry-back build-up"),
        ("press cannot reach full tonnage, pressure drops while holding", "Main cylinder seal"),
        ("crane load creeps down after stopping the hoist", "Hoist brake lining worn"),
    ],
)
def test_similar_past_faults_are_found_with_their_record_id(
    knowledge: Any, question: str, cause: str
) -> None:
    hits = knowledge.search("plant-maintenance", question, limit=3)["citations"]
    assert hits and cause in hits[0]["text"], (question, [h["text"][:120] for h in hits])
    ids = {r["id"] for r in _log() if r["diagnosed_cause"].startswith(cause)}
    assert hits[0]["record"] in ids
    assert "action: " in hits[0]["text"]


@pytest.mark.parametrize(
    ("sample", "machine"), [("nameplate.png", "CR-101"), ("fault_panel.png", "CR-102")]
)
def test_a_photographed_plate_finds_its_machine(knowledge: Any, sample: str, machine: str) -> None:
    png = (BUNDLE / "samples" / sample).read_bytes()
    url = "data:image/png;base64," + base64.b64encode(png).decode()
    out = knowledge.search("plant-fmea", None, image=url, limit=3)
    assert out["image_query"]["mode"] == "ocr"
    top = out["citations"][0]
    assert top["source"].endswith("equipment.csv")
    assert top["text"].splitlines()[-1].startswith(f"| {machine} |"), out["citations"]


# ------------------------------------------------------------------ the desk on LangGraph


class Model:
    """A scripted chat model: calls the tool a script names, then answers with the result."""

    def __init__(self, script: list[ToolCall]) -> None:
        self.script = list(script)
        self.requests: list[list[dict]] = []

    async def complete(self, model, messages, *, tools=None, **_kw):
        self.requests.append(messages)
        if messages[-1]["role"] == "tool":
            return ChatReply(f"Done. {messages[-1]['content'][:400]}", [], 20, model)
        if not tools:  # the clerk of a rejected work order
            return ChatReply("The work order was not approved, so it was not filed.", [], 9, model)
        offered = {t["function"]["name"] for t in tools}
        call = self.script.pop(0)
        assert call.name in offered
        return ChatReply("", [call], 20, model)


def _desk(bundle: Path, manifests: dict[str, Any], home: Path, chat: Model, kb: Any) -> Any:
    graphs: list[AgentGraph] = [manifests["plant-desk"], manifests["plant-work-order"]]
    return AgentService(
        home,
        chat=chat,
        catalog=StaticCatalog([GraphDef(g, bundle) for g in graphs]),
        knowledge=LocalKnowledge(kb).search,
    )


async def _run(svc: AgentService, body: dict) -> tuple[str, list[dict]]:
    run_id, events = await svc.start("plant-desk", body, tenant=None, actor="fitter")
    return run_id, [e async for e in events]


async def _settle(coro: Any) -> None:
    _run_id, events = await coro
    async for _ in events:
        pass


def _orders(bundle: Path) -> list[tuple[str, dict]]:
    db = bundle / "data" / "work_orders.sqlite"
    if not db.exists():
        return []
    with sqlite3.connect(db) as conn:
        rows = conn.execute("SELECT run_id, values_json FROM work_orders").fetchall()
    return [(r, json.loads(v)) for r, v in rows]


async def test_a_numeric_question_is_answered_by_sql_with_cited_context(
    bundle: Path, manifests: dict[str, Any], knowledge: Any, tmp_path: Path
) -> None:
    severe = sum(1 for r in _csv("fmea.csv") if int(r["severity"]) >= 8)
    query = "SELECT COUNT(*) AS n FROM fmea WHERE severity >= 8"
    chat = Model([ToolCall("c1", "plant_db", {"query": query})])
    async with _desk(bundle, manifests, tmp_path, chat, knowledge) as svc:
        run_id, events = await _run(svc, {"input": "How many failure modes have severity >= 8?"})
        run = svc.get(run_id)
        assert run.status == "done", run.reason
        assert svc.approvals(tenant=None) == []
        tool = next(e for e in events if e["type"] == "tool")
        assert tool["tool"] == "plant_db" and f"| {severe} |" in tool["result"]
        assert f"| {severe} |" in run.answer
    # both knowledge bases were searched and put into the prompt as numbered passages
    system = chat.requests[0][0]["content"]
    assert "[1] | fmea_id |" in system and "id: ML-" in system
    assert _orders(bundle) == []


async def test_a_nameplate_photo_is_read_by_ocr_and_the_machine_looked_up(
    bundle: Path, manifests: dict[str, Any], knowledge: Any, tmp_path: Path
) -> None:
    png = (bundle / "samples" / "nameplate.png").read_bytes()
    query = "SELECT * FROM equipment WHERE serial = 'QY-JC-2019-0417' OR model = 'QJC-1100'"
    chat = Model([ToolCall("c1", "plant_db", {"query": query})])
    async with _desk(bundle, manifests, tmp_path, chat, knowledge) as svc:
        body = {
            "input": "Which machine is this? Give its location and rated power.",
            "attachments": [{"name": "plate.png", "data": base64.b64encode(png).decode()}],
        }
        run_id, _events = await _run(svc, body)
        run = svc.get(run_id)
    # the model read the plate's text (OCR, in the prompt), not the file name alone
    user = chat.requests[0][1]["content"]
    text = " ".join(p.get("text", "") for p in user) if isinstance(user, list) else user
    assert "QY-JC-2019-0417" in text and "QJC-1100" in text
    assert run.status == "done"
    assert "CR-101" in run.answer and "Crushing hall A" in run.answer and "160" in run.answer


async def test_a_work_order_waits_for_a_person_and_is_filed_exactly_once(
    bundle: Path, manifests: dict[str, Any], knowledge: Any, tmp_path: Path
) -> None:
    order = {"equipment_id": "CR-102", "fault": "Setting drifts, fault E-418", "priority": "P1"}
    request = {"request": "CR-102 setting drifts, fault E-418, priority P1"}
    chat = Model(
        [
            ToolCall("c1", "open_work_order", request),
            ToolCall("c2", "work_order", order),
            ToolCall("c3", "open_work_order", request),
            ToolCall("c4", "work_order", order),
        ]
    )
    before = len(_orders(bundle))
    async with _desk(bundle, manifests, tmp_path, chat, knowledge) as svc:
        run_id, _ = await _run(svc, {"input": "Open a work order for CR-102, E-418, P1"})
        waiting = svc.get(run_id)
        assert waiting.status == "waiting" and waiting.pending["forms"] == {"work_order": order}
        assert waiting.pending["prompt"] == "Open this maintenance work order?"
        assert len(_orders(bundle)) == before  # nothing filed before the approval
        wins = await asyncio.gather(
            *(
                svc.resume(run_id, {"action": "approve"}, tenant=None, actor=f"lead{i}")
                for i in (1, 2)
            ),
            return_exceptions=True,
        )
        ok = [w for w in wins if not isinstance(w, BaseException)]
        assert len(ok) == 1 and any(isinstance(w, Conflict) for w in wins)
        async for _ in ok[0][1]:
            pass
        assert svc.get(run_id).status == "done"
        with pytest.raises(Conflict):
            await svc.resume(run_id, {"action": "approve"}, tenant=None, actor="lead3")
        filed = [o for r, o in _orders(bundle) if r == run_id]
        assert filed == [order]

        # a rejected order files nothing
        second, _ = await _run(svc, {"input": "Open a work order for CR-102, E-418, P1"})
        await _settle(svc.resume(second, {"action": "reject"}, tenant=None, actor="lead1"))
        # the nested order was rejected; the desk's run goes on and says what came back
        shown = svc.events(second, None)
        assert [e["action"] for e in shown if e["type"] == "approval"] == ["reject"]
        told = [e for e in shown if e["type"] == "tool" and e["tool"] == "open_work_order"]
        assert "not filed" in told[-1]["result"] and "not filed" in svc.get(second).answer
        assert [r for r, _ in _orders(bundle)].count(second) == 0
    assert len(_orders(bundle)) == before + 1


# ------------------------------------------------------------------ training

SFT = BUNDLE / "data" / "sft" / "plant_sft.jsonl"
#: The public FMEA questions bench/domains.py measures on (not shipped).
SHARED_QA = BUNDLE.parents[3] / "shared" / "domains" / "manufacturing" / "fmea_qa.jsonl"


def _pairs() -> list[list[dict]]:
    return [json.loads(line)["messages"] for line in SFT.read_text(encoding="utf-8").splitlines()]


def test_the_training_pipeline_loads_and_its_pairs_pass_governance(tmp_path: Path) -> None:
    check_training(BUNDLE, "plant", SFT, tmp_path)
    assert len(_pairs()) >= 45


def test_the_pairs_name_real_rows_records_and_machines_with_their_figures() -> None:
    """Every FMEA row, maintenance record and machine an answer names exists; the S, O, D
    and RPN it gives are the row's; a past fault comes with the action the log records; a
    machine with its model and serial from the register."""
    fmea = {r["fmea_id"]: r for r in _csv("fmea.csv")}
    log = {r["id"]: r for r in _log()}
    machines = {r["equipment_id"]: r for r in _csv("equipment.csv")}
    kinds = {"fmea": 0, "log": 0, "machine": 0, "figures": 0}
    for messages in _pairs():
        assert [m["role"] for m in messages] == ["system", "user", "assistant"]
        answer = messages[2]["content"]
        rows = re.findall(r"FM-\d{3}", answer)
        records = re.findall(r"ML-\d{4}-\d{4}", answer)
        named = set(re.findall(r"\b[A-Z]{2}-\d{3}\b", answer)) - set(rows)
        assert set(rows) <= set(fmea) and set(records) <= set(log), answer
        assert named <= set(machines) and (rows or records or named), answer
        sod = re.search(r"S (\d+) × O (\d+) × D (\d+) = RPN (\d+)", answer) or re.search(
            r"严重度 (\d+)、频度 (\d+)、探测度 (\d+)，RPN (\d+)", answer
        )
        for f, rpn in re.findall(r"(FM-\d{3}) [^（(]+[（(]RPN (\d+)[）)]", answer):
            assert fmea[f]["rpn"] == rpn, (f, rpn)
        if records:
            kinds["log"] += 1
            assert log[records[0]]["action"] in answer, answer
        elif sod:
            kinds["fmea"] += 1
            r = fmea[rows[0]]
            assert sod.groups() == (r["severity"], r["occurrence"], r["detection"], r["rpn"])
            assert r["recommended_action"] in answer, answer
        elif answer[:6] in machines:
            kinds["machine"] += 1
            m = machines[answer[:6]]
            assert m["model"] in answer and m["serial"] in answer, answer
        else:
            kinds["figures"] += 1
    assert kinds["fmea"] >= 10 and kinds["log"] >= 10 and kinds["machine"] >= 8, kinds
    assert kinds["figures"] >= 5, kinds


def test_no_gold_question_is_trained_on() -> None:
    """The retrieval questions above, the demo's `try` lines and, where it is present, the
    public FMEA question set bench/domains.py measures on: none is in the training file."""
    gold = [q for q, _ in FMEA_QUESTIONS]
    gold += [m[1] for t in Bundle.load(BUNDLE).spec.try_ if (m := re.search(r'"(.+?)"', t))]
    if SHARED_QA.is_file():
        lines = SHARED_QA.read_text(encoding="utf-8").splitlines()
        gold += [json.loads(line)["question"] for line in lines]
    # The written questions and the quoted `try` requests at least (../shared may be absent).
    assert len(gold) > len(FMEA_QUESTIONS) + 3, gold
    trained = "\n".join(m["content"] for p in _pairs() for m in p)
    assert not [q for q in gold if q in trained]

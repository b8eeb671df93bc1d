"""The healthcare demonstration bundle (deploy/domains/healthcare): its manifests load and
resolve, its data is well-formed, the SQL tool answers over the prepared reference-range
table, the guide KB finds the right note with the packaged embedder, the sample lab report
is read by the packaged OCR, and the desk runs on the real LangGraph runtime: red flags
wait for a person before any model runs, triage lands in the `triage` form, answers cite
the guide and carry the not-a-diagnosis notice (an answer without it waits for a person),
a photographed lab report reaches the model as text with the ranges looked up, and the
router learns departments from feedback (accuracy rises over rounds).

Only the chat model is scripted (a fake at the model boundary); the knowledge service,
embedder, OCR, router, forms and SQLite tools are the real ones.
"""

from __future__ import annotations

import base64
import csv
import importlib.util
import json
import re
import shutil
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
from qingliang.knowledge.vision import ImageLimits, checked_image, ocr_text
from qingliang.platform.control import demos
from qingliang.platform.manifests.loader import load_paths
from qingliang.serving.embeddings import PackagedEmbedder
from tests.unit.domains._training import check_training

BUNDLE = Path(__file__).resolve().parents[3] / "deploy" / "domains" / "healthcare"
DATA = BUNDLE / "data"
REPORT_PNG = BUNDLE / "samples" / "lab_report.png"
NOTICE = "不能替代医生诊断"
DEPARTMENTS = ["心血管科", "消化内科", "呼吸内科", "内分泌科", "神经内科", "肾内科", "血液科"]


def _notes() -> list[dict]:
    lines = (DATA / "guide" / "guide_notes.jsonl").read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines]


def _csv(name: str) -> list[dict]:
    with (DATA / name).open(encoding="utf-8", newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture
def bundle(tmp_path: Path) -> Path:
    """A prepared copy of the bundle (the repository stays clean)."""
    root = tmp_path / "healthcare"
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
    assert any("health-desk" in line for line in b.spec.try_)
    manifests = _loaded(bundle)
    assert set(manifests) == {"health-guide", "health-desk"}
    desk = manifests["health-desk"]
    # Every department desk answers with the health adapter, called by its alias.
    assert {a.model for a in desk.spec.agents} == {"qwen-coder:health"}
    assert {a.images for a in desk.spec.agents} == {"ocr"}
    models = {"qwen-coder": ("health",)}
    assert resolve_graph(desk, bundle, models=models, kbs={"health-guide"}, graphs=set()) == []
    without = resolve_graph(
        desk, bundle, models={"qwen-coder": ()}, kbs={"health-guide"}, graphs=set()
    )
    assert any("has no adapter 'health'" in str(p) for p in without)
    assert demos.Bundle.load(bundle).adapter_aliases() == [("qwen-coder", "health")]
    # The red-flag gate comes first: nothing can answer before it.
    assert desk.spec.entry_node == "red_flags"
    (router,) = [n for n in desk.spec.nodes if n.type == "router"]
    gate = next(n for n in desk.spec.nodes if n.name == "red_flags")
    assert gate.type == "approval" and gate.next == router.name
    assert {n.next for n in desk.spec.nodes if n.name in router.routes} == {"notice"}
    (unprepared,) = [p for p in (bundle / "data").glob("*.sqlite")]
    unprepared.unlink()
    problems = resolve_graph(desk, bundle, models=models, kbs={"health-guide"}, graphs=set())
    assert any("health.sqlite" in str(p) for p in problems), problems


def test_the_guide_notes_have_ids_titles_departments_and_the_notice() -> None:
    notes = _notes()
    ids = [n["id"] for n in notes]
    assert len(notes) >= 30 and len(set(ids)) == len(ids)
    assert all(re.fullmatch(r"hg-[a-z]+-\d{2}", i) for i in ids)
    assert all(n["title"].strip() and len(n["text"]) >= 100 for n in notes)
    assert all(n["text"].rstrip().endswith("如有不适请及时到医院就诊。") for n in notes)
    assert all(NOTICE in n["text"] for n in notes)
    depts = [r["department"] for r in _csv("departments.csv")]
    assert depts == DEPARTMENTS and all(r["treats"] for r in _csv("departments.csv"))
    covered = {n["department"] for n in notes}
    assert set(depts) <= covered and covered - set(depts) == {"全科"}
    readme = (DATA / "README.md").read_text(encoding="utf-8")
    assert "fictional" in readme and "Qingliang" in readme


def test_the_triage_form_offers_exactly_the_desks_departments() -> None:
    desk = _loaded(BUNDLE)["health-desk"]
    (form,) = [t for t in desk.spec.tools if t.name == "triage"]
    fields = {f.name: f for f in form.fields}
    assert fields["department"].enum == DEPARTMENTS
    (router,) = [n for n in desk.spec.nodes if n.type == "router"]
    assert len(router.routes) == len(DEPARTMENTS)


def test_the_reference_table_is_well_formed() -> None:
    rows = _csv("lab_reference.csv")
    codes = [r["code"] for r in rows]
    assert len(rows) >= 25 and len(set(codes)) == len(codes)
    common = {"WBC", "HGB", "PLT", "ALT", "AST", "CREA", "GLU", "HbA1c", "TC", "LDL-C", "K", "Na"}
    assert common <= set(codes)
    for r in rows:
        assert float(r["low"]) < float(r["high"]), r
        assert r["name"] and r["unit"] and r["if_high"] and r["if_low"], r


def test_the_sql_tool_answers_over_the_prepared_reference_table(bundle: Path) -> None:
    desk = _loaded(bundle)["health-desk"]
    tools = default_tools(GraphDef(desk, bundle))
    ctx = ToolContext(run_id="r1", tenant=None)

    def ask(sql: str) -> str:
        return str(tools["lab_reference"].run({"query": sql}, ctx).content)

    alt = ask("SELECT low, high, unit FROM lab_reference WHERE code = 'ALT'")
    assert "| 7.0 | 40.0 | U/L |" in alt, alt
    report = "VALUES ('WBC', 6.2), ('HGB', 102), ('ALT', 86), ('GLU', 5.4), ('K', 4.1)"
    out = ask(
        f"WITH r(code, value) AS ({report}) SELECT r.code, r.value, l.low, l.high "
        "FROM r JOIN lab_reference l USING (code) WHERE r.value < l.low OR r.value > l.high "
        "ORDER BY r.code"
    )
    assert re.findall(r"^\| (\w+) \|", out, re.M) == ["code", "ALT", "HGB"], out
    kidney = ask("SELECT department FROM departments WHERE treats LIKE '%肌酐%'")
    assert "肾内科" in kidney and "血液科" not in kidney
    with pytest.raises(Exception, match="(?i)read|not allowed|authori"):
        tools["lab_reference"].run({"query": "DELETE FROM lab_reference"}, ctx)


def test_the_sample_report_is_small_and_read_by_the_packaged_ocr() -> None:
    data = REPORT_PNG.read_bytes()
    assert len(data) < 100_000
    text = ocr_text(checked_image(data, "lab_report.png", ImageLimits()))
    for line in ("ALT 谷丙转氨酶 86 U/L", "HGB 血红蛋白 102 g/L", "WBC 白细胞计数 6.2"):
        assert line in text, text


# ---------------------------------------------------------------- knowledge


@pytest.fixture(scope="module")
def embedder(tmp_path_factory: pytest.TempPathFactory) -> PackagedEmbedder:
    return PackagedEmbedder(cache_dir=tmp_path_factory.getbasetemp() / "e5-model-cache")


@pytest.fixture
def kb(bundle: Path, tmp_path: Path, embedder: PackagedEmbedder) -> KnowledgeService:
    service = KnowledgeService(tmp_path / "kb-home", embedder_factory=lambda _m: embedder)
    service.register(_loaded(bundle)["health-guide"], base=bundle)
    report = service.sync("health-guide").report
    assert report.added == len(_notes()) and not report.errors
    yield service
    service.close()


def test_the_guide_kb_finds_the_right_note_for_the_gold_questions(kb: KnowledgeService) -> None:
    lines = (DATA / "questions.jsonl").read_text(encoding="utf-8").splitlines()
    gold = [json.loads(line) for line in lines]
    assert len(gold) >= 12 and all(g["labels"]["department"] in DEPARTMENTS for g in gold)
    ranks = {}
    for g in gold:
        found = kb.search("health-guide", g["question"], limit=3)["citations"]
        records = [c["record"] for c in found]
        ranks[g["id"]] = records.index(g["record"]) + 1 if g["record"] in records else None
    print(f"health-guide ranks {ranks}")
    assert all(ranks.values()), ranks  # every note in the top 3
    assert sum(r == 1 for r in ranks.values()) >= len(gold) - 2, ranks


# ---------------------------------------------------------------- the desk


def _text(content: Any) -> str:
    if isinstance(content, str) or content is None:
        return content or ""
    return "\n".join(p.get("text", "") for p in content if isinstance(p, dict))


class Doctor:
    """Plays qwen-coder at the model boundary: records the department its desk's system
    prompt names in the triage form; with a lab report's OCR text in the prompt it asks
    the reference table for the codes read; then answers, citing [1], naming the values
    outside the ranges the table returned, and ending with the notice (unless
    ``notice=False``)."""

    def __init__(self, notice: bool = True) -> None:
        self.notice = notice
        self.calls = 0
        self.prompts: list[str] = []

    async def complete(self, model, messages, *, tools=None, max_tokens=256, temperature=0.0,
                       on_delta=None, user=None):  # fmt: skip
        self.calls += 1
        system = messages[0]["content"]
        asked = _text([m for m in messages if m["role"] == "user"][-1]["content"])
        self.prompts.append(system + "\n" + asked)
        results = [m["content"] for m in messages if m["role"] == "tool"]
        read = dict(re.findall(r"^([A-Za-z][A-Za-z0-9-]*) \S+ ([\d.]+) ", asked, re.M))
        if not results:
            dept = re.search(r"第一人民医院(\S+?)的健康咨询助手", system)
            assert dept, system
            calls = [ToolCall("c1", "triage", {"department": dept[1], "summary": asked[:20]})]
            if read:
                codes = ", ".join(f"'{c}'" for c in read)
                sql = (
                    f"SELECT code, name, unit, low, high FROM lab_reference WHERE code IN ({codes})"
                )
                calls.append(ToolCall("c2", "lab_reference", {"query": sql}))
            return ChatReply("", calls, 9, model)
        text = "根据[1]，建议到相应科室就诊。"
        for code, name, unit, low, high in re.findall(
            r"^\| ([A-Za-z][\w-]*) \| (\S+) \| (\S+) \| ([\d.]+) \| ([\d.]+) \|$",
            "\n".join(results), re.M,
        ):  # fmt: skip
            value = float(read[code])
            if not float(low) <= value <= float(high):
                text += f"{name}（{code}）{read[code]} {unit}，参考范围 {low}-{high}。"
        if self.notice:
            text += "\n【提示】以上内容为健康科普，不能替代医生诊断；如有不适请及时就医。"
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


def _desk(bundle: Path, tmp_path: Path, chat: Doctor, kb: Any) -> AgentService:
    return AgentService(
        tmp_path / "home",
        chat=chat,
        catalog=StaticCatalog([GraphDef(_loaded(bundle)["health-desk"], bundle)]),
        router=RouterClient(RouterService(tmp_path / "router.sqlite")),
        knowledge=kb,
    )


RED_FLAGS = [
    "我爸刚才突然口角歪斜，说话也不清楚了",
    "胸痛二十分钟了，出了很多汗",
    "我妈一侧手脚无力，站不起来",
    "孩子发烧后抽搐了一次",
    "喘不上气，嘴唇发紫",
    "爷爷早上叫不醒，意识不清",
    "吐血了好多，头很晕",
]


@pytest.mark.parametrize("message", RED_FLAGS)
async def test_a_red_flag_waits_for_a_person_before_any_model_runs(
    bundle: Path, tmp_path: Path, message: str
) -> None:
    chat = Doctor()
    async with _desk(bundle, tmp_path, chat, kb=lambda *a, **k: []) as svc:
        run_id, events = await _events(
            svc.start("health-desk", {"input": message}, tenant=None, actor="patient")
        )
        run = svc.get(run_id, None)
        assert run.status == "waiting" and run.pending["node"] == "red_flags"
        assert "120" in run.pending["prompt"] and run.pending["answer"] == ""
        assert chat.calls == 0 and not run.answer
        assert not [e for e in events if e["type"] in ("token", "route", "citations")]
        _, events = await _events(
            svc.resume(run_id, {"action": "reject"}, tenant=None, actor="nurse")
        )
        assert svc.get(run_id, None).status == "rejected" and chat.calls == 0


@pytest.mark.parametrize(
    "message", ["活动后有点胸闷，休息就好", "最近总是反酸烧心", "体检血脂偏高怎么调理"]
)
async def test_ordinary_questions_pass_the_red_flag_gate(
    bundle: Path, tmp_path: Path, message: str
) -> None:
    chat = Doctor()
    async with _desk(bundle, tmp_path, chat, kb=lambda *a, **k: []) as svc:
        run_id, _ = await _events(
            svc.start("health-desk", {"input": message}, tenant=None, actor="patient")
        )
        run = svc.get(run_id, None)
        assert run.status == "done" and NOTICE in (run.answer or "")


async def test_a_guide_question_is_triaged_into_the_form_and_answered_with_citations(
    bundle: Path, tmp_path: Path, kb: KnowledgeService
) -> None:
    chat = Doctor()
    async with _desk(bundle, tmp_path, chat, _searcher(kb)) as svc:
        run_id, events = await _events(
            svc.start("health-desk", {"input": "吃完饭老是反酸烧心怎么办"}, tenant=None,
                      actor="patient")
        )  # fmt: skip
        route = next(e for e in events if e["type"] == "route")
        (triage,) = [e for e in events if e["type"] == "tool" and e["tool"] == "triage"]
        assert triage["arguments"]["department"] in DEPARTMENTS and not triage["error"]
        cited = [c for e in events if e["type"] == "citations" for c in e["citations"]]
        assert cited[0]["record"] == "hg-gi-01"
        assert "睡前3小时不进食" in chat.prompts[-1]  # the note reached the model
        run = svc.get(run_id, None)
        assert run.status == "done" and "[1]" in run.answer and NOTICE in run.answer
        assert route["arm"] in ("cardio", "gastro", "resp", "endo", "neuro", "renal", "hemat")
        # A department outside the enum is refused, and the model is told which are allowed.
        tools = default_tools(GraphDef(_loaded(bundle)["health-desk"], bundle))
        with pytest.raises(Exception, match="department"):
            tools["triage"].run({"department": "骨科", "summary": "x"}, ToolContext("r", None))


async def test_an_answer_without_the_notice_waits_for_a_person(
    bundle: Path, tmp_path: Path
) -> None:
    chat = Doctor(notice=False)
    async with _desk(bundle, tmp_path, chat, kb=lambda *a, **k: []) as svc:
        run_id, _ = await _events(
            svc.start("health-desk", {"input": "便秘怎么调理"}, tenant=None, actor="patient")
        )
        run = svc.get(run_id, None)
        assert run.status == "waiting" and run.pending["node"] == "notice"
        assert NOTICE not in run.pending["answer"]  # the run is not done: held for a person
        fixed = run.pending["answer"] + "\n以上内容为健康科普，不能替代医生诊断。"
        await _events(
            svc.resume(run_id, {"action": "edit", "answer": fixed}, tenant=None, actor="nurse")
        )
        done = svc.get(run_id, None)
        assert done.status == "done" and done.answer == fixed


async def test_a_photographed_lab_report_is_read_and_checked_against_the_table(
    bundle: Path, tmp_path: Path
) -> None:
    chat = Doctor()
    photo = base64.b64encode(REPORT_PNG.read_bytes()).decode()
    body = {
        "input": "帮我看看这张化验单有哪些指标不正常",
        "attachments": [{"name": "lab_report.png", "data": photo}],
    }
    async with _desk(bundle, tmp_path, chat, kb=lambda *a, **k: []) as svc:
        run_id, events = await _events(svc.start("health-desk", body, tenant=None, actor="patient"))
        assert next(e for e in events if e["type"] == "route")
        assert "ALT 谷丙转氨酶 86 U/L" in chat.prompts[0]  # OCR text in the prompt
        (looked_up,) = [e for e in events if e["type"] == "tool" and e["tool"] == "lab_reference"]
        assert "| ALT | 谷丙转氨酶 | U/L | 7.0 | 40.0 |" in looked_up["result"], looked_up
        run = svc.get(run_id, None)
        assert run.status == "done", run
        assert "谷丙转氨酶（ALT）86 U/L，参考范围 7.0-40.0" in run.answer
        assert "血红蛋白（HGB）102 g/L，参考范围 115.0-175.0" in run.answer
        assert "WBC" not in run.answer and NOTICE in run.answer


# ---------------------------------------------------------------- the learned triage


#: Patient questions written for this test, by the department that should see them.
TRIAGE = {
    "心血管科": [
        "最近量血压总是150/95，头有点晕，需要吃降压药吗",
        "晚上躺着心跳得很快很乱，一阵一阵的心慌",
        "爬两层楼就胸口发闷，歇一会儿就好，是心脏的问题吗",
        "体检说低密度脂蛋白胆固醇偏高，要不要吃他汀",
        "这几天两条腿都肿了，晚上平躺会憋气，要垫高枕头",
    ],
    "消化内科": [
        "吃完饭总是反酸烧心，胃里火辣辣的",
        "拉肚子三天了，一天跑七八趟厕所",
        "大便很干，三四天才解一次，要用开塞露",
        "体检B超说是脂肪肝，转氨酶也高，该怎么办",
        "胃胀嗳气，吃一点就饱，胃镜该不该做",
    ],
    "呼吸内科": [
        "感冒好了以后一直咳嗽，已经一个多月了",
        "发烧三天了还咳黄脓痰，会不会是肺炎",
        "一到春天闻到花粉就喘，喉咙里有哮鸣音",
        "抽了三十年烟，现在早上咳痰，走快了就气短",
        "冷空气一刺激就咳个不停，夜里咳得更厉害",
    ],
    "内分泌科": [
        "空腹血糖7.8，口渴喝水多，是不是糖尿病",
        "糖化血红蛋白7.5%，降糖药该怎么调整",
        "脖子粗了，怕热多汗手抖，体重还掉了",
        "尿酸500多，大脚趾半夜突然红肿疼得厉害",
        "打胰岛素后出冷汗手抖心慌，是低血糖吗",
    ],
    "神经内科": [
        "一侧头一跳一跳地疼，还怕光想吐，每个月都犯",
        "早上起床一翻身就天旋地转，几十秒就好",
        "整夜整夜睡不着，吃安眠药也不管用",
        "两只脚又麻又刺痛，像戴了袜子一样",
        "老人最近记性越来越差，刚说的话就忘",
    ],
    "肾内科": [
        "小便泡沫很多，半天都不散，是蛋白尿吗",
        "体检肌酐130，医生说肾功能不太好",
        "尿频尿急尿痛，小肚子坠胀",
        "早上起来眼皮肿，小便比以前少了",
        "糖尿病十年了，尿微量白蛋白偏高，肾有没有受影响",
    ],
    "血液科": [
        "血红蛋白只有95，经常乏力头晕脸色发白",
        "血常规说血小板只有60，刷牙牙龈老出血",
        "白细胞一直偏低，只有2.8，要紧吗",
        "身上没碰也会出现青紫的瘀斑",
        "脖子和腋下摸到好几个肿大的淋巴结，还消瘦",
    ],
}


def _router_curve():
    spec = importlib.util.spec_from_file_location("router_curve", BUNDLE / "router_curve.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


async def test_the_router_learns_departments_from_feedback(
    tmp_path: Path, embedder: PackagedEmbedder
) -> None:
    """The bundle's own curve script, on the real router with the packaged embedding:
    the last passes over the questions are routed better than the first ones."""
    curve = _router_curve()
    pool = [(q, d) for d, qs in TRIAGE.items() for q in qs]
    stream = [pair for n in range(12) for pair in pool[n % 5 :] + pool[: n % 5]]

    async def embed(text: str) -> list[float]:
        return embedder.embed([text], input_type="query")[0]

    right = await curve.run_rounds(stream, home=tmp_path, embed=embed)
    passes = curve.blocks(right, len(pool))
    print(f"triage accuracy per pass over {len(pool)} questions: {passes}")
    early, late = sum(passes[:2]) / 2, sum(passes[-3:]) / 3
    # Chance is 1/7 (0.14); the first pass is already learning (it is online).
    assert late >= 0.6 and late >= early + 0.15, passes


# ---------------------------------------------------------------- training

SFT = DATA / "sft" / "health_sft.jsonl"
#: The public consultation set that bench/domains.py measures the desk on (not shipped).
SHARED_QA = BUNDLE.parents[3] / "shared" / "domains" / "healthcare"
SHARED_QA = SHARED_QA / "medical_qa_internal_medicine.jsonl"


def _pairs() -> list[list[dict]]:
    return [json.loads(line)["messages"] for line in SFT.read_text(encoding="utf-8").splitlines()]


def test_the_training_pipeline_loads_and_its_pairs_pass_governance(tmp_path: Path) -> None:
    check_training(BUNDLE, "health", SFT, tmp_path)
    assert len(_pairs()) >= 45


def _lab_lines(answer: str) -> list[tuple[str, str, float, str, float, float, str]]:
    line = re.compile(
        r"^(\S+)（([A-Za-z%0-9-]+)）([\d.]+) (\S+)，"
        r"参考范围 ([\d.]+)-([\d.]+)，(偏高|偏低|在范围内)"
    )
    found = [line.match(s) for s in answer.splitlines()]
    return [(m[1], m[2], float(m[3]), m[4], float(m[5]), float(m[6]), m[7]) for m in found if m]


def test_the_pairs_follow_the_desk_cite_real_notes_and_read_labs_against_the_table() -> None:
    """Each answer ends with the desk's notice word for word; a triage answer names a
    department of the form and the note of that department it rests on; a guideline answer
    names a note by id and its real title; a lab answer reads every value against the
    reference table. No message that the red-flag gate would stop is trained on."""
    desk = _loaded(BUNDLE)["health-desk"]
    notice = desk.spec.agent("cardio").system.rsplit("原样写：", 1)[1]
    assert notice.startswith("【提示】") and NOTICE in notice
    gate = next(n for n in desk.spec.nodes if n.name == "red_flags")
    red_flag = re.compile(gate.when.input_pattern)
    notes = {n["id"]: n for n in _notes()}
    labs = {r["code"]: r for r in _csv("lab_reference.csv")}
    kinds = {"triage": 0, "guide": 0, "lab": 0}
    for messages in _pairs():
        assert [m["role"] for m in messages] == ["system", "user", "assistant"]
        user, answer = messages[1]["content"], messages[2]["content"]
        assert answer.endswith("\n" + notice), answer
        assert not red_flag.search(user), user
        cited = re.findall(r"（依据：(hg-[a-z]+-\d{2})《([^》]+)》）", answer)
        assert all(notes[i]["title"] == title for i, title in cited), cited
        triage = re.match(r"建议挂(\S+?科)。", answer)
        read = _lab_lines(answer)
        if triage:
            kinds["triage"] += 1
            assert triage[1] in DEPARTMENTS and [notes[i]["department"] for i, _ in cited] == [
                triage[1]
            ], answer
        elif read:
            kinds["lab"] += 1
            assert len(read) == answer.count("参考范围"), answer
            for name, code, value, unit, low, high, verdict in read:
                ref = labs[code]
                assert (name, unit) == (ref["name"], ref["unit"])
                assert (low, high) == (float(ref["low"]), float(ref["high"]))
                assert f"{code} {value:g} {unit}" in user, (code, user)
                expected = "偏高" if value > high else "偏低" if value < low else "在范围内"
                assert verdict == expected, (code, value)
                meaning = {"偏高": ref["if_high"], "偏低": ref["if_low"]}.get(verdict)
                assert meaning is None or meaning in answer, (code, meaning)
        else:
            kinds["guide"] += 1
            assert len(cited) == 1, answer
    assert min(kinds.values()) >= 10, kinds


def test_no_gold_question_is_trained_on() -> None:
    """The gold questions of `qingliang eval` (questions.jsonl), the router-curve questions
    above, the demo's `try` lines and, where it is present, the public set bench/domains.py
    measures on: none of them is in the training file."""
    lines = (DATA / "questions.jsonl").read_text(encoding="utf-8").splitlines()
    gold = [json.loads(line)["question"] for line in lines]
    gold += [q for qs in TRIAGE.values() for q in qs]
    gold += [m[1] for t in demos.Bundle.load(BUNDLE).spec.try_ if (m := re.search(r'"(.+?)"', t))]
    if SHARED_QA.is_file():
        for line in SHARED_QA.read_text(encoding="utf-8").splitlines():
            record = json.loads(line)
            # A few records hold no question ("无"): only real questions are compared.
            gold += [q for q in (record["question"], record["title"]) if len(q) >= 6]
    assert len(gold) >= 14 + 35 + 3
    trained = "\n".join(m["content"] for p in _pairs() for m in p)
    assert not [q for q in gold if q in trained]

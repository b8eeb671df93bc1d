"""The bundles' router examples (warm start): written for the project, not the sentences a
walkthrough asks or a gold question, and enough to route the walkthroughs' requests right
on the real packaged embedder, through the runtime's own teaching and feature path.

Measured here: the gov desk's router and the front desk's on every ``agents run``
sentence of the bundles' demo.yaml / README / manifest comments, and on paraphrases written
for this test; both routers are warm-started only, before any feedback."""

from __future__ import annotations

import difflib
import json
import re
from pathlib import Path

import pytest

import qingliang.platform.lifecycle.pipelines.kinds  # noqa: F401  (registers every kind)
from qingliang.agents.manifest import AgentGraph
from qingliang.agents.routing.actor import RouterClient
from qingliang.agents.routing.router import RouterService
from qingliang.agents.runtime import request_features, router_config, router_key, teach_router
from qingliang.agents.state import GraphDef, Services
from qingliang.platform.manifests.loader import load_paths
from qingliang.serving.embeddings import PackagedEmbedder

DOMAINS = Path(__file__).resolve().parents[3] / "deploy" / "domains"
GOV_EXAMPLES = DOMAINS / "gov" / "data" / "router_examples.jsonl"
FRONT_EXAMPLES = DOMAINS / "front-desk-examples.jsonl"
DESK_ROUTE = {"gov-desk": "gov", "health-desk": "healthcare", "plant-desk": "manufacturing"}
#: The gov desk's desk for each walkthrough sentence (a new one must be added here).
GOV_TRY = {
    "租房的话每年能提取多少住房公积金？": "policy",
    "我家楼下工地每天晚上十一点还在施工，太吵了，请处理": "hotline",
    "我要申请居住证": "apply",
    "我要申请居住证，申请表照片附上": "apply",
    "办理居住证需要带什么材料？": "policy",
}
#: Paraphrases written for this test (not in any examples file).
GOV_HELD_OUT = {
    "老板拖欠工资两个月不发，我该找谁": "hotline",
    "楼上邻居装修每天早上七点就开始砸墙，请管一管": "hotline",
    "路边井盖丢了，很危险，快派人来": "hotline",
    "养老保险缴满多少年才能按月领养老金？": "policy",
    "公积金贷款利率现在是多少？": "policy",
    "我想申请居住证，帮我填一下表": "apply",
    "帮我申领居住证，我住在青石区": "apply",
}
FRONT_HELD_OUT = {
    "我想咨询居住证怎么办理": "gov",
    "老人高龄津贴每月发多少？": "gov",
    "吃了海鲜以后全身起红疹，很痒，要看哪个科？": "healthcare",
    "最近半夜总是咳醒，喉咙有痰": "healthcare",
    "Which pumps had bearing failures last year and what was replaced?": "manufacturing",
    "球磨机的FMEA里哪些失效模式的严重度最高？": "manufacturing",
}


def walkthrough_runs() -> list[tuple[str, str, str]]:
    """(desk, sentence, modality) of every `agents run` in the bundles' demo.yaml, README
    and manifest comments."""
    files = [*DOMAINS.glob("*/demo.yaml"), *DOMAINS.glob("*/README.md")]
    files += [*DOMAINS.glob("*/desk.yaml"), DOMAINS / "front-desk.yaml"]
    found = set()
    for f in files:
        text = f.read_text(encoding="utf-8").replace("\\\n", " ")
        for line in text.splitlines():
            for m in re.finditer(r'agents run (\S+) "([^"]+)"', line):
                found.add((m[1], m[2], "image" if "--attach" in line[m.end() :] else "text"))
    return sorted(found)


def examples(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]


def gold_questions() -> list[str]:
    out = []
    for f in DOMAINS.glob("*/data/*.jsonl"):
        if f.name == "router_examples.jsonl":
            continue
        for line in f.read_text(encoding="utf-8").splitlines():
            row = json.loads(line) if line.strip() else {}
            out += [row[k] for k in ("question", "text") if isinstance(row.get(k), str)]
    return out


def test_the_examples_are_not_the_walkthroughs_sentences_nor_gold_questions() -> None:
    runs = walkthrough_runs()
    assert len(runs) >= 12, runs
    asked = [s for _, s, _ in runs] + gold_questions() + list(GOV_HELD_OUT) + list(FRONT_HELD_OUT)
    for path in (GOV_EXAMPLES, FRONT_EXAMPLES):
        rows = examples(path)
        for row in rows:
            for q in asked:
                similar = difflib.SequenceMatcher(None, row["text"], q).ratio()
                assert similar < 0.7, f"{path.name}: {row['text']!r} is close to {q!r}"
        counts = {r["route"]: 0 for r in rows}
        for r in rows:
            counts[r["route"]] += 1
        assert min(counts.values()) >= 8, counts
        assert len({r["text"] for r in rows}) == len(rows)


@pytest.fixture(scope="module")
def embedder(tmp_path_factory: pytest.TempPathFactory) -> PackagedEmbedder:
    return PackagedEmbedder(cache_dir=tmp_path_factory.getbasetemp() / "e5-model-cache")


def graph(path: Path, name: str) -> AgentGraph:
    (g,) = [i.manifest for i in load_paths([path]) if i.manifest.metadata.name == name]
    assert isinstance(g, AgentGraph)
    return g


async def warm_router(
    tmp_path: Path, embedder: PackagedEmbedder, path: Path, name: str
) -> tuple[Services, GraphDef, str]:
    """The graph's router registered and taught through the runtime's own path."""

    async def embed(text: str) -> list[float]:
        return embedder.embed([text], input_type="query")[0]

    gdef = GraphDef(graph(path, name), path.parent)
    node = next(n for n in gdef.manifest.spec.nodes if n.type == "router")
    router = RouterClient(RouterService(tmp_path / "router.sqlite"))
    services = Services(chat=None, store=None, router=router, embed=embed)  # type: ignore[arg-type]
    key = router_key(name, node.name)
    await router.register(key, router_config(gdef.manifest, node))
    assert await teach_router(services, gdef, node) == len(examples(path.parent / str(
        (node.router or gdef.manifest.spec.router).examples)))  # fmt: skip
    return services, gdef, key


async def greedy(
    services: Services, key: str, text: str, *, domain: str | None, modality: str = "text"
) -> str:
    """The desk the router would pick without its exploration floor (as a live request)."""
    f = await request_features(services, text, domain=domain, modality=modality, tenant="public")
    d = await services.router.decide(key, f, run_id=f"r-{abs(hash(text))}")  # type: ignore[union-attr]
    return max(d.scores, key=d.scores.get)


async def test_the_gov_desk_routes_its_walkthrough_after_the_warm_start(
    tmp_path: Path, embedder: PackagedEmbedder
) -> None:
    services, _, key = await warm_router(
        tmp_path, embedder, DOMAINS / "gov" / "desk.yaml", "gov-desk"
    )
    runs = [(s, m) for desk, s, m in walkthrough_runs() if desk == "gov-desk"]
    unknown = [s for s, _ in runs if s not in GOV_TRY]
    assert not unknown, f"give these walkthrough sentences their desk in GOV_TRY: {unknown}"
    wrong = []
    cases = [(s, GOV_TRY[s], m) for s, m in runs] + [
        (s, r, "text") for s, r in GOV_HELD_OUT.items()
    ]
    for text, right, modality in cases:
        got = await greedy(services, key, text, domain="gov", modality=modality)
        if got != right:
            wrong.append((text, right, got))
    print(f"gov-desk warm start: {len(cases) - len(wrong)}/{len(cases)} right; wrong: {wrong}")
    assert not [w for w in wrong if w[0] in GOV_TRY], wrong  # every walkthrough request
    assert len(wrong) <= 1, wrong


async def test_one_wrong_feedback_does_not_send_a_complaint_to_the_policy_desk(
    tmp_path: Path, embedder: PackagedEmbedder
) -> None:
    """What a reviewer saw on a fresh router: after one -1, the noise complaint went to
    `policy` with propensity 0.97. Warm-started, one -1 on the policy question does not."""
    services, _, key = await warm_router(
        tmp_path, embedder, DOMAINS / "gov" / "desk.yaml", "gov-desk"
    )
    router = services.router
    assert router is not None
    question, complaint = (
        "租房的话每年能提取多少住房公积金？",
        "我家楼下工地每天晚上十一点还在施工，太吵了，请处理",
    )
    f = await request_features(services, question, domain="gov", modality="text", tenant="public")
    await router.decide(key, f, run_id="asked")
    await router.finish_run("asked", success=True, latency_s=20.0, tokens=900)  # type: ignore[attr-defined]
    await router.feedback("asked", -1.0)  # type: ignore[attr-defined]
    assert await greedy(services, key, complaint, domain="gov") == "hotline"
    assert await greedy(services, key, "我要申请居住证", domain="gov") == "apply"


async def test_the_front_desk_routes_every_walkthrough_to_its_domain_desk(
    tmp_path: Path, embedder: PackagedEmbedder
) -> None:
    services, _, key = await warm_router(
        tmp_path, embedder, DOMAINS / "front-desk.yaml", "front-desk"
    )
    cases = [(s, DESK_ROUTE[d], m) for d, s, m in walkthrough_runs() if d in DESK_ROUTE]
    cases += [(s, r, "text") for s, r in FRONT_HELD_OUT.items()]
    wrong = []
    for text, right, modality in cases:
        got = await greedy(services, key, text, domain=None, modality=modality)
        if got != right:
            wrong.append((text, right, got))
    print(f"front-desk warm start: {len(cases) - len(wrong)}/{len(cases)} right; wrong: {wrong}")
    assert len(wrong) <= 1, wrong

"""``qingliang eval`` on the running platform: real Ray Serve, the packaged embedder and
OCR behind the gateway, the tiny vLLM model behind an AgentGraph, real keys. The command
is run as a user runs it (typer's CliRunner, ``--url`` and ``--api-key``), only over HTTP,
and its metrics are checked against values worked out by hand from a small gold file."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from _platform import Platform
from PIL import Image, ImageDraw, ImageFont
from typer.testing import CliRunner

from qingliang.platform.cli.main import app

pytestmark = [pytest.mark.integration, pytest.mark.slow]

FONT = Path("/usr/share/fonts/truetype/wqy/wqy-zenhei.ttc")

DOCS = {
    "quarantine.md": "# 返岗隔离\n\n返岗人员应居家隔离十四天，每日向社区报告体温。\n",
    "masks.md": "# 口罩领取\n\n居民可凭身份证到社区卫生服务中心免费领取口罩。\n",
    "reopening.md": "# 企业复工\n\n企业复工须制定疫情防控方案，并报属地街道备案。\n",
}

GRAPH = """apiVersion: qingliang.io/v1
kind: AgentGraph
metadata: {name: it-eval-desk}
spec:
  agents:
    - {name: clerk, model: tiny, max_tokens: 4}
    - {name: expert, model: "tiny:a", max_tokens: 4}
  nodes:
    - {name: triage, type: router, routes: [quick, careful]}
    - {name: quick, type: agent, agent: clerk}
    - {name: careful, type: agent, agent: expert}
"""


def _jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), "utf-8")
    return path


def _eval(platform: Platform, *args: str) -> dict:
    url = platform.base_url.removesuffix("/v1")
    result = CliRunner().invoke(
        app, ["eval", "run", *args, "--url", url, "--api-key", platform.key, "--json"]
    )
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


@pytest.fixture(scope="module")
def kb(platform: Platform, tmp_path_factory: pytest.TempPathFactory) -> str:
    folder = tmp_path_factory.mktemp("eval-docs")
    for name, text in DOCS.items():
        (folder / name).write_text(text, encoding="utf-8")
    body = {
        "apiVersion": "qingliang.io/v1",
        "kind": "KnowledgeBase",
        "metadata": {"name": "it-eval-kb"},
        "spec": {"sources": [{"folder": str(folder)}], "labels": {"domain": "gov"}},
    }
    path = platform.manifest("it-eval-kb", yaml.safe_dump(body, allow_unicode=True))
    platform.ctl.apply([path], wait=False, progress=False)
    import httpx

    with httpx.Client(
        base_url=platform.base_url.removesuffix("/v1"),
        headers={"Authorization": f"Bearer {platform.key}"},
        timeout=300,
    ) as http:
        r = http.post("/v1/knowledge/it-eval-kb/sync", json={})
        assert r.status_code == 200 and r.json()["added"] == 3, r.text
    return "it-eval-kb"


def test_eval_of_a_knowledge_base_reproduces_its_metrics(
    platform: Platform, kb: str, tmp_path: Path
) -> None:
    photo = tmp_path / "notice.png"
    image = Image.new("RGB", (560, 120), "white")
    ImageDraw.Draw(image).text(
        (20, 35), "口罩免费领取", fill="black", font=ImageFont.truetype(str(FONT), 44)
    )
    image.save(photo)
    gold = _jsonl(
        tmp_path / "gold.jsonl",
        [
            {"id": "q1", "question": "返岗人员要居家隔离多少天", "answers": ["隔离十四天"],
             "source": "quarantine.md", "nuggets": ["十四天", "体温", "核酸"]},
            {"id": "q2", "question": "口罩在哪里领", "image": "notice.png",
             "answer_span": "免费领取口罩", "source": "masks.md"},
            {"id": "q3", "question": "企业复工需要备案吗", "answers": ["报属地街道备案"],
             "doc_id": "not-a-document"},
        ],
    )  # fmt: skip
    out = tmp_path / "out.jsonl"
    m = _eval(platform, kb, "-q", str(gold), "-o", str(out), "--k", "1", "--concurrency", "2")
    lines = [json.loads(line) for line in out.read_text("utf-8").splitlines()]
    assert [o["id"] for o in lines] == ["q1", "q2", "q3"]
    firsts = [Path(o["citations"][0]["source"]).name for o in lines]
    assert firsts == ["quarantine.md", "masks.md", "reopening.md"]
    assert all(o["answer"] is None and "error" not in o for o in lines)
    # By hand, k=1: each question's own document is its top hit, so every span is in it;
    # q1 and q2 find their gold source at rank 1, q3's gold doc_id names no document;
    # q1's nuggets: 十四天 and 体温 are in the text, 核酸 is not.
    assert m["target_kind"] == "kb" and m["questions"] == 3 and m["errors"] == 0
    assert m["answer_span_hit"] == {"value": 1.0, "n": 3}
    assert m["doc_hit_at_k"] == {"value": round(2 / 3, 4), "n": 3}
    assert m["doc_mrr"] == {"value": round(2 / 3, 4), "n": 3}
    assert m["nugget_recall"] == {"value": round(2 / 3, 4), "n": 1}


def test_eval_of_an_agent_graph_reproduces_its_metrics(
    platform: Platform, kb: str, tmp_path: Path
) -> None:
    platform.ctl.apply([platform.manifest("it-eval-desk", GRAPH)], wait=False, progress=False)
    gold = _jsonl(
        tmp_path / "gold.jsonl",
        [
            {"id": i, "question": q, "answers": ["这句话不会出现在回答里"],
             "labels": {"route": "quick"}}
            for i, q in enumerate(["返岗要隔离几天", "口罩在哪里领", "企业复工要备案吗"], 1)
        ],
    )  # fmt: skip
    out = tmp_path / "out.jsonl"
    m = _eval(platform, "it-eval-desk", "-q", str(gold), "-o", str(out))
    lines = [json.loads(line) for line in out.read_text("utf-8").splitlines()]
    assert [o["id"] for o in lines] == ["1", "2", "3"]
    assert all(o["status"] == "done" and o["run_id"].startswith("run_") for o in lines)
    assert all(isinstance(o["answer"], str) and o["latency_s"] > 0 for o in lines)
    routes = [o["route"] for o in lines]
    assert set(routes) <= {"quick", "careful"}
    # By hand: the tiny random model never writes the gold sentence; the route label is
    # right where the router picked `quick`.
    assert m["target_kind"] == "graph" and m["errors"] == 0
    assert m["answer_span_hit"] == {"value": 0.0, "n": 3}
    assert m["label_accuracy"] == {"value": round(routes.count("quick") / 3, 4), "n": 3}
    # A target the platform does not have is refused, naming what it has.
    url = platform.base_url.removesuffix("/v1")
    result = CliRunner().invoke(
        app,
        ["eval", "run", "nope", "-q", str(gold), "-o", str(tmp_path / "x.jsonl"),
         "--url", url, "--api-key", platform.key],
    )  # fmt: skip
    assert result.exit_code == 1
    assert "'nope' is neither an agent graph nor a knowledge base" in result.stderr
    assert "it-eval-desk" in result.stderr and "it-eval-kb" in result.stderr

"""Concurrent searches on the running platform: the Knowledge replica embeds their queries in
shared batches (real Ray Serve, the packaged embedder, the embedded Qdrant store), and each
client still gets exactly the answer it gets alone; a bad request fails alone."""

from __future__ import annotations

import concurrent.futures as cf
from collections.abc import Iterator

import httpx
import pytest
import yaml
from _platform import Platform

pytestmark = pytest.mark.integration

KB = "it-concurrent"
QUERIES = [
    "返岗人员隔离几天",
    "口罩在哪里购买",
    "复工需要什么审批",
    "学校什么时候开学",
    "每天要报告体温吗",
    "外地人员进京",
    "餐馆堂食",
    "公共交通消毒",
]


@pytest.fixture(scope="module")
def kb(platform: Platform, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    folder = tmp_path_factory.mktemp("kb-concurrent")
    (folder / "rules.md").write_text(
        "# 防疫规定\n\n## 返岗\n\n返岗人员须居家隔离十四天。\n\n## 口罩\n\n口罩在药店购买。\n\n"
        "## 复工\n\n企业复工须经街道审批。\n\n## 开学\n\n学校延期开学，另行通知。\n\n"
        "## 体温\n\n每日报告体温。\n\n## 进京\n\n外地人员进京须持核酸证明。\n\n"
        "## 餐饮\n\n餐馆暂停堂食。\n\n## 交通\n\n公共交通每日消毒两次。",
        encoding="utf-8",
    )
    body = {
        "apiVersion": "qingliang.io/v1",
        "kind": "KnowledgeBase",
        "metadata": {"name": KB},
        "spec": {
            "sources": [{"folder": str(folder)}],
            "chunking": {"max_chars": 60, "overlap_chars": 0},
            "labels": {"tenant": "city-a", "domain": "gov"},
        },
    }
    platform.ctl.apply(
        [platform.manifest(KB, yaml.safe_dump(body, allow_unicode=True))],
        wait=False,
        progress=False,
    )
    with _client(platform) as c:
        r = c.post(f"/v1/knowledge/{KB}/sync", json={})
        assert r.status_code == 200 and r.json()["added"] >= 4, r.text
    yield KB
    platform.ctl.delete([KB], kind="KnowledgeBase")


def _client(platform: Platform) -> httpx.Client:
    return httpx.Client(
        base_url=platform.base_url.removesuffix("/v1"),
        headers={"Authorization": f"Bearer {platform.key}"},
        timeout=300,
    )


def _answer(r: httpx.Response) -> dict:
    """The response, its scores rounded (a batch's vectors equal one's to ~1e-6, not bitwise)."""
    body = r.json()
    for c in body["citations"]:
        c["score"] = round(c["score"], 4)
    return body


def _search(platform: Platform, body: dict) -> httpx.Response:
    with _client(platform) as c:
        return c.post(f"/v1/knowledge/{KB}/search", json=body)


def test_concurrent_searches_answer_what_each_answers_alone(platform: Platform, kb: str) -> None:
    alone = [_answer(_search(platform, {"query": q, "limit": 3})) for q in QUERIES]
    assert all(a["citations"] for a in alone)
    with cf.ThreadPoolExecutor(len(QUERIES)) as pool:
        together = list(
            pool.map(lambda q: _search(platform, {"query": q, "limit": 3}), QUERIES * 3)
        )
    assert all(r.status_code == 200 for r in together), [r.text for r in together][:3]
    assert [_answer(r) for r in together] == alone * 3
    top = {q: a["citations"][0]["text"] for q, a in zip(QUERIES, alone, strict=True)}
    assert "十四天" in top["返岗人员隔离几天"] and "药店" in top["口罩在哪里购买"]


def test_a_bad_search_among_concurrent_ones_fails_alone(platform: Platform, kb: str) -> None:
    want = _answer(_search(platform, {"query": QUERIES[0], "limit": 3}))
    bodies = [
        {"query": QUERIES[0], "limit": 3},
        {"query": "   "},
        {"query": QUERIES[0], "limit": 3},
    ]
    with cf.ThreadPoolExecutor(len(bodies) * 2) as pool:
        got = list(pool.map(lambda b: _search(platform, b), bodies * 2))
    for r, body in zip(got, bodies * 2, strict=True):
        if body["query"].strip():
            assert r.status_code == 200 and _answer(r) == want
        else:
            assert r.status_code == 400 and "query" in r.text

"""Searches embed their queries in shared batches (``QueryBatcher``, ``KnowledgeServer``).

What a user would notice: concurrent searches answer exactly what the same searches answer
one after another; searches that arrive while a query is being embedded are embedded
together (fewer model calls); one bad search fails alone.
"""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path
from typing import Any

import pytest

from qingliang.knowledge.batching import QueryBatcher
from qingliang.knowledge.deployment import KnowledgeServer
from qingliang.knowledge.service import KnowledgeService
from qingliang.platform.errors import BadRequest, NotFound
from tests.unit.knowledge.test_knowledge_service import BigramEmbedder, _manifest

QUERIES = ["返岗隔离", "口罩购买", "体温报告", "复工审批", "学校开学", "隔离天数"]


class GatedEmbedder(BigramEmbedder):
    """BigramEmbedder that records each query call and can hold the first one until let go."""

    def __init__(self) -> None:
        super().__init__()
        self.query_calls: list[list[str]] = []
        self.entered = threading.Event()
        self.release = threading.Event()
        self.release.set()

    def embed(self, texts: list[str], *, input_type: str = "passage") -> list[list[float]]:
        if input_type == "query":
            self.query_calls.append(list(texts))
            self.entered.set()
            assert self.release.wait(10), "the test never let the embedder go"
            if any("故障" in t for t in texts):
                raise BadRequest("the model refuses 故障")
        return super().embed(texts, input_type=input_type)


async def _held_then_concurrent(emb: GatedEmbedder, first: Any, rest: list[Any]) -> list[Any]:
    """Start ``first``, wait until its query is inside the embedder, start ``rest``, then
    let the embedder go: everything in ``rest`` arrived while a batch was embedding."""
    emb.release.clear()
    head = asyncio.ensure_future(first)
    await asyncio.to_thread(emb.entered.wait, 10)
    tail = [asyncio.ensure_future(c) for c in rest]
    await asyncio.sleep(0.05)  # let every search of ``rest`` reach the batcher
    emb.release.set()
    return await asyncio.gather(head, *tail, return_exceptions=True)


# ------------------------------------------------------------------------- the batcher


def test_a_query_alone_is_embedded_at_once_in_its_own_call() -> None:
    emb = GatedEmbedder()
    batcher = QueryBatcher(lambda texts: emb.embed(texts, input_type="query"))

    async def main() -> list[list[float]]:
        return [await batcher.embed(q) for q in QUERIES[:3]]

    got = asyncio.run(main())
    assert emb.query_calls == [[q] for q in QUERIES[:3]]
    assert got == [emb.embed([q], input_type="query")[0] for q in QUERIES[:3]]


def test_queries_arriving_during_a_batch_form_the_next_batch() -> None:
    emb = GatedEmbedder()
    batcher = QueryBatcher(lambda texts: emb.embed(texts, input_type="query"))
    got = asyncio.run(
        _held_then_concurrent(
            emb, batcher.embed(QUERIES[0]), [batcher.embed(q) for q in QUERIES[1:]]
        )
    )
    assert emb.query_calls == [[QUERIES[0]], QUERIES[1:]]  # two model calls for six queries
    want = BigramEmbedder().embed(QUERIES, input_type="query")
    assert got == want


def test_a_batch_holds_at_most_max_batch_queries() -> None:
    emb = GatedEmbedder()
    batcher = QueryBatcher(lambda texts: emb.embed(texts, input_type="query"), max_batch=2)
    asyncio.run(
        _held_then_concurrent(
            emb, batcher.embed(QUERIES[0]), [batcher.embed(q) for q in QUERIES[1:]]
        )
    )
    assert [len(c) for c in emb.query_calls] == [1, 2, 2, 1]
    assert [q for call in emb.query_calls for q in call] == QUERIES


def test_a_query_the_model_refuses_fails_alone() -> None:
    emb = GatedEmbedder()
    batcher = QueryBatcher(lambda texts: emb.embed(texts, input_type="query"))
    rest = ["口罩购买", "故障查询", "体温报告"]
    got = asyncio.run(
        _held_then_concurrent(emb, batcher.embed(QUERIES[0]), [batcher.embed(q) for q in rest])
    )
    assert isinstance(got[2], BadRequest) and "故障" in str(got[2])
    want = BigramEmbedder().embed([QUERIES[0], "口罩购买", "体温报告"], input_type="query")
    assert [got[0], got[1], got[3]] == want


def test_max_batch_must_be_positive() -> None:
    with pytest.raises(ValueError, match="max_batch"):
        QueryBatcher(lambda texts: [], max_batch=0)


# ------------------------------------------------------------------ the knowledge server


@pytest.fixture
def server(tmp_path: Path) -> Any:
    folder = tmp_path / "docs"
    folder.mkdir()
    (folder / "a.md").write_text(
        "# 防疫\n\n## 返岗\n\n返岗人员居家隔离十四天。\n\n## 口罩\n\n口罩在药店购买。\n\n"
        "## 体温\n\n每日报告体温。\n\n## 复工\n\n复工需要审批。\n\n## 开学\n\n学校延期开学。",
        encoding="utf-8",
    )
    emb = GatedEmbedder()
    svc = KnowledgeService(tmp_path / "home", embedder_factory=lambda _m: emb)
    svc.register(_manifest("gov", folder, tenant="city-a"), base=folder)
    svc.sync("gov")
    srv = KnowledgeServer(str(tmp_path / "home"), service=svc)
    yield srv, svc, emb
    srv.__del__()


def _search(srv: KnowledgeServer, query: Any, kb: str = "gov", tenant: str = "city-a") -> Any:
    return srv.call("search", kb, tenant, "api", {"query": query, "limit": 3})


def test_concurrent_searches_answer_what_sequential_ones_do(server: Any) -> None:
    srv, svc, emb = server
    want = [svc.search("gov", q, tenant="city-a", limit=3) for q in QUERIES]
    emb.query_calls.clear()
    got = asyncio.run(
        _held_then_concurrent(emb, _search(srv, QUERIES[0]), [_search(srv, q) for q in QUERIES[1:]])
    )
    assert got == want and all(g["citations"] for g in got)
    assert emb.query_calls == [[QUERIES[0]], QUERIES[1:]]


def test_a_bad_search_among_concurrent_ones_fails_alone(server: Any) -> None:
    srv, svc, emb = server
    want = svc.search("gov", "口罩购买", tenant="city-a", limit=3)
    rest = [
        _search(srv, "口罩购买"),
        _search(srv, "   "),  # empty: refused before it is embedded
        _search(srv, "返岗", kb="nope"),  # an unknown KB
        _search(srv, "返岗", tenant="city-b"),  # another tenant's KB
        _search(srv, "故障查询"),  # the model refuses it
        _search(srv, "口罩购买"),
    ]
    got = asyncio.run(_held_then_concurrent(emb, _search(srv, "返岗隔离"), rest))
    assert got[1] == want and got[6] == want
    assert isinstance(got[2], BadRequest) and got[2].param == "query"
    assert isinstance(got[3], NotFound) and isinstance(got[4], NotFound)
    assert isinstance(got[5], BadRequest) and "故障" in str(got[5])
    assert got[0]["citations"]


def test_image_searches_and_other_methods_still_go_to_the_service(server: Any) -> None:
    srv, svc, _ = server
    stats = asyncio.run(srv.call("stats", "gov", "city-a", "api", {}))
    assert stats == svc.stats("gov", tenant="city-a")
    with pytest.raises(BadRequest, match="image"):
        asyncio.run(srv.call("search", "gov", "city-a", "api", {"query": "x", "kinds": ["image"]}))

"""Retrieval against both stores: Qdrant Edge in tmp_path and QdrantClient(":memory:").

The embedder is a small deterministic fake (counts of a few topic words), except in one test
that uses the packaged model; one test builds the store with the real ingest and sync.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from qingliang.knowledge._bm25 import Bm25Encoder, term_index, terms
from qingliang.knowledge.ingest import IngestOptions, ingest_paths
from qingliang.knowledge.ingest.options import Chunking
from qingliang.knowledge.retrieval import Citation, Retriever
from qingliang.knowledge.stores import CollectionSpec, Point, QdrantEdgeStore, VectorStore
from qingliang.knowledge.sync import sync
from qingliang.platform.errors import BadRequest, NotFound

COLL = "kb"
VOCAB = ["疫苗", "接种", "核酸", "检测", "设备", "财政", "补贴"]


class TopicEmbedder:
    """8-d vectors: counts of the VOCAB words; a text with none of them points along axis 7."""

    dimensions = 8

    def __init__(self, overrides: dict[str, list[float]] | None = None) -> None:
        self.overrides = overrides or {}
        self.calls: list[tuple[list[str], str]] = []

    def embed(self, texts: list[str], *, input_type: str = "passage") -> list[list[float]]:
        self.calls.append((list(texts), input_type))
        out = []
        for text in texts:
            raw = self.overrides.get(text) or [float(text.count(w)) for w in VOCAB] + [0.0]
            if not any(raw):
                raw[7] = 1.0
            norm = math.sqrt(sum(v * v for v in raw))
            out.append([v / norm for v in raw])
        return out


@pytest.fixture(params=["edge", "server-memory"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[VectorStore]:
    if request.param == "edge":
        s: VectorStore = QdrantEdgeStore(tmp_path / "qdrant")
    else:
        from qdrant_client import QdrantClient

        from qingliang.knowledge.stores import QdrantServerStore

        s = QdrantServerStore(QdrantClient(":memory:"))
    yield s
    s.close()


def _write(
    store: VectorStore, embedder: TopicEmbedder, docs: list[dict[str, Any]], sparse: bool = True
) -> None:
    """Points as sync writes them, plus BM25 sparse vectors (which sync does not write yet)."""
    store.create_collection(CollectionSpec(name=COLL, dense_size=8))
    enc = Bm25Encoder()
    points = []
    for i, doc in enumerate(docs):
        payload = {
            "kb": "kb",
            "tenant": "a",
            "doc_id": f"doc{i}",
            "source": f"docs/{i}.md",
            "chunk_index": 0,
            "kind": "text",
            "chunk_sha256": f"sha{i}",
            "doc_sha256": f"dsha{i}",
            "synced_at": "2024-05-01T00:00:00+00:00",
            **doc,
        }
        text = payload["text"]
        points.append(
            Point(
                i + 1,
                embedder.embed([text])[0],
                enc.encode_passage(text) if sparse else None,
                payload,
            )
        )
    store.upsert(COLL, points)


def _docs(citations: list[Citation]) -> list[str]:
    return [c.doc_id for c in citations]


@pytest.mark.parametrize("mode", ["dense", "hybrid"])
def test_tenant_a_never_sees_tenant_b(store: VectorStore, mode: str) -> None:
    emb = TopicEmbedder()
    docs = [{"text": f"疫苗 接种 通知 {i}", "tenant": "b"} for i in range(6)]
    docs.append({"text": "核酸 检测 安排", "tenant": "a"})
    _write(store, emb, docs)
    r = Retriever(store, emb, collection=COLL)
    hits = r.search("疫苗 接种", tenant="a", limit=10, mode=mode)
    assert _docs(hits) == ["doc6"]
    hits_b = r.search("疫苗 接种", tenant="b", limit=10, mode=mode)
    assert len(hits_b) == 6 and all(c.doc_id != "doc6" for c in hits_b)
    assert r.search("疫苗", tenant="c", mode=mode) == []


def test_filters_domain_kind_and_date(store: VectorStore) -> None:
    emb = TopicEmbedder()
    _write(
        store,
        emb,
        [
            {"text": "疫苗 接种", "domain": "gov", "kind": "text"},
            {"text": "疫苗 接种 表", "domain": "gov", "kind": "table-row"},
            {"text": "疫苗 接种 说明", "domain": "med", "kind": "text"},
            {"text": "疫苗 旧", "domain": "gov", "synced_at": "2020-01-01T00:00:00+00:00"},
        ],
    )
    r = Retriever(store, emb, collection=COLL)
    assert set(_docs(r.search("疫苗", tenant="a", domain="gov", limit=10))) == {
        "doc0",
        "doc1",
        "doc3",
    }
    assert set(_docs(r.search("疫苗", tenant="a", domain=["med"], limit=10))) == {"doc2"}
    assert _docs(r.search("疫苗", tenant="a", kinds=["table-row"], limit=10)) == ["doc1"]
    assert set(_docs(r.search("疫苗", tenant="a", until="2021-01-01", limit=10))) == {"doc3"}
    recent = r.search("疫苗", tenant="a", since="2024-01-01", domain="gov", mode="hybrid")
    assert set(_docs(recent)) == {"doc0", "doc1"}


def test_citation_fields(store: VectorStore) -> None:
    emb = TopicEmbedder()
    _write(
        store,
        emb,
        [
            {
                "text": "| 区 | 补贴 |\n| 东城 | 3 |",
                "kind": "table-row",
                "source": "data/t.csv",
                "row_start": 2,
                "row_end": 4,
                "chunk_index": 3,
                "domain": "gov",
            },
            {
                "text": "设备 采购 见第 5 页",
                "source": "data/r.pdf",
                "page": 5,
                "heading_path": ["总则", "采购"],
                "char_start": 10,
                "char_end": 40,
            },
        ],
    )
    r = Retriever(store, emb, collection=COLL)
    row = r.search("补贴", tenant="a", limit=1)[0]
    assert (row.doc_id, row.source, row.kind, row.chunk_index) == (
        "doc0",
        "data/t.csv",
        "table-row",
        3,
    )
    assert (row.row_start, row.row_end, row.page, row.locator) == (2, 4, None, "rows 2-4")
    assert row.chunk_sha256 == "sha0" and row.doc_sha256 == "dsha0" and row.domain == "gov"
    assert row.snapshot == "2024-05-01T00:00:00+00:00" and row.score == pytest.approx(1.0)
    page = r.search("设备", tenant="a", limit=1)[0]
    assert (page.source, page.page, page.locator) == ("data/r.pdf", 5, "p. 5")
    assert page.heading_path == ("总则", "采购") and (page.char_start, page.char_end) == (10, 40)
    assert page.to_dict()["heading_path"] == ["总则", "采购"]
    assert emb.calls[-1] == (["设备"], "query")


def test_mmr_pushes_near_duplicates_down(store: VectorStore) -> None:
    emb = TopicEmbedder()
    docs = [{"text": f"疫苗 接种 通知 第{i}版"} for i in range(3)]
    docs.append({"text": "核酸 检测 安排"})
    _write(store, emb, docs)
    r = Retriever(store, emb, collection=COLL)
    plain = r.search("疫苗 接种 核酸", tenant="a", limit=2)
    copies = {"doc0", "doc1", "doc2"}
    assert set(_docs(plain)) < copies  # two copies of one notice
    diverse = r.search("疫苗 接种 核酸", tenant="a", limit=2, mmr=0.5)
    assert diverse[0].doc_id in copies and diverse[1].doc_id == "doc3"
    assert diverse[1].score == pytest.approx(1 / math.sqrt(6), abs=1e-4)  # its search score
    assert set(_docs(r.search("疫苗 接种 核酸", tenant="a", limit=2, mmr=1.0))) < copies
    hybrid = r.search("疫苗 接种 核酸", tenant="a", limit=2, mmr=0.5, mode="hybrid")
    assert "doc3" in _docs(hybrid)


def test_hybrid_finds_exact_keyword_dense_misses(store: VectorStore) -> None:
    # The dense model does not know the product code and maps it near generic "设备" texts.
    emb = TopicEmbedder(overrides={"XK9000": [0, 0, 0, 0, 1.0, 0, 0, 0]})
    docs = [{"text": f"设备 维护 规程 第{i}条"} for i in range(5)]
    docs.append({"text": "型号 XK9000 的 财政 补贴 标准"})
    _write(store, emb, docs)
    r = Retriever(store, emb, collection=COLL)
    assert "doc5" not in _docs(r.search("XK9000", tenant="a", limit=3))
    hybrid = r.search("XK9000", tenant="a", limit=3, mode="hybrid")
    assert _docs(hybrid)[0] == "doc5"
    assert len(hybrid) == 3


def test_hybrid_without_sparse_vectors_falls_back_to_dense(store: VectorStore) -> None:
    emb = TopicEmbedder()
    _write(store, emb, [{"text": "疫苗 接种"}, {"text": "核酸 检测"}], sparse=False)
    r = Retriever(store, emb, collection=COLL)
    dense = r.search("核酸", tenant="a", limit=2)
    hybrid = r.search("核酸", tenant="a", limit=2, mode="hybrid")
    assert _docs(hybrid)[0] == _docs(dense)[0] == "doc1"
    assert _docs(r.search("!!!", tenant="a", limit=2, mode="hybrid")) != []


@pytest.mark.parametrize(
    ("kwargs", "param"),
    [
        ({"query": ""}, "query"),
        ({"query": "   "}, "query"),
        ({"query": 3}, "query"),
        ({"query": "x" * 5000}, "query"),
        ({"tenant": ""}, "tenant"),
        ({"tenant": None}, "tenant"),
        ({"limit": 0}, "limit"),
        ({"limit": 101}, "limit"),
        ({"limit": True}, "limit"),
        ({"mode": "sparse"}, "mode"),
        ({"mmr": 1.5}, "mmr"),
        ({"mmr": -0.1}, "mmr"),
        ({"kinds": ["pdf"]}, "kinds"),
        ({"kinds": []}, "kinds"),
        ({"domain": []}, "domain"),
        ({"since": "yesterday"}, "since"),
    ],
)
def test_bad_input(kwargs: dict[str, Any], param: str) -> None:
    class NoStore:
        def __getattr__(self, name: str) -> Any:
            raise AssertionError("validation must happen before any store call")

    r = Retriever(NoStore(), TopicEmbedder(), collection=COLL)  # type: ignore[arg-type]
    args: dict[str, Any] = {"query": "疫苗", "tenant": "a", **kwargs}
    with pytest.raises(BadRequest) as err:
        r.search(args.pop("query"), **args)
    assert err.value.param == param


def test_missing_tenant_keyword_and_unknown_collection(store: VectorStore) -> None:
    r = Retriever(store, TopicEmbedder(), collection="nope")
    with pytest.raises(TypeError):
        r.search("疫苗")  # type: ignore[call-arg]
    with pytest.raises(NotFound):
        r.search("疫苗", tenant="a")


def test_bm25_terms_and_indices() -> None:
    assert terms("疫苗接种 Policy-2024，ＡＢＣ") == [
        "疫苗",
        "苗接",
        "接种",
        "policy",
        "2024",
        "abc",
    ]
    assert term_index("疫苗") == term_index("疫苗") and 0 <= term_index("x") < 2**20
    enc = Bm25Encoder()
    short, long = enc.encode_passage("核酸检测"), enc.encode_passage("核酸检测" + "其他内容" * 200)
    q = enc.encode_query("核酸")
    assert q.dot(short) > q.dot(long) > 0  # length normalisation
    assert enc.encode_query("!!!").indices == ()


def test_end_to_end_ingest_sync_search(store: VectorStore, tmp_path: Path) -> None:
    folder = tmp_path / "docs"
    folder.mkdir()
    (folder / "vaccine.md").write_text(
        "# 总则\n\n## 接种\n\n疫苗 接种 在 社区 卫生 服务 中心 进行。\n", encoding="utf-8"
    )
    (folder / "test.txt").write_text("核酸 检测 每日 开放。", encoding="utf-8")
    (folder / "subsidy.csv").write_text("区,补贴\n东城,3\n西城,5\n", encoding="utf-8")
    options = IngestOptions(chunking=Chunking(max_chars=200, overlap_chars=0))
    report = ingest_paths(sorted(folder.iterdir()), options)
    assert not report.errors
    emb = TopicEmbedder()
    sync("kb", report, store, emb, tenant="city-a", domain="gov", collection=COLL)
    sync("other", report, store, emb, tenant="city-b", domain="gov", collection=COLL)
    r = Retriever(store, emb, collection=COLL)
    top = r.search("疫苗 接种", tenant="city-a", kb="kb", limit=1)[0]
    assert top.source.endswith("vaccine.md") and top.heading_path == ("总则", "接种")
    assert top.char_start is not None and top.snapshot and top.chunk_sha256
    rows = r.search("补贴", tenant="city-a", kinds=["table-row"], mode="hybrid")
    assert rows and rows[0].source.endswith("subsidy.csv") and rows[0].row_start == 2
    every = r.search("核酸", tenant="city-a", limit=100)
    assert {c.doc_id for c in every} == {c.doc_id for c in report.chunks}
    assert len(every) == len(report.chunks)  # the other tenant's copies never show


def test_packaged_embedder_ranks_the_right_passage(tmp_path: Path) -> None:
    from qingliang.serving.embeddings import PackagedEmbedder

    passages = [
        "新冠疫苗第二剂加强针可在社区卫生服务中心免费接种。",
        "核酸检测点每天上午八点至晚上八点开放。",
        "小微企业可以申请减免房租和财政补贴。",
        "The city library opens at 9 am on weekdays.",
        "Electric buses replaced diesel buses on route 12.",
        "学校秋季学期九月一日开学。",
    ]
    emb = PackagedEmbedder()
    store = QdrantEdgeStore(tmp_path / "qdrant")
    store.create_collection(CollectionSpec(name=COLL, dense_size=emb.dimensions))
    vectors = emb.embed(passages, input_type="passage")
    store.upsert(
        COLL,
        [
            Point(i, v, payload={"tenant": "a", "doc_id": f"p{i}", "text": t})
            for i, (t, v) in enumerate(zip(passages, vectors, strict=True))
        ],
    )
    r = Retriever(store, emb, collection=COLL)
    assert r.search("哪里可以打疫苗加强针？", tenant="a", limit=3)[0].doc_id == "p0"
    assert r.search("企业补贴政策", tenant="a", limit=3, mode="hybrid")[0].doc_id == "p2"
    store.close()


def test_a_record_is_named_by_its_id_in_the_locator() -> None:
    from qingliang.knowledge.retrieval import Citation

    base = {"id": "p1", "doc_id": "d" * 16, "source": "policy.jsonl", "chunk_index": 0,
            "text": "t", "score": 0.5, "kind": "text"}  # fmt: skip
    assert Citation(**base, record="q17", char_start=0, char_end=680).locator == (
        "record q17, chars 0-680"
    )
    assert Citation(**base, record="q17").locator == "record q17"
    assert Citation(**base, char_start=0, char_end=5).locator == "chars 0-5"

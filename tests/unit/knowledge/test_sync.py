"""Incremental sync against both stores: Qdrant Edge in tmp_path and QdrantClient(":memory:").

Inputs come from the real ``ingest_paths`` on small files written here; the embedder is a
small deterministic fake (the packaged model embeds ~2 chunks/s here), except in one test.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from qingliang.knowledge.ingest import IngestOptions, IngestReport, ingest_paths
from qingliang.knowledge.ingest.options import Chunking
from qingliang.knowledge.stores import Point, PointId, QdrantEdgeStore, VectorStore
from qingliang.knowledge.sync import Syncer, SyncReport, point_id, sync

KB = "policy"
OPTIONS = IngestOptions(chunking=Chunking(max_chars=60, overlap_chars=0))


class FakeEmbedder:
    """8-d unit vectors from sha256 of the text; counts calls and texts; can fail."""

    dimensions = 8

    def __init__(self, fail_after_calls: int | None = None) -> None:
        self.calls = 0
        self.texts: list[str] = []
        self.fail_after_calls = fail_after_calls

    def embed(self, texts: list[str], *, input_type: str = "passage") -> list[list[float]]:
        assert input_type == "passage"
        if self.fail_after_calls is not None and self.calls >= self.fail_after_calls:
            raise RuntimeError("embedder died")
        self.calls += 1
        self.texts.extend(texts)
        out = []
        for text in texts:
            raw = [b - 127.5 for b in hashlib.sha256(text.encode()).digest()[:8]]
            norm = math.sqrt(sum(v * v for v in raw))
            out.append([v / norm for v in raw])
        return out


class CountingStore:
    """Wraps a store: counts upserted and deleted points; can die in the middle of a batch."""

    def __init__(self, inner: VectorStore, fail_on_upsert: int | None = None) -> None:
        self.inner = inner
        self.upserted = 0
        self.deleted = 0
        self.upserts = 0
        self.fail_on_upsert = fail_on_upsert

    def upsert(self, collection: str, points: Sequence[Point]) -> None:
        self.upserts += 1
        if self.upserts == self.fail_on_upsert:
            self.inner.upsert(collection, points[: len(points) // 2])  # half a batch lands
            raise RuntimeError("killed mid-batch")
        self.upserted += len(points)
        self.inner.upsert(collection, points)

    def delete(self, collection: str, ids: Sequence[PointId]) -> None:
        self.deleted += len(ids)
        self.inner.delete(collection, ids)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


def _make_store(kind: str, path: Path) -> VectorStore:
    if kind == "edge":
        return QdrantEdgeStore(path)
    from qdrant_client import QdrantClient

    from qingliang.knowledge.stores import QdrantServerStore

    return QdrantServerStore(QdrantClient(":memory:"))


@pytest.fixture(params=["edge", "server-memory"])
def kind(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
def store(kind: str, tmp_path: Path) -> Iterator[CountingStore]:
    s = _make_store(kind, tmp_path / "qdrant")
    yield CountingStore(s)
    s.close()


SECTION = "第{n}条 本条规定第{n}项措施的适用范围和执行要求，各部门应当认真落实。"


def _policy(n_sections: int, edit: int | None = None) -> str:
    parts = []
    for i in range(1, n_sections + 1):
        body = SECTION.format(n=i)
        if i == edit:
            body = body.replace("认真落实", "立即全面落实并上报")
        parts.append(f"## 第{i}节\n\n{body}\n")
    return "# 总则\n\n" + "\n".join(parts)


@pytest.fixture
def corpus(tmp_path: Path) -> Path:
    folder = tmp_path / "docs"
    folder.mkdir()
    (folder / "a.md").write_text(_policy(6), encoding="utf-8")
    (folder / "b.md").write_text(_policy(4), encoding="utf-8")
    (folder / "c.txt").write_text("疫情防控通知。" * 20, encoding="utf-8")
    (folder / "t.csv").write_text("区,人数\n东城,3\n西城,5\n朝阳,8\n", encoding="utf-8")
    return folder


def _ingest(folder: Path) -> IngestReport:
    return ingest_paths(sorted(folder.iterdir()), OPTIONS)


def _dump(store: VectorStore) -> dict[PointId, tuple[dict[str, Any], tuple[float, ...]]]:
    out = {}
    offset: PointId | None = None
    while True:
        recs, offset = store.scroll(KB, limit=100, offset=offset, with_vectors=True)
        for r in recs:
            payload = {k: v for k, v in r.payload.items() if k != "synced_at"}
            assert r.dense is not None
            out[r.id] = (payload, tuple(round(v, 5) for v in r.dense))
        if offset is None:
            return out


def _run(store: VectorStore, report: IngestReport, embedder: FakeEmbedder) -> SyncReport:
    return sync(KB, report, store, embedder, tenant="city-a", domain="gov", batch_size=4)


def test_first_sync_adds_all_with_payload(store: CountingStore, corpus: Path) -> None:
    report = _ingest(corpus)
    emb = FakeEmbedder()
    res = _run(store, report, emb)
    n = len(report.chunks)
    assert n > 10 and not report.errors
    assert (res.added, res.updated, res.unchanged, res.deleted) == (n, 0, 0, 0)
    assert res.embedded == len({c.embed_text for c in report.chunks})
    assert res.reembedded_share == res.embedded / n
    assert store.count(KB) == n
    chunk = report.chunks[1]
    doc = next(d for d in report.documents if d.doc_id == chunk.doc_id)
    (rec,) = store.get(KB, [point_id(KB, chunk.doc_id, chunk.index)])
    p = rec.payload
    assert p["kb"] == KB and p["tenant"] == "city-a" and p["domain"] == "gov"
    assert p["doc_id"] == chunk.doc_id and p["chunk_index"] == chunk.index
    assert p["source"] == chunk.location.source and p["kind"] == chunk.kind
    assert p["chunk_sha256"] == chunk.sha256 and p["doc_sha256"] == doc.sha256
    assert p["text"] == chunk.text and p["heading_path"] == list(chunk.location.heading_path)
    assert p["char_start"] == chunk.location.char_start and "synced_at" in p
    rows = [c for c in report.chunks if c.kind == "table-row"]
    (row,) = store.get(KB, [point_id(KB, rows[0].doc_id, rows[0].index)])
    assert row.payload["row_start"] == rows[0].location.row_start


def test_unchanged_sync_embeds_and_writes_nothing(store: CountingStore, corpus: Path) -> None:
    _run(store, _ingest(corpus), FakeEmbedder())
    before = _dump(store)
    store.upserted = store.deleted = 0
    emb = FakeEmbedder()
    res = _run(store, _ingest(corpus), emb)
    assert emb.calls == 0 and store.upserted == 0 and store.deleted == 0
    assert (res.added, res.updated, res.deleted, res.embedded) == (0, 0, 0, 0)
    assert res.unchanged == len(before) and res.reembedded_share == 0.0
    assert _dump(store) == before


def test_edit_reembeds_only_changed_chunks(store: CountingStore, corpus: Path) -> None:
    _run(store, _ingest(corpus), FakeEmbedder())
    (corpus / "a.md").write_text(_policy(6, edit=3), encoding="utf-8")
    report = _ingest(corpus)
    emb = FakeEmbedder()
    res = _run(store, report, emb)
    assert res.embedded == 1 and len(emb.texts) == 1 and "立即全面落实" in emb.texts[0]
    assert res.reembedded_share < 0.1
    assert res.deleted == 0 and res.added == 0
    # The doc hash and later offsets changed: a.md's points are rewritten with stored vectors.
    assert res.updated == sum(1 for c in report.chunks if c.location.source.endswith("a.md"))
    assert res.reused == res.updated - 1
    fresh = _make_store("edge", corpus.parent / "fresh")
    _run(fresh, report, FakeEmbedder())
    assert _dump(store) == _dump(fresh)
    fresh.close()


def test_shortened_doc_loses_extra_chunks(store: CountingStore, corpus: Path) -> None:
    first = _run(store, _ingest(corpus), FakeEmbedder())
    (corpus / "a.md").write_text(_policy(2), encoding="utf-8")
    report = _ingest(corpus)
    emb = FakeEmbedder()
    res = _run(store, report, emb)
    assert res.deleted > 0 and emb.calls == 0
    assert store.count(KB) == len(report.chunks) == first.added - res.deleted
    ids = {r.id for r in store.scroll(KB, limit=1000)[0]}
    assert ids == {point_id(KB, c.doc_id, c.index) for c in report.chunks}


def test_deleted_file_loses_its_chunks(store: CountingStore, corpus: Path) -> None:
    _run(store, _ingest(corpus), FakeEmbedder())
    (corpus / "b.md").unlink()
    report = _ingest(corpus)
    res = _run(store, report, FakeEmbedder())
    assert res.deleted > 0 and res.embedded == 0 and res.kept_documents == 0
    sources = {r.payload["source"] for r in store.scroll(KB, limit=1000)[0]}
    assert not any(s.endswith("b.md") for s in sources)
    assert store.count(KB) == len(report.chunks)


def test_failed_document_keeps_its_chunks(store: CountingStore, corpus: Path) -> None:
    _run(store, _ingest(corpus), FakeEmbedder())
    before = _dump(store)
    (corpus / "b.md").write_bytes(b"\x00\x01binary junk")  # now fails to parse
    report = _ingest(corpus)
    assert [Path(p).name for p, _ in report.errors] == ["b.md"]
    store.upserted = store.deleted = 0
    res = _run(store, report, FakeEmbedder())
    assert res.errors == report.errors and res.kept_documents == 1
    assert res.deleted == 0 and store.deleted == 0 and _dump(store) == before


@pytest.mark.parametrize("crash", ["embedder", "store"])
def test_crash_and_resume_equals_straight_run(
    kind: str, tmp_path: Path, corpus: Path, crash: str
) -> None:
    straight = _make_store(kind, tmp_path / "straight")
    _run(straight, _ingest(corpus), FakeEmbedder())
    broken_inner = _make_store(kind, tmp_path / "broken")
    _run(broken_inner, _ingest(corpus), FakeEmbedder())
    # An edit, a shortened doc and a deleted file, synced with a crash in the middle.
    (corpus / "a.md").write_text(_policy(8, edit=2), encoding="utf-8")
    (corpus / "b.md").write_text(_policy(1), encoding="utf-8")
    (corpus / "c.txt").unlink()
    report = _ingest(corpus)
    broken = CountingStore(broken_inner, fail_on_upsert=2 if crash == "store" else None)
    emb = FakeEmbedder(fail_after_calls=1 if crash == "embedder" else None)
    with pytest.raises(RuntimeError):
        _run(broken, report, emb)
    partial = _dump(broken_inner)
    assert broken.upserted + emb.calls > 0  # something landed before the crash
    _run(straight, report, FakeEmbedder())
    assert partial != _dump(straight)
    resumed = _run(broken_inner, report, FakeEmbedder())
    assert resumed.deleted > 0
    assert _dump(broken_inner) == _dump(straight)
    assert broken_inner.count(KB) == len(report.chunks)
    again = FakeEmbedder()
    assert _run(broken_inner, report, again).written == 0 and again.calls == 0
    straight.close()
    broken_inner.close()


def test_vector_reused_when_chunk_moves(store: CountingStore, corpus: Path) -> None:
    _run(store, _ingest(corpus), FakeEmbedder())
    (corpus / "moved.md").write_text((corpus / "b.md").read_text("utf-8"), encoding="utf-8")
    (corpus / "b.md").unlink()
    emb = FakeEmbedder()
    res = _run(store, _ingest(corpus), emb)
    assert emb.calls == 0 and res.added > 0 and res.reused == res.added


def test_bare_chunk_list_and_syncer(store: CountingStore, corpus: Path) -> None:
    chunks = _ingest(corpus).chunks
    syncer = Syncer(store, FakeEmbedder(), collection="shared", batch_size=3)
    res = syncer.sync(KB, chunks, tenant="t1")
    assert res.added == len(chunks) and store.count("shared") == len(chunks)
    (rec,) = store.get("shared", [point_id(KB, chunks[0].doc_id, 0)])
    assert rec.payload["tenant"] == "t1" and "domain" not in rec.payload
    assert syncer.sync(KB, chunks, tenant="t1").written == 0
    with pytest.raises(ValueError, match="batch_size"):
        Syncer(store, FakeEmbedder(), collection="x", batch_size=0)


def test_real_packaged_embedder(tmp_path: Path) -> None:
    from qingliang.serving.embeddings import PackagedEmbedder

    folder = tmp_path / "docs"
    folder.mkdir()
    for i, text in enumerate(["第一条 总则。", "防控措施。", "light deployment"]):
        (folder / f"{i}.txt").write_text(text, encoding="utf-8")
    report = _ingest(folder)
    store = QdrantEdgeStore(tmp_path / "qdrant")
    res = sync(KB, report, store, PackagedEmbedder(), tenant="t", batch_size=2)
    assert res.added == res.embedded == 3
    recs = store.get(KB, [point_id(KB, c.doc_id, 0) for c in report.chunks], with_vectors=True)
    assert all(r.dense is not None and len(r.dense) == 384 for r in recs)
    assert sync(KB, report, store, PackagedEmbedder(), tenant="t").written == 0
    store.close()


def test_insert_at_top_shifts_positions_with_right_vectors(
    store: CountingStore, corpus: Path
) -> None:
    (corpus / "b.md").unlink()  # it shares sections with a.md, which could lend vectors
    _run(store, _ingest(corpus), FakeEmbedder())
    text = (corpus / "a.md").read_text("utf-8")
    (corpus / "a.md").write_text(
        text.replace("# 总则\n\n", "# 总则\n\n## 前言\n\n新增的前言。\n\n")
    )
    report = _ingest(corpus)
    emb = FakeEmbedder()
    res = _run(store, report, emb)
    # Every later chunk moved to the next index and reuses its stored vector, except where an
    # earlier batch already overwrote the point holding it (batch 1 rewrites ids 0-3, so the
    # text that was at id 3 is embedded again): each point must carry its own text's vector.
    assert (res.added, res.updated, res.reused, res.embedded) == (1, 6, 5, 2)
    fresh = _make_store("edge", corpus.parent / "fresh")
    _run(fresh, report, FakeEmbedder())
    assert _dump(store) == _dump(fresh)
    fresh.close()


def _sparse_run(store: VectorStore, report: IngestReport, emb: FakeEmbedder, enc: Any) -> Any:
    return sync(KB, report, store, emb, tenant="city-a", batch_size=4, sparse_encoder=enc)


def test_bm25_vectors_written_and_searchable(store: CountingStore, corpus: Path) -> None:
    from qingliang.knowledge._bm25 import Bm25Encoder
    from qingliang.knowledge.stores import Filter

    enc = Bm25Encoder()
    report = _ingest(corpus)
    res = _sparse_run(store, report, FakeEmbedder(), enc)
    assert res.added == len(report.chunks)
    spec = store.collection_spec(KB)
    assert spec.sparse and spec.sparse_idf
    recs, _ = store.scroll(KB, limit=100, with_vectors=True)
    assert all(r.sparse is not None and r.sparse.indices for r in recs)
    assert {r.payload["sparse"] for r in recs} == {enc.name}
    # A term only the table has finds the table first.
    hits = store.search_sparse(KB, enc.encode_query("朝阳"), 3, Filter(equals={"kb": KB}))
    assert hits and hits[0].payload["source"].endswith("t.csv")
    again = FakeEmbedder()
    assert _sparse_run(store, report, again, enc).written == 0 and again.calls == 0


def test_turning_bm25_on_needs_a_rebuild_and_off_keeps_vectors(
    tmp_path: Path, corpus: Path
) -> None:
    from qingliang.knowledge._bm25 import Bm25Encoder
    from qingliang.knowledge.stores import SpecConflict

    store = QdrantEdgeStore(tmp_path / "q")
    report = _ingest(corpus)
    _run(store, report, FakeEmbedder())  # dense only
    before = _dump(store)
    with pytest.raises(SpecConflict, match="without sparse vectors.*--rebuild"):
        _sparse_run(store, report, FakeEmbedder(), Bm25Encoder())
    assert _dump(store) == before  # the refused run wrote nothing
    # A sparse collection synced again without BM25 rewrites payloads, embeds nothing.
    other = QdrantEdgeStore(tmp_path / "q2")
    _sparse_run(other, report, FakeEmbedder(), Bm25Encoder())
    emb = FakeEmbedder()
    res = _run(other, report, emb)
    assert emb.calls == 0 and res.updated == len(report.chunks) and res.reused == res.updated
    # A changed encoder parameter also rewrites without embedding.
    emb = FakeEmbedder()
    res = _sparse_run(other, report, emb, Bm25Encoder(k1=1.5))
    assert emb.calls == 0 and res.updated == len(report.chunks)
    store.close()
    other.close()


def test_wrong_embedding_size_is_refused(tmp_path: Path, corpus: Path) -> None:
    from qingliang.knowledge.stores import SpecConflict

    class Wide(FakeEmbedder):
        dimensions = 16

    store = QdrantEdgeStore(tmp_path / "q")
    _run(store, _ingest(corpus), FakeEmbedder())
    with pytest.raises(SpecConflict, match="8-d vectors but the embedding model makes 16-d"):
        _run(store, _ingest(corpus), Wide())
    store.close()


def test_progress_reports_batches(store: CountingStore, corpus: Path) -> None:
    seen: list[tuple[int, int]] = []
    syncer = Syncer(
        store,
        FakeEmbedder(),
        collection=KB,
        batch_size=4,
        progress=lambda a, b: seen.append((a, b)),
    )
    n = len(_ingest(corpus).chunks)
    syncer.sync(KB, _ingest(corpus))
    assert seen[-1] == (n, n) and [a for a, _ in seen] == sorted(a for a, _ in seen)
    assert len(seen) == math.ceil(n / 4)

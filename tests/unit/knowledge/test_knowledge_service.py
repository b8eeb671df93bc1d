"""KnowledgeService on the real embedded Qdrant store, real ingest, real SQLite registry.

The embedder is a small bag-of-bigrams model (hashing, 512-d) so ranking follows shared words
and a test runs in milliseconds; one test uses the packaged multilingual model.
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path
from typing import Any

import pytest

from qingliang.knowledge.manifest import KnowledgeBase
from qingliang.knowledge.service import KnowledgeService
from qingliang.knowledge.stores import QdrantEdgeStore
from qingliang.platform.errors import BadRequest, Conflict, NotFound


class BigramEmbedder:
    """Hashes character bigrams into 512 buckets: texts sharing words land close."""

    dimensions = 512
    model_id = "bigram-test"

    def __init__(self) -> None:
        self.texts: list[str] = []

    def embed(self, texts: list[str], *, input_type: str = "passage") -> list[list[float]]:
        if input_type == "passage":
            self.texts.extend(texts)
        out = []
        for text in texts:
            v = [0.0] * self.dimensions
            t = text.lower()
            for i in range(max(1, len(t) - 1)):
                h = hashlib.blake2b(t[i : i + 2].encode(), digest_size=2).digest()
                v[int.from_bytes(h, "big") % self.dimensions] += 1.0
            n = math.sqrt(sum(x * x for x in v)) or 1.0
            out.append([x / n for x in v])
        return out


def _manifest(name: str, folder: Path, tenant: str = "city-a", **spec: Any) -> KnowledgeBase:
    body: dict[str, Any] = {
        "apiVersion": "qingliang.io/v1",
        "kind": "KnowledgeBase",
        "metadata": {"name": name},
        "spec": {
            "sources": [{"folder": str(folder)}],
            "chunking": {"max_chars": 120, "overlap_chars": 0},
            "labels": {"tenant": tenant, "domain": "gov"},
            **spec,
        },
    }
    return KnowledgeBase.model_validate(body)


@pytest.fixture
def docs(tmp_path: Path) -> Path:
    d = tmp_path / "docs"
    d.mkdir()
    (d / "quarantine.md").write_text(
        "# 隔离规定\n\n## 返岗人员\n\n返岗人员应居家隔离十四天，每日报告体温。\n\n"
        "## 外地来京\n\n外地来京人员须持核酸检测阴性证明。\n",
        encoding="utf-8",
    )
    (d / "clinics.csv").write_text(
        "区,发热门诊,电话\n东城,协和医院,010-1\n西城,人民医院,010-2\n朝阳,朝阳医院,010-3\n",
        encoding="utf-8",
    )
    (d / "notice.html").write_text(
        "<html><head><title>复工通知</title></head><body><nav>菜单</nav>"
        "<h1>复工复产</h1><p>企业复工须制定防控方案并报属地备案。</p></body></html>",
        encoding="utf-8",
    )
    (d / "faq.jsonl").write_text(
        json.dumps({"id": "q1", "text": "口罩发放在社区服务站领取。"}, ensure_ascii=False) + "\n",
        encoding="utf-8",
    )
    (d / "readme.txt").write_text("Light deployment of large models.", encoding="utf-8")
    (d / "junk.pdf").write_bytes(b"\x00\x01not a pdf at all")
    return d


@pytest.fixture
def emb() -> BigramEmbedder:
    return BigramEmbedder()


@pytest.fixture
def svc(tmp_path: Path, emb: BigramEmbedder) -> KnowledgeService:
    s = KnowledgeService(tmp_path / "home", embedder_factory=lambda _m: emb)
    yield s
    s.close()


def test_mixed_folder_sync_and_cited_search(svc: KnowledgeService, docs: Path) -> None:
    assert svc.register(_manifest("gov", docs), base=docs) == "created"
    out = svc.sync("gov")
    assert out.version == 1 and out.report.added == out.report.total > 5
    assert [e.path for e in out.report.errors] == [str(docs / "junk.pdf")]
    res = svc.search("gov", "返岗人员居家隔离", tenant="city-a")
    top = res["citations"][0]
    assert res["mode"] == "hybrid" and res["version"] == 1
    assert top["source"].endswith("quarantine.md")
    assert top["heading_path"] == ["隔离规定", "返岗人员"] and top["version"] == 1
    rows = svc.search("gov", "朝阳医院 发热门诊", tenant="city-a", kinds=["table-row"])
    assert rows["citations"][0]["row_start"] is not None
    assert "朝阳" in rows["citations"][0]["text"] and "发热门诊" in rows["citations"][0]["text"]
    stats = svc.stats("gov")
    assert stats["documents"] == 5 and stats["chunks"] == out.report.total
    assert stats["snapshots"][0]["version"] == 1 and stats["bm25"] is True


def test_resync_touches_only_changes(
    svc: KnowledgeService, docs: Path, emb: BigramEmbedder
) -> None:
    svc.register(_manifest("gov", docs), base=docs)
    first = svc.sync("gov")
    again = svc.sync("gov")
    assert (again.report.written, again.report.deleted, again.version) == (0, 0, 1)
    emb.texts.clear()
    q = docs / "quarantine.md"
    q.write_text(q.read_text("utf-8").replace("十四天", "七天"), encoding="utf-8")
    (docs / "readme.txt").unlink()
    edit = svc.sync("gov")
    assert edit.version == 2 and edit.report.deleted == 1
    assert edit.report.embedded == 1 and len(emb.texts) == 1 and "七天" in emb.texts[0]
    assert edit.report.total == first.report.total - 1
    hits = svc.search("gov", "居家隔离七天", tenant="city-a")["citations"]
    hit = hits[0]
    assert "七天" in hit["text"] and hit["version"] == 2


def test_tenants_never_see_each_other(tmp_path: Path, svc: KnowledgeService, docs: Path) -> None:
    other = tmp_path / "other"
    other.mkdir()
    (other / "b.md").write_text("# 乙方\n\n返岗人员隔离由乙市自行规定。", encoding="utf-8")
    shared = {"store": {"collection": "shared", "path": "knowledge/shared"}}
    svc.register(_manifest("a-kb", docs, tenant="city-a", **shared), base=docs)
    svc.register(_manifest("b-kb", other, tenant="city-b", **shared), base=other)
    svc.sync("a-kb")
    svc.sync("b-kb")
    with pytest.raises(NotFound, match="unknown knowledge base 'a-kb'") as info:
        svc.search("a-kb", "返岗人员", tenant="city-b")
    assert "a-kb" not in str(info.value).split(";")[1]  # the hint lists only city-b's KBs
    hits = svc.search("b-kb", "返岗人员隔离", tenant="city-b", limit=20)["citations"]
    assert hits and {h["source"] for h in hits} == {"b.md"}  # relative: no host path
    assert svc.names("city-b") == ["b-kb"]
    with pytest.raises(Conflict, match="also holds .* points of other knowledge bases"):
        svc.sync("a-kb", rebuild=True)


def test_upload_list_delete(svc: KnowledgeService, docs: Path) -> None:
    svc.register(_manifest("gov", docs), base=docs)
    svc.sync("gov")
    out = svc.upload(
        "gov", "新规.md", "# 新规\n\n接种疫苗后留观三十分钟。".encode(), tenant="city-a"
    )
    assert out.report.added == 1 and out.report.deleted == 0 and out.version == 2
    listed = {d["source"].rsplit("/", 1)[-1]: d for d in svc.documents("gov")}
    assert listed["新规.md"]["uploaded"] and not listed["quarantine.md"]["uploaded"]
    assert svc.search("gov", "接种疫苗留观", tenant="city-a")["citations"][0]["title"] == "新规"
    # A later sync keeps the upload (it is an implicit source).
    assert svc.sync("gov").report.deleted == 0
    with pytest.raises(Conflict, match="comes from the manifest's sources"):
        svc.delete_document("gov", listed["quarantine.md"]["doc_id"], tenant="city-a")
    gone = svc.delete_document("gov", "新规.md", tenant="city-a")
    assert gone.report.deleted == 1
    assert "新规.md" not in {d["source"].rsplit("/", 1)[-1] for d in svc.documents("gov")}
    with pytest.raises(NotFound, match="no document"):
        svc.delete_document("gov", "新规.md", tenant="city-a")


@pytest.mark.parametrize(
    ("name", "data", "match"),
    [
        ("bad.pdf", b"%PDF-garbage", "nothing was stored"),
        ("x.exe", b"MZ\x00\x00", "nothing was stored"),
        ("../../etc/evil.md", "# 恶意\n\n路径被剥离。".encode(), None),
        ("../../etc/passwd", b"root", "unsupported file type"),
        ("empty.md", b"", "empty"),
        ("", b"x", "file name"),
    ],
)
def test_bad_uploads_store_nothing(
    svc: KnowledgeService, docs: Path, name: str, data: bytes, match: str | None
) -> None:
    svc.register(_manifest("gov", docs), base=docs)
    svc.sync("gov")
    before = svc.documents("gov")
    if match is None:  # a path is reduced to its file name, inside the uploads folder
        out = svc.upload("gov", name, data)
        assert out.report.added == 1
        assert (svc.home / "uploads" / "gov" / "evil.md").is_file()
        return
    with pytest.raises(BadRequest, match=match):
        svc.upload("gov", name, data)
    assert svc.documents("gov") == before
    assert not [p for p in (svc.home / "uploads" / "gov").glob("*")]


def test_snapshot_and_rollback(svc: KnowledgeService, docs: Path) -> None:
    svc.register(_manifest("gov", docs), base=docs)
    svc.sync("gov")
    dump_v1 = _dump(svc, "gov")
    q = docs / "quarantine.md"
    q.write_text("# 全新内容\n\n所有规定废止。", encoding="utf-8")
    svc.sync("gov")
    assert _dump(svc, "gov") != dump_v1
    out = svc.rollback("gov", 1)
    assert out["restored"] == 1 and out["version"] == 3 and out["upserted"] > 0
    assert _dump(svc, "gov") == dump_v1
    hit = svc.search("gov", "返岗人员隔离", tenant="city-a")["citations"][0]
    assert "十四天" in hit["text"] and hit["version"] == 1
    with pytest.raises(NotFound, match="no snapshot of version 9 .have: 1, 2"):
        svc.rollback("gov", 9)


def test_damaged_snapshot_is_refused_and_store_untouched(svc: KnowledgeService, docs: Path) -> None:
    from qingliang.knowledge.snapshots import SnapshotError

    svc.register(_manifest("gov", docs), base=docs)
    svc.sync("gov")
    (docs / "readme.txt").unlink()
    svc.sync("gov")
    before = _dump(svc, "gov")
    snap = svc.ledger.snapshot("gov", 1)
    assert snap is not None
    (Path(snap.path) / "dense.npy").write_bytes(b"garbage")
    with pytest.raises(SnapshotError, match="damaged: dense.npy"):
        svc.rollback("gov", 1)
    assert _dump(svc, "gov") == before


def test_rollback_killed_midway_converges(
    svc: KnowledgeService, docs: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    svc.register(_manifest("gov", docs, chunking={"max_chars": 50, "overlap_chars": 0}), base=docs)
    svc.sync("gov")
    dump_v1 = _dump(svc, "gov")
    for p in docs.glob("*.md"):
        p.write_text(p.read_text("utf-8").replace("人员", "职工"), encoding="utf-8")
    svc.sync("gov")
    store = svc._store(svc._kb("gov", None))
    real = type(store).upsert
    calls = {"n": 0}

    def dying(self: QdrantEdgeStore, coll: str, points: Any) -> None:
        calls["n"] += 1
        real(self, coll, points[:1])
        raise RuntimeError("killed")

    monkeypatch.setattr(QdrantEdgeStore, "upsert", dying)
    with pytest.raises(RuntimeError):
        svc.rollback("gov", 1)
    monkeypatch.setattr(QdrantEdgeStore, "upsert", real)
    assert _dump(svc, "gov") != dump_v1
    svc.rollback("gov", 1)
    assert _dump(svc, "gov") == dump_v1


def test_learned_answers_join_and_retract(svc: KnowledgeService, docs: Path) -> None:
    svc.register(_manifest("gov", docs), base=docs)
    svc.sync("gov")
    rec = svc.add_answer(
        "gov",
        "社区口罩什么时候发放？",
        "每周二上午九点在社区服务站发放。",
        provenance={"source": "feedback", "ref": "run-42"},
        actor="reviewer-7",
    )
    assert rec.version == 2
    hit = svc.search("gov", "社区口罩什么时候发放", tenant="city-a", kinds=["qa"])["citations"][0]
    assert hit["kind"] == "qa" and "每周二" in hit["text"]
    assert hit["provenance"] == {"source": "feedback", "ref": "run-42", "by": "reviewer-7"}
    # A sync neither compares nor deletes learned answers; a snapshot excludes them.
    assert svc.sync("gov").report.deleted == 0
    assert svc.search("gov", "社区口罩发放", tenant="city-a", kinds=["qa"])["citations"]
    retracted = svc.retract_answer("gov", rec.id, reason="wrong day", actor="reviewer-8")
    assert retracted.status == "retracted" and retracted.retracted_by == "reviewer-8"
    assert not svc.search("gov", "社区口罩发放", tenant="city-a", kinds=["qa"])["citations"]
    assert svc.answers("gov") == [] and svc.answers("gov", status="retracted")[0].id == rec.id
    svc.snapshot("gov")
    svc.rollback("gov", 1)  # from before the answer existed; retraction stays
    assert not svc.search("gov", "社区口罩发放", tenant="city-a", kinds=["qa"])["citations"]
    with pytest.raises(NotFound, match="already retracted"):
        svc.retract_answer("gov", rec.id, reason="again")
    with pytest.raises(BadRequest, match="provenance"):
        svc.add_answer("gov", "q", "a", provenance={})
    with pytest.raises(BadRequest, match="question must be a non-empty string"):
        svc.add_answer("gov", "  ", "a", provenance={"source": "api"})
    actions = [e.action for e in svc.ledger.events("gov")]
    assert "answer.add" in actions and "answer.retract" in actions


def test_a_lost_answer_point_is_restored_by_sync(svc: KnowledgeService, docs: Path) -> None:
    svc.register(_manifest("gov", docs), base=docs)
    svc.sync("gov")
    rec = svc.add_answer("gov", "问题甲", "答案乙", provenance={"source": "api"})
    store = svc._store(svc._kb("gov", None))
    from qingliang.knowledge.answers import _answer_point

    store.delete("gov", [_answer_point("gov", rec.id)])  # e.g. a crash between the two writes
    svc.sync("gov")
    assert store.get("gov", [_answer_point("gov", rec.id)])


def test_unknown_kb_and_bad_queries(svc: KnowledgeService, docs: Path) -> None:
    with pytest.raises(NotFound, match="unknown knowledge base 'nope'; none is applied yet"):
        svc.search("nope", "x", tenant="city-a")
    svc.register(_manifest("gov", docs), base=docs)
    with pytest.raises(Conflict, match="has not been synced yet"):
        svc.search("gov", "x", tenant="city-a")
    svc.sync("gov")
    with pytest.raises(BadRequest, match="query must not be empty"):
        svc.search("gov", "   ", tenant="city-a")
    with pytest.raises(BadRequest, match="limit"):
        svc.search("gov", "x", tenant="city-a", limit=0)


def test_store_change_needs_delete(svc: KnowledgeService, docs: Path) -> None:
    svc.register(_manifest("gov", docs), base=docs)
    with pytest.raises(Conflict, match="spec.store changed"):
        svc.register(_manifest("gov", docs, store={"path": "elsewhere"}), base=docs)
    assert svc.register(_manifest("gov", docs), base=docs) == "unchanged"


def test_remove_drops_points_and_records(svc: KnowledgeService, docs: Path) -> None:
    svc.register(_manifest("gov", docs), base=docs)
    svc.sync("gov")
    svc.remove("gov")
    assert svc.names() == [] and svc.ledger.version("gov") == 0
    assert not list((svc.home / "snapshots").glob("gov/v*"))


def test_real_multilingual_embedder(tmp_path: Path, docs: Path) -> None:
    svc = KnowledgeService(tmp_path / "real")
    svc.register(_manifest("gov", docs), base=docs)
    out = svc.sync("gov")
    assert out.report.embedded == out.report.total
    hit = svc.search("gov", "which clinic has a fever department in Chaoyang?", tenant="city-a")
    assert any("朝阳" in c["text"] for c in hit["citations"][:3])
    svc.close()


def _dump(svc: KnowledgeService, name: str) -> dict[Any, Any]:
    kb = svc._kb(name, None)
    store = svc._store(kb)
    out = {}
    offset = None
    while True:
        recs, offset = store.scroll(
            kb.manifest.collection, limit=200, offset=offset, with_vectors=True
        )
        for r in recs:
            if r.payload.get("origin") == "learned":
                continue
            payload = {k: v for k, v in r.payload.items() if k != "synced_at"}
            out[r.id] = (json.dumps(payload, sort_keys=True), tuple(round(v, 5) for v in r.dense))
        if offset is None:
            return out


def test_image_vectors_follow_pixels_and_answer_text_queries(
    svc: KnowledgeService, tmp_path: Path
) -> None:
    import io

    from PIL import Image

    folder = tmp_path / "pics"
    folder.mkdir()

    def save(name: str, color: str, level: int = 6) -> None:
        buf = io.BytesIO()
        Image.new("RGB", (40, 30), color).save(buf, "PNG", compress_level=level)
        (folder / name).write_bytes(buf.getvalue())

    save("red.png", "red")
    save("blue.png", "blue")
    (folder / "note.md").write_text("# 说明\n\n两张色卡。", encoding="utf-8")
    clip = tmp_path / "clip"
    _build_clip(clip)
    kb = _manifest(
        "pics",
        folder,
        embedding={"image": {"model_dir": str(clip)}},
        parsers={"image": {"ocr": False}},
    )
    svc.register(kb, base=folder)
    out = svc.sync("pics")
    assert out.images is not None and out.images.added == out.images.embedded == 2
    hits = svc.search("pics", "a red card", tenant="city-a", kinds=["image"])["citations"]
    assert {h["kind"] for h in hits} == {"image"}
    assert {Path(h["image_path"]).name for h in hits} == {"red.png", "blue.png"}
    assert svc.search("pics", "说明", tenant="city-a")["citations"][0]["kind"] == "text"
    save("red.png", "red", level=1)  # same pixels, other bytes: nothing to embed
    again = svc.sync("pics")
    assert again.images is not None and again.images.embedded == 0
    save("blue.png", "green")  # other pixels: that image only
    edit = svc.sync("pics")
    assert edit.images is not None and edit.images.embedded == 1 and edit.images.updated == 1
    (folder / "red.png").unlink()
    gone = svc.sync("pics")
    assert gone.images is not None and gone.images.deleted == 1
    with pytest.raises(BadRequest, match="search images alone"):
        svc.search("pics", "x", tenant="city-a", kinds=["image", "text"])


def _build_clip(folder: Path) -> None:
    from tests.unit.knowledge import test_image_embedding as tie

    class _Factory:
        def mktemp(self, _name: str) -> Path:
            folder.mkdir()
            return folder

    tie.model_dir.__wrapped__(_Factory())  # type: ignore[attr-defined]

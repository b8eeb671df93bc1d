"""Neighbouring-chunk context (``spec.retrieval.context.neighbours``): each hit keeps its cited
chunk and gains ``context``, the chunk with its neighbours from the same document version.

Retrieval runs on the real embedded Qdrant store with the packaged multilingual embedder; the
documents are numbered sentences, so which chunk is which can be read off the text.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from pydantic import ValidationError

from qingliang.knowledge.api import LocalKnowledge
from qingliang.knowledge.context import MAX_NEIGHBOURS, join_chunks
from qingliang.knowledge.manifest import KnowledgeBase
from qingliang.knowledge.service import KnowledgeService
from qingliang.knowledge.stores import Point, QdrantEdgeStore
from qingliang.knowledge.sync import point_id
from qingliang.platform.errors import BadRequest
from qingliang.platform.gateway.app import create_app
from qingliang.platform.gateway.auth.keys import KeyAuth
from qingliang.platform.storage.keys import KeyStore
from qingliang.serving.embeddings import PackagedEmbedder

TENANT = "city-a"
#: One sentence per chunk (each about 40 characters; chunks hold at most 50).
PERMIT = [
    "第一条 居住证申请人应当在居住地派出所提交身份证和住所证明。",
    "第二条 申请人连续居住满六个月并参加社会保险的可以办理居住证。",
    "第三条 派出所受理后十五个工作日内制作居住证并通知申请人领取。",
    "第四条 居住证每年签注一次，逾期未签注的暂停享受相关公共服务。",
    "第五条 居住证遗失的，持证人应当到原发证派出所申请补领。",
]
OTHER = [
    "垃圾分类指南：厨余垃圾投放到绿色桶，可回收物投放到蓝色桶。",
    "有害垃圾包括废电池和过期药品，应投放到红色桶。",
]


def _kb(name: str, folder: Path, neighbours: int | None = None, overlap: int = 0) -> KnowledgeBase:
    spec: dict[str, Any] = {
        "sources": [{"folder": str(folder)}],
        "chunking": {"strategy": "fixed", "max_chars": 50, "overlap_chars": overlap},
        "labels": {"tenant": TENANT},
    }
    if neighbours is not None:
        spec["retrieval"] = {"context": {"neighbours": neighbours}}
    return KnowledgeBase.model_validate({
        "apiVersion": "qingliang.io/v1", "kind": "KnowledgeBase",
        "metadata": {"name": name}, "spec": spec,
    })  # fmt: skip


@pytest.fixture(scope="module")
def embedder(tmp_path_factory: pytest.TempPathFactory) -> PackagedEmbedder:
    return PackagedEmbedder(cache_dir=tmp_path_factory.getbasetemp() / "e5-model-cache")


@pytest.fixture
def docs(tmp_path: Path) -> Path:
    folder = tmp_path / "docs"
    folder.mkdir()
    (folder / "permit.txt").write_text("\n".join(PERMIT), encoding="utf-8")
    (folder / "sorting.txt").write_text("\n".join(OTHER), encoding="utf-8")
    return folder


@pytest.fixture
def svc(tmp_path: Path, embedder: PackagedEmbedder) -> KnowledgeService:
    s = KnowledgeService(tmp_path / "home", embedder_factory=lambda _m: embedder)
    yield s
    s.close()


def _search(svc: KnowledgeService, kb: str, query: str, **kw: Any) -> dict[str, Any]:
    """The citation of the permit document whose text holds ``query`` (it must be found)."""
    hits = svc.search(kb, query, tenant=TENANT, limit=5, **kw)["citations"]
    top = hits[0]
    assert query in top["text"], [h["text"] for h in hits]
    return top


def _sentences(text: str) -> list[str]:
    return [s for s in (PERMIT + OTHER) if s in text]


def test_the_join_writes_overlap_once_and_breaks_between_distant_chunks() -> None:
    a = {"text": "abcdef", "char_start": 0, "char_end": 6}
    b = {"text": "efgh", "char_start": 4, "char_end": 8}
    c = {"text": "ijk", "char_start": 8, "char_end": 11}
    far = {"text": "xyz", "char_start": 20, "char_end": 23}
    assert join_chunks([a, b, c, far]) == "abcdefghijk\nxyz"
    # overlap offsets that do not match the text (not slices of one document): kept whole
    liar = {"text": "ZZgh", "char_start": 4, "char_end": 8}
    assert join_chunks([a, liar]) == "abcdef\nZZgh"
    # no offsets (table rows, pages): one chunk per line
    assert join_chunks([{"text": "r1"}, {"text": "r2"}]) == "r1\nr2"


def test_a_hit_gains_its_neighbours_in_order_and_keeps_its_citation(
    svc: KnowledgeService, docs: Path
) -> None:
    svc.register(_kb("permits", docs, neighbours=1), base=docs)
    svc.sync("permits")
    top = _search(svc, "permits", "十五个工作日内制作居住证")
    assert _sentences(top["text"]) == [PERMIT[2]]  # the cited span is the chunk that matched
    assert top["locator"].startswith("chars ") and top["char_end"] - top["char_start"] < 50
    assert _sentences(top["context"]) == PERMIT[1:4]  # before, itself, after; in order
    assert top["context"].index(PERMIT[1]) < top["context"].index(PERMIT[2])
    assert top["text"] in top["context"]

    first = _search(svc, "permits", "居住地派出所提交身份证和住所证明")
    assert _sentences(first["context"]) == PERMIT[0:2]  # nothing before the first chunk
    last = _search(svc, "permits", "原发证派出所申请补领")
    assert _sentences(last["context"]) == PERMIT[3:5]  # nothing after the last one
    # the other document's chunks never join: the context stops at the document's edges
    sorting = svc.search("permits", "有害垃圾 废电池", tenant=TENANT, limit=1)["citations"][0]
    assert _sentences(sorting["context"]) == OTHER


def test_more_neighbours_the_request_turning_it_off_and_bad_values(
    svc: KnowledgeService, docs: Path
) -> None:
    svc.register(_kb("permits", docs, neighbours=2), base=docs)
    svc.sync("permits")
    assert _sentences(_search(svc, "permits", "十五个工作日内制作居住证")["context"]) == PERMIT
    off = _search(svc, "permits", "十五个工作日内制作居住证", context=0)
    assert "context" not in off
    one = _search(svc, "permits", "十五个工作日内制作居住证", context=1)
    assert _sentences(one["context"]) == PERMIT[1:4]
    for bad in (MAX_NEIGHBOURS + 1, -1, "1", True, 1.5):
        with pytest.raises(BadRequest, match="context must be") as err:
            svc.search("permits", "居住证", tenant=TENANT, context=bad)
        assert err.value.param == "context"


def test_without_the_setting_hits_have_no_context(svc: KnowledgeService, docs: Path) -> None:
    svc.register(_kb("plain", docs), base=docs)
    svc.sync("plain")
    hits = svc.search("plain", "居住证签注", tenant=TENANT)["citations"]
    assert hits and all("context" not in h for h in hits)
    # a search may still ask for it
    asked = svc.search("plain", "居住证签注", tenant=TENANT, context=1)["citations"]
    assert all(h["text"] in h["context"] for h in asked)


def test_overlapping_chunks_are_joined_without_repeating_the_overlap(
    svc: KnowledgeService, docs: Path
) -> None:
    svc.register(_kb("overlap", docs, neighbours=1, overlap=20), base=docs)
    svc.sync("overlap")
    top = _search(svc, "overlap", "居住证每年签注一次")
    text = (docs / "permit.txt").read_text(encoding="utf-8")
    assert top["context"] in text  # a stretch of the document, nothing written twice
    assert len(top["context"]) > len(top["text"])


def test_the_context_is_that_of_the_version_searched(
    svc: KnowledgeService, docs: Path, tmp_path: Path, embedder: PackagedEmbedder
) -> None:
    """After an edit the context is the new text; after a rollback to a snapshot, the old;
    a neighbour of another version of the document (a sync half-way) never joins."""
    svc.register(_kb("permits", docs, neighbours=1), base=docs)
    svc.sync("permits")
    v1 = svc.snapshot("permits", note="before").version
    edited = [*PERMIT[:3], "第四条 居住证实行电子签注，无需每年到派出所办理。", PERMIT[4]]
    (docs / "permit.txt").write_text("\n".join(edited), encoding="utf-8")
    svc.sync("permits")
    query = "十五个工作日内制作居住证"
    assert "电子签注" in _search(svc, "permits", query)["context"]
    svc.rollback("permits", v1)
    restored = _search(svc, "permits", query)
    assert PERMIT[3] in restored["context"] and "电子签注" not in restored["context"]

    # a neighbour written by another version of the document is left out
    svc.close()
    store = QdrantEdgeStore(tmp_path / "home" / "knowledge" / "permits")
    after = point_id("permits", restored["doc_id"], restored["chunk_index"] + 1)
    (rec,) = store.get("permits", [after], with_vectors=True)
    assert rec.dense is not None
    store.upsert(
        "permits",
        [Point(after, rec.dense, rec.sparse, {**rec.payload, "doc_sha256": "0" * 64})],
    )
    store.close()
    fresh = KnowledgeService(tmp_path / "home", embedder_factory=lambda _m: embedder)
    try:
        top = fresh.search("permits", query, tenant=TENANT)["citations"][0]
        assert _sentences(top["context"]) == PERMIT[1:3]
    finally:
        fresh.close()


@pytest.mark.parametrize(
    ("value", "fragment"),
    [
        ({"neighbours": 4}, "less than or equal to 3"),
        ({"neighbours": -1}, "greater than or equal to 0"),
        ({"neighbours": "two"}, "valid integer"),
        ({"neighbors": 1}, "Extra inputs"),
    ],
)
def test_a_bad_setting_is_refused_naming_the_field(
    value: dict[str, Any], fragment: str, tmp_path: Path
) -> None:
    body = _kb("x", tmp_path).model_dump(mode="json", by_alias=True)
    body["spec"]["retrieval"]["context"] = value
    with pytest.raises(ValidationError, match="retrieval.context.neighbo") as err:
        KnowledgeBase.model_validate(body)
    assert fragment in str(err.value)
    assert MAX_NEIGHBOURS == 3  # the manifest's bound is the retriever's


class NoModels:
    def models(self) -> list:
        return []

    async def ready(self) -> dict:
        return {}


def test_http_search_returns_the_context_and_a_request_turns_it_off(
    svc: KnowledgeService, docs: Path, tmp_path: Path
) -> None:
    home = tmp_path / "home"
    svc.register(_kb("permits", docs, neighbours=1), base=docs)
    svc.sync("permits")
    key = KeyStore(home / "state.sqlite").create("a", scopes=("knowledge:read", f"tenant:{TENANT}"))
    app = create_app(NoModels(), None, KeyAuth(home / "state.sqlite", True), LocalKnowledge(svc))
    client = TestClient(app)
    headers = {"Authorization": f"Bearer {key[1]}"}
    url = "/v1/knowledge/permits/search"
    query = "十五个工作日内制作居住证"
    top = client.post(url, json={"query": query}, headers=headers).json()["citations"][0]
    assert _sentences(top["text"]) == [PERMIT[2]]
    assert _sentences(top["context"]) == PERMIT[1:4]
    off = client.post(url, json={"query": query, "context": 0}, headers=headers).json()
    assert "context" not in off["citations"][0]
    bad = client.post(url, json={"query": query, "context": 9}, headers=headers)
    assert bad.status_code == 400 and "context must be in 0..3" in bad.text


def test_kb_search_prints_the_context_only_when_asked(
    docs: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from typer.testing import CliRunner

    from qingliang.platform.cli.main import app

    monkeypatch.setenv("QINGLIANG_HOME", str(tmp_path / "cli-home"))
    monkeypatch.setenv("COLUMNS", "300")
    manifest = tmp_path / "permits.yaml"
    body = _kb("permits", docs, neighbours=1).model_dump(mode="json", exclude_defaults=True)
    manifest.write_text(json.dumps(body, ensure_ascii=False), encoding="utf-8")
    cli = CliRunner()
    applied = cli.invoke(app, ["apply", "-f", str(manifest)])
    assert applied.exit_code == 0, applied.output
    args = ["kb", "search", "permits", "十五个工作日内制作居住证", "-k", "1"]
    plain = cli.invoke(app, args)
    assert plain.exit_code == 0 and "context" not in plain.output
    assert PERMIT[2] in plain.output and PERMIT[3] not in plain.output
    shown = cli.invoke(app, [*args, "--context"])
    assert shown.exit_code == 0, shown.output
    context_line = next(line for line in shown.output.splitlines() if "context (" in line)
    assert all(s in context_line for s in PERMIT[1:4])

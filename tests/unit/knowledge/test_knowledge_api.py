"""The /v1/knowledge routes through the gateway app, with real keys (KeyAuth over SQLite),
a real KnowledgeService on embedded Qdrant, and a small hashing embedder for speed.

The tenant-isolation test is the issue's proof: tenant A's key never receives tenant B's
chunks, even when both knowledge bases share one collection.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from qingliang.knowledge.api import LocalKnowledge
from qingliang.knowledge.service import KnowledgeService
from qingliang.platform.gateway.app import create_app
from qingliang.platform.gateway.auth.keys import KeyAuth
from qingliang.platform.storage.keys import KeyStore
from tests.unit.knowledge.test_knowledge_service import BigramEmbedder, _manifest


class NoModels:
    def models(self) -> list:
        return []

    async def ready(self) -> dict:
        return {}


@pytest.fixture
def home(tmp_path: Path) -> Path:
    return tmp_path / "home"


@pytest.fixture
def svc(home: Path) -> Any:
    emb = BigramEmbedder()
    s = KnowledgeService(home, embedder_factory=lambda _m: emb)
    yield s
    s.close()


@pytest.fixture
def folders(tmp_path: Path) -> tuple[Path, Path]:
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    (a / "a.md").write_text(
        "# 甲市防疫\n\n## 返岗\n\n甲市返岗人员居家隔离十四天。\n\n## 口罩\n\n甲市口罩在药店购买。",
        encoding="utf-8",
    )
    (b / "b.md").write_text(
        "# 乙市防疫\n\n## 返岗\n\n乙市返岗人员居家隔离七天。\n\n## 口罩\n\n乙市口罩在社区领取。",
        encoding="utf-8",
    )
    return a, b


@pytest.fixture
def client(home: Path, svc: KnowledgeService, folders: tuple[Path, Path]) -> Any:
    a, b = folders
    shared = {"store": {"collection": "shared", "path": "knowledge/shared"}}
    svc.register(_manifest("kb-a", a, tenant="city-a", **shared), base=a)
    svc.register(_manifest("kb-b", b, tenant="city-b", **shared), base=b)
    svc.sync("kb-a")
    svc.sync("kb-b")
    keys = KeyStore(home / "state.sqlite")
    app = create_app(NoModels(), None, KeyAuth(home / "state.sqlite", True), LocalKnowledge(svc))
    c = TestClient(app)
    c.keys = {  # type: ignore[attr-defined]
        name: keys.create(name, scopes=scopes)[1]
        for name, scopes in {
            "a": ("knowledge:read", "knowledge:write", "tenant:city-a"),
            "b": ("knowledge:read", "knowledge:write", "tenant:city-b"),
            "ops": ("admin",),
        }.items()
    }
    return c


def _h(client: Any, who: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {client.keys[who]}"}


def test_tenant_a_never_receives_tenant_b_chunks(client: Any) -> None:
    r = client.post(
        "/v1/knowledge/kb-a/search",
        json={"query": "返岗人员居家隔离", "limit": 20},
        headers=_h(client, "a"),
    )
    assert r.status_code == 200, r.text
    cites = r.json()["citations"]
    assert cites and all("甲市" in c["text"] for c in cites)
    assert {c["source"].rsplit("/", 1)[-1] for c in cites} == {"a.md"}
    # B's KB is invisible to A: the same 404 as a KB that does not exist.
    for kb in ("kb-b", "no-such-kb"):
        r = client.post(
            "/v1/knowledge/" + kb + "/search", json={"query": "返岗"}, headers=_h(client, "a")
        )
        assert r.status_code == 404 and r.json()["error"]["code"] == "unknown_kb"
        assert r.json()["error"]["message"].endswith("; known: kb-a")  # B is not listed
    assert client.get("/v1/knowledge", headers=_h(client, "a")).json()["data"] == [
        {"id": "kb-a", "object": "knowledge_base"}
    ]
    # B sees only its own; the operator key sees both.
    r = client.post("/v1/knowledge/kb-b/search", json={"query": "返岗"}, headers=_h(client, "b"))
    assert all("乙市" in c["text"] for c in r.json()["citations"])
    names = [d["id"] for d in client.get("/v1/knowledge", headers=_h(client, "ops")).json()["data"]]
    assert names == ["kb-a", "kb-b"]
    # Writes are scoped too.
    r = client.post(
        "/v1/knowledge/kb-b/answers",
        json={"question": "q", "answer": "a", "provenance": {"source": "api"}},
        headers=_h(client, "a"),
    )
    assert r.status_code == 404


def test_search_returns_citations_with_locators(client: Any) -> None:
    r = client.post(
        "/v1/knowledge/kb-a/search",
        json={"query": "口罩在哪里购买", "limit": 2, "mode": "hybrid", "mmr": 0.7},
        headers=_h(client, "a"),
    )
    body = r.json()
    assert body["kb"] == "kb-a" and body["version"] == 1 and body["mode"] == "hybrid"
    top = body["citations"][0]
    assert "口罩" in top["text"] and top["heading_path"] == ["甲市防疫", "口罩"]
    for key in ("doc_id", "source", "chunk_index", "score", "version", "locator", "chunk_sha256"):
        assert key in top


@pytest.mark.parametrize(
    ("body", "status", "fragment"),
    [
        ({"query": ""}, 400, "query must not be empty"),
        ({"qeury": "x"}, 400, "did you mean 'query'"),
        ({}, 400, "`query` is required"),
        ({"query": "x", "limit": 1000}, 400, "limit must be an integer in 1..100"),
        ({"query": "x", "mode": "fuzzy"}, 400, "mode must be one of dense, hybrid"),
        ({"query": "x", "mmr": 2}, 400, "mmr must be a number in 0..1"),
        ({"query": "x", "kinds": ["poem"]}, 400, "kinds must be a non-empty list"),
        ({"query": "x", "since": "yesterday"}, 400, "since"),
    ],
)
def test_malformed_queries_are_4xx(client: Any, body: dict, status: int, fragment: str) -> None:
    r = client.post("/v1/knowledge/kb-a/search", json=body, headers=_h(client, "a"))
    assert r.status_code == status, r.text
    assert fragment in r.json()["error"]["message"]


def test_no_key_no_knowledge(client: Any) -> None:
    r = client.post("/v1/knowledge/kb-a/search", json={"query": "x"})
    assert r.status_code == 401


def test_upload_list_delete_through_the_api(client: Any) -> None:
    h = _h(client, "a")
    files = {"file": ("通知.md", "# 通知\n\n甲市图书馆下周恢复开放。".encode(), "text/markdown")}
    r = client.post("/v1/knowledge/kb-a/documents", files=files, headers=h)
    assert r.status_code == 200, r.text
    assert r.json()["added"] == 1 and r.json()["version"] == 2
    docs = client.get("/v1/knowledge/kb-a/documents", headers=h).json()["data"]
    uploaded = [d for d in docs if d["uploaded"]]
    assert [d["source"].rsplit("/", 1)[-1] for d in uploaded] == ["通知.md"]
    hit = client.post("/v1/knowledge/kb-a/search", json={"query": "图书馆恢复开放"}, headers=h)
    assert "图书馆" in hit.json()["citations"][0]["text"]
    # Corrupt upload: 400 naming the reason, nothing stored, earlier docs intact.
    bad = {"file": ("scan.pdf", b"%PDF-1.4 garbage", "application/pdf")}
    r = client.post("/v1/knowledge/kb-a/documents", files=bad, headers=h)
    assert r.status_code == 400 and "scan.pdf" in r.json()["error"]["message"]
    assert client.get("/v1/knowledge/kb-a/documents", headers=h).json()["data"] == docs
    r = client.post("/v1/knowledge/kb-a/documents", content=b"raw", headers=h)
    assert r.status_code == 400 and "multipart/form-data" in r.json()["error"]["message"]
    # Deleting a manifest document is a conflict; deleting the upload works.
    src = next(d for d in docs if not d["uploaded"])
    r = client.delete(f"/v1/knowledge/kb-a/documents/{src['doc_id']}", headers=h)
    assert r.status_code == 409
    r = client.delete("/v1/knowledge/kb-a/documents/通知.md", headers=h)
    assert r.status_code == 200 and r.json()["deleted"] == 1


def test_answers_snapshots_rollback_and_stats(client: Any) -> None:
    h = _h(client, "a")
    r = client.post(
        "/v1/knowledge/kb-a/answers",
        json={
            "question": "甲市核酸点几点开门？",
            "answer": "早上八点。",
            "provenance": {"source": "feedback"},
        },
        headers=h,
    )
    assert r.status_code == 200, r.text
    answer = r.json()
    assert answer["provenance"]["by"] == "key:a" and answer["version"] == 2
    hit = client.post(
        "/v1/knowledge/kb-a/search", json={"query": "核酸点几点开门", "kinds": ["qa"]}, headers=h
    ).json()["citations"][0]
    assert hit["kind"] == "qa" and hit["provenance"]["source"] == "feedback"
    r = client.post(f"/v1/knowledge/kb-a/answers/{answer['id']}/retract", json={}, headers=h)
    assert r.status_code == 400 and "reason" in r.json()["error"]["message"]
    r = client.post(
        f"/v1/knowledge/kb-a/answers/{answer['id']}/retract", json={"reason": "wrong"}, headers=h
    )
    assert r.json()["status"] == "retracted"
    all_answers = client.get("/v1/knowledge/kb-a/answers?status=all", headers=h).json()["data"]
    assert [a["status"] for a in all_answers] == ["retracted"]
    snap = client.post("/v1/knowledge/kb-a/snapshots", json={"note": "before edit"}, headers=h)
    assert snap.status_code == 200 and snap.json()["note"] == "before edit"
    r = client.post("/v1/knowledge/kb-a/rollback", json={"version": 1}, headers=h)
    assert r.status_code == 200 and r.json()["restored"] == 1
    r = client.post("/v1/knowledge/kb-a/rollback", json={"version": "one"}, headers=h)
    assert r.status_code == 400
    r = client.post("/v1/knowledge/kb-a/rollback", json={"version": 99}, headers=h)
    assert r.status_code == 404 and "no snapshot of version 99" in r.json()["error"]["message"]
    stats = client.get("/v1/knowledge/kb-a", headers=h).json()
    assert stats["tenant"] == "city-a" and stats["documents"] == 1 and stats["answers"] == 0
    assert [s["version"] for s in stats["snapshots"]][:1] == [1]
    r = client.post("/v1/knowledge/kb-a/sync", json={"rebuild": "yes"}, headers=h)
    assert r.status_code == 400
    r = client.post("/v1/knowledge/kb-a/sync", json={}, headers=h)
    assert r.status_code == 200 and r.json()["embedded"] == 0


def test_gateway_without_knowledge_answers_501(home: Path) -> None:
    app = create_app(NoModels(), None, KeyAuth(home / "state.sqlite", False))
    r = TestClient(app).post("/v1/knowledge/x/search", json={"query": "q"})
    assert r.status_code == 501 and "not enabled" in r.json()["error"]["message"]


def test_search_with_an_image_over_http(client: Any) -> None:
    import base64
    import io

    from PIL import Image, ImageDraw, ImageFont

    image = Image.new("RGB", (600, 140), "white")
    ImageDraw.Draw(image).text((30, 40), "MASK 2024", fill="black",
                               font=ImageFont.load_default(size=40))  # fmt: skip
    buf = io.BytesIO()
    image.save(buf, "PNG")
    url = "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()
    r = client.post("/v1/knowledge/kb-a/search", json={"image": url}, headers=_h(client, "a"))
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["image_query"]["mode"] == "ocr" and "MASK 2024" in out["image_query"]["ocr_text"]
    assert out["citations"] and all(c["source"].endswith("a.md") for c in out["citations"])
    body = {"image": "https://example.com/x.png", "query": "x"}
    r = client.post("/v1/knowledge/kb-a/search", json=body, headers=_h(client, "a"))
    assert r.status_code == 400 and r.json()["error"]["param"] == "image", r.text


def test_only_an_admin_key_removes_a_knowledge_base(client: Any, svc: KnowledgeService) -> None:
    r = client.delete("/v1/knowledge/kb-a", headers=_h(client, "a"))
    assert r.status_code == 403, r.text
    assert "kb-a" in svc.names(None)
    r = client.delete("/v1/knowledge/kb-a", headers=_h(client, "ops"))
    assert r.status_code == 200 and r.json() == {
        "id": "kb-a",
        "object": "knowledge_base",
        "deleted": True,
    }
    assert "kb-a" not in svc.names(None)
    r = client.post("/v1/knowledge/kb-b/search", json={"query": "口罩"}, headers=_h(client, "b"))
    assert r.status_code == 200 and r.json()["citations"]  # its neighbour in the collection stays
    r = client.delete("/v1/knowledge/kb-a", headers=_h(client, "ops"))
    assert r.status_code == 404

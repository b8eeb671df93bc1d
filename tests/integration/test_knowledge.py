"""Knowledge bases on the running platform: real Ray Serve (the Knowledge deployment owns
the embedded Qdrant shards), the packaged multilingual embedder, real keys."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
import yaml
from _platform import Platform

from qingliang.platform.cli.kb_client import RemoteKnowledge, connect
from qingliang.platform.storage.keys import KeyStore

pytestmark = pytest.mark.integration


def _kb(p: Platform, name: str, folder: Path, tenant: str) -> Path:
    body = {
        "apiVersion": "qingliang.io/v1",
        "kind": "KnowledgeBase",
        "metadata": {"name": name},
        "spec": {
            "sources": [{"folder": str(folder)}],
            "labels": {"tenant": tenant, "domain": "gov"},
            "store": {"collection": "shared-it", "path": "knowledge/shared-it"},
        },
    }
    return p.manifest(name, yaml.safe_dump(body, allow_unicode=True))


@pytest.fixture(scope="module")
def kbs(platform: Platform, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("kb-docs")
    a, b = root / "a", root / "b"
    a.mkdir()
    b.mkdir()
    (a / "a.md").write_text(
        "# 甲市防疫规定\n\n## 返岗\n\n甲市返岗人员须居家隔离十四天。", encoding="utf-8"
    )
    (b / "b.md").write_text(
        "# 乙市防疫规定\n\n## 返岗\n\n乙市返岗人员须居家隔离七天。", encoding="utf-8"
    )
    changes = platform.ctl.apply(
        [_kb(platform, "it-a", a, "city-a"), _kb(platform, "it-b", b, "city-b")],
        wait=False,
        progress=False,
    )
    assert {c.action for c in changes} == {"create"}
    with _client(platform, platform.key) as ops:
        for name in ("it-a", "it-b"):
            r = ops.post(f"/v1/knowledge/{name}/sync", json={})
            assert r.status_code == 200, r.text
            assert r.json()["added"] >= 1 and r.json()["version"] == 1
    keys = KeyStore(platform.settings.state_db)
    return {
        "ops": platform.key,
        "a": keys.create(
            "it-city-a", scopes=("knowledge:read", "knowledge:write", "tenant:city-a")
        )[1],
        "b": keys.create("it-city-b", scopes=("knowledge:read", "tenant:city-b"))[1],
    }


def _client(platform: Platform, key: str) -> httpx.Client:
    return httpx.Client(
        base_url=platform.base_url.removesuffix("/v1"),
        headers={"Authorization": f"Bearer {key}"},
        timeout=300,
    )


def test_sync_then_tenant_scoped_search_through_serve(platform: Platform, kbs: dict) -> None:
    with _client(platform, kbs["ops"]) as ops:
        again = ops.post("/v1/knowledge/it-a/sync", json={}).json()
        assert again["embedded"] == 0 and again["version"] == 1
    with _client(platform, kbs["a"]) as a:
        r = a.post("/v1/knowledge/it-a/search", json={"query": "返岗人员隔离几天", "limit": 10})
        assert r.status_code == 200, r.text
        cites = r.json()["citations"]
        assert cites and all("甲市" in c["text"] for c in cites)
        assert cites[0]["heading_path"] == ["甲市防疫规定", "返岗"] and cites[0]["version"] == 1
        r = a.post("/v1/knowledge/it-b/search", json={"query": "返岗"})
        assert r.status_code == 404 and r.json()["error"]["code"] == "unknown_kb"
        files = {"file": ("通知.md", "# 通知\n\n甲市图书馆恢复开放。".encode(), "text/markdown")}
        r = a.post("/v1/knowledge/it-a/documents", files=files)
        assert r.status_code == 200 and r.json()["added"] == 1, r.text
        r = a.post("/v1/knowledge/it-a/search", json={"query": "图书馆开放了吗"})
        assert "图书馆" in r.json()["citations"][0]["text"]
    with _client(platform, kbs["b"]) as b:
        r = b.post("/v1/knowledge/it-b/search", json={"query": "返岗人员隔离", "limit": 10})
        assert all("乙市" in c["text"] for c in r.json()["citations"])


def test_the_cli_goes_through_the_running_platform(platform: Platform, kbs: dict) -> None:
    (platform.settings.home / "api-key").write_text(kbs["ops"] + "\n")
    client = connect(platform.settings)
    try:
        assert isinstance(client, RemoteKnowledge)
        stats = client.call("stats", "it-a", {})
        assert stats["tenant"] == "city-a" and stats["chunks"] >= 1
        snap = client.call("snapshot", "it-a", {"note": "it"})
        assert snap["note"] == "it"
        out = client.call("search", "it-a", {"query": "返岗"})
        assert out["citations"]
    finally:
        client.close()

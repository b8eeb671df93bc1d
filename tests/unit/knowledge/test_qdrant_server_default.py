"""``QINGLIANG_QDRANT_URL``: knowledge bases whose manifest names no store go to that Qdrant
server; a manifest's own store wins.

The real KnowledgeService, ingest and ``QdrantServerStore``; the one fake is at the
network boundary: ``qdrant_client.QdrantClient(url=...)`` is answered with the real
client in local mode (``QdrantClient(":memory:")``), recording the URL and key it was
given. A real server is tested by tests/unit/knowledge/test_vector_stores.py where
``QDRANT_URL`` is set.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import qdrant_client
from test_knowledge_service import BigramEmbedder, _manifest

from qingliang.knowledge.service import KnowledgeService
from qingliang.platform.errors import BadRequest, Conflict

URL = "http://qdrant.internal:6333"


@pytest.fixture
def servers(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    """The servers the service connected to (url, api_key), each a local-mode client."""
    made: list[dict[str, Any]] = []
    real = qdrant_client.QdrantClient

    def connect(url: str | None = None, api_key: str | None = None, **kw: Any) -> Any:
        client = real(":memory:")
        made.append({"url": url, "api_key": api_key, "client": client})
        return client

    monkeypatch.setattr(qdrant_client, "QdrantClient", connect)
    return made


@pytest.fixture
def docs(tmp_path: Path) -> Path:
    d = tmp_path / "docs"
    d.mkdir()
    (d / "faq.md").write_text(
        "# 社保\n\n## 补办\n\n社保卡丢失后先挂失，再到社保网点补办新卡。\n", encoding="utf-8"
    )
    return d


@pytest.fixture
def svc(tmp_path: Path) -> Iterator[KnowledgeService]:
    emb = BigramEmbedder()
    s = KnowledgeService(tmp_path / "home", embedder_factory=lambda _m: emb)
    yield s
    s.close()


def test_a_kb_without_a_store_goes_to_the_configured_server(
    svc: KnowledgeService, docs: Path, tmp_path: Path, servers: list, monkeypatch
) -> None:
    monkeypatch.setenv("QINGLIANG_QDRANT_URL", URL)
    monkeypatch.setenv("QINGLIANG_QDRANT_API_KEY", "s3cret")
    assert svc.register(_manifest("faq", docs), base=docs) == "created"
    out = svc.sync("faq")
    assert out.report.added > 0
    hit = svc.search("faq", "社保卡丢失", tenant="city-a")["citations"][0]
    assert "挂失" in hit["text"]
    stats = svc.stats("faq")
    assert stats["store"] == "server" and stats["chunks"] == out.report.total
    # The server's URL and key, read from the key variable (the key never stored).
    assert [(s["url"], s["api_key"]) for s in servers] == [(URL, "s3cret")]
    assert servers[0]["client"].count("faq").count == out.report.total
    assert not (tmp_path / "home" / "knowledge" / "faq").exists()  # nothing embedded
    stored = svc.state.get("KnowledgeBase", "faq").body["spec"]["store"]
    assert (stored["kind"], stored["url"], stored["api_key_env"]) == (
        "server",
        URL,
        "QINGLIANG_QDRANT_API_KEY",
    )
    assert "s3cret" not in repr(svc.state.get("KnowledgeBase", "faq").body)


def test_the_manifests_own_store_wins(
    svc: KnowledgeService, docs: Path, tmp_path: Path, servers: list, monkeypatch
) -> None:
    monkeypatch.setenv("QINGLIANG_QDRANT_URL", URL)
    svc.register(_manifest("local", docs, store={"kind": "embedded"}), base=docs)
    svc.register(_manifest("mine", docs, store={"path": "kb/mine"}), base=docs)
    other = "http://other:6333"
    svc.register(_manifest("other", docs, store={"kind": "server", "url": other}), base=docs)
    for name in ("local", "mine", "other"):
        svc.sync(name)
    assert (tmp_path / "home" / "knowledge" / "local").is_dir()
    assert (tmp_path / "home" / "kb" / "mine").is_dir()
    assert [s["url"] for s in servers] == [other]


def test_without_the_variable_kbs_stay_embedded(
    svc: KnowledgeService, docs: Path, tmp_path: Path, servers: list, monkeypatch
) -> None:
    monkeypatch.delenv("QINGLIANG_QDRANT_URL", raising=False)
    svc.register(_manifest("faq", docs, store={"collection": "faq-v1"}), base=docs)
    svc.sync("faq")
    assert servers == [] and (tmp_path / "home" / "knowledge" / "faq").is_dir()
    # Setting the variable later does not move a KB away from its points.
    monkeypatch.setenv("QINGLIANG_QDRANT_URL", URL)
    with pytest.raises(Conflict, match="spec.store changed"):
        svc.register(_manifest("faq", docs, store={"collection": "faq-v1"}), base=docs)
    assert svc.search("faq", "社保卡", tenant="city-a")["citations"]


def test_a_bad_url_in_the_variable_is_named(svc: KnowledgeService, docs: Path, monkeypatch) -> None:
    monkeypatch.setenv("QINGLIANG_QDRANT_URL", "qdrant:6333")
    with pytest.raises(BadRequest, match="QINGLIANG_QDRANT_URL: .*not a server URL"):
        svc.register(_manifest("faq", docs), base=docs)
    assert svc.names() == []

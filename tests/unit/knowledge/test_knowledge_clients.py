"""The knowledge clients the gateway and the agents hold: async end to end.

``LocalKnowledge`` runs the service in a worker thread; ``HandleKnowledge`` awaits the Serve
handle on the caller's loop. Both answer ``search`` with the citations list, exactly what
the service's search returns under ``citations``.
"""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path
from typing import Any

import pytest

from qingliang.knowledge.api import METHODS, KnowledgeClient, LocalKnowledge, dispatch
from qingliang.knowledge.deployment import HandleKnowledge
from qingliang.knowledge.service import KnowledgeService
from qingliang.platform.errors import BadRequest, NotFound
from tests.unit.knowledge.test_knowledge_service import BigramEmbedder, _manifest


@pytest.fixture
def svc(tmp_path: Path) -> Any:
    folder = tmp_path / "docs"
    folder.mkdir()
    (folder / "a.md").write_text(
        "# 防疫\n\n## 返岗\n\n返岗人员居家隔离十四天。\n\n## 口罩\n\n口罩在药店购买。",
        encoding="utf-8",
    )
    emb = BigramEmbedder()
    s = KnowledgeService(tmp_path / "home", embedder_factory=lambda _m: emb)
    s.register(_manifest("gov", folder, tenant="city-a"), base=folder)
    s.sync("gov")
    yield s
    s.close()


def test_local_search_is_the_services_citations(svc: KnowledgeService) -> None:
    client: KnowledgeClient = LocalKnowledge(svc)
    got = asyncio.run(client.search("gov", "返岗隔离", tenant="city-a", limit=2))
    want = svc.search("gov", "返岗隔离", tenant="city-a", limit=2, mode="hybrid")["citations"]
    assert got == want and got and len(got) <= 2


def test_local_search_keeps_tenants_apart(svc: KnowledgeService) -> None:
    with pytest.raises(NotFound):
        asyncio.run(LocalKnowledge(svc).search("gov", "返岗", tenant="city-b"))


class FakeHandle:
    """A Serve handle's ``call.remote``: records the call and the thread it ran on."""

    def __init__(self, answer: Any) -> None:
        self.answer = answer
        self.calls: list[tuple] = []
        self.threads: list[int] = []
        self.call = self

    async def remote(self, *args: Any) -> Any:
        self.calls.append(args)
        self.threads.append(threading.get_ident())
        if isinstance(self.answer, Exception):
            raise self.answer
        return self.answer


def test_handle_search_awaits_on_the_callers_loop() -> None:
    citations = [{"n": 1, "text": "返岗人员居家隔离十四天。"}]
    handle = FakeHandle({"kb": "gov", "version": 1, "mode": "hybrid", "citations": citations})

    async def main() -> tuple[list[dict], int]:
        got = await HandleKnowledge(handle).search("gov", "返岗", tenant="city-a", limit=3)
        return got, threading.get_ident()

    got, loop_thread = asyncio.run(main())
    assert got == citations
    assert handle.calls == [
        ("search", "gov", "city-a", "agents", {"query": "返岗", "limit": 3, "mode": "hybrid"})
    ]
    assert handle.threads == [loop_thread]  # no hop to another thread and back


def test_handle_passes_the_services_errors_on() -> None:
    handle = FakeHandle(BadRequest("query must not be empty", param="query"))
    with pytest.raises(BadRequest, match="query must not be empty"):
        asyncio.run(HandleKnowledge(handle).call("search", "gov", None, "api", {"query": ""}))


def test_dispatch_refuses_an_unknown_method() -> None:
    with pytest.raises(BadRequest, match="unknown knowledge method 'serach'"):
        dispatch(None, "serach", "gov", None, "api", {})
    assert "search" in METHODS and "query" in METHODS["search"]


@pytest.mark.parametrize(
    "module", ["qingliang.knowledge.api", "qingliang.knowledge.ingest.options"]
)
def test_docstring_examples_run(module: str) -> None:
    import doctest
    import importlib

    result = doctest.testmod(importlib.import_module(module))
    assert result.failed == 0 and result.attempted > 0

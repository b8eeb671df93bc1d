"""An agent over a knowledge base with ``spec.retrieval.context.neighbours``: the model's prompt
passage is the hit's context (the cited chunk with its neighbours), while the citation the run
streams still names and quotes the chunk that matched. Real LangGraph runtime, real
KnowledgeService on embedded Qdrant with the packaged embedder; the chat model is scripted
(a fake at the model boundary) and records what it was given.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from qingliang.agents.catalog import StaticCatalog
from qingliang.agents.llm import ChatReply
from qingliang.agents.manifest import AgentGraph
from qingliang.agents.service import AgentService
from qingliang.agents.state import GraphDef
from qingliang.agents.tools.base import ToolContext
from qingliang.agents.tools.knowledge import KnowledgeSearchTool, passage_text
from qingliang.agents.tools.specs import KnowledgeTool
from qingliang.knowledge.service import KnowledgeService
from qingliang.serving.embeddings import PackagedEmbedder
from tests.unit.knowledge.test_hit_context import PERMIT, TENANT, _kb

QUESTION = "派出所几个工作日内制作居住证"


class Recording:
    """Answers ``根据[1]`` and keeps each request's system prompt."""

    def __init__(self) -> None:
        self.systems: list[str] = []

    async def complete(self, model, messages, *, tools=None, on_delta=None, **_: Any):
        self.systems.append(next(m["content"] for m in messages if m["role"] == "system"))
        if on_delta:
            on_delta("根据[1]。")
        return ChatReply("根据[1]。", [], 5, model)


@pytest.fixture(scope="module")
def embedder(tmp_path_factory: pytest.TempPathFactory) -> PackagedEmbedder:
    return PackagedEmbedder(cache_dir=tmp_path_factory.getbasetemp() / "e5-model-cache")


@pytest.fixture
def kb(tmp_path: Path, embedder: PackagedEmbedder) -> KnowledgeService:
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "permit.txt").write_text("\n".join(PERMIT), encoding="utf-8")
    svc = KnowledgeService(tmp_path / "kbhome", embedder_factory=lambda _m: embedder)
    svc.register(_kb("permits", docs, neighbours=1), base=docs)
    svc.sync("permits")
    yield svc
    svc.close()


def _search(kb: KnowledgeService):
    def search(name: str, query: str, *, tenant, limit, mode):
        return kb.search(name, query, tenant=tenant, limit=limit, mode=mode)["citations"]

    return search


GRAPH = {
    "apiVersion": "qingliang.io/v1",
    "kind": "AgentGraph",
    "metadata": {"name": "permit-desk"},
    "spec": {
        "agents": [{"name": "clerk", "model": "m", "knowledge": ["permits"], "knowledge_limit": 1}],
        "nodes": [{"name": "answer", "type": "agent", "agent": "clerk"}],
    },
}


async def test_the_prompt_reads_the_context_and_the_citation_keeps_the_span(
    kb: KnowledgeService, tmp_path: Path
) -> None:
    chat = Recording()
    svc = AgentService(
        tmp_path / "home",
        chat=chat,
        catalog=StaticCatalog([GraphDef(AgentGraph.model_validate(GRAPH), tmp_path)]),
        knowledge=_search(kb),
    )
    async with svc:
        run_id, stream = await svc.start(
            "permit-desk", {"input": QUESTION}, tenant=TENANT, actor="citizen"
        )
        events = [e async for e in stream]
        assert svc.get(run_id, TENANT).status == "done"
    (cited,) = [c for e in events if e["type"] == "citations" for c in e["citations"]]
    assert PERMIT[2] in cited["text"] and PERMIT[1] not in cited["text"]  # the span that matched
    assert cited["locator"].startswith("chars ") and cited["kb"] == "permits"
    assert PERMIT[1] in cited["context"] and PERMIT[3] in cited["context"]
    (system,) = chat.systems
    passage = next(line for line in system.splitlines() if line.startswith("[1] "))
    for sentence in PERMIT[1:4]:  # the model read the neighbours too
        assert sentence in passage
    assert PERMIT[0] not in passage


def test_the_search_tool_gives_the_model_the_context(kb: KnowledgeService) -> None:
    tool = KnowledgeSearchTool(
        KnowledgeTool(kind="knowledge_search", name="permits", knowledge="permits", limit=1)
    )
    out = asyncio.run(
        tool.run({"query": QUESTION}, ToolContext(run_id="r1", tenant=TENANT, knowledge=kb.search))
    )
    assert all(s in out.content for s in PERMIT[1:4])
    (cited,) = out.citations
    assert PERMIT[2] in cited["text"] and PERMIT[3] not in cited["text"]


def test_a_long_context_is_cut_around_the_cited_span() -> None:
    text = "CITED"
    hit = {"text": text, "context": "a" * 500 + text + "b" * 500}
    got = passage_text(hit, 100)  # contexts may be twice a chunk's limit
    assert text in got and got.startswith("…") and got.endswith("…")
    assert len(got.strip("…")) == 200
    # without a context: the text, cut as before
    assert passage_text({"text": "x" * 300}, 100) == "x" * 99 + "…"

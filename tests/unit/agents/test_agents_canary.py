"""Agent model calls to a bare deployment follow its canary split, as API requests do.

``BackendChat`` over a small fake Backend (the gateway's boundary), and one agent run
through the real AgentService, LangGraph runtime and run store. No Ray.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import AsyncIterator
from contextlib import closing
from pathlib import Path

from qingliang.agents.catalog import StaticCatalog
from qingliang.agents.llm import BackendChat, ChatReply, recover_tool_call
from qingliang.agents.manifest import AgentGraph
from qingliang.agents.service import AgentService
from qingliang.agents.state import GraphDef
from qingliang.serving.engine import StreamChunk
from qingliang.serving.traffic import ModelEntry

QWEN = ModelEntry("qwen", ("faq-v2",), traffic={"faq-v2": 0.5}, refs={"faq-v2": "faq@2"})
ASK = [{"role": "user", "content": "居住证怎么办理？"}]


def answer(text: str) -> dict:
    return {
        "id": "chatcmpl-1",
        "model": "qwen",
        "choices": [
            {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}
        ],
        "usage": {"total_tokens": 7},
    }


class NoModels:
    """A backend without ``models()``: records the adapter of every call."""

    def __init__(self) -> None:
        self.adapters: list[str | None] = []

    async def generate(self, deployment: str, endpoint: str, body: dict, adapter: str | None):
        self.adapters.append(adapter)
        return answer(f"{deployment}:{adapter or 'base'}")

    async def stream(
        self, deployment: str, endpoint: str, body: dict, adapter: str | None
    ) -> AsyncIterator[StreamChunk]:
        self.adapters.append(adapter)
        chunk = {"choices": [{"index": 0, "delta": {"content": adapter or "base"}}]}
        yield StreamChunk.of(chunk)


class Canary(NoModels):
    def __init__(self, entries: list[ModelEntry]) -> None:
        super().__init__()
        self.entries = entries

    def models(self) -> list[ModelEntry]:
        return list(self.entries)


async def test_bare_calls_split_between_the_canary_and_the_base_model() -> None:
    backend = Canary([QWEN])
    chat = BackendChat(backend)
    replies = [await chat.complete("qwen", ASK, user=f"run-{i}") for i in range(60)]
    assert set(backend.adapters) == {"faq-v2", None}
    assert 10 < backend.adapters.count("faq-v2") < 50
    for r, used in zip(replies, backend.adapters, strict=True):
        assert r.adapter == used
        assert r.adapter_ref == ("faq@2" if used else None)
        assert r.text == f"qwen:{used or 'base'}"


async def test_one_user_stays_on_one_arm() -> None:
    backend = Canary([QWEN])
    chat = BackendChat(backend)
    for user in ("run-a", "run-b", "run-c", "run-d"):
        backend.adapters.clear()
        for _ in range(5):
            await chat.complete("qwen", ASK, user=user)
        # Streamed calls (a delta callback, no tools) take the same arm.
        reply = await chat.complete("qwen", ASK, user=user, on_delta=lambda d: None)
        assert len(set(backend.adapters)) == 1, backend.adapters
        assert (reply.adapter, reply.text) == (backend.adapters[0], backend.adapters[0] or "base")


async def test_an_explicit_adapter_is_not_rerouted() -> None:
    # All bare traffic would go to faq-v2; an explicit base-model arm would still be kept.
    backend = Canary([ModelEntry("qwen", ("faq-v2", "sql"), traffic={"faq-v2": 1.0})])
    chat = BackendChat(backend)
    for user in ("a", "b", "c"):
        reply = await chat.complete("qwen:sql", ASK, user=user)
        assert reply.adapter == "sql" and reply.adapter_ref is None
    backend.entries = [QWEN]
    reply = await chat.complete("qwen:faq-v2", ASK, user="a")
    assert backend.adapters == ["sql", "sql", "sql", "faq-v2"]
    assert (reply.adapter, reply.adapter_ref) == ("faq-v2", "faq@2")


async def test_an_agent_naming_an_alias_reaches_the_adapter_it_points_at() -> None:
    """A domain desk names `qwen:gov`; the pipeline moves the alias from version to version
    (or leaves it empty, the base model) and the agent follows without a change."""
    entry = ModelEntry(
        "qwen", ("gov-v1", "gov-v2"), refs={"gov-v2": "gov@2"}, aliases={"gov": {"gov-v2": 1.0}}
    )
    backend = Canary([entry])
    chat = BackendChat(backend)
    reply = await chat.complete("qwen:gov", ASK, user="run-1")
    assert (reply.adapter, reply.adapter_ref, reply.text) == ("gov-v2", "gov@2", "qwen:gov-v2")
    backend.entries = [ModelEntry("qwen", aliases={"gov": {}})]
    reply = await chat.complete("qwen:gov", ASK, user="run-1")
    assert (reply.adapter, reply.text) == (None, "qwen:base")
    assert backend.adapters == ["gov-v2", None]


async def test_without_traffic_bare_calls_go_to_the_base_model() -> None:
    backend = Canary([ModelEntry("qwen", ("faq-v2",), refs={"faq-v2": "faq@2"})])
    chat = BackendChat(backend)
    for i in range(10):
        reply = await chat.complete("qwen", ASK, user=f"u{i}")
        assert (reply.adapter, reply.adapter_ref) == (None, None)
    # A deployment the backend does not list has no traffic either.
    await chat.complete("other", ASK)
    assert backend.adapters == [None] * 11


async def test_a_backend_without_models_still_works() -> None:
    backend = NoModels()
    chat = BackendChat(backend)
    reply = await chat.complete("qwen", ASK, user="a")
    assert (reply.text, reply.adapter, reply.tokens) == ("qwen:base", None, 7)
    reply = await chat.complete("qwen:sql", ASK, on_delta=lambda d: None)
    assert (reply.text, reply.adapter) == ("sql", "sql")
    assert backend.adapters == [None, "sql"]


def test_replies_keep_their_adapter_through_the_journal() -> None:
    reply = ChatReply("hi", [], 3, "qwen", "stop", "faq-v2", "faq@2")
    assert ChatReply.from_json(json.loads(json.dumps(reply.to_json()))) == reply
    # A reply journaled before adapters were recorded still reads.
    old = {"text": "hi", "tool_calls": [], "tokens": 3, "model": "qwen", "finish_reason": None}
    assert ChatReply.from_json(old).adapter is None
    fenced = ChatReply('{"name": "lookup", "arguments": {}}', adapter="faq-v2", adapter_ref="x@1")
    call = recover_tool_call(fenced, {"lookup"})
    assert call.tool_calls[0].name == "lookup"
    assert (call.adapter, call.adapter_ref) == ("faq-v2", "x@1")


DESK = {
    "agents": [{"name": "clerk", "model": "qwen"}],
    "nodes": [{"name": "answer", "type": "agent", "agent": "clerk"}],
}


async def test_an_agent_run_is_sticky_and_journals_the_adapter(tmp_path: Path) -> None:
    backend = Canary([QWEN])
    desk = AgentGraph.model_validate(
        {"apiVersion": "qingliang.io/v1", "kind": "AgentGraph", "metadata": {"name": "desk"}}
        | {"spec": DESK}
    )
    svc = AgentService(
        tmp_path / "home",
        chat=BackendChat(backend),
        catalog=StaticCatalog([GraphDef(desk, tmp_path)]),
        tools_for=lambda g: {},
    )
    async with svc:
        used: dict[str, str | None] = {}
        for i in range(12):
            run_id, events = await svc.start("desk", {"input": f"问题 {i}"}, tenant=None, actor="t")
            [e async for e in events]
            assert svc.get(run_id).status == "done"
            used[run_id] = backend.adapters[-1]
    # Both arms got agent traffic, and each run's arm is the one its id hashes to.
    assert set(used.values()) == {"faq-v2", None}
    chat = BackendChat(Canary([QWEN]))
    for run_id, adapter in used.items():
        assert (await chat.complete("qwen", ASK, user=run_id)).adapter == adapter
    with closing(sqlite3.connect(tmp_path / "home" / "agents.sqlite")) as db:
        rows = db.execute("SELECT run_id, value FROM journal").fetchall()
    journaled = {run_id: json.loads(value) for run_id, value in rows}
    assert journaled.keys() == used.keys()
    for run_id, adapter in used.items():
        assert journaled[run_id]["adapter"] == adapter
        assert journaled[run_id]["adapter_ref"] == ("faq@2" if adapter else None)

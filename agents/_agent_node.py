"""One agent answering inside a node: knowledge first, then model ↔ tool rounds.

Every knowledge search, model call and tool call is a journal step (see ``_journal``), so
a node re-executed after an interrupt, resume or crash replays them; tokens are counted
once and a side-effecting tool runs once.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from qingliang.agents._journal import NodeJournal
from qingliang.agents.llm import ChatReply, recover_tool_call
from qingliang.agents.manifest import Agent
from qingliang.agents.tools.base import Tool, openai_spec

if TYPE_CHECKING:
    from qingliang.agents.runtime import GraphCompiler, GraphDef, RunState

log = logging.getLogger(__name__)

MAX_CONTEXT_CHARS = 1200


@dataclass(frozen=True)
class NestedAgentTool:
    """A ``call_agent`` tool: the model asks another AgentGraph (run as a nested graph)."""

    name: str
    description: str
    graph: str
    side_effect: bool = True
    parameters: Any = None

    def __post_init__(self) -> None:
        schema = {
            "type": "object",
            "properties": {"request": {"type": "string", "description": "What to ask."}},
            "required": ["request"],
        }
        object.__setattr__(self, "parameters", schema)


@dataclass(frozen=True)
class AgentStep:
    compiler: GraphCompiler
    gdef: GraphDef
    node: str
    agent: Agent
    model: str
    tools: dict[str, Tool]


def _emit(config: dict, event: dict) -> None:
    from qingliang.agents.runtime import emit

    emit(config, event)


def _passages(hits: list[dict], start: int) -> list[str]:
    """Hits (the knowledge API's citation dicts) as numbered prompt passages."""
    lines = []
    for i, h in enumerate(hits, start):
        where = str(h.get("source") or h.get("doc_id") or "")
        if h.get("page"):
            where += f" p.{h['page']}"
        lines.append(f"[{i}] {str(h.get('text', ''))[:MAX_CONTEXT_CHARS]} (source: {where})")
    return lines


def build_messages(agent: Agent, state: RunState, passages: list[str]) -> list[dict]:
    system = agent.system or "You are a helpful assistant."
    if agent.role:
        system += f"\nYour role: {agent.role}"
    if passages:
        system += "\nAnswer from these passages and cite them as [n]:\n" + "\n".join(passages)
    user = state.get("input") or ""
    earlier = state.get("answers") or {}
    if earlier:
        user += "\n\nEarlier steps:\n" + "\n".join(f"- {k}: {v}" for k, v in earlier.items())
    names = state.get("attachments") or []
    if names:
        user += "\n\nAttached files: " + ", ".join(names)
    return [{"role": "system", "content": system}, {"role": "user", "content": user}]


async def run_agent(
    step: AgentStep, state: RunState, config: dict, journal: NodeJournal
) -> dict[str, Any]:
    """The node's state update: answer, citations, tokens, tools called, forms filled."""
    from qingliang.agents.runtime import RunStopped, run_config

    s = step.compiler.s
    run = run_config(config)
    agent = step.agent
    budget = step.gdef.manifest.spec.limits.token_budget
    used = int(state.get("tokens") or 0)
    citations: list[dict] = []
    passages: list[str] = []
    for kb in agent.knowledge:
        if s.knowledge is None:
            raise RunStopped(f"agent {agent.name!r} uses knowledge but none is configured")

        async def search(_key: str, kb: str = kb) -> list[dict]:
            assert s.knowledge is not None
            return await asyncio.to_thread(
                s.knowledge,
                kb,
                state.get("input") or "",
                tenant=run.get("tenant"),
                limit=agent.knowledge_limit,
                mode="hybrid",
            )

        hits, _ = await journal.step(search)
        passages += _passages(hits, len(passages) + 1)
        citations += [{"kb": kb, **h} for h in hits]
    messages = build_messages(agent, state, passages)
    tools = [step.tools[name] for name in agent.tools]
    specs = [openai_spec(t) for t in tools]
    by_name = {t.name: t for t in tools}
    tokens, called = 0, []
    forms: dict[str, Any] = {}
    text = ""
    # The run's id keeps a bare deployment's canary choice sticky for the whole run.
    run_id = run.get("run_id")
    who = str(run_id) if run_id else None
    for round_no in range(agent.max_tool_rounds + 1):
        if budget is not None and used + tokens >= budget:
            raise RunStopped(
                f"token budget of {budget} spent ({used + tokens} used) before "
                f"{step.node!r} could answer"
            )
        offer = specs if specs and round_no < agent.max_tool_rounds else None

        def on_delta(delta: str) -> None:
            _emit(config, {"type": "token", "node": step.node, "delta": delta})

        async def call_model(_key: str, offer: Any = offer) -> dict:
            reply = await s.chat.complete(
                step.model,
                messages,
                tools=offer,
                max_tokens=agent.max_tokens,
                temperature=agent.temperature,
                on_delta=on_delta,
                user=who,
            )
            return reply.to_json()

        raw, replayed = await journal.step(call_model)
        reply = ChatReply.from_json(raw)
        if offer is not None:
            reply = recover_tool_call(reply, set(by_name))
        tokens += reply.tokens
        if replayed and reply.text:
            _emit(
                config, {"type": "token", "node": step.node, "delta": reply.text, "replayed": True}
            )
        if not reply.tool_calls or offer is None:
            text = reply.text
            break
        messages.append(
            {
                "role": "assistant",
                "content": reply.text or None,
                "tool_calls": [
                    {
                        "id": tc.id,
                        "type": "function",
                        "function": {"name": tc.name, "arguments": _json(tc.arguments)},
                    }
                    for tc in reply.tool_calls
                ],
            }
        )
        for tc in reply.tool_calls:
            tool = by_name.get(tc.name)
            if tool is None:
                content = f"error: unknown tool {tc.name!r}; available: {', '.join(by_name)}"
            elif tc.error:
                content = f"error: {tc.error}"
            elif isinstance(tool, NestedAgentTool):
                merged = {**state, "forms": {**(state.get("forms") or {}), **forms}}
                content, nested_tokens = await _call_nested(
                    step,
                    tool,
                    tc.arguments,
                    merged,
                    config,
                    journal,  # type: ignore[arg-type]
                )
                tokens += nested_tokens
            else:
                merged = {**state, "forms": {**(state.get("forms") or {}), **forms}}
                out = await step.compiler.call_tool(
                    tool,
                    tc.arguments,
                    merged,
                    config,
                    journal,
                    step.node,  # type: ignore[arg-type]
                )
                if out.get("error"):
                    content = f"error: {out['error']}"
                else:
                    content = out.get("content") or ""
                    citations += out.get("citations") or []
                    data = out.get("data")
                    if isinstance(data, dict) and "values" in data and "form" in data:
                        forms[str(data["form"])] = data["values"]
            called.append({"node": step.node, "tool": tc.name})
            messages.append({"role": "tool", "tool_call_id": tc.id, "content": content})
    if citations:
        _emit(config, {"type": "citations", "node": step.node, "citations": citations})
    update: dict[str, Any] = {
        "answers": {step.node: text},
        "last": text,
        "tokens": tokens,
    }
    if citations:
        update["citations"] = citations
    if called:
        update["tools_called"] = called
    if forms:
        update["forms"] = forms
    return update


async def _call_nested(
    step: AgentStep,
    tool: NestedAgentTool,
    args: dict,
    state: RunState,
    config: dict,
    journal: NodeJournal,
) -> tuple[str, int]:
    request = str(args.get("request") or "").strip()
    if not request:
        return "error: `request` is required", 0

    async def call(_key: str) -> dict:
        out = await step.compiler.invoke_nested(tool.graph, request, state, config)
        return {"last": out.get("last") or "", "tokens": out.get("tokens") or 0}

    out, replayed = await journal.step(call)
    _emit(
        config,
        {
            "type": "tool",
            "node": step.node,
            "tool": tool.name,
            "arguments": args,
            "error": None,
            "result": out["last"][:2000],
            "replayed": replayed,
        },
    )
    return str(out["last"]), int(out["tokens"])


def _json(value: Any) -> str:
    import json

    return json.dumps(value, ensure_ascii=False)

"""One agent answering inside a node: knowledge first, then model ↔ tool rounds.

Every knowledge search, model call and tool call is a journal step (see ``_journal``), so
a node re-executed after an interrupt, resume or crash replays them; tokens are counted
once and a side-effecting tool runs once.
"""

from __future__ import annotations

import asyncio
import json
import logging
from dataclasses import dataclass, field
from typing import Any, Protocol

from qingliang.agents._journal import NodeJournal
from qingliang.agents.llm import ChatReply, recover_tool_call
from qingliang.agents.manifest import Agent
from qingliang.agents.state import GraphDef, RunState, RunStopped, Services, emit, run_config
from qingliang.agents.tools.base import Tool, openai_spec
from qingliang.agents.tools.knowledge import passage_text, search_knowledge
from qingliang.serving.toolcalls import Offer, parse_tool_calls

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


class Compiler(Protocol):
    """What an agent node needs of the graph compiler (:class:`~.runtime.GraphCompiler`)."""

    s: Services

    async def call_tool(
        self, tool: Tool, args: dict, state: RunState, config: dict, journal: NodeJournal, node: str
    ) -> dict:
        """Run ``tool`` once per journal key: ``{"content", "data", "citations"}`` or
        ``{"error"}``."""
        ...

    async def invoke_nested(self, name: str, text: str, state: RunState, config: dict) -> dict:
        """Run graph ``name`` inside the current node; its final state."""
        ...


@dataclass(frozen=True)
class AgentStep:
    """One agent answering in one node: the agent, the model it runs on, its tools."""

    compiler: Compiler
    gdef: GraphDef
    node: str
    agent: Agent
    model: str
    tools: dict[str, Tool]


def _passages(hits: list[dict], start: int) -> list[str]:
    """Hits (the knowledge API's citation dicts) as numbered prompt passages: a hit's
    ``context`` (its chunk with its neighbours) where it has one, else its ``text``."""
    lines = []
    for i, h in enumerate(hits, start):
        where = str(h.get("source") or h.get("doc_id") or "")
        if h.get("page"):
            where += f" p.{h['page']}"
        if h.get("record"):  # a record of a JSONL corpus: its id and title name it
            where += f" record {h['record']}" + (f" «{h['title']}»" if h.get("title") else "")
        # Without a context the chunk goes in as it is (line breaks kept): the prompts the
        # desks were tuned on; folding them changed what the 0.5B model does with them.
        body = (
            passage_text(h, MAX_CONTEXT_CHARS)
            if h.get("context")
            else str(h.get("text", ""))[:MAX_CONTEXT_CHARS]
        )
        lines.append(f"[{i}] {body} (source: {where})")
    return lines


def build_messages(
    agent: Agent, state: RunState, passages: list[str], images: list[dict] | None = None
) -> list[dict]:
    system = agent.system or "You are a helpful assistant."
    if agent.role:
        system += f"\nYour role: {agent.role}"
    if passages:
        if agent.tools:
            system += "\nAnswer from these passages and cite them as [n]:\n" + "\n".join(passages)
        else:
            # Small models copy a numbered list out when it ends the prompt: the passages
            # are framed as reference, and the last words ask for an answer of the model's
            # own. (Not with tools: the 0.5B model then writes its SQL out instead of
            # calling the tool.)
            system += (
                "\n\nReference passages (cite them as [n]; do not copy them out):\n"
                + "\n".join(passages)
                + "\n\n"
                + OWN_WORDS
            )
    user = state.get("input") or ""
    earlier = state.get("answers") or {}
    if earlier:
        user += "\n\nEarlier steps:\n" + "\n".join(f"- {k}: {v}" for k, v in earlier.items())
    names = state.get("attachments") or []
    if names:
        user += "\n\nAttached files: " + ", ".join(names)
    if images:
        return [
            {"role": "system", "content": system},
            {"role": "user", "content": [{"type": "text", "text": user}, *images]},
        ]
    return [{"role": "system", "content": system}, {"role": "user", "content": user}]


async def image_content(agent: Agent, state: RunState, run: dict) -> list[dict]:
    """The run's image attachments as content parts for ``agent.images``: nothing
    (``names``), the text OCR reads in each (``ocr``), or the images (``native``).

    An attachment that is not a readable image, or over the gateway's image limits,
    becomes a text part saying so: the model knows it was there, the run goes on.
    """
    if agent.images == "names" or not run.get("attachments_dir"):
        return []
    from pathlib import Path

    from qingliang.knowledge.vision import (
        IMAGE_SUFFIXES,
        ImageLimits,
        checked_image,
        ocr_part,
        ocr_text,
    )
    from qingliang.platform.errors import BadRequest

    limits = ImageLimits.from_env()
    names = [
        n for n in state.get("attachments") or [] if n.rsplit(".", 1)[-1].lower() in IMAGE_SUFFIXES
    ][: limits.max_images]

    def part(number: int, name: str) -> dict:
        try:
            data = (Path(run["attachments_dir"]) / name).read_bytes()
            image = checked_image(data, name, limits)
            if agent.images == "native":
                return {"type": "image_url", "image_url": {"url": image.data_url()}}
            text = ocr_text(image)
            return ocr_part(number, f"({name})\n{text}" if text.strip() else "")
        except (OSError, BadRequest) as exc:
            reason = exc.message if isinstance(exc, BadRequest) else str(exc)
            return {"type": "text", "text": f"[image {number} could not be read: {reason}]"}

    return await asyncio.to_thread(lambda: [part(i, n) for i, n in enumerate(names, 1)])


async def run_agent(
    step: AgentStep, state: RunState, config: dict, journal: NodeJournal
) -> dict[str, Any]:
    """The node's state update: answer, citations, tokens, tools called, forms filled."""
    run = run_config(config)
    agent = step.agent
    budget = step.gdef.manifest.spec.limits.token_budget
    used = int(state.get("tokens") or 0)
    passages, citations = await _search_knowledge(step, state, run, journal)
    messages = build_messages(agent, state, passages, await image_content(agent, state, run))
    tools = [step.tools[name] for name in agent.tools]
    specs = [openai_spec(t) for t in tools]
    by_name = {t.name: t for t in tools}
    turn = _Turn(citations=citations)
    text = ""
    rounds, answer_now = 0, False
    while True:
        if budget is not None and used + turn.tokens >= budget:
            raise RunStopped(
                f"token budget of {budget} spent ({used + turn.tokens} used) before "
                f"{step.node!r} could answer"
            )
        offer = specs if specs and rounds < agent.max_tool_rounds and not answer_now else None
        reply = await _call_model(step, messages, offer, set(by_name), run, config, journal)
        turn.tokens += reply.tokens
        if not reply.tool_calls or offer is None:
            text = _prose(reply.text, turn, set(by_name))
            break
        rounds += 1
        if all(_call_key(tc) in turn.answered for tc in reply.tool_calls):
            # Small models ask again for what they already have instead of answering:
            # no tools next time, and a plain request to answer from the results.
            ask = str(state.get("input") or "")[:500]
            messages.append({"role": "user", "content": ANSWER_FROM_RESULTS.format(question=ask)})
            answer_now = True
            continue
        messages.append(_assistant_message(reply))
        for tc in reply.tool_calls:
            content = await _answer_tool_call(step, tc, by_name, state, turn, config, journal)
            turn.called.append({"node": step.node, "tool": tc.name})
            turn.answered[_call_key(tc)] = (tc.name, content)
            messages.append({"role": "tool", "tool_call_id": tc.id, "content": content})
    if turn.citations:
        emit(config, {"type": "citations", "node": step.node, "citations": turn.citations})
    update: dict[str, Any] = {"answers": {step.node: text}, "last": text, "tokens": turn.tokens}
    if turn.citations:
        update["citations"] = turn.citations
    if turn.called:
        update["tools_called"] = turn.called
    if turn.forms:
        update["forms"] = turn.forms
    return update


@dataclass
class _Turn:
    """What an agent's model ↔ tool rounds have gathered so far."""

    citations: list[dict]
    tokens: int = 0
    called: list[dict] = field(default_factory=list)
    forms: dict[str, Any] = field(default_factory=dict)
    #: Each call made so far (name and arguments) → (tool, what it answered).
    answered: dict[str, tuple[str, str]] = field(default_factory=dict)


#: The last words of a prompt with knowledge passages.
OWN_WORDS = (
    "Now answer the user's message yourself, in a few sentences of your own, following the "
    "instructions at the top, and cite the passages you used as [n]."
)

#: Said to a model that asked again for tool results it already has (with the question).
ANSWER_FROM_RESULTS = (
    "根据上面工具返回的结果，用一两句话直接回答这个问题，写出结果里的具体数字和名称，"
    "不要再调用工具：\n{question}"
)


#: The answer of an agent whose model only wrote tool calls out, none of them made.
NO_ANSWER = (
    "（模型没有给出回答：它把工具调用写成了文字，调用没有执行。请换个说法再问，或换用更大的模型。）\n"
    "(The model gave no answer: it wrote a tool call out as text, and the call was not made.)"
)


def _writes_calls(text: str, offered: set[str]) -> bool:
    """Whether ``text`` is tool calls written out: as a whole, or line by line (the 0.5B
    model repeats a call until its tokens run out, the last one cut off)."""
    offer = Offer.of_names(offered)
    if parse_tool_calls(text, offer):
        return True
    return any(
        parse_tool_calls(line, offer) for line in text.splitlines() if line.lstrip().startswith("{")
    )


def _call_key(tc: Any) -> str:
    return f"{tc.name}\0{_json(tc.arguments)}"


def _prose(text: str, turn: _Turn, offered: set[str]) -> str:
    """The agent's answer: ``text``, unless it is only a tool call written out (a small
    model that would not stop calling), empty, or an echo of what it was asked. Then the
    answer is what the tools returned, introduced as such, rather than the call itself."""
    if not turn.answered:
        if offered and _writes_calls(text, offered):
            # Calls written out (cut off, repeated) that were never made: say so.
            log.info("the model wrote tool calls as text and made none")
            return NO_ANSWER
        return text
    said = text.strip()
    if said and not _writes_calls(text, offered) and said not in ANSWER_FROM_RESULTS:
        return text
    log.info("the model wrote a tool call instead of an answer; answering with the results")
    results = [f"[{name}]\n{content}" for name, content in turn.answered.values()]
    return "以下是查询到的结果 (tool results):\n" + "\n\n".join(results)


async def _search_knowledge(
    step: AgentStep, state: RunState, run: dict, journal: NodeJournal
) -> tuple[list[str], list[dict]]:
    """The agent's knowledge bases searched with the request: (prompt passages, citations)."""
    s = step.compiler.s
    agent = step.agent
    citations: list[dict] = []
    passages: list[str] = []
    for kb in agent.knowledge:
        knowledge = s.knowledge
        if knowledge is None:
            raise RunStopped(f"agent {agent.name!r} uses knowledge but none is configured")

        async def search(_key: str, kb: str = kb, knowledge: Any = knowledge) -> list[dict]:
            return await search_knowledge(  # type: ignore[no-any-return]
                knowledge,
                kb,
                state.get("input") or "",
                tenant=run.get("tenant"),
                limit=agent.knowledge_limit,
                mode="hybrid",
            )

        hits, _ = await journal.step(search)
        passages += _passages(hits, len(passages) + 1)
        citations += [{"kb": kb, **h} for h in hits]
    return passages, citations


async def _call_model(
    step: AgentStep,
    messages: list[dict],
    offer: list[dict] | None,
    tool_names: set[str],
    run: dict,
    config: dict,
    journal: NodeJournal,
) -> ChatReply:
    """One model call (a journal step: replayed, not repeated, after a re-execution)."""
    agent = step.agent
    # The run's id keeps a bare deployment's canary choice sticky for the whole run.
    run_id = run.get("run_id")
    who = str(run_id) if run_id else None

    def on_delta(delta: str) -> None:
        emit(config, {"type": "token", "node": step.node, "delta": delta})

    async def call_model(_key: str) -> dict:
        reply = await step.compiler.s.chat.complete(
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
    if not replayed:
        # What answered: the deployment, and the LoRA adapter with its registry ref (None:
        # the base model) — a canary or an alias picks per run, so the run says which.
        emit(
            config,
            {
                "type": "model",
                "node": step.node,
                "model": step.model,
                "adapter": reply.adapter,
                "adapter_ref": reply.adapter_ref,
                "tokens": reply.tokens,
            },
        )
    if offer is not None:
        reply = recover_tool_call(reply, tool_names)
    if replayed and reply.text:
        emit(config, {"type": "token", "node": step.node, "delta": reply.text, "replayed": True})
    return reply


def _assistant_message(reply: ChatReply) -> dict[str, Any]:
    return {
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


async def _answer_tool_call(
    step: AgentStep,
    tc: Any,
    by_name: dict[str, Tool],
    state: RunState,
    turn: _Turn,
    config: dict,
    journal: NodeJournal,
) -> str:
    """The tool message for one of the model's tool calls (``turn`` gathers the rest)."""
    tool = by_name.get(tc.name)
    if tool is None:
        return f"error: unknown tool {tc.name!r}; available: {', '.join(by_name)}"
    if tc.error:
        return f"error: {tc.error}"
    merged: Any = {**state, "forms": {**(state.get("forms") or {}), **turn.forms}}
    if isinstance(tool, NestedAgentTool):
        content, nested_tokens = await _call_nested(
            step, tool, tc.arguments, merged, config, journal
        )
        turn.tokens += nested_tokens
        return content
    out = await step.compiler.call_tool(tool, tc.arguments, merged, config, journal, step.node)
    if out.get("error"):
        return f"error: {out['error']}"
    turn.citations += out.get("citations") or []
    data = out.get("data")
    if isinstance(data, dict) and "values" in data and "form" in data:
        turn.forms[str(data["form"])] = data["values"]
    return str(out.get("content") or "")


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
    emit(
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
    return json.dumps(value, ensure_ascii=False)

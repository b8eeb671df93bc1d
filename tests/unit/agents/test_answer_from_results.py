"""A small model that asks again for a tool result it already has, instead of answering
(Qwen2.5-Coder-0.5B does this after an SQL or form result), still gives the user an
answer: it is asked once, without tools, to answer from the results; if it writes the call
yet again, the answer is the tools' results, introduced as such — never the call's JSON."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from qingliang.agents._agent_node import ANSWER_FROM_RESULTS
from qingliang.agents.llm import ChatReply, ToolCall
from tests.unit.agents.test_agent_runtime import graph, run
from tests.unit.agents.test_status_forms import TRIAGE, service

DESK = {**TRIAGE, "agents": [{**TRIAGE["agents"][0], "max_tool_rounds": 3}]}
CALL = {"name": "ticket", "arguments": {"department": "心血管科"}}


class Repeats:
    """Calls the tool, then writes the same call as text; then ``last``."""

    def __init__(self, last: str) -> None:
        self.last = last
        self.requests: list[tuple[list[dict], list | None]] = []

    async def complete(self, model, messages, *, tools=None, max_tokens=256, temperature=0.0,
                       on_delta=None, user=None):  # fmt: skip
        self.requests.append(([dict(m) for m in messages], tools))
        if len(self.requests) == 1:
            return ChatReply("", [ToolCall("c1", "ticket", CALL["arguments"])], 5, model)
        if len(self.requests) == 2:
            return ChatReply(json.dumps(CALL, ensure_ascii=False), [], 5, model)
        return ChatReply(self.last, [], 5, model)


async def test_a_repeated_call_is_not_run_again_and_the_model_is_asked_to_answer(
    tmp_path: Path,
) -> None:
    chat = Repeats("已为您分诊到心血管科，请尽快就诊。")
    async with service(tmp_path, graph(DESK), chat=chat) as svc:
        _, events = await run(svc, {"input": "胸闷心慌两天"})
    status = events[-1]
    assert status["status"] == "done"
    assert status["answer"] == "已为您分诊到心血管科，请尽快就诊。"
    assert len(chat.requests) == 3
    last_messages, last_tools = chat.requests[2]
    assert last_tools is None  # no tools offered any more
    nudge = ANSWER_FROM_RESULTS.format(question="胸闷心慌两天")
    assert last_messages[-1] == {"role": "user", "content": nudge}
    # The tool ran once: one tool message, one call recorded.
    assert [m["role"] for m in last_messages].count("tool") == 1


@pytest.mark.parametrize(
    "last",
    [
        json.dumps(CALL, ensure_ascii=False),
        # The same call over and over until the tokens ran out, the last one cut off.
        "\n".join([json.dumps(CALL, ensure_ascii=False)] * 3) + '\n{"',
        # An echo of the request to answer (seen: "The tools have answered (above).").
        "不要再调用工具：",
        "",
    ],
)
async def test_a_model_that_keeps_calling_answers_with_the_results(
    tmp_path: Path, last: str
) -> None:
    chat = Repeats(last)
    async with service(tmp_path, graph(DESK), chat=chat) as svc:
        _, events = await run(svc, {"input": "胸闷心慌两天"})
    answer = events[-1]["answer"]
    assert '"arguments"' not in answer  # not the call's JSON
    assert answer.startswith("以下是查询到的结果 (tool results):")
    assert "[ticket]" in answer and "心血管科" in answer


def test_passages_end_with_a_request_for_own_words_unless_the_agent_has_tools() -> None:
    """The 0.5B model copied a numbered passage list out as its answer when the list ended
    the prompt; with tools offered, the closing request made it write SQL out instead of
    calling the tool — so only tool-less agents get it."""
    from qingliang.agents._agent_node import OWN_WORDS, build_messages
    from qingliang.agents.manifest import Agent

    passages = ["[1] 噪音扰民投诉的处理 … (source: policy.jsonl record HL-005)"]
    writer = Agent.model_validate({"name": "reply", "model": "m", "system": "写答复"})
    system = build_messages(writer, {"input": "太吵了"}, passages)[0]["content"]
    assert system.endswith(OWN_WORDS) and "do not copy them out" in system
    clerk = Agent.model_validate({"name": "db", "model": "m", "tools": ["plant_db"]})
    system = build_messages(clerk, {"input": "how many"}, passages)[0]["content"]
    assert OWN_WORDS not in system and system.endswith(passages[0])


class OnlyWritesCalls:
    """Writes the call out, over and over, cut off: never a call the parser can take."""

    async def complete(self, model, messages, *, tools=None, max_tokens=256, temperature=0.0,
                       on_delta=None, user=None):  # fmt: skip
        line = json.dumps(CALL, ensure_ascii=False)
        return ChatReply("\n".join([line] * 4) + '\n{"name": "tic', [], 5, model)


async def test_calls_written_out_and_never_made_are_not_the_answer(tmp_path: Path) -> None:
    from qingliang.agents._agent_node import NO_ANSWER

    async with service(tmp_path, graph(DESK), chat=OnlyWritesCalls()) as svc:
        _, events = await run(svc, {"input": "这台机器是哪一台？"})
    assert events[-1]["answer"] == NO_ANSWER

"""A separate process that runs agent graphs, for the crash tests (killed with SIGKILL).

Usage: python _agents_child.py HOME MANIFESTS ACTION [ARG]
  ACTION start GRAPH | resume RUN_ID | recover
Environment:
  QL_BLOCK_MODEL=<model>   the scripted model <model> prints BLOCKED and hangs (kill me)
  QL_BLOCK_AFTER_SUBMIT=1  a submit tool prints SUBMITTED after its commit and hangs
Every real model call is appended to HOME/model-calls.log (replays are not calls).
Prints one JSON line {"run_id", "status", "answer", "results"} when the segment ends.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from pathlib import Path

import qingliang.platform.lifecycle.pipelines.kinds  # noqa: F401
from qingliang.agents.catalog import StaticCatalog
from qingliang.agents.llm import ChatReply, ToolCall
from qingliang.agents.service import AgentService, default_tools
from qingliang.agents.state import GraphDef
from qingliang.platform.manifests.loader import load_paths

#: Scripted replies per model: the n-th call (counting tool results in the messages) of
#: each model gets the n-th entry; a dict entry is a tool call.
SCRIPTS: dict[str, list] = {
    "clerk": [
        {"name": "intake", "arguments": {"applicant": "Li Lei", "phone": "13800000000"}},
        "Your details are recorded.",
    ],
    "clerk2": [
        {"name": "intake", "arguments": {"applicant": "Han Mei", "phone": "13900000000"}},
        {"name": "ask_filing", "arguments": {"request": "file it"}},
        "Filed, and the filing desk confirmed.",
    ],
    "confirm": ["Confirmed: the request is filed."],
}


class ScriptedChat:
    """The scripted chat model of these tests (a fake at the model boundary only)."""

    def __init__(self, home: Path) -> None:
        self.log = home / "model-calls.log"

    async def complete(
        self,
        model,
        messages,
        *,
        tools=None,
        max_tokens=256,
        temperature=0.0,
        on_delta=None,
        user=None,
    ):
        with self.log.open("a") as f:
            f.write(model + "\n")
        if os.environ.get("QL_BLOCK_MODEL") == model:
            print("BLOCKED", flush=True)
            time.sleep(600)
        turn = sum(1 for m in messages if m["role"] == "tool")
        step = SCRIPTS[model][min(turn, len(SCRIPTS[model]) - 1)]
        if isinstance(step, dict):
            call = ToolCall(f"call_{turn}", step["name"], step["arguments"])
            return ChatReply("", [call], 7, model)
        if on_delta:
            on_delta(step)
        return ChatReply(step, [], 5, model)


class BlockingSubmit:
    """Wraps the real submit tool: after its commit, announce and hang (to be killed)."""

    def __init__(self, inner) -> None:
        self._inner = inner
        self.name, self.description = inner.name, inner.description
        self.parameters, self.side_effect = inner.parameters, inner.side_effect

    def run(self, args, ctx):
        result = self._inner.run(args, ctx)
        if os.environ.get("QL_BLOCK_AFTER_SUBMIT"):
            print("SUBMITTED", flush=True)
            time.sleep(600)
        return result


def tools_for(gdef: GraphDef) -> dict:
    tools = default_tools(gdef)
    for t in gdef.manifest.spec.tools:
        if t.kind == "submit":
            tools[t.name] = BlockingSubmit(tools[t.name])
    return tools


async def main(home: Path, manifests: Path, action: str, arg: str | None) -> None:
    graphs = [GraphDef(i.manifest, manifests) for i in load_paths([manifests])]  # type: ignore[arg-type]
    service = AgentService(
        home, chat=ScriptedChat(home), catalog=StaticCatalog(graphs), tools_for=tools_for
    )
    try:
        if action == "start":
            run_id, events = await service.start(
                arg, {"input": "please file my request"}, tenant=None, actor="test"
            )
        elif action == "resume":
            run_id, events = await service.resume(
                arg, {"action": "approve"}, tenant=None, actor="reviewer"
            )
        else:
            (run_id,) = await service.recover()
            events = None
        if events is not None:
            async for _ in events:
                pass
        run = await service.wait(run_id)
        final = [e for e in service.store.events(run_id) if e["type"] == "status"][-1]
        print(
            json.dumps(
                {
                    "run_id": run_id,
                    "status": run.status,
                    "answer": run.answer,
                    "results": final.get("results"),
                }
            ),
            flush=True,
        )
    finally:
        await service.close()


if __name__ == "__main__":
    asyncio.run(
        main(
            Path(sys.argv[1]),
            Path(sys.argv[2]),
            sys.argv[3],
            sys.argv[4] if len(sys.argv) > 4 else None,
        )
    )

"""Agent orchestration overhead: a 3-node graph with an echo model at concurrency 32.

What is measured is everything Qingliang adds around the model: the AgentService (run
row, events, journal), LangGraph's StateGraph with the SQLite checkpointer writing a
checkpoint after every step (``durability="sync"``), and the background-task driver. The
model is an in-process echo (answers at once, 8 tokens), so the figure is orchestration
only. Every run goes start → three agent nodes in sequence → done.
"""

from __future__ import annotations

import asyncio
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

GRAPH = {
    "apiVersion": "qingliang.io/v1",
    "kind": "AgentGraph",
    "metadata": {"name": "echo3"},
    "spec": {
        "agents": [{"name": "echo", "model": "echo"}],
        "nodes": [
            {"name": "one", "type": "agent", "agent": "echo", "next": "two"},
            {"name": "two", "type": "agent", "agent": "echo", "next": "three"},
            {"name": "three", "type": "agent", "agent": "echo"},
        ],
    },
}


class EchoChat:
    """Answers with the last user message, at once (no model)."""

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
        from qingliang.agents.llm import ChatReply

        text = str(messages[-1]["content"])[:64]
        if on_delta is not None:
            on_delta(text)
        return ChatReply(text, [], 8, model)


def _stats(values: list[float]) -> dict[str, float]:
    return {
        "p50": round(1000 * statistics.median(values), 2),
        "p90": round(1000 * _pct(values, 0.90), 2),
        "p99": round(1000 * _pct(values, 0.99), 2),
    }


def _pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


async def _bench(
    runs: int, concurrency: int, home: Path, rate: float, open_runs: int
) -> dict[str, Any]:
    from qingliang.agents.catalog import StaticCatalog
    from qingliang.agents.manifest import AgentGraph
    from qingliang.agents.service import AgentService
    from qingliang.agents.state import GraphDef

    gdef = GraphDef(AgentGraph.model_validate(GRAPH), home)
    latencies: list[float] = []
    failures: list[str] = []
    async with AgentService(
        home, chat=EchoChat(), catalog=StaticCatalog([gdef]), tools_for=lambda g: {}
    ) as service:

        async def one() -> float:
            t0 = time.perf_counter()
            run_id, events = await service.start(
                "echo3", {"input": "ping"}, tenant=None, actor="bench"
            )
            async for _ in events:
                pass
            run = service.store.get(run_id)
            if run is None or run.status != "done":
                failures.append(f"{run_id}: {run and run.status} {run and run.reason}")
            return time.perf_counter() - t0

        for _ in range(20):  # warm-up: imports, graph compile, checkpointer tables
            await one()
        queue: asyncio.Queue = asyncio.Queue()
        for _ in range(runs):
            queue.put_nowait(None)

        async def worker() -> None:
            while not queue.empty():
                queue.get_nowait()
                latencies.append(await one())

        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        wall = time.perf_counter() - t0
        closed = list(latencies)

        # Open loop: requests arrive at `rate` per second whatever the answers do, at most
        # `concurrency` in flight; latency counts from the arrival (queueing included).
        latencies.clear()
        gate = asyncio.Semaphore(concurrency)
        start = time.perf_counter()

        async def arrive(i: int) -> None:
            await asyncio.sleep(max(0.0, start + i / rate - time.perf_counter()))
            arrived = time.perf_counter()
            async with gate:
                await one()
            latencies.append(time.perf_counter() - arrived)

        await asyncio.gather(*(arrive(i) for i in range(open_runs)))
        open_wall = time.perf_counter() - start
        opened = list(latencies)
    return {
        "runs": runs,
        "concurrency": concurrency,
        "nodes_per_run": 3,
        "wall_s": round(wall, 3),
        "runs_per_s": round(runs / wall, 1),
        "latency_ms": _stats(closed),
        "open_loop": {
            "rate_per_s": rate,
            "runs": open_runs,
            "achieved_per_s": round(open_runs / open_wall, 1),
            "latency_ms": _stats(opened),
        },
        "failures": failures[:5],
        "failed": len(failures),
        "checkpointer": "sqlite (durability=sync)",
    }


def orchestration_bench(
    runs: int = 2000, concurrency: int = 32, rate: float = 100.0, open_runs: int = 1000
) -> dict[str, Any]:
    """Closed loop: runs/s with ``concurrency`` clients back to back, and their latency.
    Open loop: latency when runs arrive at ``rate`` per second (≤ ``concurrency`` in
    flight). A fresh data directory each time."""
    try:
        import uvloop  # what Ray actors (the Agents replica) run their event loop on

        run = uvloop.run
    except ImportError:
        run = asyncio.run
    with tempfile.TemporaryDirectory(prefix="ql-bench-agents-") as tmp:
        return run(_bench(runs, concurrency, Path(tmp), rate, open_runs))


if __name__ == "__main__":
    import json
    import sys

    print(json.dumps(orchestration_bench(int(sys.argv[1]) if len(sys.argv) > 1 else 500), indent=1))

"""The per-node-execution journal: do a non-repeatable step once, replay it after.

LangGraph re-executes a node from its start when a run resumes after an interrupt or a
crash (and a parent node that called a nested graph re-executes too). Every model call,
tool call and routing decision inside a node goes through :meth:`NodeJournal.step`; the
n-th step of an execution has the key ``<checkpoint ns>#<n>``, which is the same on every
re-execution of that task, so a replay returns the recorded result instead of doing the
step again. Side-effecting tools also receive the key as their idempotency key, which
covers a crash between the effect and the journal write.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from qingliang.agents.runs import RunStore


def node_namespace(config: dict) -> str:
    """The checkpoint namespace of the running task (stable across re-executions)."""
    meta = config.get("metadata") or {}
    ns = meta.get("langgraph_checkpoint_ns") or (config.get("configurable") or {}).get(
        "checkpoint_ns"
    )
    if not ns:
        raise RuntimeError("not inside a LangGraph node: no checkpoint namespace")
    return str(ns)


class NodeJournal:
    """Steps of one node execution, keyed ``<ns>#<n>`` in the run's journal."""

    def __init__(self, store: RunStore, run_id: str, namespace: str) -> None:
        self.store = store
        self.run_id = run_id
        self.namespace = namespace
        self._n = 0
        self.replayed = 0

    def next_key(self) -> str:
        key = f"{self.namespace}#{self._n}"
        self._n += 1
        return key

    async def step(self, fn: Callable[[str], Awaitable[Any]]) -> tuple[Any, bool]:
        """``(result, replayed)``: the recorded result for the next key, or ``await fn(key)``
        recorded under it. ``fn`` must return JSON-serialisable data."""
        key = self.next_key()
        # Direct calls: a WAL read or write without fsync is well under a millisecond, less
        # than a thread hop would cost. The write returns once committed (with the other
        # runs' writes of this turn of the event loop).
        found, value = self.store.journaled(self.run_id, key)
        if found:
            self.replayed += 1
            return value, True
        value = await fn(key)
        return await self.store.ajournal(self.run_id, key, value), False

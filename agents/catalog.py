"""Where the agent runtime finds applied graphs.

:class:`StoreCatalog` reads the ``AgentGraph`` manifests ``qingliang apply`` recorded in
the platform's state store (with the folder their relative paths resolve against);
:class:`StaticCatalog` holds graphs given in code (tests, benchmarks, embedding).

Example:
    >>> catalog = StaticCatalog([])
    >>> catalog.names()
    []
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from pathlib import Path

from qingliang.agents.manifest import AgentGraph
from qingliang.agents.state import GraphDef
from qingliang.platform.errors import NotFound, did_you_mean

log = logging.getLogger(__name__)

KIND = "AgentGraph"


def _unknown(name: str, known: list[str]) -> NotFound:
    more = did_you_mean(name, known)
    return NotFound(
        f"agent graph {name!r} not found{more}; applied: {', '.join(known) or 'none'}",
        param="name",
        code="agent_not_found",
    )


class StaticCatalog:
    """Graphs given in code."""

    def __init__(self, graphs: Iterable[GraphDef]) -> None:
        self._graphs = {g.name: g for g in graphs}

    def add(self, gdef: GraphDef) -> None:
        self._graphs[gdef.name] = gdef

    def get(self, name: str) -> GraphDef:
        if name not in self._graphs:
            raise _unknown(name, sorted(self._graphs))
        return self._graphs[name]

    def names(self) -> list[str]:
        return sorted(self._graphs)


class StoreCatalog:
    """Graphs recorded by ``qingliang apply`` (re-read at most every ``ttl_s``)."""

    def __init__(self, store: object, ttl_s: float = 1.0) -> None:
        self._store = store
        self._ttl = ttl_s
        self._at = 0.0
        self._graphs: dict[str, GraphDef] = {}

    def _refresh(self) -> None:
        if time.monotonic() - self._at < self._ttl:
            return
        graphs = {}
        for row in self._store.list(KIND):  # type: ignore[attr-defined]
            try:
                manifest = AgentGraph.model_validate(row.body)
            except ValueError:
                log.warning("stored AgentGraph %s no longer validates; skipped", row.name)
                continue
            base = Path((row.plan or {}).get("base_dir") or ".")
            graphs[row.name] = GraphDef(manifest, base, version=str(row.applied_at))
        self._graphs = graphs
        self._at = time.monotonic()

    def get(self, name: str) -> GraphDef:
        self._refresh()
        if name not in self._graphs:
            self._at = 0.0  # applied a moment ago? look once more
            self._refresh()
        if name not in self._graphs:
            raise _unknown(name, sorted(self._graphs))
        return self._graphs[name]

    def names(self) -> list[str]:
        """Every applied graph, read now: a listing right after an apply or a delete
        shows it (the TTL spares only the lookups of a run's nodes)."""
        self._at = 0.0
        self._refresh()
        return sorted(self._graphs)

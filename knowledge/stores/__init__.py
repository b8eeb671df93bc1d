"""Vector stores behind one ``VectorStore`` protocol: embedded Qdrant Edge and Qdrant server.

The adapters import their Qdrant library lazily, so importing this package stays cheap::

    from qingliang.knowledge.stores import CollectionSpec, Filter, Point, QdrantEdgeStore
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from qingliang.knowledge.stores.base import (
    RRF_K,
    CollectionSpec,
    Filter,
    Hit,
    Point,
    PointId,
    Range,
    Record,
    SparseVector,
    VectorStore,
    rrf_fuse,
)
from qingliang.knowledge.stores.errors import ShardLocked, SpecConflict, StoreError

if TYPE_CHECKING:
    from qingliang.knowledge.stores.edge import QdrantEdgeStore
    from qingliang.knowledge.stores.server import QdrantServerStore

__all__ = [
    "RRF_K",
    "CollectionSpec",
    "Filter",
    "Hit",
    "Point",
    "PointId",
    "QdrantEdgeStore",
    "QdrantServerStore",
    "Range",
    "Record",
    "ShardLocked",
    "SparseVector",
    "SpecConflict",
    "StoreError",
    "VectorStore",
    "rrf_fuse",
]


def __getattr__(name: str) -> Any:
    if name == "QdrantEdgeStore":
        from qingliang.knowledge.stores.edge import QdrantEdgeStore

        return QdrantEdgeStore
    if name == "QdrantServerStore":
        from qingliang.knowledge.stores.server import QdrantServerStore

        return QdrantServerStore
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

"""``QdrantServerStore``: a Qdrant server or cluster through ``qdrant-client`` (scale-out).

The store is built around a client it is given, and owns it from then on (``close`` closes
it). Tests pass ``QdrantClient(":memory:")`` (qdrant-client's local mode: exact search, for
tests and demos only); production passes ``QdrantClient(url=..., api_key=...)``.

Hybrid search runs server-side through the Query API: a dense and a sparse prefetch fused by
``RrfQuery(k=60)`` — the same formula as :func:`~.base.rrf_fuse` — then re-sorted here so ties
break deterministically. Collection specs are cached after the first lookup; a 404 from the
server clears the cache entry.

Example:
    >>> from qdrant_client import QdrantClient  # doctest: +SKIP
    >>> store = QdrantServerStore(QdrantClient(":memory:"))  # doctest: +SKIP
    >>> store.create_collection(CollectionSpec(name="docs", dense_size=384))  # doctest: +SKIP
    True
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from qingliang.knowledge.stores.base import (
    DENSE,
    INDEXED_FIELDS,
    RRF_K,
    SPARSE,
    CollectionSpec,
    Filter,
    Hit,
    Point,
    PointId,
    Record,
    SparseVector,
    candidates_for,
    check_dense,
    check_limit,
    check_points,
    check_sparse_enabled,
    conflict_message,
    normalize_id,
    order_hits,
)
from qingliang.knowledge.stores.errors import SpecConflict, StoreError
from qingliang.platform.errors import BadRequest, NotFound, QingliangError

log = logging.getLogger(__name__)

T = TypeVar("T")

_DISTANCES = {"cosine": "COSINE", "dot": "DOT", "euclid": "EUCLID"}


class QdrantServerStore:
    """A :class:`~.base.VectorStore` over ``qdrant_client.QdrantClient``."""

    def __init__(self, client: Any) -> None:
        self.client = client
        self._specs: dict[str, CollectionSpec] = {}
        self._lock = threading.Lock()

    # -- collections -----------------------------------------------------------------------

    def create_collection(self, spec: CollectionSpec) -> bool:
        m = _models()
        existing = self._lookup(spec.name)
        if existing is None:
            dense = m.VectorParams(
                size=spec.dense_size, distance=getattr(m.Distance, _DISTANCES[spec.distance])
            )
            sparse = None
            if spec.sparse:
                modifier = m.Modifier.IDF if spec.sparse_idf else None
                sparse = {SPARSE: m.SparseVectorParams(modifier=modifier)}
            try:
                self._call(
                    spec.name,
                    self.client.create_collection,
                    spec.name,
                    vectors_config={DENSE: dense},
                    sparse_vectors_config=sparse,
                )
            except SpecConflict:
                existing = self._lookup(spec.name)  # lost a race with another creator
            else:
                self._index_payload(spec.name)
                with self._lock:
                    self._specs[spec.name] = spec
                log.info("created server collection %s (%s)", spec.name, spec.describe())
                return True
        if existing != spec:
            assert existing is not None
            raise SpecConflict(conflict_message(existing, spec))
        return False

    def _index_payload(self, name: str) -> None:
        """Keyword indexes on :data:`INDEXED_FIELDS` (a server only; local mode has none)."""
        if type(getattr(self.client, "_client", None)).__name__ == "QdrantLocal":
            return
        m = _models()
        for field_name in INDEXED_FIELDS:
            self._call(
                name,
                self.client.create_payload_index,
                name,
                field_name,
                field_schema=m.PayloadSchemaType.KEYWORD,
            )

    def drop_collection(self, name: str) -> bool:
        existed = self._lookup(name) is not None
        if existed:
            self._call(name, self.client.delete_collection, name)
            log.info("dropped server collection %s", name)
        with self._lock:
            self._specs.pop(name, None)
        return existed

    def list_collections(self) -> list[str]:
        response = self._call("", self.client.get_collections)
        return sorted(c.name for c in response.collections)

    def collection_spec(self, name: str) -> CollectionSpec:
        spec = self._lookup(name)
        if spec is None:
            raise NotFound(f"collection {name!r} not found", param="collection")
        return spec

    # -- writes ----------------------------------------------------------------------------

    def upsert(self, collection: str, points: Sequence[Point]) -> None:
        spec = self.collection_spec(collection)
        check_points(spec, points)
        if not points:
            return
        m = _models()
        structs = []
        for p in points:
            vectors: dict[str, Any] = {DENSE: list(p.dense)}
            if p.sparse is not None:
                vectors[SPARSE] = _sparse(m, p.sparse)
            structs.append(m.PointStruct(id=p.id, vector=vectors, payload=dict(p.payload)))
        self._call(collection, self.client.upsert, collection, points=structs, wait=True)

    def delete(self, collection: str, ids: Sequence[PointId]) -> None:
        self.collection_spec(collection)
        if not ids:
            return
        m = _models()
        selector = m.PointIdsList(points=[normalize_id(i) for i in ids])
        self._call(collection, self.client.delete, collection, points_selector=selector, wait=True)

    def delete_by_filter(self, collection: str, filter: Filter) -> None:
        self.collection_spec(collection)
        m = _models()
        selector = m.FilterSelector(filter=_to_filter(m, filter) or m.Filter())
        self._call(collection, self.client.delete, collection, points_selector=selector, wait=True)

    # -- reads -----------------------------------------------------------------------------

    def count(self, collection: str, filter: Filter | None = None) -> int:
        self.collection_spec(collection)
        m = _models()
        result = self._call(
            collection,
            self.client.count,
            collection,
            count_filter=_to_filter(m, filter),
            exact=True,
        )
        return int(result.count)

    def get(
        self, collection: str, ids: Sequence[PointId], *, with_vectors: bool = False
    ) -> list[Record]:
        self.collection_spec(collection)
        wanted = list(dict.fromkeys(normalize_id(i) for i in ids))
        if not wanted:
            return []
        found = self._call(
            collection,
            self.client.retrieve,
            collection,
            ids=wanted,
            with_payload=True,
            with_vectors=with_vectors,
        )
        by_id = {r.id: r for r in (_record(rec, with_vectors) for rec in found)}
        return [by_id[i] for i in wanted if i in by_id]

    def scroll(
        self,
        collection: str,
        filter: Filter | None = None,
        limit: int = 100,
        offset: PointId | None = None,
        *,
        with_vectors: bool = False,
    ) -> tuple[list[Record], PointId | None]:
        self.collection_spec(collection)
        check_limit(limit)
        m = _models()
        records, next_offset = self._call(
            collection,
            self.client.scroll,
            collection,
            scroll_filter=_to_filter(m, filter),
            limit=limit,
            offset=None if offset is None else normalize_id(offset),
            with_payload=True,
            with_vectors=with_vectors,
        )
        page = [_record(r, with_vectors) for r in records]
        return page, None if next_offset is None else normalize_id(next_offset)

    def search_dense(
        self,
        collection: str,
        vector: Sequence[float],
        limit: int = 10,
        filter: Filter | None = None,
    ) -> list[Hit]:
        spec = self.collection_spec(collection)
        check_limit(limit)
        dense = _dense_list(vector)
        check_dense(spec, dense, "query vector")
        m = _models()
        return self._query(
            collection, query=dense, using=DENSE, query_filter=_to_filter(m, filter), limit=limit
        )

    def search_sparse(
        self, collection: str, sparse: SparseVector, limit: int = 10, filter: Filter | None = None
    ) -> list[Hit]:
        spec = self.collection_spec(collection)
        check_limit(limit)
        check_sparse_enabled(spec, "sparse search")
        m = _models()
        return self._query(
            collection,
            query=_sparse(m, sparse),
            using=SPARSE,
            query_filter=_to_filter(m, filter),
            limit=limit,
        )

    def search_hybrid(
        self,
        collection: str,
        dense: Sequence[float],
        sparse: SparseVector,
        limit: int = 10,
        filter: Filter | None = None,
    ) -> list[Hit]:
        spec = self.collection_spec(collection)
        check_limit(limit)
        check_sparse_enabled(spec, "hybrid search")
        vector = _dense_list(dense)
        check_dense(spec, vector, "query vector")
        m = _models()
        flt = _to_filter(m, filter)
        n = candidates_for(limit)
        hits = self._query(
            collection,
            prefetch=[
                m.Prefetch(query=vector, using=DENSE, filter=flt, limit=n),
                m.Prefetch(query=_sparse(m, sparse), using=SPARSE, filter=flt, limit=n),
            ],
            query=m.RrfQuery(rrf=m.Rrf(k=RRF_K)),
            query_filter=flt,
            # Fetch every fused candidate, then cut after the deterministic re-sort.
            limit=2 * n,
        )
        return hits[:limit]

    def flush(self) -> None:
        """Nothing to do: every write waits for the server (``wait=True``)."""

    def close(self) -> None:
        self._call("", self.client.close)

    # -- internals -------------------------------------------------------------------------

    def _lookup(self, name: str) -> CollectionSpec | None:
        with self._lock:
            if name in self._specs:
                return self._specs[name]
        try:
            CollectionSpec(name=name, dense_size=1)
        except ValueError as exc:
            raise BadRequest(str(exc), param="collection") from None
        try:
            info = self._call(name, self.client.get_collection, name)
        except NotFound:
            return None
        spec = _spec_from_info(name, info)
        with self._lock:
            self._specs[name] = spec
        return spec

    def _query(self, collection: str, **kwargs: Any) -> list[Hit]:
        response = self._call(
            collection, self.client.query_points, collection, with_payload=True, **kwargs
        )
        return order_hits(
            [
                Hit(normalize_id(p.id), float(p.score), dict(p.payload or {}))
                for p in response.points
            ]
        )

    def _call(self, collection: str, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run one client call, translating qdrant-client's exceptions into our tree."""
        try:
            return fn(*args, **kwargs)
        except QingliangError:
            raise
        except Exception as exc:
            error = _translate(collection, exc)
            if isinstance(error, NotFound):
                with self._lock:
                    self._specs.pop(collection, None)
            raise error from exc


def _models() -> Any:
    from qdrant_client import models

    return models


def _translate(collection: str, exc: Exception) -> QingliangError:
    where = f"collection {collection!r}: " if collection else ""
    text = str(exc)
    status = getattr(exc, "status_code", None)
    if status == 404 or (isinstance(exc, ValueError) and "not found" in text.lower()):
        return NotFound(f"collection {collection!r} not found", param="collection")
    if status == 409 or (isinstance(exc, ValueError) and "already exists" in text):
        return SpecConflict(f"{where}already exists ({text})")
    if status in (400, 422) or isinstance(exc, ValueError):
        return BadRequest(f"{where}{text}")
    return StoreError(f"{where}qdrant server: {type(exc).__name__}: {text}")


def _spec_from_info(name: str, info: Any) -> CollectionSpec:
    params = info.config.params
    vectors = params.vectors if isinstance(params.vectors, dict) else {}
    dense = vectors.get(DENSE)
    if dense is None:
        raise StoreError(
            f"collection {name!r} exists but has no {DENSE!r} named vector;"
            " it was not created by Qingliang"
        )
    distance = {v: k for k, v in _DISTANCES.items()}.get(dense.distance.name)
    if distance is None:
        raise StoreError(f"collection {name!r}: unsupported distance {dense.distance}")
    sparse_params = (params.sparse_vectors or {}).get(SPARSE)
    idf = sparse_params is not None and sparse_params.modifier == _models().Modifier.IDF
    return CollectionSpec(
        name=name,
        dense_size=dense.size,
        distance=distance,
        sparse=sparse_params is not None,
        sparse_idf=idf,
    )


def _dense_list(vector: Sequence[float]) -> list[float]:
    seq = vector.tolist() if hasattr(vector, "tolist") else vector
    return [float(v) for v in seq]


def _sparse(m: Any, sparse: SparseVector) -> Any:
    return m.SparseVector(indices=list(sparse.indices), values=list(sparse.values))


def _record(rec: Any, with_vectors: bool) -> Record:
    dense = sparse = None
    if with_vectors and isinstance(rec.vector, dict):
        raw_dense = rec.vector.get(DENSE)
        dense = tuple(float(v) for v in raw_dense) if raw_dense is not None else None
        raw_sparse = rec.vector.get(SPARSE)
        if raw_sparse is not None:
            sparse = SparseVector(raw_sparse.indices, raw_sparse.values)
    return Record(normalize_id(rec.id), dict(rec.payload or {}), dense, sparse)


def _to_filter(m: Any, flt: Filter | None) -> Any:
    if flt is None or flt.is_empty():
        return None
    must: list[Any] = []
    for key, value in flt.equals.items():
        must.append(m.FieldCondition(key=key, match=m.MatchValue(value=value)))
    for key, values in flt.any_of.items():
        must.append(m.FieldCondition(key=key, match=m.MatchAny(any=list(values))))
    for key, rng in flt.ranges.items():
        kind = m.DatetimeRange if rng.is_datetime else m.Range
        must.append(
            m.FieldCondition(key=key, range=kind(gt=rng.gt, gte=rng.gte, lt=rng.lt, lte=rng.lte))
        )
    return m.Filter(must=must)

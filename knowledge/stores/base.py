"""The ``VectorStore`` protocol and the plain data types every adapter speaks.

Adapters (:mod:`.edge` for embedded Qdrant Edge, :mod:`.server` for a Qdrant server) translate
these types to their backend at the boundary; nothing above this package sees a Qdrant type.

Each collection holds one dense vector (named ``dense``) and, when its spec says so, one sparse
vector (named ``sparse``) per point. Hybrid search fuses the dense and sparse rankings with
reciprocal-rank fusion (:func:`rrf_fuse`).

Example:
    >>> spec = CollectionSpec(name="docs", dense_size=3)
    >>> p = Point(id=7, dense=[1.0, 0.0, 0.0], sparse=SparseVector([4, 9], [0.5, 1.0]),
    ...           payload={"tenant": "a"})
    >>> flt = Filter(equals={"tenant": "a"}, ranges={"year": Range(gte=2020)})
    >>> rrf_fuse([[1, 2], [2, 3]], k=60)[0][0]
    2
"""

from __future__ import annotations

import math
import re
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from typing import Any, Literal, Protocol, runtime_checkable

from qingliang.platform.errors import BadRequest

PointId = int | str
"""A point id: a non-negative integer or a UUID string (normalised to lowercase, hyphenated)."""

Distance = Literal["cosine", "dot", "euclid"]
Scalar = str | int | bool

DENSE = "dense"
SPARSE = "sparse"
#: Payload fields every collection indexes as keywords: the filters every search and sync
#: applies. Without an index Qdrant checks a filter point by point (54 ms at 10k chunks in
#: bench/knowledge.py; 1.2 ms with one on ``tenant``).
INDEXED_FIELDS: tuple[str, ...] = ("tenant", "kb", "domain", "kind", "doc_id", "source", "origin")
RRF_K = 60

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")


def normalize_id(value: Any) -> PointId:
    """Return ``value`` as a store id: an int >= 0, or a canonical UUID string.

    Raises:
        ValueError: ``value`` is neither.
    """
    if isinstance(value, bool):
        raise ValueError(f"point id must be an int or a UUID string, got {value!r}")
    if isinstance(value, int):
        if value < 0:
            raise ValueError(f"point id must be >= 0, got {value}")
        return value
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, str):
        try:
            return str(uuid.UUID(value))
        except ValueError:
            raise ValueError(f"point id must be an int or a UUID string, got {value!r}") from None
    raise ValueError(f"point id must be an int or a UUID string, got {type(value).__name__}")


def id_sort_key(value: PointId) -> tuple[int, int, str]:
    """Deterministic order over mixed ids: integers (numerically) before UUID strings."""
    if isinstance(value, int):
        return (0, value, "")
    return (1, 0, value)


def _floats(values: Any, what: str) -> tuple[float, ...]:
    seq = values.tolist() if hasattr(values, "tolist") else values
    out = tuple(float(v) for v in seq)
    if not all(math.isfinite(v) for v in out):
        raise ValueError(f"{what} contains NaN or infinity")
    return out


@dataclass(frozen=True)
class CollectionSpec:
    """What a collection stores: its name, dense vector size and distance, sparse on or off.

    ``sparse_idf`` asks the store to weight sparse query terms by their inverse document
    frequency over the collection (Qdrant's ``Modifier.IDF``), which turns the BM25-style
    term weights :mod:`qingliang.knowledge._bm25` writes into full BM25; it is always False
    for a collection without sparse vectors.
    """

    name: str
    dense_size: int
    distance: Distance = "cosine"
    sparse: bool = True
    sparse_idf: bool = True

    def __post_init__(self) -> None:
        object.__setattr__(self, "sparse_idf", bool(self.sparse and self.sparse_idf))
        if not _NAME.match(self.name) or ".." in self.name:
            raise ValueError(
                f"collection name {self.name!r}: use 1-128 letters, digits, '_', '-', '.'"
                " starting with a letter or digit"
            )
        if isinstance(self.dense_size, bool) or not isinstance(self.dense_size, int):
            raise ValueError(f"dense_size must be an int, got {self.dense_size!r}")
        if not 1 <= self.dense_size <= 65536:
            raise ValueError(f"dense_size must be in 1..65536, got {self.dense_size}")
        if self.distance not in ("cosine", "dot", "euclid"):
            raise ValueError(f"distance must be cosine, dot or euclid, got {self.distance!r}")

    def describe(self) -> str:
        sparse = "no sparse"
        if self.sparse:
            sparse = "with sparse (idf)" if self.sparse_idf else "with sparse"
        return f"dense {self.dense_size}-d {self.distance}, {sparse}"


@dataclass(frozen=True)
class SparseVector:
    """A sparse vector: parallel ``indices`` (unique, >= 0) and ``values``."""

    indices: tuple[int, ...]
    values: tuple[float, ...]

    def __init__(self, indices: Sequence[int], values: Sequence[float]) -> None:
        idx = tuple(int(i) for i in (indices.tolist() if hasattr(indices, "tolist") else indices))
        vals = _floats(values, "sparse vector")
        if len(idx) != len(vals):
            raise ValueError(f"sparse vector has {len(idx)} indices but {len(vals)} values")
        if any(i < 0 for i in idx) or len(set(idx)) != len(idx):
            raise ValueError("sparse vector indices must be unique and >= 0")
        object.__setattr__(self, "indices", idx)
        object.__setattr__(self, "values", vals)

    def dot(self, other: SparseVector) -> float:
        """Dot product with ``other`` (the score sparse search ranks by)."""
        theirs = dict(zip(other.indices, other.values, strict=True))
        return sum(v * theirs.get(i, 0.0) for i, v in zip(self.indices, self.values, strict=True))


@dataclass(frozen=True)
class Point:
    """One point to upsert: id, dense vector, optional sparse vector, JSON payload.

    ``dense`` accepts any sequence of floats (a numpy array too) and is stored as a tuple.
    """

    id: PointId
    dense: Sequence[float]
    sparse: SparseVector | None = None
    payload: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "id", normalize_id(self.id))
        object.__setattr__(self, "dense", _floats(self.dense, f"point {self.id}: dense vector"))
        object.__setattr__(self, "payload", dict(self.payload))


@dataclass(frozen=True)
class Record:
    """A stored point as read back by ``get`` / ``scroll`` (vectors only when asked for).

    With cosine distance Qdrant stores dense vectors normalised, so ``dense`` comes back as
    the unit vector of what was upserted.
    """

    id: PointId
    payload: dict[str, Any]
    dense: tuple[float, ...] | None = None
    sparse: SparseVector | None = None


@dataclass(frozen=True)
class Hit:
    """One search result; a higher ``score`` is better for every search kind."""

    id: PointId
    score: float
    payload: dict[str, Any]


RangeBound = int | float | str | date | datetime | None


@dataclass(frozen=True)
class Range:
    """A numeric or date range on a payload key; give numbers, or dates / ISO 8601 strings.

    Payload dates must be stored as RFC 3339 strings (``2024-05-01T00:00:00Z``). A ``date``
    bound means midnight UTC; a naive ``datetime`` is taken as UTC.
    """

    gt: RangeBound = None
    gte: RangeBound = None
    lt: RangeBound = None
    lte: RangeBound = None

    def __post_init__(self) -> None:
        bounds = [b for b in (self.gt, self.gte, self.lt, self.lte) if b is not None]
        if not bounds:
            raise ValueError("range needs at least one of gt, gte, lt, lte")
        numeric = [isinstance(b, int | float) and not isinstance(b, bool) for b in bounds]
        if any(numeric) and not all(numeric):
            raise ValueError("range mixes numbers and dates")
        if not all(numeric):
            for name in ("gt", "gte", "lt", "lte"):
                value = getattr(self, name)
                if value is not None:
                    object.__setattr__(self, name, _rfc3339(value))

    @property
    def is_datetime(self) -> bool:
        return any(isinstance(b, str) for b in (self.gt, self.gte, self.lt, self.lte))


def _rfc3339(value: Any) -> str:
    if isinstance(value, datetime):
        moment = value
    elif isinstance(value, date):
        moment = datetime(value.year, value.month, value.day)
    elif isinstance(value, str):
        try:
            moment = datetime.fromisoformat(value)
        except ValueError:
            raise ValueError(f"range bound {value!r} is not an ISO 8601 date") from None
    else:
        raise ValueError(f"range bound must be a number, date or ISO string, got {value!r}")
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


@dataclass(frozen=True)
class Filter:
    """Conditions that must all hold: equality, any-of lists, ranges, keyed by payload field.

    Example:
        >>> Filter(equals={"tenant": "a"}, any_of={"type": ["pdf", "md"]})  # doctest: +ELLIPSIS
        Filter(...)
    """

    equals: Mapping[str, Scalar] = field(default_factory=dict)
    any_of: Mapping[str, Sequence[str] | Sequence[int]] = field(default_factory=dict)
    ranges: Mapping[str, Range] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for key, value in self.equals.items():
            if not isinstance(value, str | int):  # bool is an int
                raise ValueError(f"filter equals.{key}: must be str, int or bool, got {value!r}")
        any_of: dict[str, tuple[Any, ...]] = {}
        for key, values in self.any_of.items():
            items = tuple(values)
            if not items or isinstance(values, str):
                raise ValueError(f"filter any_of.{key}: give a non-empty list")
            strs = all(isinstance(v, str) for v in items)
            ints = all(isinstance(v, int) and not isinstance(v, bool) for v in items)
            if not (strs or ints):
                raise ValueError(f"filter any_of.{key}: all strings or all integers")
            any_of[key] = items
        for key, rng in self.ranges.items():
            if not isinstance(rng, Range):
                raise ValueError(f"filter ranges.{key}: must be a Range, got {rng!r}")
        object.__setattr__(self, "equals", dict(self.equals))
        object.__setattr__(self, "any_of", any_of)
        object.__setattr__(self, "ranges", dict(self.ranges))

    def is_empty(self) -> bool:
        return not (self.equals or self.any_of or self.ranges)


def rrf_fuse(rankings: Sequence[Sequence[PointId]], k: int = RRF_K) -> list[tuple[PointId, float]]:
    """Reciprocal-rank fusion of ranked id lists, best first.

    A point at 0-based position ``p`` of a list earns ``1 / (k + p)`` (Qdrant's own formula,
    so native and Python fusion agree); its fused score is the sum over lists. Ties are broken
    by :func:`id_sort_key`, so the order is deterministic.

    Example:
        >>> [pid for pid, _ in rrf_fuse([[1, 2, 3], [3, 1]])]
        [1, 3, 2]
    """
    scores: dict[PointId, float] = {}
    for ranking in rankings:
        for position, pid in enumerate(ranking):
            scores[pid] = scores.get(pid, 0.0) + 1.0 / (k + position)
    return sorted(scores.items(), key=lambda item: (-item[1], id_sort_key(item[0])))


def order_hits(hits: list[Hit]) -> list[Hit]:
    """Sort hits by score, best first, ties by id (deterministic)."""
    return sorted(hits, key=lambda h: (-h.score, id_sort_key(h.id)))


def check_dense(spec: CollectionSpec, vector: Sequence[float], what: str) -> None:
    """Raise BadRequest naming expected vs got when ``vector`` has the wrong size."""
    if len(vector) != spec.dense_size:
        raise BadRequest(
            f"collection {spec.name!r}: {what} has {len(vector)} dimensions,"
            f" expected {spec.dense_size}",
            param="vector",
            code="vector_size_mismatch",
        )


def check_sparse_enabled(spec: CollectionSpec, what: str) -> None:
    """Raise BadRequest when ``spec`` has no sparse vectors but ``what`` needs them."""
    if not spec.sparse:
        raise BadRequest(
            f"collection {spec.name!r} has no sparse vectors ({what})",
            param="sparse",
            code="sparse_disabled",
        )


def check_points(spec: CollectionSpec, points: Sequence[Point]) -> None:
    """Validate a batch against ``spec`` before it reaches a backend."""
    for p in points:
        check_dense(spec, p.dense, f"point {p.id}: dense vector")
        if p.sparse is not None:
            check_sparse_enabled(spec, f"point {p.id} carries a sparse vector")


def conflict_message(existing: CollectionSpec, requested: CollectionSpec) -> str:
    return (
        f"collection {existing.name!r} exists with spec ({existing.describe()});"
        f" requested ({requested.describe()})"
    )


@runtime_checkable
class VectorStore(Protocol):
    """Collections of points with dense (+ optional sparse) vectors and JSON payloads.

    Every method naming a collection raises ``NotFound`` when it does not exist, and
    ``BadRequest`` for a vector of the wrong size. Backend failures raise ``StoreError``.
    """

    def create_collection(self, spec: CollectionSpec) -> bool:
        """Create it; True if created, False if it already exists with this exact spec.

        Raises ``SpecConflict`` (a ``BadRequest``) naming both specs otherwise.
        """
        ...

    def drop_collection(self, name: str) -> bool:
        """Delete it and its points; True if it existed (dropping twice is not an error)."""
        ...

    def list_collections(self) -> list[str]: ...

    def collection_spec(self, name: str) -> CollectionSpec: ...

    def upsert(self, collection: str, points: Sequence[Point]) -> None:
        """Insert or replace (same id = replace, never a duplicate) a batch of points."""
        ...

    def delete(self, collection: str, ids: Sequence[PointId]) -> None: ...

    def delete_by_filter(self, collection: str, filter: Filter) -> None: ...

    def count(self, collection: str, filter: Filter | None = None) -> int: ...

    def get(
        self, collection: str, ids: Sequence[PointId], *, with_vectors: bool = False
    ) -> list[Record]:
        """Records for the ids that exist, in the order asked for."""
        ...

    def scroll(
        self,
        collection: str,
        filter: Filter | None = None,
        limit: int = 100,
        offset: PointId | None = None,
        *,
        with_vectors: bool = False,
    ) -> tuple[list[Record], PointId | None]:
        """One page in id order, and the offset of the next page (None at the end)."""
        ...

    def search_dense(
        self,
        collection: str,
        vector: Sequence[float],
        limit: int = 10,
        filter: Filter | None = None,
    ) -> list[Hit]: ...

    def search_sparse(
        self, collection: str, sparse: SparseVector, limit: int = 10, filter: Filter | None = None
    ) -> list[Hit]: ...

    def search_hybrid(
        self,
        collection: str,
        dense: Sequence[float],
        sparse: SparseVector,
        limit: int = 10,
        filter: Filter | None = None,
    ) -> list[Hit]:
        """Dense and sparse candidates fused by :func:`rrf_fuse` (k=60); score = RRF score."""
        ...

    def flush(self) -> None: ...

    def close(self) -> None: ...


def candidates_for(limit: int) -> int:
    """How many candidates each side of a hybrid search contributes before fusion."""
    return max(4 * limit, 50)


def check_limit(limit: int) -> None:
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
        raise BadRequest(f"limit must be a positive integer, got {limit!r}", param="limit")

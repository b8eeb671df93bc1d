"""Incremental sync: make a knowledge base's points in a ``VectorStore`` match an ingest.

:func:`sync` (or :class:`Syncer`, which holds the store and embedder) compares what an ingest
produced with what the store already holds for the knowledge base and writes only the
difference:

- a chunk whose point is missing is **added**; one whose payload changed is **updated**; one
  whose payload is identical (ignoring ``synced_at``) is **unchanged** and not written;
- the embedder sees only chunks whose text-to-embed (:attr:`Chunk.embed_text`) is new to the
  store: a chunk that merely moved (an insertion above it shifted its index or offsets) or was
  renamed with its file reuses a stored vector with the same ``embed_sha256``;
- points the ingest no longer produces are **deleted**: the extra chunks of a shortened
  document, and every chunk of a document that left the source set, *except* documents whose
  ingest failed (``IngestReport.errors``): a transient read error never wipes their chunks.

**Point ids** are ``uuid5(kb, doc_id, chunk index)``: a position, not the content. Content ids
would merge identical chunks (a boilerplate paragraph, a repeated table header) into one point
with one citation, and an id that changes with every edit leaves the old one to be found and
deleted; positional ids make "the same chunk" well defined, and the content hashes in the
payload tell whether it changed.

**Crash safety**: the store is the only state. Every point carries its own hashes, so a run
reads the store, computes the difference from scratch, writes changed points in batches of
``batch_size`` (each upsert replaces whole points, vector and payload together) and deletes
stale points last. A run killed anywhere leaves points that are either the old state or the
new state; the next run treats both the same way and converges to exactly what an
uninterrupted run writes. A second run with no change embeds nothing and writes nothing.

Embedder and store errors propagate unchanged (re-run ``sync`` to resume).

Example:
    >>> from qingliang.knowledge.ingest import IngestOptions, ingest_paths
    >>> from qingliang.knowledge.stores import QdrantEdgeStore
    >>> from qingliang.serving.embeddings import PackagedEmbedder
    >>> report = ingest_paths(paths, IngestOptions())  # doctest: +SKIP
    >>> result = sync("gov-policy", report, QdrantEdgeStore("data/qdrant"),
    ...               PackagedEmbedder(), tenant="city-a", domain="gov")  # doctest: +SKIP
    >>> result.added, result.deleted, f"{result.reembedded_share:.1%}"  # doctest: +SKIP
    (120, 0, '100.0%')
"""

from __future__ import annotations

import hashlib
import logging
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal, Protocol

from qingliang.knowledge._bm25 import Bm25Encoder
from qingliang.knowledge.ingest import Chunk, Document, IngestFailure, IngestReport
from qingliang.knowledge.stores import (
    CollectionSpec,
    Filter,
    Point,
    PointId,
    SpecConflict,
    VectorStore,
)

log = logging.getLogger(__name__)

_ID_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "https://qingliang.io/knowledge/chunk")
_VOLATILE = frozenset({"synced_at", "version"})
#: ``payload["origin"]`` of points that are not chunks of a source document (learned answers):
#: sync neither compares nor deletes them.
LEARNED = "learned"
_SCROLL_PAGE = 256


class Embedder(Protocol):
    """What sync needs from an embedding model (``PackagedEmbedder`` fits)."""

    @property
    def dimensions(self) -> int: ...

    def embed(
        self, texts: list[str], *, input_type: Literal["query", "passage"] = "passage"
    ) -> list[list[float]]: ...


@dataclass
class SyncReport:
    """What one sync did.

    ``added`` / ``updated`` / ``unchanged`` count the chunks of the ingest; ``deleted`` counts
    points removed. ``embedded`` is how many texts went through the embedder (identical
    texts in one batch once), ``reused`` how
    many written points took a vector already in the store. ``errors`` are the ingest's
    failures; ``kept_documents`` the stored documents left untouched because of them.
    """

    added: int = 0
    updated: int = 0
    unchanged: int = 0
    deleted: int = 0
    embedded: int = 0
    reused: int = 0
    kept_documents: int = 0
    errors: list[IngestFailure] = field(default_factory=list)

    @property
    def total(self) -> int:
        """Chunks in the ingest."""
        return self.added + self.updated + self.unchanged

    @property
    def written(self) -> int:
        """Points upserted."""
        return self.added + self.updated

    @property
    def reembedded_share(self) -> float:
        """``embedded / total`` (0.0 for an empty ingest)."""
        return self.embedded / self.total if self.total else 0.0


def point_id(kb: str, doc_id: str, index: int) -> str:
    """The point id of chunk ``index`` of ``doc_id`` in knowledge base ``kb`` (a UUID string)."""
    return str(uuid.uuid5(_ID_NAMESPACE, f"{kb}\x1f{doc_id}\x1f{index}"))


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _stable(payload: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in payload.items() if k not in _VOLATILE}


def chunk_payload(
    kb: str,
    chunk: Chunk,
    doc: Document | None,
    doc_sha256: str,
    *,
    tenant: str,
    domain: str | None,
) -> dict[str, Any]:
    """The payload stored with a chunk's point (without ``synced_at``).

    Only JSON-native values (lists, not tuples) and no ``None`` values, so what the store
    returns compares equal to what was written.
    """
    loc = chunk.location
    payload: dict[str, Any] = {
        "kb": kb,
        "tenant": tenant,
        "doc_id": chunk.doc_id,
        "source": loc.source,
        "chunk_index": chunk.index,
        "kind": chunk.kind,
        "text": chunk.text,
        "chunk_sha256": chunk.sha256,
        "embed_sha256": _sha(chunk.embed_text),
        "doc_sha256": doc_sha256,
    }
    if domain is not None:
        payload["domain"] = domain
    if loc.heading_path:
        payload["heading_path"] = list(loc.heading_path)
    for key in ("page", "row_start", "row_end", "char_start", "char_end", "image_path"):
        value = getattr(loc, key)
        if value is not None:
            payload[key] = value
    if loc.record is not None:
        payload["record"] = loc.record
    if loc.region is not None:
        payload["region"] = list(loc.region)
    if doc is not None:
        payload["doc_type"] = doc.type
        if doc.title:
            payload["title"] = doc.title
    return payload


@dataclass(frozen=True)
class _Wanted:
    id: str
    chunk: Chunk
    payload: dict[str, Any]
    is_new: bool


class Syncer:
    """Syncs ingests into one collection of ``store``, embedding with ``embedder``.

    Args:
        store: Where the points live; the collection is created (dense size from
            ``embedder.dimensions``) when missing.
        embedder: Called with ``input_type="passage"`` on batches of at most ``batch_size``.
        collection: The collection name (a manifest's ``spec.store.collection``, by default
            the KB name); several KBs may share one, as points are scoped by ``kb``.
        batch_size: Chunks embedded and upserted per step; a crash loses at most one step.
        sparse_encoder: Also write a BM25 sparse vector with every point (the collection is
            then created with sparse vectors and IDF weighting); ``None`` writes dense only.
            The encoder's :attr:`~Bm25Encoder.name` is stored in each payload, so turning
            sparse on or off, or changing its parameters, rewrites every point without
            re-embedding one.
        clock: Returns the ``synced_at`` timestamp (tests pin it).
        progress: Called after each written batch with (points written so far, points to
            write) — for progress bars.
        embed_input: What the embedder is given for a chunk (default
            :attr:`Chunk.embed_text`); its sha256 decides whether a stored vector can be
            reused. Image chunks pass their file path and pixel hash here.
    """

    def __init__(
        self,
        store: VectorStore,
        embedder: Embedder,
        *,
        collection: str,
        batch_size: int = 32,
        sparse_encoder: Bm25Encoder | None = None,
        clock: Callable[[], datetime] | None = None,
        progress: Callable[[int, int], None] | None = None,
        embed_input: Callable[[Chunk], str] | None = None,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        self.store = store
        self.embedder = embedder
        self.collection = collection
        self.batch_size = batch_size
        self.sparse_encoder = sparse_encoder
        self._clock = clock or (lambda: datetime.now(UTC))
        self._progress = progress
        self._embed_input = embed_input or (lambda c: c.embed_text)

    def sync(
        self,
        kb: str,
        ingest: IngestReport | Sequence[Chunk],
        *,
        tenant: str = "default",
        domain: str | None = None,
        version: int | None = None,
        only_sources: Sequence[str] | None = None,
    ) -> SyncReport:
        """Make the store's points for ``kb`` match ``ingest`` (the *whole* source set).

        A bare list of chunks means an ingest with no failures; each document's hash is then
        derived from its chunks' hashes.

        Args:
            version: Written as ``payload["version"]`` on every point this run writes (the
                KB version the change will be recorded as); not part of the comparison.
            only_sources: Sync just these source paths: ``ingest`` holds exactly their
                chunks, and stored points of other sources are neither read nor deleted
                (an upload or a delete of one document).
        """
        report_in = (
            ingest if isinstance(ingest, IngestReport) else IngestReport(chunks=list(ingest))
        )
        result = SyncReport(errors=list(report_in.errors))
        self._ensure_collection()

        stored = self._stored(kb, only_sources)
        by_embed: dict[str, PointId] = {}
        for pid, payload in stored.items():
            sha = payload.get("embed_sha256")
            if isinstance(sha, str):
                by_embed.setdefault(sha, pid)

        wanted, ids = self._plan(kb, report_in, stored, tenant, domain, result)
        stamp = self._clock().isoformat()
        extra: dict[str, Any] = {"synced_at": stamp}
        if version is not None:
            extra["version"] = version
        for start in range(0, len(wanted), self.batch_size):
            self._write(wanted[start : start + self.batch_size], extra, by_embed, result)
            if self._progress is not None:
                self._progress(min(start + self.batch_size, len(wanted)), len(wanted))

        stale = self._stale(stored, ids, report_in.errors, result)
        for start in range(0, len(stale), self.batch_size):
            self.store.delete(self.collection, stale[start : start + self.batch_size])
        result.deleted = len(stale)
        log.debug(
            "sync %s: %d added, %d updated, %d unchanged, %d deleted, %d embedded",
            kb,
            result.added,
            result.updated,
            result.unchanged,
            result.deleted,
            result.embedded,
        )
        return result

    def _ensure_collection(self) -> None:
        sparse = self.sparse_encoder is not None
        if self.collection not in self.store.list_collections():
            self.store.create_collection(
                CollectionSpec(
                    name=self.collection, dense_size=self.embedder.dimensions, sparse=sparse
                )
            )
            return
        spec = self.store.collection_spec(self.collection)
        if spec.dense_size != self.embedder.dimensions:
            raise SpecConflict(
                f"collection {self.collection!r} holds {spec.dense_size}-d vectors but the "
                f"embedding model makes {self.embedder.dimensions}-d ones: rebuild the "
                "knowledge base (`qingliang kb sync --rebuild`) to change models"
            )
        if sparse and not spec.sparse:
            raise SpecConflict(
                f"collection {self.collection!r} was created without sparse vectors, so BM25 "
                "cannot be added in place: rebuild it (`qingliang kb sync --rebuild`) or set "
                "spec.sparse.bm25: false"
            )

    def _stored(self, kb: str, only_sources: Sequence[str] | None) -> dict[PointId, dict[str, Any]]:
        out: dict[PointId, dict[str, Any]] = {}
        if only_sources is not None and not only_sources:
            return out
        flt = Filter(equals={"kb": kb})
        if only_sources is not None:
            flt = Filter(equals={"kb": kb}, any_of={"source": list(only_sources)})
        offset: PointId | None = None
        while True:
            records, offset = self.store.scroll(
                self.collection, flt, limit=_SCROLL_PAGE, offset=offset
            )
            for rec in records:
                if rec.payload.get("origin") != LEARNED:
                    out[rec.id] = rec.payload
            if offset is None:
                return out

    def _plan(
        self,
        kb: str,
        ingest: IngestReport,
        stored: dict[PointId, dict[str, Any]],
        tenant: str,
        domain: str | None,
        result: SyncReport,
    ) -> tuple[list[_Wanted], set[str]]:
        docs = {d.doc_id: d for d in ingest.documents}
        derived: dict[str, list[str]] = {}
        for chunk in ingest.chunks:
            derived.setdefault(chunk.doc_id, []).append(chunk.sha256)
        wanted: list[_Wanted] = []
        ids: set[str] = set()
        for chunk in ingest.chunks:
            pid = point_id(kb, chunk.doc_id, chunk.index)
            if pid in ids:
                raise ValueError(f"chunk {chunk.id} appears twice in the ingest")
            ids.add(pid)
            doc = docs.get(chunk.doc_id)
            doc_sha = doc.sha256 if doc else _sha("\n".join(derived[chunk.doc_id]))
            payload = chunk_payload(kb, chunk, doc, doc_sha, tenant=tenant, domain=domain)
            payload["embed_sha256"] = _sha(self._embed_input(chunk))
            if self.sparse_encoder is not None:
                payload["sparse"] = self.sparse_encoder.name
            old = stored.get(pid)
            if old is not None and _stable(old) == payload:
                result.unchanged += 1
                continue
            wanted.append(_Wanted(pid, chunk, payload, old is None))
        return wanted, ids

    def _write(
        self,
        batch: list[_Wanted],
        extra: dict[str, Any],
        by_embed: dict[str, PointId],
        result: SyncReport,
    ) -> None:
        vectors: dict[str, Sequence[float]] = {}
        found = (by_embed.get(w.payload["embed_sha256"]) for w in batch)
        sources = sorted({pid for pid in found if pid is not None}, key=str)
        if sources:
            # An earlier batch of this run may have overwritten a source point with other
            # content, so a vector is only taken if the point still holds the same text.
            for rec in self.store.get(self.collection, sources, with_vectors=True):
                sha = rec.payload.get("embed_sha256")
                if isinstance(sha, str) and rec.dense is not None:
                    vectors.setdefault(sha, rec.dense)
        reused = sum(1 for w in batch if w.payload["embed_sha256"] in vectors)
        todo: dict[str, str] = {}
        for w in batch:
            sha = w.payload["embed_sha256"]
            if sha not in vectors:
                todo.setdefault(sha, self._embed_input(w.chunk))
        if todo:
            embedded = self.embedder.embed(list(todo.values()), input_type="passage")
            if len(embedded) != len(todo):
                raise ValueError(f"embedder returned {len(embedded)} vectors for {len(todo)} texts")
            vectors.update(zip(todo, embedded, strict=True))
            result.embedded += len(todo)
        result.reused += reused
        enc = self.sparse_encoder
        points = [
            Point(
                w.id,
                vectors[w.payload["embed_sha256"]],
                sparse=enc.encode_passage(w.chunk.embed_text) if enc is not None else None,
                payload={**w.payload, **extra},
            )
            for w in batch
        ]
        self.store.upsert(self.collection, points)
        for w in batch:
            by_embed[w.payload["embed_sha256"]] = w.id
            if w.is_new:
                result.added += 1
            else:
                result.updated += 1

    def _stale(
        self,
        stored: dict[PointId, dict[str, Any]],
        ids: set[str],
        errors: Sequence[IngestFailure],
        result: SyncReport,
    ) -> list[PointId]:
        failed = {e.path for e in errors}
        kept: set[str] = set()
        stale: list[PointId] = []
        for pid, payload in stored.items():
            if pid in ids:
                continue
            if _failed(payload, failed):
                kept.add(str(payload.get("doc_id")))
                continue
            stale.append(pid)
        result.kept_documents = len(kept)
        return sorted(stale, key=str)


def _failed(payload: dict[str, Any], failed: set[str]) -> bool:
    """Whether the stored point's document is one the ingest failed to read."""
    source = payload.get("source")
    if source in failed:
        return True
    record = payload.get("record")
    return record is not None and f"{source}#{record}" in failed


def sync(
    kb_name: str,
    chunks_or_report: IngestReport | Sequence[Chunk],
    store: VectorStore,
    embedder: Embedder,
    *,
    tenant: str = "default",
    domain: str | None = None,
    batch_size: int = 32,
    collection: str | None = None,
    sparse_encoder: Bm25Encoder | None = None,
    version: int | None = None,
) -> SyncReport:
    """One-shot :meth:`Syncer.sync` into ``collection`` (default: the KB name)."""
    syncer = Syncer(
        store,
        embedder,
        collection=collection or kb_name,
        batch_size=batch_size,
        sparse_encoder=sparse_encoder,
    )
    return syncer.sync(kb_name, chunks_or_report, tenant=tenant, domain=domain, version=version)

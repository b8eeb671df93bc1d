"""Retrieval over a knowledge base's collection: tenant-scoped search that returns citations.

:class:`Retriever` embeds a query, searches one collection of a ``VectorStore`` under a
payload filter that always names the caller's tenant, optionally re-ranks for diversity
(MMR), and turns every hit into a :class:`Citation` built from the payload that
:mod:`qingliang.knowledge.sync` writes.

- ``mode="dense"``: nearest neighbours of the query's embedding (``input_type="query"``).
- ``mode="hybrid"``: the dense list and a BM25-style sparse list
  (:class:`~qingliang.knowledge._bm25.Bm25Encoder`) fused by reciprocal-rank fusion in the
  store (``search_hybrid``); the score is then the RRF score. A collection created without
  sparse vectors, or a query with no terms, falls back to dense. Points written without a
  sparse vector simply never appear on the sparse side.
- ``mmr=λ``: fetch more candidates, then greedily pick the one maximising
  ``λ·relevance − (1 − λ)·max cosine to those already picked`` over the stored dense
  vectors. ``λ = 1`` keeps the search order; lower values push near-duplicates down.
- ``rerank="lexical"``: fetch ``candidates`` hits, then order them by reciprocal-rank fusion
  of their search rank and their rank by the share of the query's terms (:func:`lexical_terms`:
  words, and character bigrams of CJK text) their text contains
  (:func:`lexical_rerank`); an exact-wording signal on top of the vectors. Applied before MMR.
- ``context=N``: each hit also gets ``context``, its chunk with up to N chunks before and
  after it from the same document version (:mod:`qingliang.knowledge.context`); the cited
  ``text`` and locator stay the chunk that matched.

Bad input (no tenant, empty query, limit outside 1..100, unknown mode or kind, ``mmr``
outside 0..1, ``context`` outside 0..3, a bad date) raises
:class:`~qingliang.platform.errors.BadRequest` naming the parameter; store errors
(``NotFound`` for an unknown collection) propagate.

Example:
    >>> from qingliang.knowledge.retrieval import Retriever
    >>> from qingliang.knowledge.stores import QdrantEdgeStore
    >>> from qingliang.serving.embeddings import PackagedEmbedder
    >>> retriever = Retriever(QdrantEdgeStore("data/qdrant"), PackagedEmbedder(),
    ...                       collection="gov-policy")  # doctest: +SKIP
    >>> for c in retriever.search("核酸检测点开放时间", tenant="city-a", mode="hybrid",
    ...                           mmr=0.7):  # doctest: +SKIP
    ...     print(f"{c.score:.3f} {c.source} {c.locator} {c.text[:40]}")
"""

from __future__ import annotations

import logging
import re
import unicodedata
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from datetime import date, datetime
from typing import Any, Literal, Protocol, get_args

from qingliang.knowledge._bm25 import Bm25Encoder
from qingliang.knowledge.context import MAX_NEIGHBOURS, neighbour_context
from qingliang.knowledge.ingest import ChunkKind
from qingliang.knowledge.stores import Filter, Hit, PointId, Range, VectorStore
from qingliang.platform.errors import BadRequest

log = logging.getLogger(__name__)

Mode = Literal["dense", "hybrid"]
MODES: tuple[str, ...] = get_args(Mode)
#: Chunk kinds a search can filter on: the ingest's, plus ``qa`` for learned answers.
KINDS: tuple[str, ...] = (*get_args(ChunkKind), "qa")
MAX_LIMIT = 100
MAX_QUERY_CHARS = 4000
RERANKS = ("lexical",)
#: Reciprocal-rank fusion constant of the lexical re-rank.
RRF_K = 60
_WORDS = re.compile(r"[^\W_]+")
_CJK = re.compile(r"[\u3400-\u9fff\uf900-\ufaff]+")


def lexical_terms(text: str) -> set[str]:
    """The terms of ``text`` a lexical re-rank compares: after NFKC and case folding, its
    words (runs of letters and digits) outside CJK, and the character bigrams of its CJK runs.

    Example:
        >>> sorted(lexical_terms("返岗人员 COVID-19"))
        ['19', 'covid', '人员', '岗人', '返岗']
    """
    folded = unicodedata.normalize("NFKC", text).casefold()
    terms = set(_WORDS.findall(_CJK.sub(" ", folded)))
    for run in _CJK.findall(folded):
        if len(run) == 1:
            terms.add(run)
        else:
            terms.update(run[i : i + 2] for i in range(len(run) - 1))
    return terms


def lexical_rerank(query: str, hits: Sequence[Hit]) -> list[Hit]:
    """``hits`` (best first) re-ordered by RRF of their rank and their rank by the share of
    the query's :func:`lexical_terms` found in their payload ``text``; ties keep the order."""
    wanted = lexical_terms(query)
    if not wanted or len(hits) < 2:
        return list(hits)
    cover = [len(wanted & lexical_terms(str(h.payload.get("text", "")))) for h in hits]
    by_cover = sorted(range(len(hits)), key=lambda i: -cover[i])
    lex_rank = {i: r for r, i in enumerate(by_cover)}
    fused = [1 / (RRF_K + i) + 1 / (RRF_K + lex_rank[i]) for i in range(len(hits))]
    return [hits[i] for i in sorted(range(len(hits)), key=lambda i: -fused[i])]


class QueryEmbedder(Protocol):
    """What retrieval needs from an embedding model (``PackagedEmbedder`` fits)."""

    def embed(
        self, texts: list[str], *, input_type: Literal["query", "passage"] = "passage"
    ) -> list[list[float]]: ...


@dataclass(frozen=True)
class Citation:
    """One retrieved chunk and exactly where it came from.

    ``score`` is the search's own score (cosine for dense, RRF for hybrid), also after MMR
    re-ordering. ``version`` is the knowledge-base version that wrote this text (the
    version of the sync, rollback or learned answer; see
    :mod:`qingliang.knowledge.ledger`), ``snapshot`` the time of that write
    (``synced_at``). Images carry ``image_path`` and ``region`` (x0, y0, x1, y1 pixels);
    learned answers (``kind == "qa"``) carry their ``provenance``. ``context``, when the
    search asked for neighbours, is the chunk with its neighbours in document order (it
    contains ``text``); the prompt passage an agent reads.
    """

    id: PointId
    doc_id: str
    source: str
    chunk_index: int
    text: str
    score: float
    kind: str
    heading_path: tuple[str, ...] = ()
    page: int | None = None
    row_start: int | None = None
    row_end: int | None = None
    char_start: int | None = None
    char_end: int | None = None
    record: str | None = None
    title: str | None = None
    domain: str | None = None
    chunk_sha256: str | None = None
    doc_sha256: str | None = None
    snapshot: str | None = None
    version: int | None = None
    image_path: str | None = None
    region: tuple[int, ...] | None = None
    provenance: dict[str, Any] | None = None
    context: str | None = None

    @classmethod
    def from_hit(cls, hit: Hit, context: str | None = None) -> Citation:
        p = hit.payload

        def opt_int(key: str) -> int | None:
            value = p.get(key)
            return int(value) if isinstance(value, int | float) else None

        def opt_str(key: str) -> str | None:
            value = p.get(key)
            return None if value is None else str(value)

        snapshot = p.get("snapshot", p.get("synced_at"))
        return cls(
            id=hit.id,
            doc_id=str(p.get("doc_id", "")),
            source=str(p.get("source", "")),
            chunk_index=int(p.get("chunk_index", 0)),
            text=str(p.get("text", "")),
            score=float(hit.score),
            kind=str(p.get("kind", "text")),
            heading_path=tuple(str(h) for h in p.get("heading_path") or ()),
            page=opt_int("page"),
            row_start=opt_int("row_start"),
            row_end=opt_int("row_end"),
            char_start=opt_int("char_start"),
            char_end=opt_int("char_end"),
            record=opt_str("record"),
            title=opt_str("title"),
            domain=opt_str("domain"),
            chunk_sha256=opt_str("chunk_sha256"),
            doc_sha256=opt_str("doc_sha256"),
            snapshot=None if snapshot is None else str(snapshot),
            version=opt_int("version"),
            image_path=opt_str("image_path"),
            region=tuple(int(v) for v in p["region"]) if p.get("region") else None,
            provenance=dict(p["provenance"]) if isinstance(p.get("provenance"), dict) else None,
            context=context,
        )

    @property
    def locator(self) -> str:
        """A short human-readable place: ``p. 3``, ``rows 2-5``, ``chars 0-120`` or ``#0``;
        a record of a JSONL or JSON corpus is named by its id first (``record q17, chars
        0-680``), so a person and an evaluation can tell which one it is."""
        if self.record is not None:
            where = self._place()
            return f"record {self.record}" + ("" if where.startswith("#") else f", {where}")
        return self._place()

    def _place(self) -> str:
        if self.page is not None:
            return f"p. {self.page}"
        if self.row_start is not None:
            end = self.row_end if self.row_end is not None else self.row_start
            return f"row {end}" if end == self.row_start else f"rows {self.row_start}-{end}"
        if self.region is not None:
            return "region " + ",".join(str(v) for v in self.region)
        if self.char_start is not None and self.char_end is not None:
            return f"chars {self.char_start}-{self.char_end}"
        return f"#{self.chunk_index}"

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready fields (``heading_path`` as a list), for an API response; ``context``
        only when the search gave one."""
        out = asdict(self)
        if out["context"] is None:
            del out["context"]
        out["heading_path"] = list(self.heading_path)
        out["region"] = None if self.region is None else list(self.region)
        out["locator"] = self.locator
        return out


DateBound = date | datetime | str | None


class Retriever:
    """Searches one collection of ``store`` with query embeddings from ``embedder``.

    Args:
        store: Where the knowledge base's points live.
        embedder: Called once per search with ``[query]`` and ``input_type="query"``.
        collection: The collection (a manifest's ``spec.store.collection``).
        sparse_encoder: Encodes queries for hybrid search; must match the encoder the
            passages' sparse vectors were written with (default :class:`Bm25Encoder`).
    """

    def __init__(
        self,
        store: VectorStore,
        embedder: QueryEmbedder,
        *,
        collection: str,
        sparse_encoder: Bm25Encoder | None = None,
    ) -> None:
        self.store = store
        self.embedder = embedder
        self.collection = collection
        self.sparse_encoder = sparse_encoder or Bm25Encoder()

    def search(
        self,
        query: str,
        *,
        tenant: str,
        limit: int = 5,
        kb: str | None = None,
        domain: str | Sequence[str] | None = None,
        kinds: Sequence[str] | None = None,
        since: DateBound = None,
        until: DateBound = None,
        date_field: str = "synced_at",
        mode: str = "dense",
        mmr: float | None = None,
        rerank: str | None = None,
        candidates: int = 30,
        context: int = 0,
    ) -> list[Citation]:
        """The ``limit`` best chunks of ``tenant`` for ``query``, best first, as citations.

        Args:
            query: What to search for (1-4000 characters, not only whitespace).
            tenant: The caller's tenant; only its chunks can be returned. Required.
            limit: How many citations, 1..100.
            kb: Only chunks of this knowledge base (when several share the collection).
            domain: One domain, or a list of domains any of which may match.
            kinds: Chunk kinds to keep (``text``, ``table-row``, ``table-summary``,
                ``image-ocr``).
            since / until: Inclusive bounds on ``date_field`` (dates, datetimes or ISO
                8601 strings; the payload field must hold RFC 3339 strings).
            date_field: The payload date the bounds apply to (default ``synced_at``).
            mode: ``"dense"`` or ``"hybrid"`` (dense + BM25 sparse, RRF-fused).
            mmr: ``None`` for no diversity re-ranking, else MMR's λ in 0..1.
            rerank: ``None``, or ``"lexical"``: the ``candidates`` best hits re-ordered by
                :func:`lexical_rerank` (before MMR).
            candidates: how many hits the re-rank re-orders (1..100; at least ``limit``).
            context: neighbouring chunks on each side that join each hit in its
                ``context`` (0..3; 0: none).

        Raises:
            BadRequest: a parameter is missing or out of range (``param`` names it).
            NotFound: the collection does not exist.
        """
        text = check_query(query)
        _check_limit(limit)
        if mode not in MODES:
            raise BadRequest(f"mode must be one of {', '.join(MODES)}, got {mode!r}", param="mode")
        lam = _check_mmr(mmr)
        if rerank is not None and rerank not in RERANKS:
            raise BadRequest(f"rerank must be one of {', '.join(RERANKS)} or none", param="rerank")
        _check_context(context)
        flt = _filter(tenant, kb, domain, kinds, since, until, date_field)

        vector = self._embed(text)
        use_hybrid = mode == "hybrid" and self.store.collection_spec(self.collection).sparse
        sparse = self.sparse_encoder.encode_query(text) if use_hybrid else None
        hybrid = sparse is not None and bool(sparse.indices)
        if mode == "hybrid" and not hybrid:
            log.debug("hybrid search on %s falls back to dense", self.collection)
        fetch = limit if lam is None else min(max(4 * limit, 20), 4 * MAX_LIMIT)
        if rerank is not None:
            fetch = max(fetch, min(max(candidates, limit), MAX_LIMIT))
        if sparse is not None and hybrid:
            hits = self.store.search_hybrid(self.collection, vector, sparse, fetch, flt)
        else:
            hits = self.store.search_dense(self.collection, vector, fetch, flt)
        if rerank is not None:
            hits = lexical_rerank(text, hits)
        if lam is not None and len(hits) > 1:
            hits = self._mmr(hits, vector, lam, limit, dense_scores=not hybrid)
        log.debug("search %s tenant=%s mode=%s: %d hits", self.collection, tenant, mode, len(hits))
        hits = hits[:limit]
        texts = neighbour_context(self.store, self.collection, hits, context)
        return [Citation.from_hit(h, t) for h, t in zip(hits, texts, strict=True)]

    def _embed(self, text: str) -> list[float]:
        vectors = self.embedder.embed([text], input_type="query")
        if len(vectors) != 1:
            raise ValueError(f"embedder returned {len(vectors)} vectors for 1 query")
        return [float(v) for v in vectors[0]]

    def _mmr(
        self, hits: list[Hit], query: list[float], lam: float, limit: int, *, dense_scores: bool
    ) -> list[Hit]:
        import numpy as np

        records = self.store.get(self.collection, [h.id for h in hits], with_vectors=True)
        vectors = {r.id: r.dense for r in records if r.dense is not None}
        pool = [h for h in hits if h.id in vectors]
        if not pool:
            return hits
        matrix = np.asarray([vectors[h.id] for h in pool], dtype=np.float64)
        matrix /= np.maximum(np.linalg.norm(matrix, axis=1, keepdims=True), 1e-12)
        if dense_scores:
            q = np.asarray(query, dtype=np.float64)
            relevance = matrix @ (q / max(float(np.linalg.norm(q)), 1e-12))
        else:
            # RRF scores are rank-based and small; scale them to 0..1 so λ weighs alike.
            scores = np.asarray([h.score for h in pool], dtype=np.float64)
            relevance = scores / (scores.max() or 1.0)
        # The largest similarity of each candidate to anything picked so far, kept up to
        # date with one matrix-vector product per pick.
        redundancy = np.zeros(len(pool))
        free = np.ones(len(pool), dtype=bool)
        chosen: list[Hit] = []
        while free.any() and len(chosen) < limit:
            gain = np.where(free, lam * relevance - (1 - lam) * redundancy, -np.inf)
            best = int(np.argmax(gain))
            chosen.append(pool[best])
            free[best] = False
            redundancy = np.maximum(redundancy, matrix @ matrix[best])
        return chosen


def check_query(query: object) -> str:
    """``query`` stripped, or BadRequest: missing, not a string, empty, too long."""
    if query is None:
        raise BadRequest("`query` is required (or an `image` to search with)", param="query")
    if not isinstance(query, str):
        raise BadRequest(f"query must be a string, not {type(query).__name__}", param="query")
    text = query.strip()
    if not text:
        raise BadRequest("query must not be empty", param="query")
    if len(text) > MAX_QUERY_CHARS:
        raise BadRequest(
            f"query has {len(text)} characters, at most {MAX_QUERY_CHARS} allowed", param="query"
        )
    return text


def _check_limit(limit: object) -> None:
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= MAX_LIMIT:
        raise BadRequest(
            f"limit must be an integer in 1..{MAX_LIMIT}, got {limit!r}", param="limit"
        )


def _check_context(context: object) -> None:
    if isinstance(context, bool) or not isinstance(context, int):
        raise BadRequest(
            f"context must be an integer (neighbouring chunks on each side), got {context!r}",
            param="context",
        )
    if not 0 <= context <= MAX_NEIGHBOURS:
        raise BadRequest(
            f"context must be in 0..{MAX_NEIGHBOURS} (neighbouring chunks on each side), "
            f"got {context}",
            param="context",
        )


def _check_mmr(mmr: object) -> float | None:
    if mmr is None:
        return None
    if isinstance(mmr, bool) or not isinstance(mmr, int | float) or not 0 <= mmr <= 1:
        raise BadRequest(f"mmr must be a number in 0..1 (MMR's lambda), got {mmr!r}", param="mmr")
    return float(mmr)


def _filter(
    tenant: object,
    kb: str | None,
    domain: str | Sequence[str] | None,
    kinds: Sequence[str] | None,
    since: DateBound,
    until: DateBound,
    date_field: str,
) -> Filter:
    if not isinstance(tenant, str) or not tenant.strip():
        raise BadRequest("tenant is required: every search is scoped to one tenant", param="tenant")
    equals: dict[str, str] = {"tenant": tenant}
    any_of: dict[str, list[str]] = {}
    if kb is not None:
        equals["kb"] = kb
    if isinstance(domain, str):
        equals["domain"] = domain
    elif domain is not None:
        domains = list(domain)
        if not domains or not all(isinstance(d, str) and d for d in domains):
            raise BadRequest("domain must be a string or a non-empty list of them", param="domain")
        any_of["domain"] = domains
    if kinds is not None:
        wanted = [kinds] if isinstance(kinds, str) else list(kinds)
        unknown = [k for k in wanted if k not in KINDS]
        if not wanted or unknown:
            raise BadRequest(
                f"kinds must be a non-empty list of {', '.join(KINDS)}; got {kinds!r}",
                param="kinds",
            )
        any_of["kind"] = wanted
    ranges: dict[str, Range] = {}
    if since is not None or until is not None:
        try:
            ranges[date_field] = Range(gte=since, lte=until)
        except ValueError as exc:
            raise BadRequest(f"since/until: {exc}", param="since") from None
        if isinstance(since, int | float) or isinstance(until, int | float):
            raise BadRequest("since/until must be dates, not numbers", param="since")
    return Filter(equals=equals, any_of=any_of, ranges=ranges)

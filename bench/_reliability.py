"""Traffic, memory sampling and statistics for ``bench/reliability.py`` (private helpers).

* :class:`Traffic` runs closed-loop workers of four kinds against the gateway — chat
  (streamed or not), knowledge search, agent runs — for a fixed time, and records what
  each request got: a complete answer, a status code (429s with their ``Retry-After``),
  an error event inside a stream, a cut stream, or nothing before the client's timeout.
  Every request has a read timeout and a hard wall-clock limit, so a phase always ends.
* :class:`MemorySampler` sums the RSS (and PSS) of every process under a root PID every
  few seconds, in a thread; :func:`memory_verdict` fits a line to the samples.
* :func:`scrape` reads the platform's Prometheus counters (what the model replica
  answered, what the gateway refused).

Example:
    >>> slope_per_min([0.0, 60.0, 120.0], [100.0, 101.0, 102.0])["slope"]
    1.0
    >>> pct_or_none([0.1, 0.2, 0.3, 0.4], 50)
    0.25
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import random
import re
import statistics
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx
from _load import cmdline, descendants, percentile

#: Kinds of request the soak sends.
KINDS = ("chat", "chat_stream", "search", "agent")
#: No byte for this long on an open response counts as a hang.
READ_TIMEOUT_S = 60.0
#: A request not finished after this long is abandoned and counted as lost (a hang).
HARD_LIMIT_S = 150.0
#: A well-behaved worker waits Retry-After, but never longer than this.
RETRY_AFTER_CAP_S = 5.0


@dataclass
class Outcome:
    """One request as the client saw it."""

    kind: str
    phase: str
    key: str
    t_s: float  # sent, seconds after the soak began
    latency_s: float
    status: int | None = None  # None: no HTTP status at all
    complete: bool = False  # a whole, error-free answer
    error: str = ""  # transport error, error code, or an error event's message
    code: str | None = None  # `error.code` of an error body
    retry_after: str | None = None
    ttft_s: float | None = None
    stream_end: str | None = None  # streams: "done", "error event", "cut", "no [DONE]"
    run_id: str | None = None
    run_status: str | None = None

    @property
    def lost(self) -> bool:
        """No answer: nothing before the timeout, or the connection failed or was cut."""
        return self.status is None or self.stream_end == "cut"


@dataclass(frozen=True)
class WorkerSpec:
    kind: str
    key: str  # the label of the key it sends with
    stream: bool = False
    #: Fixed seconds between sends, ignoring Retry-After (a misbehaving client); None:
    #: send again at once, wait Retry-After after a 429.
    pace_s: float | None = None


@dataclass
class Target:
    """Where and with what the traffic goes."""

    base: str
    keys: dict[str, str]
    model: str
    kb: str
    graph: str
    chat_max_tokens: int = 16
    queries: tuple[str, ...] = ()
    prompts: tuple[str, ...] = ()


def _sse(line: str) -> dict | str | None:
    if not line.startswith("data: "):
        return None
    data = line[6:].strip()
    if data == "[DONE]":
        return data
    try:
        event = json.loads(data)
    except ValueError:
        return {"error": {"message": f"unparseable event: {data[:100]}"}}
    return event if isinstance(event, dict) else None


def _error_of(r: httpx.Response, body: bytes) -> tuple[str, str | None]:
    try:
        err = json.loads(body).get("error") or {}
        return str(err.get("message", ""))[:300], err.get("code")
    except (ValueError, AttributeError):
        return body.decode(errors="replace")[:300], None


class Traffic:
    """Closed-loop workers against one gateway; every outcome goes to :attr:`outcomes`."""

    def __init__(self, target: Target, t0: float, seed: int = 0) -> None:
        self.target = target
        self.t0 = t0
        self.rng = random.Random(seed)
        self.outcomes: list[Outcome] = []
        self.in_flight = 0
        self.peak_in_flight = 0

    # -- one request of each kind ----------------------------------------------------------
    def _body(self, spec: WorkerSpec) -> tuple[str, dict]:
        t, rng = self.target, self.rng
        if spec.kind in ("chat", "chat_stream"):
            body: dict[str, Any] = {
                "model": t.model,
                "messages": [{"role": "user", "content": rng.choice(t.prompts)}],
                "max_tokens": t.chat_max_tokens,
                "temperature": 0.8,
            }
            if spec.stream:
                body |= {"stream": True, "stream_options": {"include_usage": True}}
            return "/v1/chat/completions", body
        if spec.kind == "search":
            return f"/v1/knowledge/{t.kb}/search", {
                "query": rng.choice(t.queries),
                "limit": 5,
            }
        return f"/v1/agents/{t.graph}/runs", {"input": rng.choice(t.queries), "stream": spec.stream}

    async def _send(self, client: httpx.AsyncClient, spec: WorkerSpec, phase: str) -> Outcome:
        path, body = self._body(spec)
        headers = {"Authorization": f"Bearer {self.target.keys[spec.key]}"}
        started = time.monotonic()
        out = Outcome(spec.kind, phase, spec.key, round(started - self.t0, 3), 0.0)
        try:
            async with client.stream("POST", path, json=body, headers=headers) as r:
                out.status = r.status_code
                out.retry_after = r.headers.get("retry-after")
                if r.status_code != 200:
                    out.error, out.code = _error_of(r, await r.aread())
                elif spec.stream:
                    await self._read_stream(r, spec, out, started)
                else:
                    self._read_json(json.loads(await r.aread()), spec, out)
        except httpx.TimeoutException as exc:
            out.error = f"timeout ({type(exc).__name__})"
            if out.status == 200:  # the answer began, then stopped: cut
                out.stream_end = "cut"
        except httpx.TransportError as exc:
            out.error = type(exc).__name__
            if out.status == 200:
                out.stream_end = "cut"
        except ValueError as exc:  # a 200 whose body is not JSON
            out.error = f"bad body: {exc}"[:300]
        out.latency_s = time.monotonic() - started
        return out

    async def _read_stream(
        self, r: httpx.Response, spec: WorkerSpec, out: Outcome, started: float
    ) -> None:
        errors: list[str] = []
        finished = done = False
        async for line in r.aiter_lines():
            event = _sse(line)
            if event is None:
                continue
            if event == "[DONE]":
                done = True
                continue
            assert isinstance(event, dict)
            if "error" in event:
                err = event["error"]
                errors.append(str(err.get("message", err) if isinstance(err, dict) else err))
                continue
            if spec.kind == "agent":
                if event.get("type") == "run" and out.run_id is None:
                    out.run_id = event.get("run_id")
                if event.get("type") == "status":
                    out.run_status = event.get("status")
                continue
            for choice in event.get("choices") or ():
                if out.ttft_s is None and (choice.get("delta") or {}).get("content"):
                    out.ttft_s = time.monotonic() - started
                if choice.get("finish_reason"):
                    finished = True
        if errors:
            out.stream_end, out.error = "error event", errors[0][:300]
        elif not done:
            out.stream_end = "no [DONE]"
        else:
            out.stream_end = "done"
        if spec.kind == "agent":
            out.complete = out.stream_end == "done" and out.run_status == "done"
            if out.stream_end == "done" and out.run_status != "done":
                out.error = f"run ended {out.run_status}"
        else:
            out.complete = out.stream_end == "done" and finished
            if out.stream_end == "done" and not finished:
                out.error = "stream ended without a finish_reason"

    @staticmethod
    def _read_json(data: Any, spec: WorkerSpec, out: Outcome) -> None:
        if spec.kind == "chat":
            choices = data.get("choices") or []
            out.complete = bool(choices) and choices[0].get("message") is not None
        elif spec.kind == "search":
            out.complete = isinstance(data.get("citations"), list) and bool(data["citations"])
            if not out.complete:
                out.error = "no citations"
        else:
            out.run_id, out.run_status = data.get("id"), data.get("status")
            out.complete = out.run_status == "done"
            if not out.complete:
                reason = data.get("reason") or ""
                out.error = f"run ended {out.run_status}: {reason}"[:300]

    # -- workers and phases ----------------------------------------------------------------
    async def _worker(
        self, client: httpx.AsyncClient, spec: WorkerSpec, phase: str, deadline: float
    ) -> None:
        rng = random.Random(self.rng.random())
        await asyncio.sleep(rng.uniform(0, 1.0))  # no lockstep start
        while time.monotonic() < deadline:
            self.in_flight += 1
            self.peak_in_flight = max(self.peak_in_flight, self.in_flight)
            sent = time.monotonic()
            try:
                out = await asyncio.wait_for(self._send(client, spec, phase), HARD_LIMIT_S)
            except TimeoutError:
                out = Outcome(spec.kind, phase, spec.key, round(sent - self.t0, 3), HARD_LIMIT_S)
                out.error = f"hang: no end after {HARD_LIMIT_S:.0f} s"
            finally:
                self.in_flight -= 1
            self.outcomes.append(out)
            if spec.pace_s is not None:
                wait = spec.pace_s - (time.monotonic() - sent)
            elif out.status == 429:
                try:
                    wait = min(float(out.retry_after or 1.0), RETRY_AFTER_CAP_S)
                except ValueError:
                    wait = 1.0
                wait *= rng.uniform(0.8, 1.2)
            elif not out.complete:
                wait = 0.5
            else:
                wait = 0.0
            wait = min(wait, deadline - time.monotonic())
            if wait > 0:
                await asyncio.sleep(wait)

    async def phase(self, name: str, workers: list[WorkerSpec], seconds: float) -> float:
        """Run ``workers`` for ``seconds``, then wait for the requests in flight (each
        bounded by :data:`HARD_LIMIT_S`). Returns the wall time, drain included."""
        timeout = httpx.Timeout(connect=10.0, read=READ_TIMEOUT_S, write=10.0, pool=30.0)
        limits = httpx.Limits(max_connections=len(workers) + 8, max_keepalive_connections=64)
        started = time.monotonic()
        async with httpx.AsyncClient(
            base_url=self.target.base, timeout=timeout, limits=limits, trust_env=False
        ) as client:
            deadline = started + seconds
            await asyncio.gather(*(self._worker(client, w, name, deadline) for w in workers))
        return time.monotonic() - started


# -- summaries -----------------------------------------------------------------------------
def pct_or_none(values: list[float], q: float) -> float | None:
    return percentile(values, q)


def _lat(values: list[float]) -> dict[str, float | int | None]:
    return {
        "n": len(values),
        "p50": pct_or_none(values, 50),
        "p95": pct_or_none(values, 95),
        "p99": pct_or_none(values, 99),
        "max": max(values) if values else None,
    }


def summarise(outcomes: list[Outcome], seconds: float) -> dict[str, Any]:
    """Counts, 429s, losses and latency of ``outcomes`` (one phase and kind, or more)."""
    statuses = Counter("none" if o.status is None else str(o.status) for o in outcomes)
    r429 = [o for o in outcomes if o.status == 429]
    quota = [o for o in r429 if o.code in ("rate_limit_exceeded", "token_quota_exceeded")]
    errors = Counter(_short(o.error) for o in outcomes if not o.complete and o.error)
    ok = [o for o in outcomes if o.complete]
    answered_200_incomplete = [o for o in outcomes if o.status == 200 and not o.complete]
    ras = [float(o.retry_after) for o in r429 if o.retry_after and _is_number(o.retry_after)]
    return {
        "sent": len(outcomes),
        "complete": len(ok),
        "per_s": round(len(outcomes) / seconds, 2) if seconds > 0 else None,
        "complete_per_s": round(len(ok) / seconds, 2) if seconds > 0 else None,
        "statuses": dict(sorted(statuses.items())),
        "5xx": sum(1 for o in outcomes if o.status is not None and o.status >= 500),
        "429": len(r429),
        "429_capacity": len(r429) - len(quota),
        "429_quota": len(quota),
        "429_with_retry_after": sum(1 for o in r429 if o.retry_after),
        "retry_after_s": [min(ras), max(ras)] if ras else None,
        "lost": sum(1 for o in outcomes if o.lost),
        "hangs": sum(1 for o in outcomes if o.error.startswith(("hang", "timeout"))),
        "stream_error_events": sum(1 for o in outcomes if o.stream_end == "error event"),
        "200_not_complete": len(answered_200_incomplete),
        "errors": dict(errors.most_common(8)),
        "latency_s": _lat([o.latency_s for o in ok]),
        "ttft_s": _lat([o.ttft_s for o in ok if o.ttft_s is not None]),
        "latency_429_s": _lat([o.latency_s for o in r429]),
    }


def _short(error: str) -> str:
    """An error message cut to its first clause, for counting alike errors together."""
    head = re.split(r"[:;]", error, maxsplit=1)[0].strip()
    return head if len(head) <= 70 else head[:69] + "…"


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def examples(outcomes: list[Outcome], keep: Callable[[Outcome], bool], n: int = 20) -> list[dict]:
    """Up to ``n`` outcomes that ``keep`` selects, as dicts (for the raw JSON)."""
    return [
        {k: v for k, v in asdict(o).items() if v not in (None, "")} for o in outcomes if keep(o)
    ][:n]


def timeline(outcomes: list[Outcome], bucket_s: float = 10.0) -> list[dict[str, Any]]:
    """Per ``bucket_s`` of send time: requests sent, complete, 429, 5xx, lost."""
    buckets: dict[int, Counter] = {}
    for o in outcomes:
        c = buckets.setdefault(int(o.t_s // bucket_s), Counter())
        c["sent"] += 1
        c["complete"] += o.complete
        c["429"] += o.status == 429
        c["5xx"] += o.status is not None and o.status >= 500
        c["lost"] += o.lost
    return [{"t_s": k * bucket_s, **dict(v)} for k, v in sorted(buckets.items())]


# -- memory --------------------------------------------------------------------------------
_ROLE = re.compile(r"ray::(ServeReplica:[^ ]+|[A-Za-z_]+)")


def role_of(pid: int) -> str:
    """A short, stable name for a platform process: its Ray role (without the method a
    busy replica adds to its title, ``...:ModelServer.handle_request``), else its program."""
    line = cmdline(pid)
    m = _ROLE.search(line)
    if m:
        return re.sub(r"\.[a-z_]+$", "", m.group(1))
    words = line.split()
    if not words:
        return f"pid {pid}"
    scripts = [Path(w).name for w in words[1:] if w.endswith(".py")]
    if scripts:
        return scripts[0][:60]
    if Path(words[0]).name.startswith("python"):
        return " ".join(words[:4])[-60:]
    return Path(words[0]).name[:60]


def _pss_kib(pid: int) -> int | None:
    with contextlib.suppress(OSError, ValueError):
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1])
    return None


@dataclass
class MemorySampler:
    """RSS and PSS of every process under ``roots``, every ``interval_s``, in a thread."""

    roots: list[int]
    t0: float
    interval_s: float = 5.0
    samples: list[dict[str, Any]] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def sample(self) -> dict[str, Any]:
        import psutil

        procs: dict[str, dict[str, float]] = {}
        rss = pss = 0
        for pid in descendants(self.roots):
            try:
                kib = psutil.Process(pid).memory_info().rss // 1024
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue
            p = _pss_kib(pid) or 0
            rss += kib
            pss += p
            name = f"{role_of(pid)} [{pid}]"
            procs[name] = {"rss_mib": round(kib / 1024, 1), "pss_mib": round(p / 1024, 1)}
        row = {
            "t_s": round(time.monotonic() - self.t0, 1),
            "rss_mib": round(rss / 1024, 1),
            "pss_mib": round(pss / 1024, 1),
            "processes": procs,
        }
        self.samples.append(row)
        return row

    def _loop(self) -> None:
        while not self._stop.is_set():
            with contextlib.suppress(Exception):  # a sample must never end the soak
                self.sample()
            self._stop.wait(self.interval_s)

    def start(self) -> MemorySampler:
        self._thread = threading.Thread(target=self._loop, name="rss-sampler", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)


def slope_per_min(ts: list[float], ys: list[float]) -> dict[str, float | None]:
    """Least-squares slope of ``ys`` over ``ts`` (seconds), per minute, with its 95 %
    interval (normal approximation of the slope's standard error)."""
    n = len(ts)
    if n < 3:
        return {"slope": None, "ci95": None}
    mt, my = statistics.fmean(ts), statistics.fmean(ys)
    sxx = sum((t - mt) ** 2 for t in ts)
    if sxx == 0:
        return {"slope": None, "ci95": None}
    b = sum((t - mt) * (y - my) for t, y in zip(ts, ys, strict=True)) / sxx
    resid = [y - (my + b * (t - mt)) for t, y in zip(ts, ys, strict=True)]
    se = math.sqrt(sum(r * r for r in resid) / (n - 2) / sxx)
    return {"slope": round(b * 60, 3), "ci95": round(1.96 * se * 60, 3)}


def _quartile_growth(ts: list[float], ys: list[float]) -> dict[str, float | None]:
    """Median of the last quarter of the samples minus the median of the first quarter."""
    n = len(ys)
    if n < 4:
        return {"first_q_mib": None, "last_q_mib": None, "growth_mib": None, "growth_pct": None}
    q = max(1, n // 4)
    first, last = statistics.median(ys[:q]), statistics.median(ys[-q:])
    return {
        "first_q_mib": round(first, 1),
        "last_q_mib": round(last, 1),
        "growth_mib": round(last - first, 1),
        "growth_pct": round((last - first) / first * 100, 2) if first else None,
    }


def memory_verdict(
    samples: list[dict[str, Any]], soak_start_s: float, soak_s: float, flat_mib_per_min: float
) -> dict[str, Any]:
    """Is the platform's memory flat? The slope of total RSS over the last 2/3 of the
    soak (one constant load), the growth from the first to the last quartile of the
    soak, and the same slope per process (to name one that grows)."""
    soak = [s for s in samples if soak_start_s <= s["t_s"] <= soak_start_s + soak_s + 1]
    window_from = soak_start_s + soak_s / 3
    late = [s for s in soak if s["t_s"] >= window_from]
    last_from = soak_start_s + soak_s * 2 / 3
    last = [s for s in soak if s["t_s"] >= last_from]
    ts = [s["t_s"] for s in late]
    out: dict[str, Any] = {
        "samples": len(soak),
        "window_s": [round(window_from, 1), round(soak_start_s + soak_s, 1)],
        "threshold_mib_per_min": flat_mib_per_min,
        "peak_rss_mib": max((s["rss_mib"] for s in soak), default=None),
        "peak_pss_mib": max((s["pss_mib"] for s in soak), default=None),
        "rss_first_mib": soak[0]["rss_mib"] if soak else None,
        "rss_last_mib": soak[-1]["rss_mib"] if soak else None,
        "rss_slope_last_2_3": slope_per_min(ts, [s["rss_mib"] for s in late]),
        "pss_slope_last_2_3": slope_per_min(ts, [s["pss_mib"] for s in late]),
        # A leak keeps its slope to the end; allocator warm-up at a new load flattens.
        "rss_slope_last_1_3": slope_per_min([s["t_s"] for s in last], [s["rss_mib"] for s in last]),
        "rss_quartiles_soak": _quartile_growth(
            [s["t_s"] for s in soak], [s["rss_mib"] for s in soak]
        ),
        "rss_quartiles_last_2_3": _quartile_growth(ts, [s["rss_mib"] for s in late]),
    }
    per: dict[str, dict[str, Any]] = {}
    names = {n for s in soak for n in s["processes"]}
    for name in names:
        pts = [(s["t_s"], s["processes"][name]["rss_mib"]) for s in soak if name in s["processes"]]
        late_pts = [(t, y) for t, y in pts if t >= window_from]
        last_pts = [(t, y) for t, y in pts if t >= last_from]
        per[name] = {
            "first_mib": pts[0][1],
            "last_mib": pts[-1][1],
            "peak_mib": max(y for _, y in pts),
            "samples": len(pts),
            "slope_last_2_3": slope_per_min([t for t, _ in late_pts], [y for _, y in late_pts])[
                "slope"
            ],
            "slope_last_1_3": slope_per_min([t for t, _ in last_pts], [y for _, y in last_pts])[
                "slope"
            ],
        }
    out["processes"] = dict(sorted(per.items(), key=lambda kv: -kv[1]["peak_mib"]))
    slope = out["rss_slope_last_2_3"]["slope"]
    out["flat"] = slope is not None and slope <= flat_mib_per_min
    return out


# -- Prometheus ----------------------------------------------------------------------------
_METRIC = re.compile(r"^(ray_qingliang_(?:requests|rejected)_total)\{([^}]*)\}\s+([0-9.eE+-]+)$")


def scrape(url: str) -> dict[str, dict[str, float]] | None:
    """``{"requests": {"<endpoint> <status>": n}, "rejected": {"<endpoint>": n}}`` summed
    over processes and adapters, or None when the export port does not answer."""
    try:
        text = httpx.get(url, timeout=10, trust_env=False).text
    except httpx.HTTPError:
        return None
    out: dict[str, dict[str, float]] = {"requests": {}, "rejected": {}}
    for line in text.splitlines():
        m = _METRIC.match(line)
        if not m:
            continue
        labels = dict(re.findall(r'(\w+)="([^"]*)"', m.group(2)))
        if m.group(1).endswith("requests_total"):
            key = f"{labels.get('deployment')} {labels.get('endpoint')} {labels.get('status')}"
            table = out["requests"]
        else:
            key = f"{labels.get('deployment')} {labels.get('endpoint')}"
            table = out["rejected"]
        table[key] = table.get(key, 0.0) + float(m.group(3))
    return out


def settled_scrape(url: str, wait_s: float = 60.0, every_s: float = 5.0) -> dict | None:
    """Scrape until two reads in a row agree (Ray exports counters every few seconds)."""
    deadline = time.monotonic() + wait_s
    last = scrape(url)
    while time.monotonic() < deadline:
        time.sleep(every_s)
        now = scrape(url)
        if now is not None and now == last:
            return now
        last = now
    return last


def diff_counts(before: dict | None, after: dict | None) -> dict[str, dict[str, float]] | None:
    if before is None or after is None:
        return None
    out: dict[str, dict[str, float]] = {}
    for table in ("requests", "rejected"):
        keys = set(before[table]) | set(after[table])
        out[table] = {
            k: after[table].get(k, 0.0) - before[table].get(k, 0.0)
            for k in sorted(keys)
            if after[table].get(k, 0.0) != before[table].get(k, 0.0)
        }
    return out

"""Where each millisecond goes: the framework-overhead histograms between two scrapes.

The platform exports, on its Prometheus port (``settings.metrics_port``, ``/metrics``),
one histogram per share of a request (docs/serving.md, "Where the time goes"):
``ray_qingliang_gateway_seconds``, ``ray_qingliang_queue_seconds``,
``ray_qingliang_engine_ttft_seconds`` and
``ray_qingliang_time_per_output_token_seconds{side="replica"|"gateway"}``. Scrape before
and after a benchmark arm; :func:`split` gives each share's mean per request over the
requests in between (Δsum / Δcount, summed over replicas and adapters).

Ray's workers report their metrics every few seconds: :func:`settle` scrapes until the
requests the arm sent are all counted.

Example:
    >>> before = scrape(39080)                                   # doctest: +SKIP
    >>> run_the_arm()                                            # doctest: +SKIP
    >>> after = settle(39080, before, requests=64, deployment="tiny")  # doctest: +SKIP
    >>> split(before, after, deployment="tiny")                  # doctest: +SKIP
    {'requests': 64, 'gateway_ms': 0.41, 'queue_ms': 2.3, 'engine_ttft_ms': 250.0, ...}
"""

from __future__ import annotations

import time
import urllib.request
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

#: The shares, as (key in :func:`split`'s answer, exported family, side or None).
SHARES = (
    ("gateway_ms", "ray_qingliang_gateway_seconds", None),
    ("queue_ms", "ray_qingliang_queue_seconds", None),
    ("engine_ttft_ms", "ray_qingliang_engine_ttft_seconds", None),
    ("tpot_replica_ms", "ray_qingliang_time_per_output_token_seconds", "replica"),
    ("tpot_gateway_ms", "ray_qingliang_time_per_output_token_seconds", "gateway"),
)

#: (family, deployment, adapter, side) -> [sum, count], over every replica.
Scrape = dict[tuple[str, str, str, str], list[float]]


def parse(text: str) -> Scrape:
    """The overhead histograms' sums and counts in a Prometheus text export."""
    wanted = {family for _, family, _ in SHARES}
    out: Scrape = {}
    for family in text_string_to_metric_families(text):
        if family.name not in wanted:
            continue
        for sample in family.samples:
            suffix = sample.name[len(family.name) :]
            if suffix not in ("_sum", "_count"):
                continue
            labels = sample.labels
            key = (
                family.name,
                labels.get("deployment", ""),
                labels.get("adapter", ""),
                labels.get("side", ""),
            )
            acc = out.setdefault(key, [0.0, 0.0])
            acc[0 if suffix == "_sum" else 1] += sample.value
    return out


def scrape(port: int, host: str = "127.0.0.1", timeout_s: float = 30.0) -> Scrape:
    """The overhead histograms now, from the export port."""
    url = f"http://{host}:{port}/metrics"
    with urllib.request.urlopen(url, timeout=timeout_s) as r:  # noqa: S310 - local port
        return parse(r.read().decode())


def delta(
    before: Scrape, after: Scrape, family: str, side: str | None, deployment: str | None
) -> tuple[float, float]:
    """Δsum and Δcount of ``family`` (one ``side``, one ``deployment``, or all when None)."""
    total, count = 0.0, 0.0
    for key, (s, c) in after.items():
        name, dep, _adapter, sd = key
        if name != family or (deployment is not None and dep != deployment):
            continue
        if side is not None and sd != side:
            continue
        s0, c0 = before.get(key, (0.0, 0.0))
        total, count = total + s - s0, count + c - c0
    return total, count


def split(before: Scrape, after: Scrape, deployment: str | None = None) -> dict[str, Any]:
    """Each share's mean per request between two scrapes, in milliseconds (None where no
    request was counted), and ``requests``: the answered requests the gateway counted."""
    out: dict[str, Any] = {}
    for key, family, side in SHARES:
        total, count = delta(before, after, family, side, deployment)
        out[key] = round(total / count * 1000, 3) if count > 0 else None
        if key == "gateway_ms":
            out["requests"] = int(count)
    return {"requests": out.pop("requests"), **out}


def settle(
    port: int,
    before: Scrape,
    requests: int,
    deployment: str | None = None,
    timeout_s: float = 60.0,
    host: str = "127.0.0.1",
) -> Scrape:
    """Scrape until the gateway, the queue and the engine have each counted ``requests``
    more than in ``before`` (Ray reports metrics every few seconds), or ``timeout_s``
    passed; the last scrape either way."""
    deadline = time.monotonic() + timeout_s
    while True:
        after = scrape(port, host)
        counts = [
            delta(before, after, family, None, deployment)[1]
            for _, family, side in SHARES
            if side is None
        ]
        if min(counts) >= requests or time.monotonic() > deadline:
            return after
        time.sleep(1.0)

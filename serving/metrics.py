"""Per-deployment and per-adapter serving metrics through ``ray.util.metrics``.

They appear on the Ray dashboard's metrics view and on the Prometheus export port
(prefixed ``ray_``), e.g. ``ray_qingliang_requests_total{deployment="qwen",adapter="",
endpoint="chat",status="200"}``.

Example:
    >>> m = ServingMetrics.create()          # doctest: +SKIP  (inside a Ray worker)
    >>> m.request("qwen", "", "chat", 200, latency_s=0.4)  # doctest: +SKIP
"""

from __future__ import annotations

import logging
from typing import Any

logger = logging.getLogger(__name__)

_LATENCY_BOUNDS = [0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 4, 8, 16, 32, 64, 128]
_TAGS = ("deployment", "adapter")


class ServingMetrics:
    """Counters, histograms and a gauge; a no-op when Ray metrics are unavailable."""

    def __init__(self, metrics: dict[str, Any] | None) -> None:
        self._m = metrics

    @classmethod
    def create(cls) -> ServingMetrics:
        try:
            from ray.util.metrics import Counter, Gauge, Histogram
        except ImportError:  # pragma: no cover - ray is a hard dependency
            return cls(None)
        tags = (*_TAGS, "endpoint")
        m = {
            "requests": Counter(
                "qingliang_requests_total",
                description="Requests answered, by status code.",
                tag_keys=(*tags, "status"),
            ),
            "rejected": Counter(
                "qingliang_rejected_total",
                description="Requests refused with 429 because the deployment was saturated.",
                tag_keys=tags,
            ),
            "tokens_in": Counter(
                "qingliang_prompt_tokens_total", description="Prompt tokens.", tag_keys=tags
            ),
            "tokens_out": Counter(
                "qingliang_completion_tokens_total",
                description="Generated tokens.",
                tag_keys=tags,
            ),
            "ttft": Histogram(
                "qingliang_time_to_first_token_seconds",
                description="Time from request arrival at the replica to the first token.",
                boundaries=_LATENCY_BOUNDS,
                tag_keys=tags,
            ),
            "latency": Histogram(
                "qingliang_request_latency_seconds",
                description="Time from request arrival at the replica to the last byte.",
                boundaries=_LATENCY_BOUNDS,
                tag_keys=tags,
            ),
            "ongoing": Gauge(
                "qingliang_ongoing_requests",
                description="Requests running or queued in this replica (queue depth).",
                tag_keys=("deployment",),
            ),
        }
        return cls(m)

    @staticmethod
    def _tags(deployment: str, adapter: str | None, endpoint: str | None = None) -> dict:
        tags = {"deployment": deployment, "adapter": adapter or ""}
        if endpoint is not None:
            tags["endpoint"] = endpoint
        return tags

    def request(
        self,
        deployment: str,
        adapter: str | None,
        endpoint: str,
        status: int,
        *,
        latency_s: float | None = None,
        ttft_s: float | None = None,
        prompt_tokens: int = 0,
        completion_tokens: int = 0,
    ) -> None:
        if self._m is None:
            return
        tags = self._tags(deployment, adapter, endpoint)
        self._m["requests"].inc(1, tags={**tags, "status": str(status)})
        if prompt_tokens:
            self._m["tokens_in"].inc(prompt_tokens, tags=tags)
        if completion_tokens:
            self._m["tokens_out"].inc(completion_tokens, tags=tags)
        if ttft_s is not None:
            self._m["ttft"].observe(ttft_s, tags=tags)
        if latency_s is not None:
            self._m["latency"].observe(latency_s, tags=tags)

    def rejected(self, deployment: str, adapter: str | None, endpoint: str) -> None:
        if self._m is not None:
            self._m["rejected"].inc(1, tags=self._tags(deployment, adapter, endpoint))

    def ongoing(self, deployment: str, value: int) -> None:
        if self._m is not None:
            self._m["ongoing"].set(value, tags={"deployment": deployment})

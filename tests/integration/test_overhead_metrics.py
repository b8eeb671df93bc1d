"""Where the time goes, on the real platform: after one non-streamed and one streamed chat
request to ``tiny``, the Prometheus export port shows each overhead histogram with the
deployment's tag, counted once per request; the non-streamed answer's ``Server-Timing``
header splits its time and its body carries no private figures."""

from __future__ import annotations

import json
import re
import time

import httpx
from _platform import Platform

from bench._overhead import Scrape, delta, scrape, settle

FAMILIES = (
    ("ray_qingliang_gateway_seconds", None, 2),
    ("ray_qingliang_queue_seconds", None, 2),
    ("ray_qingliang_engine_ttft_seconds", None, 2),
    ("ray_qingliang_time_per_output_token_seconds", "replica", 1),
    ("ray_qingliang_time_per_output_token_seconds", "gateway", 1),
)
SERVER_TIMING = re.compile(r"gateway;dur=\d+\.\d{3}, queue;dur=\d+\.\d{3}, engine;dur=\d+\.\d{3}")
BODY = {
    "model": "tiny",
    "messages": [{"role": "user", "content": "count"}],
    "max_tokens": 6,
    "min_tokens": 6,
    "temperature": 0,
}


def counts(before: Scrape, after: Scrape) -> list[float]:
    return [delta(before, after, family, side, "tiny")[1] for family, side, _ in FAMILIES]


def quiet_scrape(port: int) -> Scrape:
    """A scrape after which no earlier request of this session is still to be reported:
    two scrapes a report interval apart (Ray's is 10 s) agree."""
    deadline = time.monotonic() + 90
    last = scrape(port)
    while True:
        time.sleep(11)
        now = scrape(port)
        if counts(last, now) == [0] * len(FAMILIES) or time.monotonic() > deadline:
            return now
        last = now


def test_each_request_is_split_into_gateway_queue_engine_and_tokens(
    platform: Platform, http: httpx.Client
) -> None:
    port = platform.settings.metrics_port
    before = quiet_scrape(port)

    r = http.post("/v1/chat/completions", json=BODY)
    assert r.status_code == 200, r.text
    assert "_qingliang_timing" not in r.text
    assert set(r.json()) >= {"id", "choices", "usage", "qingliang"}
    assert SERVER_TIMING.fullmatch(r.headers["server-timing"]), r.headers["server-timing"]

    with http.stream("POST", "/v1/chat/completions", json={**BODY, "stream": True}) as s:
        assert s.status_code == 200
        events = [line for line in s.iter_lines() if line.startswith("data: ")]
    assert events[-1] == "data: [DONE]"
    text = "".join(
        (json.loads(e[6:])["choices"] or [{}])[0].get("delta", {}).get("content") or ""
        for e in events[:-1]
    )
    assert text, "the stream carried no tokens"

    after = settle(port, before, requests=2, deployment="tiny", timeout_s=90)
    time.sleep(11)  # one more report interval: nothing counted twice arrives late
    after = scrape(port)
    assert counts(before, after) == [n for _, _, n in FAMILIES], [
        (family, side) for family, side, _ in FAMILIES
    ]
    for family, side, _ in FAMILIES:
        total, count = delta(before, after, family, side, "tiny")
        assert total >= 0 and count > 0, family

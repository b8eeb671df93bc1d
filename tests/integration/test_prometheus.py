"""The Grafana dashboard against a real Prometheus (Debian's package) on loopback: it
scrapes the session platform's Ray metrics port (the nodes Ray's head lists for
Prometheus), a little traffic goes through every layer (chat with and without the adapter,
a knowledge sync and searches, an agent run through a router with feedback, a one-step
pipeline), and every query of every panel of deploy/grafana/qingliang.json then returns
data through Prometheus's HTTP API. A panel whose metric is missing fails the test,
naming the panel and the query."""

from __future__ import annotations

import json
import os
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
import yaml
from _platform import Platform
from _prometheus import missing

from qingliang.platform.control import prometheus

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(missing() is not None, reason=missing() or ""),
]

DASHBOARD = Path(__file__).resolve().parents[2] / "deploy" / "grafana" / "qingliang.json"
#: Prometheus scrapes this often; Ray reports each process's metrics every 10 s.
SCRAPE_S = 2
#: How long the metrics of the traffic may take to reach Prometheus.
SETTLE_S = 180

GRAPH = """apiVersion: qingliang.io/v1
kind: AgentGraph
metadata: {name: it-metrics-desk}
spec:
  agents:
    - {name: clerk, model: tiny, max_tokens: 4}
    - {name: expert, model: "tiny:a", max_tokens: 4}
  nodes:
    - {name: triage, type: router, routes: [quick, careful], router: {seed: 3}}
    - {name: quick, type: agent, agent: clerk}
    - {name: careful, type: agent, agent: expert}
"""


def _free_port() -> int:
    for port in range(28900, 29000):
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) != 0:
                return port
    raise AssertionError("no free port in 28900-28999")


def panel_queries() -> list[tuple[str, str]]:
    doc = json.loads(DASHBOARD.read_text())
    return [(p["title"], t["expr"]) for p in doc["panels"] for t in p.get("targets", [])]


@pytest.fixture(scope="module")
def prom(platform: Platform) -> Iterator[str]:
    found = prometheus.discovery_file(platform.settings.ray_temp)
    assert found.exists(), f"Ray's head wrote no {found.name}"
    # What `qingliang up --prometheus` runs, on a free port of the tests' range.
    os.environ[prometheus.PORT_ENV] = str(_free_port())
    try:
        run = prometheus.launch(platform.settings, interval_s=SCRAPE_S)
        assert run.url == prometheus.platform_url(platform.settings)
        assert prometheus.launch(platform.settings) == run  # a running one is kept
        yield run.url
    finally:
        assert prometheus.shutdown(platform.settings), "the Prometheus was not running"
        del os.environ[prometheus.PORT_ENV]


def _scraped(url: str) -> dict[str, str]:
    """Each target Prometheus found (``host:port``) and its health."""
    targets = httpx.get(f"{url}/api/v1/targets", timeout=30).json()["data"]["activeTargets"]
    return {t["labels"]["instance"]: t["health"] for t in targets}


def _query(url: str, expr: str) -> list:
    r = httpx.get(f"{url}/api/v1/query", params={"query": expr}, timeout=30)
    assert r.status_code == 200, f"{expr}: {r.text}"
    body = r.json()
    assert body["status"] == "success", body
    return body["data"]["result"]


#: A prompt longer than vLLM's KV block (16 tokens), repeated: prefix-cache hits.
PROMPT = "Where and when are residence permits renewed, and which papers are needed? " * 4


@contextmanager
def _chats(platform: Platform) -> Iterator[list[int]]:
    """Streamed chats to ``tiny`` one after another in a thread until the block ends;
    yields the status codes answered so far."""
    stop, codes = threading.Event(), []
    body = {
        "model": "tiny",
        "messages": [{"role": "user", "content": PROMPT}],
        "max_tokens": 16,
        "stream": True,
    }

    def loop() -> None:
        with httpx.Client(
            base_url=platform.base_url, headers={"Authorization": f"Bearer {platform.key}"}
        ) as c:
            while not stop.is_set():
                with c.stream("POST", "/chat/completions", json=body, timeout=120) as r:
                    r.read()
                    codes.append(r.status_code)

    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    try:
        yield codes
    finally:
        stop.set()
        thread.join(timeout=120)


def _traffic(platform: Platform, http: httpx.Client, work: Path) -> None:
    """A chat to the base model and to the adapter (streamed and not), a KB synced and
    searched, an agent run through a router with feedback, a govern-only pipeline."""
    for model, stream in (("tiny", False), ("tiny:a", False), ("tiny", True)):
        body = {"model": model, "messages": [{"role": "user", "content": "hi"}]}
        r = http.post("/v1/chat/completions", json={**body, "max_tokens": 4, "stream": stream})
        assert r.status_code == 200, r.text

    docs = work / "kb"
    docs.mkdir()
    (docs / "rules.md").write_text("# Permits\n\nPermits are renewed at window 3.\n")
    kb = {
        "apiVersion": "qingliang.io/v1",
        "kind": "KnowledgeBase",
        "metadata": {"name": "it-metrics-kb"},
        "spec": {"sources": [{"folder": str(docs)}]},
    }
    platform.ctl.apply([platform.manifest("it-metrics-kb", yaml.safe_dump(kb))], progress=False)
    r = http.post("/v1/knowledge/it-metrics-kb/sync", json={})
    assert r.status_code == 200 and r.json()["added"] >= 1, r.text
    for _ in range(3):
        r = http.post("/v1/knowledge/it-metrics-kb/search", json={"query": "renew permits"})
        assert r.status_code == 200 and r.json()["citations"], r.text

    platform.ctl.apply([platform.manifest("it-metrics-desk", GRAPH)], progress=False)
    r = http.post("/v1/agents/it-metrics-desk/runs", json={"input": "renew", "stream": False})
    assert r.status_code == 200, r.text
    run = r.json()
    run_id = run.get("run_id") or run.get("id") or run["run"]["id"]
    r = http.post("/v1/feedback", json={"run_id": run_id, "score": 1})
    assert r.status_code in (200, 409), r.text  # 409: closed already, when its run ended

    project = work / "pipeline"
    (project / "data").mkdir(parents=True)
    rows = [
        {"messages": [{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": "a"}]}
        for i in range(8)
    ]
    (project / "data" / "qa.jsonl").write_text("".join(json.dumps(x) + "\n" for x in rows))
    (project / "dataset.yaml").write_text(
        "apiVersion: qingliang.io/v1\nkind: Dataset\nmetadata: {name: it-metrics-data}\n"
        "spec:\n  format: chat\n  sources: [{path: data/qa.jsonl}]\n"
        "  governance: [{step: schema}]\n"
    )
    pipeline = {
        "apiVersion": "qingliang.io/v1",
        "kind": "Pipeline",
        "metadata": {"name": "it-metrics-pipeline"},
        "spec": {"steps": [{"type": "govern", "dataset": "dataset.yaml"}]},
    }
    r = http.post("/v1/pipelines", json={"manifest": pipeline, "base_dir": str(project)})
    assert r.status_code == 202, r.text
    deadline = time.monotonic() + 300
    while (status := http.get(f"/v1/pipelines/{r.json()['id']}").json()["status"]) not in (
        "succeeded",
        "failed",
    ):
        assert time.monotonic() < deadline, status
        time.sleep(1)
    assert status == "succeeded"


def _value(result: list[dict]) -> float:
    """The one sample of an instant query's result; 0 when the series is not there yet."""
    return float(result[0]["value"][1]) if result else 0.0


def test_every_dashboard_panel_resolves_on_a_real_prometheus(
    platform: Platform, http: httpx.Client, prom: str, tmp_path: Path
) -> None:
    port = f"127.0.0.1:{platform.settings.metrics_port}"
    deadline = time.monotonic() + 60  # the discovery file is read, then the port scraped
    while (healthy := _scraped(prom)).get(port) != "up":
        assert time.monotonic() < deadline, healthy
        time.sleep(1)

    try:
        _traffic(platform, http, tmp_path)
        queries = panel_queries()
        deadline = time.monotonic() + SETTLE_S
        # Gauges of busy processes (requests in a replica, vLLM's scheduler and KV cache)
        # are reported while there is work: the panels are read while chats go on.
        with _chats(platform) as answered:
            while True:
                empty = [(title, expr) for title, expr in queries if not _query(prom, expr)]
                if not empty or time.monotonic() > deadline:
                    break
                time.sleep(SCRAPE_S * 2)
        assert answered and set(answered) == {200}, answered
        assert not empty, "panels with no data:\n" + "\n".join(
            f"  {title!r}: {expr}" for title, expr in empty
        )
        # What the panels show is the traffic: the KB searched three times (each process
        # reports on its own 10 s cycle: wait for the last one; the panels may have
        # resolved on earlier test modules' KBs before this one's series is scraped at
        # all), a govern step ok.
        expr = 'sum(ray_qingliang_knowledge_search_seconds_count{kb="it-metrics-kb"})'
        while (searched := _value(_query(prom, expr))) < 3:
            assert time.monotonic() < deadline + 60, searched
            time.sleep(SCRAPE_S)
        assert searched == 3
        steps = _query(prom, 'sum(ray_qingliang_pipeline_steps_total{kind="govern",outcome="ok"})')
        assert float(steps[0]["value"][1]) >= 1  # earlier test modules may have run some
    finally:
        platform.ctl.delete(["it-metrics-desk"], kind="AgentGraph")
        platform.ctl.delete(["it-metrics-kb"], kind="KnowledgeBase")

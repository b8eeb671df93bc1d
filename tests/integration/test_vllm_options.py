"""vLLM's engine options on the real platform (issue 19): a deployment with
``spec.engine.vllm_args`` and a reasoning parser, served by vLLM's CPU build; its engine
statistics on the metrics export port; ``qingliang logs`` of it.

One extra deployment, ``opts`` (the tiny Llama again), with:

- ``stream-interval: 4``: vLLM sends a streamed answer four tokens at a time;
- ``reasoning_parser: granite`` (Granite's markers are plain text: the tiny model's
  tokenizer has no ``<think>`` token, which most parsers need) and
  ``structured-outputs-config: {enable_in_reasoning: true}``, so a request's
  ``structured_outputs`` regex makes the model write Granite's "Here is my thought
  process: … Here is my response: …" and the parser moves the reasoning to the answer's
  ``reasoning`` field.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from _platform import Platform

NAME = "opts"
MANIFEST = """apiVersion: qingliang.io/v1
kind: ModelDeployment
metadata: {{name: {name}}}
spec:
  model: {{source: {model}}}
  engine:
    max_model_len: 256
    max_num_seqs: 4
    kv_cache_gib: 1
    cpu_threads: 1
    reasoning_parser: granite
    vllm_args:
      stream-interval: 4
      structured-outputs-config: {{enable_in_reasoning: true}}
  placement: {{cpus: 0.5}}
"""
#: vLLM's metrics as Ray exports them (``ray_`` + the name, ``:`` as ``_``), tagged
#: model_name=<deployment> and ReplicaId; docs/serving.md lists them all.
ENGINE_METRICS = (
    "ray_vllm_num_requests_running",
    "ray_vllm_num_requests_waiting",
    "ray_vllm_kv_cache_usage_perc",
    "ray_vllm_prefix_cache_queries_total",
    "ray_vllm_prefix_cache_hits_total",
    "ray_vllm_prompt_tokens_total",
    "ray_vllm_generation_tokens_total",
    "ray_vllm_request_success_total",
    "ray_vllm_time_to_first_token_seconds_bucket",
    "ray_vllm_e2e_request_latency_seconds_bucket",
)


@pytest.fixture(scope="module")
def opts(platform: Platform) -> str:
    path = platform.manifest(NAME, MANIFEST.format(name=NAME, model=platform.models / "tiny"))
    platform.ctl.apply([path], wait=True, timeout_s=600, progress=False)
    yield NAME
    platform.ctl.delete([NAME])


def content_chunks(http: httpx.Client, model: str) -> tuple[int, int]:
    """(chunks carrying content, completion tokens) of a streamed 16-token answer."""
    body = {
        "model": model,
        "messages": [{"role": "user", "content": "count to twenty"}],
        "max_tokens": 16,
        "min_tokens": 16,
        "temperature": 0,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    chunks, tokens = 0, 0
    with http.stream("POST", "/v1/chat/completions", json=body) as r:
        assert r.status_code == 200, r.read()
        for line in r.iter_lines():
            if not line.startswith("data: {"):
                continue
            event = json.loads(line[6:])
            if event.get("usage"):
                tokens = event["usage"]["completion_tokens"]
            for choice in event.get("choices") or []:
                if (choice.get("delta") or {}).get("content"):
                    chunks += 1
    return chunks, tokens


def test_vllm_args_reach_the_engine(opts: str, http: httpx.Client) -> None:
    chunks, tokens = content_chunks(http, opts)
    assert tokens == 16
    assert chunks <= 5  # 16 tokens, four at a time
    plain, plain_tokens = content_chunks(http, "tiny")  # stream-interval 1 (vLLM's default)
    assert plain_tokens == 16 and plain > chunks


def test_the_reasoning_goes_to_its_own_field(opts: str, http: httpx.Client) -> None:
    body = {
        "model": opts,
        "messages": [{"role": "user", "content": "think first"}],
        "max_tokens": 160,
        "temperature": 0,
        "structured_outputs": {
            "regex": "Here is my thought process: plan it Here is my response: the answer"
        },
    }
    r = http.post("/v1/chat/completions", json=body)
    assert r.status_code == 200, r.text
    message = r.json()["choices"][0]["message"]
    assert message["reasoning"].strip() == "plan it"
    assert message["content"].strip() == "the answer"
    # streamed: the reasoning as `delta.reasoning`, the rest as `delta.content`
    reasoning, content = "", ""
    with http.stream("POST", "/v1/chat/completions", json=body | {"stream": True}) as s:
        for line in s.iter_lines():
            if line.startswith("data: {"):
                for choice in json.loads(line[6:]).get("choices") or []:
                    delta = choice.get("delta") or {}
                    reasoning += delta.get("reasoning") or ""
                    content += delta.get("content") or ""
    assert content.strip() == "the answer"
    # vLLM's granite streaming parser, fed four tokens at a time (stream-interval 4),
    # leaves the marker's tail in the first reasoning delta ("ess: plan it")
    assert reasoning.strip().endswith("plan it")


def scrape_until(port: int, wanted: tuple[str, ...], deployment: str) -> str:
    """The export port's text once every ``wanted`` family shows ``deployment`` (Ray
    reports every ~10 s); the last text when it never does (the assert names what is
    missing)."""
    deadline = time.monotonic() + 90
    while True:
        text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=30).text
        if not missing(text, wanted, deployment) or time.monotonic() > deadline:
            return text
        time.sleep(2)


def missing(text: str, wanted: tuple[str, ...], deployment: str) -> list[str]:
    tag = f'model_name="{deployment}"'
    return [m for m in wanted if not re.search(rf"^{m}{{[^}}]*{tag}", text, re.M)]


def test_engine_stats_are_exported_on_the_metrics_port(
    opts: str, platform: Platform, http: httpx.Client
) -> None:
    same = {"model": opts, "max_tokens": 4, "temperature": 0,
            "messages": [{"role": "user", "content": "the same long prompt " * 12}]}  # fmt: skip
    for _ in range(2):  # the second finds the first's blocks: a prefix cache hit
        assert http.post("/v1/chat/completions", json=same).status_code == 200
    text = scrape_until(platform.settings.metrics_port, ENGINE_METRICS, opts)
    assert not missing(text, ENGINE_METRICS, opts), text[-3000:]
    hits = re.findall(
        rf'^ray_vllm_prefix_cache_hits_total{{[^}}]*model_name="{opts}"[^}}]*}} (\S+)', text, re.M
    )
    assert float(hits[0]) > 0  # prefix caching is on by default
    assert re.search(r'^ray_vllm_num_requests_running{[^}]*ReplicaId="[^"]+"', text, re.M)


def test_qingliang_logs_shows_the_replicas_lines(opts: str, platform: Platform) -> None:
    env = os.environ | {
        "QINGLIANG_HOME": str(platform.settings.home),
        "QINGLIANG_DASHBOARD_PORT": str(platform.settings.dashboard_port),
    }
    env.pop("QINGLIANG_URL", None)
    qingliang = [str(Path(sys.executable).parent / "qingliang")]
    r = subprocess.run([*qingliang, "logs", opts, "--tail", "0"], env=env,
                       capture_output=True, text=True, timeout=120)  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert f"engine start phases of {opts}" in r.stdout  # the platform's own line
    r = subprocess.run([*qingliang, "logs", "optz"], env=env,
                       capture_output=True, text=True, timeout=120)  # fmt: skip
    assert r.returncode == 1
    assert "unknown deployment 'optz' (did you mean 'opts'?)" in " ".join(r.stderr.split())
    # remotely, through the gateway's route, the same lines
    remote = env | {"QINGLIANG_URL": platform.base_url, "QINGLIANG_API_KEY": platform.key}
    r = subprocess.run([*qingliang, "logs", opts, "--tail", "0"], env=remote,
                       capture_output=True, text=True, timeout=120)  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert f"engine start phases of {opts}" in r.stdout

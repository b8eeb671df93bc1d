"""Shared helpers of the integration tests (the fixtures are in conftest.py)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import httpx

from qingliang.platform.control.apply import Controller
from qingliang.platform.settings import Settings

PORTS = {"http_port": 28000, "dashboard_port": 28265, "metrics_port": 28080, "ray_port": 26380}


@dataclass
class Platform:
    settings: Settings
    ctl: Controller
    key: str
    base_url: str
    models: Path
    workdir: Path

    def manifest(self, name: str, body: str) -> Path:
        path = self.workdir / f"{name}.yaml"
        path.write_text(body)
        return path

    def serve_status(self) -> dict:
        url = f"http://127.0.0.1:{self.settings.dashboard_port}/api/serve/applications/"
        return httpx.get(url, timeout=30).json()["applications"]

    def replicas(self, app: str) -> list[dict]:
        deps = self.serve_status()[app]["deployments"]
        return deps["ModelServer"]["replicas"]


def tiny_manifest(name: str, model: Path, extra_engine: str = "", adapters: str = "") -> str:
    return f"""apiVersion: qingliang.io/v1
kind: ModelDeployment
metadata: {{name: {name}}}
spec:
  model: {{source: {model}}}
  engine: {{max_model_len: 256, max_num_seqs: 8, kv_cache_gib: 1, cpu_threads: 1{extra_engine}}}
  lora: {{enabled: true, max_rank: 8, max_adapters: 4{adapters}}}
  placement: {{cpus: 0.5}}
"""

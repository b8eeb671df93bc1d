"""Shared helpers of the integration tests (the fixtures are in conftest.py)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx

from qingliang.platform.control.apply import Controller
from qingliang.platform.gateway.services import HELPERS
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

    def agents_pid(self) -> int:
        """The pid of the replica hosting the agent runs (the shared helper replica)."""
        deps = self.serve_status()["qingliang-gateway"]["deployments"][HELPERS]["replicas"]
        return int(deps[0]["pid"])

    def kill_agents(self, timeout_s: float = 120) -> None:
        """SIGKILL the replica hosting the agents (the shared helper replica: knowledge and
        the embedder with them) and wait until Serve has a healthy new one."""
        import os
        import signal
        import time

        old = self.agents_pid()
        os.kill(old, signal.SIGKILL)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                app = self.serve_status()["qingliang-gateway"]["deployments"][HELPERS]
                reps = app["replicas"]
                if app["status"] == "HEALTHY" and reps and int(reps[0]["pid"]) != old:
                    return
            except (KeyError, httpx.HTTPError, IndexError):
                pass
            time.sleep(1)
        raise AssertionError(f"the {HELPERS} replica did not come back")


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


def domain_bundle(
    platform: Platform, source: Path, dest: Path, kbs: dict[str, int]
) -> Iterator[Path]:
    """A domain bundle as `qingliang demo up --no-train` leaves it, for a module fixture
    (``yield from``): copied to ``dest`` (the repository stays clean), prepared, its adapter
    aliases created empty (the base model answers), applied, and its knowledge bases synced
    (each must add the number of chunks ``kbs`` gives). Afterwards its graphs, knowledge
    bases and aliases are removed, so the next module finds the platform as it was (a later
    `demo up` of the same domain refuses objects it did not create)."""
    import shutil

    from qingliang.platform.control import demos

    shutil.copytree(source, dest, ignore=shutil.ignore_patterns("*.sqlite*"))
    demos.prepare(dest)
    bundle = demos.Bundle.load(dest)
    for dep, alias in bundle.adapter_aliases():
        platform.ctl.set_alias(dep, alias, {})
    changes = platform.ctl.apply(bundle.manifests, wait=True, progress=False)
    with httpx.Client(
        base_url=platform.base_url.removesuffix("/v1"),
        headers={"Authorization": f"Bearer {platform.key}"},
        timeout=300,
    ) as ops:
        for kb, added in kbs.items():
            r = ops.post(f"/v1/knowledge/{kb}/sync", json={})
            assert r.status_code == 200, r.text
            assert r.json()["added"] == added, r.text
    yield dest
    graphs = [c.name for c in changes if c.kind == "AgentGraph"]
    for name in reversed(graphs):  # a graph that nests another goes first
        platform.ctl.delete([name], kind="AgentGraph")
    made = [c.name for c in changes if c.kind == "KnowledgeBase"]
    if made:
        platform.ctl.delete(made, kind="KnowledgeBase")
    for dep, alias in bundle.adapter_aliases():
        platform.ctl.set_alias(dep, alias, None)


def sse_events(response: httpx.Response) -> list[dict]:
    """The JSON events of a streamed answer (``data:`` lines, without ``[DONE]``)."""
    import json

    return [
        json.loads(line.removeprefix("data: "))
        for line in response.iter_lines()
        if line.startswith("data: ") and line != "data: [DONE]"
    ]

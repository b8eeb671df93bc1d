"""`qingliang demo up all` then `demo down all` on the running platform (real Ray Serve,
vLLM CPU with the packaged Qwen, embedded Qdrant): the three desks and the front desk come
up, a request reaches a desk through the front desk's learned router, the router's
decisions are visible, and going down leaves the platform as it was."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import httpx
import pytest
from _platform import Platform

from qingliang.platform.control import demos

pytestmark = [pytest.mark.integration, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]


def state(platform: Platform, http: httpx.Client) -> tuple[set, set, set]:
    stored = {(r.kind, r.name) for r in platform.ctl.store.list()}
    kbs = {k["id"] for k in http.get("/v1/knowledge").json()["data"]}
    graphs = {g["id"] for g in http.get("/v1/agents").json()["data"]}
    return stored, kbs, graphs


def test_demo_up_all_then_down_all(
    platform: Platform, qwen: str, http: httpx.Client, tmp_path: Path
) -> None:
    root = tmp_path / "domains"  # a copy: the repository stays as it is
    shutil.copytree(REPO / "deploy" / "domains", root, ignore=shutil.ignore_patterns("*.sqlite"))
    before = state(platform, http)

    def sync(names: list[str]) -> None:
        for name in names:
            r = http.post(f"/v1/knowledge/{name}/sync", json={}, timeout=900)
            assert r.status_code == 200, r.text

    lines: list[str] = []
    bundles = demos.select(["all"], root)
    demos.up(bundles, platform.ctl, platform.settings.home, sync=sync, say=lines.append)
    _stored, kbs, graphs = state(platform, http)
    assert {"gov-desk", "health-desk", "plant-desk", "front-desk"} <= graphs
    for b in bundles:
        for kind, name in demos.objects(b.manifests):
            if kind == "KnowledgeBase":
                assert name in kbs
                assert http.get(f"/v1/knowledge/{name}").json()["chunks"] > 0

    body = {"input": "我想咨询居住证怎么办理，需要带什么材料？", "domain": "gov", "stream": False}
    r = http.post("/v1/agents/front-desk/runs", json=body, timeout=600)
    assert r.status_code == 200, r.text
    run = r.json()
    assert run["status"] in ("done", "waiting"), (run.get("reason"), run["events"][-3:])
    route = next(e for e in run["events"] if e["type"] == "route")
    assert route["arm"] in demos.DOMAINS and 0 < route["propensity"] <= 1
    routers = http.get("/v1/agents/front-desk/routers").json()["data"]
    assert routers[0]["decisions"] >= 1 and set(routers[0]["arms"]) == set(demos.DOMAINS)

    removed = demos.down(["all"], platform.ctl, platform.settings.home, say=lines.append)
    assert removed[0] == "AgentGraph/front-desk"
    # The agents' graph catalog re-reads the store at most once a second.
    deadline = time.monotonic() + 30
    while state(platform, http) != before and time.monotonic() < deadline:
        time.sleep(0.5)
    assert state(platform, http) == before

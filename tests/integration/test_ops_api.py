"""The operator's HTTP API on the running platform (issue 17): real Ray Serve, the tiny
Llama on vLLM CPU, the gateway replica reading Serve's details from the dashboard, arm
statistics written by the gateway's backend, and `qingliang demo` run by the gateway as
a job in a subprocess of its replica.

The demonstrations need the packaged Qwen deployment (``qwen-coder``, minutes to start
on CPU). The quick tests run the real ``demo down gov`` (nothing is up: it succeeds and
says so) and the real ``demo up gov --no-train``, which the CLI refuses while
``qwen-coder`` is not applied (its message comes back in the job's log); the ``slow``
test starts Qwen and brings gov up and down through the gateway.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
from _platform import Platform, sse_events

pytestmark = pytest.mark.integration


def until(what: str, check: Callable[[], Any], timeout_s: float = 60) -> Any:
    """``check()`` once it is truthy (arm counts reach the file every 2 s)."""
    deadline = time.monotonic() + timeout_s
    while True:
        got = check()
        if got:
            return got
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not after {timeout_s:.0f} s")
        time.sleep(0.5)


def tiny(http: httpx.Client) -> dict:
    r = http.get("/v1/deployments/tiny", params={"window_s": 3600})
    assert r.status_code == 200, r.text
    return r.json()


def totals(http: httpx.Client) -> dict[str, int]:
    r = http.get("/v1/metrics/series", params={"window_s": 3600, "step_s": 60})
    assert r.status_code == 200, r.text
    series = r.json()["series"]["tiny"]
    return {k: sum(series[k]) for k in ("requests", "errors", "output_tokens")}


def test_whoami_is_the_admin_key_and_points_at_the_dashboard(
    platform: Platform, http: httpx.Client
) -> None:
    me = http.get("/v1/whoami").json()
    assert me["name"] == "integration" and me["scopes"] == ["admin"]
    assert me["tenant"] is None and me["auth"] is True
    assert me["ray_dashboard"] == f"http://127.0.0.1:{platform.settings.dashboard_port}"
    assert httpx.get(me["ray_dashboard"] + "/api/version", timeout=30).status_code == 200


def test_a_deployments_arms_and_series_move_with_two_chat_requests(http: httpx.Client) -> None:
    dep = tiny(http)
    assert dep["status"] == "RUNNING" and dep["engine"]["kind"] == "vllm"
    assert any(r["state"] == "RUNNING" and r["pid"] for r in dep["replicas"])
    assert [a["name"] for a in dep["adapters"]] == ["a"]
    arms_before = {arm: c["requests"] for arm, c in dep["arms"].items()}
    before = totals(http)

    body = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 5}
    r = http.post("/v1/chat/completions", json={**body, "model": "tiny", "temperature": 0})
    assert r.status_code == 200, r.text
    with http.stream(
        "POST", "/v1/chat/completions", json={**body, "model": "tiny:a", "stream": True}
    ) as s:
        assert s.status_code == 200
        events = sse_events(s)
    assert all("usage" not in e or e["usage"] is None for e in events)  # not asked for

    def moved() -> dict | None:
        arms = tiny(http)["arms"]
        base = arms.get("", {}).get("requests", 0) - arms_before.get("", 0)
        a = arms.get("a", {}).get("requests", 0) - arms_before.get("a", 0)
        return arms if base >= 1 and a >= 1 else None

    arms = until("both arms counted", moved)
    assert arms["a"]["errors"] == 0 and arms["a"]["mean_latency_ms"] > 0

    def counted() -> dict | None:
        now = totals(http)
        return now if now["requests"] >= before["requests"] + 2 else None

    after = until("the series counted both", counted)
    assert after["output_tokens"] >= before["output_tokens"] + 2  # the stream's too
    series = http.get("/v1/metrics/series", params={"deployment": "tiny"}).json()["series"]
    assert list(series) == ["tiny"]
    assert any(p is not None and p > 0 for p in series["tiny"]["ttft_p50_ms"])


def test_manifest_validate_and_diff_against_the_running_platform(
    platform: Platform, http: httpx.Client
) -> None:
    text = (platform.workdir / "tiny.yaml").read_text()
    same = http.post("/v1/manifests/diff", json={"yaml": text}).json()
    assert same["ok"] is True
    assert same["changes"] == [
        {"kind": "ModelDeployment", "name": "tiny", "action": "unchanged", "fields": [],
         "lightweight": False}
    ]  # fmt: skip
    bad = text.replace("max_model_len: 256", "max_model_len: lots")
    out = http.post("/v1/manifests/validate", json={"yaml": bad}).json()
    assert out["ok"] is False
    (error,) = out["errors"]
    assert (error["path"], error["document"]) == ("spec.engine.max_model_len", 0)
    assert error["line"] == 6 and "integer" in error["message"]


def test_lineage_of_an_adapter_loaded_without_a_registry_ref_says_so(http: httpx.Client) -> None:
    r = http.get("/v1/adapters/a/lineage", params={"deployment": "tiny"})
    assert r.status_code == 404
    assert "loads adapter 'a' without a registry ref" in r.json()["error"]["message"]


def ended(http: httpx.Client, demo: str, job_id: str) -> dict | None:
    """The job ``job_id`` (the newest of ``demo``) once it ended."""
    listed = {d["name"]: d for d in http.get("/v1/demos").json()["data"]}
    job = listed[demo]["job"]
    return job if job["id"] == job_id and job["status"] != "running" else None


def test_demo_jobs_run_the_cli_from_the_gateway(platform: Platform, http: httpx.Client) -> None:
    listed = {d["name"]: d for d in http.get("/v1/demos").json()["data"]}
    assert set(listed) == {"gov", "healthcare", "manufacturing"}
    assert listed["gov"]["state"] == "down"

    r = http.post("/v1/demos/gov/down")
    assert r.status_code == 202, r.text
    down = until("demo down ends", lambda: ended(http, "gov", r.json()["id"]), timeout_s=120)
    assert down["status"] == "succeeded", down["log_tail"]
    assert down["log_tail"][-1] == "nothing to remove"

    if platform.ctl.store.get("ModelDeployment", "qwen-coder") is not None:
        return  # the Qwen deployment of another file: test_demo_up_and_down covers this
    r = http.post("/v1/demos/gov/up", json={"train": False})
    assert r.status_code == 202, r.text
    assert r.json()["train"] is False and r.json()["status"] == "running"
    up = until("demo up ends", lambda: ended(http, "gov", r.json()["id"]), timeout_s=120)
    assert up["status"] == "failed" and up["returncode"] == 1
    assert "'qwen-coder', which is not applied" in " ".join(up["log_tail"])


@pytest.fixture
def operator_key(platform: Platform) -> Iterator[None]:
    """The operator key in ``$QINGLIANG_HOME/api-key``, where ``qingliang up`` writes it and
    the CLI's knowledge commands read it (``demo up`` syncs the knowledge bases with it)."""
    path = platform.settings.home / "api-key"
    if path.exists():
        yield
        return
    path.write_text(platform.key + "\n")
    path.chmod(0o600)
    try:
        yield
    finally:
        path.unlink()


@pytest.mark.slow
@pytest.mark.usefixtures("operator_key")
def test_demo_up_and_down_through_the_gateway(qwen: str, http: httpx.Client) -> None:
    """`demo up gov --no-train` then `demo down gov`, both run by the gateway replica:
    the desk and its knowledge base appear and go (minutes: the packaged Qwen starts and
    the gov knowledge base is embedded)."""
    r = http.post("/v1/demos/gov/up", json={"train": False})
    assert r.status_code == 202, r.text
    # While it runs (minutes), no other job may touch gov.
    busy = http.post("/v1/demos/all/down")
    assert busy.status_code == 409 and "demo gov has a job running" in busy.text
    try:
        up = until("demo up ends", lambda: ended(http, "gov", r.json()["id"]), timeout_s=900)
        assert up["status"] == "succeeded", up["log_tail"]
        gov = {d["name"]: d for d in http.get("/v1/demos").json()["data"]}["gov"]
        assert gov["state"] == "up"
        assert "gov-desk" in {g["id"] for g in http.get("/v1/agents").json()["data"]}
    finally:
        r = http.post("/v1/demos/gov/down")
        assert r.status_code == 202, r.text
    down = until("demo down ends", lambda: ended(http, "gov", r.json()["id"]), timeout_s=600)
    assert down["status"] == "succeeded", down["log_tail"]
    assert {d["name"]: d for d in http.get("/v1/demos").json()["data"]}["gov"]["state"] == "down"
    assert "gov-desk" not in {g["id"] for g in http.get("/v1/agents").json()["data"]}

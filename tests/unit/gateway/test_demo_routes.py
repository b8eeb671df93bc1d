"""``/v1/demos`` (issue 17): the demonstrations' list, and `demo up|down` as jobs.

The app is the real gateway app with real keys; the bundles are the repository's
(``deploy/domains``). The boundary faked is the job's launch: instead of the CLI, a small
Python process that prints a line and exits as told (or waits, to hold a job running),
and the command line it was given is recorded and checked.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from qingliang.platform.gateway.app import create_app
from qingliang.platform.gateway.auth.keys import KeyAuth
from qingliang.platform.gateway.operator.demo_jobs import DemoJob, DemoJobs
from qingliang.platform.storage.keys import KeyStore
from qingliang.serving.traffic import ModelEntry


class Models:
    def models(self) -> list[ModelEntry]:
        return []

    async def ready(self) -> dict[str, str]:
        return {}

    def rejected(self, *args: Any) -> None:
        pass


class Launcher:
    """Records each command line and environment; runs ``script`` instead."""

    def __init__(self) -> None:
        self.calls: list[tuple[list[str], dict[str, str]]] = []
        self.script = "print('gov: KnowledgeBase/gov-policy deleted')"
        self.procs: list[subprocess.Popen] = []

    def __call__(self, cmd: list[str], env: dict[str, str]) -> subprocess.Popen:
        self.calls.append((cmd, env))
        proc = subprocess.Popen(
            [sys.executable, "-c", self.script], stdout=subprocess.PIPE, text=True, bufsize=1
        )
        self.procs.append(proc)
        return proc


@pytest.fixture
def env(tmp_path: Path) -> Any:
    home = tmp_path / "home"
    home.mkdir()
    (home / "demos.json").write_text(json.dumps({"gov": [["KnowledgeBase", "gov-policy"]]}))
    keys = KeyStore(home / "state.sqlite")
    tokens = {
        "admin": keys.create("admin", scopes=["admin"])[1],
        "deploy": keys.create("deploy", scopes=["deploy", "approve"])[1],
    }
    launcher = Launcher()
    jobs = DemoJobs(home, launcher=launcher, environ=lambda: {"QINGLIANG_HOME": str(home)})
    app = create_app(Models(), None, KeyAuth(home / "state.sqlite", True), demos=jobs)  # type: ignore[arg-type]
    client = TestClient(app)

    def call(method: str, url: str, who: str = "admin", **kw: Any) -> Any:
        return client.request(method, url, headers={"Authorization": f"Bearer {tokens[who]}"}, **kw)

    yield call, jobs, launcher, home
    for proc in launcher.procs:  # only the processes this test started
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_the_list_has_every_demo_and_which_is_up(env: Any) -> None:
    call, *_ = env
    r = call("GET", "/v1/demos")
    assert r.status_code == 200, r.text
    demos = {d["name"]: d for d in r.json()["data"]}
    assert list(demos) == ["gov", "healthcare", "manufacturing"]
    assert demos["gov"]["state"] == "up" and demos["healthcare"]["state"] == "down"
    assert demos["gov"]["title"] and demos["gov"]["job"] is None


def test_down_runs_the_cli_as_a_job_and_records_it(env: Any) -> None:
    call, jobs, launcher, home = env
    r = call("POST", "/v1/demos/gov/down")
    assert r.status_code == 202, r.text
    job = r.json()
    assert (job["action"], job["demos"], job["status"]) == ("down", ["gov"], "running")
    cmd, environ = launcher.calls[0]
    assert cmd[1:] == ["-m", "qingliang.platform.cli.main", "demo", "down", "gov"]
    assert environ["QINGLIANG_HOME"] == str(home)
    done = jobs.wait(job["id"], timeout_s=30)
    assert done is not None and done["status"] == "succeeded" and done["returncode"] == 0
    listed = {d["name"]: d for d in call("GET", "/v1/demos").json()["data"]}
    assert listed["gov"]["job"]["log_tail"] == ["gov: KnowledgeBase/gov-policy deleted"]
    # Another gateway replica (or this one restarted) reads the job from the record.
    other = {d["name"]: d for d in DemoJobs(home).catalog()}
    assert other["gov"]["job"]["status"] == "succeeded"


def test_up_passes_train_and_approve_and_a_failure_is_failed(env: Any) -> None:
    call, jobs, launcher, _home = env
    launcher.script = "import sys; print('error: no deployment qwen-coder'); sys.exit(1)"
    r = call("POST", "/v1/demos/all/up", json={"train": True, "approve": True})
    assert r.status_code == 202, r.text
    assert r.json()["demos"] == ["gov", "healthcare", "manufacturing"]
    assert launcher.calls[0][0][-4:] == ["up", "all", "--train", "--approve"]
    done = jobs.wait(r.json()["id"], timeout_s=30)
    assert done is not None and done["status"] == "failed" and done["returncode"] == 1
    assert done["log_tail"] == ["error: no deployment qwen-coder"]
    call("POST", "/v1/demos/gov/up")
    assert launcher.calls[1][0][-3:] == ["up", "gov", "--no-train"]


def test_a_second_job_for_a_running_demo_is_a_conflict(env: Any) -> None:
    call, _jobs, launcher, _home = env
    launcher.script = "import time; time.sleep(60)"
    assert call("POST", "/v1/demos/healthcare/up").status_code == 202
    r = call("POST", "/v1/demos/all/down")
    assert r.status_code == 409
    assert "demo healthcare has a job running" in r.json()["error"]["message"]
    assert call("POST", "/v1/demos/gov/down").status_code == 202  # another demo may go


def test_a_running_job_whose_process_is_gone_reads_as_failed(env: Any) -> None:
    _call, _jobs, _launcher, home = env
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    job = DemoJob("demojob_1", "up", ["gov"], "running", time.time(), pid=gone.pid)
    DemoJobs(home)._save(job)  # as a replica that died wrote it
    gov = {d["name"]: d for d in DemoJobs(home).catalog()}["gov"]
    assert gov["job"]["status"] == "failed" and "stopped" in gov["job"]["log_tail"][-1]


@pytest.mark.parametrize(
    ("method", "url", "body", "status", "words"),
    [
        ("POST", "/v1/demos/gvo/up", {}, 404, "no demo 'gvo' (did you mean 'gov'?)"),
        ("POST", "/v1/demos/gov/up", {"trian": True}, 400, "did you mean 'train'"),
        ("POST", "/v1/demos/gov/up", {"approve": True}, 400, "approve needs train"),
        ("POST", "/v1/demos/nope/down", None, 404, "no demo 'nope'"),
    ],
)
def test_bad_requests_are_named(
    env: Any, method: str, url: str, body: Any, status: int, words: str
) -> None:
    call, _jobs, launcher, _home = env
    r = call(method, url, json=body)
    assert r.status_code == status, r.text
    assert words in r.json()["error"]["message"]
    assert launcher.calls == []


def test_only_admin_keys_may_run_demos(env: Any) -> None:
    call, _jobs, launcher, _home = env
    for method, url in (("GET", "/v1/demos"), ("POST", "/v1/demos/gov/down")):
        r = call(method, url, who="deploy")
        assert r.status_code == 403 and "needs admin" in r.json()["error"]["message"]
    assert launcher.calls == []

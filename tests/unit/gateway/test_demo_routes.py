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
        "runner": keys.create("runner", scopes=["agents:run"])[1],
        "reader": keys.create("reader", scopes=["knowledge:read"])[1],
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


# ----------------------------------------------------------------- the console's walkthrough

REPO = Path(__file__).resolve().parents[3]
DOMAINS = REPO / "deploy" / "domains"


def test_each_demo_lists_its_walkthrough_steps_and_sample_pictures(env: Any) -> None:
    call, *_ = env
    demos = {d["name"]: d for d in call("GET", "/v1/demos").json()["data"]}
    gov = demos["gov"]
    assert gov["samples"] == ["residence_permit_form.png"]  # render.py is not a picture
    kinds = [s["kind"] for s in gov["steps"]]
    assert kinds[:5] == ["search", "agent", "agent", "agent", "approvals"]
    assert {"router", "pipeline", "deployment"} <= set(kinds)
    search, *_ = gov["steps"]
    assert (search["kb"], search["query"]) == ("gov-policy", "办理居住证需要什么材料")
    assert "RP-002" in search["expect"] and search["title"]
    form = next(s for s in gov["steps"] if s["kind"] == "agent" and s["attachment"])
    assert (form["graph"], form["attachment"]) == ("gov-desk", "residence_permit_form.png")
    assert "等待审批" in form["expect"]
    assert next(s for s in gov["steps"] if s["kind"] == "router")["graph"] == "gov-desk"
    # Each step has the fields of its kind only; every picture named is served.
    for demo in demos.values():
        for step in demo["steps"]:
            assert step["title"] and step["expect"], step
            if step["kind"] == "approvals":
                assert set(step) == {"kind", "title", "expect"}
            for picture in (step.get("image"), step.get("attachment")):
                assert picture is None or picture in demo["samples"], step


def test_a_sample_picture_is_served_to_whoever_may_run_agents_or_search(env: Any) -> None:
    call, *_ = env
    for who in ("runner", "reader", "admin"):
        r = call("GET", "/v1/demos/manufacturing/samples/nameplate.png", who=who)
        assert r.status_code == 200, r.text
        assert r.headers["content-type"] == "image/png"
        assert r.content == (DOMAINS / "manufacturing" / "samples" / "nameplate.png").read_bytes()
    r = call("GET", "/v1/demos/gov/samples/residence_permit_form.png", who="deploy")
    assert r.status_code == 403 and "needs agents:run or knowledge:read" in r.text


@pytest.mark.parametrize(
    ("url", "words"),
    [
        ("/v1/demos/gov/samples/render.py", "demo gov has no sample picture 'render.py'"),
        ("/v1/demos/gov/samples/nameplate.png", "its samples: residence_permit_form.png"),
        ("/v1/demos/gov/samples/residence_permit_form.PNG", "(did you mean"),
        ("/v1/demos/gov/samples/..%5Cdemo.yaml", "no sample picture '..\\\\demo.yaml'"),
        ("/v1/demos/gvo/samples/a.png", "no demo 'gvo' (did you mean 'gov'?)"),
        ("/v1/demos/all/samples/a.png", "demo 'all' has no samples"),
    ],
)
def test_anything_but_a_bundles_sample_picture_is_404_naming_it(
    env: Any, url: str, words: str
) -> None:
    call, *_ = env
    r = call("GET", url)
    assert r.status_code == 404, r.text
    assert words in r.json()["error"]["message"]


def test_no_path_reaches_outside_the_samples_folder(env: Any) -> None:
    call, *_ = env
    for url in (
        "/v1/demos/gov/samples/..%2Fdemo.yaml",
        "/v1/demos/gov/samples/%2E%2E%2Fdata%2Foffices.csv",
        "/v1/demos/gov/samples/..%2F..%2Fgov%2Fsamples%2Fresidence_permit_form.png",
    ):
        r = call("GET", url)
        assert r.status_code == 404, (url, r.text)
        assert r.headers["content-type"] == "application/json", url
        assert "manifests" not in r.text and "清源" not in r.text


def _demo_file(tmp_path: Path, console: list[dict]) -> Path:
    import shutil

    import yaml

    root = tmp_path / "gov"
    shutil.copytree(DOMAINS / "gov", root, ignore=shutil.ignore_patterns("*.sqlite*"))
    spec = yaml.safe_load((root / "demo.yaml").read_text(encoding="utf-8"))
    spec["console"] = console
    (root / "demo.yaml").write_text(yaml.safe_dump(spec, allow_unicode=True), encoding="utf-8")
    return root


@pytest.mark.parametrize(
    ("step", "words"),
    [
        (
            {"kind": "search", "title": "t", "query": "q"},
            "console.0: Value error, a search step needs kb",
        ),
        ({"kind": "search", "title": "t", "kb": "k"}, "needs a query or an image"),
        ({"kind": "agent", "title": "t", "graph": "g"}, "an agent step needs input"),
        ({"kind": "router", "title": "t", "graph": "g", "kb": "k"}, "a router step has no kb"),
        ({"kind": "chat", "title": "t"}, "console.0.kind"),
        ({"kind": "approvals", "title": "t", "nte": "x"}, "console.0.nte"),
        (
            {"kind": "agent", "title": "t", "graph": "g", "input": "i", "attachment": "x.png"},
            "console.0: no sample picture 'x.png' in samples/",
        ),
    ],
)
def test_a_bad_console_step_names_its_place_in_demo_yaml(
    tmp_path: Path, step: dict, words: str
) -> None:
    from qingliang.platform.control.demos import select
    from qingliang.platform.errors import ManifestError

    root = _demo_file(tmp_path, [step])
    with pytest.raises(ManifestError) as info:
        select(["gov"], tmp_path)
    assert str(root / "demo.yaml") in str(info.value)
    assert words in str(info.value)


def test_every_console_step_is_a_step_of_the_walkthrough_readme_or_demo_up() -> None:
    """A search or agent step is a command of the bundle's README or its `try` lines (the
    same knowledge base or graph, text and picture): the console and the CLI walk the
    same path."""
    import re

    from qingliang.platform.control.demos import select

    for b in select(["all"], DOMAINS):
        text = (b.root / "README.md").read_text(encoding="utf-8").replace("\\\n", " ")
        commands = [" ".join(line.split()) for line in [*text.splitlines(), *b.spec.try_]]
        for step in b.spec.console:
            if step.kind == "search":
                want = [f"kb search {step.kb}", step.query or "--image", step.image or ""]
            elif step.kind == "agent":
                want = [f"agents run {step.graph}", f'"{step.input}"', step.attachment or ""]
            else:
                continue
            found = [c for c in commands if all(w in c for w in want)]
            assert found, f"{b.name}: {step.kind} step {step.title!r} is not in the walkthrough"
            if step.kind == "agent" and not step.attachment:
                assert any("--attach" not in c for c in found)
            limit = re.search(r"-k (\d+)", found[0])
            assert step.limit == (int(limit[1]) if limit else None), found[0]

"""The platform on a real two-node Ray cluster on this machine (tests/integration/_multinode.py):
a head, and a worker node that alone offers the custom resource ``accel``. `qingliang up
--ray-address` joins it with the laptop's manifest of the tiny Llama plus
``placement.resources: {accel: 1}``; its replica must run on the worker node and answer
through the gateway. Then the worker node is killed (its processes only): the deployment
must show it is unavailable, and recover and answer once the worker node is back.
`qingliang down` removes the platform and leaves both Ray nodes running.

Where a PostgreSQL server can run (tests/_postgres.py), the cluster runs as a cluster should:
every node and the CLI get ``QINGLIANG_DATABASE_URL`` of one fresh database, and the test
checks the platform's state and keys are there and in no SQLite file of the data directory
(the gateway on the cluster checks the CLI's key from it).

Times (how long the node took to be declared dead, the recovery) are printed, not asserted.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from _multinode import (
    DASHBOARD,
    GCS,
    HEAD_PORTS,
    HTTP_PORT,
    TwoNodes,
    actors,
    alive_nodes_with,
    serve_applications,
)
from _platform import tiny_manifest

from bench._load import non_loopback_listeners, platform_env, qingliang_cli
from qingliang.platform.control import cluster
from qingliang.platform.control.apply import Controller

pytestmark = pytest.mark.integration

APP = "tiny-accel"
#: The CLI's environment: the platform's HTTP port; the other ports deliberately not the
#: cluster's (free ones), so the test shows `up` finds the dashboard and metrics port from
#: the cluster and every later command from the run file.
PORTS = {"http": HTTP_PORT, "dashboard": 28399, "metrics": 28398, "ray": 28397}


@dataclass
class Cluster:
    nodes: TwoNodes
    home: Path
    env: dict[str, str]
    key: str
    #: The shared database's URL, or None where no PostgreSQL server could run.
    database: str | None = None

    @property
    def ctl(self) -> Controller:
        return Controller(cluster.settings_for(self.home))

    def chat(self, timeout_s: float = 120) -> httpx.Response:
        return httpx.post(
            f"http://127.0.0.1:{HTTP_PORT}/v1/chat/completions",
            headers={"Authorization": f"Bearer {self.key}"},
            json={"model": APP, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 8},
            timeout=timeout_s,
        )

    def status(self) -> tuple[str, str]:
        """(status, message) of the deployment as `qingliang get` shows it."""
        row = next(r for r in self.ctl.get(live=True) if r["name"] == APP)
        return row["status"], row["message"]


def _qingliang(env: dict[str, str], *args: str, timeout_s: float = 900) -> str:
    done = subprocess.run(
        [*qingliang_cli(), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout_s,
    )
    assert done.returncode == 0, f"qingliang {' '.join(args)}:\n{done.stdout}\n{done.stderr}"
    return done.stdout


def _accel_manifest(models: Path, dest: Path) -> Path:
    """The laptop's manifest of the tiny Llama, placed where ``accel`` is."""
    body = tiny_manifest(APP, models / "tiny").replace(
        "placement: {cpus: 0.5}", "placement: {cpus: 0.5, resources: {accel: 1}}"
    )
    assert "resources: {accel: 1}" in body
    path = dest / f"{APP}.yaml"
    path.write_text(body)
    return path


@pytest.fixture(scope="module")
def shared_database(request: pytest.FixtureRequest) -> Iterator[str | None]:
    """A fresh PostgreSQL database for the cluster's state, or None (SQLite on the data
    directory, as on a laptop) where no server can run here."""
    from _postgres import ENV_DSN, create_database, drop_database, find_bindir

    if find_bindir() is None and not os.environ.get(ENV_DSN):
        print("\nno PostgreSQL server here: the cluster's state stays in SQLite files")
        yield None
        return
    dsn = request.getfixturevalue("postgres_dsn")
    url = create_database(dsn, "multinode")
    yield url
    drop_database(dsn, "multinode")


@pytest.fixture(scope="module")
def two_nodes(
    tmp_path_factory: pytest.TempPathFactory, tiny_models: Path, shared_database: str | None
) -> Iterator[Cluster]:
    root = tmp_path_factory.mktemp("multinode")
    home = root / "home"
    shared = {"QINGLIANG_DATABASE_URL": shared_database} if shared_database else {}
    env = platform_env(home, PORTS, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", **shared)
    nodes = TwoNodes.create(root, env=shared)
    # This process reads the deployments' status as `qingliang get` does: the same database.
    patch = pytest.MonkeyPatch()
    for var, value in shared.items():
        patch.setenv(var, value)
    try:
        nodes.start_head()
        nodes.start_worker()
        manifest = _accel_manifest(tiny_models, root)
        started = time.monotonic()
        out = _qingliang(env, "up", "--ray-address", GCS, "-f", str(manifest), "--timeout", "600")
        print(f"\n`qingliang up --ray-address` on two nodes: {time.monotonic() - started:.1f} s")
        assert f"Joined the Ray cluster at {GCS}" in out
        run = json.loads((home / "run.json").read_text())
        assert run["joined"] and run["pid"] == 0
        assert run["dashboard_url"] == DASHBOARD
        assert run["metrics_port"] == HEAD_PORTS["metrics"]
        key = (home / "api-key").read_text().strip()
        yield Cluster(nodes, home, env, key, shared_database)
        out = _qingliang(env, "down", timeout_s=180)
        assert "Ray keeps running" in out
        # `down` left both nodes running: only the platform's applications are gone.
        assert nodes.head.alive()
        assert nodes.worker.proc is None or nodes.worker.alive()
        assert serve_applications() == {}
    finally:
        patch.undo()
        if (home / "run.json").exists():
            subprocess.run([*qingliang_cli(), "down"], env=env, timeout=180, check=False)
        nodes.stop()


def _worker_node_id() -> str:
    (node,) = alive_nodes_with("accel")
    return node["node_id"]


def _replica_node() -> str:
    """The node id of the deployment's replica, from Ray's state API."""
    (replica,) = actors(f"ServeReplica:{APP}:")
    return replica["node_id"]


def test_the_deployment_lands_on_the_worker_node_and_answers(two_nodes: Cluster) -> None:
    worker = _worker_node_id()
    head = next(n for n in alive_nodes_with("CPU") if n["is_head_node"])
    assert "accel" not in head["resources_total"]
    assert _replica_node() == worker
    # Serve agrees: its one running replica is on the worker node.
    (replica,) = serve_applications()[APP]["deployments"]["ModelServer"]["replicas"]
    assert replica["node_id"] == worker and replica["state"] == "RUNNING"
    assert two_nodes.status()[0] == "RUNNING"
    assert f"joined the Ray cluster at {GCS}" in _qingliang(two_nodes.env, "status")
    r = two_nodes.chat()
    assert r.status_code == 200, r.text
    assert r.json()["choices"][0]["message"]["content"]


def test_the_state_is_in_the_shared_database(two_nodes: Cluster) -> None:
    if two_nodes.database is None:
        pytest.skip("no PostgreSQL server here (tests/_postgres.py says how to install one)")
    import psycopg

    # The gateway on the cluster answered the CLI's key (the first test); both are here:
    with psycopg.connect(two_nodes.database) as conn:
        kinds = dict(conn.execute("SELECT name, kind FROM manifests").fetchall())
        keys = [row[0] for row in conn.execute("SELECT name FROM api_keys").fetchall()]
    assert kinds.get(APP) == "ModelDeployment", kinds
    assert keys, "no API key in the shared database"
    # ... and nothing of it in a SQLite file of the data directory.
    assert sorted(p.name for p in two_nodes.home.rglob("*.sqlite")) == []


def test_no_process_of_either_node_listens_beyond_loopback(two_nodes: Cluster) -> None:
    pids = two_nodes.nodes.pids()
    worker_pids = two_nodes.nodes.worker.pids()
    titles = {pid: Path(f"/proc/{pid}/cmdline").read_bytes()[:60] for pid in worker_pids}
    assert any(t.startswith(b"ray::ServeReplica") for t in titles.values()), titles
    assert non_loopback_listeners(pids) == []


def test_the_deployment_recovers_when_the_worker_node_returns(two_nodes: Cluster) -> None:
    nodes = two_nodes.nodes
    old_worker = _worker_node_id()
    killed = time.monotonic()
    nodes.worker.kill()
    # Ray declares the node dead after its health checks fail; Serve then reports the
    # deployment's replica gone and waits for a node with `accel`.
    status, message = _wait_for(
        lambda: (s := two_nodes.status())[0] != "RUNNING" and s,
        "the deployment to show the worker node is gone",
    )
    print(f"\nworker killed: {status} after {time.monotonic() - killed:.1f} s: {message[:300]}")
    assert status in ("DEPLOYING", "UNHEALTHY", "DEPLOY_FAILED"), (status, message)
    assert message
    _wait_for(lambda: not alive_nodes_with("accel"), "Ray to declare the worker node dead")
    print(f"worker node declared dead after {time.monotonic() - killed:.1f} s")
    # Serve keeps trying to start a replica no node can take: still not running.
    status, message = two_nodes.status()
    print(f"{status} after {time.monotonic() - killed:.1f} s: {message}")
    assert status in ("DEPLOYING", "UNHEALTHY", "DEPLOY_FAILED"), (status, message)
    try:
        outage = two_nodes.chat(timeout_s=15)
        print(f"a chat request meanwhile: HTTP {outage.status_code} {outage.text[:200]}")
    except httpx.TimeoutException:
        print("a chat request meanwhile: no answer within 15 s")

    restarted = time.monotonic()
    nodes.start_worker()
    _wait_for(lambda: two_nodes.status()[0] == "RUNNING", "the deployment to recover")
    r = _wait_for(lambda: (r := two_nodes.chat()).status_code == 200 and r, "an answer")
    print(f"recovered (answers again) {time.monotonic() - restarted:.1f} s after the restart")
    assert r.json()["choices"][0]["message"]["content"]
    new_worker = _worker_node_id()
    assert new_worker != old_worker
    assert _replica_node() == new_worker


def _wait_for(check, what: str, deadline_s: float = 420):
    """Poll ``check`` until it returns something true (a generous deadline, no timing)."""
    deadline = time.monotonic() + deadline_s
    last: object = None
    while time.monotonic() < deadline:
        try:
            value = check()
        except (httpx.HTTPError, StopIteration, KeyError, ValueError) as exc:
            value, last = None, exc
        if value:
            return value
        time.sleep(1)
    raise AssertionError(f"timed out waiting for {what} (last error: {last!r})")

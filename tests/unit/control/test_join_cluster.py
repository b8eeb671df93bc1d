"""Joining a Ray cluster the platform did not start (platform/control/join.py), and
leaving it: the run file, the refusals, and which Serve applications `down` removes.

The cluster is faked at its two boundaries only: whether its GCS answers and where its
dashboard is (``_answers``, ``_read_cluster``), and Serve's REST API (an httpx mock
transport). tests/integration/test_multinode.py runs the real thing on two Ray nodes.
"""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest
from typer.testing import CliRunner

from qingliang.platform.cli import _common
from qingliang.platform.control import cluster, join
from qingliang.platform.errors import ClusterError
from qingliang.platform.settings import Settings


def _app(import_path: str, name: str) -> dict:
    return {
        "status": "RUNNING",
        "deployed_app_config": {"name": name, "import_path": import_path, "args": {}},
    }


PLATFORM_APPS = {
    "qingliang-gateway": _app(
        "qingliang.platform.gateway.ingress:app_builder", "qingliang-gateway"
    ),
    "tiny": _app("qingliang.serving.deployments.model:app_builder", "tiny"),
}


class FakeServe:
    """Serve's REST API on a dashboard: GET the applications, PUT a config, DELETE all."""

    def __init__(self, apps: dict) -> None:
        self.apps = dict(apps)
        self.calls: list[tuple[str, dict | None]] = []

    def handler(self, request: httpx.Request) -> httpx.Response:
        assert request.url.path == "/api/serve/applications/"
        body = json.loads(request.content) if request.content else None
        self.calls.append((request.method, body))
        if request.method == "PUT":
            assert body is not None
            self.apps = {a["name"]: {"deployed_app_config": a} for a in body["applications"]}
        elif request.method == "DELETE":
            self.apps = {}
        return httpx.Response(200, json={"applications": self.apps})


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(home=tmp_path / "home")


@pytest.fixture
def serve(monkeypatch: pytest.MonkeyPatch) -> FakeServe:
    fake = FakeServe({})
    transport = httpx.MockTransport(fake.handler)
    monkeypatch.setattr(join, "_client", lambda timeout_s: httpx.Client(transport=transport))
    monkeypatch.setattr(join, "_answers", lambda host, port: True)
    monkeypatch.setattr(join, "_read_cluster", lambda gcs, host: (f"http://{host}:18265", 18080))
    # The joined dashboard "answers" for running(): its port is checked, not served.
    monkeypatch.setattr(cluster, "_port_open", lambda host, port: True)
    return fake


@pytest.mark.parametrize(
    ("address", "expected"),
    [
        ("10.0.0.5:6379", ("10.0.0.5", 6379)),
        (" head.example:6380 ", ("head.example", 6380)),
        ("[::1]:6379", ("::1", 6379)),
    ],
)
def test_a_gcs_address_is_host_and_port(address: str, expected: tuple[str, int]) -> None:
    assert join.parse_ray_address(address) == expected


@pytest.mark.parametrize(
    ("address", "says"),
    [
        ("http://10.0.0.5:8265", "is a URL"),
        ("ray://10.0.0.5:10001", "is a Ray Client address"),
        ("10.0.0.5", "has no valid host:port"),
        ("10.0.0.5:port", "has no valid host:port"),
        ("10.0.0.5:70000", "has no valid host:port"),
        (":6379", "has no valid host:port"),
    ],
)
def test_a_malformed_address_is_refused_saying_what_to_give(address: str, says: str) -> None:
    with pytest.raises(ClusterError) as err:
        join.parse_ray_address(address)
    assert says in str(err.value)
    assert "host:port" in str(err.value)


def test_joining_records_the_cluster_and_its_dashboard(settings: Settings, serve) -> None:
    info = join.join_cluster(settings, "127.0.0.1:28380")
    assert info.joined and info.pid == 0
    assert info.gcs_address == "127.0.0.1:28380"
    assert info.dashboard_url == "http://127.0.0.1:18265"
    assert info.metrics_port == 18080  # the head's metrics export port
    saved = json.loads(settings.run_file.read_text())
    assert saved["joined"] is True
    # Every later command reaches the joined cluster through the run file.
    assert cluster.running(settings) == info
    assert cluster.settings_for(settings.home).dashboard_port == 18265
    # Joining again is a no-op; `up` without an address then reuses it.
    assert join.join_cluster(settings, "127.0.0.1:28380") == info
    assert cluster.start_head(settings) == info


def test_the_cli_finds_the_joined_dashboard(
    settings: Settings, serve, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("QINGLIANG_HOME", str(settings.home))
    assert _common.load_settings().dashboard_port == Settings().dashboard_port
    join.join_cluster(settings, "127.0.0.1:28380")
    assert _common.load_settings().dashboard_port == 18265


def test_joining_another_cluster_needs_down_first(settings: Settings, serve) -> None:
    join.join_cluster(settings, "127.0.0.1:28380")
    with pytest.raises(
        ClusterError, match=r"already runs on the Ray cluster at 127\.0\.0\.1:28380"
    ):
        join.join_cluster(settings, "127.0.0.1:29999")


def test_a_cluster_that_does_not_answer_is_refused_and_nothing_recorded(
    settings: Settings, serve, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(join, "_answers", lambda host, port: False)
    with pytest.raises(ClusterError, match=r"no Ray cluster answers at 10\.9\.9\.9:6379"):
        join.join_cluster(settings, "10.9.9.9:6379")
    assert not settings.run_file.exists()


def test_a_cluster_serving_other_applications_is_refused(settings: Settings, serve) -> None:
    serve.apps = {**PLATFORM_APPS, "billing": _app("team.billing:app", "billing")}
    with pytest.raises(ClusterError, match=r"not Qingliang's \(billing\)"):
        join.join_cluster(settings, "127.0.0.1:28380")
    assert not settings.run_file.exists()


def test_leaving_removes_the_platforms_applications_and_stops_no_ray(
    settings: Settings, serve, monkeypatch: pytest.MonkeyPatch
) -> None:
    join.join_cluster(settings, "127.0.0.1:28380")
    serve.apps = dict(PLATFORM_APPS)
    killed: list = []
    monkeypatch.setattr(cluster.os, "killpg", lambda *a: killed.append(a))
    monkeypatch.setattr(cluster.os, "kill", lambda *a: killed.append(a))
    # stop_head never touches a Ray it did not start (pid 0 would be our own group).
    assert cluster.stop_head(settings) is False
    assert settings.run_file.exists()
    assert join.leave_cluster(settings) is True
    assert [m for m, _ in serve.calls if m != "GET"] == ["DELETE"]
    assert serve.apps == {}
    assert killed == []
    assert not settings.run_file.exists()
    assert join.leave_cluster(settings) is False


def test_leaving_keeps_applications_deployed_after_up_by_someone_else(
    settings: Settings, serve
) -> None:
    join.join_cluster(settings, "127.0.0.1:28380")
    serve.apps = {**PLATFORM_APPS, "billing": _app("team.billing:app", "billing")}
    assert join.leave_cluster(settings) is True
    puts = [body for m, body in serve.calls if m == "PUT"]
    assert puts and [a["name"] for a in puts[0]["applications"]] == ["billing"]
    assert set(serve.apps) == {"billing"}


def test_down_on_a_joined_cluster_says_ray_keeps_running(
    settings: Settings, serve, monkeypatch: pytest.MonkeyPatch
) -> None:
    from qingliang.platform.cli.main import app

    join.join_cluster(settings, "127.0.0.1:28380")
    serve.apps = dict(PLATFORM_APPS)
    monkeypatch.setenv("QINGLIANG_HOME", str(settings.home))
    result = CliRunner().invoke(app, ["down"])
    assert result.exit_code == 0, result.output
    assert "Ray keeps running" in result.output
    assert serve.apps == {}


def test_an_old_run_file_is_a_local_ray(settings: Settings) -> None:
    settings.home.mkdir(parents=True)
    old = {
        "pid": 1,
        "pgid": 1,
        "gcs_address": "127.0.0.1:6380",
        "dashboard_url": "http://127.0.0.1:8265",
        "metrics_port": 8080,
        "http_port": 8000,
        "temp_dir": "/tmp/x",
        "started_at": 0.0,
    }
    settings.run_file.write_text(json.dumps(old))
    info = cluster.RunInfo.load(settings.run_file)
    assert info is not None and info.joined is False


def test_a_cluster_node_gets_the_platforms_environment_with_multi_node_on() -> None:
    env = cluster.cluster_node_env()
    # Off (as for local Ray), `ray start --address` refuses to start a worker node.
    assert cluster.ray_env()[cluster.MULTI_NODE_ENV] == "0"
    assert env[cluster.MULTI_NODE_ENV] == "1"
    rest = {k: v for k, v in env.items() if k != cluster.MULTI_NODE_ENV}
    assert rest == {k: v for k, v in cluster.ray_env().items() if k != cluster.MULTI_NODE_ENV}

"""``qingliang logs DEPLOYMENT`` (issue 19): locally through the Ray dashboard's log API,
remotely through the gateway's ``GET /v1/deployments/{name}/logs``.

The Ray dashboard is the one fake, at its HTTP boundary (an ``httpx.MockTransport`` in
:data:`qingliang.platform.control.logs.transport`): Serve's application details and the
log files of two replicas. The remote path runs the real gateway app with an admin key,
reached through a ``TestClient`` (no socket). tests/integration/test_vllm_options.py reads
a real replica's log.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from typer.testing import CliRunner

from qingliang.platform.cli import _remote
from qingliang.platform.cli.main import app
from qingliang.platform.control import logs as logs_mod
from qingliang.platform.control.cluster import RunInfo
from qingliang.platform.settings import Settings
from tests.unit.cli.test_cli_remote import AppTransport, Models

runner = CliRunner()

REPLICAS = [
    {"replica_id": "tiny#ModelServer#aaa111", "actor_id": "act-a", "node_id": "n1",
     "state": "RUNNING", "pid": 11},
    {"replica_id": "tiny#ModelServer#bbb222", "actor_id": "act-b", "node_id": "n2",
     "state": "RUNNING", "pid": 22},
]  # fmt: skip
FILES = {
    ("act-a", "err"): [f"a: line {i}" for i in range(1, 11)],
    ("act-b", "err"): [f"b: line {i}" for i in range(1, 11)],
    ("act-a", "out"): ["a: printed"],
    ("act-b", "out"): ["b: printed"],
}


class Dashboard:
    """The Ray dashboard's Serve and log APIs, as far as ``qingliang logs`` reads them."""

    def __init__(self) -> None:
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        path, q = request.url.path, request.url.params
        if path == "/api/serve/applications/":
            tiny = {"ModelServer": {"replicas": REPLICAS}}
            return httpx.Response(200, json={"applications": {
                "tiny": {"status": "RUNNING", "deployments": tiny},
                "qingliang-gateway": {"status": "RUNNING", "deployments": {}},
            }})  # fmt: skip
        if path in ("/api/v0/logs/file", "/api/v0/logs/stream"):
            lines = FILES.get((q["actor_id"], q["suffix"]))
            if lines is None:
                return httpx.Response(500, text="no such actor")
            n = int(q["lines"])
            shown = lines if n == -1 else lines[-n:]
            return httpx.Response(200, text="".join(f"{line}\n" for line in shown))
        return httpx.Response(404)


@pytest.fixture
def dashboard(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Dashboard:
    """A running platform on a fresh QINGLIANG_HOME, its dashboard faked."""
    fake = Dashboard()
    monkeypatch.setattr(logs_mod, "transport", httpx.MockTransport(fake))
    monkeypatch.setenv("QINGLIANG_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("QINGLIANG_URL", raising=False)
    running(Settings(home=tmp_path / "home"))
    return fake


def running(settings: Settings) -> None:
    url = f"http://{settings.host}:{settings.dashboard_port}"
    RunInfo(1, 1, "127.0.0.1:6379", url, 8080, 8000, "/tmp/ray", time.time()).save(
        settings.run_file
    )


def cli(*args: str) -> Any:
    result = runner.invoke(app, list(args))
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result


def test_the_last_lines_of_every_replica_with_its_id(dashboard: Dashboard) -> None:
    r = cli("logs", "tiny", "--tail", "3")
    assert r.exit_code == 0, r.output
    assert r.stdout.splitlines() == [
        "(tiny#ModelServer#aaa111) a: line 8",
        "(tiny#ModelServer#aaa111) a: line 9",
        "(tiny#ModelServer#aaa111) a: line 10",
        "(tiny#ModelServer#bbb222) b: line 8",
        "(tiny#ModelServer#bbb222) b: line 9",
        "(tiny#ModelServer#bbb222) b: line 10",
    ]
    # found by actor on the node that holds it, stderr (where every log line goes)
    asked = [dict(q.url.params) for q in dashboard.requests if "logs" in q.url.path]
    assert asked[0] == {"actor_id": "act-a", "suffix": "err", "lines": "3", "node_id": "n1"}


def test_one_replica_by_the_end_of_its_id_and_the_whole_log(dashboard: Dashboard) -> None:
    r = cli("logs", "tiny", "--replica", "bbb222", "--tail", "0")
    assert r.exit_code == 0, r.output
    assert r.stdout.splitlines() == [f"b: line {i}" for i in range(1, 11)]  # no prefix
    assert cli("logs", "tiny", "--replica", "aaa111", "--stdout").stdout == "a: printed\n"


def test_follow_streams_the_log(dashboard: Dashboard) -> None:
    r = cli("logs", "tiny", "--follow", "--replica", "aaa111", "-n", "2")
    assert r.exit_code == 0, r.output
    assert r.stdout.splitlines() == ["a: line 9", "a: line 10"]
    stream = [q for q in dashboard.requests if q.url.path == "/api/v0/logs/stream"]
    assert stream and stream[0].url.params["interval"] == "0.5"


def test_follow_of_several_replicas_interleaves_them(dashboard: Dashboard) -> None:
    r = cli("logs", "tiny", "-f", "-n", "1")
    assert r.exit_code == 0, r.output
    assert sorted(r.stdout.splitlines()) == [
        "(tiny#ModelServer#aaa111) a: line 10",
        "(tiny#ModelServer#bbb222) b: line 10",
    ]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["tny"], "unknown deployment 'tny' (did you mean 'tiny'?); deployments: "
                  "qingliang-gateway, tiny"),
        (["tiny", "--replica", "ccc333"], "'ccc333' is not a replica of 'tiny'; replicas: "
                                          "tiny#ModelServer#aaa111, tiny#ModelServer#bbb222"),
        (["tiny", "--replica", "tiny#"], "matches several replicas"),
        (["qingliang-gateway"], "deployment 'qingliang-gateway' has no replica running"),
    ],
)  # fmt: skip
def test_what_does_not_exist_is_named(dashboard: Dashboard, args: list[str], message: str) -> None:
    r = cli("logs", *args)
    assert r.exit_code == 1
    assert message in " ".join(r.stderr.split())


def test_a_negative_tail_is_refused(dashboard: Dashboard) -> None:
    r = cli("logs", "tiny", "--tail", "-1")
    assert r.exit_code == 2 and "'--tail'" in r.output and "greater than or equal to" in r.output


def test_no_platform_running_here(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("QINGLIANG_HOME", str(tmp_path / "empty"))
    monkeypatch.delenv("QINGLIANG_URL", raising=False)
    r = cli("logs", "tiny")
    assert r.exit_code == 1
    assert "no platform is running" in r.stderr and "qingliang up" in r.stderr


# ---------------------------------------------------------------- remote (--server)


# The gateway's fake model backend and the CLI-client-to-app transport: test_cli_remote's.


@pytest.fixture
def remote(dashboard: Dashboard, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """The real gateway app over a running platform's data directory, an admin key."""
    from qingliang.platform.gateway.app import create_app
    from qingliang.platform.gateway.auth.keys import KeyAuth
    from qingliang.platform.gateway.operator.operations import Operations
    from qingliang.platform.storage.keys import KeyStore

    settings = Settings(home=tmp_path / "server")
    running(settings)
    admin = KeyStore(settings.state_db).create("operator", scopes=["admin"])[1]
    reader = KeyStore(settings.state_db).create("reader", scopes=["inference"])[1]
    ops = Operations(settings.home, serve_details=lambda: {}, settings=lambda: settings)
    gateway = create_app(Models(), None, KeyAuth(settings.state_db, True), ops=ops)  # type: ignore[arg-type]
    monkeypatch.setattr(_remote, "transport", AppTransport(gateway))
    monkeypatch.setenv("QINGLIANG_URL", "http://platform.test:8000")
    monkeypatch.setenv("QINGLIANG_API_KEY", admin)
    yield reader
    _remote.configure(None, None)


def test_remote_logs_are_the_same_lines(remote: str, monkeypatch: pytest.MonkeyPatch) -> None:
    r = cli("logs", "tiny", "--tail", "2")
    assert r.exit_code == 0, r.output
    assert r.stdout.splitlines() == [
        "(tiny#ModelServer#aaa111) a: line 9",
        "(tiny#ModelServer#aaa111) a: line 10",
        "(tiny#ModelServer#bbb222) b: line 9",
        "(tiny#ModelServer#bbb222) b: line 10",
    ]
    assert cli("logs", "tiny", "--replica", "aaa111", "-f", "-n", "1").stdout == "a: line 10\n"
    r = cli("logs", "tny")
    assert r.exit_code == 1
    assert "HTTP 404" in r.stderr and "(did you mean 'tiny'?)" in r.stderr
    monkeypatch.setenv("QINGLIANG_API_KEY", remote)  # an inference key: not an admin's
    r = cli("logs", "tiny")
    assert r.exit_code == 1 and "HTTP 403" in r.stderr

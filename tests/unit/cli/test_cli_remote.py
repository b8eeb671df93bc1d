"""The remote CLI (``qingliang --server URL …``, issue 19): the commands against the real
gateway app, built over a platform's data directory, with an admin key.

The CLI's HTTP client reaches the app through a FastAPI ``TestClient`` (no socket); the
Controller behind the admin routes is the real one, with the fakes at its boundaries
only: Serve's REST API (``ServeRestDeployer``: accepts a config, reports every applied
application RUNNING) and the model resolver. The CLI's own local path runs the same
Controller on a second data directory, so ``--json`` is compared local vs remote.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from qingliang.platform.cli import _remote
from qingliang.platform.cli.main import app
from qingliang.platform.gateway.app import create_app
from qingliang.platform.gateway.auth.keys import KeyAuth
from qingliang.platform.gateway.operator.operations import Operations
from qingliang.platform.settings import Settings
from qingliang.platform.storage.keys import KeyStore
from qingliang.serving.plan import HardwareProfile
from qingliang.serving.traffic import ModelEntry

runner = CliRunner()
SERVER = "http://platform.test:8000"


class Models:
    def models(self) -> list[ModelEntry]:
        return []

    async def ready(self) -> dict[str, str]:
        return {}

    def rejected(self, *args: Any) -> None:
        pass


class AppTransport(httpx.BaseTransport):
    """Hands each request of the CLI's client to the app (through a ``TestClient``)."""

    def __init__(self, gateway: Any) -> None:
        self.client = TestClient(gateway)

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        r = self.client.request(
            request.method,
            request.url.raw_path.decode("ascii"),
            headers={k: v for k, v in request.headers.items() if k.lower() != "host"},
            content=request.read(),
        )
        return httpx.Response(r.status_code, headers=r.headers, content=r.content)


class Serve:
    """Serve's REST API (the Controller's boundary): keeps the config it is given and
    reports each of its applications RUNNING."""

    configs: list[dict] = []

    def __init__(self, dashboard_url: str, timeout_s: float = 30) -> None:
        pass

    def apply_config(self, config: dict) -> None:
        Serve.configs.append(config)

    def statuses(self) -> dict[str, tuple[str, str]]:
        apps = Serve.configs[-1]["applications"] if Serve.configs else []
        return {a["name"]: ("RUNNING", "") for a in apps}


def manifest(path: Path, name: str = "tiny") -> Path:
    doc = {
        "apiVersion": "qingliang.io/v1",
        "kind": "ModelDeployment",
        "metadata": {"name": name},
        "spec": {"model": {"source": "/models/tiny"}},
    }
    path.write_text(yaml.safe_dump(doc))
    return path


@pytest.fixture
def platform(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    """A platform's data directory served by the real gateway app; the CLI points at it
    with --server, and its own QINGLIANG_HOME is another (empty) directory."""
    import qingliang.platform.control.apply as apply_mod

    Serve.configs = []
    monkeypatch.setattr(apply_mod, "ServeRestDeployer", Serve)
    monkeypatch.setattr(apply_mod, "_default_resolver", lambda s, c, p: tmp_path / "weights")
    monkeypatch.setattr(
        HardwareProfile, "detect", lambda: HardwareProfile(cpu_isa="avx2", vllm=True)
    )
    home = tmp_path / "server"
    settings = Settings(home=home)
    key = KeyStore(settings.state_db).create("operator", scopes=["admin"])[1]
    ops = Operations(home, serve_details=lambda: {}, settings=lambda: settings)
    gateway = create_app(Models(), None, KeyAuth(settings.state_db, True), ops=ops)  # type: ignore[arg-type]
    monkeypatch.setattr(_remote, "transport", AppTransport(gateway))
    monkeypatch.setenv("QINGLIANG_HOME", str(tmp_path / "client"))
    monkeypatch.delenv("QINGLIANG_URL", raising=False)
    monkeypatch.setenv("QINGLIANG_API_KEY", key)
    yield home
    _remote.configure(None, None)


def cli(*args: str, server: str | None = SERVER) -> Any:
    result = runner.invoke(app, [*(["--server", server] if server else []), *args])
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result


def test_apply_get_delete_over_the_api(platform: Path, tmp_path: Path) -> None:
    path = manifest(tmp_path / "tiny.yaml")
    r = cli("apply", "-f", str(path))
    assert r.exit_code == 0, r.output
    assert "ModelDeployment/tiny: create" in r.output
    assert "tiny: RUNNING" in r.output
    # Applied on the server's data directory, by its Controller; nothing here.
    from qingliang.platform.storage.state import StateStore

    assert [row.name for row in StateStore(platform / "state.sqlite").list("ModelDeployment")] == [
        "tiny"
    ]
    assert not (tmp_path / "client" / "state.sqlite").exists()
    got = json.loads(cli("get", "--json").stdout)
    assert [(g["name"], g["status"], g["generation"]) for g in got] == [("tiny", "RUNNING", 1)]
    again = cli("diff", "-f", str(path))
    assert "ModelDeployment/tiny: unchanged" in again.output
    r = cli("delete", "tiny")
    assert r.exit_code == 0 and "ModelDeployment/tiny: deleted" in r.output
    assert json.loads(cli("get", "--json").stdout) == []
    r = cli("delete", "tiny")
    assert (
        r.exit_code == 1
        and "HTTP 404" in r.output
        and "no ModelDeployment named 'tiny'" in r.output
    )


def test_get_json_is_the_same_locally_and_remotely(platform: Path, tmp_path: Path) -> None:
    path = manifest(tmp_path / "tiny.yaml")
    assert cli("apply", "-f", str(path)).exit_code == 0
    assert cli("apply", "-f", str(path), server=None).exit_code == 0  # the client's own home
    remote = json.loads(cli("get", "--json").stdout)
    local = json.loads(cli("get", "--json", server=None).stdout)
    assert [set(r) for r in remote] == [set(r) for r in local]
    drop = {"applied_at"}
    assert [{k: v for k, v in r.items() if k not in drop} for r in remote] == [
        {k: v for k, v in r.items() if k not in drop} for r in local
    ]


def test_a_bad_manifest_is_named_here_and_nothing_is_sent(platform: Path, tmp_path: Path) -> None:
    bad = manifest(tmp_path / "bad.yaml")
    doc = yaml.safe_load(bad.read_text())
    doc["spec"]["engine"] = {"max_model_lenn": 4}
    bad.write_text(yaml.safe_dump(doc))
    r = cli("apply", "-f", str(bad))
    assert r.exit_code == 1
    assert "spec.engine.max_model_lenn" in r.output and "did you mean" in r.output
    assert Serve.configs == []


def test_keys_create_list_revoke_over_the_api(platform: Path) -> None:
    r = cli("keys", "create", "ci", "--scope", "inference")
    assert r.exit_code == 0, r.output
    secret = r.stdout.strip().splitlines()[-1]
    assert KeyStore(platform / "state.sqlite").verify(secret) is not None
    rows = json.loads(cli("keys", "list", "--json").stdout)
    assert {r["name"] for r in rows} == {"operator", "ci"}
    r = cli("keys", "limits", "ci", "--rpm", "30")
    assert r.exit_code == 0 and "30 requests/min" in r.output
    r = cli("keys", "revoke", "ci")
    assert r.exit_code == 0 and "revoked" in r.output
    assert KeyStore(platform / "state.sqlite").verify(secret) is None
    # The local listing has the same shape.
    KeyStore(Settings().state_db).create("here", scopes=["inference"])
    local = json.loads(cli("keys", "list", "--json", server=None).stdout)
    assert set(local[0]) == set(rows[0])


def test_a_wrong_key_is_a_401_naming_the_variable(
    platform: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("QINGLIANG_API_KEY", "ql-000000000000-nope")
    r = cli("get")
    assert r.exit_code == 1
    assert "HTTP 401" in r.output and "QINGLIANG_API_KEY" in r.output
    assert SERVER in r.output.replace("\n", "")


def test_an_unreachable_server_names_the_url_and_the_cause(
    platform: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_remote, "transport", None)
    r = cli("keys", "list", server="http://127.0.0.1:9")
    assert r.exit_code == 1
    out = " ".join(r.output.split())
    assert "cannot reach the platform at http://127.0.0.1:9" in out
    assert "refused" in out.lower()


def test_env_url_works_like_the_option(platform: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("QINGLIANG_URL", SERVER + "/v1/")
    r = cli("status", "--json", server=None)
    # The platform answered, though it has no run file (as on a KubeRay cluster).
    assert r.exit_code == 0, r.output
    remote = json.loads(r.stdout)
    assert remote["running"] is True and remote["home"] == str(platform)
    monkeypatch.delenv("QINGLIANG_URL")
    r = cli("status", "--json", server=None)
    assert r.exit_code == 3  # nothing runs on this side
    local = json.loads(r.stdout)
    assert local["running"] is False and set(local) == set(remote)


def test_local_only_commands_say_so(platform: Path, tmp_path: Path) -> None:
    r = cli("up")
    assert r.exit_code == 1
    assert "works only on this machine" in r.output and SERVER in r.output.replace("\n", "")
    r = cli("data", "versions", "x")
    assert r.exit_code == 1 and "not available against --server" in r.output
    r = cli("finetune", "run", "-f", str(tmp_path / "job.yaml"))
    assert r.exit_code == 1 and "pipelines run" in r.output


def test_registry_and_conversations_over_the_api(platform: Path) -> None:
    r = cli("registry", "adapters", "--json")
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout) == json.loads(
        cli("registry", "adapters", "--json", server=None).stdout
    )
    r = cli("registry", "adapters", "nope")
    assert r.exit_code == 1 and "HTTP 404" in r.output
    r = cli("conversations", "count", "--json")
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout) == {"count": 0}
    r = cli("conversations", "export", "--days", "7", "--tenant", "city-a")
    assert r.exit_code == 0 and "exported 0 conversation(s)" in r.output
    r = cli("conversations", "purge", "--older-than-days", "90")
    assert r.exit_code == 0 and "purged 0 conversation(s)" in r.output


def test_version_and_completion() -> None:
    r = runner.invoke(app, ["--version"])
    assert r.exit_code == 0 and r.stdout.startswith("qingliang ")
    assert "ray " in r.stdout and "vllm " in r.stdout
    out = runner.invoke(app, ["--help"]).output
    assert "--server" in out and "--install-completion" in out and "QINGLIANG_URL" in out


def test_a_server_that_is_not_a_url_is_refused() -> None:
    r = cli("get", server="platform.test")
    assert r.exit_code == 1 and "is not a URL" in r.output


def test_adapters_traffic_and_alias_over_the_api(platform: Path, tmp_path: Path) -> None:
    adapter = tmp_path / "faq"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text('{"r": 8}')
    doc = yaml.safe_load(manifest(tmp_path / "tiny.yaml").read_text())
    doc["spec"]["lora"] = {"adapters": {"faq": str(adapter)}}
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(doc))
    assert cli("apply", "-f", str(tmp_path / "tiny.yaml")).exit_code == 0
    r = cli("adapters", "traffic", "tiny", "faq=25%")
    assert r.exit_code == 0 and "tiny: faq 25%, base 75%" in r.output
    r = cli("adapters", "alias", "tiny", "stable", "faq=1")
    assert r.exit_code == 0 and "tiny:stable: faq 100%" in r.output
    (row,) = json.loads(cli("get", "--json").stdout)
    assert row["traffic"] == {"faq": 0.25} and row["aliases"] == {"stable": {"faq": 1.0}}
    r = cli("adapters", "traffic", "tiny", "nope=0.5")
    assert r.exit_code == 1 and "HTTP 400" in r.output and "nope" in r.output


def test_the_admin_routes_are_documented(platform: Path) -> None:
    from qingliang.platform.gateway.auth.scopes import ROUTES
    from qingliang.platform.gateway.routes import admin

    doc = (Path(__file__).resolve().parents[3] / "docs" / "console-api.md").read_text()
    routes = [
        line.split()[:2]
        for line in (admin.__doc__ or "").splitlines()
        if line.strip().startswith(("GET ", "POST ", "PUT ", "DELETE "))
    ]
    assert len(routes) == 16
    gateway = create_app(
        Models(),  # type: ignore[arg-type]
        None,
        KeyAuth(platform / "state.sqlite", True),
        ops=Operations(platform, serve_details=lambda: {}),
    )
    spec = gateway.openapi()
    for method, path in routes:
        template = path.split("?")[0].replace("{adapters|jobs|datasets}", "{what}")
        assert ROUTES[(method, template)].describe().startswith("admin"), template
        assert method.lower() in spec["paths"][template], template
        assert template.split("{")[0].rstrip("/") in doc, template
    for body in admin.ADMIN_BODIES:
        assert body.__name__ in spec["components"]["schemas"]


def test_a_replica_without_a_run_file_configures_serve_through_rays_dashboard(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On KubeRay there is no run file: the admin routes take the dashboard Ray knows."""
    import sys
    import types

    from qingliang.platform.gateway.operator.admin import PlatformAdmin

    ray = types.ModuleType("ray")
    ray.is_initialized = lambda: True  # type: ignore[attr-defined]
    worker = types.ModuleType("ray._private.worker")
    worker.get_dashboard_url = lambda: "10.1.2.3:8265"  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "ray", ray)
    monkeypatch.setitem(sys.modules, "ray._private", types.ModuleType("ray._private"))
    monkeypatch.setitem(sys.modules, "ray._private.worker", worker)
    settings = PlatformAdmin(tmp_path)._settings()
    assert (settings.host, settings.dashboard_port) == ("10.1.2.3", 8265)
    worker.get_dashboard_url = lambda: ""  # type: ignore[attr-defined]
    assert PlatformAdmin(tmp_path)._settings().host == "127.0.0.1"


def test_a_relative_path_is_refused_before_anything_is_sent(platform: Path, tmp_path: Path) -> None:
    kb = {
        "apiVersion": "qingliang.io/v1",
        "kind": "KnowledgeBase",
        "metadata": {"name": "docs"},
        "spec": {"sources": [{"folder": "docs"}]},
    }
    (tmp_path / "docs").mkdir()
    (tmp_path / "kb.yaml").write_text(yaml.safe_dump(kb))
    r = cli("apply", "-f", str(tmp_path / "kb.yaml"))
    assert r.exit_code == 1
    out = " ".join(r.output.split())
    assert "spec.sources[0].folder 'docs'" in out and "absolute path" in out
    from qingliang.platform.storage.state import StateStore

    assert StateStore(platform / "state.sqlite").list("KnowledgeBase") == []

"""Controller: apply / diff / delete / set_adapter / wait over a fake Deployer and resolver.

The state store is the real SQLite one (under tmp_path); the Ray Serve side is a fake
``Deployer`` that records the declarative configs it is given.
"""

from __future__ import annotations

import copy
import json
import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import yaml

from qingliang.platform.control import apply as control
from qingliang.platform.control.apply import Controller
from qingliang.platform.control.deployer import ServeRestDeployer
from qingliang.platform.control.diff import Change
from qingliang.platform.errors import (
    BadRequest,
    ClusterError,
    ManifestError,
    ModelSourceError,
    NotFound,
)
from qingliang.platform.settings import Settings
from qingliang.serving.plan import DeploymentPlan, HardwareProfile

GATEWAY_IMPORT = "qingliang.platform.gateway.ingress:app_builder"
MODEL_IMPORT = "qingliang.serving.deployments.model:app_builder"


class FakeDeployer:
    """Records every config it accepts; ``error`` makes it refuse the next ones."""

    def __init__(self) -> None:
        self.configs: list[dict] = []
        self.attempts = 0
        self.error: ClusterError | None = None
        self.status: dict[str, list[tuple[str, str]]] = {}  # name -> statuses, last repeats

    def apply_config(self, config: dict) -> None:
        self.attempts += 1
        json.dumps(config)  # it travels to the dashboard as JSON
        if self.error is not None:
            raise self.error
        self.configs.append(copy.deepcopy(config))

    def statuses(self) -> dict[str, tuple[str, str]]:
        return {n: seq.pop(0) if len(seq) > 1 else seq[0] for n, seq in self.status.items()}

    @property
    def last(self) -> dict:
        return self.configs[-1]

    def app(self, name: str) -> dict:
        (app,) = [a for a in self.last["applications"] if a["name"] == name]
        return app

    def model_apps(self) -> list[str]:
        return [a["name"] for a in self.last["applications"][1:]]


class FakeResolver:
    """Resolves every source to a folder under tmp_path; ``corrupt:`` ones fail."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.calls: list[tuple[str, Path, bool]] = []

    def __call__(self, source: str, cache: Path, progress: bool) -> Path:
        self.calls.append((source, cache, progress))
        if "corrupt" in source:
            raise ModelSourceError(f"{source}: sha256 mismatch")
        return self.root / "weights" / Path(source).name


def manifest(name: str, source: str = "/models/tiny", **spec: Any) -> str:
    doc = {
        "apiVersion": "qingliang.io/v1",
        "kind": "ModelDeployment",
        "metadata": {"name": name},
        "spec": {"model": {"source": source}, **spec},
    }
    return yaml.safe_dump(doc)


def write(folder: Path, filename: str, text: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / filename
    path.write_text(text)
    return path


def adapter_dir(root: Path, name: str) -> str:
    path = root / "adapters" / name
    path.mkdir(parents=True, exist_ok=True)
    (path / "adapter_config.json").write_text('{"r": 8}')
    return str(path)


def snapshot(db: Path) -> tuple[list[tuple], bytes]:
    """Every stored row as SQLite holds it, and the database files' bytes."""
    conn = sqlite3.connect(db)
    try:
        rows = conn.execute("SELECT * FROM manifests ORDER BY kind, name").fetchall()
    finally:
        conn.close()
    files = b"".join(p.read_bytes() for p in sorted(db.parent.glob(db.name + "*")))
    return rows, files


@pytest.fixture(autouse=True)
def sleeps(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """``wait``'s sleeps, recorded instead of slept: each advances a fake clock."""
    calls: list[float] = []
    start = time.monotonic()

    def monotonic() -> float:
        return start + sum(calls)

    monkeypatch.setattr(control, "time", SimpleNamespace(monotonic=monotonic, sleep=calls.append))
    return calls


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(home=tmp_path / "home")


@pytest.fixture
def deployer() -> FakeDeployer:
    return FakeDeployer()


@pytest.fixture
def resolver(tmp_path: Path) -> FakeResolver:
    return FakeResolver(tmp_path)


@pytest.fixture
def ctl(settings: Settings, deployer: FakeDeployer, resolver: FakeResolver) -> Controller:
    return Controller(
        settings,
        deployer=deployer,
        profile=HardwareProfile(cpu_isa="avx2", vllm=True),
        resolver=resolver,
    )


@pytest.fixture
def manifests(tmp_path: Path) -> Path:
    return tmp_path / "manifests"


def test_default_deployer_is_the_dashboard(settings: Settings) -> None:
    ctl = Controller(settings)
    assert isinstance(ctl.deployer, ServeRestDeployer)
    assert ctl.deployer.url == (
        f"http://127.0.0.1:{settings.dashboard_port}/api/serve/applications/"
    )
    assert not settings.home.exists()  # nothing touched before use


# ----------------------------------------------------------------------------- apply


def test_apply_pushes_one_config_and_records(
    ctl: Controller,
    deployer: FakeDeployer,
    resolver: FakeResolver,
    settings: Settings,
    manifests: Path,
    tmp_path: Path,
) -> None:
    sql = adapter_dir(tmp_path, "sql")
    path = write(manifests, "tiny.yaml", manifest("tiny", lora={"adapters": {"sql": sql}}))
    changes = ctl.apply([path], wait=False, progress=False)

    assert changes == [Change("ModelDeployment", "tiny", "create", source=str(path))]
    assert resolver.calls == [("/models/tiny", settings.model_cache, False)]
    assert len(deployer.configs) == 1
    config = deployer.last
    assert config["http_options"] == {"host": "127.0.0.1", "port": settings.http_port}
    assert config["proxy_location"] == "HeadOnly"
    gateway, model = config["applications"]
    assert gateway == {
        "name": "qingliang-gateway",
        "route_prefix": "/",
        "import_path": GATEWAY_IMPORT,
        "args": {"home": str(settings.home), "auth_enabled": True, "embeddings": True},
    }
    assert model["name"] == "tiny"
    assert model["route_prefix"] is None
    assert model["import_path"] == MODEL_IMPORT
    assert model["deployments"] == [
        {"name": "ModelServer", "user_config": {"adapters": {"sql": sql}}}
    ]
    plan = DeploymentPlan.from_dict(model["args"]["plan"])
    assert plan.adapters == ()  # adapters stay out of the code version
    assert plan.lora_enabled
    assert plan.model_path == str(tmp_path / "weights" / "tiny")

    row = ctl.store.get("ModelDeployment", "tiny")
    assert row is not None and row.generation == 1
    assert row.body["spec"]["lora"]["adapters"] == {"sql": sql}
    assert row.plan is not None and row.plan["adapters"] == [["sql", sql]]
    assert row.plan["model_path"] == plan.model_path


def test_apply_folder_with_invalid_manifest_changes_nothing(
    ctl: Controller,
    deployer: FakeDeployer,
    resolver: FakeResolver,
    settings: Settings,
    manifests: Path,
    tmp_path: Path,
) -> None:
    ctl.apply([write(tmp_path / "first", "a.yaml", manifest("alpha"))], wait=False)
    before = snapshot(settings.state_db)
    write(manifests, "b.yaml", manifest("beta"))
    write(manifests, "c.yaml", manifest("gamma", engine={"max_model_lenn": 512}))
    with pytest.raises(ManifestError) as info:
        ctl.apply([manifests], wait=False)
    message = str(info.value)
    assert "c.yaml" in message and "spec.engine.max_model_lenn" in message
    assert "did you mean 'max_model_len'?" in message
    assert deployer.attempts == 1  # only the first apply
    assert len(resolver.calls) == 1
    assert snapshot(settings.state_db) == before
    assert [r.name for r in ctl.store.list()] == ["alpha"]


def test_resolver_failure_pushes_nothing(
    ctl: Controller, deployer: FakeDeployer, settings: Settings, manifests: Path
) -> None:
    ctl.apply([write(manifests, "a.yaml", manifest("alpha"))], wait=False)
    before = snapshot(settings.state_db)
    bad = write(manifests, "b.yaml", manifest("beta", source="/models/corrupt"))
    with pytest.raises(ModelSourceError, match="sha256"):
        ctl.apply([bad], wait=False)
    assert deployer.attempts == 1
    assert snapshot(settings.state_db) == before


def test_adapter_without_config_pushes_nothing(
    ctl: Controller, deployer: FakeDeployer, manifests: Path, tmp_path: Path
) -> None:
    (tmp_path / "not-an-adapter").mkdir()
    spec = {"lora": {"adapters": {"sql": str(tmp_path / "not-an-adapter")}}}
    path = write(manifests, "a.yaml", manifest("alpha", **spec))
    with pytest.raises(ModelSourceError, match=r"spec\.lora\.adapters\.sql"):
        ctl.apply([path], wait=False)
    assert deployer.attempts == 0
    assert ctl.store.list() == []


def test_missing_tokenizer_pushes_nothing(
    ctl: Controller, deployer: FakeDeployer, manifests: Path, tmp_path: Path
) -> None:
    doc = yaml.safe_load(manifest("alpha"))
    doc["spec"]["model"]["tokenizer"] = str(tmp_path / "no-such-tokenizer")
    path = write(manifests, "a.yaml", yaml.safe_dump(doc))
    with pytest.raises(ModelSourceError, match=r"spec\.model\.tokenizer"):
        ctl.apply([path], wait=False)
    assert deployer.attempts == 0
    assert ctl.store.list() == []


def test_refused_config_leaves_store(
    ctl: Controller, deployer: FakeDeployer, settings: Settings, manifests: Path
) -> None:
    ctl.apply([write(manifests, "a.yaml", manifest("alpha"))], wait=False)
    before = snapshot(settings.state_db)
    deployer.error = ClusterError("Ray Serve refused the config (400): bad")
    changed = write(manifests, "a.yaml", manifest("alpha", engine={"max_model_len": 512}))
    new = write(manifests, "b.yaml", manifest("beta"))
    with pytest.raises(ClusterError, match="refused"):
        ctl.apply([changed, new], wait=False)
    assert deployer.attempts == 2
    assert snapshot(settings.state_db) == before


def test_second_apply_keeps_the_first(
    ctl: Controller, deployer: FakeDeployer, manifests: Path
) -> None:
    ctl.apply([write(manifests, "a.yaml", manifest("alpha"))], wait=False)
    ctl.apply([write(manifests, "b.yaml", manifest("beta"))], wait=False)
    assert deployer.model_apps() == ["alpha", "beta"]
    assert deployer.app("alpha")["args"] == deployer.configs[0]["applications"][1]["args"]
    assert [r.name for r in ctl.store.list("ModelDeployment")] == ["alpha", "beta"]


def test_reapply_unchanged_then_updated(
    ctl: Controller, deployer: FakeDeployer, manifests: Path
) -> None:
    path = write(manifests, "a.yaml", manifest("alpha"))
    ctl.apply([path], wait=False)
    assert [c.action for c in ctl.apply([path], wait=False)] == ["unchanged"]
    assert ctl.store.get("ModelDeployment", "alpha").generation == 1  # type: ignore[union-attr]
    write(manifests, "a.yaml", manifest("alpha", engine={"max_model_len": 512}))
    (change,) = ctl.apply([path], wait=False)
    assert (change.action, change.fields) == ("update", ("spec.engine.max_model_len",))
    assert ctl.store.get("ModelDeployment", "alpha").generation == 2  # type: ignore[union-attr]
    plan = DeploymentPlan.from_dict(deployer.app("alpha")["args"]["plan"])
    assert plan.options.max_model_len == 512


def test_apply_uses_the_stored_gateway(
    ctl: Controller, deployer: FakeDeployer, settings: Settings, manifests: Path
) -> None:
    ctl.ensure_gateway(auth_enabled=False, embeddings=False)
    assert deployer.last["applications"][0]["args"]["auth_enabled"] is False
    ctl.apply([write(manifests, "a.yaml", manifest("alpha"))], wait=False)
    assert deployer.last["applications"][0]["args"] == {
        "home": str(settings.home),
        "auth_enabled": False,
        "embeddings": False,
    }


def test_a_recorded_gateway_deploys_with_the_first_models(
    ctl: Controller, deployer: FakeDeployer, settings: Settings, manifests: Path
) -> None:
    """`up` records the gateway first: one Serve config then starts Serve, the gateway and
    the model together (the engine loads while Serve starts)."""
    ctl.ensure_gateway(auth_enabled=False, embeddings=False, push=False)
    assert deployer.configs == []
    ctl.apply([write(manifests, "a.yaml", manifest("alpha"))], wait=False)
    (config,) = deployer.configs
    assert config["applications"][0]["args"] == {
        "home": str(settings.home),
        "auth_enabled": False,
        "embeddings": False,
    }
    assert deployer.model_apps() == ["alpha"]


def test_apply_waits_for_running(
    ctl: Controller, deployer: FakeDeployer, manifests: Path, sleeps: list[float]
) -> None:
    deployer.status["alpha"] = [("DEPLOYING", ""), ("RUNNING", "")]
    seen: list[tuple[str, str, str]] = []
    ctl.apply(
        [write(manifests, "a.yaml", manifest("alpha"))],
        timeout_s=60,
        on_status=lambda *a: seen.append(a),
    )
    assert seen == [("alpha", "DEPLOYING", ""), ("alpha", "RUNNING", "")]
    assert sleeps == [1.0]


# ------------------------------------------------------------------------------ diff


def test_diff(ctl: Controller, deployer: FakeDeployer, manifests: Path, tmp_path: Path) -> None:
    sql = adapter_dir(tmp_path, "sql")
    path = write(manifests, "a.yaml", manifest("alpha", lora={"adapters": {"sql": sql}}))
    assert [c.action for c in ctl.diff([path])] == ["create"]
    ctl.apply([path], wait=False)
    assert ctl.diff([path]) == [Change("ModelDeployment", "alpha", "unchanged", source=str(path))]

    write(
        manifests,
        "a.yaml",
        manifest(
            "alpha",
            lora={"adapters": {"sql": sql}},
            engine={"max_model_len": 512},
            autoscaling={"max_replicas": 2},
        ),
    )
    (change,) = ctl.diff([path])
    assert change.action == "update"
    assert change.fields == ("spec.autoscaling.max_replicas", "spec.engine.max_model_len")

    moved = adapter_dir(tmp_path, "sql2")
    tutor = adapter_dir(tmp_path, "tutor")
    spec = {"lora": {"adapters": {"sql": moved, "tutor": tutor}}}
    write(manifests, "a.yaml", manifest("alpha", **spec))
    (change,) = ctl.diff([path])
    assert change.action == "adapters"
    assert change.fields == ("spec.lora.adapters.sql", "spec.lora.adapters.tutor")
    assert deployer.attempts == 1  # diff pushes nothing
    assert ctl.store.get("ModelDeployment", "alpha").generation == 1  # type: ignore[union-attr]


def test_diff_first_adapter_restarts(ctl: Controller, manifests: Path, tmp_path: Path) -> None:
    """Adding adapters to a deployment started without LoRA changes its replicas' args."""
    path = write(manifests, "a.yaml", manifest("alpha"))
    ctl.apply([path], wait=False)
    sql = adapter_dir(tmp_path, "sql")
    write(manifests, "a.yaml", manifest("alpha", lora={"adapters": {"sql": sql}}))
    (change,) = ctl.diff([path])
    assert (change.action, change.fields) == ("update", ("spec.lora.adapters.sql",))


def test_diff_invalid_manifest(ctl: Controller, manifests: Path) -> None:
    with pytest.raises(ManifestError):
        ctl.diff([write(manifests, "a.yaml", "kind: ModelDeploymen\n")])


# ---------------------------------------------------------------------------- delete


def test_delete(ctl: Controller, deployer: FakeDeployer, manifests: Path) -> None:
    ctl.apply([write(manifests, "a.yaml", manifest("alpha"))], wait=False)
    ctl.apply([write(manifests, "b.yaml", manifest("beta"))], wait=False)
    assert ctl.delete(["alpha"]) == ["alpha"]
    assert deployer.model_apps() == ["beta"]
    assert ctl.store.get("ModelDeployment", "alpha") is None
    assert [r.name for r in ctl.store.list()] == ["beta"]


@pytest.mark.parametrize("names", [["nope"], ["alpha", "nope"]])
def test_delete_unknown(
    ctl: Controller, deployer: FakeDeployer, settings: Settings, manifests: Path, names: list
) -> None:
    ctl.apply([write(manifests, "a.yaml", manifest("alpha"))], wait=False)
    before = snapshot(settings.state_db)
    with pytest.raises(NotFound, match="'nope'"):
        ctl.delete(names)
    assert deployer.attempts == 1
    assert snapshot(settings.state_db) == before


def test_refused_delete_keeps_the_row(
    ctl: Controller, deployer: FakeDeployer, manifests: Path
) -> None:
    ctl.apply([write(manifests, "a.yaml", manifest("alpha"))], wait=False)
    deployer.error = ClusterError("unreachable")
    with pytest.raises(ClusterError):
        ctl.delete(["alpha"])
    assert ctl.store.get("ModelDeployment", "alpha") is not None


# ----------------------------------------------------------------------- set_adapter


def test_set_adapter_add_replace_remove(
    ctl: Controller, deployer: FakeDeployer, manifests: Path, tmp_path: Path
) -> None:
    sql = adapter_dir(tmp_path, "sql")
    path = write(manifests, "a.yaml", manifest("alpha", lora={"adapters": {"sql": sql}}))
    ctl.apply([path], wait=False)
    args = deployer.app("alpha")["args"]

    def user_adapters() -> dict:
        return deployer.app("alpha")["deployments"][0]["user_config"]["adapters"]

    def stored_adapters() -> dict:
        row = ctl.store.get("ModelDeployment", "alpha")
        assert row is not None
        return row.body["spec"]["lora"]["adapters"]

    tutor = adapter_dir(tmp_path, "tutor")
    change = ctl.set_adapter("alpha", "tutor", tutor)
    assert change.action == "adapters"
    assert change.fields == ("spec.lora.adapters.tutor", "spec.lora.enabled")  # None -> True
    assert user_adapters() == stored_adapters() == {"sql": sql, "tutor": tutor}

    moved = adapter_dir(tmp_path, "sql-v2")
    assert ctl.set_adapter("alpha", "sql", moved).action == "adapters"
    assert user_adapters() == stored_adapters() == {"sql": moved, "tutor": tutor}

    assert ctl.set_adapter("alpha", "tutor", None).action == "adapters"
    assert user_adapters() == stored_adapters() == {"sql": moved}
    # Removing the last adapter keeps LoRA on: still a lightweight update.
    assert ctl.set_adapter("alpha", "sql", None).action == "adapters"
    assert user_adapters() == stored_adapters() == {}

    assert deployer.app("alpha")["args"] == args  # never a new code version
    assert len(deployer.configs) == 5


def test_set_adapter_resolves_relative_path(
    ctl: Controller,
    deployer: FakeDeployer,
    manifests: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    ctl.apply([write(manifests, "a.yaml", manifest("alpha", lora={"enabled": True}))], wait=False)
    adapter_dir(tmp_path, "sql")
    monkeypatch.chdir(tmp_path)
    ctl.set_adapter("alpha", "sql", "adapters/sql")
    adapters = deployer.app("alpha")["deployments"][0]["user_config"]["adapters"]
    assert adapters == {"sql": str(tmp_path / "adapters" / "sql")}


def test_set_adapter_on_deployment_without_lora(
    ctl: Controller, deployer: FakeDeployer, manifests: Path, tmp_path: Path
) -> None:
    ctl.apply([write(manifests, "a.yaml", manifest("alpha"))], wait=False)
    change = ctl.set_adapter("alpha", "sql", adapter_dir(tmp_path, "sql"))
    assert change.action == "update"  # LoRA is switched on: the replicas restart
    assert "spec.lora.enabled" in change.fields
    assert DeploymentPlan.from_dict(deployer.app("alpha")["args"]["plan"]).lora_enabled


def test_set_adapter_errors(
    ctl: Controller, deployer: FakeDeployer, settings: Settings, manifests: Path, tmp_path: Path
) -> None:
    sql = adapter_dir(tmp_path, "sql")
    ctl.apply(
        [write(manifests, "a.yaml", manifest("alpha", lora={"adapters": {"sql": sql}}))],
        wait=False,
    )
    before = snapshot(settings.state_db)
    with pytest.raises(NotFound, match="no adapter 'tutor'"):
        ctl.set_adapter("alpha", "tutor", None)
    with pytest.raises(NotFound, match="'nope'"):
        ctl.set_adapter("nope", "sql", sql)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelSourceError):
        ctl.set_adapter("alpha", "tutor", str(tmp_path / "empty"))
    with pytest.raises(ManifestError):
        ctl.set_adapter("alpha", "bad:name", sql)
    assert deployer.attempts == 1
    assert snapshot(settings.state_db) == before


# ------------------------------------------------------------- traffic and refs


def _stored_lora(ctl: Controller, name: str = "alpha") -> dict:
    row = ctl.store.get("ModelDeployment", name)
    assert row is not None
    return row.body["spec"]["lora"]


@pytest.fixture
def canary(ctl: Controller, manifests: Path, tmp_path: Path) -> dict[str, str]:
    """`alpha` applied with adapters sql and tutor; their paths."""
    paths = {"sql": adapter_dir(tmp_path, "sql"), "tutor": adapter_dir(tmp_path, "tutor")}
    ctl.apply([write(manifests, "a.yaml", manifest("alpha", lora={"adapters": paths}))], wait=False)
    return paths


def test_set_traffic_touches_no_replica(
    ctl: Controller, deployer: FakeDeployer, canary: dict[str, str]
) -> None:
    from qingliang.serving.deployments.handles import ServeBackend
    from qingliang.serving.metrics import ServingMetrics

    row = ctl.store.get("ModelDeployment", "alpha")
    assert row is not None
    change = ctl.set_traffic("alpha", {"tutor": 0.2, "sql": 0.1})
    assert (change.action, change.fields) == (
        "adapters",
        ("spec.lora.traffic.sql", "spec.lora.traffic.tutor"),
    )
    # Nothing goes to Serve: no new config, so no restart and no reconfigure().
    assert deployer.attempts == 1
    after = ctl.store.get("ModelDeployment", "alpha")
    assert after is not None and after.plan == row.plan
    assert _stored_lora(ctl)["traffic"] == {"sql": 0.1, "tutor": 0.2}
    # The gateway reads the shares from the store.
    (entry,) = ServeBackend(ctl.store, ServingMetrics(None), ttl_s=0).models()
    assert entry.traffic == {"sql": 0.1, "tutor": 0.2}
    assert ctl.get(live=False)[0]["traffic"] == {"sql": 0.1, "tutor": 0.2}

    assert ctl.set_traffic("alpha", {"tutor": 0.2, "sql": 0.1}).action == "unchanged"
    assert ctl.set_traffic("alpha", {"tutor": 0.5}).fields == (
        "spec.lora.traffic.sql",
        "spec.lora.traffic.tutor",
    )
    assert _stored_lora(ctl)["traffic"] == {"tutor": 0.5}  # replaced, not merged
    assert ctl.set_traffic("alpha", {}).action == "adapters"
    assert _stored_lora(ctl)["traffic"] == {}
    (entry,) = ServeBackend(ctl.store, ServingMetrics(None), ttl_s=0).models()
    assert entry.traffic == {}
    assert deployer.attempts == 1


@pytest.mark.parametrize(
    ("shares", "fragment"),
    [
        ({"sqll": 0.2}, "adapter 'sqll' is not in `adapters` (did you mean 'sql'?)"),
        ({"sql": 0}, "adapter 'sql': share 0 must be above 0"),
        ({"sql": 1.2}, "adapter 'sql': share 1.2 must be above 0 and at most 1"),
        ({"sql": 0.6, "tutor": 0.6}, "shares add up to 1.2"),
        ({"sql": "lots"}, "valid number"),
    ],
)
def test_bad_traffic_changes_nothing(
    ctl: Controller,
    deployer: FakeDeployer,
    settings: Settings,
    canary: dict[str, str],
    shares: dict,
    fragment: str,
) -> None:
    ctl.set_traffic("alpha", {"sql": 0.05})
    before = snapshot(settings.state_db)
    with pytest.raises(ManifestError) as info:
        ctl.set_traffic("alpha", shares)
    (issue,) = info.value.issues
    assert issue.path.startswith("spec.lora.traffic")
    assert fragment in issue.message
    assert snapshot(settings.state_db) == before
    assert deployer.attempts == 1


def test_set_traffic_on_unknown_deployment(ctl: Controller, canary: dict[str, str]) -> None:
    with pytest.raises(NotFound, match="'nope'"):
        ctl.set_traffic("nope", {"sql": 0.1})


def test_set_alias_touches_no_replica_and_unloading_gives_the_share_back(
    ctl: Controller, deployer: FakeDeployer, canary: dict[str, str]
) -> None:
    from qingliang.serving.deployments.handles import ServeBackend
    from qingliang.serving.metrics import ServingMetrics

    assert ctl.set_alias("alpha", "desk", {}).fields == ("spec.lora.aliases.desk",)
    change = ctl.set_alias("alpha", "desk", {"sql": 0.9, "tutor": 0.1})
    assert change.action == "adapters"
    assert deployer.attempts == 1  # nothing went to Serve
    assert _stored_lora(ctl)["aliases"] == {"desk": {"sql": 0.9, "tutor": 0.1}}
    (entry,) = ServeBackend(ctl.store, ServingMetrics(None), ttl_s=0).models()
    assert entry.aliases == {"desk": {"sql": 0.9, "tutor": 0.1}} and entry.traffic == {}
    ctl.set_adapter("alpha", "tutor", None)  # its share of the alias goes to the base model
    assert _stored_lora(ctl)["aliases"] == {"desk": {"sql": 0.9}}
    assert ctl.set_alias("alpha", "desk", None).fields == ("spec.lora.aliases.desk",)
    assert _stored_lora(ctl)["aliases"] == {}
    with pytest.raises(NotFound, match="no alias 'desk'"):
        ctl.set_alias("alpha", "desk", None)


@pytest.mark.parametrize(
    ("alias", "shares", "fragment"),
    [
        ("desk", {"sqll": 1.0}, "alias 'desk': adapter 'sqll' is not in `adapters`"),
        ("desk", {"sql": 0.7, "tutor": 0.6}, "alias 'desk': shares add up to 1.3"),
        ("desk", {"sql": 0}, "alias 'desk': adapter 'sql' has share 0"),
        ("sql", {"tutor": 1.0}, "alias 'sql' is also an adapter's name"),
        ("a:b", {}, "alias 'a:b' is invalid"),
    ],
)
def test_a_bad_alias_changes_nothing(
    ctl: Controller,
    settings: Settings,
    canary: dict[str, str],
    alias: str,
    shares: dict,
    fragment: str,
) -> None:
    ctl.set_alias("alpha", "desk", {"sql": 1.0})
    before = snapshot(settings.state_db)
    with pytest.raises(ManifestError) as info:
        ctl.set_alias("alpha", alias, shares)
    (issue,) = info.value.issues
    assert issue.path.startswith("spec.lora.aliases") and fragment in issue.message
    assert snapshot(settings.state_db) == before


def test_traffic_in_a_manifest_is_a_lightweight_apply(
    ctl: Controller, deployer: FakeDeployer, manifests: Path, canary: dict[str, str]
) -> None:
    config = deployer.last
    lora = {"adapters": canary, "traffic": {"sql": 0.3}, "refs": {"sql": "sql-bot@7"}}
    path = write(manifests, "a.yaml", manifest("alpha", lora=lora))
    (change,) = ctl.diff([path])
    assert (change.action, change.fields) == (
        "adapters",
        ("spec.lora.refs.sql", "spec.lora.traffic.sql"),
    )
    ctl.apply([path], wait=False)
    assert deployer.last == config  # Serve is handed the very same config: nothing to do
    assert _stored_lora(ctl)["refs"] == {"sql": "sql-bot@7"}
    assert [c.action for c in ctl.diff([path])] == ["unchanged"]


def test_body_stored_before_traffic_existed_is_unchanged(
    ctl: Controller, manifests: Path, canary: dict[str, str]
) -> None:
    """A manifest stored by a version without `traffic` / `refs` re-applies unchanged."""
    row = ctl.store.get("ModelDeployment", "alpha")
    assert row is not None
    old = copy.deepcopy(row.body)
    del old["spec"]["lora"]["traffic"], old["spec"]["lora"]["refs"]
    ctl.store.put("ModelDeployment", "alpha", old, row.plan)
    path = manifests / "a.yaml"
    assert [c.action for c in ctl.diff([path])] == ["unchanged"]


def test_set_adapter_records_ref_and_unload_drops_share(
    ctl: Controller,
    deployer: FakeDeployer,
    settings: Settings,
    canary: dict[str, str],
    tmp_path: Path,
) -> None:
    v2 = adapter_dir(tmp_path, "tutor-v2")
    change = ctl.set_adapter("alpha", "tutor", v2, ref="tutor-bot@2")
    assert change.action == "adapters"
    assert "spec.lora.refs.tutor" in change.fields
    assert _stored_lora(ctl)["refs"] == {"tutor": "tutor-bot@2"}
    # The ref is the gateway's business: the replicas' config carries only paths.
    user_config = deployer.app("alpha")["deployments"][0]["user_config"]
    assert user_config == {"adapters": {"sql": canary["sql"], "tutor": v2}}
    assert "tutor-bot@2" not in json.dumps(deployer.last)

    before = snapshot(settings.state_db)
    with pytest.raises(ManifestError, match=r"spec\.lora\.refs: adapter 'sql': ref 'sql@0'"):
        ctl.set_adapter("alpha", "sql", canary["sql"], ref="sql@0")
    assert snapshot(settings.state_db) == before

    # New weights without a ref: the old ref would name other weights, so it goes.
    ctl.set_adapter("alpha", "sql", canary["sql"], ref="sql-bot@1")
    ctl.set_adapter("alpha", "sql", canary["sql"])  # same weights: the ref stays
    assert _stored_lora(ctl)["refs"] == {"sql": "sql-bot@1", "tutor": "tutor-bot@2"}
    ctl.set_adapter("alpha", "tutor", adapter_dir(tmp_path, "tutor-v3"))
    assert _stored_lora(ctl)["refs"] == {"sql": "sql-bot@1"}

    ctl.set_traffic("alpha", {"sql": 0.2, "tutor": 0.3})
    change = ctl.set_adapter("alpha", "sql", None)
    assert change.action == "adapters"
    lora = _stored_lora(ctl)
    assert (lora["traffic"], lora["refs"]) == ({"tutor": 0.3}, {})


def test_ref_needs_a_path(ctl: Controller, canary: dict[str, str]) -> None:
    with pytest.raises(BadRequest, match="give a path"):
        ctl.set_adapter("alpha", "sql", None, ref="sql-bot@1")
    assert "sql" in _stored_lora(ctl)["adapters"]


# ------------------------------------------------------------------------- wait, get


def test_wait_running(ctl: Controller, deployer: FakeDeployer) -> None:
    deployer.status["alpha"] = [("RUNNING", "")]
    ctl.wait("alpha", timeout_s=0.01)


@pytest.mark.parametrize("status", ["DEPLOY_FAILED", "UNHEALTHY"])
def test_wait_failed(ctl: Controller, deployer: FakeDeployer, status: str) -> None:
    deployer.status["alpha"] = [(status, "replica crashed: out of memory")]
    with pytest.raises(ClusterError, match="replica crashed: out of memory"):
        ctl.wait("alpha", timeout_s=60)


def test_wait_timeout(ctl: Controller, deployer: FakeDeployer) -> None:
    deployer.status["alpha"] = [("DEPLOYING", "loading weights")]
    with pytest.raises(ClusterError, match=r"not ready after .*DEPLOYING: loading weights"):
        ctl.wait("alpha", timeout_s=0.001)
    with pytest.raises(ClusterError, match="NOT_DEPLOYED"):
        ctl.wait("missing", timeout_s=0.001)


def test_get(ctl: Controller, deployer: FakeDeployer, manifests: Path) -> None:
    ctl.apply([write(manifests, "a.yaml", manifest("alpha"))], wait=False)
    deployer.status["alpha"] = [("RUNNING", "")]
    (row,) = ctl.get()
    assert (row["name"], row["source"], row["status"]) == ("alpha", "/models/tiny", "RUNNING")
    assert ctl.get(live=False)[0]["status"] == ""


def test_a_knowledge_base_is_registered_beside_deployments(
    ctl: Controller, deployer: FakeDeployer, manifests: Path
) -> None:
    kb = {
        "apiVersion": "qingliang.io/v1",
        "kind": "KnowledgeBase",
        "metadata": {"name": "policies"},
        "spec": {"sources": [{"folder": "docs"}]},
    }
    write(manifests, "a.yaml", manifest("alpha"))
    write(manifests, "kb.yaml", yaml.safe_dump(kb))
    changes = ctl.apply([manifests], wait=False)
    assert {(c.kind, c.name, c.action) for c in changes} == {
        ("ModelDeployment", "alpha", "create"),
        ("KnowledgeBase", "policies", "create"),
    }
    row = ctl.store.get("KnowledgeBase", "policies")
    assert row is not None and row.plan == {"base": str(manifests.resolve())}
    # The KB is not a Serve application: the pushed config names only the model.
    assert "policies" not in json.dumps(deployer.configs[-1])
    assert [c.action for c in ctl.diff([manifests])] == ["unchanged", "unchanged"]
    assert ctl.delete(["policies"], kind="KnowledgeBase") == ["policies"]
    assert ctl.store.get("KnowledgeBase", "policies") is None


class BlockingDeployer(FakeDeployer):
    """Holds the first push it gets until ``release`` is set (a slow Serve)."""

    def __init__(self) -> None:
        super().__init__()
        self.entered = threading.Event()
        self.release = threading.Event()
        self.block = False

    def apply_config(self, config: dict) -> None:
        if self.block:
            self.block = False
            self.entered.set()
            assert self.release.wait(30)
        super().apply_config(config)


def test_concurrent_changes_do_not_undo_each_other(
    settings: Settings, resolver: FakeResolver, manifests: Path, tmp_path: Path
) -> None:
    deployer = BlockingDeployer()

    def controller() -> Controller:  # each caller its own, like two processes
        return Controller(
            settings,
            deployer=deployer,
            profile=HardwareProfile(cpu_isa="avx2", vllm=True),
            resolver=resolver,
        )

    paths = {"sql": adapter_dir(tmp_path, "sql")}
    lora = {"adapters": paths}
    controller().apply(
        [
            write(manifests, "a.yaml", manifest("alpha", lora=lora)),
            write(manifests, "b.yaml", manifest("beta", lora=lora)),
        ],
        wait=False,
    )
    errors: list[BaseException] = []

    def run(fn: Callable[[], object]) -> threading.Thread:
        def target() -> None:
            try:
                fn()
            except BaseException as exc:  # surfaced by the asserts below
                errors.append(exc)

        thread = threading.Thread(target=target)
        thread.start()
        return thread

    # A canary step loads v2 into alpha; Serve is slow to accept it. Meanwhile an
    # operator sets alpha's traffic and loads an adapter into beta.
    deployer.block = True
    v2 = adapter_dir(tmp_path, "sql-v2")
    loading = run(lambda: controller().set_adapter("alpha", "sql-v2", v2, ref="sql@2"))
    assert deployer.entered.wait(30)
    traffic = run(lambda: controller().set_traffic("alpha", {"sql": 0.1}))
    other = run(lambda: controller().set_adapter("beta", "tutor", adapter_dir(tmp_path, "tutor")))
    time.sleep(0.3)  # let them reach the lock
    assert traffic.is_alive() and other.is_alive(), "they waited for the push in flight"
    deployer.release.set()
    for thread in (loading, traffic, other):
        thread.join(30)
    assert not errors

    stored = _stored_lora(controller())
    assert stored["adapters"] == {"sql": paths["sql"], "sql-v2": v2}
    assert stored["refs"] == {"sql-v2": "sql@2"}
    assert stored["traffic"] == {"sql": 0.1}  # not undone by the slower set_adapter
    assert set(_stored_lora(controller(), "beta")["adapters"]) == {"sql", "tutor"}
    # The last config Serve got has both deployments' adapters: neither push undid the other.
    configs = {a["name"]: a for a in deployer.last["applications"]}
    assert set(configs["alpha"]["deployments"][0]["user_config"]["adapters"]) == {"sql", "sql-v2"}
    assert set(configs["beta"]["deployments"][0]["user_config"]["adapters"]) == {"sql", "tutor"}


def test_applying_the_file_again_keeps_what_pipelines_released(
    ctl: Controller, deployer: FakeDeployer, manifests: Path, tmp_path: Path
) -> None:
    """`make down` then `make up` re-applies deploy/defaults: the adapters, shares, refs and
    aliases set at run time stay, unless the file itself declares those fields."""
    path = write(manifests, "q.yaml", manifest("alpha", lora={"enabled": True}))
    ctl.apply([path], wait=False)
    gov = adapter_dir(tmp_path, "gov-v1")
    ctl.set_adapter("alpha", "gov-v1", gov, ref="gov@1")
    ctl.set_alias("alpha", "gov", {"gov-v1": 1.0})
    ctl.set_traffic("alpha", {"gov-v1": 0.1})
    pushes = deployer.attempts
    (change,) = ctl.apply([path], wait=False)
    assert change.action == "unchanged"
    lora = _stored_lora(ctl)
    assert lora["adapters"] == {"gov-v1": gov} and lora["refs"] == {"gov-v1": "gov@1"}
    assert lora["aliases"] == {"gov": {"gov-v1": 1.0}} and lora["traffic"] == {"gov-v1": 0.1}
    assert ctl.diff([path])[0].action == "unchanged"
    assert deployer.attempts == pushes + 1  # the same config again: no replica restarts
    # A file that declares the fields replaces them; one that contradicts the kept ones
    # is refused by name, and nothing changes.
    bare = write(manifests, "q.yaml", manifest("alpha", lora={"enabled": True, "adapters": {}}))
    with pytest.raises(ManifestError, match="alias 'gov': adapter 'gov-v1' is not in `adapters`"):
        ctl.apply([bare], wait=False)
    assert _stored_lora(ctl)["adapters"] == {"gov-v1": gov}
    spec = {"enabled": True, "adapters": {}, "aliases": {}, "traffic": {}, "refs": {}}
    ctl.apply([write(manifests, "q.yaml", manifest("alpha", lora=spec))], wait=False)
    lora = _stored_lora(ctl)
    assert (lora["adapters"], lora["aliases"], lora["traffic"]) == ({}, {}, {})

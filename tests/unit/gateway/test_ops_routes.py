"""The operator's routes (issue 17): whoami, deployments, adapter lineage, manifest
validate/diff, metric series; through the real gateway app with real keys.

The platform's data is real (a state store written by the Controller's own apply, a
registry, arm statistics); the fakes are at the boundaries only: Serve's application
details (what the dashboard answers), the Controller's deployer and model resolver when
the test applies a manifest, and the gateway's model backend.
"""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from fastapi.testclient import TestClient

from qingliang.platform.control.apply import Controller
from qingliang.platform.gateway.app import create_app
from qingliang.platform.gateway.auth.keys import KeyAuth
from qingliang.platform.gateway.operator.operations import Operations
from qingliang.platform.lifecycle.registry import Registry
from qingliang.platform.settings import Settings
from qingliang.platform.storage.arm_stats import ArmStats
from qingliang.platform.storage.keys import KeyStore
from qingliang.serving.plan import HardwareProfile
from qingliang.serving.traffic import ModelEntry

DATA = "sha256:" + "1" * 64


class Models:
    def models(self) -> list[ModelEntry]:
        return []

    async def ready(self) -> dict[str, str]:
        return {}

    def rejected(self, *args: Any) -> None:
        pass


class Deployer:
    """The Controller's deployer when the test applies a manifest: accepts any config."""

    def apply_config(self, config: dict) -> None:
        pass

    def statuses(self) -> dict[str, tuple[str, str]]:
        return {}


def serve_details() -> dict[str, Any]:
    """What Serve's REST API answers for the applied deployment (the boundary)."""
    replica = {"state": "RUNNING", "pid": 4242, "node_id": "n1", "replica_id": "r1"}
    return {
        "qwen": {
            "status": "RUNNING",
            "message": "",
            "deployments": {"ModelServer": {"status": "HEALTHY", "replicas": [replica]}},
        }
    }


def manifest(name: str = "qwen", **lora: Any) -> str:
    doc = {
        "apiVersion": "qingliang.io/v1",
        "kind": "ModelDeployment",
        "metadata": {"name": name},
        "spec": {"model": {"source": "/models/tiny"}, **({"lora": lora} if lora else {})},
    }
    return yaml.safe_dump(doc)


@pytest.fixture
def env(tmp_path: Path) -> Any:
    home = tmp_path / "home"
    settings = Settings(home=home)
    adapter = tmp_path / "adapters" / "faq"
    adapter.mkdir(parents=True)
    (adapter / "adapter_config.json").write_text('{"r": 8}')
    ctl = Controller(
        settings,
        deployer=Deployer(),
        profile=HardwareProfile(cpu_isa="avx2", vllm=True),
        resolver=lambda source, cache, progress: tmp_path / "weights",
    )
    path = tmp_path / "qwen.yaml"
    path.write_text(
        manifest(adapters={"faq": str(adapter)}, refs={"faq": "faq-bot@1"}, traffic={"faq": 0.25})
    )
    ctl.apply([path], wait=False, progress=False)
    with Registry(home=home) as reg:
        reg.register_dataset_version("gov-sft", DATA, record_counts={"train": 9, "eval": 1})
        reg.register_base_model("tiny", source="/models/tiny", format="safetensors")
        reg.register_job("ft-1", method="lora", base_model="tiny", train=[f"gov-sft@{DATA}"])
        reg.set_job_status("ft-1", "running")
        reg.register_adapter("faq-bot", path=str(adapter), sha256="a" * 64, job="ft-1")
    stats = ArmStats.for_home(home)
    stats.observe("qwen", "faq", ok=True, latency_s=0.2, output_tokens=5, ttft_s=0.05)
    stats.observe("qwen", None, ok=False, latency_s=1.0)
    stats.rejected("qwen", None)
    stats.close()
    keys = KeyStore(home / "state.sqlite")
    names = {
        "admin": ["admin"],
        "deploy": ["deploy"],
        "approver": ["approve"],
        "tenant": ["approve", "tenant:acme"],
        "user": ["inference"],
    }
    tokens = {who: keys.create(who, scopes=scopes)[1] for who, scopes in names.items()}
    ops = Operations(home, serve_details=serve_details, settings=lambda: settings)
    app = create_app(Models(), None, KeyAuth(home / "state.sqlite", True), ops=ops)  # type: ignore[arg-type]
    client = TestClient(app)

    def call(who: str, method: str, url: str, **kw: Any) -> Any:
        headers = {"Authorization": f"Bearer {tokens[who]}"}
        return client.request(method, url, headers=headers, **kw)

    return call


def test_whoami_names_the_key_its_scopes_and_tenant(env: Any) -> None:
    me = env("tenant", "GET", "/v1/whoami").json()
    assert me == {
        "name": "tenant",
        "scopes": ["approve", "tenant:acme"],
        "tenant": "acme",
        "auth": True,
        "ray_dashboard": None,  # no platform runs on this data directory
    }
    assert env("user", "GET", "/v1/whoami").json()["tenant"] == "default"
    assert env("admin", "GET", "/v1/whoami").json()["tenant"] is None


def test_whoami_without_auth_is_admin(tmp_path: Path) -> None:
    app = create_app(Models(), None, KeyAuth(tmp_path / "s.sqlite", False))  # type: ignore[arg-type]
    me = TestClient(app).get("/v1/whoami").json()
    assert me == {"name": None, "scopes": ["admin"], "tenant": None, "auth": False,
                  "ray_dashboard": None}  # fmt: skip


def test_deployments_show_replicas_adapters_and_arm_counts(env: Any) -> None:
    r = env("approver", "GET", "/v1/deployments")
    assert r.status_code == 200, r.text
    (dep,) = r.json()["data"]
    assert dep["name"] == "qwen" and dep["status"] == "RUNNING"
    assert dep["replicas"][0] | {"deployment": "ModelServer"} == dep["replicas"][0]
    assert (dep["replicas"][0]["state"], dep["replicas"][0]["pid"]) == ("RUNNING", 4242)
    assert dep["adapters"] == [{"name": "faq", "ref": "faq-bot@1", "share": 0.25}]
    assert dep["traffic"] == {"faq": 0.25}
    assert dep["engine"]["kind"] == "vllm" and "max_model_len" in dep["engine"]["options"]
    assert dep["arms"]["faq"] == {
        "requests": 1,
        "errors": 0,
        "error_rate": 0.0,
        "mean_latency_ms": 200.0,
    }
    assert dep["arms"][""]["errors"] == 1  # the base model's arm is ""
    one = env("deploy", "GET", "/v1/deployments/qwen").json()
    assert one["name"] == "qwen" and one["arms"] == dep["arms"]


def test_an_unknown_deployment_is_named(env: Any) -> None:
    r = env("deploy", "GET", "/v1/deployments/qwne")
    assert r.status_code == 404
    assert "no deployment 'qwne'" in r.json()["error"]["message"]
    assert "did you mean 'qwen'" in r.json()["error"]["message"]
    bad = env("deploy", "GET", "/v1/deployments?window_s=1")
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "window_s"


@pytest.mark.parametrize(
    ("method", "url"),
    [
        ("GET", "/v1/deployments"),
        ("GET", "/v1/deployments/qwen"),
        ("GET", "/v1/adapters/faq/lineage?deployment=qwen"),
        ("GET", "/v1/metrics/series"),
        ("POST", "/v1/manifests/validate"),
        ("POST", "/v1/manifests/diff"),
    ],
)
def test_a_tenant_key_may_not_see_what_every_tenant_is_served(
    env: Any, method: str, url: str
) -> None:
    r = env("tenant", method, url, json={"yaml": manifest()})
    assert r.status_code == 403
    assert r.json()["error"]["code"] == "insufficient_scope"
    assert env("user", method, url, json={"yaml": manifest()}).status_code == 403


def test_lineage_of_an_adapter_through_its_deployment(env: Any) -> None:
    r = env("approver", "GET", "/v1/adapters/faq/lineage?deployment=qwen")
    assert r.status_code == 200, r.text
    doc = r.json()
    assert doc["adapter"]["ref"] == "faq-bot@1" and doc["adapter"]["status"] == "registered"
    assert doc["job"]["name"] == "ft-1" and doc["job"]["base_model"] == "tiny"
    assert doc["datasets"] == [
        {
            "role": "train",
            "dataset": "gov-sft",
            "version": DATA,
            "ref": f"gov-sft@{DATA}",
            "status": "active",
            "record_counts": {"train": 9, "eval": 1},
        }
    ]
    assert doc["resolved_via"] == "qwen:faq → faq-bot@1 (spec.lora.refs)"
    kinds = {n["kind"] for n in doc["upstream"]}
    assert "job" in kinds
    assert env("deploy", "GET", "/v1/adapters/faq-bot@1/lineage").json()["job"]["name"] == "ft-1"


def test_lineage_names_what_is_missing(env: Any) -> None:
    r = env("deploy", "GET", "/v1/adapters/faq/lineage?deployment=nope")
    assert r.status_code == 404 and "no ModelDeployment named 'nope'" in r.text
    r = env("deploy", "GET", "/v1/adapters/gov/lineage?deployment=qwen")
    assert r.status_code == 404 and "has no adapter 'gov'" in r.text


BAD = """apiVersion: qingliang.io/v1
kind: ModelDeployment
metadata: {name: qwen}
spec:
  model: {source: /models/tiny}
  engine:
    max_model_len: lots
---
apiVersion: qingliang.io/v1
kind: ModelDeployment
metadata: {name: other}
spec:
  model: {source: /models/tiny}
  engnie: {}
"""


def test_validate_names_each_bad_field_with_its_document_and_line(env: Any) -> None:
    r = env("deploy", "POST", "/v1/manifests/validate", json={"yaml": BAD})
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["ok"] is False and out["objects"] == []
    first, second = out["errors"]
    assert (first["document"], first["path"], first["line"]) == (0, "spec.engine.max_model_len", 7)
    assert "valid integer" in first["message"]
    assert (second["document"], second["path"], second["line"]) == (1, "spec.engnie", 14)
    assert "did you mean 'engine'" in second["message"]
    good = env("deploy", "POST", "/v1/manifests/validate", json={"yaml": manifest("x")}).json()
    assert good == {"ok": True, "objects": [{"kind": "ModelDeployment", "name": "x"}], "errors": []}


def test_validate_refuses_bad_yaml_and_bad_bodies(env: Any) -> None:
    out = env("deploy", "POST", "/v1/manifests/validate", json={"yaml": "a: [1,\nb"}).json()
    assert out["ok"] is False
    assert out["errors"][0]["line"] == 2 and "invalid YAML" in out["errors"][0]["message"]
    r = env("deploy", "POST", "/v1/manifests/validate", json={"yml": "x"})
    assert r.status_code == 400 and "did you mean 'yaml'" in r.json()["error"]["message"]
    r = env("deploy", "POST", "/v1/manifests/diff", json={"yaml": 3})
    assert r.status_code == 400 and r.json()["error"]["param"] == "yaml"


def test_diff_says_what_apply_would_change_and_changes_nothing(env: Any, tmp_path: Path) -> None:
    db = tmp_path / "home" / "state.sqlite"
    before = _stored_objects(db)
    text = manifest() + "---\n" + manifest("new")
    r = env("deploy", "POST", "/v1/manifests/diff", json={"yaml": text})
    assert r.status_code == 200, r.text
    changes = {c["name"]: c for c in r.json()["changes"]}
    assert changes["new"]["action"] == "create"
    # The file leaves qwen's adapters as set at run time (apply keeps them): unchanged.
    assert changes["qwen"]["action"] == "unchanged"
    edited = manifest(max_adapters=8)
    upd = env("deploy", "POST", "/v1/manifests/diff", json={"yaml": edited}).json()["changes"]
    assert upd[0]["action"] == "update" and "spec.lora.max_adapters" in upd[0]["fields"]
    # Nothing applied (the file's bytes may change: the key store in it notes each key's use).
    assert _stored_objects(db) == before
    bad = env("deploy", "POST", "/v1/manifests/diff", json={"yaml": BAD}).json()
    assert bad["ok"] is False and bad["changes"] == [] and len(bad["errors"]) == 2


def _stored_objects(db: Path) -> list[tuple]:
    """Every stored manifest row (kind, name, body, generation...) of the state store."""
    with sqlite3.connect(db) as c:
        return c.execute("SELECT * FROM manifests ORDER BY 1, 2").fetchall()


def test_metrics_series_per_deployment(env: Any) -> None:
    r = env("approver", "GET", "/v1/metrics/series?window_s=600&step_s=60")
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["step_s"] == 60 and out["since"] <= time.time() - 540
    qwen = out["series"]["qwen"]
    assert len(qwen["t"]) == len(qwen["requests"]) >= 10
    assert sum(qwen["requests"]) == 2 and sum(qwen["errors"]) == 1
    assert sum(qwen["rejected_429"]) == 1 and sum(qwen["output_tokens"]) == 5
    assert [p for p in qwen["ttft_p50_ms"] if p is not None] == [37.5]
    one = env("deploy", "GET", "/v1/metrics/series?deployment=qwen").json()
    assert list(one["series"]) == ["qwen"]


@pytest.mark.parametrize(
    ("query", "param", "words"),
    [
        ("step_s=15", "step_s", "multiple of 10"),
        ("window_s=86400&step_s=10", "step_s", "at most 1000"),
        ("deployment=qwne", "deployment", "did you mean 'qwen'"),
        ("window_s=abc", "window_s", ""),
    ],
)
def test_metrics_series_bad_input(env: Any, query: str, param: str, words: str) -> None:
    r = env("deploy", "GET", f"/v1/metrics/series?{query}")
    assert r.status_code in (400, 404), r.text
    assert r.json()["error"]["param"] == param and words in r.json()["error"]["message"]


def test_without_operations_the_routes_answer_501(tmp_path: Path) -> None:
    app = create_app(Models(), None, KeyAuth(tmp_path / "s.sqlite", False))  # type: ignore[arg-type]
    client = TestClient(app)
    assert client.get("/v1/deployments").status_code == 501
    assert client.post("/v1/manifests/validate", json={"yaml": "x"}).status_code == 501

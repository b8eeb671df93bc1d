"""The `qingliang` command line, through typer's runner (no Ray: commands that need a
running cluster are covered by the integration tests)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from qingliang.platform.cli import app

REPO = Path(__file__).resolve().parents[2]
runner = CliRunner()


@pytest.fixture(autouse=True)
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("QINGLIANG_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


def test_help_lists_the_commands() -> None:
    out = runner.invoke(app, ["--help"]).output
    for cmd in (
        "validate",
        "apply",
        "diff",
        "get",
        "delete",
        "up",
        "down",
        "chat",
        "keys",
        "render",
    ):
        assert cmd in out


def test_validate_reports_the_plan_for_the_defaults() -> None:
    r = runner.invoke(app, ["validate", "-f", str(REPO / "deploy" / "defaults")])
    assert r.exit_code == 0, r.output
    out = " ".join(r.output.split())  # rich wraps at the terminal's width (80 without one)
    assert "ModelDeployment/qwen-coder" in out and "engine vllm" in out


def test_validate_names_file_and_field_of_a_bad_manifest(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    doc = yaml.safe_load((REPO / "deploy" / "defaults" / "qwen-coder.yaml").read_text())
    doc["spec"]["engine"]["max_model_lenn"] = 10
    bad.write_text(yaml.safe_dump(doc))
    r = runner.invoke(app, ["validate", "-f", str(bad)])
    assert r.exit_code == 1
    assert f"{bad}: spec.engine.max_model_lenn: unknown key (did you mean 'max_model_len'?)" in (
        r.output.replace("\n", "")
    )


def test_render_prints_the_serve_config_for_a_cluster() -> None:
    r = runner.invoke(
        app, ["render", "-f", str(REPO / "deploy" / "examples" / "qwen-gpu-awq.yaml")]
    )
    assert r.exit_code == 0, r.output
    config = yaml.safe_load(r.output)
    names = [a["name"] for a in config["applications"]]
    assert names == ["qingliang-gateway", "qwen-7b-awq"]
    model = config["applications"][1]
    assert model["import_path"] == "qingliang.serving.deployment:app_builder"
    assert model["args"]["plan"]["adapters"] == []  # adapters ride in user_config
    assert set(model["deployments"][0]["user_config"]["adapters"]) == {"legal-qa", "sql"}
    assert config["http_options"]["host"] == "0.0.0.0"


def test_keys_create_list_revoke(home: Path) -> None:
    r = runner.invoke(app, ["keys", "create", "ci"])
    assert r.exit_code == 0, r.output
    key = r.stdout.strip().splitlines()[-1]
    assert key.startswith("ql-")
    listed = runner.invoke(app, ["keys", "list"]).output
    assert "ci" in listed and key not in listed  # the secret is never listed
    assert runner.invoke(app, ["keys", "revoke", "ci"]).exit_code == 0
    again = runner.invoke(app, ["keys", "revoke", "ci"])
    assert again.exit_code == 1 and "revoked" in again.output
    assert key.encode() not in (home / "state.sqlite").read_bytes()


def test_status_when_nothing_runs() -> None:
    r = runner.invoke(app, ["status"])
    assert r.exit_code == 3 and "not running" in r.output

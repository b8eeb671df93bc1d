"""The `qingliang` command line, through typer's runner (no Ray: commands that need a
running cluster are covered by the integration tests)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from qingliang.platform.cli.main import app

REPO = Path(__file__).resolve().parents[3]
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


def _project(root: Path) -> Path:
    """A pipeline with its dataset, data file, job and base model folder; all valid."""
    (root / "data").mkdir(parents=True)
    (root / "data" / "qa.jsonl").write_text('{"instruction": "q", "output": "a"}\n')
    (root / "model").mkdir()
    (root / "model" / "config.json").write_text("{}")
    (root / "dataset.yaml").write_text(
        "apiVersion: qingliang.io/v1\nkind: Dataset\nmetadata: {name: faq}\n"
        "spec: {format: instruction, sources: [{path: data/*.jsonl}]}\n"
    )
    (root / "job.yaml").write_text(
        "apiVersion: qingliang.io/v1\nkind: FineTuneJob\nmetadata: {name: faq-lora}\n"
        "spec:\n  base_model: {source: model}\n  lora: {r: 4}\n"
        "  data: {dataset: faq}\n  output: {adapter: faq-bot}\n"
    )
    (root / "pipeline.yaml").write_text(
        "apiVersion: qingliang.io/v1\nkind: Pipeline\nmetadata: {name: faq-release}\n"
        "spec:\n  steps:\n    - {type: govern, dataset: dataset.yaml}\n"
        "    - {type: finetune, job: job.yaml}\n"
    )
    return root


def _validate(*paths: Path) -> tuple[int, str]:
    r = runner.invoke(app, ["validate", *(a for p in paths for a in ("-f", str(p)))])
    return r.exit_code, " ".join(r.output.split())


def test_validate_follows_what_pipelines_datasets_and_jobs_refer_to(tmp_path: Path) -> None:
    import qingliang.platform.lifecycle.pipelines.kinds  # noqa: F401
    from qingliang.platform.manifests.loader import load_paths

    root = _project(tmp_path / "p")
    code, out = _validate(root)
    assert code == 0, out
    assert "ok " in out and "Pipeline/faq-release" in out

    (root / "job.yaml").rename(root / "job.yml")
    code, out = _validate(root / "pipeline.yaml")
    assert code == 1
    assert f"{root / 'pipeline.yaml'}: spec.steps[1].job: job.yaml: no such file" in out
    assert load_paths([root / "pipeline.yaml"])  # the manifest's own validation stays pure

    (root / "job.yml").rename(root / "job.yaml")
    job = (root / "job.yaml").read_text()
    (root / "job.yaml").write_text(job.replace("r: 4", "r: 0"))
    code, out = _validate(root / "pipeline.yaml")
    assert code == 1
    assert (
        "pipeline.yaml: spec.steps[1].job: job.yaml: spec.lora.r: Input should be greater "
        "than or equal to 1"
    ) in out
    (root / "job.yaml").write_text(job.replace("dataset: faq}", "dataset: other}"))
    code, out = _validate(root / "pipeline.yaml")
    assert "spec.steps[1].job: job.yaml: spec.data.dataset: the job trains on 'other' but " in out
    (root / "job.yaml").write_text(job.replace("source: model", "source: gone"))
    code, out = _validate(root / "job.yaml")
    assert code == 1
    assert f"job.yaml: spec.base_model.source: 'gone': {root / 'gone'} does not exist" in out
    (root / "job.yaml").write_text(job)

    (root / "data" / "qa.jsonl").unlink()
    code, out = _validate(root)  # the folder: the dataset and the pipeline both fail
    assert code == 1
    assert f"{root / 'dataset.yaml'}: spec.sources[0].path: 'data/*.jsonl' matches no file" in out
    assert (
        f"{root / 'pipeline.yaml'}: spec.steps[0].dataset: dataset.yaml: "
        "spec.sources[0].path: 'data/*.jsonl' matches no file"
    ) in out


def test_render_prints_the_serve_config_for_a_cluster() -> None:
    r = runner.invoke(
        app, ["render", "-f", str(REPO / "deploy" / "examples" / "qwen-gpu-awq.yaml")]
    )
    assert r.exit_code == 0, r.output
    config = yaml.safe_load(r.output)
    names = [a["name"] for a in config["applications"]]
    assert names == ["qingliang-gateway", "qwen-7b-awq"]
    model = config["applications"][1]
    assert model["import_path"] == "qingliang.serving.deployments.model:app_builder"
    assert model["args"]["plan"]["adapters"] == []  # adapters ride in user_config
    assert set(model["deployments"][0]["user_config"]["adapters"]) == {"legal-qa", "sql"}
    assert config["http_options"]["host"] == "0.0.0.0"


def test_render_warns_about_what_is_not_a_serve_application() -> None:
    """Knowledge bases and agent graphs live in the platform's state: render names them on
    stderr rather than leaving them out silently; stdout stays the Serve config alone."""
    gov = REPO / "deploy" / "domains" / "gov"
    r = runner.invoke(
        app,
        ["render", "-f", str(gov / "knowledge.yaml"), "-f", str(gov / "desk.yaml")]
        + ["-f", str(REPO / "deploy" / "defaults")],
    )
    assert r.exit_code == 0, r.output
    names = [a["name"] for a in yaml.safe_load(r.stdout)["applications"]]
    assert names == ["qingliang-gateway", "qwen-coder"]
    warning = " ".join(r.stderr.split())
    assert "AgentGraph/gov-desk, KnowledgeBase/gov-policy: not in this Serve config" in warning
    assert "qingliang export kuberay" in warning


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


# ---------------------------------------------------------- adapters traffic, get


class RunningDeployer:
    """Ray Serve as `get` sees it: every deployment RUNNING; configs are not expected."""

    def apply_config(self, config: dict) -> None:
        raise AssertionError("setting traffic must not push a Serve config")

    def statuses(self) -> dict[str, tuple[str, str]]:
        return {"tiny": ("RUNNING", "")}


@pytest.fixture
def deployed(home: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A stored `tiny` deployment with adapters sql and law (as `apply` leaves it)."""
    import qingliang.platform.lifecycle.pipelines.kinds  # noqa: F401
    from qingliang.platform.cli import _common as cli
    from qingliang.platform.control.apply import Controller
    from qingliang.platform.manifests.loader import validate_document
    from qingliang.platform.settings import Settings

    doc = {
        "apiVersion": "qingliang.io/v1",
        "kind": "ModelDeployment",
        "metadata": {"name": "tiny"},
        "spec": {
            "model": {"source": "/models/tiny"},
            "lora": {"adapters": {"sql": "/adapters/sql", "law": "/adapters/law"}},
        },
    }
    body = validate_document(doc, "tiny.yaml").manifest.model_dump(mode="json", by_alias=True)
    settings = Settings()
    Controller(settings, deployer=RunningDeployer()).store.put("ModelDeployment", "tiny", body)
    monkeypatch.setattr(cli, "controller", lambda s: Controller(s, deployer=RunningDeployer()))
    monkeypatch.setenv("COLUMNS", "200")  # rich wraps tables at the terminal's width
    return settings.state_db


def stored_traffic(db: Path) -> dict:
    from qingliang.platform.storage.state import StateStore

    row = StateStore(db).get("ModelDeployment", "tiny")
    assert row is not None
    return row.body["spec"]["lora"]["traffic"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["sql"], "'sql' is not NAME=SHARE (e.g. faq-v4=0.1)"),
        (["sql="], "'sql=' is not NAME=SHARE"),
        (["=0.1"], "'=0.1' is not NAME=SHARE"),
        (["sql:0.1"], "'sql:0.1' is not NAME=SHARE"),
        (["sql=abc"], "'sql=abc': the share 'abc' is not a number (e.g. sql=0.1)"),
        (["sql=0.1", "sql=0.2"], "adapter 'sql' is given twice"),
        ([], "give NAME=SHARE pairs (e.g. faq-v4=0.1), or --clear"),
        (["sql=0.1", "--clear"], "give NAME=SHARE pairs or --clear, not both"),
    ],
)
def test_traffic_rejects_malformed_shares(deployed: Path, args: list[str], message: str) -> None:
    r = runner.invoke(app, ["adapters", "traffic", "tiny", *args])
    assert r.exit_code == 1
    assert message in " ".join(r.output.split())
    assert stored_traffic(deployed) == {}


def test_traffic_sets_shows_and_clears(deployed: Path) -> None:
    r = runner.invoke(app, ["adapters", "traffic", "tiny", "sql=0.1", "law=25%"])
    assert r.exit_code == 0, r.output
    assert "tiny: law 25%, sql 10%, base 65%" in r.output
    assert stored_traffic(deployed) == {"sql": 0.1, "law": 0.25}

    r = runner.invoke(app, ["get"])
    assert r.exit_code == 0, r.output
    assert "TRAFFIC" in r.output and "law 25%, sql 10%, base 65%" in r.output

    r = runner.invoke(app, ["adapters", "traffic", "tiny", "--clear"])
    assert r.exit_code == 0, r.output
    assert stored_traffic(deployed) == {}
    assert "base 65%" not in runner.invoke(app, ["get"]).output


def test_traffic_reports_invalid_shares_by_field(deployed: Path) -> None:
    r = runner.invoke(app, ["adapters", "traffic", "tiny", "sql=0.7", "law=0.4"])
    assert r.exit_code == 1
    out = " ".join(r.output.split())
    assert "spec.lora.traffic: shares add up to 1.1" in out
    r = runner.invoke(app, ["adapters", "traffic", "tiny", "tutor=0.1"])
    assert r.exit_code == 1 and "adapter 'tutor' is not in `adapters`" in r.output
    r = runner.invoke(app, ["adapters", "traffic", "nope", "sql=0.1"])
    assert r.exit_code == 1 and "no ModelDeployment named 'nope'" in r.output
    assert stored_traffic(deployed) == {}


def test_alias_points_at_adapters_shows_and_is_removed(deployed: Path) -> None:
    from qingliang.platform.storage.state import StateStore

    def aliases() -> dict:
        row = StateStore(deployed).get("ModelDeployment", "tiny")
        assert row is not None
        return row.body["spec"]["lora"]["aliases"]

    r = runner.invoke(app, ["adapters", "alias", "tiny", "legal"])
    assert r.exit_code == 0, r.output
    assert "tiny:legal: base 100%" in r.output and aliases() == {"legal": {}}
    r = runner.invoke(app, ["adapters", "alias", "tiny", "legal", "law=90%", "sql=0.1"])
    assert r.exit_code == 0, r.output
    assert "tiny:legal: law 90%, sql 10%" in r.output and "base 0%" not in r.output
    assert aliases() == {"legal": {"law": 0.9, "sql": 0.1}}
    assert stored_traffic(deployed) == {}  # the bare deployment's canary is untouched
    out = runner.invoke(app, ["get"]).output
    assert "ALIASES" in out and "legal: law 90%, sql 10%" in out
    r = runner.invoke(app, ["adapters", "alias", "tiny", "legal", "lw=1"])
    assert r.exit_code == 1 and "alias 'legal': adapter 'lw' is not in `adapters`" in r.output
    r = runner.invoke(app, ["adapters", "alias", "tiny", "legal", "law=1", "--remove"])
    assert r.exit_code == 1 and "not both" in r.output
    r = runner.invoke(app, ["adapters", "alias", "tiny", "legal", "--remove"])
    assert r.exit_code == 0 and "tiny:legal: removed" in r.output and aliases() == {}

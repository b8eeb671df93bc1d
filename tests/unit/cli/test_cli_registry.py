"""`qingliang lineage` and `qingliang registry …`, and the registry side of
`qingliang data delete-record`, through typer's runner: the example dataset in a real
DatasetStore, a real SQLite registry and state store under a temporary QINGLIANG_HOME."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner, Result

import qingliang.platform.lifecycle.pipelines.kinds  # noqa: F401
from qingliang.platform.cli.main import app
from qingliang.platform.lifecycle.data.store import DatasetStore
from qingliang.platform.lifecycle.registry import Registry, record_dataset_version
from qingliang.platform.manifests.loader import load_paths
from qingliang.platform.settings import Settings
from qingliang.platform.storage.state import StateStore

REPO = Path(__file__).resolve().parents[3]
EXAMPLE = REPO / "deploy" / "examples" / "dataset-gov.yaml"
runner = CliRunner()


@pytest.fixture(autouse=True)
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("QINGLIANG_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("COLUMNS", "300")  # rich wraps at the terminal's width
    return tmp_path / "home"


@pytest.fixture
def store(home: Path) -> DatasetStore:
    store = DatasetStore.for_home(home)
    (item,) = load_paths([EXAMPLE])
    store.cut(item.manifest, EXAMPLE.parent, actor="test")  # type: ignore[arg-type]
    return store


@pytest.fixture
def chain(home: Path, store: DatasetStore) -> dict[str, str]:
    """gov-sft (cut) -> job gov-ft-1 on base qwen-tiny -> gov-desk@1, served by `support`."""
    v = store.get("gov-sft")  # the split depends on the store's random record key
    counts = f"{v.train} train, {v.eval} eval, {v.quarantined} quarantined"
    with Registry(home=home) as reg:
        data = record_dataset_version(reg, v).ref
        reg.register_base_model("qwen-tiny", source="qwen/tiny", format="safetensors")
        reg.register_job(
            "gov-ft-1", method="lora", base_model="qwen-tiny", train=[data], eval=[data]
        )
        reg.set_job_status("gov-ft-1", "running")
        adapter = reg.register_adapter(
            "gov-desk", path="/adapters/gov-desk-1", sha256="a" * 64, job="gov-ft-1"
        ).ref
        reg.set_job_status("gov-ft-1", "succeeded", metrics={"loss": 0.42})
        reg.set_status(adapter, "evaluated", metrics={"rouge_l": 0.51})
        reg.set_status(adapter, "approved", "beats the base model")
        reg.deployments.set_serving("support", model="qwen-tiny", adapters={adapter: 1.0})
    return {"adapter": adapter, "data": data, "counts": counts}


def invoke(*args: str) -> Result:
    return runner.invoke(app, list(args))


def run(*args: str) -> str:
    r = invoke(*args)
    assert r.exit_code == 0, r.output
    return r.output


def fails(*args: str) -> str:
    """The error message of a command that must fail with exit 1, on stderr only."""
    r = invoke(*args)
    assert r.exit_code == 1, r.output
    assert r.stdout == "" and r.stderr.startswith("error: "), r.output
    return " ".join(r.stderr.split())


def short(ref: str) -> str:
    head, _, version = ref.partition("sha256:")
    return f"{head}sha256:{version[:12]}"


def flatten(nodes: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [x for n in nodes for x in [n, *flatten(n["children"])]]


def put_deployment(lora: dict[str, Any]) -> None:
    StateStore(Settings().state_db).put(
        "ModelDeployment", "support", {"metadata": {"name": "support"}, "spec": {"lora": lora}}
    )


def test_help_lists_the_commands() -> None:
    assert "lineage" in run("--help") and "registry" in run("--help")
    out = run("registry", "--help")
    for cmd in ("adapters", "show", "jobs", "datasets", "sync"):
        assert cmd in out


def test_lineage_from_an_adapter_back_to_data_and_base_model(chain: dict[str, str]) -> None:
    out = run("lineage", "gov-desk@1")
    lines = out.splitlines()
    assert lines[0] == "adapter gov-desk@1  (serving)"
    assert "  made from:" in lines and "  used by:" in lines
    assert "  └── produced by job gov-ft-1  (lora, succeeded)" in lines
    assert f"trained on dataset {short(chain['data'])}  ({chain['counts']}; active)" in out
    assert f"evaluated on dataset {short(chain['data'])}" in out
    assert "fine-tunes base model qwen-tiny  (qwen/tiny)" in out
    assert "served by deployment support  (serving 100% since " in out
    assert chain["data"] in run("lineage", "gov-desk@1", "--full")
    # A bare adapter name is its newest version; --direction up leaves out the deployments.
    up = run("lineage", "gov-desk", "--direction", "up")
    assert up.startswith("adapter gov-desk@1") and "support" not in up
    assert "produced by job" not in run("lineage", "gov-desk@1", "--direction", "down")
    assert "trained on" not in run("lineage", "gov-desk@1", "--depth", "1")


def test_lineage_json(chain: dict[str, str]) -> None:
    doc = json.loads(run("lineage", "gov-desk@1", "--json"))
    assert (doc["kind"], doc["ref"], doc["status"]) == ("adapter", "gov-desk@1", "serving")
    up = flatten(doc["upstream"])
    assert [(n["kind"], n["ref"], n["relation"]) for n in up] == [
        ("job", "gov-ft-1", "produced_by"),
        ("base_model", "qwen-tiny", "fine_tunes"),
        ("dataset_version", chain["data"], "trained_on"),
        ("dataset_version", chain["data"], "evaluated_on"),
    ]
    data = up[2]["details"]
    assert data["status"] == "active"
    assert chain["counts"] == "{train} train, {eval} eval, {quarantined} quarantined".format(
        **data["record_counts"]
    )
    (dep,) = doc["downstream"]
    assert (dep["kind"], dep["ref"]) == ("deployment", "support")
    assert dep["details"]["traffic"]["share"] == 1.0 and dep["details"]["traffic"]["serving"]


def test_lineage_of_a_deployment_adapter_pair(chain: dict[str, str]) -> None:
    put_deployment(
        {
            "enabled": True,
            "adapters": {"gov": "/adapters/gov-desk-1", "faq": "/adapters/faq"},
            "refs": {"gov": chain["adapter"]},
        }
    )
    out = run("lineage", "support:gov")
    assert out.startswith("support:gov → gov-desk@1 (spec.lora.refs)\nadapter gov-desk@1 ")
    assert f"trained on dataset {short(chain['data'])}" in out
    doc = json.loads(run("lineage", "support:gov", "--json"))
    assert doc["ref"] == "gov-desk@1" and doc["query"] == "support:gov"
    assert "gov-desk@1" in run("registry", "show", "support:gov")

    err = fails("lineage", "support:faq")
    assert "'support:faq'" in err and "without a registry ref" in err
    assert "(it has: faq (no ref), gov → gov-desk@1)" in err
    err = fails("lineage", "support:gvo")
    assert "has no adapter 'gvo'; did you mean 'gov'?" in err
    err = fails("lineage", "suport:gov")
    assert "no ModelDeployment named 'suport'; did you mean 'support'?" in err


def test_a_deployment_without_refs_says_what_it_has(chain: dict[str, str]) -> None:
    put_deployment({"enabled": True, "adapters": {"gov": "/adapters/gov-desk-1"}})
    err = fails("lineage", "support:gov")
    assert "(it has: gov (no ref))" in err and "--ref NAME@VERSION" in err


def test_lineage_from_a_dataset_version_down_to_deployments(chain: dict[str, str]) -> None:
    prefix = chain["data"][: len("gov-sft@sha256:") + 8]
    out = run("lineage", prefix, "--direction", "down")
    assert out.startswith(f"dataset {short(chain['data'])}  ({chain['counts']}; active)")
    assert "trained job gov-ft-1" in out and "produced adapter gov-desk@1" in out
    assert "served by deployment support" in out
    # A bare dataset name is its newest recorded version.
    assert run("lineage", "gov-sft", "-d", "down") == out
    dep = run("lineage", "support", "--direction", "up")
    assert "serves adapter gov-desk@1  (serving; serving 100% since" in dep
    assert "serves base model qwen-tiny" in dep


def test_ambiguous_names_need_a_kind(chain: dict[str, str], home: Path) -> None:
    with Registry(home=home) as reg:
        reg.register_base_model("support", source="x/support", format="safetensors")
    err = fails("lineage", "support")
    assert "'support' is a base model and a deployment" in err
    assert "--kind model or --kind deployment" in err
    assert run("lineage", "support", "--kind", "deployment").startswith("deployment support")
    assert run("lineage", "support", "--kind", "model").startswith("base model support")


def test_unknown_refs_are_named(chain: dict[str, str]) -> None:
    assert "no adapter 'gov-dsk' in the registry; did you mean 'gov-desk'?" in fails(
        "lineage", "gov-dsk@1"
    )
    assert "adapter 'gov-desk' has no version 9 (it has 1..1)" in fails("lineage", "gov-desk@9")
    err = fails("lineage", "gov-ft-2")
    assert "'gov-ft-2' is not in the registry" in err and "did you mean 'gov-ft-1'?" in err
    err = fails("lineage", "gov-sft@sha256:ffff")
    assert "dataset 'gov-sft' has no version 'sha256:ffff'" in err
    assert "no dataset 'gov-stf' in the registry; did you mean 'gov-sft'?" in fails(
        "lineage", "gov-stf@sha256:ffff"
    )
    assert "no job 'nope'" in fails("lineage", "nope", "--kind", "job")
    assert "--kind 'dataste'" in fails("lineage", "x", "--kind", "dataste")
    assert "--direction 'sideways'" in fails("lineage", "gov-desk@1", "-d", "sideways")
    assert "no adapter 'nope'" in fails("registry", "show", "nope@1")


def test_registry_listings(chain: dict[str, str]) -> None:
    out = run("registry", "adapters")
    assert out.startswith("gov-desk@1  serving  base qwen-tiny  job gov-ft-1  ")
    assert run("registry", "adapters", "--status", "stale") == "no adapters with status stale\n"
    (row,) = json.loads(run("registry", "adapters", "gov-desk", "--json"))
    assert row["ref"] == "gov-desk@1" and row["metrics"] == {"rouge_l": 0.51}
    assert "did you mean 'gov-desk'?" in fails("registry", "adapters", "gov-dsk")

    show = run("registry", "show", "gov-desk")
    assert show.startswith("adapter gov-desk@1: serving\n")
    assert "  job: gov-ft-1 (lora, succeeded)" in show and "  metrics:\n    rouge_l: 0.51\n" in show
    assert "evaluation sample" not in show and "--samples" not in show
    assert f"    train: {short(chain['data'])} ({chain['counts']}; active)" in show
    assert "  served by support: 100% since " in show
    assert "evaluated → approved: beats the base model" in show
    doc = json.loads(run("registry", "show", "gov-desk@1", "--json"))
    assert [e["to_status"] for e in doc["history"]] == [
        "registered",
        "evaluated",
        "approved",
        "serving",
    ]
    assert doc["job"]["train"] == [chain["data"]]

    assert run("registry", "jobs").startswith("gov-ft-1  succeeded  lora  base qwen-tiny  train ")
    assert json.loads(run("registry", "jobs", "--json"))[0]["metrics"] == {"loss": 0.42}
    out = run("registry", "datasets")
    assert out.startswith(f"{short(chain['data'])}  {chain['counts']}  ")
    assert out.rstrip().endswith("active")
    assert "did you mean 'gov-sft'?" in fails("registry", "datasets", "gov-stf")


EVALUATION = {
    "records": 7,
    "metrics": {
        "rouge_l": {"base": 0.123456, "adapter": 0.654321},
        "exact_match": {"base": 0.0, "adapter": 0.5},
    },
    "samples": [
        {
            "reference": "Apply at the district office. " * 20,
            "base": "I don't know",
            "adapter": "Apply",
        },
        {
            "id": "r-17",
            "prompt": "How do I renew a residence permit?\nPlease be brief.",
            "reference": "Renew online within 30 days.",
            "base": "Renew it.",
            "adapter": "Renew online within 30 days.",
            "scores": {"rouge_l": {"base": 0.25, "adapter": 1.0}},
        },
        {"reference": "Yes.", "base": "No.", "adapter": "Yes."},
    ],
}


def test_show_counts_the_evaluation_samples_and_lists_them_on_request(
    chain: dict[str, str], home: Path
) -> None:
    metrics = {"final_train_loss": 1.234567, "steps": 12, "evaluation": EVALUATION}
    with Registry(home=home) as reg:
        ref = reg.register_adapter(
            "gov-desk",
            path="/adapters/gov-desk-2",
            sha256="b" * 64,
            job="gov-ft-1",
            metrics=metrics,
        ).ref
    assert ref == "gov-desk@2"
    long_reference = EVALUATION["samples"][0]["reference"]  # type: ignore[index]

    show = run("registry", "show", "gov-desk@2")
    lines = show.splitlines()
    at = lines.index("  metrics:")
    metrics_lines = lines[at + 1 : at + 6]
    assert [" ".join(line.split()) for line in metrics_lines] == [
        "final_train_loss: 1.235",
        "steps: 12",
        "evaluation.records: 7",
        "evaluation.metrics.rouge_l: base 0.1235 → adapter 0.6543 (+0.5309)",
        "evaluation.metrics.exact_match: base 0 → adapter 0.5 (+0.5)",
    ]
    # the values line up in one column
    assert len({len(line) - len(line.split(":", 1)[1].lstrip()) for line in metrics_lines}) == 1
    assert lines[at + 6] == "  3 evaluation samples; --samples to list them"
    assert "residence permit" not in show and "district office" not in show
    assert "  history:" in lines  # the rest of show is still there

    listed = run("registry", "show", "gov-desk@2", "--samples")
    assert "--samples to list them" not in listed
    assert "  evaluation samples:" in listed.splitlines()
    assert "    sample 1" in listed.splitlines()  # no record id stored for it
    assert "    sample 2: record r-17" in listed
    assert "      prompt:    How do I renew a residence permit? Please be brief." in listed
    assert "      adapter:   Renew online within 30 days." in listed
    assert "      scores:    rouge_l: base 0.25 → adapter 1 (+0.75)" in listed
    cut = " ".join(long_reference.split())
    assert f"      reference: {cut[:200]}… (+{len(cut) - 200} chars)" in listed
    assert long_reference.strip() not in listed

    doc = json.loads(run("registry", "show", "gov-desk@2", "--json"))
    assert doc["metrics"] == metrics  # whole, untruncated


def test_show_samples_when_none_are_stored(chain: dict[str, str]) -> None:
    out = run("registry", "show", "gov-desk@1", "--samples")
    assert "  evaluation samples: none stored" in out.splitlines()


def test_delete_record_marks_the_adapter_stale(
    chain: dict[str, str], store: DatasetStore, home: Path
) -> None:
    old = store.get("gov-sft")
    rid = store.read("gov-sft", split="all")[0]["id"]
    out = run("data", "delete-record", "gov-sft", rid, "--reason", "request 17")
    new = store.get("gov-sft")
    assert f"    {old.version} → {new.version}" in out
    assert "  adapters marked stale in the registry: gov-desk@1" in out
    assert "  gov-desk@1 is still served by support: take it out of them" in out

    with Registry(home=home) as reg:
        adapter = reg.get_adapter("gov-desk@1")
        assert adapter.status == "stale" and adapter.stale_reason
        assert rid in adapter.stale_reason and "request 17" in adapter.stale_reason
        before = reg.get_dataset_version(chain["data"])
        assert before.status == "superseded" and before.superseded_by == new.version
        assert reg.get_dataset_version(f"gov-sft@{new.version}").status == "active"
    # The dataset store holds both versions: the old one superseded, the new one active.
    versions = {v.version: v for v in store.versions("gov-sft")}
    assert versions[old.version].status == "superseded"
    assert versions[old.version].superseded_by == new.version
    assert versions[new.version].status == "active" and versions[new.version].latest
    assert new.records == old.records - 1
    assert rid not in {r["id"] for r in store.read("gov-sft", split="all")}

    assert "  stale because: deleted record(s) " in run("registry", "show", "gov-desk@1")
    out = run("lineage", "gov-desk@1")
    assert out.startswith("adapter gov-desk@1  (stale: deleted record(s) ")
    assert f"superseded by {short(new.version)} (deleted record(s) {rid}: request 17)" in out
    assert "gov-desk@1  stale" in run("registry", "adapters", "--status", "stale")


def test_delete_record_when_the_registry_is_unreachable(
    chain: dict[str, str], store: DatasetStore, home: Path
) -> None:
    db = home / "registry.sqlite"
    aside = home / "registry.aside"
    db.rename(aside)
    db.mkdir()  # sqlite cannot open a folder
    old = store.get("gov-sft")
    rid = store.read("gov-sft", split="all")[0]["id"]

    r = invoke("data", "delete-record", "gov-sft", rid, "--reason", "request 18")

    assert r.exit_code == 1
    new = store.get("gov-sft")
    assert f"{old.version} → {new.version}" in r.stdout  # the deletion is reported ...
    err = " ".join(r.stderr.split())
    assert err.startswith("error: the deletion stands") and "registry was not updated" in err
    assert "run: qingliang registry sync gov-sft" in err
    # ... and stands: the store has the new version and the old one superseded.
    assert new.version != old.version and new.records == old.records - 1
    assert store.get("gov-sft", old.version).superseded_by == new.version

    shutil.rmtree(db)
    aside.rename(db)
    out = run("registry", "sync", "gov-sft")
    assert out.startswith("gov-sft: recorded 1 version(s); ")
    assert f"{short(chain['data'])} superseded by {short(new.version)}" in out
    assert out.rstrip().endswith("adapters marked stale: gov-desk@1")
    assert run("registry", "sync") == "gov-sft: up to date\n"

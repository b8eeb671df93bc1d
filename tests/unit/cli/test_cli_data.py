"""`qingliang data …`, `apply` and `delete Dataset/NAME` through typer's runner, on the
example dataset (real files, real SQLite under a temporary QINGLIANG_HOME)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from qingliang.platform.cli.main import app
from qingliang.platform.lifecycle.data.store import DatasetStore

REPO = Path(__file__).resolve().parents[3]
EXAMPLE = REPO / "deploy" / "examples" / "dataset-gov.yaml"
runner = CliRunner()


@pytest.fixture(autouse=True)
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("QINGLIANG_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("COLUMNS", "200")  # rich wraps at the terminal's width
    return tmp_path / "home"


@pytest.fixture
def manifest(tmp_path: Path) -> Path:
    """A copy of the example dataset, so a test may change its files."""
    folder = tmp_path / "examples"
    shutil.copytree(EXAMPLE.parent / "data" / "gov-sft", folder / "data" / "gov-sft")
    shutil.copy(EXAMPLE, folder / EXAMPLE.name)
    return folder / EXAMPLE.name


def run(*args: str) -> str:
    r = runner.invoke(app, list(args))
    assert r.exit_code == 0, r.output
    return r.output


@pytest.fixture
def applied(manifest: Path) -> str:
    out = run("apply", "-f", str(manifest))
    assert "Dataset/gov-sft: create" in out
    return out


def test_help_lists_the_data_commands() -> None:
    out = run("data", "--help")
    for cmd in ("versions", "report", "quarantine", "delete-record", "audit"):
        assert cmd in out
    assert "Dataset/NAME" in run("delete", "--help")


def test_apply_prints_the_version(applied: str, home: Path) -> None:
    v = DatasetStore.for_home(home).get("gov-sft")
    assert v.version in " ".join(applied.split()).replace("\n", "")
    assert f"{v.records} records ({v.train} train, {v.eval} eval)" in " ".join(applied.split())


def test_versions(applied: str, home: Path, manifest: Path) -> None:
    v = DatasetStore.for_home(home).get("gov-sft")
    out = run("data", "versions", "gov-sft")
    assert out.startswith(f"* {v.version[:19]}  ")
    assert "active (latest)" in out and f"{v.quarantined} quarantined" in out
    assert v.version in run("data", "versions", "gov-sft", "--full")
    (row,) = json.loads(run("data", "versions", "gov-sft", "--json"))
    assert row["version"] == v.version and row["status"] == "active"


def test_report(applied: str) -> None:
    out = run("data", "report", "gov-sft")
    assert "  schema: 28 → 26; quarantined 2 (empty content 1, wrong role 1)" in out
    assert "2 phone_cn redacted in 1 records" in out and "2 ticket_id redacted" in out
    assert "dedup (conversation): 26 → 24; removed 1 exact, 1 near" in out
    assert "quality (conversation): 24 → 22; removed by rule: blocked_terms 1, repetition 1" in out
    assert "data/gov-sft/gateway-export.jsonl (gateway_logs): 3 rows, 2 records" in out
    assert "1 filtered out" in out and "corrections: 1 replaced, 0 added, 1 quarantined" in out
    data = json.loads(run("data", "report", "gov-sft", "--json"))
    assert [s["step"] for s in data["steps"]] == ["schema", "pii", "dedup", "quality"]
    prefix = data["version"].removeprefix("sha256:")[:8]
    assert json.loads(run("data", "report", "gov-sft", prefix, "--json")) == data


def test_quarantine(applied: str) -> None:
    out = run("data", "quarantine", "gov-sft")
    assert "data/gov-sft/qa.jsonl line 6 [read]: invalid JSON" in out
    assert "data/gov-sft/faq.csv line 5 [read]: row has 2 cells, the header has 5" in out
    assert "[schema] id " in out and "'customer' is not one of system, user, assistant" in out
    lines = run("data", "quarantine", "gov-sft", "--json").splitlines()
    assert len(lines) == 5 and all("reason" in json.loads(ln) for ln in lines)


def test_delete_record_and_audit(applied: str, home: Path) -> None:
    store = DatasetStore.for_home(home)
    old = store.get("gov-sft")
    record = store.read("gov-sft", split="all")[0]
    out = run(
        "data", "delete-record", "gov-sft", record["id"], "--reason", "request 17", "--actor", "dpo"
    )
    new = store.get("gov-sft")
    assert f"gov-sft: deleted {record['id']} (request 17)" in out
    assert f"{old.version} → {new.version}" in out
    # The model registry learns of it (no adapter was trained on this data yet).
    assert "registry: no adapter was trained on the old versions" in out
    assert "active" in run("registry", "datasets", "gov-sft").splitlines()[-1]
    assert record["id"] not in json.dumps(store.read("gov-sft", split="all"))
    out = run("data", "versions", "gov-sft")
    assert "superseded by" in out and "request 17" in out
    audit = run("data", "audit", "gov-sft")
    assert [ln.split("  ")[2] for ln in audit.splitlines()] == ["cut", "delete", "supersede"]
    assert "dpo" in audit
    assert run("data", "audit", "--since", "2999-01-01") == "no audit entries\n"
    assert len(run("data", "audit", "--json").splitlines()) == 3


def test_delete_record_by_match(applied: str) -> None:
    out = run("data", "delete-record", "gov-sft", "--match", "电动自行车", "--reason", "outdated")
    assert out.startswith("gov-sft: deleted ")


def test_errors_exit_1(applied: str) -> None:
    for args in (
        ["data", "versions", "nope"],
        ["data", "report", "gov-sft", "ffff"],
        ["data", "delete-record", "gov-sft", "f" * 24, "--reason", "x"],
        ["data", "audit", "--since", "yesterday"],
    ):
        r = runner.invoke(app, args)
        assert r.exit_code == 1 and "error:" in r.output, args
    r = runner.invoke(app, ["data", "delete-record", "gov-sft", "abc"])
    assert r.exit_code == 2 and "--reason" in r.output


def test_delete_a_dataset(applied: str, home: Path) -> None:
    out = run("delete", "Dataset/gov-sft")
    assert "Dataset/gov-sft: deleted" in out
    assert not (home / "datasets" / "gov-sft").exists()
    assert "remove" in run("data", "audit", "gov-sft")
    r = runner.invoke(app, ["delete", "Dataset/gov-sft"])
    assert r.exit_code == 1 and "no Dataset named 'gov-sft'" in r.output


def test_validate_accepts_the_examples() -> None:
    out = run("validate", "-f", str(EXAMPLE))
    assert "Dataset/gov-sft" in out


def _dataset(folder: Path, lines: list[str], eval_fraction: float) -> Path:
    (folder / "qa.jsonl").write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    path = folder / "ds.yaml"
    path.write_text(
        "apiVersion: qingliang.io/v1\nkind: Dataset\nmetadata: {name: tiny-set}\n"
        "spec:\n  sources: [{path: qa.jsonl}]\n  governance: [{step: schema}]\n"
        f"  split: {{eval_fraction: {eval_fraction}}}\n"
    )
    return path


def test_apply_refuses_a_dataset_with_no_usable_record(tmp_path: Path, home: Path) -> None:
    path = _dataset(tmp_path, ["{broken", "{broken too", '"a string"'], 0.1)
    r = runner.invoke(app, ["apply", "-f", str(path)])
    assert r.exit_code == 1
    text = " ".join(r.output.split())
    assert "dataset tiny-set: no record is left to store, so no version was cut" in text
    assert "read: invalid JSON: Expecting property name enclosed in double quotes (2)" in text
    assert "read: a record must be a JSON object, got str (1)" in text
    assert runner.invoke(app, ["data", "versions", "tiny-set"]).exit_code == 1


def test_an_empty_eval_split_is_reported(tmp_path: Path, home: Path) -> None:
    good = json.dumps(
        {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}
    )
    applied = " ".join(run("apply", "-f", str(_dataset(tmp_path, [good], 1e-6))).split())
    assert "warning: dataset tiny-set: the eval split is empty" in applied  # in what apply says
    out = " ".join(run("data", "report", "tiny-set").split())
    assert "warning: dataset tiny-set: the eval split is empty (split.eval_fraction 1e-06" in out

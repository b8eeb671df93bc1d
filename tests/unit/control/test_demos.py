"""``qingliang demo``: bundles prepared, applied and removed through the real Controller
(state store, knowledge registration, graph checks); only Ray Serve is a fake (the
deployer), as in test_control. The bundles here are small ones written by the test."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from qingliang.platform.control import demos
from qingliang.platform.control.apply import Controller
from qingliang.platform.errors import Conflict, ManifestError, NotFound
from qingliang.platform.settings import Settings
from qingliang.serving.plan import HardwareProfile
from tests.unit.control.test_control import FakeDeployer, FakeResolver, manifest

DESKS = {"gov": "gov-desk", "healthcare": "health-desk", "manufacturing": "plant-desk"}
REPO = Path(__file__).resolve().parents[3]


def bundle(root: Path, domain: str) -> Path:
    b = root / domain
    (b / "data" / "docs").mkdir(parents=True)
    (b / "data" / "docs" / "faq.md").write_text(f"# {domain}\n\nOffice hours are 9 to 5.\n")
    (b / "data" / "items.csv").write_text("id,name,score,weight\n1,pump,8,1.5\n2,belt,,2\n")
    kb = {
        "apiVersion": "qingliang.io/v1",
        "kind": "KnowledgeBase",
        "metadata": {"name": f"{domain}-kb"},
        "spec": {"sources": [{"folder": "data/docs"}], "labels": {"domain": domain}},
    }
    desk = {
        "apiVersion": "qingliang.io/v1",
        "kind": "AgentGraph",
        "metadata": {"name": DESKS[domain]},
        "spec": {
            "agents": [{"name": "a", "model": "qwen-coder", "knowledge": [f"{domain}-kb"]}],
            "nodes": [{"name": "n", "type": "agent", "agent": "a"}],
        },
    }
    (b / "kb.yaml").write_text(yaml.safe_dump(kb))
    (b / "desk.yaml").write_text(yaml.safe_dump(desk))
    demo = {
        "title": f"{domain} demo",
        "summary": "what it shows",
        "prepare": {
            "sqlite": [{"csv": "data/items.csv", "database": "data/items.sqlite", "table": "items"}]
        },
        "manifests": ["kb.yaml", "desk.yaml"],
        "try": [f"qingliang agents run {DESKS[domain]} hi"],
    }
    (b / "demo.yaml").write_text(yaml.safe_dump(demo, allow_unicode=True))
    return b


@pytest.fixture
def root(tmp_path: Path) -> Path:
    r = tmp_path / "domains"
    for d in demos.DOMAINS:
        bundle(r, d)
    (r / demos.FRONT_DESK).write_text((REPO / "deploy" / "domains" / demos.FRONT_DESK).read_text())
    examples = "front-desk-examples.jsonl"  # the front desk router's warm start, beside it
    (r / examples).write_text((REPO / "deploy" / "domains" / examples).read_text())
    return r


@pytest.fixture
def home(tmp_path: Path) -> Path:
    return tmp_path / "home"


@pytest.fixture
def ctl(home: Path, tmp_path: Path) -> Controller:
    c = Controller(
        Settings(home=home),
        deployer=FakeDeployer(),
        profile=HardwareProfile(cpu_isa="avx2", vllm=True),
        resolver=FakeResolver(tmp_path),
    )
    model = tmp_path / "qwen-coder.yaml"
    model.write_text(manifest("qwen-coder"))
    c.deployer.status["qwen-coder"] = [("RUNNING", "")]  # type: ignore[union-attr]
    c.apply([model], wait=False, progress=False)
    return c


def kinds(ctl: Controller) -> set[tuple[str, str]]:
    return {(r.kind, r.name) for r in ctl.store.list()}


def test_select_names_the_domains(root: Path) -> None:
    assert [b.name for b in demos.select(["all"], root)] == list(demos.DOMAINS)
    assert [b.name for b in demos.select(["manufacturing", "gov"], root)] == [
        "gov",
        "manufacturing",
    ]
    with pytest.raises(NotFound, match="no demo 'helthcare' \\(did you mean 'healthcare'\\?\\)"):
        demos.select(["helthcare"], root)
    (root / "gov" / "demo.yaml").unlink()
    with pytest.raises(NotFound, match="not found under .*: gov"):
        demos.select(["all"], root)


def test_a_bad_demo_file_names_the_field(root: Path) -> None:
    path = root / "gov" / "demo.yaml"
    doc = yaml.safe_load(path.read_text())
    doc["manifests"] = ["kb.yaml", "missing.yaml"]
    doc["tittle"] = "x"
    path.write_text(yaml.safe_dump(doc))
    with pytest.raises(ManifestError) as err:
        demos.Bundle.load(root / "gov")
    assert "tittle" in str(err.value) and str(path) in str(err.value)
    del doc["tittle"]
    path.write_text(yaml.safe_dump(doc))
    with pytest.raises(ManifestError, match="no such file: missing.yaml"):
        demos.Bundle.load(root / "gov")


def test_prepare_builds_typed_tables_once(root: Path) -> None:
    b = demos.Bundle.load(root / "gov")
    (db,) = demos.prepare(b)
    with sqlite3.connect(db) as conn:
        rows = conn.execute("SELECT id, name, score, weight FROM items ORDER BY id").fetchall()
        types = [r[2] for r in conn.execute("PRAGMA table_info(items)")]
    assert rows == [(1, "pump", 8, 1.5), (2, "belt", None, 2.0)]
    assert types == ["INTEGER", "TEXT", "INTEGER", "REAL"]
    before = db.stat().st_mtime_ns
    demos.prepare(b)
    assert db.stat().st_mtime_ns == before  # newer than its CSV: left alone
    (root / "gov" / "data" / "items.csv").write_text("id,name\n1,a,extra\n")
    with pytest.raises(ManifestError, match="line 2: 3 fields, the header has 2"):
        demos.prepare(b)


def test_up_all_then_down_all_leaves_the_platform_as_it_was(
    root: Path, ctl: Controller, home: Path
) -> None:
    before = kinds(ctl)
    synced: list[str] = []
    lines: list[str] = []
    demos.up(demos.select(["all"], root), ctl, home, sync=synced.extend, say=lines.append)
    now = kinds(ctl)
    for d, desk in DESKS.items():
        assert ("AgentGraph", desk) in now and ("KnowledgeBase", f"{d}-kb") in now
    assert ("AgentGraph", "front-desk") in now  # all three up: the front desk too
    assert synced == ["gov-kb", "healthcare-kb", "manufacturing-kb"]
    assert "gov: prepared data/items.sqlite" in lines
    # up again: nothing new, nothing refused
    demos.up(demos.select(["gov"], root), ctl, home, sync=synced.extend, say=lines.append)
    removed = demos.down(["all"], ctl, home, say=lines.append)
    assert removed[0] == "AgentGraph/front-desk"
    assert kinds(ctl) == before  # the user's deployment stays
    assert demos.Managed(home / demos.RECORD).read() == {}


def test_one_domain_down_takes_the_front_desk_with_it(
    root: Path, ctl: Controller, home: Path
) -> None:
    demos.up(demos.select(["all"], root), ctl, home, sync=lambda _: None, say=lambda _: None)
    demos.down(["healthcare"], ctl, home, say=lambda _: None)
    now = kinds(ctl)
    assert ("AgentGraph", "front-desk") not in now and ("AgentGraph", "health-desk") not in now
    assert ("AgentGraph", "gov-desk") in now
    demos.up(demos.select(["healthcare"], root), ctl, home, sync=lambda _: None, say=print)
    assert ("AgentGraph", "front-desk") in kinds(ctl)  # all three up again


def test_up_never_takes_over_what_a_user_made(root: Path, ctl: Controller, home: Path) -> None:
    mine = root.parent / "mine.yaml"
    mine.write_text(
        (root / "gov" / "kb.yaml")
        .read_text()
        .replace("data/docs", str(root / "gov" / "data" / "docs"))
    )
    ctl.apply([mine], wait=False, progress=False)
    before = kinds(ctl)
    with pytest.raises(Conflict, match="KnowledgeBase/gov-kb exists and was not created by a demo"):
        demos.up(demos.select(["all"], root), ctl, home, sync=lambda _: None, say=print)
    assert kinds(ctl) == before
    assert demos.down(["all"], ctl, home, say=print) == []
    assert ("KnowledgeBase", "gov-kb") in kinds(ctl)


def test_the_cli(root: Path, ctl: Controller, home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from qingliang.platform.cli import _common
    from qingliang.platform.cli.main import app

    monkeypatch.setenv("QINGLIANG_HOME", str(home))
    monkeypatch.setenv("QINGLIANG_DEMOS_DIR", str(root))
    monkeypatch.setattr(_common, "controller", lambda settings: ctl)
    monkeypatch.setattr("qingliang.platform.cli.kb.sync_after_apply", lambda names: None)
    runner = CliRunner()
    r = runner.invoke(app, ["demo", "up", "gov", "--no-train"])
    assert r.exit_code == 0, r.output
    assert "gov: AgentGraph/gov-desk create" in r.output
    assert "qingliang agents run gov-desk hi" in r.output
    r = runner.invoke(app, ["demo", "list"])
    assert r.exit_code == 0 and "gov            up    gov demo" in r.output
    r = runner.invoke(app, ["demo", "down", "govv"])
    assert r.exit_code == 1 and "did you mean 'gov'" in r.output
    r = runner.invoke(app, ["demo", "down", "gov"])
    assert r.exit_code == 0 and "gov: AgentGraph/gov-desk deleted" in r.output


def with_adapter(root: Path, domain: str = "gov", alias: str = "gov") -> None:
    """Give a test bundle a training pipeline that releases behind ``qwen-coder:<alias>``,
    and a desk whose agent calls that alias."""
    b = root / domain
    pipeline = {
        "apiVersion": "qingliang.io/v1",
        "kind": "Pipeline",
        "metadata": {"name": f"{domain}-release"},
        "spec": {
            "steps": [
                {"type": "govern", "dataset": "dataset.yaml"},
                {"type": "canary", "deployment": "qwen-coder", "share": 0.1, "alias": alias},
            ]
        },
    }
    (b / "train.yaml").write_text(yaml.safe_dump(pipeline))
    demo = yaml.safe_load((b / "demo.yaml").read_text())
    (b / "demo.yaml").write_text(yaml.safe_dump({**demo, "train": ["train.yaml"]}))
    desk = yaml.safe_load((b / "desk.yaml").read_text())
    desk["spec"]["agents"][0]["model"] = f"qwen-coder:{alias}"
    (b / "desk.yaml").write_text(yaml.safe_dump(desk))


def aliases(ctl: Controller) -> dict:
    row = ctl.store.get("ModelDeployment", "qwen-coder")
    assert row is not None
    return row.body["spec"]["lora"].get("aliases", {})


def test_up_creates_the_alias_its_desk_calls_and_down_removes_it_with_its_adapters(
    root: Path, ctl: Controller, home: Path, tmp_path: Path
) -> None:
    with_adapter(root)
    lines: list[str] = []
    demos.up(demos.select(["gov"], root), ctl, home, sync=lambda _: None, say=lines.append)
    assert aliases(ctl) == {"gov": {}}  # the base model answers until a release
    assert any("alias qwen-coder:gov created" in line for line in lines)
    assert ("AgentGraph", "gov-desk") in kinds(ctl)  # it resolved against the alias
    # What a training run then does: load gov-v1 and point the alias at it.
    adapter = tmp_path / "gov-v1"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text('{"r": 8}')
    ctl.set_adapter("qwen-coder", "gov-v1", str(adapter), ref="gov@1")
    ctl.set_alias("qwen-coder", "gov", {"gov-v1": 1.0})
    ctl.set_adapter("qwen-coder", "mine", str(adapter))  # a user's own adapter
    demos.up(demos.select(["gov"], root), ctl, home, sync=lambda _: None, say=lines.append)
    assert aliases(ctl) == {"gov": {"gov-v1": 1.0}}  # up again: the release is kept
    demos.down(["gov"], ctl, home, say=lines.append)
    row = ctl.store.get("ModelDeployment", "qwen-coder")
    assert row is not None and aliases(ctl) == {}
    assert sorted(row.body["spec"]["lora"]["adapters"]) == ["mine"]
    assert "gov: alias qwen-coder:gov removed, with the adapters it served" in lines


def test_up_refuses_an_alias_a_user_made_and_needs_the_deployment(
    root: Path, ctl: Controller, home: Path
) -> None:
    with_adapter(root)
    ctl.set_alias("qwen-coder", "gov", {})
    before = kinds(ctl)
    with pytest.raises(Conflict, match="qwen-coder:gov is an alias that was not created by a demo"):
        demos.up(demos.select(["gov"], root), ctl, home, sync=lambda _: None, say=print)
    assert kinds(ctl) == before
    ctl.set_alias("qwen-coder", "gov", None)
    ctl.delete(["qwen-coder"])
    with pytest.raises(NotFound, match="ModelDeployment 'qwen-coder', which is not applied"):
        demos.up(demos.select(["gov"], root), ctl, home, sync=lambda _: None, say=print)

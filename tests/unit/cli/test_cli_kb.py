"""``qingliang kb …`` end to end in-process: real ingest, the packaged multilingual embedder,
embedded Qdrant and the SQLite registry under a temporary QINGLIANG_HOME."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from qingliang.platform.cli.main import app

runner = CliRunner()


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    h = tmp_path / "home"
    monkeypatch.setenv("QINGLIANG_HOME", str(h))
    monkeypatch.setenv("COLUMNS", "300")  # rich tables would cut long paths
    return h


@pytest.fixture
def mixed(tmp_path: Path) -> Path:
    d = tmp_path / "mixed"
    (d / "sub").mkdir(parents=True)
    (d / "policy.md").write_text(
        "# 复工指引\n\n## 返岗人员\n\n返岗人员须居家观察十四天。\n\n"
        "## 企业\n\n企业须制定防控方案。",
        encoding="utf-8",
    )
    (d / "sub" / "clinics.csv").write_text(
        "区,发热门诊\n东城,协和医院\n朝阳,朝阳医院\n", encoding="utf-8"
    )
    (d / "page.html").write_text(
        "<h1>Hotline</h1><p>Call 12345 for policy questions.</p>", encoding="utf-8"
    )
    (d / "broken.json").write_text("{not json", encoding="utf-8")
    return d


def _ok(args: list[str]) -> str:
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    return result.output


def test_ingest_search_sync_snapshot_rollback(home: Path, mixed: Path) -> None:
    out = _ok(["kb", "ingest", str(mixed), "--name", "gov", "--tenant", "city-a", "--no-progress"])
    assert "KnowledgeBase/gov: created" in out
    assert re.search(r"version 1 — \d+ chunks from 4 files", out)
    assert "skipped" in out and "broken.json" in out  # reported, the rest went in

    out = _ok(["kb", "search", "gov", "返岗人员要观察多久"])
    first = out.splitlines()[1]
    assert "policy.md" in first and "复工指引 › 返岗人员" in first and "(v1, text)" in first
    out = _ok(["kb", "search", "gov", "朝阳 发热门诊", "--json"])
    hits = json.loads(out)["citations"]
    assert any(h["source"].endswith("clinics.csv") and h["row_start"] for h in hits)

    out = _ok(["kb", "sync", "gov", "--no-progress"])
    assert "0 added, 0 updated" in out and "embedded 0 (0.0%)" in out and "version 1" in out
    policy = mixed / "policy.md"
    policy.write_text(policy.read_text("utf-8").replace("十四天", "七天"), encoding="utf-8")
    out = _ok(["kb", "sync", "gov", "--no-progress"])
    # Only the edited chunk is embedded; its sibling is rewritten (new doc hash), not embedded.
    assert "version 2" in out and "3 unchanged" in out and "embedded 1 " in out

    out = _ok(["kb", "rollback", "gov", "1"])
    assert "restored v1 as version 3" in out
    assert "十四天" in _ok(["kb", "search", "gov", "返岗人员观察"])
    out = _ok(["kb", "stats", "gov"])
    assert "tenant city-a" in out and "version 3" in out and "v1" in out and "v2" in out
    assert "policy.md" in _ok(["kb", "documents", "gov"])
    assert _ok(["kb", "list"]).split() == ["gov"]


def test_errors_exit_1_with_a_reason(home: Path, mixed: Path) -> None:
    r = runner.invoke(app, ["kb", "search", "nope", "x"])
    assert r.exit_code == 1 and "unknown knowledge base 'nope'" in r.output
    r = runner.invoke(app, ["kb", "ingest", str(mixed / "missing")])
    assert r.exit_code == 1 and "no such file or folder" in r.output
    _ok(["kb", "ingest", str(mixed), "--name", "gov", "--no-progress"])
    r = runner.invoke(app, ["kb", "rollback", "gov", "7"])
    assert r.exit_code == 1 and "no snapshot of version 7" in r.output
    r = runner.invoke(app, ["kb", "search", "gov", "x", "--limit", "0"])
    assert r.exit_code == 1 and "limit" in r.output


def test_apply_syncs_a_knowledge_base_manifest(home: Path, mixed: Path, tmp_path: Path) -> None:
    manifest = tmp_path / "deploy" / "kb.yaml"
    manifest.parent.mkdir()
    rel = Path("..") / "mixed"
    body = {
        "apiVersion": "qingliang.io/v1",
        "kind": "KnowledgeBase",
        "metadata": {"name": "gov-policy"},
        "spec": {
            "sources": [{"folder": str(rel), "include": ["*.md", "*.csv"]}],
            "labels": {"tenant": "city-a", "domain": "gov"},
        },
    }
    manifest.write_text(yaml.safe_dump(body, allow_unicode=True), encoding="utf-8")
    out = _ok(["apply", "-f", str(manifest)])
    assert "KnowledgeBase/gov-policy: create" in out
    assert re.search(
        r"gov-policy: version 1 — \d+ chunks from 2 files", out
    )  # relative to the file
    out = _ok(["apply", "-f", str(manifest)])
    assert "KnowledgeBase/gov-policy: unchanged" in out and "embedded 0" in out
    out = _ok(["delete", "KnowledgeBase/gov-policy"])
    assert "KnowledgeBase/gov-policy: deleted" in out
    assert runner.invoke(app, ["kb", "stats", "gov-policy"]).exit_code == 1


def test_tenant_keys(home: Path) -> None:
    r = runner.invoke(app, ["keys", "create", "city-a-app", "--tenant", "city-a"])
    assert r.exit_code == 0, r.output
    assert "tenant:city-a" in _ok(["keys", "list"])
    r = runner.invoke(app, ["keys", "create", "bad", "--tenant", "City A"])
    assert r.exit_code == 1 and "scope" in r.output


def test_search_with_a_photo(home: Path, mixed: Path, tmp_path: Path) -> None:
    from PIL import Image, ImageDraw, ImageFont

    _ok(["kb", "ingest", str(mixed), "--name", "gov", "--no-progress"])
    photo = tmp_path / "sign.png"
    image = Image.new("RGB", (700, 140), "white")
    ImageDraw.Draw(image).text((30, 40), "Hotline 12345", fill="black",
                               font=ImageFont.load_default(size=40))  # fmt: skip
    image.save(photo)
    out = _ok(["kb", "search", "gov", "--image", str(photo)])
    assert "image searched by ocr: Hotline 12345" in out
    assert "page.html" in out.splitlines()[2]
    r = runner.invoke(app, ["kb", "search", "gov", "--image", str(tmp_path / "nope.png")])
    assert r.exit_code != 0 and "nope.png" in r.output
    (tmp_path / "text.png").write_text("not an image")
    r = runner.invoke(app, ["kb", "search", "gov", "--image", str(tmp_path / "text.png")])
    assert r.exit_code == 1 and "not an image that can be read" in r.output

"""The remote CLI against the running platform (issue 19): ``qingliang`` run as a user
runs it, with ``QINGLIANG_URL`` and ``QINGLIANG_API_KEY`` set and ``QINGLIANG_HOME`` an
empty folder, so nothing on this side can answer: every command goes through the
gateway's HTTP API, and the platform's own Controller, knowledge and agents do the work.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from _platform import Platform

pytestmark = pytest.mark.integration

GRAPH = {
    "apiVersion": "qingliang.io/v1",
    "kind": "AgentGraph",
    "metadata": {"name": "it-remote-desk"},
    "spec": {
        "agents": [{"name": "clerk", "model": "tiny", "max_tokens": 8}],
        "nodes": [{"name": "answer", "type": "agent", "agent": "clerk"}],
    },
}


@pytest.fixture
def qingliang(platform: Platform, tmp_path: Path) -> Any:
    """Run ``qingliang ARGS`` against the platform; ``env`` overrides the environment."""
    empty = tmp_path / "client-home"
    empty.mkdir()

    def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
        environ = {
            **os.environ,
            "QINGLIANG_HOME": str(empty),
            "QINGLIANG_URL": platform.base_url,
            "QINGLIANG_API_KEY": platform.key,
            "COLUMNS": "200",
            **(env or {}),
        }
        cmd = [sys.executable, "-m", "qingliang.platform.cli.main", *args]
        return subprocess.run(cmd, env=environ, capture_output=True, text=True, timeout=600)

    run.home = empty  # type: ignore[attr-defined]
    return run


def ok(result: subprocess.CompletedProcess) -> str:
    assert result.returncode == 0, result.stdout + result.stderr
    return str(result.stdout)


def test_the_cli_drives_the_platform_over_http(
    platform: Platform, qingliang: Any, tmp_path: Path
) -> None:
    status = json.loads(ok(qingliang("status", "--json")))
    assert status["running"] is True and status["home"] == str(platform.settings.home)

    # apply: a knowledge base (synced there) and an agent graph; the fixture's deployment
    # again (unchanged, and RUNNING when the command returns).
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "rule.md").write_text("# 返岗\n\n远程城市返岗人员须居家观察五天。", encoding="utf-8")
    kb = {
        "apiVersion": "qingliang.io/v1",
        "kind": "KnowledgeBase",
        "metadata": {"name": "it-remote"},
        "spec": {"sources": [{"folder": str(docs)}], "labels": {"tenant": "default"}},
    }
    files = tmp_path / "manifests"
    files.mkdir()
    (files / "kb.yaml").write_text(yaml.safe_dump(kb, allow_unicode=True), encoding="utf-8")
    (files / "graph.yaml").write_text(yaml.safe_dump(GRAPH), encoding="utf-8")
    out = ok(qingliang("apply", "-f", str(files)))
    assert "KnowledgeBase/it-remote: create" in out
    assert "AgentGraph/it-remote-desk: create" in out
    assert "it-remote: version 1" in out
    out = ok(qingliang("apply", "-f", str(platform.workdir / "tiny.yaml")))
    assert "ModelDeployment/tiny: unchanged" in out

    got = json.loads(ok(qingliang("get", "tiny", "--json")))
    assert [(g["name"], g["status"]) for g in got] == [("tiny", "RUNNING")]
    assert "a" in got[0]["adapters"]

    answer = ok(qingliang("chat", "tiny", "-m", "hello", "--max-tokens", "4"))
    assert answer.strip()

    # keys: create, list, revoke, all on the platform's key store.
    created = qingliang("keys", "create", "it-remote-ci", "--scope", "inference")
    secret = ok(created).strip().splitlines()[-1]
    assert secret.startswith("ql-")
    rows = json.loads(ok(qingliang("keys", "list", "--json")))
    mine = [r for r in rows if r["name"] == "it-remote-ci"]
    assert len(mine) == 1 and mine[0]["scopes"] == ["inference"] and not mine[0]["revoked"]
    assert "revoked" in ok(qingliang("keys", "revoke", "it-remote-ci"))
    rows = json.loads(ok(qingliang("keys", "list", "--json")))
    assert [r["revoked"] for r in rows if r["name"] == "it-remote-ci"] == [True]

    # knowledge and agents, read back through the platform.
    names = [k["id"] for k in json.loads(ok(qingliang("kb", "list", "--json")))]
    assert "it-remote" in names
    hits = json.loads(ok(qingliang("kb", "search", "it-remote", "返岗观察几天", "--json")))
    assert "五天" in hits["citations"][0]["text"]
    graphs = [g["id"] for g in json.loads(ok(qingliang("agents", "list", "--json")))]
    assert "it-remote-desk" in graphs

    # delete by KIND/NAME; gone on the platform.
    out = ok(qingliang("delete", "AgentGraph/it-remote-desk", "KnowledgeBase/it-remote"))
    assert "AgentGraph/it-remote-desk: deleted" in out and "KnowledgeBase/it-remote: deleted" in out
    names = [k["id"] for k in json.loads(ok(qingliang("kb", "list", "--json")))]
    assert "it-remote" not in names
    graphs = [g["id"] for g in json.loads(ok(qingliang("agents", "list", "--json")))]
    assert "it-remote-desk" not in graphs

    # Nothing was read or written on this side.
    assert list(qingliang.home.iterdir()) == []


def test_a_wrong_key_and_an_unreachable_server(qingliang: Any) -> None:
    bad = qingliang("get", env={"QINGLIANG_API_KEY": "ql-000000000000-wrong"})
    assert bad.returncode == 1
    said = " ".join(bad.stderr.split())
    assert "HTTP 401" in said and "QINGLIANG_API_KEY" in said
    gone = qingliang("--server", "http://127.0.0.1:28999", "keys", "list")
    assert gone.returncode == 1
    said = " ".join(gone.stderr.split())
    assert "cannot reach the platform at http://127.0.0.1:28999" in said
    up = qingliang("up")
    assert up.returncode == 1 and "works only on this machine" in up.stderr

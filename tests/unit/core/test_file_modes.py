"""Every store that keeps users' data or keys creates its SQLite file owner-only (0600)
in an owner-only data directory (issue 13, item 11), whatever the umask."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from qingliang.agents.checkpoint import inline_sqlite_saver
from qingliang.agents.runs import RunStore
from qingliang.platform.storage.arm_stats import ArmStats
from qingliang.platform.storage.keys import KeyStore
from qingliang.platform.storage.sqlite import open_db
from qingliang.platform.storage.state import StateStore


@pytest.fixture(autouse=True)
def loose_umask() -> Iterator[None]:
    old = os.umask(0o022)  # what most hosts use: files 0644, folders 0755
    try:
        yield
    finally:
        os.umask(old)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_key_store(tmp_path: Path) -> None:
    KeyStore(tmp_path / "home" / "state.sqlite").create("app")
    assert mode(tmp_path / "home" / "state.sqlite") == 0o600


def test_agent_run_store(tmp_path: Path) -> None:
    RunStore(tmp_path / "home" / "agents" / "runs.sqlite")
    assert mode(tmp_path / "home" / "agents" / "runs.sqlite") == 0o600
    assert mode(tmp_path / "home" / "agents") == 0o700


def test_agent_checkpoints(tmp_path: Path) -> None:
    inline_sqlite_saver(tmp_path / "home" / "checkpoints.sqlite")
    assert mode(tmp_path / "home" / "checkpoints.sqlite") == 0o600


def test_canary_arm_stats(tmp_path: Path) -> None:
    stats = ArmStats(tmp_path / "home" / "arm_stats.sqlite")
    stats.observe("qwen", None, ok=True, latency_s=0.1)
    stats.close()
    assert mode(tmp_path / "home" / "arm_stats.sqlite") == 0o600


def test_state_database_is_owner_only(tmp_path: Path) -> None:
    home = tmp_path / "home"
    StateStore(home / "state.sqlite").put("ModelDeployment", "qwen", {"spec": {}})
    assert mode(home) == 0o700
    assert mode(home / "state.sqlite") == 0o600
    wal = home / "state.sqlite-wal"
    assert not wal.exists() or mode(wal) == 0o600
    # The key store opened second keeps the file as it found it.
    KeyStore(home / "state.sqlite").create("ci")
    assert mode(home / "state.sqlite") == 0o600


def test_every_open_db_file_is_owner_only(tmp_path: Path) -> None:
    (tmp_path / "shared").mkdir(mode=0o755)
    with open_db(tmp_path / "shared" / "datasets.sqlite", "CREATE TABLE t (x);"):
        pass
    assert mode(tmp_path / "shared" / "datasets.sqlite") == 0o600
    assert mode(tmp_path / "shared") == 0o755  # a directory it did not create is left alone

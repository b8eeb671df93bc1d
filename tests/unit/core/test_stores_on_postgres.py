"""The control-plane state, the key store and the arm statistics on both backends.

Every test that takes ``store_url`` runs on a SQLite file and on a fresh database of the
PostgreSQL server the tests start (skipped, with the reason, where none can run); the
stores find the database through ``$QINGLIANG_DATABASE_URL``, as a cluster's do. The last
tests open SQLite files written by a Qingliang from before the storage layer.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from qingliang.platform.errors import BadRequest, NotFound
from qingliang.platform.storage.arm_stats import ArmStats, series, summary
from qingliang.platform.storage.keys import KeyStore
from qingliang.platform.storage.state import StateStore


@pytest.fixture
def shared(store_url: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """``store_url`` as the platform's shared database."""
    monkeypatch.setenv("QINGLIANG_DATABASE_URL", store_url)
    return store_url


# --------------------------------------------------------------------------- state


def test_state_store(shared: str, tmp_path: Path) -> None:
    store = StateStore(tmp_path / "state.sqlite")
    assert store.put("ModelDeployment", "qwen", {"spec": {"a": 1}}).generation == 1
    assert store.put("ModelDeployment", "qwen", {"spec": {"a": 1}}).generation == 1
    second = store.put("ModelDeployment", "qwen", {"spec": {"a": 2}}, plan={"p": [1]})
    assert second.generation == 2
    store.put("KnowledgeBase", "faq", {"spec": {}})
    other = StateStore(tmp_path / "elsewhere" / "state.sqlite")  # same shared database
    got = other.get("ModelDeployment", "qwen")
    assert got is not None and got.body == {"spec": {"a": 2}} and got.plan == {"p": [1]}
    assert [a.name for a in other.list()] == ["faq", "qwen"]
    assert [a.kind for a in other.list("KnowledgeBase")] == ["KnowledgeBase"]
    assert other.delete("ModelDeployment", "qwen") is True
    assert store.delete("ModelDeployment", "qwen") is False
    assert store.get("ModelDeployment", "qwen") is None
    assert not (tmp_path / "state.sqlite").exists()  # nothing went to the local file


# ---------------------------------------------------------------------------- keys


def test_key_store(shared: str, tmp_path: Path) -> None:
    store = KeyStore(tmp_path / "state.sqlite")
    record, key = store.create("ci", scopes=["inference", "tenant:acme"], tokens_per_day=100)
    verified = store.verify(key)
    assert verified is not None and verified.scopes == ("inference", "tenant:acme")
    assert verified.last_used_at is not None and verified.tokens_per_day == 100
    with pytest.raises(BadRequest, match="active key named 'ci'"):
        store.create("ci")
    store.charge(record.id, "2026-12-07", 30)
    store.charge(record.id, "2026-12-07", 12)
    assert store.tokens_used(record.id, "2026-12-07") == 42
    assert store.set_limits("ci", tokens_per_day=None).tokens_per_day is None
    assert store.revoke(record.prefix).revoked
    assert store.verify(key) is None
    with pytest.raises(NotFound):
        store.revoke("nobody")
    _new, new_key = store.create("ci")  # the name is free again
    assert [(r.name, r.revoked) for r in store.list()] == [("ci", True), ("ci", False)]
    assert store.verify(new_key) is not None


def test_a_key_check_does_not_wait_for_a_writer(shared: str, tmp_path: Path) -> None:
    store = KeyStore(tmp_path / "state.sqlite")
    _record, key = store.create("app")
    holding, release = threading.Event(), threading.Event()

    def hold() -> None:
        with store.db.write():  # another writer of the key store
            holding.set()
            release.wait(60)

    holder = threading.Thread(target=hold)
    holder.start()
    try:
        assert holding.wait(60)
        verified = store.verify(key)
    finally:
        release.set()
        holder.join(60)
    assert verified is not None and verified.name == "app"
    assert verified.last_used_at is None  # the best-effort write was skipped


_OTHER_PROCESS = textwrap.dedent(
    """
    import json, sys
    from qingliang.platform.storage.keys import KeyStore

    store = KeyStore(sys.argv[1] + "/state.sqlite")  # the database comes from the env
    if sys.argv[2] == "create":
        _record, key = store.create("made-elsewhere", scopes=["inference"])
        print(json.dumps(key))
    else:
        record = store.verify(sys.argv[3])
        print(json.dumps(None if record is None else record.name))
    """
)


def _other_process(*args: str) -> object:
    done = subprocess.run(
        [sys.executable, "-c", _OTHER_PROCESS, *args],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_a_key_made_by_one_process_is_accepted_by_another(shared: str, tmp_path: Path) -> None:
    """What a gateway replica on another node sees of a key made by the CLI."""
    key = _other_process(str(tmp_path / "cli"), "create")
    assert isinstance(key, str)
    gateway = KeyStore(tmp_path / "gateway" / "state.sqlite")
    verified = gateway.verify(key)
    assert verified is not None and verified.name == "made-elsewhere"
    gateway.revoke("made-elsewhere")
    assert _other_process(str(tmp_path / "replica"), "verify", key) is None


_CREATOR = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from qingliang.platform.storage.keys import KeyStore

    home, go, tag, count = sys.argv[1], Path(sys.argv[2]), sys.argv[3], int(sys.argv[4])
    store = KeyStore(home + "/state.sqlite")
    while not go.exists():
        time.sleep(0.005)
    for i in range(count):
        _record, key = store.create(f"{tag}-{i}")
        store.charge(_record.id, "2026-12-07", 1)
        store.charge("shared", "2026-12-07", 1)
    """
)


def test_two_processes_create_keys_and_charge_at_once(shared: str, tmp_path: Path) -> None:
    go, count = tmp_path / "go", 15
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _CREATOR, str(tmp_path / tag), str(go), tag, str(count)],
            stderr=subprocess.PIPE,
            text=True,
        )
        for tag in ("p1", "p2")
    ]
    go.touch()
    for proc in procs:
        _out, err = proc.communicate(timeout=180)
        assert proc.returncode == 0, err
    store = KeyStore(tmp_path / "state.sqlite")
    names = {r.name for r in store.list()}
    assert names == {f"{t}-{i}" for t in ("p1", "p2") for i in range(count)}
    assert store.tokens_used("shared", "2026-12-07") == 2 * count


# ----------------------------------------------------------------------- arm stats


def test_arm_stats(shared: str, tmp_path: Path) -> None:
    t = int(time.time()) // 60 * 60 - 120
    replicas = [ArmStats.for_home(tmp_path / f"replica{i}") for i in range(2)]
    for stats in replicas:  # two gateway replicas add to the same rows
        stats.observe("qwen", "faq", ok=True, latency_s=0.5, at=t, output_tokens=30, ttft_s=0.04)
        stats.observe("qwen", None, ok=False, latency_s=0.1, at=t + 10)
        stats.rejected("qwen", "faq", at=t + 61)
        stats.close()
    arms = summary(tmp_path / "console", "qwen", since=t)
    assert (arms["faq"].requests, arms["faq"].mean_latency_ms) == (2, 500.0)
    assert (arms[""].requests, arms[""].errors) == (2, 2)
    t0, out = series(tmp_path / "console", since=t, step_s=60, until=t + 119)
    qwen = out["qwen"]
    assert t0 == t and qwen["requests"] == [4, 0] and qwen["rejected_429"] == [0, 2]
    assert qwen["output_tokens"] == [60, 0] and qwen["tokens_per_s"] == [1.0, 0.0]
    assert qwen["ttft_p50_ms"] == [37.5, None] and qwen["latency_mean_ms"] == [500.0, None]
    json.dumps(out)  # plain numbers, whatever the database's sums are


# ------------------------------------------------- SQLite files from before the layer

_OLD_STATE = """
CREATE TABLE manifests (
    kind TEXT NOT NULL, name TEXT NOT NULL, body TEXT NOT NULL, plan TEXT,
    generation INTEGER NOT NULL DEFAULT 1, applied_at REAL NOT NULL,
    PRIMARY KEY (kind, name)
);
INSERT INTO manifests VALUES ('ModelDeployment', 'tiny', '{"spec": {}}', NULL, 3, 1700000000.5);
CREATE TABLE api_keys (
    id TEXT PRIMARY KEY, name TEXT NOT NULL, key_sha256 TEXT NOT NULL, scopes TEXT NOT NULL,
    created_at REAL NOT NULL, revoked_at REAL, last_used_at REAL
);
CREATE UNIQUE INDEX api_keys_active_name ON api_keys (name) WHERE revoked_at IS NULL;
"""


def test_a_state_file_from_before_keeps_its_manifests_and_keys(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("QINGLIANG_DATABASE_URL", raising=False)
    path = tmp_path / "state.sqlite"
    old_key = "ql-0123456789ab-" + "A" * 43
    with sqlite3.connect(path) as conn:
        conn.executescript(_OLD_STATE)
        conn.execute(
            "INSERT INTO api_keys VALUES "
            "('0123456789ab', 'old', ?, 'admin', 1700000000, NULL, NULL)",
            (hashlib.sha256(old_key.encode()).hexdigest(),),
        )
    conn.close()
    applied = StateStore(path).get("ModelDeployment", "tiny")
    assert applied is not None and (applied.generation, applied.body) == (3, {"spec": {}})
    keys = KeyStore(path)
    verified = keys.verify(old_key)
    assert verified is not None and verified.name == "old" and verified.requests_per_minute is None
    assert keys.set_limits("old", requests_per_minute=10).requests_per_minute == 10
    with sqlite3.connect(path) as conn:
        versions = [
            conn.execute(f"SELECT version_num FROM qingliang_{store}_version").fetchall()
            for store in ("state", "keys")
        ]
    conn.close()
    assert versions == [[("0001",)], [("0001",)]]


# ------------------------------------------------------------------------ registry


def test_the_registry_follows_the_shared_database(shared: str, tmp_path: Path) -> None:
    from qingliang.platform.lifecycle.registry import Registry

    with Registry(home=tmp_path / "a") as reg:
        reg.register_base_model("tiny", source="hf:tiny/model", format="safetensors")
    with Registry(home=tmp_path / "b") as reg:  # another node's data directory
        assert reg.backend == ("sqlite" if shared.startswith("sqlite") else "postgresql")
        assert [m.name for m in reg.list_base_models()] == ["tiny"]
    assert not (tmp_path / "a" / "registry.sqlite").exists()

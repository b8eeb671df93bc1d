"""The router's decision log and state on both backends of the storage layer.

Tests that take ``shared`` run on a SQLite file and on a fresh database of the PostgreSQL
server the tests start (skipped, with the reason, where none can run); the log finds it
through ``$QINGLIANG_DATABASE_URL``, as the agents replicas of a cluster do.
"""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import textwrap
from contextlib import closing
from pathlib import Path

import pytest

from qingliang.agents.routing.log import DecisionLog, StoredState
from qingliang.platform.errors import Conflict, NotFound
from qingliang.platform.storage.database import DatabaseError

R = "desk/triage"


@pytest.fixture
def shared(store_url: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """``store_url`` as the platform's shared database."""
    monkeypatch.setenv("QINGLIANG_DATABASE_URL", store_url)
    return store_url


def record(log: DecisionLog, n: int, arm: str, created: float, run: str = "r1") -> str:
    log.record(
        decision_id=f"d{n}", router=R, run_id=run, tenant=None, arm=arm, propensity=0.5 + n / 100,
        features=[1.0, n], scores={arm: 0.25}, policy_version=n, created=created,
    )  # fmt: skip
    return f"d{n}"


def test_the_log_behaves_the_same_on_both_backends(shared: str, tmp_path: Path) -> None:
    log = DecisionLog(tmp_path / "router.sqlite")
    # Three decisions at the same instant: they keep the order they were logged in.
    for n, arm in ((3, "fast"), (1, "big"), (2, "fast")):
        record(log, n, arm, created=100.0)
    record(log, 4, "big", created=117.0, run="r2")
    assert [d.id for d in log.by_run("r1")] == ["d3", "d1", "d2"]
    assert log.add_parts("d3", {"success": 1, "latency": 0.5}) == {"success": 1.0, "latency": 0.5}
    state = StoredState(R, {"arms": ["big", "fast"]}, {"n": 1, "w": [0.5, 1.5]}, 7, 120.0)
    assert log.close("d3", 1.0, closed_at=105.0, save=state) is True
    assert log.close("d3", 0.0) is False
    with pytest.raises(Conflict, match="already closed"):
        log.add_part("d3", "success", 0.0)
    with pytest.raises(NotFound, match="no routing decision 'nope'"):
        log.add_part("nope", "success", 0.0)
    assert log.close("d1", 0.0, closed_at=111.0) and log.close("d4", 0.5, closed_at=118.0)
    assert log.revise("d1", {"success": 1.0}, 0.75) is True
    assert log.revise("d2", {}, 0.0) is False  # still open
    got = log.get("d3")
    assert got is not None and (got.features, got.scores, got.parts, got.reward, got.closed) == (
        [1.0, 3.0], {"fast": 0.25}, {"success": 1.0, "latency": 0.5}, 1.0, 105.0,
    )  # fmt: skip
    assert [d.id for d in log.logged(R)] == ["d3", "d1", "d4"]
    assert [d.id for d in log.logged(R, limit=2)] == ["d1", "d4"]
    assert [d.id for d in log.open_before(200.0)] == ["d2"]
    counts = log.counts(R)
    assert (counts["decisions"], counts["closed"], counts["open"]) == (4, 3, 1)
    assert counts["arms"]["big"] == {
        "count": 2, "closed": 2, "mean_reward": 0.625, "mean_propensity": pytest.approx(0.525),
    }  # fmt: skip
    # Buckets of 10 s from 100: 117 is in bucket 1 (a quotient of 1.7 is cut, not rounded).
    hist = log.histogram(R, 100.0, 10.0, 3)
    assert sorted(hist["decisions"]) == [(0, "big", 1, None), (0, "fast", 2, None),
                                         (1, "big", 1, None)]  # fmt: skip
    assert sorted(hist["rewards"]) == [(0, "fast", 1, 1.0), (1, "big", 2, 1.25)]
    loaded = log.load_state(R)
    assert loaded == state and log.stored_routers() == [R]
    log.save_state(StoredState(R, {"arms": ["big"]}, {"n": 2}, 8, 130.0))
    assert DecisionLog(tmp_path / "other.sqlite").load_state(R).version == 8  # type: ignore[union-attr]
    log.disconnect()
    assert log.get("d4").reward == 0.5  # type: ignore[union-attr]  # reopens
    assert not (tmp_path / "router.sqlite").exists()  # nothing went to a local file


_WRITER = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from qingliang.agents.routing.log import DecisionLog, StoredState

    path, go, tag, count = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3], int(sys.argv[4])
    log = DecisionLog(path)
    while not go.exists():
        time.sleep(0.01)
    for i in range(count):
        log.record(decision_id=f"{tag}-{i}", router="r", run_id=tag, tenant=None, arm=tag,
                   propensity=1.0, features=[], scores={}, policy_version=i)
        log.add_part(f"{tag}-{i}", "success", 1.0)
        log.close(f"{tag}-{i}", 1.0, save=StoredState("r", {}, {"last": tag}, i))
    """
)


def test_two_processes_deciding_at_once_lose_nothing(shared: str, tmp_path: Path) -> None:
    go, count = tmp_path / "go", 60
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-c",
                _WRITER,
                str(tmp_path / f"{tag}.sqlite"),
                str(go),
                tag,
                str(count),
            ],
            stderr=subprocess.PIPE,
            text=True,
        )  # fmt: skip
        for tag in ("p1", "p2")
    ]
    go.touch()
    for proc in procs:
        _out, err = proc.communicate(timeout=180)
        assert proc.returncode == 0, err
    log = DecisionLog(tmp_path / "reader.sqlite")
    counts = log.counts("r")
    assert (counts["decisions"], counts["closed"]) == (2 * count, 2 * count)
    for tag in ("p1", "p2"):
        assert [d.policy_version for d in log.by_run(tag)] == list(range(count))
        assert counts["arms"][tag]["mean_reward"] == 1.0
    state = log.load_state("r")
    assert state is not None and state.version == count - 1


def test_a_router_file_from_before_the_storage_layer_keeps_its_rows(tmp_path: Path) -> None:
    path = tmp_path / "router.sqlite"
    with closing(sqlite3.connect(path)) as db:  # what a router before Alembic wrote
        db.executescript(
            "CREATE TABLE decisions (id TEXT PRIMARY KEY, router TEXT NOT NULL, run_id TEXT NOT "
            "NULL, tenant TEXT, arm TEXT NOT NULL, propensity REAL NOT NULL, features TEXT NOT "
            "NULL, scores TEXT NOT NULL, policy_version INTEGER NOT NULL, created REAL NOT NULL, "
            "parts TEXT NOT NULL DEFAULT '{}', reward REAL, closed REAL);"
            "CREATE TABLE router_state (router TEXT PRIMARY KEY, config TEXT NOT NULL, state "
            "TEXT NOT NULL, version INTEGER NOT NULL, updated REAL NOT NULL);"
            "INSERT INTO decisions VALUES ('old', 'r', 'run', NULL, 'a', 1.0, '[]', '{}', 3, 5.0,"
            """ '{"success": 1.0}', 1.0, 6.0);"""
            """INSERT INTO router_state VALUES ('r', '{}', '{"n": 1}', 3, 6.0);"""
        )
    log = DecisionLog(path)
    (old,) = log.logged("r")
    assert (old.id, old.parts, old.reward, old.policy_version) == ("old", {"success": 1.0}, 1.0, 3)
    assert log.load_state("r") == StoredState("r", {}, {"n": 1}, 3, 6.0)
    record(log, 1, "a", created=7.0)
    assert len(log.by_run("r1")) == 1
    with closing(sqlite3.connect(path)) as db:
        assert db.execute("SELECT version_num FROM qingliang_router_log_version").fetchall() == [
            ("0001",)
        ]


def test_a_bad_database_url_is_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("QINGLIANG_DATABASE_URL", "postgresql://ql:s3cret@127.0.0.1:1/router")
    log = DecisionLog(tmp_path / "router.sqlite")  # nothing is opened yet
    with pytest.raises(DatabaseError, match="router_log database .*127.0.0.1:1") as err:
        log.load_state("r")
    assert "s3cret" not in str(err.value)
    assert not (tmp_path / "router.sqlite").exists()


def test_decisions_go_on_after_the_server_drops_the_pooled_connections(
    shared: str, tmp_path: Path
) -> None:
    if shared.startswith("sqlite"):
        pytest.skip("no server to drop connections")
    import psycopg

    log = DecisionLog(tmp_path / "router.sqlite")
    record(log, 1, "fast", created=1.0)
    assert log.get("d1") is not None
    with psycopg.connect(shared, autocommit=True) as admin:  # a restart, as the pool sees it
        admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )
    record(log, 2, "big", created=2.0)  # a new connection, nothing lost or doubled
    assert log.close("d2", 1.0) is True
    assert [d.id for d in log.by_run("r1")] == ["d1", "d2"]

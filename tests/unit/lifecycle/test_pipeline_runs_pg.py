"""Pipeline runs and their event logs on both backends of the storage layer.

Tests that take ``shared`` run on a SQLite file and on a fresh database of the PostgreSQL
server the tests start (skipped, with the reason, where none can run); the store finds it
through ``$QINGLIANG_DATABASE_URL``. Lock files stay under the store's folder.
"""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import textwrap
import time
from contextlib import closing
from pathlib import Path

import pytest

from qingliang.platform.errors import Conflict, NotFound
from qingliang.platform.lifecycle.pipelines.runs import RunStore
from qingliang.platform.storage.database import DatabaseError

MANIFEST = {"kind": "Pipeline", "metadata": {"name": "faq"}, "spec": {"steps": ["a", "审批"]}}


@pytest.fixture
def shared(store_url: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """``store_url`` as the platform's shared database."""
    monkeypatch.setenv("QINGLIANG_DATABASE_URL", store_url)
    return store_url


def test_runs_behave_the_same_on_both_backends(shared: str, tmp_path: Path) -> None:
    with RunStore(tmp_path / "pipelines") as runs:
        created = runs.create("pl-1", "faq", MANIFEST, "/srv/p", "alice")
        assert (created.status, created.manifest, created.outputs) == ("queued", MANIFEST, {})
        runs.create("pl-2", "other", {}, "/srv/q", "bob")
        with pytest.raises(Conflict, match="'pl-1' exists already"):
            runs.create("pl-1", "faq", MANIFEST, "/srv/p", "alice")
        runs.update("pl-1", status="waiting", step="审批", waiting={"message": "ok? 好"},
                    outputs={"a": [1, 2.5]})  # fmt: skip
        seq = runs.event("pl-1", "审批", "waiting", {"nested": {"x": 1.5, "y": None}})
        run = runs.get("pl-1")
        assert (run.status, run.step, run.waiting, run.outputs) == (
            "waiting", "审批", {"message": "ok? 好"}, {"a": [1, 2.5]},
        )  # fmt: skip
        assert [(e.seq, e.kind) for e in runs.events("pl-1")] == [(1, "created"), (2, "waiting")]
        assert runs.events("pl-1", after=seq - 1)[0].data == {"nested": {"x": 1.5, "y": None}}
        assert [r.id for r in runs.list()] == ["pl-2", "pl-1"]
        assert [r.id for r in runs.list("faq")] == ["pl-1"]
        runs.update("pl-1", status="running")
        assert runs.get("pl-1").status == "interrupted"  # running, but nobody drives it
        with runs.lock("pl-1"):
            assert runs.get("pl-1").status == "running"
        with pytest.raises(NotFound, match="did you mean 'pl-1'"):
            runs.get("pl-11")
        with pytest.raises(ValueError, match="cannot update"):
            runs.update("pl-1", actor="mallory")
    assert not (tmp_path / "pipelines" / "runs.sqlite").exists()  # nothing in a local file


_DRIVER = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from qingliang.platform.lifecycle.pipelines.runs import RunStore

    root, go, done = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3])
    runs = RunStore(root)
    with runs.lock("pl-1"):
        runs.update("pl-1", status="running", step="finetune")
        go.touch()
        while not done.exists():
            time.sleep(0.02)
    """
)


def test_a_run_driven_on_another_machine_is_seen_running(shared: str, tmp_path: Path) -> None:
    if shared.startswith("sqlite"):
        pytest.skip("a SQLite file is one machine's: its driver lock is the lock file")
    # Two folders: two machines that share the database and nothing else.
    here = RunStore(tmp_path / "here")
    here.create("pl-1", "faq", MANIFEST, "/srv/p", "alice")
    go, done = tmp_path / "go", tmp_path / "done"
    driver = subprocess.Popen(
        [sys.executable, "-c", _DRIVER, str(tmp_path / "there"), str(go), str(done)],
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        while not go.exists():
            assert driver.poll() is None, driver.stderr.read()  # type: ignore[union-attr]
            time.sleep(0.02)
        assert here.locked("pl-1")
        assert here.get("pl-1").status == "running"  # not "interrupted"
        with pytest.raises(Conflict, match="driven by another process"), here.lock("pl-1"):
            pass
    finally:
        done.touch()
        _out, err = driver.communicate(timeout=120)
    assert driver.returncode == 0, err
    assert not here.locked("pl-1")  # released when the driver let go
    assert here.get("pl-1").status == "interrupted"
    with here.lock("pl-1"):
        assert here.get("pl-1", holder=True).status == "interrupted"
    here.close()


_WRITER = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from qingliang.platform.lifecycle.pipelines.runs import RunStore

    root, go, tag, count = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3], int(sys.argv[4])
    runs = RunStore(root)
    while not go.exists():
        time.sleep(0.01)
    for i in range(count):
        runs.event("pl-1", tag, "progress", {"i": i})
    runs.close()
    """
)


def test_two_processes_logging_events_at_once_lose_nothing(shared: str, tmp_path: Path) -> None:
    with RunStore(tmp_path / "main") as runs:
        runs.create("pl-1", "faq", MANIFEST, "/srv/p", "alice")
    go, count = tmp_path / "go", 100
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _WRITER, str(tmp_path / tag), str(go), tag, str(count)],
            stderr=subprocess.PIPE,
            text=True,
        )
        for tag in ("p1", "p2")
    ]
    go.touch()
    for proc in procs:
        _out, err = proc.communicate(timeout=180)
        assert proc.returncode == 0, err
    with RunStore(tmp_path / "main") as runs:
        events = runs.events("pl-1")
    assert [e.seq for e in events] == list(range(1, 2 * count + 2))  # no gap, no twice
    for tag in ("p1", "p2"):
        assert [e.data["i"] for e in events if e.step == tag] == list(range(count))


def test_a_runs_file_from_before_the_storage_layer_keeps_its_runs(tmp_path: Path) -> None:
    root = tmp_path / "pipelines"
    root.mkdir()
    with closing(sqlite3.connect(root / "runs.sqlite")) as db:  # written before Alembic
        db.executescript(
            "CREATE TABLE pipeline_runs (id TEXT PRIMARY KEY, pipeline TEXT NOT NULL, manifest "
            "TEXT NOT NULL, base_dir TEXT NOT NULL, status TEXT NOT NULL, step TEXT, waiting "
            "TEXT, error TEXT, outputs TEXT NOT NULL DEFAULT '{}', actor TEXT NOT NULL, created "
            "REAL NOT NULL, updated REAL NOT NULL);"
            "CREATE TABLE pipeline_events (run_id TEXT NOT NULL, seq INTEGER NOT NULL, at REAL "
            "NOT NULL, step TEXT, kind TEXT NOT NULL, data TEXT NOT NULL, PRIMARY KEY (run_id, "
            "seq));"
            """INSERT INTO pipeline_runs VALUES ('pl-old', 'faq', '{}', '/srv', 'succeeded', """
            """NULL, NULL, NULL, '{"eval": 0.9}', 'alice', 1.0, 2.0);"""
            "INSERT INTO pipeline_events VALUES ('pl-old', 1, 1.0, NULL, 'created', '{}');"
        )
    with RunStore(root) as runs:
        old = runs.get("pl-old")
        assert (old.status, old.outputs) == ("succeeded", {"eval": 0.9})
        assert runs.event("pl-old", None, "note", {}) == 2
    with closing(sqlite3.connect(root / "runs.sqlite")) as db:
        assert db.execute("SELECT version_num FROM qingliang_pipeline_runs_version").fetchall() == [
            ("0001",)
        ]


def test_a_bad_database_url_is_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("QINGLIANG_DATABASE_URL", "postgresql://ql:s3cret@127.0.0.1:1/pipes")
    with pytest.raises(DatabaseError, match="pipeline_runs database .*127.0.0.1:1") as err:
        RunStore(tmp_path / "pipelines")
    assert "s3cret" not in str(err.value)

"""Agent runs (runs, events, journal, feedback) on both backends of the storage layer.

Tests that take ``shared`` run on a SQLite file and on a fresh database of the PostgreSQL
server the tests start (skipped, with the reason, where none can run); the store finds it
through ``$QINGLIANG_DATABASE_URL``, as the agents replicas of a cluster do.
"""

from __future__ import annotations

import asyncio
import sqlite3
import subprocess
import sys
import textwrap
from contextlib import closing
from pathlib import Path

import pytest

from qingliang.agents.runs import RunStore
from qingliang.platform.errors import Conflict
from qingliang.platform.storage.database import DatabaseError


@pytest.fixture
def shared(store_url: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """``store_url`` as the platform's shared database."""
    monkeypatch.setenv("QINGLIANG_DATABASE_URL", store_url)
    return store_url


def test_runs_behave_the_same_on_both_backends(shared: str, tmp_path: Path) -> None:
    store = RunStore(tmp_path / "agents.sqlite")
    a = store.create("desk", {"input": "居住证？"}, tenant=None, actor="ops",
                     events=[{"type": "start"}])  # fmt: skip
    b = store.create("desk", {"input": "hi"}, tenant="city-a", actor="app", parent=a)
    store.create("other", {"input": "x"}, tenant="city-a", actor="app")
    assert store.set_status(a, "waiting", expect="running", pending={"prompt": "ok?"}) is True
    assert store.set_status(a, "done", expect=("running",)) is False  # not running
    assert store.get(a).pending == {"prompt": "ok?"}  # type: ignore[union-attr]
    assert store.set_status(
        a, "done", expect=("waiting", "running"), answer="办好了", tokens=42, active_s=0.5,
        events=[{"type": "end"}],
    )  # fmt: skip
    store.set_status(a, "done", active_s=0.25)
    run = store.get(a)
    assert run is not None
    assert (run.status, run.answer, run.pending, run.tokens, run.active_s, run.input) == (
        "done", "办好了", None, 42, 0.75, {"input": "居住证？"},
    )  # fmt: skip
    assert [r.id for r in store.list()] == [a]  # tenant None only
    assert [r.id for r in store.list(tenant="city-a", graph="desk")] == [b]
    assert len(store.list(all_tenants=True)) == 3
    assert [r.id for r in store.list(all_tenants=True, status="done")] == [a]
    assert store.get(b).parent == a  # type: ignore[union-attr]
    store.add_events(a, [{"type": "note", "n": 1}])
    assert [(e["seq"], e["type"]) for e in store.events(a)] == [
        (1, "start"), (2, "end"), (3, "note"),
    ]  # fmt: skip
    assert [e["seq"] for e in store.events(a, after=2)] == [3]
    assert store.journal(a, "model:1", {"text": "first"}) == {"text": "first"}
    assert store.journal(a, "model:1", {"text": "second"}) == {"text": "first"}  # first wins
    assert store.journaled(a, "model:1") == (True, {"text": "first"})
    assert store.journaled(a, "model:2") == (False, None)
    assert store.journal_size(a) == 1
    store.add_feedback(a, 0.5, "好", "ops")
    assert [(f["score"], f["comment"], f["actor"]) for f in store.feedback(a)] == [
        (0.5, "好", "ops")
    ]
    with pytest.raises(ValueError, match="unknown run status"):
        store.set_status(a, "finished")
    store.close()
    assert not (tmp_path / "agents.sqlite").exists()  # nothing went to a local file


def test_group_commits_keep_each_write_alone(shared: str, tmp_path: Path) -> None:
    store = RunStore(tmp_path / "agents.sqlite")

    async def main() -> list:
        first = await store.acreate("desk", {}, tenant=None, actor="ops", run_id="run-1")
        writes = [
            store.acreate("desk", {"n": i}, tenant=None, actor="ops", run_id=f"run-{i}")
            for i in range(1, 6)  # run-1 exists: that write alone fails
        ]
        writes += [store.ajournal(first, "tool:1", i) for i in range(3)]
        writes.append(store.aset_status(first, "done", expect="running", events=[{"n": 1}]))
        return [first, *await asyncio.gather(*writes, return_exceptions=True)]

    first, dup, *rest = asyncio.run(main())
    assert isinstance(dup, Conflict)
    assert rest[:4] == ["run-2", "run-3", "run-4", "run-5"]
    assert rest[4:7] == [0, 0, 0]  # the journal's first writer wins within a group too
    assert rest[7] is True
    assert {r.id for r in store.list()} == {f"run-{i}" for i in range(1, 6)}
    assert store.get(first).status == "done" and store.events(first)[0]["n"] == 1  # type: ignore[union-attr]
    store.close()


_WRITER = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from qingliang.agents.runs import RunStore

    path, go, tag, count = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3], int(sys.argv[4])
    store = RunStore(path)
    while not go.exists():
        time.sleep(0.01)
    for i in range(count):
        run = store.create("desk", {"i": i}, tenant=tag, actor=tag, run_id=f"{tag}-{i}")
        store.add_events("shared-run", [{"tag": tag, "i": i}])
        store.journal("shared-run", f"step:{i}", tag)
        store.set_status(run, "done", expect="running", events=[{"i": i}])
    store.close()
    """
)


def test_two_processes_writing_at_once_lose_nothing(shared: str, tmp_path: Path) -> None:
    go, count = tmp_path / "go", 40
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
    store = RunStore(tmp_path / "reader.sqlite")
    for tag in ("p1", "p2"):
        runs = store.list(tenant=tag, status="done", limit=1000)
        assert sorted(r.id for r in runs) == sorted(f"{tag}-{i}" for i in range(count))
    events = store.events("shared-run")
    assert [e["seq"] for e in events] == list(range(1, 2 * count + 1))  # no gap, no twice
    for tag in ("p1", "p2"):
        assert [e["i"] for e in events if e["tag"] == tag] == list(range(count))
    assert store.journal_size("shared-run") == count  # one value per key, whoever was first
    store.close()


def test_an_agents_file_from_before_the_storage_layer_keeps_its_runs(tmp_path: Path) -> None:
    path = tmp_path / "agents.sqlite"
    with closing(sqlite3.connect(path)) as db:  # what the agents service wrote before Alembic
        db.executescript(
            "CREATE TABLE runs (id TEXT PRIMARY KEY, graph TEXT NOT NULL, tenant TEXT, actor "
            "TEXT NOT NULL, status TEXT NOT NULL, input TEXT NOT NULL, answer TEXT, reason TEXT, "
            "pending TEXT, parent TEXT, created REAL NOT NULL, updated REAL NOT NULL, tokens "
            "INTEGER NOT NULL DEFAULT 0, active_s REAL NOT NULL DEFAULT 0);"
            "CREATE TABLE events (run_id TEXT NOT NULL, seq INTEGER NOT NULL, at REAL NOT NULL, "
            "event TEXT NOT NULL, PRIMARY KEY (run_id, seq));"
            """INSERT INTO runs VALUES ('old', 'desk', NULL, 'ops', 'done', '{"q": 1}', 'a', """
            "NULL, NULL, NULL, 1.0, 2.0, 5, 0.5);"
            """INSERT INTO events VALUES ('old', 1, 1.0, '{"type": "start"}');"""
        )
    store = RunStore(path)
    old = store.get("old")
    assert old is not None and (old.input, old.answer, old.tokens) == ({"q": 1}, "a", 5)
    store.add_events("old", [{"type": "late"}])
    assert [e["type"] for e in store.events("old")] == ["start", "late"]
    assert store.journal("old", "k", 1) == 1  # the journal table was added
    store.close()


def test_a_bad_database_url_is_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("QINGLIANG_DATABASE_URL", "postgres://ql:s3cret@127.0.0.1:1/agents")
    with pytest.raises(DatabaseError, match="agent_runs database .*127.0.0.1:1") as err:
        RunStore(tmp_path / "agents.sqlite")
    assert "s3cret" not in str(err.value)

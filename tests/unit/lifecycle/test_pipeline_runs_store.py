"""The pipeline run store's connections: one per thread and process, reused across calls,
a fresh one after ``fork()``, and nothing lost or reordered on the way (a real SQLite file
under a temporary directory; only ``sqlite3.connect`` is wrapped, to count the calls).
The store is on the storage layer: its connections are pooled, so threads may share them
(at most one per thread is opened)."""

from __future__ import annotations

import os
import sqlite3
import threading
from pathlib import Path
from typing import Any

import pytest

from qingliang.platform.errors import Conflict, NotFound
from qingliang.platform.lifecycle.pipelines.runs import RunStore


@pytest.fixture
def connects(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """The ``sqlite3.connect`` calls from here on, by database path."""
    calls: list[Any] = []
    real = sqlite3.connect

    def counting(database: Any, *args: Any, **kwargs: Any) -> sqlite3.Connection:
        calls.append(Path(database))
        return real(database, *args, **kwargs)

    monkeypatch.setattr(sqlite3, "connect", counting)
    monkeypatch.setattr(sqlite3.dbapi2, "connect", counting)  # what SQLAlchemy calls
    return calls


def new_run(runs: RunStore, run_id: str = "pl-1") -> None:
    runs.create(run_id, "faq", {"kind": "Pipeline", "spec": {"steps": []}}, "/srv", "alice")


def test_many_events_use_one_connection(tmp_path: Path, connects: list[Any]) -> None:
    with RunStore(tmp_path / "pipelines") as runs:
        new_run(runs)
        for i in range(200):
            runs.event("pl-1", "finetune", "progress", {"train_step": i})
        runs.update("pl-1", status="running", step="finetune")
        events = runs.events("pl-1")
        assert runs.get("pl-1").step == "finetune"
        assert runs.list()[0].id == "pl-1"
    assert connects == [tmp_path / "pipelines" / "runs.sqlite"]
    assert [e.seq for e in events] == list(range(1, 202))
    assert [e.data.get("train_step") for e in events[1:]] == list(range(200))


def test_data_reads_back_as_written(tmp_path: Path) -> None:
    manifest = {"kind": "Pipeline", "metadata": {"name": "faq"}, "spec": {"steps": ["a", "b"]}}
    runs = RunStore(tmp_path / "pipelines")
    created = runs.create("pl-1", "faq", manifest, "/srv/p", "alice")
    assert (created.status, created.actor, created.manifest) == ("queued", "alice", manifest)
    waiting = {"step": "approve", "message": "ok? 好"}
    runs.update("pl-1", status="waiting", step="approve", waiting=waiting, outputs={"a": [1, 2]})
    seq = runs.event("pl-1", "approve", "waiting", {"nested": {"x": 1.5, "y": None}, "s": "é"})
    runs.close()

    again = RunStore(tmp_path / "pipelines")  # a new store: what is on disk, not in memory
    run = again.get("pl-1")
    assert (run.status, run.step, run.waiting, run.outputs) == (
        "waiting",
        "approve",
        waiting,
        {"a": [1, 2]},
    )
    (event,) = again.events("pl-1", after=seq - 1)
    assert (event.seq, event.step, event.kind) == (seq, "approve", "waiting")
    assert event.data == {"nested": {"x": 1.5, "y": None}, "s": "é"}
    again.close()


def test_events_from_two_threads_are_all_there_in_order(
    tmp_path: Path, connects: list[Any]
) -> None:
    runs = RunStore(tmp_path / "pipelines")
    new_run(runs)
    start = threading.Barrier(2)

    def write(name: str) -> None:
        start.wait()
        for i in range(100):
            runs.event("pl-1", name, "progress", {"i": i})

    threads = [threading.Thread(target=write, args=(n,)) for n in ("a", "b")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    events = runs.events("pl-1")
    runs.close()

    assert [e.seq for e in events] == list(range(1, 202))  # no gaps, no duplicates
    for name in ("a", "b"):
        assert [e.data["i"] for e in events if e.step == name] == list(range(100))
    assert len(connects) <= 3  # at most the main thread's and one per writer


def test_a_failed_call_leaves_the_connection_usable(tmp_path: Path) -> None:
    runs = RunStore(tmp_path / "pipelines")
    new_run(runs)
    with pytest.raises(Conflict, match="'pl-1' exists already"):
        new_run(runs)  # the same id again
    with pytest.raises(NotFound, match="did you mean 'pl-1'"):
        runs.get("pl-2")
    assert runs.event("pl-1", None, "log", {"message": "still here"}) == 2
    runs.close()
    assert runs.get("pl-1").status == "queued"  # a call after close() opens a connection
    runs.close()


def test_a_forked_child_opens_its_own_connection(tmp_path: Path, connects: list[Any]) -> None:
    runs = RunStore(tmp_path / "pipelines")
    new_run(runs)
    runs.event("pl-1", "parent", "log", {"n": 1})
    assert len(connects) == 1

    pid = os.fork()
    if pid == 0:  # the child: exit status 0 only if every write and read worked
        code = 1
        try:
            for n in range(50):
                runs.event("pl-1", "child", "log", {"n": n})
            ok = [e.data["n"] for e in runs.events("pl-1") if e.step == "child"]
            code = 0 if ok == list(range(50)) and len(connects) == 2 else 2
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0

    # The parent's connection still works and sees the child's events.
    runs.event("pl-1", "parent", "log", {"n": 2})
    events = runs.events("pl-1")
    assert [e.step for e in events] == [None, "parent", *["child"] * 50, "parent"]
    assert [e.seq for e in events] == list(range(1, 54))
    assert len(connects) == 1  # the parent never reopened
    runs.close()

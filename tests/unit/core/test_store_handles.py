"""``StoreDatabase``, the stores' handle on the storage layer, on both backends: the write
lock with a bounded wait, errors named, a forked child's own connections."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest

from qingliang.platform.errors import Conflict
from qingliang.platform.storage.database import DatabaseBusy
from qingliang.platform.storage.handles import MIGRATIONS, StoreDatabase


@pytest.fixture
def db(store_url: str, tmp_path: Path) -> StoreDatabase:
    handle = StoreDatabase(tmp_path / "unused.sqlite", "router_log", MIGRATIONS / "router_log",
                           url=store_url)  # fmt: skip
    yield handle
    handle.close()


def _insert(c, router: str) -> None:
    c.execute(
        "INSERT INTO router_state (router, config, state, version, updated) "
        "VALUES (:r, '{}', '{}', 1, 0.5)",
        {"r": router},
    )


def test_a_writer_waits_for_the_lock_as_long_as_it_said(db: StoreDatabase) -> None:
    holding, release = threading.Event(), threading.Event()

    def hold() -> None:
        with db.transaction() as c:
            _insert(c, "held")
            holding.set()
            release.wait(60)

    holder = threading.Thread(target=hold)
    holder.start()
    try:
        assert holding.wait(60)
        with (
            pytest.raises(DatabaseBusy, match="router_log database"),
            db.transaction(wait_s=0.2) as c,
        ):
            _insert(c, "late")
    finally:
        release.set()
        holder.join()
    with db.transaction(wait_s=5) as c:  # the lock is free again
        _insert(c, "late")
    assert sorted(r[0] for r in db.query("SELECT router FROM router_state")) == ["held", "late"]


def test_a_failed_transaction_leaves_nothing_and_is_named(db: StoreDatabase) -> None:
    refused = "router_log database .*refused a conflicting write"
    with pytest.raises(Conflict, match=refused), db.transaction() as c:
        _insert(c, "a")
        _insert(c, "a")  # the same primary key
    with pytest.raises(ValueError, match="boom"), db.transaction() as c:
        _insert(c, "b")
        raise ValueError("boom")
    assert db.query("SELECT router FROM router_state") == []


def test_a_forked_child_uses_connections_of_its_own(db: StoreDatabase) -> None:
    with db.transaction() as c:
        _insert(c, "parent")
    pid = os.fork()
    if pid == 0:  # the child: exit status 0 only if it wrote and read through its own pool
        code = 1
        try:
            with db.transaction() as c:
                _insert(c, "child")
            code = 0 if len(db.query("SELECT router FROM router_state")) == 2 else 2
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    rows = db.query("SELECT router FROM router_state ORDER BY router")  # the parent's pool
    assert rows == [("child",), ("parent",)]


def test_an_advisory_lock_is_had_by_one_session_at_a_time(db: StoreDatabase) -> None:
    with db.advisory_lock("job") as first:
        assert first is True
        with db.advisory_lock("job") as second:  # another pooled connection
            assert second is (db.dialect == "sqlite")  # SQLite: nothing to share it with
        with db.advisory_lock("other") as third:
            assert third is True
    with db.advisory_lock("job") as again:
        assert again is True

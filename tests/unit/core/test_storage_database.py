"""The storage layer (platform/storage/database.py) on SQLite and on a real PostgreSQL.

Each test that takes ``store_url`` runs twice: on a SQLite file and on a fresh database of
the PostgreSQL server the tests start (skipped, with the reason, where none can run).
"""

from __future__ import annotations

import json
import multiprocessing
import os
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest
from sqlalchemy import text

from qingliang.platform.errors import Conflict
from qingliang.platform.storage import database as database_mod
from qingliang.platform.storage.database import (
    DatabaseBusy,
    DatabaseError,
    current_revision,
    database_url,
    open_database,
    revisions,
    safe_url,
    sqlite_url,
    version_table,
)

_REVISION = '''
"""A test store's table.

Revision ID: 0001
Revises:
"""

from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("CREATE TABLE IF NOT EXISTS counter (name TEXT PRIMARY KEY, n INTEGER NOT NULL)")
    op.execute("INSERT INTO counter (name, n) VALUES ('hits', 0)")
'''

_SECOND = '''
"""A column added later.

Revision ID: 0002
Revises: 0001
"""

from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("ALTER TABLE counter ADD COLUMN note TEXT")
'''


@pytest.fixture
def migrations(tmp_path: Path) -> Path:
    folder = tmp_path / "migrations" / "versions"
    folder.mkdir(parents=True)
    (folder / "0001_counter.py").write_text(_REVISION)
    return folder.parent


def _store(request: pytest.FixtureRequest) -> str:
    """A store name of its own per test: open_database caches per (URL, store, process)."""
    return "t" + format(abs(hash(request.node.nodeid)), "x")[:12]


def test_database_url_prefers_the_shared_database(tmp_path: Path) -> None:
    assert (
        database_url(tmp_path, "arm_stats", environ={}) == f"sqlite:///{tmp_path}/arm_stats.sqlite"
    )
    assert (
        database_url(tmp_path, "keys", file="state.sqlite", environ={"QINGLIANG_DATABASE_URL": " "})
        == f"sqlite:///{tmp_path}/state.sqlite"
    )
    shared = {"QINGLIANG_DATABASE_URL": "postgresql://ql:pw@db:5432/ql"}
    assert database_url(tmp_path, "keys", file="state.sqlite", environ=shared) == (
        "postgresql://ql:pw@db:5432/ql"
    )


def test_migrates_once_and_reads_what_was_written(
    store_url: str, migrations: Path, request: pytest.FixtureRequest
) -> None:
    store = _store(request)
    db = open_database(store_url, store=store, migrations=migrations)
    assert db.dialect == ("sqlite" if store_url.startswith("sqlite") else "postgresql")
    assert open_database(store_url, store=store, migrations=migrations) is db
    with db.write() as conn:
        conn.execute(text("UPDATE counter SET n = n + 1 WHERE name = 'hits'"))
    with db.read() as conn:
        assert conn.execute(text("SELECT n FROM counter")).scalar_one() == 1
        assert conn.execute(text(f"SELECT version_num FROM {version_table(store)}")).all() == [
            ("0001",)
        ]


def test_a_new_revision_upgrades_an_existing_database(
    store_url: str, migrations: Path, request: pytest.FixtureRequest
) -> None:
    store = _store(request)
    db = open_database(store_url, store=store, migrations=migrations)
    with db.write() as conn:
        conn.execute(text("UPDATE counter SET n = 7"))
    (migrations / "versions" / "0002_note.py").write_text(_SECOND)
    assert database_mod.upgrade(db, migrations) is True  # what a newer Qingliang does on open
    assert database_mod.upgrade(db, migrations) is False
    with db.read() as conn:
        assert conn.execute(text("SELECT n, note FROM counter")).one() == (7, None)


def test_a_failed_write_leaves_nothing_and_names_the_database(
    store_url: str, migrations: Path, request: pytest.FixtureRequest
) -> None:
    db = open_database(store_url, store=_store(request), migrations=migrations)
    with pytest.raises(DatabaseError) as info, db.write() as conn:
        conn.execute(text("UPDATE counter SET n = 5"))
        conn.execute(text("SELECT * FROM no_such_table"))
    assert db.store in str(info.value) and safe_url(store_url).split("://")[1] in str(info.value)
    with pytest.raises(Conflict, match="conflicting write"), db.write() as conn:
        conn.execute(text("INSERT INTO counter (name, n) VALUES ('hits', 1)"))
    with db.read() as conn:
        assert conn.execute(text("SELECT n FROM counter")).scalar_one() == 0


def test_a_write_that_cannot_wait_is_told_busy(
    store_url: str, migrations: Path, request: pytest.FixtureRequest
) -> None:
    db = open_database(store_url, store=_store(request), migrations=migrations)
    holding, release = threading.Event(), threading.Event()

    def hold() -> None:
        with db.write() as conn:
            conn.execute(text("UPDATE counter SET n = 1"))
            holding.set()
            release.wait(60)

    holder = threading.Thread(target=hold)
    holder.start()
    try:
        assert holding.wait(60)
        with pytest.raises(DatabaseBusy, match=db.store), db.write(wait_s=0.05) as conn:
            conn.execute(text("UPDATE counter SET n = 2"))
    finally:
        release.set()
        holder.join(60)
    with db.read() as conn:  # the holder's write went through; the refused one did not
        assert conn.execute(text("SELECT n FROM counter")).scalar_one() == 1


_WORKER = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from sqlalchemy import text
    from qingliang.platform.storage.database import open_database

    url, store, migrations, go, count = sys.argv[1:6]
    while not Path(go).exists():
        time.sleep(0.005)
    db = open_database(url, store=store, migrations=Path(migrations))  # racing migration
    for _ in range(int(count)):
        with db.write() as conn:  # read, then write back: loses updates unless serialised
            n = conn.execute(text("SELECT n FROM counter WHERE name = 'hits'")).scalar_one()
            conn.execute(text("UPDATE counter SET n = :n WHERE name = 'hits'"), {"n": n + 1})
    print("done")
    """
)


def test_two_processes_migrate_once_and_lose_no_write(
    store_url: str, migrations: Path, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    store, go, count = _store(request), tmp_path / "go", 40
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _WORKER, store_url, store, str(migrations), str(go), str(count)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    go.touch()
    for proc in procs:
        out, err = proc.communicate(timeout=180)
        assert proc.returncode == 0, err
    db = open_database(store_url, store=store, migrations=migrations)
    with db.read() as conn:
        # One migration: its INSERT ran once (a second would have failed on the key).
        assert conn.execute(text("SELECT name, n FROM counter")).all() == [("hits", 2 * count)]


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_forked_child_uses_its_own_connections(
    store_url: str, migrations: Path, request: pytest.FixtureRequest
) -> None:
    db = open_database(store_url, store=_store(request), migrations=migrations)
    with db.write() as conn:  # the parent's pool now holds a connection
        conn.execute(text("UPDATE counter SET n = 1"))

    def child(queue: multiprocessing.Queue) -> None:
        try:
            with db.write() as conn:
                conn.execute(text("UPDATE counter SET n = n + 10"))
            queue.put("ok")
        except BaseException as exc:  # pragma: no cover - reported below
            queue.put(repr(exc))

    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    proc = ctx.Process(target=child, args=(queue,))
    proc.start()
    assert queue.get(timeout=60) == "ok"
    proc.join(60)
    with db.read() as conn:  # and the parent's pooled connection still works
        assert conn.execute(text("SELECT n FROM counter")).scalar_one() == 11


def test_an_unknown_newer_revision_is_refused(
    store_url: str, migrations: Path, request: pytest.FixtureRequest
) -> None:
    store = _store(request)
    from sqlalchemy import create_engine

    from qingliang.platform.storage.database import _normalize

    engine = create_engine(_normalize(store_url))
    with engine.begin() as conn:  # what a newer Qingliang would have left
        conn.execute(text(f"CREATE TABLE {version_table(store)} (version_num VARCHAR(32))"))
        conn.execute(text(f"INSERT INTO {version_table(store)} VALUES ('0042')"))
    engine.dispose()
    with pytest.raises(DatabaseError, match=r"revision '0042'.*newer Qingliang") as info:
        open_database(store_url, store=store, migrations=migrations)
    assert store in str(info.value)


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("not a url", "is not a database URL"),
        ("mysql://root:hunter2@127.0.0.1/ql", "only sqlite:/// and postgresql://"),
        ("postgresql://ql:hunter2@db:port/ql", "is not a database URL"),
        ("", "empty"),
    ],
)
def test_a_bad_url_is_named(url: str, expected: str, migrations: Path) -> None:
    with pytest.raises(DatabaseError, match=expected) as info:
        open_database(url, store="state", migrations=migrations)
    assert "hunter2" not in str(info.value)


def test_an_unreachable_server_is_named_without_its_password(migrations: Path) -> None:
    url = "postgresql://ql:hunter2@127.0.0.1:1/ql"  # nothing listens on port 1
    with pytest.raises(DatabaseError) as info:
        open_database(url, store="keys", migrations=migrations)
    message = str(info.value)
    assert "keys database" in message and "127.0.0.1:1/ql" in message
    assert "hunter2" not in message and "***" in message


def test_a_new_sqlite_file_is_owner_only(tmp_path: Path, migrations: Path) -> None:
    path = tmp_path / "home" / "x.sqlite"
    open_database(f"sqlite:///{path}", store="owner_only", migrations=migrations)
    assert oct(path.stat().st_mode & 0o777) == "0o600"
    assert oct(path.parent.stat().st_mode & 0o777) == "0o700"


def test_an_unsafe_store_name_is_refused(tmp_path: Path, migrations: Path) -> None:
    with pytest.raises(ValueError, match="store name"):
        open_database(f"sqlite:///{tmp_path}/x.sqlite", store="x; DROP", migrations=migrations)


def test_docstring_examples_run() -> None:
    import doctest

    result = doctest.testmod(database_mod)
    assert result.failed == 0 and result.attempted > 0


def test_messages_hide_the_password() -> None:
    assert safe_url("postgresql://ql:hunter2@db/ql") == "postgresql://ql:***@db/ql"
    assert "hunter2" not in json.dumps(safe_url("postgres://ql:hunter2@db:5432/ql"))


def test_query_reads_one_statement(
    store_url: str, migrations: Path, request: pytest.FixtureRequest
) -> None:
    db = open_database(store_url, store=_store(request), migrations=migrations)
    assert db.query("SELECT name, n FROM counter WHERE name = :name", {"name": "hits"}) == [
        ("hits", 0)
    ]
    assert db.query("SELECT n FROM counter WHERE name LIKE 'h%'") == [(0,)]
    with pytest.raises(DatabaseError, match=db.store):
        db.query("SELECT no_such_column FROM counter")
    assert db.query("SELECT n FROM counter") == [(0,)]  # the pool is still good


def test_connections_the_server_dropped_are_renewed(
    postgres_database: str, migrations: Path, request: pytest.FixtureRequest
) -> None:
    """A restarted or failed-over server: the pooled connections are dead. The key check
    (``query``) tries once more on a new one; the pool is renewed for everything else."""
    import psycopg

    db = open_database(postgres_database, store=_store(request), migrations=migrations)
    assert db.query("SELECT n FROM counter") == [(0,)]
    with db.read() as conn:
        conn.execute(text("SELECT 1"))
    with psycopg.connect(postgres_database, autocommit=True) as admin:
        dropped = admin.execute(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
            "WHERE datname = current_database() AND pid <> pg_backend_pid()"
        ).fetchone()
    assert dropped is not None and dropped[0] >= 1
    assert db.query("SELECT n FROM counter") == [(0,)]
    with db.write() as conn:
        conn.execute(text("UPDATE counter SET n = 3"))
    assert db.query("SELECT n FROM counter") == [(3,)]


def test_every_store_shares_one_database(store_url: str) -> None:
    """What ``QINGLIANG_DATABASE_URL`` does: every store's baseline in one database, with
    no table, index or version table of one store in another's way."""
    folders = sorted(
        p for p in (Path(database_mod.__file__).parent / "migrations").iterdir() if p.is_dir()
        if (p / "versions").is_dir()
    )  # fmt: skip
    assert {"state", "keys", "arm_stats"} <= {p.name for p in folders}
    for folder in folders:
        db = open_database(store_url, store=folder.name, migrations=folder)
        with db.read() as conn:
            assert current_revision(conn, folder.name) == revisions(folder)[0]


def test_the_revision_files_are_read_as_alembic_reads_them() -> None:
    """The check on open reads the revision ids without Alembic (``_revisions.scan``): it
    must agree with Alembic on every store's history."""
    from alembic.script import ScriptDirectory

    from qingliang.platform.storage import _revisions

    root = Path(database_mod.__file__).parent / "migrations"
    folders = [p for p in root.iterdir() if (p / "versions").is_dir()]
    registry = Path(database_mod.__file__).parents[1] / "lifecycle" / "registry" / "migrations"
    for folder in [*folders, registry]:
        script = ScriptDirectory(str(folder), version_locations=[str(folder / "versions")])
        scanned = _revisions.scan(folder / "versions")
        assert scanned is not None, folder
        assert scanned == (script.get_current_head(), {s.revision for s in script.walk_revisions()})


def test_opening_a_store_at_its_newest_revision_does_not_load_alembic(tmp_path: Path) -> None:
    code = textwrap.dedent(
        """
        import sys
        from qingliang.platform.storage.keys import KeyStore
        KeyStore(sys.argv[1]).list()
        print("alembic" in sys.modules)
        """
    )
    path = str(tmp_path / "state.sqlite")
    env = {k: v for k, v in os.environ.items() if k != "QINGLIANG_DATABASE_URL"}
    runs = [
        subprocess.run(
            [sys.executable, "-c", code, path], capture_output=True, text=True, env=env, timeout=120
        )
        for _ in range(2)
    ]
    assert [r.stdout.strip() for r in runs] == ["True", "False"], [r.stderr for r in runs]


def test_a_bad_shared_url_names_the_variable(
    tmp_path: Path, migrations: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("QINGLIANG_DATABASE_URL", "mysql://root:hunter2@db/ql")
    with pytest.raises(DatabaseError, match=r"\$QINGLIANG_DATABASE_URL") as info:
        open_database(database_url(tmp_path, "keys"), store="keys", migrations=migrations)
    assert "hunter2" not in str(info.value)


def test_a_store_and_the_registry_migrating_at_once_in_two_threads_both_open(
    tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """Alembic's migration context is process-global (module globals installed on enter,
    deleted on exit): the arm-stats flusher migrating its store in its thread while the
    registry migrated in another broke the first (KeyError: 'script', found by CI). A
    store whose migration takes a while, and the registry opening meanwhile: both open."""
    from qingliang.platform.lifecycle.registry import Registry

    slow = tmp_path / "slow" / "versions"
    slow.mkdir(parents=True)
    (slow / "0001_counter.py").write_text(
        _REVISION.replace(
            "def upgrade() -> None:\n",
            "def upgrade() -> None:\n    __import__('time').sleep(0.5)\n",
        )
    )
    store = _store(request)
    errors: list[BaseException] = []
    entered = threading.Event()

    def open_slow() -> None:
        try:
            entered.set()
            db = open_database(
                sqlite_url(tmp_path / "slow.sqlite"), store=store, migrations=slow.parent
            )
            with db.read() as conn:
                assert current_revision(conn, store) == "0001"
        except BaseException as exc:  # noqa: BLE001 (reported below)
            errors.append(exc)

    thread = threading.Thread(target=open_slow)
    thread.start()
    entered.wait()
    time.sleep(0.15)  # the store's migration is under way
    with Registry(url=f"sqlite:///{tmp_path / 'registry.sqlite'}") as reg:
        assert reg.schema_upgraded
    thread.join()
    assert errors == []

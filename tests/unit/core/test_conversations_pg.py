"""The conversation log on both backends of the storage layer.

Tests that take ``shared`` run on a SQLite file and on a fresh database of the PostgreSQL
server the tests start (skipped, with the reason, where none can run); the log finds it
through ``$QINGLIANG_DATABASE_URL``, as a gateway replica in a cluster does.
"""

from __future__ import annotations

import io
import json
import sqlite3
import subprocess
import sys
import textwrap
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text

from qingliang.platform.errors import Conflict
from qingliang.platform.storage.conversations import Conversation, ConversationLog
from qingliang.platform.storage.database import DatabaseError, open_database
from qingliang.platform.storage.handles import MIGRATIONS

DAY = 86_400.0
NOW = 1_750_000_000.0


@pytest.fixture
def shared(store_url: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """``store_url`` as the platform's shared database."""
    monkeypatch.setenv("QINGLIANG_DATABASE_URL", store_url)
    return store_url


def conversation(n: int, created: float, **kw: Any) -> Conversation:
    fields: dict[str, Any] = {
        "id": f"chatcmpl-{n}",
        "created": created,
        "model": "qwen",
        "deployment": "qwen",
        "messages": [{"role": "user", "content": f"问题 {n}：社保卡丢了怎么补办？"}],
        "response": f"回答 {n}：先挂失，再补办。",
        "tenant": "city-a",
        **kw,
    }
    return Conversation(**fields)


def exported(log: ConversationLog, **filters: Any) -> list[dict]:
    out = io.StringIO()
    n = log.export(out, **filters)
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    assert n == len(lines)
    return lines


def test_the_log_behaves_the_same_on_both_backends(shared: str, tmp_path: Path) -> None:
    home = tmp_path / "home"
    log = ConversationLog.for_home(home, flush_interval_s=0.01, clock=lambda: NOW)
    log.append(
        conversation(
            1, NOW - 3 * DAY, key_name="app", adapter="sql", adapter_ref="sql-desk@3",
            finish_reason="stop", prompt_tokens=9, completion_tokens=4, latency_ms=120,
        )
    )  # fmt: skip
    log.append(conversation(1, NOW - 3 * DAY, choice=1, response=None))
    log.append(conversation(2, NOW - 2 * DAY, tenant="city-b", endpoint="completion"))
    log.append(conversation(3, NOW - DAY, tenant=None, model="qwen:sql"))
    assert log.count() == 4
    first = exported(log)[0]
    assert first == {
        "id": "chatcmpl-1", "created": int(NOW - 3 * DAY), "tenant": "city-a",
        "key_name": "app", "model": "qwen", "deployment": "qwen", "adapter": "sql",
        "adapter_ref": "sql-desk@3",
        "messages": [{"role": "user", "content": "问题 1：社保卡丢了怎么补办？"}],
        "response": "回答 1：先挂失，再补办。", "finish_reason": "stop",
        "usage": {"prompt_tokens": 9, "completion_tokens": 4, "total_tokens": 13},
        "latency_ms": 120, "choice": 0, "endpoint": "chat",
    }  # fmt: skip
    ids = lambda **f: [(r["id"], r["choice"]) for r in exported(log, **f)]  # noqa: E731
    assert ids() == [("chatcmpl-1", 0), ("chatcmpl-1", 1), ("chatcmpl-2", 0), ("chatcmpl-3", 0)]
    assert ids(since=NOW - 2 * DAY, until=NOW - DAY) == [("chatcmpl-2", 0)]
    assert ids(tenants=["city-b", "city-a"], models=["qwen"]) == ids()[:3]
    assert ids(models=["qwen:sql"]) == [("chatcmpl-3", 0)]
    # Append-only on both databases: a trigger refuses any UPDATE.
    db = open_database(shared, store="conversations", migrations=MIGRATIONS / "conversations")
    with pytest.raises(Conflict, match="append-only"), db.write() as conn:
        conn.execute(text("UPDATE conversations SET response = 'edited'"))
    assert log.purge(2.5 * DAY) == 2
    assert ids() == [("chatcmpl-2", 0), ("chatcmpl-3", 0)]
    log.close()
    assert not home.exists()  # nothing went to a local file


_WRITER = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from qingliang.platform.storage.conversations import Conversation, ConversationLog

    home, go, tag, count = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3], int(sys.argv[4])
    log = ConversationLog.for_home(home, flush_interval_s=0.005, batch_size=7)
    while not go.exists():
        time.sleep(0.01)
    for i in range(count):
        log.append(Conversation(id=f"{tag}-{i}", created=1.0e9 + i, model="qwen",
                                deployment="qwen", messages=[{"role": "user", "content": tag}],
                                response=str(i)))
    log.close()
    sys.exit(1 if log.dropped else 0)
    """
)


def test_two_processes_appending_at_once_lose_nothing(shared: str, tmp_path: Path) -> None:
    go, count = tmp_path / "go", 150
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
    log = ConversationLog.for_home(tmp_path / "reader")
    rows = exported(log)
    assert sorted(r["id"] for r in rows) == sorted(
        f"{t}-{i}" for t in ("p1", "p2") for i in range(count)
    )
    for tag in ("p1", "p2"):  # each process's rows in the order it appended them
        assert [r["response"] for r in rows if r["id"].startswith(tag)] == [
            str(i) for i in range(count)
        ]
    log.close()


def test_a_file_from_before_the_storage_layer_is_adopted(tmp_path: Path) -> None:
    path = tmp_path / "conversations.sqlite"
    schema = (MIGRATIONS / "conversations" / "versions" / "0001_baseline.py").read_text()
    assert "CREATE TABLE IF NOT EXISTS conversations" in schema
    with closing(sqlite3.connect(path)) as db:  # what a gateway before Alembic wrote
        db.execute(
            "CREATE TABLE conversations (seq INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT NOT "
            "NULL, created REAL NOT NULL, tenant TEXT, key_name TEXT, model TEXT NOT NULL, "
            "deployment TEXT NOT NULL, adapter TEXT, adapter_ref TEXT, messages TEXT NOT NULL, "
            "response TEXT, finish_reason TEXT, prompt_tokens INTEGER, completion_tokens "
            "INTEGER, latency_ms INTEGER, choice INTEGER NOT NULL DEFAULT 0, endpoint TEXT NOT "
            "NULL DEFAULT 'chat')"
        )
        db.execute(
            "INSERT INTO conversations (id, created, model, deployment, messages, response) "
            "VALUES ('old-1', 1.5, 'qwen', 'qwen', '[]', '旧回答')"
        )
        db.commit()
    log = ConversationLog(path, flush_interval_s=0.01)
    log.append(conversation(2, NOW))
    log.flush()
    assert [(r["id"], r["response"]) for r in exported(log)][0] == ("old-1", "旧回答")
    assert log.count() == 2
    log.close()
    with closing(sqlite3.connect(path)) as db:
        version = db.execute("SELECT version_num FROM qingliang_conversations_version").fetchall()
        assert version == [("0001",)]
        with pytest.raises(sqlite3.IntegrityError, match="append-only"):  # trigger added
            db.execute("UPDATE conversations SET response = 'edited'")


@pytest.mark.parametrize(
    ("url", "named", "why"),
    [
        ("postgresql://ql:s3cret@127.0.0.1:1/ql", "127.0.0.1:1", "cannot be opened|connect"),
        ("mysql://ql:s3cret@db/ql", "mysql://ql:***@db/ql", "only sqlite:/// and postgresql://"),
    ],
)
def test_a_bad_database_url_is_named_and_nothing_is_lost_silently(
    url: str, named: str, why: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("QINGLIANG_DATABASE_URL", url)
    log = ConversationLog.for_home(tmp_path, flush_interval_s=0.01)
    with pytest.raises(DatabaseError, match=why) as err:
        log.count()
    assert named in str(err.value) and "s3cret" not in str(err.value)
    log.append(conversation(1, NOW))  # the gateway's side: never raises, counts the loss
    log.close()
    assert log.dropped == 1


def test_the_log_goes_on_after_the_server_drops_its_connections(
    shared: str, tmp_path: Path
) -> None:
    if shared.startswith("sqlite"):
        pytest.skip("no server to drop connections")
    import psycopg

    log = ConversationLog.for_home(tmp_path, flush_interval_s=0.01)
    log.append(conversation(1, NOW))
    assert log.count() == 1
    with psycopg.connect(shared, autocommit=True) as admin:  # a restart, as the pool sees it
        admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )
    log.append(conversation(2, NOW + 1))
    log.flush()
    assert log.dropped == 0
    assert [r["id"] for r in exported(log)] == ["chatcmpl-1", "chatcmpl-2"]
    log.close()

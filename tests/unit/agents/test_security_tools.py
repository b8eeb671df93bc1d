"""The ``sql`` tool against hostile queries and database paths (issue 13).

The model's SQL is untrusted: a query must not take more memory than the tool's limits,
must stop at ``timeout_s``, and cannot write; the database path must not smuggle URI
parameters into SQLite's ``file:`` URI.
"""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from qingliang.agents.tools import sql as sql_mod
from qingliang.agents.tools.base import ToolContext, ToolError
from qingliang.agents.tools.specs import SqlTool as SqlConfig
from qingliang.agents.tools.sql import SqlTool

CTX = ToolContext("run-1", None)


@pytest.fixture
def db(tmp_path: Path) -> Path:
    path = tmp_path / "clinics.sqlite"
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE clinic (district TEXT, name TEXT, beds INT)")
        conn.executemany(
            "INSERT INTO clinic VALUES (?, ?, ?)",
            [("Dongcheng", "Peking Union", 120), ("Xicheng", "People's", 80)],
        )
    conn.close()
    return path


def tool(database: Path, **kw: Any) -> SqlTool:
    return SqlTool(SqlConfig(kind="sql", name="clinics", database=str(database), **kw), database)


def error(t: SqlTool, query: str) -> str:
    with pytest.raises(ToolError) as info:
        t.run({"query": query}, CTX)
    return str(info.value)


# -- memory --------------------------------------------------------------------------------


def test_randomblob_of_400_mb_fails_fast_under_a_memory_limit(db: Path) -> None:
    """The issue's query, in a child with 1 GiB of address space: without the length limit
    SQLite builds the 400 MB blob and Python copies it (a MemoryError there)."""
    child = textwrap.dedent(
        f"""
        import resource
        from pathlib import Path
        from qingliang.agents.tools.specs import SqlTool as SqlConfig
        from qingliang.agents.tools.base import ToolContext, ToolError
        from qingliang.agents.tools.sql import SqlTool
        resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30))
        db = Path({str(db)!r})
        tool = SqlTool(SqlConfig(kind="sql", name="db", database=str(db)), db)
        try:
            tool.run({{"query": "SELECT randomblob(400000000)"}}, ToolContext("r", None))
        except ToolError as exc:
            print(exc)
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", child], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "larger than 1,000,000 bytes" in done.stdout


@pytest.mark.parametrize(
    "query",
    [
        "SELECT randomblob(20000000)",
        "SELECT zeroblob(20000000)",
        "SELECT hex(randomblob(600000))",  # 1.2 MB of text
        "SELECT replace(hex(zeroblob(400000)), '0', 'xx')",
        "WITH RECURSIVE n(i, s) AS (SELECT 1, 'x' UNION ALL SELECT i + 1, s || s FROM n "
        "WHERE i < 22) SELECT length(s) FROM n",  # 1, 2, 4, ... 2**21 characters
    ],
)
def test_large_values_fail_with_the_limit_named(db: Path, query: str) -> None:
    msg = error(tool(db), query)
    assert "larger than 1,000,000 bytes" in msg, msg


def test_printf_past_the_limit_gives_null_without_building_it(db: Path) -> None:
    out = tool(db).run({"query": "SELECT printf('%.*c', 20000000, 'x') IS NULL"}, CTX)
    assert out.data["rows"] == [[1]]


def test_values_within_the_limit_still_work(db: Path) -> None:
    out = tool(db).run({"query": "SELECT length(randomblob(900000)), length(hex('ab'))"}, CTX)
    assert out.data["rows"] == [[900000, 4]]


def test_a_stored_value_over_the_limit_is_refused_but_its_length_is_not(tmp_path: Path) -> None:
    path = tmp_path / "docs.sqlite"
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE doc (id INT, body BLOB)")
        conn.execute("INSERT INTO doc VALUES (1, zeroblob(2000000))")
    conn.close()
    t = tool(path)
    assert t.run({"query": "SELECT id, length(body) FROM doc"}, CTX).data["rows"] == [
        [1, 2_000_000]
    ]
    assert "larger than 1,000,000 bytes" in error(t, "SELECT body FROM doc")


def test_too_many_result_columns_are_refused(db: Path) -> None:
    n = sql_mod.MAX_COLUMNS
    t = tool(db)
    # With 1 MB values, each such row would be 1,000 MB.
    msg = error(t, "WITH b(x) AS (SELECT 1) SELECT " + ", ".join(["x"] * 1000) + " FROM b")
    assert f"more than {n} columns" in msg
    ok = t.run({"query": "SELECT " + ", ".join(["1"] * n)}, CTX)
    assert len(ok.data["columns"]) == n


def test_a_table_wider_than_the_column_limit_stays_readable(tmp_path: Path) -> None:
    path = tmp_path / "wide.sqlite"
    cols = [f"c{i}" for i in range(sql_mod.MAX_COLUMNS * 3)]
    with sqlite3.connect(path) as conn:
        conn.execute(f"CREATE TABLE wide ({', '.join(cols)})")
        conn.execute("INSERT INTO wide (c0, c1) VALUES (1, 2)")
    conn.close()
    t = tool(path)
    assert t.run({"query": "SELECT c0, c1 FROM wide"}, CTX).data["rows"] == [[1, 2]]
    assert f"more than {sql_mod.MAX_COLUMNS} columns" in error(t, "SELECT * FROM wide")
    assert "wide(c0, c1, c2" in t.description


def test_returned_data_is_capped_in_size(db: Path) -> None:
    t = tool(db, max_rows=10_000)
    cols = ", ".join(f"printf('%0250d', i) AS c{j}" for j in range(40))
    query = (
        "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 2000) "
        f"SELECT {cols} FROM n"
    )
    out = t.run({"query": query}, CTX)
    rows = out.data["rows"]
    chars = sum(len(str(v)) for row in rows for v in row)
    assert out.data["truncated"] is True
    assert 0 < len(rows) < 2000
    assert chars <= sql_mod.MAX_RESULT_CHARS
    assert out.content.endswith(
        f"(first {len(rows)} rows; there are more: narrow the query or aggregate)"
    )


@pytest.mark.parametrize(
    ("query", "problem"),
    [
        ("SELECT " + " + ".join(["1"] * 150), "Expression tree is too large (maximum depth"),
        ("SELECT 1" + " UNION ALL SELECT 1" * 100, "too many terms in compound SELECT"),
        ("SELECT 'a' LIKE '" + "%a" * 1000 + "'", "LIKE or GLOB pattern too complex"),
    ],
)
def test_parser_limits_are_tighter_than_sqlite_defaults(db: Path, query: str, problem: str) -> None:
    assert problem in error(tool(db), query)


# -- time ----------------------------------------------------------------------------------

FOREVER = "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n)"


@pytest.mark.parametrize(
    "query",
    [
        f"{FOREVER} SELECT count(*) FROM n",
        f"{FOREVER} SELECT group_concat('xxxxxxxxxx') FROM n",
        f"{FOREVER} SELECT i FROM n ORDER BY i DESC LIMIT 1",
        # The first row comes at once; the second never (stopped while fetching).
        f"{FOREVER} SELECT 1 UNION ALL SELECT i FROM n WHERE i < 0",
    ],
)
def test_a_query_that_runs_forever_is_stopped_by_the_timeout(db: Path, query: str) -> None:
    msg = error(tool(db, timeout_s=0.3), query)
    assert msg.startswith("the query was stopped after 0.3 s (timeout_s)")


# -- writes and paths ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "query",
    [
        "DELETE FROM clinic",
        "WITH x AS (SELECT 1) INSERT INTO clinic (name) SELECT 'y' FROM x",
        "SELECT 1; UPDATE clinic SET beds = 0",
        "ATTACH DATABASE 'x.sqlite' AS x",
        "PRAGMA hard_heap_limit = 0",
    ],
)
def test_writes_are_refused(db: Path, query: str) -> None:
    before = db.read_bytes()
    assert error(tool(db), query).startswith(("read-only", "only one statement"))
    assert db.read_bytes() == before


@pytest.mark.parametrize("suffix", ["?mode=rwc", "?mode=rw", "#x", "?mode=memory&cache=shared"])
def test_a_path_with_uri_parameters_opens_nothing_else(db: Path, suffix: str) -> None:
    """``clinics.sqlite?mode=rwc`` names a file that is not there: it neither opens the real
    ``clinics.sqlite`` (read-write) nor creates anything."""
    listing = sorted(p.name for p in db.parent.iterdir())
    t = tool(Path(f"{db}{suffix}"))
    msg = error(t, "SELECT count(*) FROM clinic")
    assert msg.startswith(f"cannot open the database clinics.sqlite{suffix}")
    assert "does not exist" in msg
    assert sorted(p.name for p in db.parent.iterdir()) == listing


@pytest.mark.parametrize("name", ["a?mode=rwc.sqlite", "b#frag.sqlite", "c%3Fmode=rw.sqlite"])
def test_a_file_named_like_uri_parameters_is_opened_read_only(tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    with sqlite3.connect(path) as conn:  # a plain path: no URI parsing here
        conn.execute("CREATE TABLE t (x)")
        conn.execute("INSERT INTO t VALUES (7)")
    conn.close()
    listing = sorted(p.name for p in tmp_path.iterdir())
    t = tool(path)
    assert t.run({"query": "SELECT x FROM t"}, CTX).data["rows"] == [[7]]
    assert error(t, "DELETE FROM t").startswith("read-only")
    assert sorted(p.name for p in tmp_path.iterdir()) == listing


def test_a_folder_is_not_a_database(tmp_path: Path) -> None:
    msg = error(tool(tmp_path), "SELECT 1")
    assert "is not a regular file" in msg


def test_a_path_is_resolved_before_it_is_checked(db: Path, tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    link = tmp_path / "link.sqlite"
    link.symlink_to(db)
    for path in (tmp_path / "sub" / ".." / "clinics.sqlite", link):
        assert tool(path).run({"query": "SELECT count(*) FROM clinic"}, CTX).data["rows"] == [[2]]
    missing = tmp_path / "gone" / ".." / "clinics.sqlite"  # `..` over a missing folder
    assert "does not exist" in error(tool(missing), "SELECT 1")

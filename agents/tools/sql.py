"""The ``sql`` tool: one read-only query over a local SQLite file.

The model's SQL is untrusted, so reading is enforced four times over:

1. the file is opened read-only (``mode=ro`` URI) and ``PRAGMA query_only`` is set;
2. the statement must start with ``SELECT``, ``WITH`` or ``VALUES``;
3. an authorizer allows only what a query needs (``SELECT``, column reads, functions,
   recursive CTEs) and denies the rest — writes, DDL, temp tables, ``ATTACH`` (which
   ``VACUUM INTO`` also needs), ``PRAGMA``, transactions, ``load_extension``;
4. exactly one statement runs: SQLite's own parser finds the end of the first one and
   anything but whitespace or comments after it is refused (``SELECT 1; DROP TABLE t``).

A progress handler stops a query after ``timeout_s`` (a runaway recursive CTE), and at most
``max_rows`` rows come back (``truncated`` says when there were more), and at most
:data:`MAX_RESULT_CHARS` of cell text. Memory is bounded per connection with SQLite's own
limits: one string or blob is at most :data:`MAX_VALUE_BYTES` (``randomblob(400000000)``
is refused before it is built; a single function call is one step the progress handler
cannot interrupt), a result row has at most :data:`MAX_COLUMNS` columns, and expression
depth, compound SELECTs and LIKE patterns are held below SQLite's defaults
(:data:`LIMITS`). The database path is resolved (symlinks, ``..``) and must be a regular
file; it is percent-quoted into the ``file:`` URI, so a name holding ``?mode=rwc`` or
``#`` cannot add URI parameters. The tool's default description lists the tables and
their columns, read once (on first use), so the model knows what it can ask.

Example:
    >>> import sqlite3, tempfile
    >>> from qingliang.agents.tools.specs import SqlTool as SqlConfig
    >>> from qingliang.agents.tools.base import ToolContext
    >>> db = Path(tempfile.mkdtemp()) / "clinics.sqlite"
    >>> with sqlite3.connect(db) as conn:
    ...     _ = conn.execute("CREATE TABLE clinic (district TEXT, name TEXT)")
    ...     _ = conn.execute("INSERT INTO clinic VALUES ('Dongcheng', 'Peking Union')")
    >>> tool = SqlTool(SqlConfig(kind="sql", name="clinics", database=str(db)), db)
    >>> print(tool.run({"query": "SELECT name FROM clinic"}, ToolContext("r1", None)).content)
    | name |
    | --- |
    | Peking Union |
    (1 row)
"""

from __future__ import annotations

import logging
import math
import re
import sqlite3
import time
import urllib.parse
from contextlib import closing
from functools import cached_property
from pathlib import Path
from typing import Any

from qingliang.agents.tools.base import ToolContext, ToolError, ToolResult
from qingliang.agents.tools.specs import SqlTool as SqlConfig

log = logging.getLogger(__name__)

#: Characters of one cell the model reads (and that ``data`` keeps of a text value).
CELL_CHARS = 200
#: Characters of the whole table the model reads.
CONTENT_CHARS = 6000
#: Characters of the table listing in the default description.
SCHEMA_CHARS = 3000
MAX_QUERY_CHARS = 20_000
#: VM instructions between two looks at the clock.
PROGRESS_STEPS = 1000
#: Bytes of one string or blob a query may read or build (SQLITE_LIMIT_LENGTH).
MAX_VALUE_BYTES = 1_000_000
#: Columns of a result row (SQLITE_LIMIT_COLUMN, set once the schema is read, so a wider
#: table stays readable by naming its columns): a row holds at most this many values.
MAX_COLUMNS = 64
#: Characters of cell text that ``data`` keeps over all rows; past it, ``truncated``.
MAX_RESULT_CHARS = 1_000_000
#: SQLite's per-connection limits on a query (besides the column limit above).
#: Not used: ``PRAGMA hard_heap_limit`` / ``soft_heap_limit``. They set a limit for the
#: whole process, and the agent process keeps its checkpoints, runs and routing log in
#: SQLite too: their writes would fail while a heavy query runs.
LIMITS: dict[int, int] = {
    sqlite3.SQLITE_LIMIT_LENGTH: MAX_VALUE_BYTES,
    sqlite3.SQLITE_LIMIT_SQL_LENGTH: 100_000,  # MAX_QUERY_CHARS in UTF-8, and then some
    sqlite3.SQLITE_LIMIT_EXPR_DEPTH: 100,
    sqlite3.SQLITE_LIMIT_COMPOUND_SELECT: 50,
    sqlite3.SQLITE_LIMIT_LIKE_PATTERN_LENGTH: 1000,
    sqlite3.SQLITE_LIMIT_ATTACHED: 0,
    sqlite3.SQLITE_LIMIT_WORKER_THREADS: 0,
}

_READ_ACTIONS = frozenset(
    {sqlite3.SQLITE_SELECT, sqlite3.SQLITE_READ, sqlite3.SQLITE_FUNCTION, sqlite3.SQLITE_RECURSIVE}
)
_DENIED_FUNCTIONS = frozenset({"load_extension", "fts3_tokenizer", "readfile", "writefile"})
_ACTION_NAMES = {
    getattr(sqlite3, f"SQLITE_{n}"): n.replace("_", " ")
    for n in [
        "ALTER_TABLE",
        "ANALYZE",
        "ATTACH",
        "CREATE_INDEX",
        "CREATE_TABLE",
        "CREATE_TEMP_INDEX",
        "CREATE_TEMP_TABLE",
        "CREATE_TEMP_TRIGGER",
        "CREATE_TEMP_VIEW",
        "CREATE_TRIGGER",
        "CREATE_VIEW",
        "CREATE_VTABLE",
        "DELETE",
        "DETACH",
        "DROP_INDEX",
        "DROP_TABLE",
        "DROP_TEMP_INDEX",
        "DROP_TEMP_TABLE",
        "DROP_TEMP_TRIGGER",
        "DROP_TEMP_VIEW",
        "DROP_TRIGGER",
        "DROP_VIEW",
        "DROP_VTABLE",
        "FUNCTION",
        "INSERT",
        "PRAGMA",
        "READ",
        "REINDEX",
        "SAVEPOINT",
        "SELECT",
        "TRANSACTION",
        "UPDATE",
    ]  # fmt: skip
}
_FIRST_WORD = re.compile(r"^(?:\s+|--[^\n]*(?:\n|$)|/\*.*?\*/)*([A-Za-z]+)", re.S)
#: First words of statements that are not queries (the rest is a misspelt keyword).
_NOT_QUERIES = frozenset(
    {
        "ALTER", "ANALYZE", "ATTACH", "BEGIN", "COMMIT", "CREATE", "DELETE", "DETACH", "DROP",
        "END", "EXPLAIN", "INSERT", "PRAGMA", "REINDEX", "RELEASE", "REPLACE", "ROLLBACK",
        "SAVEPOINT", "UPDATE", "VACUUM",
    }
)  # fmt: skip

DEFAULT_DESCRIPTION = (
    "Run one read-only SQL query (SQLite dialect: SELECT or WITH ... SELECT) on the database "
    "{db}. At most {rows} rows come back."
)


class SqlTool:
    """Read-only SQL over ``database``: one SELECT per call, limited in rows and time.

    Args:
        config: The manifest's ``sql`` tool.
        database: The SQLite file (resolved against the manifest's folder).

    Example:
        >>> from qingliang.agents.tools.specs import SqlTool as SqlConfig
        >>> tool = SqlTool(SqlConfig(kind="sql", name="db", database="x.sqlite",
        ...                          description="Sales figures."), Path("x.sqlite"))
        >>> tool.description, tool.parameters["required"]
        ('Sales figures.', ['query'])
    """

    side_effect = False

    def __init__(self, config: SqlConfig, database: Path) -> None:
        self.config = config
        self.database = Path(database)
        self.name = config.name
        self.parameters: dict[str, Any] = {
            "type": "object",
            "properties": {
                "query": {
                    "type": "string",
                    "description": "One SQLite SELECT statement (WITH ... SELECT allowed).",
                }
            },
            "required": ["query"],
            "additionalProperties": False,
        }

    @cached_property
    def description(self) -> str:
        """``config.description``, else a default naming the tables and their columns."""
        if self.config.description:
            return self.config.description
        base = DEFAULT_DESCRIPTION.format(db=self.database.name, rows=self.config.max_rows)
        try:
            tables = self.tables()
        except sqlite3.Error as exc:
            log.warning(
                "sql tool %s: cannot read the schema of %s: %s", self.name, self.database, exc
            )
            return base
        listing = "; ".join(f"{t}({', '.join(cols)})" for t, cols in tables.items())
        if len(listing) > SCHEMA_CHARS:
            listing = listing[: SCHEMA_CHARS - 1] + "…"
        return f"{base} Tables: {listing or '(none)'}."

    def tables(self) -> dict[str, list[str]]:
        """Tables and views of the database with their columns (``name TYPE``)."""
        with closing(self._connect()) as conn:
            names = conn.execute(
                "SELECT name FROM sqlite_master WHERE type IN ('table', 'view') "
                "AND name NOT LIKE 'sqlite_%' ORDER BY name"
            ).fetchall()
            out: dict[str, list[str]] = {}
            for (name,) in names:
                cols = conn.execute(
                    "SELECT name, type FROM pragma_table_info(?) ORDER BY cid", (name,)
                ).fetchall()
                out[name] = [f"{c} {t}".strip() for c, t in cols]
            return out

    def run(self, args: dict[str, Any], ctx: ToolContext) -> ToolResult:
        """Run ``args["query"]`` and return its rows as a small table.

        Raises:
            ToolError: not a single read-only query, a syntax error, an unknown table or
                column, the time limit, or a database that cannot be opened.
        """
        query = _query(args)
        denied: list[str] = []
        try:
            conn = self._connect()
        except sqlite3.Error as exc:
            raise ToolError(f"cannot open the database {self.database.name}: {exc}") from None
        try:
            conn.execute("PRAGMA query_only = ON")
            _limit(conn)
            conn.set_authorizer(_authorizer(denied))
            deadline = time.monotonic() + self.config.timeout_s
            conn.set_progress_handler(lambda: int(time.monotonic() > deadline), PROGRESS_STEPS)
            cur = conn.execute(query)
            columns = [d[0] for d in cur.description or ()]
            rows, truncated = _fetch(cur, self.config.max_rows)
        except sqlite3.Error as exc:
            raise ToolError(self._explain(exc, denied)) from None
        finally:
            conn.close()
        log.debug(
            "sql %s run=%s: %d rows%s",
            self.name,
            ctx.run_id,
            len(rows),
            " (truncated)" if truncated else "",
        )
        content = render(columns, rows, truncated, len(rows))
        return ToolResult(
            content=content, data={"columns": columns, "rows": rows, "truncated": truncated}
        )

    def _connect(self) -> sqlite3.Connection:
        try:
            # Strict: `gone/../x.sqlite` does not exist, whatever a lexical `..` would say.
            path = self.database.resolve(strict=True)
        except (OSError, RuntimeError):  # missing, unreadable folder, symlink loop
            raise sqlite3.OperationalError(f"{self.database} does not exist") from None
        if not path.is_file():  # a folder, FIFO or device
            raise sqlite3.OperationalError(f"{path} is not a regular file")
        # quote() escapes `?`, `#` and `%`: the name cannot add URI parameters (mode=rwc).
        uri = f"file:{urllib.parse.quote(str(path), safe='/')}?mode=ro"
        return sqlite3.connect(uri, uri=True, timeout=self.config.timeout_s)

    def _explain(self, exc: sqlite3.Error, denied: list[str]) -> str:
        message = str(exc)
        if denied:
            return (
                f"read-only: {denied[0]} is not allowed; this tool runs one SELECT query and "
                "changes nothing"
            )
        if isinstance(exc, sqlite3.ProgrammingError) and "one statement" in message:
            return "only one statement per call: remove everything after the first `;`"
        if message == "string or blob too big":
            return (
                f"a string or blob would be larger than {MAX_VALUE_BYTES:,} bytes, the most "
                "this tool reads or builds; leave such values out (length() still works)"
            )
        if message == "too many columns in result set":
            return (
                f"the result would have more than {MAX_COLUMNS} columns, the most this tool "
                "returns; name the columns you need instead of *"
            )
        if message == "interrupted":
            return (
                f"the query was stopped after {self.config.timeout_s:g} s (timeout_s); "
                "make it cheaper (add a WHERE or LIMIT)"
            )
        if message.startswith("no such table"):
            try:
                known = ", ".join(self.tables()) or "none"
            except sqlite3.Error:
                known = "unknown"
            return f"{message}; tables: {known}"
        if "syntax error" in message or message.startswith("incomplete input"):
            return f"SQL syntax error: {message}"
        if "readonly" in message or "not authorized" in message:
            return f"read-only: {message}"
        return f"query failed: {message}"


def _query(args: dict[str, Any]) -> str:
    unknown = sorted(set(args) - {"query"})
    if unknown:
        raise ToolError(f"unknown argument(s) {', '.join(map(str, unknown))}; accepted: query")
    query = args.get("query")
    if not isinstance(query, str) or not query.strip():
        raise ToolError("`query` must be a non-empty SQL string")
    if len(query) > MAX_QUERY_CHARS:
        raise ToolError(f"`query` has {len(query):,} characters, at most {MAX_QUERY_CHARS:,}")
    if "\x00" in query:
        raise ToolError("`query` contains a NUL character")
    match = _FIRST_WORD.match(query)
    word = match.group(1).upper() if match else ""
    if word in _NOT_QUERIES:
        raise ToolError(f"read-only: only SELECT queries are allowed, not {word}")
    if word not in ("SELECT", "WITH", "VALUES"):
        shown = word or query.strip()[:20]
        raise ToolError(f"SQL syntax error: a query starts with SELECT or WITH, not {shown!r}")
    return query


def _limit(conn: sqlite3.Connection) -> None:
    """Set :data:`LIMITS` and :data:`MAX_COLUMNS` on a fresh connection."""
    # The limits also apply to the CREATE statements as the schema is parsed: read the
    # schema first, so a table wider than MAX_COLUMNS is no "malformed database schema".
    conn.execute("SELECT 1 FROM sqlite_master LIMIT 1").fetchall()
    for limit, value in LIMITS.items():
        conn.setlimit(limit, value)
    conn.setlimit(sqlite3.SQLITE_LIMIT_COLUMN, MAX_COLUMNS)


def _fetch(cur: sqlite3.Cursor, max_rows: int) -> tuple[list[list[Any]], bool]:
    """At most ``max_rows`` rows of JSON-ready cells and MAX_RESULT_CHARS of cell text
    (the first row always), and whether there was more."""
    rows: list[list[Any]] = []
    chars = 0
    for row in iter(cur.fetchone, None):
        if len(rows) == max_rows:
            return rows, True
        cells = [_cell(v) for v in row]
        chars += sum(len(v) if isinstance(v, str) else 8 for v in cells)
        if rows and chars > MAX_RESULT_CHARS:
            return rows, True
        rows.append(cells)
    return rows, False


def _authorizer(denied: list[str]) -> Any:
    def check(
        action: int, arg1: str | None, arg2: str | None, db: str | None, _src: str | None
    ) -> int:
        if action in _READ_ACTIONS:
            if action == sqlite3.SQLITE_FUNCTION and (arg2 or "").lower() in _DENIED_FUNCTIONS:
                denied.append(f"the function {arg2}()")
                return sqlite3.SQLITE_DENY
            return sqlite3.SQLITE_OK
        if action == sqlite3.SQLITE_UPDATE and arg1 == "sqlite_master":
            # What SQLite asks when a query first uses an eponymous virtual table.
            denied.append("a table-valued function (json_each, pragma_table_info, ...)")
            return sqlite3.SQLITE_DENY
        what = _ACTION_NAMES.get(action, f"action {action}")
        target = next((a for a in (arg1, arg2) if a), None)
        denied.append(f"{what.upper()}" + (f" ({target})" if target else ""))
        return sqlite3.SQLITE_DENY

    return check


def _cell(value: Any) -> Any:
    """A JSON-ready cell: blobs as a size note, non-finite floats as text, long text cut."""
    if isinstance(value, bytes):
        return f"<blob: {len(value)} bytes>"
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, str) and len(value) > CELL_CHARS:
        return value[: CELL_CHARS - 1] + "…"
    return value


def render(columns: list[str], rows: list[list[Any]], truncated: bool, max_rows: int) -> str:
    """A pipe table for the model, with a line on how many rows there are."""
    if not columns:
        return "The query returned no columns."

    def text(v: Any) -> str:
        return "NULL" if v is None else str(v).replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(text(c) for c in columns) + " |"]
    lines.append("| " + " | ".join("---" for _ in columns) + " |")
    used = sum(len(x) for x in lines)
    shown = 0
    for row in rows:
        line = "| " + " | ".join(text(v) for v in row) + " |"
        if used + len(line) > CONTENT_CHARS:
            break
        lines.append(line)
        used += len(line) + 1
        shown += 1
    n = len(rows)
    if truncated:
        lines.append(f"(first {max_rows} rows; there are more: narrow the query or aggregate)")
    elif shown < n:
        lines.append(f"({n} rows; {n - shown} left out here for length)")
    else:
        lines.append(f"({n} row{'' if n == 1 else 's'})")
    return "\n".join(lines)

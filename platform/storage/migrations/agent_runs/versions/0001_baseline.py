"""Agent runs' schema (runs, their events, the side-effect journal, feedback) as it was
before Alembic (``IF NOT EXISTS``: an ``agents.sqlite`` from an earlier Qingliang adopts it
with its rows).

Revision ID: 0001
Revises:
Create Date: 2026-12-07
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# {real} and {int}: REAL / INTEGER on SQLite, DOUBLE PRECISION / BIGINT on PostgreSQL.
_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS runs (
    id TEXT PRIMARY KEY,
    graph TEXT NOT NULL,
    tenant TEXT,
    actor TEXT NOT NULL,
    status TEXT NOT NULL,
    input TEXT NOT NULL,
    answer TEXT,
    reason TEXT,
    pending TEXT,
    parent TEXT,
    created {real} NOT NULL,
    updated {real} NOT NULL,
    tokens {int} NOT NULL DEFAULT 0,
    active_s {real} NOT NULL DEFAULT 0
)""",
    "CREATE INDEX IF NOT EXISTS runs_status ON runs(status, tenant)",
    "CREATE INDEX IF NOT EXISTS runs_graph ON runs(graph, created)",
    """CREATE TABLE IF NOT EXISTS events (
    run_id TEXT NOT NULL,
    seq {int} NOT NULL,
    at {real} NOT NULL,
    event TEXT NOT NULL,
    PRIMARY KEY (run_id, seq)
)""",
    """CREATE TABLE IF NOT EXISTS journal (
    run_id TEXT NOT NULL,
    key TEXT NOT NULL,
    value TEXT NOT NULL,
    at {real} NOT NULL,
    PRIMARY KEY (run_id, key)
)""",
    """CREATE TABLE IF NOT EXISTS feedback (
    run_id TEXT NOT NULL,
    at {real} NOT NULL,
    score {real} NOT NULL,
    comment TEXT,
    actor TEXT NOT NULL
)""",
)


def upgrade() -> None:
    sqlite = op.get_bind().dialect.name == "sqlite"
    types = {"real": "REAL", "int": "INTEGER"} if sqlite else {
        "real": "DOUBLE PRECISION", "int": "BIGINT"
    }  # fmt: skip
    for statement in _SCHEMA:
        op.execute(statement.format(**types))


def downgrade() -> None:
    for table in ("feedback", "journal", "events", "runs"):
        op.execute(f"DROP TABLE IF EXISTS {table}")

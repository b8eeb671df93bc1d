"""Pipeline runs' schema (runs and their event logs) as it was before Alembic
(``IF NOT EXISTS``: a ``pipelines/runs.sqlite`` from an earlier Qingliang adopts it with its
rows).

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
    """CREATE TABLE IF NOT EXISTS pipeline_runs (
    id TEXT PRIMARY KEY, pipeline TEXT NOT NULL, manifest TEXT NOT NULL,
    base_dir TEXT NOT NULL, status TEXT NOT NULL, step TEXT, waiting TEXT,
    error TEXT, outputs TEXT NOT NULL DEFAULT '{{}}', actor TEXT NOT NULL,
    created {real} NOT NULL, updated {real} NOT NULL)""",
    "CREATE INDEX IF NOT EXISTS pipeline_runs_by_name ON pipeline_runs (pipeline, created)",
    """CREATE TABLE IF NOT EXISTS pipeline_events (
    run_id TEXT NOT NULL, seq {int} NOT NULL, at {real} NOT NULL, step TEXT,
    kind TEXT NOT NULL, data TEXT NOT NULL, PRIMARY KEY (run_id, seq))""",
)


def upgrade() -> None:
    sqlite = op.get_bind().dialect.name == "sqlite"
    types = {"real": "REAL", "int": "INTEGER"} if sqlite else {
        "real": "DOUBLE PRECISION", "int": "BIGINT"
    }  # fmt: skip
    for statement in _SCHEMA:
        op.execute(statement.format(**types))


def downgrade() -> None:
    op.execute("DROP TABLE IF EXISTS pipeline_events")
    op.execute("DROP TABLE IF EXISTS pipeline_runs")

"""The router log's schema (decisions and router state) as it was before Alembic
(``IF NOT EXISTS``: a ``router.sqlite`` from an earlier Qingliang adopts it with its rows).

On PostgreSQL ``decisions`` has a ``seq`` identity column: the order of insertion that
SQLite's ``rowid`` gives, which breaks ties between decisions made at the same instant.

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

_INDEXES = (
    "CREATE INDEX IF NOT EXISTS decisions_run ON decisions(run_id)",
    "CREATE INDEX IF NOT EXISTS decisions_router ON decisions(router, created)",
    "CREATE INDEX IF NOT EXISTS decisions_closed ON decisions(router, closed)",
)
_SQLITE = (
    """CREATE TABLE IF NOT EXISTS decisions (
    id TEXT PRIMARY KEY,
    router TEXT NOT NULL,
    run_id TEXT NOT NULL,
    tenant TEXT,
    arm TEXT NOT NULL,
    propensity REAL NOT NULL,
    features TEXT NOT NULL,
    scores TEXT NOT NULL,
    policy_version INTEGER NOT NULL,
    created REAL NOT NULL,
    parts TEXT NOT NULL DEFAULT '{}',
    reward REAL,
    closed REAL
)""",
    *_INDEXES,
    """CREATE TABLE IF NOT EXISTS router_state (
    router TEXT PRIMARY KEY,
    config TEXT NOT NULL,
    state TEXT NOT NULL,
    version INTEGER NOT NULL,
    updated REAL NOT NULL
)""",
)
_POSTGRES = (
    """CREATE TABLE IF NOT EXISTS decisions (
    id TEXT PRIMARY KEY,
    router TEXT NOT NULL,
    run_id TEXT NOT NULL,
    tenant TEXT,
    arm TEXT NOT NULL,
    propensity DOUBLE PRECISION NOT NULL,
    features TEXT NOT NULL,
    scores TEXT NOT NULL,
    policy_version BIGINT NOT NULL,
    created DOUBLE PRECISION NOT NULL,
    parts TEXT NOT NULL DEFAULT '{}',
    reward DOUBLE PRECISION,
    closed DOUBLE PRECISION,
    seq BIGINT GENERATED ALWAYS AS IDENTITY
)""",
    *_INDEXES,
    """CREATE TABLE IF NOT EXISTS router_state (
    router TEXT PRIMARY KEY,
    config TEXT NOT NULL,
    state TEXT NOT NULL,
    version BIGINT NOT NULL,
    updated DOUBLE PRECISION NOT NULL
)""",
)


def upgrade() -> None:
    sqlite = op.get_bind().dialect.name == "sqlite"
    for statement in _SQLITE if sqlite else _POSTGRES:
        op.execute(statement)


def downgrade() -> None:
    op.execute("DROP TABLE IF EXISTS router_state")
    op.execute("DROP TABLE IF EXISTS decisions")

"""The arm statistics' schema as it was before Alembic (``IF NOT EXISTS``: an
``arm_stats.sqlite`` from an earlier Qingliang adopts it with its counts; a file from
before the token and 429 counts gains those columns, 0 in its old rows).

Revision ID: 0001
Revises:
Create Date: 2026-12-07
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_SQLITE = (
    """CREATE TABLE IF NOT EXISTS arm_buckets (
    deployment     TEXT NOT NULL,
    arm            TEXT NOT NULL,
    bucket         INTEGER NOT NULL,
    requests       INTEGER NOT NULL,
    errors         INTEGER NOT NULL,
    latency_ms_sum REAL NOT NULL,
    output_tokens  INTEGER NOT NULL DEFAULT 0,
    rejected       INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (deployment, arm, bucket)
)""",
    """CREATE TABLE IF NOT EXISTS ttft_buckets (
    deployment TEXT NOT NULL,
    arm        TEXT NOT NULL,
    bucket     INTEGER NOT NULL,
    bin        INTEGER NOT NULL,
    count      INTEGER NOT NULL,
    PRIMARY KEY (deployment, arm, bucket, bin)
)""",
)
_ADDED = {
    "output_tokens": "INTEGER NOT NULL DEFAULT 0",
    "rejected": "INTEGER NOT NULL DEFAULT 0",
}

_POSTGRES = (
    """CREATE TABLE IF NOT EXISTS arm_buckets (
    deployment     TEXT NOT NULL,
    arm            TEXT NOT NULL,
    bucket         BIGINT NOT NULL,
    requests       BIGINT NOT NULL,
    errors         BIGINT NOT NULL,
    latency_ms_sum DOUBLE PRECISION NOT NULL,
    output_tokens  BIGINT NOT NULL DEFAULT 0,
    rejected       BIGINT NOT NULL DEFAULT 0,
    PRIMARY KEY (deployment, arm, bucket)
)""",
    """CREATE TABLE IF NOT EXISTS ttft_buckets (
    deployment TEXT NOT NULL,
    arm        TEXT NOT NULL,
    bucket     BIGINT NOT NULL,
    bin        INTEGER NOT NULL,
    count      BIGINT NOT NULL,
    PRIMARY KEY (deployment, arm, bucket, bin)
)""",
)


def upgrade() -> None:
    bind = op.get_bind()
    if bind.dialect.name != "sqlite":
        for statement in _POSTGRES:
            op.execute(statement)
        return
    for statement in _SQLITE:
        op.execute(statement)
    have = {row[1] for row in bind.execute(sa.text("PRAGMA table_info(arm_buckets)"))}
    for column, decl in _ADDED.items():
        if column not in have:
            op.execute(f"ALTER TABLE arm_buckets ADD COLUMN {column} {decl}")


def downgrade() -> None:
    op.execute("DROP TABLE IF EXISTS ttft_buckets")
    op.execute("DROP TABLE IF EXISTS arm_buckets")

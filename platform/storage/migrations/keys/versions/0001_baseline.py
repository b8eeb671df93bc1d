"""The key store's schema as it was before Alembic (``IF NOT EXISTS``: a ``state.sqlite``
from an earlier Qingliang adopts it with its keys; a file from before the per-key limits
gains those columns, empty).

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
    """CREATE TABLE IF NOT EXISTS api_keys (
    id           TEXT PRIMARY KEY,
    name         TEXT NOT NULL,
    key_sha256   TEXT NOT NULL,
    scopes       TEXT NOT NULL,
    created_at   REAL NOT NULL,
    revoked_at   REAL,
    last_used_at REAL
)""",
    """CREATE UNIQUE INDEX IF NOT EXISTS api_keys_active_name
    ON api_keys (name) WHERE revoked_at IS NULL""",
    """CREATE TABLE IF NOT EXISTS api_key_usage (
    key_id  TEXT NOT NULL,
    day     TEXT NOT NULL,
    tokens  INTEGER NOT NULL,
    PRIMARY KEY (key_id, day)
)""",
)
#: Columns added after the key store's first release (a file without them gains them).
_ADDED = {"requests_per_minute": "INTEGER", "tokens_per_day": "INTEGER"}

_POSTGRES = (
    """CREATE TABLE IF NOT EXISTS api_keys (
    id                  TEXT PRIMARY KEY,
    name                TEXT NOT NULL,
    key_sha256          TEXT NOT NULL,
    scopes              TEXT NOT NULL,
    created_at          DOUBLE PRECISION NOT NULL,
    revoked_at          DOUBLE PRECISION,
    last_used_at        DOUBLE PRECISION,
    requests_per_minute BIGINT,
    tokens_per_day      BIGINT
)""",
    """CREATE UNIQUE INDEX IF NOT EXISTS api_keys_active_name
    ON api_keys (name) WHERE revoked_at IS NULL""",
    """CREATE TABLE IF NOT EXISTS api_key_usage (
    key_id  TEXT NOT NULL,
    day     TEXT NOT NULL,
    tokens  BIGINT NOT NULL,
    PRIMARY KEY (key_id, day)
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
    have = {row[1] for row in bind.execute(sa.text("PRAGMA table_info(api_keys)"))}
    for column, kind in _ADDED.items():
        if column not in have:
            op.execute(f"ALTER TABLE api_keys ADD COLUMN {column} {kind}")


def downgrade() -> None:
    op.execute("DROP TABLE IF EXISTS api_key_usage")
    op.execute("DROP TABLE IF EXISTS api_keys")

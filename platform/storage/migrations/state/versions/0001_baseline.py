"""The applied-manifest store's schema as it was before Alembic (``IF NOT EXISTS``: a
``state.sqlite`` from an earlier Qingliang adopts it with its rows).

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

_SQLITE = """
CREATE TABLE IF NOT EXISTS manifests (
    kind TEXT NOT NULL,
    name TEXT NOT NULL,
    body TEXT NOT NULL,
    plan TEXT,
    generation INTEGER NOT NULL DEFAULT 1,
    applied_at REAL NOT NULL,
    PRIMARY KEY (kind, name)
)
"""
_POSTGRES = """
CREATE TABLE IF NOT EXISTS manifests (
    kind TEXT NOT NULL,
    name TEXT NOT NULL,
    body TEXT NOT NULL,
    plan TEXT,
    generation BIGINT NOT NULL DEFAULT 1,
    applied_at DOUBLE PRECISION NOT NULL,
    PRIMARY KEY (kind, name)
)
"""


def upgrade() -> None:
    op.execute(_SQLITE if op.get_bind().dialect.name == "sqlite" else _POSTGRES)


def downgrade() -> None:
    op.execute("DROP TABLE IF EXISTS manifests")

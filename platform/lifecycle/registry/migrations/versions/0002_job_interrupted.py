"""Jobs may be ``interrupted``: the process driving them died mid-training.

A pipeline whose driver dies leaves its fine-tune job neither running nor failed: its
run resumes it from its last training checkpoint under the same name. Downgrading turns
such jobs into ``failed`` (the older schema has no word for them).

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-07
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TABLE = "registry_jobs"
#: As 0001 named it (the metadata's naming convention prefixed the name it was given).
CONSTRAINT = f"ck_{TABLE}_ck_{TABLE}_status"
OLD = ("pending", "running", "succeeded", "failed", "cancelled")
NEW = ("pending", "running", "interrupted", "succeeded", "failed", "cancelled")


def _status_in(values: tuple[str, ...]) -> str:
    return "status IN (" + ", ".join(f"'{v}'" for v in values) + ")"


def _replace_check(old: tuple[str, ...], new: tuple[str, ...]) -> None:
    bind = op.get_bind()
    if bind.dialect.name == "sqlite":
        _rebuild_sqlite(bind, _status_in(old), _status_in(new))
        return
    op.drop_constraint(op.f(CONSTRAINT), TABLE, type_="check")
    op.create_check_constraint(op.f(CONSTRAINT), TABLE, _status_in(new))


def _rebuild_sqlite(bind: sa.Connection, old: str, new: str) -> None:
    """SQLite cannot alter a constraint: the table is rebuilt with the new check.

    Inside the migration's transaction, where ``foreign_keys=OFF`` cannot be set: with
    foreign keys deferred, dropping the table counts the rows that point at it as
    violations, and inserting the jobs back into the table of the same name resolves
    them before the commit checks.
    """
    table_sql = bind.execute(
        sa.text("SELECT sql FROM sqlite_master WHERE type = 'table' AND name = :t"),
        {"t": TABLE},
    ).scalar_one()
    if old not in table_sql:
        raise RuntimeError(f"{TABLE}: expected the check {old!r} in {table_sql!r}")
    indexes = bind.execute(
        sa.text(
            "SELECT sql FROM sqlite_master WHERE type = 'index' AND tbl_name = :t "
            "AND sql IS NOT NULL"
        ),
        {"t": TABLE},
    ).scalars()
    index_sql = list(indexes)
    op.execute(sa.text("PRAGMA defer_foreign_keys = ON"))
    op.execute(sa.text(f"CREATE TEMP TABLE _copy_{TABLE} AS SELECT * FROM {TABLE}"))
    op.execute(sa.text(f"DROP TABLE {TABLE}"))
    op.execute(sa.text(table_sql.replace(old, new)))
    op.execute(sa.text(f"INSERT INTO {TABLE} SELECT * FROM _copy_{TABLE}"))
    op.execute(sa.text(f"DROP TABLE _copy_{TABLE}"))
    for sql in index_sql:
        op.execute(sa.text(sql))


def upgrade() -> None:
    _replace_check(OLD, NEW)


def downgrade() -> None:
    op.execute(
        sa.text(
            f"UPDATE {TABLE} SET status = 'failed', "
            "error = COALESCE(error, 'interrupted (schema downgraded)') "
            "WHERE status = 'interrupted'"
        )
    )
    _replace_check(NEW, OLD)

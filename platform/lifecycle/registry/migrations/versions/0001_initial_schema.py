"""Initial registry schema: models, dataset versions, jobs, adapters, quantised artifacts,
deployments and lineage edges.

Self-contained on purpose: a revision never imports the current tables, whose later
changes would otherwise rewrite history.

Revision ID: 0001
Revises:
Create Date: 2026-11-23
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _json() -> sa.types.TypeEngine:
    return sa.JSON().with_variant(postgresql.JSONB(), "postgresql")


def _time(name: str, nullable: bool = False) -> sa.Column:
    return sa.Column(name, sa.DateTime(timezone=True), nullable=nullable)


def _id(table: str) -> tuple[sa.Column, sa.PrimaryKeyConstraint]:
    return sa.Column("id", sa.Integer(), nullable=False), sa.PrimaryKeyConstraint(
        "id", name=f"pk_{table}"
    )


def _fk(table: str, column: str, target: str) -> sa.ForeignKeyConstraint:
    return sa.ForeignKeyConstraint([column], [f"{target}.id"], name=f"fk_{table}_{column}")


def upgrade() -> None:
    t = "registry_base_models"
    op.create_table(
        t,
        *_id(t),
        sa.Column("name", sa.String(128), nullable=False),
        sa.Column("source", sa.Text(), nullable=False),
        sa.Column("format", sa.String(40), nullable=False),
        sa.Column("revision", sa.String(200), nullable=True),
        sa.Column("sha256", sa.String(64), nullable=True),
        sa.Column("size_bytes", sa.BigInteger(), nullable=True),
        _time("created_at"),
        sa.UniqueConstraint("name", name=f"uq_{t}_name"),
    )

    t = "registry_dataset_versions"
    op.create_table(
        t,
        *_id(t),
        sa.Column("dataset", sa.String(128), nullable=False),
        sa.Column("version", sa.String(71), nullable=False),
        sa.Column("record_counts", _json(), nullable=False),
        sa.Column("report", _json(), nullable=False),
        sa.Column("status", sa.String(20), nullable=False),
        sa.Column("superseded_by", sa.String(71), nullable=True),
        sa.Column("superseded_reason", sa.Text(), nullable=True),
        _time("superseded_at", nullable=True),
        _time("created_at"),
        sa.CheckConstraint("status IN ('active', 'superseded')", name=f"ck_{t}_status"),
        sa.UniqueConstraint("dataset", "version", name=f"uq_{t}_dataset_version"),
    )
    op.create_index(f"ix_{t}_version", t, ["version"])

    t = "registry_jobs"
    op.create_table(
        t,
        *_id(t),
        sa.Column("name", sa.String(128), nullable=False),
        sa.Column("method", sa.String(20), nullable=False),
        sa.Column("settings", _json(), nullable=False),
        sa.Column("base_model_id", sa.Integer(), nullable=False),
        sa.Column("status", sa.String(20), nullable=False),
        sa.Column("metrics", _json(), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        _time("created_at"),
        _time("started_at", nullable=True),
        _time("finished_at", nullable=True),
        sa.CheckConstraint("method IN ('lora', 'qlora')", name=f"ck_{t}_method"),
        sa.CheckConstraint(
            "status IN ('pending', 'running', 'succeeded', 'failed', 'cancelled')",
            name=f"ck_{t}_status",
        ),
        _fk(t, "base_model_id", "registry_base_models"),
        sa.UniqueConstraint("name", name=f"uq_{t}_name"),
    )
    op.create_index(f"ix_{t}_base_model_id", t, ["base_model_id"])

    t = "registry_job_datasets"
    op.create_table(
        t,
        sa.Column("job_id", sa.Integer(), nullable=False),
        sa.Column("dataset_version_id", sa.Integer(), nullable=False),
        sa.Column("role", sa.String(10), nullable=False),
        sa.CheckConstraint("role IN ('train', 'eval')", name=f"ck_{t}_role"),
        _fk(t, "job_id", "registry_jobs"),
        _fk(t, "dataset_version_id", "registry_dataset_versions"),
        sa.PrimaryKeyConstraint("job_id", "dataset_version_id", "role", name=f"pk_{t}"),
    )
    op.create_index(f"ix_{t}_dataset_version_id", t, ["dataset_version_id"])

    t = "registry_adapters"
    op.create_table(
        t,
        *_id(t),
        sa.Column("name", sa.String(128), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("path", sa.Text(), nullable=False),
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("base_model_id", sa.Integer(), nullable=False),
        sa.Column("job_id", sa.Integer(), nullable=True),
        sa.Column("metrics", _json(), nullable=False),
        sa.Column("status", sa.String(20), nullable=False),
        sa.Column("stale_reason", sa.Text(), nullable=True),
        _time("created_at"),
        _time("status_changed_at"),
        sa.CheckConstraint(
            "status IN ('registered', 'evaluated', 'approved', 'canary', 'serving', "
            "'retired', 'stale')",
            name=f"ck_{t}_status",
        ),
        sa.CheckConstraint("version >= 1", name=f"ck_{t}_version"),
        _fk(t, "base_model_id", "registry_base_models"),
        _fk(t, "job_id", "registry_jobs"),
        sa.UniqueConstraint("name", "version", name=f"uq_{t}_name_version"),
    )
    op.create_index(f"ix_{t}_base_model_id", t, ["base_model_id"])
    op.create_index(f"ix_{t}_job_id", t, ["job_id"])

    t = "registry_adapter_events"
    op.create_table(
        t,
        *_id(t),
        sa.Column("adapter_id", sa.Integer(), nullable=False),
        sa.Column("from_status", sa.String(20), nullable=True),
        sa.Column("to_status", sa.String(20), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        _time("at"),
        _fk(t, "adapter_id", "registry_adapters"),
    )
    op.create_index(f"ix_{t}_adapter_id", t, ["adapter_id"])

    t = "registry_quantized"
    op.create_table(
        t,
        *_id(t),
        sa.Column("name", sa.String(128), nullable=False),
        sa.Column("model_id", sa.Integer(), nullable=False),
        sa.Column("method", sa.String(40), nullable=False),
        sa.Column("path", sa.Text(), nullable=False),
        sa.Column("size_bytes", sa.BigInteger(), nullable=True),
        sa.Column("sha256", sa.String(64), nullable=True),
        sa.Column("settings", _json(), nullable=False),
        _time("created_at"),
        _fk(t, "model_id", "registry_base_models"),
        sa.UniqueConstraint("name", name=f"uq_{t}_name"),
    )
    op.create_index(f"ix_{t}_model_id", t, ["model_id"])

    t = "registry_deployments"
    op.create_table(
        t,
        *_id(t),
        sa.Column("name", sa.String(128), nullable=False),
        _time("created_at"),
        sa.UniqueConstraint("name", name=f"uq_{t}_name"),
    )

    t = "registry_assignments"
    one_target = " + ".join(
        f"(CASE WHEN {c} IS NULL THEN 0 ELSE 1 END)"
        for c in ("adapter_id", "model_id", "quantized_id")
    )
    op.create_table(
        t,
        *_id(t),
        sa.Column("deployment_id", sa.Integer(), nullable=False),
        sa.Column("adapter_id", sa.Integer(), nullable=True),
        sa.Column("model_id", sa.Integer(), nullable=True),
        sa.Column("quantized_id", sa.Integer(), nullable=True),
        sa.Column("share", sa.Float(), nullable=False),
        _time("started_at"),
        _time("ended_at", nullable=True),
        sa.CheckConstraint(f"{one_target} = 1", name=f"ck_{t}_one_target"),
        sa.CheckConstraint("share > 0 AND share <= 1", name=f"ck_{t}_share"),
        _fk(t, "deployment_id", "registry_deployments"),
        _fk(t, "adapter_id", "registry_adapters"),
        _fk(t, "model_id", "registry_base_models"),
        _fk(t, "quantized_id", "registry_quantized"),
    )
    op.create_index(f"ix_{t}_deployment_id", t, ["deployment_id"])
    op.create_index(f"ix_{t}_adapter_id", t, ["adapter_id"])
    for name, columns, where in (
        ("open_adapter", ["deployment_id", "adapter_id"], "ended_at IS NULL"),
        ("open_model", ["deployment_id"], "ended_at IS NULL AND adapter_id IS NULL"),
    ):
        op.create_index(
            f"ix_{t}_{name}",
            t,
            columns,
            unique=True,
            sqlite_where=sa.text(where),
            postgresql_where=sa.text(where),
        )

    t = "registry_edges"
    op.create_table(
        t,
        *_id(t),
        sa.Column("from_kind", sa.String(20), nullable=False),
        sa.Column("from_id", sa.Integer(), nullable=False),
        sa.Column("to_kind", sa.String(20), nullable=False),
        sa.Column("to_id", sa.Integer(), nullable=False),
        sa.Column("relation", sa.String(40), nullable=False),
        _time("created_at"),
        sa.UniqueConstraint(
            "from_kind",
            "from_id",
            "to_kind",
            "to_id",
            "relation",
            name=f"uq_{t}_from_kind_from_id_to_kind_to_id_relation",
        ),
    )
    op.create_index(f"ix_{t}_to", t, ["to_kind", "to_id"])


def downgrade() -> None:
    for t in (
        "registry_edges",
        "registry_assignments",
        "registry_deployments",
        "registry_quantized",
        "registry_adapter_events",
        "registry_adapters",
        "registry_job_datasets",
        "registry_jobs",
        "registry_dataset_versions",
        "registry_base_models",
    ):
        op.drop_table(t)  # its indexes go with it

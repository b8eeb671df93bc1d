"""The registry's tables (SQLAlchemy 2 declarative), one class per table.

Every table is prefixed ``registry_`` so the registry can share a PostgreSQL database with
other Qingliang stores. Rows are never deleted: a retired adapter or an ended deployment
interval stays, which keeps lineage complete and adapter versions monotonic.

The schema itself is created and changed only by the Alembic revisions in
``migrations/versions``; ``tests/unit/lifecycle/test_registry.py`` checks that these classes and the
migrated database agree.

Tables::

    registry_base_models         a model weights can be loaded from (also merged models)
    registry_dataset_versions    a content-addressed version of a dataset, recorded here
    registry_jobs                a fine-tuning run: method, settings, base model, status
    registry_job_datasets        which dataset versions a job used, as train or eval data
    registry_adapters            a LoRA adapter: name + monotonic version, files, status
    registry_adapter_events      every status change of an adapter, with its reason
    registry_quantized           a quantised artifact of a base (or merged) model
    registry_deployments         a deployment name
    registry_assignments         what a deployment served, with traffic share, from/until
    registry_edges               lineage: (from_kind, from_id) -> (to_kind, to_id, relation)
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    CheckConstraint,
    DateTime,
    Dialect,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
    text,
)
from sqlalchemy.dialects import postgresql
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

#: Alembic's version table (named so it cannot meet another store's in a shared database).
VERSION_TABLE = "registry_schema_version"
NAME_LEN = 128
VERSION_LEN = 71  # "sha256:" + 64 hex digits

ADAPTER_STATUSES = ("registered", "evaluated", "approved", "canary", "serving", "retired", "stale")
JOB_STATUSES = ("pending", "running", "interrupted", "succeeded", "failed", "cancelled")
JOB_METHODS = ("lora", "qlora")
DATASET_STATUSES = ("active", "superseded")
DATASET_ROLES = ("train", "eval")

#: Deterministic constraint names, so migrations can refer to them on every backend.
NAMING = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s",  # PostgreSQL: names <= 63 bytes
    "pk": "pk_%(table_name)s",
}


def _in(column: str, values: tuple[str, ...]) -> str:
    return f"{column} IN ({', '.join(repr(v) for v in values)})"


class UTCDateTime(TypeDecorator[datetime]):
    """A timezone-aware UTC datetime on every backend (SQLite keeps naive UTC text)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("registry timestamps must be timezone-aware")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


#: JSON everywhere, JSONB on PostgreSQL.
Json = JSON().with_variant(postgresql.JSONB(), "postgresql")


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)
    type_annotation_map = {datetime: UTCDateTime(), dict[str, Any]: Json}


class BaseModelRow(Base):
    __tablename__ = "registry_base_models"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(NAME_LEN), unique=True)
    source: Mapped[str] = mapped_column(Text)
    format: Mapped[str] = mapped_column(String(40))
    revision: Mapped[str | None] = mapped_column(String(200))
    sha256: Mapped[str | None] = mapped_column(String(64))
    size_bytes: Mapped[int | None] = mapped_column(BigInteger)
    created_at: Mapped[datetime]


class DatasetVersionRow(Base):
    __tablename__ = "registry_dataset_versions"
    __table_args__ = (
        UniqueConstraint("dataset", "version"),
        CheckConstraint(_in("status", DATASET_STATUSES), name="status"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    dataset: Mapped[str] = mapped_column(String(NAME_LEN))
    version: Mapped[str] = mapped_column(String(VERSION_LEN), index=True)
    record_counts: Mapped[dict[str, Any]]
    report: Mapped[dict[str, Any]]
    status: Mapped[str] = mapped_column(String(20))
    superseded_by: Mapped[str | None] = mapped_column(String(VERSION_LEN))
    superseded_reason: Mapped[str | None] = mapped_column(Text)
    superseded_at: Mapped[datetime | None]
    created_at: Mapped[datetime]


class JobRow(Base):
    __tablename__ = "registry_jobs"
    __table_args__ = (
        CheckConstraint(_in("method", JOB_METHODS), name="method"),
        CheckConstraint(_in("status", JOB_STATUSES), name="status"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(NAME_LEN), unique=True)
    method: Mapped[str] = mapped_column(String(20))
    settings: Mapped[dict[str, Any]]
    base_model_id: Mapped[int] = mapped_column(ForeignKey("registry_base_models.id"), index=True)
    status: Mapped[str] = mapped_column(String(20))
    metrics: Mapped[dict[str, Any]]
    error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime]
    started_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]


class JobDatasetRow(Base):
    __tablename__ = "registry_job_datasets"
    __table_args__ = (CheckConstraint(_in("role", DATASET_ROLES), name="role"),)

    job_id: Mapped[int] = mapped_column(ForeignKey("registry_jobs.id"), primary_key=True)
    dataset_version_id: Mapped[int] = mapped_column(
        ForeignKey("registry_dataset_versions.id"), primary_key=True, index=True
    )
    role: Mapped[str] = mapped_column(String(10), primary_key=True)


class AdapterRow(Base):
    __tablename__ = "registry_adapters"
    __table_args__ = (
        UniqueConstraint("name", "version"),
        CheckConstraint(_in("status", ADAPTER_STATUSES), name="status"),
        CheckConstraint("version >= 1", name="version"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(NAME_LEN))
    version: Mapped[int] = mapped_column(Integer)
    path: Mapped[str] = mapped_column(Text)
    sha256: Mapped[str] = mapped_column(String(64))
    base_model_id: Mapped[int] = mapped_column(ForeignKey("registry_base_models.id"), index=True)
    job_id: Mapped[int | None] = mapped_column(ForeignKey("registry_jobs.id"), index=True)
    metrics: Mapped[dict[str, Any]]
    status: Mapped[str] = mapped_column(String(20))
    stale_reason: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime]
    status_changed_at: Mapped[datetime]


class AdapterEventRow(Base):
    __tablename__ = "registry_adapter_events"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    adapter_id: Mapped[int] = mapped_column(ForeignKey("registry_adapters.id"), index=True)
    from_status: Mapped[str | None] = mapped_column(String(20))
    to_status: Mapped[str] = mapped_column(String(20))
    reason: Mapped[str] = mapped_column(Text)
    at: Mapped[datetime]


class QuantizedRow(Base):
    __tablename__ = "registry_quantized"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(NAME_LEN), unique=True)
    model_id: Mapped[int] = mapped_column(ForeignKey("registry_base_models.id"), index=True)
    method: Mapped[str] = mapped_column(String(40))
    path: Mapped[str] = mapped_column(Text)
    size_bytes: Mapped[int | None] = mapped_column(BigInteger)
    sha256: Mapped[str | None] = mapped_column(String(64))
    settings: Mapped[dict[str, Any]]
    created_at: Mapped[datetime]


class DeploymentRow(Base):
    __tablename__ = "registry_deployments"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(NAME_LEN), unique=True)
    created_at: Mapped[datetime]


_ONE_TARGET = " + ".join(
    f"(CASE WHEN {c} IS NULL THEN 0 ELSE 1 END)" for c in ("adapter_id", "model_id", "quantized_id")
)

_OPEN = "ended_at IS NULL"
_OPEN_MODEL = "ended_at IS NULL AND adapter_id IS NULL"


class AssignmentRow(Base):
    """One interval during which a deployment served one target (open while ``ended_at`` is
    NULL). Exactly one of adapter / model / quantized is set."""

    __tablename__ = "registry_assignments"
    __table_args__ = (
        CheckConstraint(f"{_ONE_TARGET} = 1", name="one_target"),
        CheckConstraint("share > 0 AND share <= 1", name="share"),
        # While open: an adapter once per deployment, and one model (base or quantised).
        Index(
            "ix_registry_assignments_open_adapter",
            "deployment_id",
            "adapter_id",
            unique=True,
            sqlite_where=text(_OPEN),
            postgresql_where=text(_OPEN),
        ),
        Index(
            "ix_registry_assignments_open_model",
            "deployment_id",
            unique=True,
            sqlite_where=text(_OPEN_MODEL),
            postgresql_where=text(_OPEN_MODEL),
        ),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    deployment_id: Mapped[int] = mapped_column(ForeignKey("registry_deployments.id"), index=True)
    adapter_id: Mapped[int | None] = mapped_column(ForeignKey("registry_adapters.id"), index=True)
    model_id: Mapped[int | None] = mapped_column(ForeignKey("registry_base_models.id"))
    quantized_id: Mapped[int | None] = mapped_column(ForeignKey("registry_quantized.id"))
    share: Mapped[float] = mapped_column(Float)
    started_at: Mapped[datetime]
    ended_at: Mapped[datetime | None]


class EdgeRow(Base):
    """A lineage edge from an upstream node to a downstream one: ``to`` *relation* ``from``
    (a job ``trained_on`` a dataset version). Ids are the rows' primary keys."""

    __tablename__ = "registry_edges"
    __table_args__ = (
        UniqueConstraint("from_kind", "from_id", "to_kind", "to_id", "relation"),
        Index("ix_registry_edges_to", "to_kind", "to_id"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    from_kind: Mapped[str] = mapped_column(String(20))
    from_id: Mapped[int] = mapped_column(Integer)
    to_kind: Mapped[str] = mapped_column(String(20))
    to_id: Mapped[int] = mapped_column(Integer)
    relation: Mapped[str] = mapped_column(String(40))
    created_at: Mapped[datetime]

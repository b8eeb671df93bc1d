"""The model registry: what was trained from what, and what serves where.

Base models, dataset versions, fine-tuning jobs, adapters (monotonic versions with a
status lifecycle), quantised artifacts and deployments, in SQLite (default) or PostgreSQL,
joined by lineage edges that walk both ways. See docs/registry.md.

Example:
    >>> from qingliang.platform.lifecycle.registry import Registry
    >>> with Registry(home=Path("/tmp/ql")) as reg:           # doctest: +SKIP
    ...     reg.lineage("adapter", "faq-bot@3").refs("dataset_version")
"""

from qingliang.platform.lifecycle.registry._db import RegistryError
from qingliang.platform.lifecycle.registry.records import (
    ADAPTER_TRANSITIONS,
    Adapter,
    Assignment,
    BaseModel,
    DatasetVersion,
    Job,
    Lineage,
    LineageNode,
    Quantized,
    StatusEvent,
)
from qingliang.platform.lifecycle.registry.registry import Registry
from qingliang.platform.lifecycle.registry.sync import (
    SyncResult,
    propagate_deletion,
    record_dataset_version,
    sync_dataset,
)

__all__ = [
    "ADAPTER_TRANSITIONS",
    "Adapter",
    "Assignment",
    "BaseModel",
    "DatasetVersion",
    "Job",
    "Lineage",
    "LineageNode",
    "Quantized",
    "Registry",
    "RegistryError",
    "StatusEvent",
    "SyncResult",
    "propagate_deletion",
    "record_dataset_version",
    "sync_dataset",
]

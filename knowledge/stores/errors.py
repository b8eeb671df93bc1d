"""Errors raised by vector stores, on top of :mod:`qingliang.platform.errors`.

Backend exceptions (``qdrant_edge``'s bare ``Exception``, ``qdrant_client``'s
``UnexpectedResponse`` / ``ValueError``) are translated at the adapter boundary::

    QingliangError
    ├── StoreError               the backend failed (I/O, lock, unreachable server)
    │   └── ShardLocked          another opener holds the shard's write-ahead-log lock
    └── ApiError
        ├── BadRequest           wrong vector size, sparse vector on a dense-only collection
        │   └── SpecConflict     create_collection with a spec other than the existing one
        └── NotFound             unknown collection
"""

from __future__ import annotations

from qingliang.platform.errors import BadRequest, QingliangError


class StoreError(QingliangError):
    """A vector-store backend failed in a way the caller did not cause."""


class ShardLocked(StoreError):
    """An embedded shard directory is already open elsewhere (one opener per shard)."""


class SpecConflict(BadRequest):
    """``create_collection`` named an existing collection with a different spec."""

    def __init__(self, message: str) -> None:
        super().__init__(message, param="spec", code="collection_spec_conflict")

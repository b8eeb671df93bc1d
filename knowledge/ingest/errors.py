"""The one error a parser raises: this document cannot be ingested, and why."""

from __future__ import annotations

from qingliang.platform.errors import QingliangError


class DocumentError(QingliangError):
    """One document failed (binary, wrong encoding, empty, too large, unsupported, corrupt).

    Ingestion reports it with the document's path and goes on with the others.
    """

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason

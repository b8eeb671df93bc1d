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


def describe(exc: BaseException) -> str:
    """``Type: message`` of a third-party exception, for a reason (``Type`` alone when
    the message is empty)."""
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__

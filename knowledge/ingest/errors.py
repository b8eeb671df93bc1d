"""The one error a parser raises: this document cannot be ingested, and why.

Reasons reach API callers (tenants), so a third-party exception is shown through
:func:`describe`: its type and the first line of its message, with every absolute host
path replaced by ``<path>`` (:func:`redact_paths`); the whole traceback stays in the
DEBUG log.
"""

from __future__ import annotations

import re

from qingliang.platform.errors import QingliangError

#: An absolute POSIX path (``/tmp/x/y.pdf``, ``/etc``): a ``/`` that starts a word (not
#: the ``/`` of ``text/plain``, ``1/2`` or ``http://host/``) and the characters after it
#: up to a space, quote or bracket.
_HOST_PATH = re.compile(r"(?<![\w.~/:>-])/(?=[^\s/])[^\s'\"`<>|;,()\[\]{}]*")
#: Longest message part kept of a third-party exception.
MAX_DETAIL = 300


class DocumentError(QingliangError):
    """One document failed (binary, wrong encoding, empty, too large, unsupported, corrupt).

    Ingestion reports it with the document's path and goes on with the others.
    """

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def redact_paths(text: str) -> str:
    """``text`` with every absolute host path replaced by ``<path>``.

    Example:
        >>> redact_paths("cannot open '/srv/data/uploads/kb/a.pdf' (see text/plain)")
        "cannot open '<path>' (see text/plain)"
    """
    return _HOST_PATH.sub("<path>", text)


def describe(exc: BaseException) -> str:
    """``Type: message`` of a third-party exception, for a reason (``Type`` alone when
    the message is empty): the message's first line only, host paths redacted."""
    lines = str(exc).strip().splitlines()
    text = redact_paths(lines[0].strip()) if lines else ""
    if len(text) > MAX_DETAIL:
        text = text[: MAX_DETAIL - 1] + "…"
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__

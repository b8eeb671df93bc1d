"""The gateway's bearer-key check, over the hashed key store.

Example:
    >>> auth = KeyAuth(home / "state.sqlite", enabled=True)  # doctest: +SKIP
    >>> auth.verify("ql-...")                               # doctest: +SKIP
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol


class Auth(Protocol):
    """What the gateway asks of its key check (:class:`KeyAuth` in production)."""

    enabled: bool

    def verify(self, token: str) -> Any:
        """The key's record (truthy; its ``scopes`` may name a tenant), or a falsy value."""
        ...


class KeyAuth:
    """Bearer keys checked against the hashed key store; off only when configured so."""

    def __init__(self, db: Path, enabled: bool) -> None:
        self.enabled = enabled
        self._db = db
        self._store: Any = None

    @property
    def usage(self) -> Any:
        """The key store, where per-key token use is charged (see :mod:`.quotas`)."""
        if self._store is None:
            from qingliang.platform.storage.keys import KeyStore

            self._store = KeyStore(self._db)
        return self._store

    def verify(self, token: str) -> Any:
        """The key's record when valid (its scopes may name a tenant), else None."""
        return self.usage.verify(token)

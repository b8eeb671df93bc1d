"""Importing a parser's optional library, or saying which package to install."""

from __future__ import annotations

import importlib
from types import ModuleType

from qingliang.knowledge.ingest.errors import DocumentError


def require(module: str, label: str, package: str) -> ModuleType:
    """Import ``module``; :class:`DocumentError` names ``package`` when it is missing or
    fails to import (a missing system library, say).

    Example:
        >>> require("json", "JSON", "json").__name__
        'json'
    """
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        missing = getattr(exc, "name", None)
        if isinstance(exc, ModuleNotFoundError) and missing and module.startswith(missing):
            raise DocumentError(
                f"{label} needs the `{package}` package, which is not installed"
            ) from None
        # The package is there but something it needs is not (a module, a system library).
        raise DocumentError(
            f"{label} needs the `{package}` package, which failed to import: {exc}"
        ) from None

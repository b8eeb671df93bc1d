"""Where Qingliang keeps its state, and the addresses it binds.

Everything lives under one data directory, ``$QINGLIANG_HOME`` (default
``~/.qingliang``): the model cache, the state database (applied manifests, API keys),
Ray's temp dir and the run file that ``qingliang down`` reads.

The gateway application's settings, the ``args`` of its Ray Serve application, are one
typed :class:`~qingliang.platform.gateway_config.GatewayConfig` (its own module, so that
``qingliang --help`` need not import pydantic).
The gateway's request limits are :class:`GatewayLimits`, each settable by an environment
variable of the gateway's process (``QINGLIANG_MAX_JSON_BODY_BYTES`` ...).

Example:
    >>> s = Settings(home=Path("/tmp/ql"))
    >>> str(s.model_cache)
    '/tmp/ql/models'
    >>> GatewayLimits().max_json_body_bytes
    4194304
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path

MiB = 1024 * 1024
#: When set, every platform store lives in this one database (docs/storage.md).
DATABASE_URL_ENV = "QINGLIANG_DATABASE_URL"


def database_url_from_env(environ: Mapping[str, str] | None = None) -> str | None:
    """``$QINGLIANG_DATABASE_URL`` (stripped), or None when it is unset or blank: then each
    store keeps its SQLite file under ``$QINGLIANG_HOME``.

    Example:
        >>> database_url_from_env({"QINGLIANG_DATABASE_URL": " postgresql://h/ql "})
        'postgresql://h/ql'
        >>> database_url_from_env({}) is None
        True
    """
    env = os.environ if environ is None else environ
    return (env.get(DATABASE_URL_ENV) or "").strip() or None


def _default_home() -> Path:
    env = os.environ.get("QINGLIANG_HOME")
    return Path(env).expanduser() if env else Path.home() / ".qingliang"


@dataclass(frozen=True)
class Settings:
    """Paths and ports. Built once by an entrypoint and passed down."""

    home: Path = field(default_factory=_default_home)
    host: str = "127.0.0.1"
    http_port: int = int(os.environ.get("QINGLIANG_HTTP_PORT", "8000"))
    dashboard_port: int = int(os.environ.get("QINGLIANG_DASHBOARD_PORT", "8265"))
    metrics_port: int = int(os.environ.get("QINGLIANG_METRICS_PORT", "8080"))
    ray_port: int = int(os.environ.get("QINGLIANG_RAY_PORT", "6380"))

    @property
    def model_cache(self) -> Path:
        return self.home / "models"

    @property
    def state_db(self) -> Path:
        return self.home / "state.sqlite"

    @property
    def database_url(self) -> str | None:
        """The shared database of every store (``$QINGLIANG_DATABASE_URL``), or None: SQLite
        files under :attr:`home`."""
        return database_url_from_env()

    @property
    def run_file(self) -> Path:
        return self.home / "run.json"

    @property
    def ray_temp(self) -> Path:
        # Ray's socket paths must stay under ~107 bytes, so not under `home`; one
        # short folder per data directory so two platforms never share (or kill) one.
        digest = hashlib.sha1(str(self.home.resolve()).encode()).hexdigest()[:8]
        return Path(os.environ.get("QINGLIANG_RAY_TMP", f"/tmp/ql-{digest}"))


@dataclass(frozen=True)
class GatewayLimits:
    """How much one gateway request may carry. Every field has an environment variable
    (``QINGLIANG_`` + the field name in capitals, e.g. ``QINGLIANG_MAX_UPLOAD_BYTES``) read
    by :meth:`from_env`.

    Example:
        >>> GatewayLimits(max_upload_bytes=1024).max_upload_bytes
        1024
        >>> GatewayLimits(max_n=0)
        Traceback (most recent call last):
        ...
        ValueError: max_n must be a positive integer, got 0
    """

    #: Bytes of a JSON request body (chat, completions, embeddings, knowledge, feedback...).
    max_json_body_bytes: int = 4 * MiB
    #: Bytes of a chat completions or responses body: its images travel in it as base64.
    max_chat_body_bytes: int = 32 * MiB
    #: Bytes of an agent run or resume body: its attachments travel in it as base64.
    max_agent_body_bytes: int = 32 * MiB
    #: Bytes of a file uploaded to a knowledge base (the multipart envelope comes on top).
    max_upload_bytes: int = 50 * MiB
    #: Files attached to one agent run.
    max_attachments: int = 8
    #: Bytes of one attached file, decoded.
    max_attachment_bytes: int = 20 * MiB
    #: ``n``: choices generated for one request.
    max_n: int = 16

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{f.name} must be a positive integer, got {value!r}")

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> GatewayLimits:
        """The defaults, overridden by ``QINGLIANG_<FIELD>`` variables of ``environ``
        (``os.environ`` when None)."""
        env = os.environ if environ is None else environ
        values: dict[str, int] = {}
        for f in fields(cls):
            name = f"QINGLIANG_{f.name.upper()}"
            text = env.get(name)
            if text is None or not text.strip():
                continue
            try:
                values[f.name] = int(text)
            except ValueError:
                raise ValueError(f"{name}={text!r} is not an integer") from None
            if values[f.name] < 1:
                raise ValueError(f"{name}={text!r} must be a positive integer")
        return cls(**values)

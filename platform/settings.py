"""Where Qingliang keeps its state, and the addresses it binds.

Everything lives under one data directory, ``$QINGLIANG_HOME`` (default
``~/.qingliang``): the model cache, the state database (applied manifests, API keys),
Ray's temp dir and the run file that ``qingliang down`` reads.

Example:
    >>> s = Settings(home=Path("/tmp/ql"))
    >>> str(s.model_cache)
    '/tmp/ql/models'
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path


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
    def run_file(self) -> Path:
        return self.home / "run.json"

    @property
    def ray_temp(self) -> Path:
        # Ray's socket paths must stay under ~107 bytes, so not under `home`; one
        # short folder per data directory so two platforms never share (or kill) one.
        digest = hashlib.sha1(str(self.home.resolve()).encode()).hexdigest()[:8]
        return Path(os.environ.get("QINGLIANG_RAY_TMP", f"/tmp/ql-{digest}"))

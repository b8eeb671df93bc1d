"""The on-disk model cache behind :mod:`qingliang.serving.sources` (private helpers).

A converted model lives in ``<cache>/<key>/``. It is built in ``<cache>/.<key>.tmp-*``,
sealed with :data:`MARKER` (the source's sha256 and every file's size, written last),
and renamed into place, all under an ``fcntl`` lock on ``<cache>/.<key>.lock``. Anything
else named ``.<key>.*`` is a crashed build's leftover and is removed under that lock.
"""

from __future__ import annotations

import fcntl
import glob
import hashlib
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from qingliang.platform.errors import ModelSourceError

logger = logging.getLogger(__name__)

#: Written last into a converted directory; its presence (with matching sizes) means done.
MARKER = ".qingliang-source.json"

_CHUNK = 8 << 20


class Reporter:
    """A rich progress display on stderr when enabled; DEBUG log lines always."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self._console: Any = None

    @property
    def console(self) -> Any:
        if self._console is None:
            from rich.console import Console

            self._console = Console(stderr=True)
        return self._console

    def note(self, message: str) -> None:
        logger.debug("%s", message)
        if self.enabled:
            self.console.print(message)

    @contextmanager
    def bytes(self, description: str, total: int) -> Iterator[Callable[[int], None]]:
        logger.debug("%s (%d bytes)", description, total)
        if not self.enabled:
            yield lambda _n: None
            return
        from rich.progress import (
            BarColumn,
            DownloadColumn,
            Progress,
            TextColumn,
            TimeRemainingColumn,
            TransferSpeedColumn,
        )

        columns = (
            TextColumn("{task.description}"),
            BarColumn(),
            DownloadColumn(),
            TransferSpeedColumn(),
            TimeRemainingColumn(),
        )
        with Progress(*columns, console=self.console) as bar:
            task = bar.add_task(description, total=total)
            yield lambda n: bar.advance(task, n)

    @contextmanager
    def spinner(self, description: str) -> Iterator[None]:
        logger.debug("%s", description)
        if not self.enabled:
            yield
            return
        from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

        with Progress(
            SpinnerColumn(),
            TextColumn("{task.description}"),
            TimeElapsedColumn(),
            console=self.console,
        ) as bar:
            bar.add_task(description, total=None)
            yield


def is_complete(target: Path, sha256: str) -> bool:
    """True when ``target`` holds a sealed conversion of the source with ``sha256``."""
    try:
        meta = json.loads((target / MARKER).read_text("utf-8"))
        files = meta["files"]
        if meta["source_sha256"] != sha256 or "config.json" not in files:
            return False
        return all((target / rel).stat().st_size == size for rel, size in files.items())
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return False


def fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def seal(directory: Path, meta: dict) -> None:
    """Check, flush and mark a finished conversion (the marker is written last)."""
    if not (directory / "config.json").is_file():
        raise ModelSourceError(f"{meta['source']}: the conversion wrote no config.json")
    files: dict[str, int] = {}
    for path in sorted(directory.rglob("*")):
        if path.is_file():
            path.chmod(0o644)
            fsync(path)
            files[path.relative_to(directory).as_posix()] = path.stat().st_size
        elif path.is_dir():
            path.chmod(0o755)
    directory.chmod(0o755)
    part = directory / f"{MARKER}.part"
    part.write_text(json.dumps({**meta, "files": files}, indent=2) + "\n", "utf-8")
    fsync(part)
    part.rename(directory / MARKER)
    fsync(directory)


@contextmanager
def exclusive(lock_path: Path, label: str, report: Reporter) -> Iterator[None]:
    """Hold an exclusive fcntl lock on ``lock_path``; say so when we have to wait."""
    with open(lock_path, "a+b") as handle:
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            logger.info("waiting for another process preparing %s", label)
            report.note(f"Waiting for another process preparing {label} ...")
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def clear_leftovers(cache_dir: Path, key: str) -> None:
    """Remove what a crashed build of ``key`` left (call only while holding its lock)."""
    target = cache_dir / key
    if target.exists():
        # Incomplete (the caller checked): move it aside first, so a reader that still
        # has files open keeps them while we delete.
        stale = Path(tempfile.mkdtemp(prefix=f".{key}.stale-", dir=cache_dir))
        os.rename(target, stale / "old")
    for path in cache_dir.glob(f".{glob.escape(key)}.*"):
        if path.name == f".{key}.lock":
            continue
        logger.debug("removing leftover %s", path)
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)


def check_space(cache_dir: Path, need: int, label: str) -> None:
    free = shutil.disk_usage(cache_dir).free
    if free < need:
        raise ModelSourceError(
            f"{label}: needs about {need / 1e9:.1f} GB free in {cache_dir} to convert, "
            f"only {free / 1e9:.1f} GB are free"
        )


def sha256_file(path: Path, advance: Callable[[int], None]) -> tuple[str, int]:
    digest, size = hashlib.sha256(), 0
    with open(path, "rb") as src:
        while chunk := src.read(_CHUNK):
            digest.update(chunk)
            size += len(chunk)
            advance(len(chunk))
    return digest.hexdigest(), size


def join_parts(parts: list[Path], out: Path, advance: Callable[[int], None]) -> tuple[str, int]:
    """Concatenate ``parts`` into ``out`` chunk by chunk, hashing on the way."""
    digest, size = hashlib.sha256(), 0
    with open(out, "wb") as dst:
        for part in parts:
            with open(part, "rb") as src:
                while chunk := src.read(_CHUNK):
                    digest.update(chunk)
                    dst.write(chunk)
                    size += len(chunk)
                    advance(len(chunk))
    return digest.hexdigest(), size

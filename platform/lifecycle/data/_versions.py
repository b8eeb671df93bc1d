"""What a dataset version is, and how it is laid out and written (helpers of ``store``).

A version is the bytes of ``train.jsonl``, ``eval.jsonl`` and ``quarantine.jsonl`` (one
canonical JSON object per line) plus ``report.json`` and ``manifest.json``. Its id hashes
the governance settings and the three record files. Files are written in a temporary
folder, fsynced, made read-only and renamed into place in one step.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from qingliang.platform.lifecycle.data._governance import texts
from qingliang.platform.lifecycle.data.sources import canonical

PREFIX = "sha256:"
FILES = ("train.jsonl", "eval.jsonl", "quarantine.jsonl")
SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS datasets (
    name TEXT PRIMARY KEY, manifest TEXT NOT NULL, base TEXT NOT NULL, latest TEXT,
    created_at REAL NOT NULL, updated_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS versions (
    name TEXT NOT NULL, version TEXT NOT NULL, seq INTEGER NOT NULL,
    created_at REAL NOT NULL, actor TEXT NOT NULL, status TEXT NOT NULL,
    records INTEGER NOT NULL, train INTEGER NOT NULL, eval INTEGER NOT NULL,
    quarantined INTEGER NOT NULL, settings_hash TEXT NOT NULL,
    superseded_by TEXT, reason TEXT NOT NULL DEFAULT '', ended_at REAL,
    PRIMARY KEY (name, version)
);
CREATE TABLE IF NOT EXISTS tombstones (
    name TEXT NOT NULL, record_id TEXT NOT NULL, actor TEXT NOT NULL, reason TEXT NOT NULL,
    at REAL NOT NULL, PRIMARY KEY (name, record_id)
);
CREATE TABLE IF NOT EXISTS audit (
    id INTEGER PRIMARY KEY AUTOINCREMENT, at REAL NOT NULL, name TEXT, actor TEXT NOT NULL,
    action TEXT NOT NULL, details TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS audit_name ON audit (name, at);
CREATE TRIGGER IF NOT EXISTS audit_no_update BEFORE UPDATE ON audit
BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;
CREATE TRIGGER IF NOT EXISTS audit_no_delete BEFORE DELETE ON audit
BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;
"""
VERSION_COLS = (
    "name, version, created_at, actor, status, records, train, eval, quarantined, "
    "settings_hash, superseded_by, reason"
)


@dataclass(frozen=True)
class DatasetVersion:
    """One version of a dataset; ``status`` is ``active``, ``superseded`` or ``removed``."""

    name: str
    version: str
    created_at: float
    actor: str
    status: str
    records: int
    train: int
    eval: int
    quarantined: int
    settings_hash: str
    superseded_by: str | None = None
    reason: str = ""
    latest: bool = False
    path: Path | None = None  # the folder holding the files (None unless active)
    #: What the cut that returned it found worth saying (an empty eval split); only
    #: ``cut`` fills it, and ``report.json`` keeps it.
    warnings: tuple[str, ...] = ()


@dataclass(frozen=True)
class DeletionResult:
    """What :meth:`DatasetStore.delete_record` did: old version -> the version replacing it."""

    name: str
    record_ids: tuple[str, ...]
    superseded: dict[str, str] = field(default_factory=dict)
    reason: str = ""

    @property
    def record_id(self) -> str:
        return self.record_ids[0] if self.record_ids else ""


@dataclass(frozen=True)
class AuditEntry:
    id: int
    at: float
    name: str | None
    actor: str
    action: str
    details: dict[str, Any]


@dataclass
class Files:
    """A version's content before it is written."""

    train: bytes
    eval: bytes
    quarantine: bytes
    report: dict[str, Any]
    manifest: dict[str, Any]

    def version(self, settings: str) -> str:
        h = hashlib.sha256(b"qingliang.dataset/1\n" + settings.encode() + b"\n")
        for name, data in zip(FILES, (self.train, self.eval, self.quarantine), strict=True):
            h.update(f"{name} {len(data)}\n".encode())
            h.update(data)
        return PREFIX + h.hexdigest()


def lines(items: list[dict[str, Any]]) -> bytes:
    return "".join(canonical(i) + "\n" for i in items).encode()


def split_lines(data: bytes) -> list[bytes]:
    # Not str.splitlines: it also splits at U+2028 and friends, which JSON keeps unescaped.
    return [line + b"\n" for line in data.split(b"\n") if line.strip()]


def parse(data: bytes) -> list[dict[str, Any]]:
    return [json.loads(line) for line in split_lines(data)]


def text_of(item: dict[str, Any]) -> str:
    """What ``match`` searches in a stored line: a record's text, a quarantined line's."""
    if isinstance(item.get("raw"), str):
        return str(item["raw"])
    body = item.get("record", item)
    if isinstance(body, dict) and any(k in body for k in ("messages", "instruction", "output")):
        return texts(body, "conversation")
    return ""


def write_version(tmp_root: Path, target: Path, files: Files) -> Path:
    """Write ``files`` as the folder ``target``: temp folder, fsync, rename into place."""
    tmp_root.mkdir(parents=True, exist_ok=True)
    tmp = tmp_root / secrets.token_hex(8)
    tmp.mkdir()
    try:
        contents = {
            "train.jsonl": files.train,
            "eval.jsonl": files.eval,
            "quarantine.jsonl": files.quarantine,
            "report.json": json.dumps(files.report, ensure_ascii=False, indent=2).encode(),
            "manifest.json": json.dumps(files.manifest, ensure_ascii=False, indent=2).encode(),
        }
        for fname, data in contents.items():
            fd = os.open(tmp / fname, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            os.chmod(tmp / fname, 0o444)
        target.parent.mkdir(parents=True, exist_ok=True)
        os.rename(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    # The rename itself survives a power cut only once its folder is synced.
    fd = os.open(target.parent, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    return target

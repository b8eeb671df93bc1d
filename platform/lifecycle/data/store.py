"""Immutable, content-addressed dataset versions with deletion, retention and an audit log.

A :class:`DatasetStore` keeps, under one folder (``<home>/datasets``)::

    datasets.sqlite                 datasets, versions, tombstones, audit (append-only)
    .locks/<name>.lock              one writer per dataset at a time (across processes)
    <name>/versions/<hex>/          one folder per version, files read-only:
        train.jsonl  eval.jsonl     the records, one canonical JSON object per line
        quarantine.jsonl            malformed records: source, line / row, step, reason
        report.json                 per step: records in / out, what was removed and why
        manifest.json               the manifest and folder the version was cut from
    <name>/.tmp/                    versions being written (renamed into place when done)

A record is ``{"id", "messages"}`` or ``{"id", "instruction", "input"?, "output"}`` with an
optional ``metadata`` object, the shape fine-tuning reads. Its ``id`` is a keyed hash of its
normalised content as read from the source (before redaction), stable within one store.

A version id is ``sha256:<hex>`` of the governance settings hash and the bytes of
``train.jsonl``, ``eval.jsonl`` and ``quarantine.jsonl``: the same sources and manifest cut
twice give the same id and one folder. A version is written in a temporary folder and
renamed into place, then registered, so a failed cut leaves earlier versions as they were.

Deleting a record tombstones it (future cuts drop it) and replaces every version holding
it with a copy without it: all other lines are kept byte for byte, the old version's files
are removed and its row says ``superseded_by`` and why.

Example:
    >>> store = DatasetStore(Path("/tmp/ql/datasets"))                   # doctest: +SKIP
    >>> v = store.cut(dataset, Path("deploy/examples"), actor="alice")   # doctest: +SKIP
    >>> store.read(dataset.name, v.version, "train")[0]["messages"]      # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import fcntl
import json
import logging
import os
import secrets
import shutil
import sqlite3
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal

from qingliang.platform.errors import BadRequest, NotFound, QingliangError, ResolveError
from qingliang.platform.lifecycle.data._cut import (
    Loaded,
    cut_report,
    nothing_left,
    record_matcher,
    recut_files,
    retention_doomed,
    split_records,
    split_warnings,
)
from qingliang.platform.lifecycle.data._governance import (
    build_scanner,
    govern,
    redact_raw,
    settings_hash,
)
from qingliang.platform.lifecycle.data._versions import (
    FILES,
    PREFIX,
    SCHEMA,
    VERSION_COLS,
    AuditEntry,
    DatasetVersion,
    DeletionResult,
    Files,
    lines,
    parse,
    write_version,
)
from qingliang.platform.lifecycle.data.manifest import Dataset, Retention
from qingliang.platform.lifecycle.data.sources import (
    canonical,
    drop_reasons,
    read_sources,
    resolve_files,
)
from qingliang.platform.storage.sqlite import open_db, write

logger = logging.getLogger(__name__)

Split = Literal["train", "eval", "all"]


class DatasetStore:
    """Versions of every dataset under ``root``. Safe to share between processes.

    Args:
        root: the folder (created on first use), normally ``<home>/datasets``.
        env: where ``salt_env`` is looked up (default ``os.environ``).
        clock: seconds since the epoch (tests pass a fake one for retention).
    """

    def __init__(
        self,
        root: Path,
        *,
        env: Mapping[str, str] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.root = Path(root)
        self.env = os.environ if env is None else env
        self.clock = clock

    @classmethod
    def for_home(cls, home: Path, **kw: Any) -> DatasetStore:
        return cls(Path(home) / "datasets", **kw)

    # -- plumbing ----------------------------------------------------------------------

    @contextmanager
    def _db(self) -> Iterator[sqlite3.Connection]:
        with open_db(self.root / "datasets.sqlite", SCHEMA) as conn:
            yield conn

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        with self._db() as c, write(c):
            yield c

    def _key(self) -> bytes:
        with self._write() as c:
            c.execute(
                "INSERT OR IGNORE INTO meta(key, value) VALUES ('record_key', ?)",
                (secrets.token_bytes(32),),
            )
            return bytes(c.execute("SELECT value FROM meta WHERE key='record_key'").fetchone()[0])

    @contextmanager
    def _locked(self, name: str) -> Iterator[None]:
        locks = self.root / ".locks"
        locks.mkdir(parents=True, exist_ok=True)
        with open(locks / f"{name}.lock", "a+b") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                self._sweep(name)
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    def _sweep(self, name: str) -> None:
        """Remove what an interrupted writer left: temp folders, unregistered versions and
        files of versions already superseded or removed."""
        shutil.rmtree(self.root / name / ".tmp", ignore_errors=True)
        folder = self.root / name / "versions"
        if not folder.is_dir():
            return
        with self._db() as c:
            active = {
                r[0].removeprefix(PREFIX)
                for r in c.execute(
                    "SELECT version FROM versions WHERE name=? AND status='active'", (name,)
                )
            }
        for d in folder.iterdir():
            if d.name not in active:
                logger.warning("dataset %s: removing stale version folder %s", name, d.name)
                shutil.rmtree(d, ignore_errors=True)

    def _dir(self, name: str, version: str) -> Path:
        return self.root / name / "versions" / version.removeprefix(PREFIX)

    def _materialise(self, name: str, version: str, files: Files) -> Path:
        return write_version(self.root / name / ".tmp", self._dir(name, version), files)

    def _log(
        self, c: sqlite3.Connection, name: str | None, actor: str, action: str, **kw: Any
    ) -> None:
        c.execute(
            "INSERT INTO audit(at, name, actor, action, details) VALUES (?,?,?,?,?)",
            (self.clock(), name, actor, action, canonical(kw)),
        )

    # -- cut ---------------------------------------------------------------------------

    def check(self, dataset: Dataset, manifest_dir: Path, *, source: str | None = None) -> None:
        """Fail early, writing nothing, when a source matches no file or ``salt_env`` is unset.

        Raises:
            ResolveError: naming ``source`` (the manifest file) and the field.
        """
        base = Path(manifest_dir).resolve()
        try:
            build_scanner(dataset.spec, self.env)
            for i, s in enumerate(dataset.spec.sources):
                resolve_files(s, base, i)
        except ResolveError as exc:
            raise ResolveError(f"{source}: {exc}" if source else str(exc)) from None

    def cut(self, dataset: Dataset, manifest_dir: Path, actor: str) -> DatasetVersion:
        """Read the sources, govern them and store the result as a version.

        Sources are relative to ``manifest_dir``. Identical content gives the existing
        version back. Retention runs afterwards.

        An empty split is cut but said in ``warnings`` (and logged); a cut that would
        hold no record at all is refused.

        Raises:
            ResolveError: a source is missing or unreadable, ``salt_env`` is not set, or
                no record is left (the message counts the records dropped by reason).
        """
        name, spec = dataset.name, dataset.spec
        base = Path(manifest_dir).resolve()
        scanner = build_scanner(spec, self.env)
        key = self._key()
        with self._locked(name):
            try:
                read = read_sources(spec, base, key)
            except QingliangError as exc:
                with self._write() as c:
                    self._log(c, name, actor, "cut_failed", error=str(exc))
                raise
            with self._db() as c:
                tomb = {
                    r[0]
                    for r in c.execute("SELECT record_id FROM tombstones WHERE name=?", (name,))
                }
            kept = [r for r in read.records if r.id not in tomb and r.corrects not in tomb]
            dropped = [r.id for r in read.records if r.id in tomb or r.corrects in tomb]
            governed = govern(kept, spec, scanner)
            quarantine = [
                {**q, "raw": redact_raw(q["raw"], scanner)} if "raw" in q else q
                for q in read.quarantine
            ] + governed.quarantine
            train, evals = split_records(governed, spec)
            if not governed.records:
                error = nothing_left(name, read, drop_reasons(read, governed.steps, len(dropped)))
                with self._write() as c:
                    self._log(c, name, actor, "cut_failed", error=error)
                raise ResolveError(error)
            warnings = split_warnings(name, spec.split.eval_fraction, len(train), len(evals))
            settings = settings_hash(spec)
            now = self.clock()
            report = cut_report(
                name,
                spec,
                actor=actor,
                now=now,
                settings=settings,
                read=read,
                dropped=dropped,
                governed=governed,
                counts=(len(train), len(evals), len(quarantine)),
                warnings=warnings,
            )
            manifest = {
                "manifest": dataset.model_dump(mode="json", by_alias=True),
                "base": str(base),
            }
            files = Files(lines(train), lines(evals), lines(quarantine), report, manifest)
            version = files.version(settings)
            report["version"] = version
            cut = self._register(name, version, files, actor, manifest, now)
        for warning in warnings:
            logger.warning("%s", warning)
        return dataclasses.replace(cut, warnings=tuple(warnings))

    def _register(
        self,
        name: str,
        version: str,
        files: Files,
        actor: str,
        manifest: dict[str, Any],
        now: float,
    ) -> DatasetVersion:
        with self._db() as c:
            row = c.execute(
                "SELECT status FROM versions WHERE name=? AND version=?", (name, version)
            ).fetchone()
        unchanged = row is not None and row[0] == "active"
        written = None
        if not unchanged:
            written = self._materialise(name, version, files)
        try:
            with self._write() as c:
                c.execute(
                    "INSERT INTO datasets(name, manifest, base, latest, created_at, updated_at) "
                    "VALUES (?,?,?,?,?,?) ON CONFLICT(name) DO UPDATE SET "
                    "manifest=excluded.manifest, base=excluded.base, latest=excluded.latest, "
                    "updated_at=excluded.updated_at",
                    (name, canonical(manifest["manifest"]), manifest["base"], version, now, now),
                )
                if row is None:
                    self._insert_version(c, name, version, files, actor, now)
                elif not unchanged:
                    c.execute(
                        "UPDATE versions SET status='active', superseded_by=NULL, reason='', "
                        "ended_at=NULL WHERE name=? AND version=?",
                        (name, version),
                    )
                r = files.report
                self._log(
                    c,
                    name,
                    actor,
                    "cut",
                    version=version,
                    unchanged=unchanged,
                    records=r["records"],
                    quarantined=r["quarantined"],
                )
        except BaseException:
            if written is not None:
                shutil.rmtree(written, ignore_errors=True)
            raise
        self._retain(name, "retention")
        return self.get(name, version)

    def _insert_version(
        self, c: sqlite3.Connection, name: str, version: str, files: Files, actor: str, now: float
    ) -> None:
        seq = c.execute(
            "SELECT COALESCE(MAX(seq), 0) + 1 FROM versions WHERE name=?", (name,)
        ).fetchone()[0]
        r = files.report
        c.execute(
            "INSERT INTO versions(name, version, seq, created_at, actor, status, records, train, "
            "eval, quarantined, settings_hash) VALUES (?,?,?,?,?,'active',?,?,?,?,?)",
            (
                name,
                version,
                seq,
                now,
                actor,
                r["records"],
                r["split"]["train"],
                r["split"]["eval"],
                r["quarantined"],
                r["settings_hash"],
            ),
        )

    ingest = cut

    # -- reading -----------------------------------------------------------------------

    def names(self) -> list[str]:
        with self._db() as c:
            return [r[0] for r in c.execute("SELECT name FROM datasets ORDER BY name")]

    def versions(self, name: str) -> list[DatasetVersion]:
        """Every version of ``name`` (superseded and removed ones too), newest first."""
        with self._db() as c:
            ds = c.execute("SELECT latest FROM datasets WHERE name=?", (name,)).fetchone()
            if ds is None:
                raise NotFound(f"no dataset named {name!r}")
            rows = c.execute(
                f"SELECT {VERSION_COLS} FROM versions WHERE name=? ORDER BY seq DESC", (name,)
            ).fetchall()
        return [self._version(r, ds[0]) for r in rows]

    def _version(self, row: tuple, latest: str | None) -> DatasetVersion:
        v = DatasetVersion(*row)  # the columns of VERSION_COLS, in order
        path = self._dir(v.name, v.version) if v.status == "active" else None
        return dataclasses.replace(v, latest=v.version == latest, path=path)

    def get(self, name: str, version: str | None = None) -> DatasetVersion:
        """One version: the latest, or by id (``sha256:<hex>`` or a unique hex prefix)."""
        versions = self.versions(name)
        if version is None:
            latest = [v for v in versions if v.latest]
            if not latest:
                raise NotFound(f"dataset {name!r} has no version")
            return latest[0]
        want = version.removeprefix(PREFIX)
        found = [v for v in versions if v.version.removeprefix(PREFIX).startswith(want)]
        if not found or not want:
            raise NotFound(f"dataset {name!r} has no version {version!r}")
        if len(found) > 1:
            raise BadRequest(f"{version!r} names {len(found)} versions of {name!r}; give more")
        return found[0]

    def _active(self, name: str, version: str | None) -> DatasetVersion:
        v = self.get(name, version)
        if v.status != "active" or v.path is None:
            why = f"superseded by {v.superseded_by}" if v.superseded_by else "removed"
            raise NotFound(
                f"version {v.version} of {name!r} was {why} ({v.reason}); its files are gone"
            )
        return v

    def read(
        self, name: str, version: str | None = None, split: Split = "train"
    ) -> list[dict[str, Any]]:
        """The records of a version (``train``, ``eval`` or ``all``: train then eval)."""
        v = self._active(name, version)
        assert v.path is not None
        parts = ["train", "eval"] if split == "all" else [split]
        out: list[dict[str, Any]] = []
        for p in parts:
            out.extend(parse((v.path / f"{p}.jsonl").read_bytes()))
        return out

    def report(self, name: str, version: str | None = None) -> dict[str, Any]:
        v = self._active(name, version)
        assert v.path is not None
        result: dict[str, Any] = json.loads((v.path / "report.json").read_text("utf-8"))
        return result

    def quarantine(self, name: str, version: str | None = None) -> list[dict[str, Any]]:
        v = self._active(name, version)
        assert v.path is not None
        return parse((v.path / "quarantine.jsonl").read_bytes())

    def manifest(self, name: str) -> Dataset:
        """The manifest of the latest cut."""
        with self._db() as c:
            row = c.execute("SELECT manifest FROM datasets WHERE name=?", (name,)).fetchone()
        if row is None:
            raise NotFound(f"no dataset named {name!r}")
        return Dataset.model_validate(json.loads(row[0]))

    def tombstones(self, name: str) -> list[str]:
        with self._db() as c:
            q = "SELECT record_id FROM tombstones WHERE name=? ORDER BY at, record_id"
            return [r[0] for r in c.execute(q, (name,))]

    def audit(self, name: str | None = None, since: float | None = None) -> list[AuditEntry]:
        """Audit rows, oldest first; only ``name``'s and only at or after ``since``."""
        q = "SELECT id, at, name, actor, action, details FROM audit WHERE 1=1"
        args: list[Any] = []
        if name is not None:
            q += " AND name=?"
            args.append(name)
        if since is not None:
            q += " AND at>=?"
            args.append(since)
        with self._db() as c:
            rows = c.execute(q + " ORDER BY id", args).fetchall()
        return [AuditEntry(r[0], r[1], r[2], r[3], r[4], json.loads(r[5])) for r in rows]

    # -- deletion ----------------------------------------------------------------------

    def delete_record(
        self,
        name: str,
        record_id: str | None = None,
        *,
        match: str | None = None,
        actor: str,
        reason: str,
    ) -> DeletionResult:
        """Delete a record (by id, or every record whose text contains ``match``).

        The ids are tombstoned, so later cuts drop them, and every active version holding
        one is replaced by a copy without it (``match`` also removes quarantined lines
        containing the text). Returns which version replaced which.

        Raises:
            BadRequest: neither or both of ``record_id`` and ``match``, or no reason.
            NotFound: the dataset is unknown or no stored version holds such a record.
        """
        if (record_id is None) == (match is None) or (match is not None and not match.strip()):
            raise BadRequest("give a record id or a non-empty match, not both")
        if not reason.strip():
            raise BadRequest("a deletion needs a reason (it goes into the audit log)")
        with self._locked(name):
            versions = [v for v in self.versions(name) if v.status == "active"]
            versions.reverse()  # oldest first
            loaded = {v.version: self._load(v) for v in versions}
            hit = record_matcher(record_id, match)
            ids: set[str] = set()
            for files in loaded.values():
                for part in files[:3]:
                    ids.update(i["id"] for i in part if hit(i) and "id" in i)
            touched = [v for v in versions if any(hit(i) for p in loaded[v.version][:3] for i in p)]
            if record_id is not None:
                already = record_id in self.tombstones(name)
                if not touched and not already:
                    raise NotFound(f"record {record_id!r} is in no stored version of {name!r}")
                ids.add(record_id)
            elif not touched:
                raise NotFound(f"no stored record of {name!r} contains {match!r}")
            now = self.clock()
            with self._write() as c:
                for rid in sorted(ids):
                    c.execute(
                        "INSERT OR IGNORE INTO tombstones(name, record_id, actor, reason, at) "
                        "VALUES (?,?,?,?,?)",
                        (name, rid, actor, reason, now),
                    )
                self._log(
                    c, name, actor, "delete", record_ids=sorted(ids), match=match, reason=reason
                )
            result = DeletionResult(name, tuple(sorted(ids)), {}, reason)
            for v in touched:
                new = self._recut(v, loaded[v.version], hit, sorted(ids), actor, reason, now)
                result.superseded[v.version] = new
            return result

    def _load(self, v: DatasetVersion) -> Loaded:
        assert v.path is not None
        parts = [parse((v.path / f).read_bytes()) for f in FILES]
        report = json.loads((v.path / "report.json").read_text("utf-8"))
        return parts[0], parts[1], parts[2], report

    def _recut(
        self,
        old: DatasetVersion,
        loaded: Loaded,
        hit: Callable[[dict[str, Any]], bool],
        ids: list[str],
        actor: str,
        reason: str,
        now: float,
    ) -> str:
        assert old.path is not None
        deletion = {"record_ids": ids, "reason": reason, "actor": actor, "at": now}
        files = recut_files(old, loaded, hit, deletion)
        new = files.version(old.settings_hash)
        files.report["version"] = new
        with self._db() as c:
            row = c.execute(
                "SELECT status FROM versions WHERE name=? AND version=?", (old.name, new)
            ).fetchone()
        written = None
        if row is None or row[0] != "active":
            written = self._materialise(old.name, new, files)
        why = f"deleted record(s) {', '.join(ids)}: {reason}"
        try:
            with self._write() as c:
                if row is None:
                    self._insert_version(c, old.name, new, files, actor, now)
                elif row[0] != "active":
                    c.execute(
                        "UPDATE versions SET status='active', superseded_by=NULL, reason='', "
                        "ended_at=NULL WHERE name=? AND version=?",
                        (old.name, new),
                    )
                c.execute(
                    "UPDATE versions SET status='superseded', superseded_by=?, reason=?, "
                    "ended_at=? WHERE name=? AND version=?",
                    (new, why, now, old.name, old.version),
                )
                c.execute(
                    "UPDATE datasets SET latest=? WHERE name=? AND latest=?",
                    (new, old.name, old.version),
                )
                self._log(c, old.name, actor, "supersede", version=old.version, by=new, reason=why)
        except BaseException:
            if written is not None:
                shutil.rmtree(written, ignore_errors=True)
            raise
        shutil.rmtree(old.path, ignore_errors=True)
        return new

    # -- retention and removal ---------------------------------------------------------

    def apply_retention(self, name: str, actor: str = "retention") -> list[str]:
        """Remove versions the manifest's ``retention`` no longer keeps (never the latest).

        Returns the removed version ids.
        """
        with self._locked(name):
            return self._retain(name, actor)

    def _retain(self, name: str, actor: str) -> list[str]:
        rules: Retention = self.manifest(name).spec.retention
        versions = [v for v in self.versions(name) if v.status == "active"]
        now = self.clock()
        doomed = retention_doomed(rules, versions, now)
        if not doomed:
            return []
        with self._write() as c:
            for version, why in doomed.items():
                c.execute(
                    "UPDATE versions SET status='removed', reason=?, ended_at=? "
                    "WHERE name=? AND version=?",
                    (why, now, name, version),
                )
                self._log(c, name, actor, "retention", version=version, reason=why)
        for version in doomed:
            shutil.rmtree(self._dir(name, version), ignore_errors=True)
        return list(doomed)

    def remove(self, name: str, actor: str) -> None:
        """Forget a dataset: its versions, rows and files. Tombstones and audit rows stay."""
        with self._locked(name):
            self.versions(name)  # NotFound if unknown
            with self._write() as c:
                c.execute("DELETE FROM versions WHERE name=?", (name,))
                c.execute("DELETE FROM datasets WHERE name=?", (name,))
                self._log(c, name, actor, "remove")
            shutil.rmtree(self.root / name, ignore_errors=True)

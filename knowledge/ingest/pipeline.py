"""Files to chunks: resolve a manifest's sources, parse, chunk, hash — one document at a time.

Every failure belongs to one document (or one JSONL record) and is reported with its path
and a reason; the other documents are still ingested.

**Symlinks are never followed** below a folder or glob source: a symbolic link to a file or
to a folder is skipped wherever it points, even inside the source folder (its target, if
inside, is read under its own name anyway), and so is anything that is not a regular file
(a FIFO would block the read forever). :func:`find_sources` reports each skipped entry as
:class:`Skipped` (path and reason) and sync shows them to the user. Resolving a link to
check where it points and reading it later would race with someone re-pointing it, and a
folder whose content another user can change must not become a way to read any file the
server can. What the manifest names itself — a ``folder`` or a ``path`` — is the operator's
choice and is used as given, even when it is a link. A glob stays below the manifest's
folder: a match through ``..``, or an absolute pattern, is skipped and reported the same way.

Example:
    >>> import tempfile, pathlib
    >>> from qingliang.knowledge.ingest import IngestOptions, ingest_paths
    >>> folder = pathlib.Path(tempfile.mkdtemp())
    >>> _ = (folder / "a.md").write_text("# 总则\\n第一条 内容。\\n", encoding="utf-8")
    >>> _ = (folder / "b.bin").write_bytes(b"\\x00\\x01")
    >>> report = ingest_paths([folder / "a.md", folder / "b.bin"], IngestOptions())
    >>> [c.location.heading_path for c in report.chunks]
    [('总则',)]
    >>> report.errors[0].reason.startswith("unsupported file type .bin")
    True
"""

from __future__ import annotations

import fnmatch
import logging
import os
import stat
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, NamedTuple

from qingliang.knowledge.ingest.chunking import chunk_document
from qingliang.knowledge.ingest.document import Chunk, Document, content_hash, document_id
from qingliang.knowledge.ingest.errors import DocumentError, describe
from qingliang.knowledge.ingest.options import Chunking, Parsers, Source
from qingliang.knowledge.ingest.parsers import ParserRegistry, default_registry

log = logging.getLogger(__name__)


class IngestFailure(NamedTuple):
    """One document that could not be ingested (compares equal to ``(path, reason)``)."""

    path: str
    reason: str


@dataclass(frozen=True)
class IngestOptions:
    """Parser and chunking settings (the manifest's ``spec.parsers`` / ``spec.chunking``)."""

    parsers: Parsers = field(default_factory=Parsers)
    chunking: Chunking = field(default_factory=Chunking)
    registry: ParserRegistry = field(default_factory=default_registry)

    @classmethod
    def from_spec(cls, spec: Any) -> IngestOptions:
        """The options of a KnowledgeBase manifest's ``spec`` (its ``parsers`` and
        ``chunking``; image files are parsed for CLIP when ``embedding.image`` is set)."""
        registry = default_registry(image_embedding=spec.embedding.image is not None)
        return cls(parsers=spec.parsers, chunking=spec.chunking, registry=registry)


@dataclass
class IngestReport:
    documents: list[Document] = field(default_factory=list)
    chunks: list[Chunk] = field(default_factory=list)
    errors: list[IngestFailure] = field(default_factory=list)


class Skipped(NamedTuple):
    """An entry of a source folder that is not read, and why (a symlink, a FIFO ...)."""

    path: str
    reason: str


@dataclass
class SourceFiles:
    """What :func:`find_sources` found: the files to read and the entries skipped."""

    files: list[Path] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)


def resolve_sources(sources: Iterable[Source], base: Path) -> list[Path]:
    """The files the manifest's sources name, relative paths taken from ``base``.

    Sorted, without duplicates. A missing ``path`` is kept, so ingestion reports it; a
    missing folder or a glob matching nothing yields no file. Symlinks and other
    non-regular entries below a folder or glob are left out (:func:`find_sources` also
    says which).
    """
    return find_sources(sources, base).files


def find_sources(sources: Iterable[Source], base: Path) -> SourceFiles:
    """:func:`resolve_sources`, plus every entry skipped below a folder or glob, and why.

    Example:
        >>> import tempfile, pathlib
        >>> from qingliang.knowledge.ingest.options import Source
        >>> root = pathlib.Path(tempfile.mkdtemp())
        >>> _ = (root / "a.md").write_text("x", encoding="utf-8")
        >>> (root / "b.md").symlink_to("/etc/hostname")
        >>> found = find_sources([Source(folder=".")], root)
        >>> [p.name for p in found.files], [(pathlib.Path(s.path).name, s.reason[:14])
        ...                                 for s in found.skipped]
        (['a.md'], [('b.md', 'symbolic link ')])
    """
    found: dict[Path, None] = {}
    skipped: dict[str, str] = {}
    for src in sources:
        if src.path is not None:
            found[base / src.path] = None
            continue
        if src.folder is not None:
            root = base / src.folder
            entries = _walk(root) if root.is_dir() else iter(())
        else:
            root = base
            entries = _globbed(base, str(src.glob))
        for p, why, is_dir in entries:
            rel = p.relative_to(root).as_posix() if p.is_relative_to(root) else p.name
            # A skipped linked folder is reported whatever `include` says: files in it
            # might have matched.
            if src.include and not is_dir and not any(_match(rel, pat) for pat in src.include):
                continue
            if any(_match(rel, pat) for pat in src.exclude):
                continue
            if why is None:
                found[p] = None
            else:
                skipped.setdefault(str(p), why)
    for p in found:
        skipped.pop(str(p), None)  # a file another source names explicitly
    return SourceFiles(
        files=sorted(found), skipped=[Skipped(k, v) for k, v in sorted(skipped.items())]
    )


_OUTSIDE = "symbolic link to outside the source folder: not followed"
_INSIDE = "symbolic link: not followed (links are never read, even to inside the folder)"
_BROKEN = "symbolic link to nothing: not followed"


def _link_reason(link: Path, real_root: Path) -> str:
    try:
        target = link.resolve(strict=True)
    except (OSError, RuntimeError):  # dangling, a loop, or unreadable
        return _BROKEN
    return _INSIDE if target.is_relative_to(real_root) else _OUTSIDE


def _kind_reason(mode: int) -> str | None:
    if stat.S_ISREG(mode):
        return None
    if stat.S_ISDIR(mode):
        return ""  # walked (folders) or not a document (globs): not reported
    return "not a regular file (a FIFO, socket or device): not read"


#: A walked entry: its path, ``None`` (read it) or why not, and whether it is a folder.
Entry = tuple[Path, str | None, bool]


def _walk(root: Path) -> Iterator[Entry]:
    """Every file below ``root`` with ``None`` (read it) or why it is skipped, and whether
    it is a folder (a linked one); never descends into a symlinked folder."""
    real_root = root.resolve()
    for folder, dirs, files in os.walk(root, followlinks=False):
        here = Path(folder)
        for name in sorted(dirs):
            if (here / name).is_symlink():
                dirs.remove(name)
                yield here / name, _link_reason(here / name, real_root), True
        for name in sorted(files):
            p = here / name
            try:
                mode = p.lstat().st_mode
            except OSError:
                continue  # gone since the folder was listed
            if stat.S_ISLNK(mode):
                yield p, _link_reason(p, real_root), False
                continue
            why = _kind_reason(mode)
            if why != "":
                yield p, why, False


def _globbed(root: Path, pattern: str) -> Iterator[Entry]:
    """Glob matches below ``root`` with ``None`` or why each is skipped: a match reached
    through a symlink (a linked file, or a file in a linked folder) or with ``..`` is not
    read."""
    real_root = root.resolve()
    try:
        matches = sorted(root.glob(pattern))
    except (NotImplementedError, ValueError):  # an absolute pattern
        yield root / pattern, "a glob is relative to the manifest's folder: not read", False
        return
    for p in matches:
        rel = p.relative_to(root)
        if ".." in rel.parts:
            yield p, "outside the source folder (`..` in the glob): not read", False
            continue
        steps = [root.joinpath(*rel.parts[: i + 1]) for i in range(len(rel.parts))]
        link = next((step for step in steps if step.is_symlink()), None)
        if link is not None:
            yield p, _link_reason(link, real_root), False
            continue
        try:
            mode = p.lstat().st_mode
        except OSError:
            continue
        why = _kind_reason(mode)
        if why != "":
            yield p, why, False


def _match(rel: str, pattern: str) -> bool:
    """fnmatch on the path below the source root, or on the file name alone."""
    return fnmatch.fnmatch(rel, pattern) or fnmatch.fnmatch(rel.rsplit("/", 1)[-1], pattern)


def ingest_paths(paths: Iterable[str | Path], options: IngestOptions) -> IngestReport:
    """Parse and chunk every file in ``paths``; failures are collected, never raised."""
    report = IngestReport()
    limit = int(options.parsers.max_file_mb * 1024 * 1024)
    for raw in paths:
        source = str(raw)
        try:
            docs = _ingest_one(Path(raw), source, limit, options)
        except DocumentError as exc:
            report.errors.append(IngestFailure(source, exc.reason))
            continue
        except Exception as exc:  # a parser bug or a corrupt file must not stop the rest
            log.debug("ingest of %s failed", source, exc_info=True)
            report.errors.append(IngestFailure(source, f"corrupt or unreadable: {describe(exc)}"))
            continue
        for doc, chunks, error in docs:
            if error is not None:
                report.errors.append(error)
            else:
                report.documents.append(doc)
                report.chunks.extend(chunks)
    log.debug(
        "ingested %d documents, %d chunks, %d errors",
        len(report.documents),
        len(report.chunks),
        len(report.errors),
    )
    return report


def _ingest_one(
    path: Path, source: str, limit: int, options: IngestOptions
) -> list[tuple[Document, list[Chunk], IngestFailure | None]]:
    parser = options.registry.parser_for(path)
    try:
        size = path.stat().st_size
        if size > limit:
            raise DocumentError(
                f"over the size limit: {size / 2**20:.1f} MiB > "
                f"{options.parsers.max_file_mb:g} MiB (parsers.max_file_mb)"
            )
        if path.is_dir():
            raise DocumentError("is a folder, not a file")
        data = path.read_bytes()
    except FileNotFoundError:
        raise DocumentError("no such file") from None
    except OSError as exc:
        raise DocumentError(f"cannot read: {exc.strerror or describe(exc)}") from None
    out: list[tuple[Document, list[Chunk], IngestFailure | None]] = []
    for parsed in parser.parse(data, source, options.parsers, options.chunking):
        doc = Document(
            doc_id=document_id(source, parsed.record),
            source=source,
            type=parser.name,
            sha256=parsed.sha256 or content_hash(parsed.text),
            n_chunks=0,
            n_chars=len(parsed.text),
            record=parsed.record,
            title=parsed.title,
        )
        if parsed.error is not None:
            failure = IngestFailure(f"{source}#{parsed.record}", parsed.error)
            out.append((doc, [], failure))
            continue
        chunks = chunk_document(parsed, source, options.chunking)
        if not chunks:
            out.append((doc, [], IngestFailure(source, "empty: no text after parsing")))
            continue
        doc = replace(doc, n_chunks=len(chunks))
        out.append((doc, chunks, None))
    return out

"""Files to chunks: resolve a manifest's sources, parse, chunk, hash — one document at a time.

Every failure belongs to one document (or one JSONL record) and is reported with its path
and a reason; the other documents are still ingested.

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
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import NamedTuple

from qingliang.knowledge.ingest.chunking import chunk_document
from qingliang.knowledge.ingest.document import Chunk, Document, content_hash, document_id
from qingliang.knowledge.ingest.errors import DocumentError
from qingliang.knowledge.ingest.parsers import ParserRegistry, default_registry
from qingliang.knowledge.manifest import Chunking, KnowledgeBaseSpec, Parsers, Source

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
    def from_spec(cls, spec: KnowledgeBaseSpec) -> IngestOptions:
        registry = default_registry(image_embedding=spec.embedding.image is not None)
        return cls(parsers=spec.parsers, chunking=spec.chunking, registry=registry)


@dataclass
class IngestReport:
    documents: list[Document] = field(default_factory=list)
    chunks: list[Chunk] = field(default_factory=list)
    errors: list[IngestFailure] = field(default_factory=list)


def resolve_sources(sources: Iterable[Source], base: Path) -> list[Path]:
    """The files the manifest's sources name, relative paths taken from ``base``.

    Sorted, without duplicates. A missing ``path`` is kept, so ingestion reports it; a
    missing folder or a glob matching nothing yields no file.
    """
    found: dict[Path, None] = {}
    for src in sources:
        if src.path is not None:
            found[base / src.path] = None
            continue
        if src.folder is not None:
            root = base / src.folder
            candidates = root.rglob("*") if root.is_dir() else iter(())
        else:
            root = base
            candidates = base.glob(str(src.glob))
        for p in sorted(candidates):
            if not p.is_file():
                continue
            rel = p.relative_to(root).as_posix()
            if src.include and not any(_match(rel, pat) for pat in src.include):
                continue
            if any(_match(rel, pat) for pat in src.exclude):
                continue
            found[p] = None
    return sorted(found)


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
            report.errors.append(
                IngestFailure(source, f"corrupt or unreadable: {type(exc).__name__}: {exc}")
            )
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
        raise DocumentError(f"cannot read: {exc.strerror or exc}") from None
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

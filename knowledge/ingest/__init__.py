"""Heterogeneous ingestion: files → documents → structure-aware chunks with content hashes.

The public surface::

    resolve_sources(spec.sources, base) -> [Path]          which files a manifest names
    find_sources(spec.sources, base) -> SourceFiles        ... and which entries are skipped
    ingest_paths(paths, IngestOptions) -> IngestReport     chunks, documents, per-file errors
    Document / Chunk / Location                            what is stored and cited
    ParserRegistry / default_registry()                    parsers by file type

Example:
    >>> from qingliang.knowledge.ingest import Chunk, Location
    >>> c = Chunk(text="第一条", doc_id="d", index=0, kind="text", location=Location("a.md"))
    >>> c.id, len(c.sha256)
    ('d:0', 64)
"""

from qingliang.knowledge.ingest.chunking import Block, Parsed, split_text
from qingliang.knowledge.ingest.document import (
    Chunk,
    ChunkKind,
    Document,
    Location,
    content_hash,
    document_id,
    normalise,
)
from qingliang.knowledge.ingest.errors import DocumentError
from qingliang.knowledge.ingest.parsers import Parser, ParserRegistry, default_registry
from qingliang.knowledge.ingest.pipeline import (
    IngestFailure,
    IngestOptions,
    IngestReport,
    Skipped,
    SourceFiles,
    find_sources,
    ingest_paths,
    resolve_sources,
)

__all__ = [
    "Block",
    "Chunk",
    "ChunkKind",
    "Document",
    "DocumentError",
    "IngestFailure",
    "IngestOptions",
    "IngestReport",
    "Location",
    "Parsed",
    "Parser",
    "ParserRegistry",
    "Skipped",
    "SourceFiles",
    "content_hash",
    "default_registry",
    "document_id",
    "find_sources",
    "ingest_paths",
    "normalise",
    "resolve_sources",
    "split_text",
]

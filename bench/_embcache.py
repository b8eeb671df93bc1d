"""An on-disk cache of embeddings for benchmarks (private helper).

:class:`CachedEmbedder` wraps an embedder; each ``(model, input_type, text)`` it has
embedded once is kept in a SQLite file outside the repository (default
``~/.cache/qingliang/bench-embeddings.sqlite``, or ``$QINGLIANG_BENCH_CACHE``), so a second
run, or a second variant over the same chunks, embeds only what is new. The vectors are the
model's own (float32 round trip); timings of the embedding itself are not meaningful on a
cached run, and the benchmarks that use it time searches with the query vectors reused.
"""

from __future__ import annotations

import hashlib
import os
import sqlite3
import threading
from pathlib import Path
from typing import Any

import numpy as np


def cache_path() -> Path:
    env = os.environ.get("QINGLIANG_BENCH_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "qingliang" / "bench-embeddings.sqlite"


class CachedEmbedder:
    """Delegates to ``inner``; texts seen before (same model and input type) come from disk."""

    def __init__(self, inner: Any, model: str, path: Path | None = None) -> None:
        self.inner = inner
        self.model = model
        self.path = path or cache_path()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(self.path, timeout=60, check_same_thread=False)
        self._db.execute("CREATE TABLE IF NOT EXISTS v (k TEXT PRIMARY KEY, vec BLOB)")
        self._db.commit()
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def _key(self, text: str, input_type: str) -> str:
        raw = f"{self.model}\x00{input_type}\x00{text}".encode()
        return hashlib.sha1(raw).hexdigest()

    def embed(self, texts: list[str], *, input_type: str = "passage") -> list[list[float]]:
        keys = [self._key(t, input_type) for t in texts]
        found: dict[str, list[float]] = {}
        with self._lock:
            for i in range(0, len(keys), 500):
                part = keys[i : i + 500]
                marks = ",".join("?" * len(part))
                for k, blob in self._db.execute(f"SELECT k, vec FROM v WHERE k IN ({marks})", part):
                    found[k] = np.frombuffer(blob, dtype=np.float32).tolist()
        todo = [i for i, k in enumerate(keys) if k not in found]
        self.hits += len(texts) - len(todo)
        self.misses += len(todo)
        if todo:
            vectors = self.inner.embed([texts[i] for i in todo], input_type=input_type)
            rows = []
            for i, vec in zip(todo, vectors, strict=True):
                found[keys[i]] = [float(x) for x in vec]
                rows.append((keys[i], np.asarray(vec, dtype=np.float32).tobytes()))
            with self._lock:
                self._db.executemany("INSERT OR REPLACE INTO v VALUES (?, ?)", rows)
                self._db.commit()
        return [found[k] for k in keys]

    def matrix(self, texts: list[str], *, input_type: str, batch: int = 32) -> np.ndarray:
        """Unit-length float32 vectors of ``texts`` (rows), embedded in batches."""
        out = []
        for i in range(0, len(texts), batch):
            out.extend(self.embed(texts[i : i + batch], input_type=input_type))
        m = np.asarray(out, dtype=np.float32)
        return m / np.maximum(np.linalg.norm(m, axis=1, keepdims=True), 1e-12)

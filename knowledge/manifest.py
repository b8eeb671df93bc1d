"""The ``KnowledgeBase`` manifest kind: what to ingest, how to chunk, embed and store it.

Validation here is pure: no file, folder, environment variable or store is touched.
Which files the sources match, whether the API-key variable is set and whether the store
is reachable are decided later, when the knowledge base is resolved and ingested
(:func:`qingliang.knowledge.ingest.resolve_sources`).

Example:
    >>> from qingliang.knowledge.manifest import KnowledgeBase
    >>> kb = KnowledgeBase.model_validate({
    ...     "apiVersion": "qingliang.io/v1", "kind": "KnowledgeBase",
    ...     "metadata": {"name": "gov-policy"},
    ...     "spec": {"sources": [{"folder": "data/policies", "include": ["*.md"]}]}})
    >>> kb.spec.embedding.model, kb.spec.store.kind, kb.spec.chunking.max_chars
    ('multilingual-e5-small', 'embedded', 800)
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import PurePosixPath, PureWindowsPath
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import Field, field_validator, model_validator

from qingliang.knowledge.ingest.options import Chunking, Parsers, Source
from qingliang.platform.manifests.base import BaseMetadata, Envelope, MetadataLabels, Strict

API_VERSION = "qingliang.io/v1"

#: Environment variable names: what ``store.api_key_env`` holds (never the key itself).
ENV_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,127}\Z")
#: A Qdrant server for the knowledge bases whose manifest names no store, and the variable
#: that holds its API key (see :func:`with_default_store`).
QDRANT_URL_ENV = "QINGLIANG_QDRANT_URL"
QDRANT_API_KEY_ENV = "QINGLIANG_QDRANT_API_KEY"
#: Label values for domain and tenant: they become payload filters on every chunk.
LABEL_RE = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9._-]{0,61}[A-Za-z0-9])?\Z")


class Metadata(BaseMetadata):
    name: str = Field(
        description="Knowledge-base name: the `{kb}` in `/v1/knowledge/{kb}/search` and the "
        "default store collection."
    )
    labels: MetadataLabels = Field(
        default_factory=dict, description="Free labels (team, owner); not stored per chunk."
    )
    description: str = Field(default="", description="Shown in `qingliang get` and `kb stats`.")


class ImageEmbedding(Strict):
    model_dir: str = Field(
        description="Local folder holding a CLIP model saved by transformers (`config.json`, "
        "weights, tokenizer files, `preprocessor_config.json`); nothing is downloaded."
    )

    @field_validator("model_dir")
    @classmethod
    def _not_blank(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("must not be empty")
        return v


class Embedding(Strict):
    model: Literal["multilingual-e5-small", "all-minilm-l6-v2"] = Field(
        default="multilingual-e5-small",
        description="Dense model: `multilingual-e5-small` (packaged, Chinese and English) or "
        "`all-minilm-l6-v2` (English only, faster).",
    )
    batch_size: int = Field(default=32, ge=1, le=4096, description="Chunks embedded per call.")
    image: ImageEmbedding | None = Field(
        default=None,
        description="Image-embedding model (CLIP) for `image` chunks and text-to-image search; "
        "unset: images are read by OCR only.",
    )


class Sparse(Strict):
    bm25: bool = Field(
        default=True, description="Also index BM25 sparse vectors for hybrid retrieval."
    )


class HitContext(Strict):
    neighbours: int = Field(
        default=0,
        ge=0,
        le=3,
        description="Chunks before and after each hit, from the same document version, that "
        "join it in the hit's `context` (the text an agent's prompt is given; the citation "
        "still names the chunk that matched). 0: no `context`.",
    )


class Retrieval(Strict):
    rerank: Literal["none", "lexical"] = Field(
        default="none",
        description="`lexical`: the `candidates` best hits are re-ordered by reciprocal-rank "
        "fusion of their search rank and their rank by the share of the query's terms (words, "
        "and character bigrams of Chinese) their text contains.",
    )
    candidates: int = Field(
        default=30, ge=1, le=100, description="How many hits a lexical re-rank re-orders."
    )
    context: HitContext = Field(
        default_factory=HitContext,
        description="Neighbouring chunks given with each hit as its `context` "
        "(sentence-window retrieval).",
    )


class Store(Strict):
    kind: Literal["embedded", "server"] = Field(
        default="embedded",
        description="`embedded`: Qdrant in-process under the data directory; `server`: a "
        "Qdrant server at `url`.",
    )
    path: str | None = Field(
        default=None,
        description="Embedded only: folder relative to the data directory (default "
        "`knowledge/<name>`).",
    )
    url: str | None = Field(default=None, description="Server only: `http(s)://host:port`.")
    api_key_env: str | None = Field(
        default=None,
        description="Server only: NAME of the environment variable holding the API key "
        "(the key itself never goes in a manifest).",
    )
    collection: str | None = Field(
        default=None, description="Collection name; defaults to the knowledge-base name."
    )

    @model_validator(mode="before")
    @classmethod
    def _no_secrets(cls, data: Any) -> Any:
        if isinstance(data, dict):
            for key in ("api_key", "apikey", "key", "token", "password"):
                if key in data:
                    raise ValueError(
                        f"`{key}` is not accepted: never put a secret in a manifest; set "
                        "`api_key_env` to the name of an environment variable that holds it"
                    )
        return data

    @field_validator("path")
    @classmethod
    def _relative(cls, v: str | None) -> str | None:
        if v is None:
            return v
        if not v.strip():
            raise ValueError("must not be empty")
        if PurePosixPath(v).is_absolute() or PureWindowsPath(v).is_absolute():
            raise ValueError(f"{v!r} must be relative to the data directory")
        if ".." in PurePosixPath(v.replace("\\", "/")).parts:
            raise ValueError(f"{v!r} must stay inside the data directory (no '..')")
        return v

    @field_validator("url")
    @classmethod
    def _url(cls, v: str | None) -> str | None:
        if v is None:
            return v
        parts = urlsplit(v)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"{v!r} is not a server URL: use http(s)://host:port")
        if parts.username or parts.password:
            raise ValueError("the URL must not carry credentials; use `api_key_env`")
        return v

    @field_validator("api_key_env")
    @classmethod
    def _env_name(cls, v: str | None) -> str | None:
        # Never echo the value: a user who misread the field may have pasted the key.
        if v is not None and not ENV_NAME_RE.match(v):
            raise ValueError(
                "must be the NAME of an environment variable (letters, digits and '_'), "
                "not the key itself"
            )
        return v

    @field_validator("collection")
    @classmethod
    def _collection(cls, v: str | None) -> str | None:
        if v is not None and not LABEL_RE.match(v):
            raise ValueError(f"{v!r} is not a valid collection name (letters, digits, . _ -)")
        return v

    @model_validator(mode="after")
    def _by_kind(self) -> Store:
        if self.kind == "server":
            if self.url is None:
                raise ValueError("kind server needs `url`")
            if self.path is not None:
                raise ValueError("`path` applies only to kind embedded")
        else:
            extra = [k for k in ("url", "api_key_env") if getattr(self, k) is not None]
            if extra:
                raise ValueError(f"{' and '.join(extra)} apply only to kind server")
        return self


class Labels(Strict):
    domain: str | None = Field(
        default=None, description="Domain written on every chunk (filterable), e.g. `gov`."
    )
    tenant: str = Field(
        default="default",
        description="Tenant written on every chunk; every search is scoped to one tenant.",
    )

    @field_validator("domain", "tenant")
    @classmethod
    def _label(cls, v: str | None) -> str | None:
        if v is not None and not LABEL_RE.match(v):
            raise ValueError(
                f"{v!r} is not a valid label: 1-63 letters, digits, '.', '_' or '-', starting "
                "and ending with a letter or digit"
            )
        return v


class KnowledgeBaseSpec(Strict):
    sources: list[Source] = Field(min_length=1, description="What to ingest.")
    parsers: Parsers = Field(default_factory=Parsers, description="Options per file type.")
    chunking: Chunking = Field(default_factory=Chunking, description="How text is cut.")
    embedding: Embedding = Field(default_factory=Embedding, description="Dense embedding.")
    sparse: Sparse = Field(default_factory=Sparse, description="Sparse (BM25) vectors.")
    retrieval: Retrieval = Field(default_factory=Retrieval, description="How hits are ranked.")
    store: Store = Field(default_factory=Store, description="Where vectors are kept.")
    labels: Labels = Field(default_factory=Labels, description="Domain and tenant of the KB.")

    @field_validator("sources")
    @classmethod
    def _distinct(cls, v: list[Source]) -> list[Source]:
        seen: set[tuple[str, str]] = set()
        for i, s in enumerate(v):
            key = (s.kind, s.location)
            if key in seen:
                raise ValueError(f"source {i} repeats {s.kind} {s.location!r}")
            seen.add(key)
        return v


class KnowledgeBase(Envelope):
    kind: Literal["KnowledgeBase"] = Field(description="Always `KnowledgeBase`.")
    metadata: Metadata = Field(description="Name, labels and description.")
    spec: KnowledgeBaseSpec = Field(description="Sources, parsing, chunking, embedding, store.")

    @property
    def collection(self) -> str:
        return self.spec.store.collection or self.metadata.name


def with_default_store(kb: KnowledgeBase, env: Mapping[str, str]) -> KnowledgeBase:
    """``kb`` with its store on the Qdrant server ``env[QINGLIANG_QDRANT_URL]`` when its
    manifest names no store (no ``spec.store.kind`` or ``path``); ``kb`` itself otherwise.

    The server's API key is read from ``QINGLIANG_QDRANT_API_KEY`` where that is set (its
    name, never its value, goes into the store section). A manifest's own store wins,
    and so does ``collection``, which is kept. Applied when a KB is registered, so a KB
    stays where its points are even if the variable changes later.

    Example:
        >>> kb = KnowledgeBase.model_validate({
        ...     "apiVersion": "qingliang.io/v1", "kind": "KnowledgeBase",
        ...     "metadata": {"name": "faq"}, "spec": {"sources": [{"folder": "docs"}]}})
        >>> s = with_default_store(kb, {"QINGLIANG_QDRANT_URL": "http://qdrant:6333"}).spec.store
        >>> s.kind, s.url, s.api_key_env
        ('server', 'http://qdrant:6333', None)
        >>> with_default_store(kb, {}).spec.store.kind
        'embedded'
    """
    url = env.get(QDRANT_URL_ENV, "").strip()
    st = kb.spec.store
    if not url or "kind" in st.model_fields_set or st.path is not None:
        return kb
    try:
        server = Store(
            kind="server",
            url=url,
            api_key_env=QDRANT_API_KEY_ENV if env.get(QDRANT_API_KEY_ENV) else None,
            collection=st.collection,
        )
    except ValueError as exc:  # pydantic's ValidationError is a ValueError
        reason = "; ".join(e["msg"] for e in getattr(exc, "errors", lambda: [])()) or str(exc)
        raise ValueError(f"environment variable {QDRANT_URL_ENV}: {reason}") from None
    spec = kb.spec.model_copy(update={"store": server})
    return kb.model_copy(update={"spec": spec})

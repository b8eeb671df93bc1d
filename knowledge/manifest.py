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

import codecs
import re
from pathlib import PurePosixPath, PureWindowsPath
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import Field, field_validator, model_validator

from qingliang.platform.manifests.base import BaseMetadata, MetadataLabels, Strict

API_VERSION = "qingliang.io/v1"

#: Environment variable names: what ``store.api_key_env`` holds (never the key itself).
ENV_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,127}\Z")
#: Label values for domain and tenant: they become payload filters on every chunk.
LABEL_RE = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9._-]{0,61}[A-Za-z0-9])?\Z")
#: HTML strip selectors we can apply without a CSS engine: ``tag``, ``.class``, ``#id``,
#: ``tag.class`` and ``tag#id``.
SELECTOR_RE = re.compile(r"^([a-z][a-z0-9]*)?([.#][A-Za-z_][\w-]*)?\Z")


def _check_encoding(v: str) -> str:
    """``auto`` or a codec Python knows (``utf-8``, ``gb18030``, ``latin-1`` ...)."""
    if v == "auto":
        return v
    try:
        codecs.lookup(v)
    except LookupError:
        raise ValueError(
            f"unknown encoding {v!r}: use `auto` or a codec such as utf-8 or gb18030"
        ) from None
    return v


Pattern = Annotated[str, Field(min_length=1, max_length=1024)]


class Metadata(BaseMetadata):
    name: str = Field(
        description="Knowledge-base name: the `{kb}` in `/v1/knowledge/{kb}/search` and the "
        "default store collection."
    )
    labels: MetadataLabels = Field(
        default_factory=dict, description="Free labels (team, owner); not stored per chunk."
    )
    description: str = Field(default="", description="Shown in `qingliang get` and `kb stats`.")


class Source(Strict):
    path: str | None = Field(default=None, description="One file.")
    folder: str | None = Field(default=None, description="A folder, walked recursively.")
    glob: str | None = Field(
        default=None, description="A glob such as `docs/**/*.md` (`**` crosses folders)."
    )
    include: list[Pattern] = Field(
        default_factory=list,
        description="Folder / glob only: keep files whose path below the folder matches one of "
        "these fnmatch patterns (`*.md`, `policies/*`). Empty keeps every file.",
    )
    exclude: list[Pattern] = Field(
        default_factory=list,
        description="Folder / glob only: drop files matching any of these patterns "
        "(applied after `include`).",
    )

    @field_validator("path", "folder", "glob")
    @classmethod
    def _not_blank(cls, v: str | None) -> str | None:
        if v is not None and not v.strip():
            raise ValueError("must not be empty")
        return v

    @field_validator("include", "exclude")
    @classmethod
    def _patterns(cls, v: list[str]) -> list[str]:
        if any(not p.strip() for p in v):
            raise ValueError("a pattern must not be blank")
        return v

    @model_validator(mode="after")
    def _exactly_one(self) -> Source:
        given = [k for k in ("path", "folder", "glob") if getattr(self, k) is not None]
        if len(given) != 1:
            what = "none" if not given else " and ".join(given)
            raise ValueError(f"a source names exactly one of path, folder or glob (got {what})")
        if self.path is not None and (self.include or self.exclude):
            raise ValueError("include / exclude apply to folder and glob sources, not to a path")
        return self

    @property
    def kind(self) -> Literal["path", "folder", "glob"]:
        if self.path is not None:
            return "path"
        return "folder" if self.folder is not None else "glob"

    @property
    def location(self) -> str:
        return str(self.path or self.folder or self.glob)


class TextOptions(Strict):
    encoding: str = Field(
        default="auto",
        description="`auto` (BOM, then UTF-8, then detection) or a fixed codec for "
        "plain-text, Markdown and JSON files.",
    )

    @field_validator("encoding")
    @classmethod
    def _encoding(cls, v: str) -> str:
        return _check_encoding(v)


class MarkdownOptions(Strict):
    max_heading_level: int = Field(
        default=6, ge=1, le=6, description="Headings up to this level (`#` = 1) start sections."
    )


class CsvOptions(Strict):
    delimiter: str = Field(
        default=",", min_length=1, max_length=1, description="Cell separator (`.tsv` uses tab)."
    )
    encoding: str = Field(default="auto", description="`auto` or a fixed codec.")
    header_row: int = Field(
        default=0,
        ge=0,
        le=1000,
        description="0-based record holding the column names; records above it are skipped.",
    )
    sample_rows: int = Field(
        default=3, ge=0, le=50, description="Rows quoted in the table-summary chunk."
    )

    @field_validator("encoding")
    @classmethod
    def _encoding(cls, v: str) -> str:
        return _check_encoding(v)

    @field_validator("delimiter")
    @classmethod
    def _delimiter(cls, v: str) -> str:
        if v in ('"', "\n", "\r"):
            raise ValueError(f"{v!r} cannot be a delimiter")
        return v


class JsonOptions(Strict):
    mode: Literal["records", "flatten"] = Field(
        default="records",
        description="`records`: each JSONL line / top-level array item is its own document; "
        "`flatten`: the whole file is one document of `key.path: value` lines.",
    )
    text_fields: list[Pattern] = Field(
        default_factory=list,
        description="Record keys whose values form the text; empty flattens the whole record.",
    )
    id_field: str | None = Field(
        default=None, description="Record key whose value identifies the record (e.g. `docid`)."
    )

    @model_validator(mode="after")
    def _mode(self) -> JsonOptions:
        if self.mode == "flatten" and (self.text_fields or self.id_field):
            raise ValueError("text_fields and id_field apply only to mode `records`")
        return self


class PdfOptions(Strict):
    first_page: int = Field(default=1, ge=1, description="First page read (1-based).")
    last_page: int | None = Field(
        default=None, ge=1, description="Last page read (inclusive); empty reads to the end."
    )

    @model_validator(mode="after")
    def _range(self) -> PdfOptions:
        if self.last_page is not None and self.last_page < self.first_page:
            raise ValueError(
                f"last_page ({self.last_page}) is before first_page ({self.first_page})"
            )
        return self


class HtmlOptions(Strict):
    strip_selectors: list[str] = Field(
        default_factory=lambda: ["nav", "footer"],
        description="Elements removed with their content, besides `script`, `style` and "
        "`noscript` (always removed): `tag`, `.class`, `#id`, `tag.class` or `tag#id`.",
    )

    @field_validator("strip_selectors")
    @classmethod
    def _selectors(cls, v: list[str]) -> list[str]:
        for s in v:
            if not s or not SELECTOR_RE.match(s):
                raise ValueError(
                    f"unsupported selector {s!r}: use `tag`, `.class`, `#id`, `tag.class` "
                    "or `tag#id`"
                )
        return v


class ImageOptions(Strict):
    ocr: bool = Field(default=True, description="Read text in images with OCR.")
    language: Literal["ch", "en"] = Field(
        default="ch", description="OCR model: `ch` (Chinese and English) or `en`."
    )


class XlsxOptions(Strict):
    sheets: list[Pattern] = Field(
        default_factory=list, description="Sheet names to read; empty reads every sheet."
    )
    header_row: int = Field(
        default=0, ge=0, le=1000, description="0-based row holding the column names."
    )


class Parsers(Strict):
    max_file_mb: float = Field(
        default=50.0, gt=0, le=4096, description="Files larger than this are reported and skipped."
    )
    text: TextOptions = Field(default_factory=TextOptions, description="Plain-text options.")
    markdown: MarkdownOptions = Field(default_factory=MarkdownOptions, description="Markdown.")
    csv: CsvOptions = Field(default_factory=CsvOptions, description="CSV / TSV tables.")
    json_: JsonOptions = Field(
        default_factory=JsonOptions, alias="json", description="JSON and JSONL files."
    )
    html: HtmlOptions = Field(default_factory=HtmlOptions, description="HTML pages.")
    pdf: PdfOptions = Field(default_factory=PdfOptions, description="PDF documents.")
    xlsx: XlsxOptions = Field(default_factory=XlsxOptions, description="Excel workbooks.")
    image: ImageOptions = Field(default_factory=ImageOptions, description="Images (OCR).")


class Chunking(Strict):
    strategy: Literal["structure", "fixed"] = Field(
        default="structure",
        description="`structure`: chunks never cross a heading, page or table row group; "
        "`fixed`: fixed-size windows over the whole text (tables stay row-aware).",
    )
    max_chars: int = Field(
        default=800, ge=50, le=20_000, description="Largest chunk in characters."
    )
    overlap_chars: int = Field(
        default=100,
        ge=0,
        description="Characters repeated from the end of one text chunk at "
        "the start of the next; at most half of max_chars.",
    )
    keep_table_headers: bool = Field(
        default=True, description="Repeat a table's header row in every row chunk."
    )

    @model_validator(mode="after")
    def _overlap(self) -> Chunking:
        # Each chunk must advance by more than half a window, or a long text could yield
        # one chunk per character.
        if self.overlap_chars * 2 > self.max_chars:
            raise ValueError(
                f"overlap_chars ({self.overlap_chars}) must be at most half of max_chars "
                f"({self.max_chars})"
            )
        return self


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


class KnowledgeBase(Strict):
    api_version: Literal["qingliang.io/v1"] = Field(
        alias="apiVersion", description="Always `qingliang.io/v1`."
    )
    kind: Literal["KnowledgeBase"] = Field(description="Always `KnowledgeBase`.")
    metadata: Metadata = Field(description="Name, labels and description.")
    spec: KnowledgeBaseSpec = Field(description="Sources, parsing, chunking, embedding, store.")

    @property
    def name(self) -> str:
        return self.metadata.name

    @property
    def collection(self) -> str:
        return self.spec.store.collection or self.metadata.name

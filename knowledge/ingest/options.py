"""Ingestion settings: which files a source names and how each kind is parsed and chunked.

These are the ``spec.sources``, ``spec.parsers`` and ``spec.chunking`` sections of the
``KnowledgeBase`` manifest (:mod:`qingliang.knowledge.manifest`), kept here so ingestion
needs nothing of the knowledge package above it. Validation is pure: no file is touched.

Example:
    >>> from qingliang.knowledge.ingest.options import Chunking, Source
    >>> Source(folder="data", include=["*.md"]).kind, Chunking().max_chars
    ('folder', 800)
"""

from __future__ import annotations

import codecs
import logging
import re
from typing import Annotated, Literal

from pydantic import Field, field_validator, model_validator

from qingliang.platform.manifests.base import Strict

logger = logging.getLogger(__name__)

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

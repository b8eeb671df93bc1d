"""The ``KnowledgeBase`` manifest through the shared loader: every rule, every message.

Invalid cases assert the line the user reads, ``<file>: <field path>: <message>``.
"""

from __future__ import annotations

import copy
import doctest
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import BaseModel, ValidationError

import qingliang.platform.lifecycle.pipelines.kinds  # noqa: F401
from qingliang.knowledge import manifest as kb_mod
from qingliang.knowledge.manifest import KnowledgeBase
from qingliang.platform.errors import ManifestError
from qingliang.platform.manifests import loader as loader_mod
from qingliang.platform.manifests.loader import KINDS, Loaded, load_paths, parse_documents

REPO = Path(__file__).resolve().parents[3]
SOURCE = "kb.yaml"


def manifest(name: str = "policies", **spec: Any) -> dict:
    """A minimal valid KnowledgeBase, with ``spec`` sections replaced."""
    return {
        "apiVersion": "qingliang.io/v1",
        "kind": "KnowledgeBase",
        "metadata": {"name": name},
        "spec": {"sources": [{"folder": "data/policies"}], **spec},
    }


def with_value(doc: dict, dotted: str, value: Any) -> dict:
    out = copy.deepcopy(doc)
    node = out
    *parents, last = dotted.split(".")
    for part in parents:
        node = node[int(part)] if isinstance(node, list) else node.setdefault(part, {})
    node[last] = value
    return out


def load(doc: object, source: str = SOURCE) -> list[Loaded]:
    return parse_documents(yaml.safe_dump(doc, sort_keys=False, allow_unicode=True), source)


def errors_of(doc: object, source: str = SOURCE) -> str:
    with pytest.raises(ManifestError) as info:
        load(doc, source)
    return str(info.value)


def assert_issue(message: str, path: str, fragment: str) -> None:
    head = f"{SOURCE}: {path}: " if path else f"{SOURCE}: "
    lines = [ln for ln in message.splitlines() if ln.startswith(head)]
    assert lines, f"no line starts with {head!r} in:\n{message}"
    assert any(fragment in ln for ln in lines), f"{fragment!r} not in:\n{message}"


# --------------------------------------------------------------------------- valid input


def test_kind_is_registered() -> None:
    assert KINDS["KnowledgeBase"] is KnowledgeBase
    assert KINDS["ModelDeployment"].__name__ == "ModelDeployment"


def test_minimal_manifest_gets_documented_defaults() -> None:
    (item,) = load(manifest())
    kb = item.manifest
    assert isinstance(kb, KnowledgeBase)
    assert (item.kind, item.name, kb.name, kb.collection) == (
        "KnowledgeBase",
        "policies",
        "policies",
        "policies",
    )
    (src,) = kb.spec.sources
    assert (src.kind, src.location, src.include, src.exclude) == ("folder", "data/policies", [], [])
    p = kb.spec.parsers
    assert p.max_file_mb == 50.0
    assert (p.text.encoding, p.markdown.max_heading_level) == ("auto", 6)
    assert (p.csv.delimiter, p.csv.encoding, p.csv.header_row, p.csv.sample_rows) == (
        ",",
        "auto",
        0,
        3,
    )
    assert (p.json_.mode, p.json_.text_fields, p.json_.id_field) == ("records", [], None)
    assert p.html.strip_selectors == ["nav", "footer"]
    assert (p.pdf.first_page, p.pdf.last_page) == (1, None)
    assert (p.xlsx.sheets, p.xlsx.header_row) == ([], 0)
    assert (p.image.ocr, p.image.language) == (True, "ch")
    c = kb.spec.chunking
    assert (c.strategy, c.max_chars, c.overlap_chars, c.keep_table_headers) == (
        "structure",
        800,
        100,
        True,
    )
    assert (kb.spec.embedding.model, kb.spec.embedding.batch_size) == ("multilingual-e5-small", 32)
    assert kb.spec.sparse.bm25 is True
    s = kb.spec.store
    assert (s.kind, s.path, s.url, s.api_key_env, s.collection) == (
        "embedded",
        None,
        None,
        None,
        None,
    )
    assert (kb.spec.labels.domain, kb.spec.labels.tenant) == (None, "default")


FULL = {
    "apiVersion": "qingliang.io/v1",
    "kind": "KnowledgeBase",
    "metadata": {
        "name": "gov-policy",
        "labels": {"team": "gov", "owner": "ops"},
        "description": "COVID-19 policy notices",
    },
    "spec": {
        "sources": [
            {"path": "data/readme.md"},
            {"folder": "data/policies", "include": ["*.md", "*.html"], "exclude": ["draft*"]},
            {"glob": "data/**/*.csv", "exclude": ["tmp/*"]},
        ],
        "parsers": {
            "max_file_mb": 10,
            "text": {"encoding": "gb18030"},
            "markdown": {"max_heading_level": 3},
            "csv": {"delimiter": ";", "encoding": "utf-8", "header_row": 2, "sample_rows": 5},
            "json": {"mode": "records", "text_fields": ["text"], "id_field": "docid"},
            "html": {"strip_selectors": ["nav", ".ad", "#cookie", "div.sidebar", "aside#x"]},
            "pdf": {"first_page": 2, "last_page": 9},
            "xlsx": {"sheets": ["Sheet1"], "header_row": 1},
            "image": {"ocr": False, "language": "en"},
        },
        "chunking": {
            "strategy": "fixed",
            "max_chars": 500,
            "overlap_chars": 250,
            "keep_table_headers": False,
        },
        "embedding": {"model": "all-minilm-l6-v2", "batch_size": 64},
        "sparse": {"bm25": False},
        "store": {
            "kind": "server",
            "url": "https://qdrant.internal:6333",
            "api_key_env": "QDRANT_API_KEY",
            "collection": "gov_policy.v2",
        },
        "labels": {"domain": "gov", "tenant": "city-a"},
    },
}


def test_every_field_set_validates() -> None:
    (item,) = load(FULL)
    kb = item.manifest
    assert isinstance(kb, KnowledgeBase)
    assert [s.kind for s in kb.spec.sources] == ["path", "folder", "glob"]
    assert kb.spec.parsers.json_.id_field == "docid"
    assert kb.collection == "gov_policy.v2"
    assert kb.spec.store.api_key_env == "QDRANT_API_KEY"


def test_embedded_store_with_a_relative_path() -> None:
    (item,) = load(manifest(store={"kind": "embedded", "path": "kb/policies"}))
    assert item.manifest.spec.store.path == "kb/policies"  # type: ignore[attr-defined]


def test_server_store_without_a_key() -> None:
    (item,) = load(manifest(store={"kind": "server", "url": "http://localhost:6333"}))
    assert item.manifest.spec.store.api_key_env is None  # type: ignore[attr-defined]


def test_frozen() -> None:
    (item,) = load(manifest())
    kb = item.manifest
    assert isinstance(kb, KnowledgeBase)
    with pytest.raises(ValidationError):
        kb.spec.chunking.max_chars = 10  # type: ignore[misc]


def test_a_file_may_mix_kinds() -> None:
    md = {
        "apiVersion": "qingliang.io/v1",
        "kind": "ModelDeployment",
        "metadata": {"name": "policies"},
        "spec": {"model": {"source": "/models/tiny"}},
    }
    text = yaml.safe_dump_all([md, manifest()], sort_keys=False)
    kinds = [item.kind for item in parse_documents(text, SOURCE)]
    assert kinds == ["ModelDeployment", "KnowledgeBase"]


def test_same_name_twice_is_rejected(tmp_path: Path) -> None:
    text = yaml.safe_dump_all([manifest(), manifest()], sort_keys=False)
    (tmp_path / "kb.yaml").write_text(text, encoding="utf-8")
    with pytest.raises(ManifestError, match="KnowledgeBase 'policies' is also defined in"):
        load_paths([tmp_path])


# --------------------------------------------------------------------- one bad field each

BAD: list[tuple[str, Any, str, str]] = [
    ("apiVersion", "qingliang.io/v2", "apiVersion", "'qingliang.io/v2' is not allowed"),
    ("metadata.name", "Gov_Policy", "metadata.name", "'Gov_Policy' is not a valid name"),
    ("metadata.name", "a" * 64, "metadata.name", "is not a valid name"),
    ("metadata.labels", {"x": "y" * 64}, "metadata.labels.x", "at most 63 characters"),
    ("spec.sources", [], "spec.sources", "List should have at least 1 item"),
    ("spec.sources", "data/", "spec.sources", "Input should be a valid list"),
    ("spec.sources", [{}], "spec.sources.0", "exactly one of path, folder or glob (got none)"),
    (
        "spec.sources",
        [{"path": "a.md", "folder": "b"}],
        "spec.sources.0",
        "exactly one of path, folder or glob (got path and folder)",
    ),
    ("spec.sources", [{"path": " "}], "spec.sources.0.path", "must not be empty"),
    (
        "spec.sources",
        [{"path": "a.md", "include": ["*.md"]}],
        "spec.sources.0",
        "include / exclude apply to folder and glob sources, not to a path",
    ),
    (
        "spec.sources",
        [{"folder": "d", "exclude": [" "]}],
        "spec.sources.0.exclude",
        "a pattern must not be blank",
    ),
    (
        "spec.sources",
        [{"folder": "d"}, {"folder": "d"}],
        "spec.sources",
        "source 1 repeats folder 'd'",
    ),
    ("spec.parsers.max_file_mb", 0, "spec.parsers.max_file_mb", "greater than 0"),
    ("spec.parsers.text.encoding", "utf-9", "spec.parsers.text.encoding", "unknown encoding"),
    ("spec.parsers.csv.encoding", "klingon", "spec.parsers.csv.encoding", "'klingon'"),
    ("spec.parsers.csv.delimiter", ";;", "spec.parsers.csv.delimiter", "at most 1 character"),
    ("spec.parsers.csv.delimiter", '"', "spec.parsers.csv.delimiter", "cannot be a delimiter"),
    ("spec.parsers.csv.header_row", -1, "spec.parsers.csv.header_row", "greater than or equal"),
    ("spec.parsers.csv.sample_rows", 51, "spec.parsers.csv.sample_rows", "less than or equal"),
    ("spec.parsers.markdown.max_heading_level", 7, "spec.parsers.markdown.max_heading_level", "6"),
    ("spec.parsers.json.mode", "lines", "spec.parsers.json.mode", "'lines' is not allowed"),
    (
        "spec.parsers.json",
        {"mode": "flatten", "id_field": "id"},
        "spec.parsers.json",
        "text_fields and id_field apply only to mode `records`",
    ),
    ("spec.parsers.pdf.first_page", 0, "spec.parsers.pdf.first_page", "greater than or equal"),
    (
        "spec.parsers.pdf",
        {"first_page": 5, "last_page": 2},
        "spec.parsers.pdf",
        "last_page (2) is before first_page (5)",
    ),
    (
        "spec.parsers.html.strip_selectors",
        ["div > p"],
        "spec.parsers.html.strip_selectors",
        "unsupported selector 'div > p'",
    ),
    ("spec.parsers.image.ocr", "maybe", "spec.parsers.image.ocr", "valid boolean"),
    ("spec.parsers.image.language", "fr", "spec.parsers.image.language", "'fr' is not allowed"),
    ("spec.chunking.strategy", "structur", "spec.chunking.strategy", "did you mean 'structure'?"),
    ("spec.chunking.max_chars", 10, "spec.chunking.max_chars", "greater than or equal to 50"),
    ("spec.chunking.overlap_chars", -1, "spec.chunking.overlap_chars", "greater than or equal"),
    (
        "spec.chunking",
        {"max_chars": 100, "overlap_chars": 51},
        "spec.chunking",
        "overlap_chars (51) must be at most half of max_chars (100)",
    ),
    (
        "spec.chunking",
        {"max_chars": 100, "overlap_chars": 100},
        "spec.chunking",
        "overlap_chars (100) must be at most half of max_chars (100)",
    ),
    (
        "spec.embedding.model",
        "multilingual-e5-smal",
        "spec.embedding.model",
        "did you mean 'multilingual-e5-small'?",
    ),
    ("spec.embedding.batch_size", 0, "spec.embedding.batch_size", "greater than or equal to 1"),
    ("spec.sparse.bm25", "yes please", "spec.sparse.bm25", "valid boolean"),
    ("spec.store.kind", "cloud", "spec.store.kind", "'cloud' is not allowed"),
    ("spec.store", {"kind": "server"}, "spec.store", "kind server needs `url`"),
    (
        "spec.store",
        {"kind": "server", "url": "http://q:6333", "path": "x"},
        "spec.store",
        "`path` applies only to kind embedded",
    ),
    (
        "spec.store",
        {"url": "http://q:6333", "api_key_env": "K"},
        "spec.store",
        "url and api_key_env apply only to kind server",
    ),
    (
        "spec.store",
        {"kind": "server", "url": "http://q:6333", "api_key": "s3cr3t"},
        "spec.store",
        "`api_key` is not accepted: never put a secret in a manifest",
    ),
    (
        "spec.store",
        {"kind": "server", "url": "http://q:6333", "api_key_env": "sk-abc.def/123"},
        "spec.store.api_key_env",
        "must be the NAME of an environment variable",
    ),
    (
        "spec.store",
        {"kind": "server", "url": "qdrant:6333"},
        "spec.store.url",
        "is not a server URL: use http(s)://host:port",
    ),
    (
        "spec.store",
        {"kind": "server", "url": "https://u:pw@q:6333"},
        "spec.store.url",
        "must not carry credentials",
    ),
    ("spec.store.path", "/var/kb", "spec.store.path", "must be relative to the data directory"),
    ("spec.store.path", "../kb", "spec.store.path", "must stay inside the data directory"),
    ("spec.store.collection", "a b", "spec.store.collection", "not a valid collection name"),
    ("spec.labels.tenant", "", "spec.labels.tenant", "'' is not a valid label"),
    ("spec.labels.domain", "政务", "spec.labels.domain", "'政务' is not a valid label"),
]


@pytest.mark.parametrize(("dotted", "value", "path", "fragment"), BAD)
def test_bad_field_names_file_and_path(dotted: str, value: Any, path: str, fragment: str) -> None:
    assert_issue(errors_of(with_value(manifest(), dotted, value)), path, fragment)


def test_exact_line_for_a_bad_overlap() -> None:
    doc = manifest(chunking={"max_chars": 100, "overlap_chars": 60})
    assert errors_of(doc) == (
        "kb.yaml: spec.chunking: overlap_chars (60) must be at most half of max_chars (100)"
    )


def test_a_pasted_key_is_never_echoed() -> None:
    secret = "sk-live-0123456789abcdef"
    store = {"kind": "server", "url": "http://q:6333", "api_key_env": secret}
    assert secret not in errors_of(manifest(store=store))


def test_missing_sources() -> None:
    doc = manifest()
    del doc["spec"]["sources"]
    assert errors_of(doc) == "kb.yaml: spec.sources: required key is missing"


def test_every_bad_field_is_reported_at_once() -> None:
    doc = manifest(chunking={"max_chars": 1}, embedding={"model": "bge"}, sparse={"bm25": "x"})
    message = errors_of(doc)
    assert len(message.splitlines()) == 3
    for path in ("spec.chunking.max_chars", "spec.embedding.model", "spec.sparse.bm25"):
        assert_issue(message, path, "")


# ------------------------------------------------------------------------- unknown keys


@pytest.mark.parametrize(
    ("parent", "key", "hint"),
    [
        ("spec", "chunkng", "chunking"),
        ("spec", "source", "sources"),
        ("spec.parsers", "jsn", "json"),
        ("spec.parsers", "max_file_size_mb", "max_file_mb"),
        ("spec.parsers.csv", "delimeter", "delimiter"),
        ("spec.parsers.csv", "header", "header_row"),
        ("spec.parsers.pdf", "last_pages", "last_page"),
        ("spec.parsers.html", "strip_selector", "strip_selectors"),
        ("spec.parsers.image", "languages", "language"),
        ("spec.chunking", "overlap", "overlap_chars"),
        ("spec.chunking", "keep_table_header", "keep_table_headers"),
        ("spec.embedding", "batchsize", "batch_size"),
        ("spec.sparse", "bm_25", "bm25"),
        ("spec.store", "api_key_var", "api_key_env"),
        ("spec.labels", "tennant", "tenant"),
        ("metadata", "label", "labels"),
    ],
)
def test_unknown_key_gets_did_you_mean(parent: str, key: str, hint: str) -> None:
    doc = with_value(manifest(), f"{parent}.{key}", 1)
    message = errors_of(doc)
    assert_issue(message, f"{parent}.{key}", f"unknown key (did you mean {hint!r}?)")


def test_unknown_key_lists_allowed_keys_in_yaml_spelling() -> None:
    message = errors_of(with_value(manifest(), "spec.parsers.zzz", 1))
    assert message.startswith("kb.yaml: spec.parsers.zzz: unknown key; allowed here: csv, ")
    assert "json" in message and "json_" not in message


def test_unknown_key_inside_a_source_entry() -> None:
    # The shared loader does not descend into list items to suggest a key, so a source
    # entry's typo is named with its full path but without a hint.
    doc = manifest()
    doc["spec"]["sources"] = [{"folder": "d", "exclud": ["x"]}]
    assert_issue(errors_of(doc), "spec.sources.0.exclud", "unknown key")


def test_wrong_kind_suggests_knowledge_base() -> None:
    doc = manifest()
    doc["kind"] = "KnowledgeBse"
    assert_issue(errors_of(doc), "kind", "did you mean 'KnowledgeBase'?")


# ------------------------------------------------------------------------ docs, doctests


def _field_names(model: type[BaseModel]) -> set[str]:
    names: set[str] = set()
    for name, info in model.model_fields.items():
        names.add(info.alias or name)
        inner = loader_mod._inner_model(info.annotation)
        if isinstance(inner, type) and issubclass(inner, BaseModel):
            names |= _field_names(inner)
    return names


def _models(model: type[BaseModel]) -> list[type[BaseModel]]:
    out = [model]
    for info in model.model_fields.values():
        inner = loader_mod._inner_model(info.annotation)
        if isinstance(inner, type) and issubclass(inner, BaseModel):
            out += _models(inner)
    return out


def test_every_field_has_a_description() -> None:
    missing = [
        f"{m.__name__}.{name}"
        for m in _models(KnowledgeBase)
        for name, info in m.model_fields.items()
        if not info.description
    ]
    assert not missing


def test_docs_describe_every_field() -> None:
    text = (REPO / "docs" / "knowledge.md").read_text(encoding="utf-8")
    missing = sorted(n for n in _field_names(KnowledgeBase) if f"`{n}`" not in text)
    assert not missing, f"docs/knowledge.md does not mention: {missing}"


def test_yaml_examples_in_the_docs_validate() -> None:
    text = (REPO / "docs" / "knowledge.md").read_text(encoding="utf-8")
    blocks = [b for b in re.findall(r"```yaml\n(.*?)```", text, flags=re.S) if "KnowledgeBase" in b]
    assert len(blocks) >= 2
    for i, block in enumerate(blocks):
        parse_documents(block, f"docs/knowledge.md[{i}]")


def test_docstring_examples_run() -> None:
    result = doctest.testmod(kb_mod)
    assert result.failed == 0 and result.attempted > 0


# ------------------------------------------------------------------ image embedding


def test_image_embedding_is_off_by_default_and_takes_a_model_dir() -> None:
    (item,) = load(manifest())
    assert item.manifest.spec.embedding.image is None
    (item,) = load(manifest(embedding={"image": {"model_dir": "models/clip-vit-b32"}}))
    assert item.manifest.spec.embedding.image.model_dir == "models/clip-vit-b32"
    assert item.manifest.spec.embedding.model == "multilingual-e5-small"


@pytest.mark.parametrize(
    ("image", "path", "fragment"),
    [
        ({"model_dir": "  "}, "spec.embedding.image.model_dir", "must not be empty"),
        ({}, "spec.embedding.image.model_dir", "required key is missing"),
        ({"model_dir": 3}, "spec.embedding.image.model_dir", "valid string"),
        ("clip", "spec.embedding.image", ""),
        (
            {"model_dir": "m", "model_path": "m"},
            "spec.embedding.image.model_path",
            "unknown key (did you mean 'model_dir'?)",
        ),
    ],
)
def test_bad_image_embedding(image: Any, path: str, fragment: str) -> None:
    assert_issue(errors_of(manifest(embedding={"image": image})), path, fragment)

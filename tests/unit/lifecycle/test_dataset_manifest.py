"""The ``Dataset`` manifest through the shared loader: defaults, every rule, the messages.

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
from pydantic import BaseModel

import qingliang.platform.lifecycle.pipelines.kinds  # noqa: F401
from qingliang.platform.errors import ManifestError
from qingliang.platform.lifecycle.data import manifest as ds_mod
from qingliang.platform.lifecycle.data.manifest import (
    Dataset,
    DedupStep,
    PiiStep,
    QualityStep,
    SchemaStep,
)
from qingliang.platform.manifests import loader as loader_mod
from qingliang.platform.manifests.loader import KINDS, Loaded, load_paths, parse_documents

REPO = Path(__file__).resolve().parents[3]
SOURCE = "ds.yaml"


def manifest(name: str = "gov-sft", **spec: Any) -> dict:
    return {
        "apiVersion": "qingliang.io/v1",
        "kind": "Dataset",
        "metadata": {"name": name},
        "spec": {"sources": [{"path": "data/train.jsonl"}], **spec},
    }


def load(doc: object) -> list[Loaded]:
    return parse_documents(yaml.safe_dump(doc, sort_keys=False, allow_unicode=True), SOURCE)


def errors_of(doc: object) -> str:
    with pytest.raises(ManifestError) as info:
        load(doc)
    return str(info.value)


def assert_issue(message: str, path: str, fragment: str) -> None:
    head = f"{SOURCE}: {path}: "
    lines = [ln for ln in message.splitlines() if ln.startswith(head)]
    assert lines, f"no line starts with {head!r} in:\n{message}"
    assert any(fragment in ln for ln in lines), f"{fragment!r} not in:\n{message}"


# --------------------------------------------------------------------------- valid input


def test_kind_is_registered() -> None:
    assert KINDS["Dataset"] is Dataset


def test_minimal_manifest_gets_the_documented_defaults() -> None:
    (item,) = load(manifest())
    ds = item.manifest
    assert isinstance(ds, Dataset)
    assert (item.kind, ds.name, ds.spec.format) == ("Dataset", "gov-sft", "chat")
    assert [type(s) for s in ds.spec.governance] == [SchemaStep, PiiStep, DedupStep, QualityStep]
    assert all(s.enabled for s in ds.spec.governance)
    pii = ds.spec.step("pii")
    assert isinstance(pii, PiiStep) and (pii.mode, pii.kinds, pii.salt_env) == ("tag", None, None)
    dedup = ds.spec.step("dedup")
    assert isinstance(dedup, DedupStep) and dedup.settings().threshold == 0.8
    assert (ds.spec.split.eval_fraction, ds.spec.split.seed) == (0.1, 0)
    assert (ds.spec.retention.max_versions, ds.spec.retention.max_age_days) == (None, None)
    src = ds.spec.sources[0]
    assert (src.kind, src.format, src.is_glob) == ("records", "auto", False)
    assert ds.spec.columns.instruction == "instruction"


def test_a_full_manifest() -> None:
    doc = manifest(
        format="instruction",
        sources=[
            {"path": "data/*.csv", "columns": {"instruction": "question", "output": "answer"}},
            {"path": "exports/gw.jsonl", "kind": "gateway_logs", "tenants": ["city-a"]},
            {"path": "review/fixes.jsonl", "kind": "corrections"},
        ],
        governance=[
            {
                "step": "pii",
                "mode": "hash",
                "salt_env": "QL_SALT",
                "kinds": ["phone_cn"],
                "patterns": [{"kind": "staff_id", "regex": "QL-\\d{6}"}],
            },
            {"step": "schema", "max_messages": 20},
            {"step": "dedup", "threshold": 0.9, "scope": "prompt"},
            {"step": "quality", "enabled": False, "languages": ["zh"]},
        ],
        split={"eval_fraction": 0.2, "seed": 7},
        retention={"max_versions": 5, "max_age_days": 30},
    )
    ds = load(doc)[0].manifest
    assert isinstance(ds, Dataset)
    assert [s.step for s in ds.spec.governance] == ["pii", "schema", "dedup", "quality"]
    assert ds.spec.sources[0].is_glob and ds.spec.sources[0].columns is not None
    quality = ds.spec.step("quality")
    assert isinstance(quality, QualityStep) and not quality.enabled
    assert quality.settings().languages == ("zh",)
    assert ds.spec.step("nothing") is None


def test_an_empty_governance_list_runs_no_step() -> None:
    ds = load(manifest(governance=[]))[0].manifest
    assert isinstance(ds, Dataset) and ds.spec.governance == []


# ------------------------------------------------------------------------- governance


@pytest.mark.parametrize(
    ("step", "path", "fragment"),
    [
        ({"step": "dedup", "threshold": 2}, "spec.governance[1].threshold", "less than or equal"),
        (
            {"step": "dedup", "shingel": "char"},
            "spec.governance[1].shingel",
            "did you mean 'shingle'",
        ),
        ({"step": "dedup", "bands": 4}, "spec.governance[1]", "set bands and rows together"),
        ({"step": "quality", "languages": ["fr"]}, "spec.governance[1].languages", "'fr'"),
        (
            {"step": "quality", "scope": "answer"},
            "spec.governance[1].scope",
            "'answer' is not allowed",
        ),
        ({"step": "qualty"}, "spec.governance[1].step", "did you mean 'quality'"),
        ({"enabled": False}, "spec.governance[1].step", "required key is missing"),
        ({"step": "schema"}, "spec.governance[1].step", "'schema' is already governance[0]"),
        ({"step": "pii", "mode": "hash"}, "spec.governance[1]", "needs `salt_env`"),
        ({"step": "pii", "salt_env": "X"}, "spec.governance[1]", "only to mode hash"),
        (
            {"step": "pii", "kinds": ["phone"]},
            "spec.governance[1].kinds",
            "did you mean 'phone_cn'",
        ),
        ({"step": "pii", "kinds": []}, "spec.governance[1]", "nothing to detect"),
        (
            {"step": "pii", "patterns": [{"kind": "x", "regex": "("}]},
            "spec.governance[1].patterns[0]",
            "invalid regex",
        ),
        (
            {"step": "pii", "patterns": [{"kind": "email", "regex": "a"}]},
            "spec.governance[1].patterns[0]",
            "built-in kind",
        ),
        ("pii", "spec.governance[1]", "must be a mapping"),
    ],
)
def test_governance_errors_name_the_step_and_field(step: object, path: str, fragment: str) -> None:
    message = errors_of(manifest(governance=[{"step": "schema"}, step]))
    assert_issue(message, path, fragment)


def test_a_salt_is_never_accepted_and_never_echoed() -> None:
    message = errors_of(manifest(governance=[{"step": "pii", "mode": "hash", "salt": "s3cr3t"}]))
    assert_issue(message, "spec.governance[0]", "never put a secret in a manifest")
    assert "s3cr3t" not in message
    message = errors_of(
        manifest(governance=[{"step": "pii", "mode": "hash", "salt_env": "s3cr3t value!"}])
    )
    assert_issue(message, "spec.governance[0].salt_env", "NAME of an environment variable")
    assert "s3cr3t" not in message


def test_wrong_roles_in_schema() -> None:
    message = errors_of(manifest(governance=[{"step": "schema", "roles": ["bot"]}]))
    assert_issue(message, "spec.governance[0].roles[0]", "'bot' is not allowed")


# ---------------------------------------------------------------------------- sources


@pytest.mark.parametrize(
    ("spec", "path", "fragment"),
    [
        ({"sources": []}, "spec.sources", "at least 1 item"),
        ({"sources": [{"path": " "}]}, "spec.sources.0.path", "must not be empty"),
        ({"sources": [{"path": "a", "kind": "logs"}]}, "spec.sources.0.kind", "is not allowed"),
        ({"sources": [{"path": "a", "fromat": "csv"}]}, "spec.sources.0.fromat", "'format'"),
        (
            {"sources": [{"path": "a", "kind": "gateway_logs", "format": "csv"}]},
            "spec.sources.0",
            "is JSONL",
        ),
        (
            {"sources": [{"path": "a", "kind": "corrections", "columns": {}}]},
            "spec.sources.0",
            "columns: applies to records sources",
        ),
        (
            {"sources": [{"path": "a", "tenants": ["x"]}]},
            "spec.sources.0",
            "filter gateway_logs sources only",
        ),
        (
            {"sources": [{"path": "a", "format": "parquet", "delimiter": ";"}]},
            "spec.sources.0",
            "not parquet",
        ),
        ({"sources": [{"path": "a", "encoding": "klingon"}]}, "spec.sources.0.encoding", "codec"),
        (
            {"sources": [{"path": "a", "kind": "corrections"}]},
            "spec",
            "need at least one records or gateway_logs source",
        ),
        ({"sources": [{"path": "a"}, {"path": "a"}]}, "spec", "repeats source 0"),
        ({"format": "chatml"}, "spec.format", "'chatml' is not allowed"),
        ({"split": {"eval_fraction": 1.0}}, "spec.split.eval_fraction", "less than 1"),
        ({"retention": {"max_versions": 0}}, "spec.retention.max_versions", "greater than"),
        ({"columns": {"outptu": "a"}}, "spec.columns.outptu", "did you mean 'output'"),
        ({"governence": []}, "spec.governence", "did you mean 'governance'"),
    ],
)
def test_spec_errors_name_the_field(spec: dict, path: str, fragment: str) -> None:
    doc = copy.deepcopy(manifest())
    doc["spec"].update(spec)
    assert_issue(errors_of(doc), path, fragment)


def test_bad_name() -> None:
    assert_issue(errors_of(manifest(name="Gov_SFT")), "metadata.name", "not a valid name")


def test_validation_touches_no_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    doc = manifest(sources=[{"path": "/nowhere/*.jsonl"}, {"path": "missing.csv"}])
    assert isinstance(load(doc)[0].manifest, Dataset)
    assert list(tmp_path.iterdir()) == []


# ------------------------------------------------------------------ examples and docs


def test_the_examples_validate() -> None:
    items = [i for i in load_paths([REPO / "deploy" / "examples"]) if i.kind == "Dataset"]
    assert {i.name for i in items} >= {"gov-sft"}


def _field_names(model: type[BaseModel]) -> set[str]:
    names: set[str] = set()
    for name, info in model.model_fields.items():
        names.add(info.alias or name)
        inner = loader_mod._inner_model(info.annotation)
        if isinstance(inner, type) and issubclass(inner, BaseModel):
            names |= _field_names(inner)
    return names


def test_every_field_has_a_description() -> None:
    models = [Dataset, SchemaStep, PiiStep, DedupStep, QualityStep]
    seen: set[type[BaseModel]] = set()

    def walk(model: type[BaseModel]) -> None:
        if model in seen:
            return
        seen.add(model)
        for name, info in model.model_fields.items():
            assert info.description, f"{model.__name__}.{name} has no description"
            inner = loader_mod._inner_model(info.annotation)
            if isinstance(inner, type) and issubclass(inner, BaseModel):
                walk(inner)

    for m in models:
        walk(m)


def test_docs_describe_every_field() -> None:
    text = (REPO / "docs" / "data.md").read_text(encoding="utf-8")
    names = _field_names(Dataset)
    for step in (SchemaStep, PiiStep, DedupStep, QualityStep):
        names |= _field_names(step)
    missing = sorted(n for n in names if f"`{n}`" not in text)
    assert not missing, f"docs/data.md does not mention: {missing}"


def test_yaml_examples_in_the_docs_validate() -> None:
    text = (REPO / "docs" / "data.md").read_text(encoding="utf-8")
    blocks = [b for b in re.findall(r"```yaml\n(.*?)```", text, flags=re.S) if "Dataset" in b]
    assert len(blocks) >= 2
    for i, block in enumerate(blocks):
        parse_documents(block, f"docs/data.md[{i}]")


def test_docstring_examples_run() -> None:
    result = doctest.testmod(ds_mod)
    assert result.failed == 0 and result.attempted > 0

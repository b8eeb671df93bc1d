"""The ``ModelDeployment`` manifest and its loader: every rule, every error message.

Each invalid case asserts the line the user reads, ``<file>: <field path>: <message>``,
so a change that drops the file or the YAML path of the bad field fails here.
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
from qingliang.platform.errors import ManifestError
from qingliang.platform.manifests import loader as loader_mod
from qingliang.platform.manifests.loader import (
    Loaded,
    load_paths,
    manifest_files,
    parse_documents,
    validate_document,
)
from qingliang.serving import manifest as md_mod
from qingliang.serving.manifest import (
    ModelDeployment,
    quantization_catalog,
)

REPO = Path(__file__).resolve().parents[3]
SOURCE = "m.yaml"

GPU = {"accelerator": "gpu", "gpus": 1}
NPU = {"accelerator": "npu", "npus": 1}
PLACEMENT = {"cpu": {}, "gpu": GPU, "npu": NPU}


def manifest(name: str = "tiny", **spec: Any) -> dict:
    """A minimal valid ModelDeployment document, with ``spec`` sections replaced."""
    return {
        "apiVersion": "qingliang.io/v1",
        "kind": "ModelDeployment",
        "metadata": {"name": name},
        "spec": {"model": {"source": "/models/tiny"}, **spec},
    }


def with_value(doc: dict, dotted: str, value: Any) -> dict:
    """A copy of ``doc`` with ``dotted`` (``spec.engine.dtype``) set to ``value``."""
    out = copy.deepcopy(doc)
    node = out
    *parents, last = dotted.split(".")
    for part in parents:
        node = node.setdefault(part, {})
    node[last] = value
    return out


def without(doc: dict, dotted: str) -> dict:
    out = copy.deepcopy(doc)
    node = out
    *parents, last = dotted.split(".")
    for part in parents:
        node = node[part]
    del node[last]
    return out


def load(doc: object, source: str = SOURCE) -> list[Loaded]:
    """Round-trip ``doc`` through YAML text and the loader, as a user's file would go."""
    return parse_documents(yaml.safe_dump(doc, sort_keys=False), source)


def errors_of(doc: object, source: str = SOURCE) -> str:
    with pytest.raises(ManifestError) as info:
        load(doc, source)
    return str(info.value)


def assert_issue(message: str, path: str, fragment: str, source: str = SOURCE) -> None:
    """Some line of ``message`` reads ``<source>: <path>: ...fragment...``."""
    head = f"{source}: {path}: " if path else f"{source}: "
    lines = [ln for ln in message.splitlines() if ln.startswith(head)]
    assert lines, f"no line starts with {head!r} in:\n{message}"
    assert any(fragment in ln for ln in lines), f"{fragment!r} not in:\n{message}"


# --------------------------------------------------------------------------- valid input


def test_minimal_manifest_gets_documented_defaults() -> None:
    (item,) = load(manifest())
    md = item.manifest
    assert isinstance(md, ModelDeployment)
    assert (item.kind, item.name, item.source) == ("ModelDeployment", "tiny", SOURCE)
    assert md.name == "tiny"
    assert md.api_version == "qingliang.io/v1"
    assert md.metadata.labels == {} and md.metadata.description == ""
    model = md.spec.model
    assert (model.tokenizer, model.revision, model.trust_remote_code) == (None, None, False)
    e = md.spec.engine
    assert (e.kind, e.dtype, e.max_model_len, e.max_num_seqs) == ("auto", "auto", None, 16)
    assert (e.max_num_batched_tokens, e.enforce_eager, e.kv_cache_gib) == (None, True, None)
    assert (e.gpu_memory_utilization, e.cpu_threads, e.seed) == (0.9, None, 0)
    assert (e.max_concurrent_requests, e.max_queued_requests) == (32, 64)
    assert e.request_timeout_s == 300.0
    assert (e.tool_call_parser, e.lenient_tool_calls, e.vllm_args) == (None, True, {})
    assert md.spec.quantization.method == "none"
    lora = md.spec.lora
    assert (lora.adapters, lora.max_adapters, lora.max_rank, lora.enabled) == ({}, 4, 16, None)
    assert (lora.traffic, lora.refs) == ({}, {})
    assert lora.active is False
    p = md.spec.placement
    assert (p.accelerator, p.cpus, p.gpus, p.npus) == ("cpu", 1.0, 0, 0)
    assert (p.accelerator_type, p.tensor_parallel_size, p.memory_gib) == (None, 1, None)
    a = md.spec.autoscaling
    assert (a.min_replicas, a.max_replicas, a.initial_replicas) == (1, 1, None)
    assert (a.target_ongoing_requests, a.upscale_delay_s, a.downscale_delay_s) == (4.0, 10, 300)


def test_every_field_set_validates() -> None:
    doc = {
        "apiVersion": "qingliang.io/v1",
        "kind": "ModelDeployment",
        "metadata": {
            "name": "qwen-7b-awq",
            "labels": {"domain": "legal", "team": "nlp"},
            "description": "Qwen 7B, AWQ",
        },
        "spec": {
            "model": {
                "source": "hub:Qwen/Qwen2.5-7B-Instruct-AWQ",
                "tokenizer": "/models/tok",
                "revision": "main",
                "trust_remote_code": True,
            },
            "engine": {
                "kind": "vllm",
                "dtype": "float16",
                "max_model_len": 8192,
                "max_num_seqs": 64,
                "max_num_batched_tokens": 8192,
                "enforce_eager": False,
                "kv_cache_gib": 4,
                "gpu_memory_utilization": 0.85,
                "cpu_threads": 8,
                "seed": 7,
                "max_concurrent_requests": 48,
                "max_queued_requests": 1,
                "request_timeout_s": 60,
            },
            "quantization": {"method": "awq"},
            "lora": {
                "adapters": {"sql": "/adapters/sql", "law_v1.2": "/adapters/law"},
                "max_adapters": 2,
                "max_rank": 64,
                "enabled": True,
                "traffic": {"law_v1.2": 0.25},
                "refs": {"law_v1.2": "law-bot@2"},
            },
            "placement": {
                "accelerator": "gpu",
                "cpus": 4,
                "gpus": 2,
                "accelerator_type": "A10G",
                "tensor_parallel_size": 2,
                "memory_gib": 32,
            },
            "autoscaling": {
                "min_replicas": 0,
                "max_replicas": 3,
                "initial_replicas": 1,
                "target_ongoing_requests": 8,
                "upscale_delay_s": 0,
                "downscale_delay_s": 0,
            },
        },
    }
    (item,) = load(doc)
    md = item.manifest
    assert isinstance(md, ModelDeployment)
    assert md.spec.model.scheme == "hub"
    assert md.spec.lora.active is True
    assert md.spec.placement.tensor_parallel_size == 2


def test_manifest_objects_are_frozen() -> None:
    (item,) = load(manifest())
    md = item.manifest
    assert isinstance(md, ModelDeployment)
    with pytest.raises(ValidationError):
        md.spec.engine.max_num_seqs = 2  # type: ignore[misc]
    with pytest.raises(ValidationError):
        md.metadata.name = "other"  # type: ignore[misc]


@pytest.mark.parametrize(
    ("source", "scheme"),
    [
        ("/models/tiny", "local"),
        ("./models/tiny", "local"),
        ("models/tiny", "local"),
        ("/models/tiny/model.gguf", "local"),
        ("packaged:smollm2-135m-instruct", "packaged"),
        ("hub:Qwen/Qwen2.5-0.5B-Instruct", "hub"),
        ("hub:org_1/repo.name-2", "hub"),
        ("  /models/padded  ", "local"),
    ],
)
def test_source_schemes(source: str, scheme: str) -> None:
    (item,) = load(with_value(manifest(), "spec.model.source", source))
    model = item.manifest.spec.model  # type: ignore[attr-defined]
    assert model.scheme == scheme
    assert model.source == source.strip()


def test_revision_is_allowed_on_hub_sources() -> None:
    doc = with_value(manifest(), "spec.model", {"source": "hub:a/b", "revision": "v1.0"})
    (item,) = load(doc)
    assert item.manifest.spec.model.revision == "v1.0"  # type: ignore[attr-defined]


@pytest.mark.parametrize("name", ["a", "0", "a1", "a-b", "qwen2-5-7b", "a" * 63, "9" * 63])
def test_valid_names(name: str) -> None:
    (item,) = load(manifest(name))
    assert item.name == name


@pytest.mark.parametrize(
    ("dotted", "value"),
    [
        ("spec.engine.max_model_len", 16),
        ("spec.engine.max_model_len", 1_048_576),
        ("spec.engine.max_num_seqs", 1),
        ("spec.engine.max_num_seqs", 4096),
        ("spec.engine.max_num_batched_tokens", 16),
        ("spec.engine.kv_cache_gib", 1024),
        ("spec.engine.gpu_memory_utilization", 1.0),
        ("spec.engine.cpu_threads", 1),
        ("spec.engine.cpu_threads", 1024),
        ("spec.engine.max_concurrent_requests", 100_000),
        ("spec.engine.max_queued_requests", 1),
        ("spec.engine.dtype", "bfloat16"),
        ("spec.engine.dtype", "float32"),
        ("spec.engine.kind", "transformers"),
        ("spec.engine.tool_call_parser", "llama3_json"),
        ("spec.engine.tool_call_parser", "granite-20b-fc"),
        ("spec.engine.lenient_tool_calls", False),
        ("spec.lora.max_adapters", 256),
        ("spec.lora.max_rank", 512),
        ("spec.placement.cpus", 0.5),
        ("spec.placement.cpus", 1024),
        ("spec.placement.memory_gib", 0.25),
        ("spec.placement.accelerator_type", "Xeon-SPR"),
        ("spec.autoscaling.min_replicas", 0),
        ("spec.autoscaling.max_replicas", 1000),
        ("spec.autoscaling.initial_replicas", 1),
        ("metadata.labels", {"k" * 63: "v" * 63}),
    ],
)
def test_values_on_the_boundary_are_accepted(dotted: str, value: Any) -> None:
    load(with_value(manifest(), dotted, value))


@pytest.mark.parametrize(
    ("lora", "active"),
    [
        ({}, False),
        ({"enabled": True}, True),
        ({"enabled": False}, False),
        ({"adapters": {"a": "/x"}}, True),
        ({"adapters": {"a": "/x"}, "enabled": True}, True),
        ({"adapters": {"a": "/x", "b": "/y"}, "max_adapters": 2}, True),
        ({"adapters": {"sql_v1.2": "/x", "A-b": "/y", "z": "rel/dir"}}, True),
    ],
)
def test_lora_active(lora: dict, active: bool) -> None:
    (item,) = load(manifest(lora=lora))
    assert item.manifest.spec.lora.active is active  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    "placement",
    [
        {},
        {"accelerator": "cpu", "cpus": 8, "memory_gib": 16},
        {"accelerator": "gpu", "gpus": 1},
        {"accelerator": "gpu", "gpus": 4, "tensor_parallel_size": 4, "accelerator_type": "H100"},
        {"accelerator": "npu", "npus": 1},
        {"accelerator": "npu", "npus": 2, "tensor_parallel_size": 2},
    ],
)
def test_consistent_placements(placement: dict) -> None:
    load(manifest(placement=placement))


@pytest.mark.parametrize(
    "autoscaling",
    [
        {"min_replicas": 0, "max_replicas": 1},
        {"min_replicas": 2, "max_replicas": 2},
        {"min_replicas": 1, "max_replicas": 4, "initial_replicas": 1},
        {"min_replicas": 1, "max_replicas": 4, "initial_replicas": 4},
        {"min_replicas": 0, "max_replicas": 4, "initial_replicas": 0},
    ],
)
def test_autoscaling_bounds_accepted(autoscaling: dict) -> None:
    load(manifest(autoscaling=autoscaling))


# ------------------------------------------------------------------ invalid field values

BAD_FIELDS = [
    # metadata
    ("metadata.name", "Tiny", "metadata.name", "'Tiny' is not a valid name"),
    ("metadata.name", "a_b", "metadata.name", "is not a valid name"),
    ("metadata.name", "a:b", "metadata.name", "is not a valid name"),
    ("metadata.name", "a.b", "metadata.name", "is not a valid name"),
    ("metadata.name", "-a", "metadata.name", "starting and ending with a letter or digit"),
    ("metadata.name", "a-", "metadata.name", "is not a valid name"),
    ("metadata.name", "a" * 64, "metadata.name", "1-63 lower-case letters"),
    ("metadata.name", "", "metadata.name", "is not a valid name"),
    ("metadata.name", "tiny\n", "metadata.name", "is not a valid name"),
    ("metadata.name", "qwen 7b", "metadata.name", "is not a valid name"),
    ("metadata.name", 5, "metadata.name", "Input should be a valid string"),
    ("metadata.labels", {"k": "v" * 64}, "metadata.labels.k", "at most 63 characters"),
    ("metadata.labels", {"k" * 64: "v"}, "metadata.labels." + "k" * 64 + ".[key]", "at most 63"),
    ("metadata.labels", ["a"], "metadata.labels", "Input should be a valid dictionary"),
    ("metadata.description", ["x"], "metadata.description", "Input should be a valid string"),
    # model source
    ("spec.model.source", "", "spec.model.source", "must not be empty"),
    ("spec.model.source", "   ", "spec.model.source", "must not be empty"),
    ("spec.model.source", "packaged:", "spec.model.source", "`packaged:` needs a model name"),
    ("spec.model.source", "hub:", "spec.model.source", "a hub source reads `hub:<org>/<repo>`"),
    ("spec.model.source", "hub:qwen", "spec.model.source", "'hub:qwen': a hub source reads"),
    ("spec.model.source", "hub:a/b/c", "spec.model.source", "a hub source reads"),
    ("spec.model.source", "hub:a b/c", "spec.model.source", "a hub source reads"),
    ("spec.model.source", "s3://bucket/m", "spec.model.source", "unknown source scheme 's3'"),
    ("spec.model.source", "https://h/m", "spec.model.source", "unknown source scheme 'https'"),
    ("spec.model.source", "hf:Qwen/Qwen2", "spec.model.source", "unknown source scheme 'hf'"),
    ("spec.model.source", 42, "spec.model.source", "Input should be a valid string"),
    ("spec.model.tokenizer", 5, "spec.model.tokenizer", "Input should be a valid string"),
    ("spec.model.trust_remote_code", "maybe", "spec.model.trust_remote_code", "valid boolean"),
    ("spec.model.revision", "main", "spec.model", "`revision` applies only to `hub:` sources"),
    # engine literals
    ("spec.engine.kind", "vlm", "spec.engine.kind", "'vlm' is not allowed"),
    ("spec.engine.kind", "vlm", "spec.engine.kind", "(did you mean 'vllm'?)"),
    ("spec.engine.kind", "transformer", "spec.engine.kind", "(did you mean 'transformers'?)"),
    ("spec.engine.kind", "llama.cpp", "spec.engine.kind", "should be 'vllm', 'transformers'"),
    ("spec.engine.dtype", "float61", "spec.engine.dtype", "(did you mean 'float16'?)"),
    ("spec.engine.dtype", "bf16", "spec.engine.dtype", "'bf16' is not allowed"),
    ("spec.engine.dtype", "int8", "spec.engine.dtype", "'float32', 'bfloat16' or 'float16'"),
    ("spec.engine.dtype", "float16", "spec", "float16 is not supported on cpu"),
    # engine numbers
    ("spec.engine.max_model_len", "abc", "spec.engine.max_model_len", "valid integer"),
    ("spec.engine.max_model_len", 4096.5, "spec.engine.max_model_len", "valid integer"),
    ("spec.engine.max_model_len", 8, "spec.engine.max_model_len", "greater than or equal to 16"),
    ("spec.engine.max_model_len", 2_000_000, "spec.engine.max_model_len", "less than or equal"),
    ("spec.engine.max_num_seqs", 0, "spec.engine.max_num_seqs", "greater than or equal to 1"),
    ("spec.engine.max_num_seqs", 4097, "spec.engine.max_num_seqs", "less than or equal to 4096"),
    (
        "spec.engine.max_num_batched_tokens",
        15,
        "spec.engine.max_num_batched_tokens",
        "greater than or equal to 16",
    ),
    ("spec.engine.enforce_eager", "sometimes", "spec.engine.enforce_eager", "valid boolean"),
    ("spec.engine.kv_cache_gib", 0, "spec.engine.kv_cache_gib", "greater than 0"),
    ("spec.engine.kv_cache_gib", 1025, "spec.engine.kv_cache_gib", "less than or equal to 1024"),
    (
        "spec.engine.gpu_memory_utilization",
        0,
        "spec.engine.gpu_memory_utilization",
        "greater than 0",
    ),
    (
        "spec.engine.gpu_memory_utilization",
        1.5,
        "spec.engine.gpu_memory_utilization",
        "less than or equal to 1",
    ),
    ("spec.engine.cpu_threads", 0, "spec.engine.cpu_threads", "greater than or equal to 1"),
    ("spec.engine.cpu_threads", 1025, "spec.engine.cpu_threads", "less than or equal to 1024"),
    ("spec.engine.seed", -1, "spec.engine.seed", "greater than or equal to 0"),
    (
        "spec.engine.max_concurrent_requests",
        0,
        "spec.engine.max_concurrent_requests",
        "greater than or equal to 1",
    ),
    (
        "spec.engine.max_concurrent_requests",
        100_001,
        "spec.engine.max_concurrent_requests",
        "less than or equal to 100000",
    ),
    (
        "spec.engine.max_queued_requests",
        0,
        "spec.engine.max_queued_requests",
        "greater than or equal to 1",
    ),
    (
        "spec.engine.max_queued_requests",
        100_001,
        "spec.engine.max_queued_requests",
        "less than or equal to 100000",
    ),
    ("spec.engine.request_timeout_s", 0, "spec.engine.request_timeout_s", "greater than 0"),
    ("spec.engine", None, "spec.engine", "valid dictionary or instance of EngineOptions"),
    # tool calls
    ("spec.engine.tool_call_parser", "hermess", "spec.engine.tool_call_parser", "'hermes'?)"),
    ("spec.engine.tool_call_parser", "qwen", "spec.engine.tool_call_parser", "unknown tool-call"),
    ("spec.engine.tool_call_parser", "x", "spec.engine.tool_call_parser", "known: apertus, "),
    ("spec.engine.tool_call_parser", 3, "spec.engine.tool_call_parser", "valid string"),
    ("spec.engine.lenient_tool_calls", "often", "spec.engine.lenient_tool_calls", "valid boolean"),
    # quantisation
    ("spec.quantization.method", "awk", "spec.quantization.method", "unknown method 'awk'"),
    ("spec.quantization.method", "awk", "spec.quantization.method", "(did you mean 'awq'?)"),
    ("spec.quantization.method", "gptqq", "spec.quantization.method", "(did you mean 'gptq'?)"),
    ("spec.quantization.method", "zzzz", "spec.quantization.method", "known: none, "),
    ("spec.quantization", "awq", "spec.quantization", "valid dictionary"),
    # lora
    ("spec.lora.adapters", {"a:b": "/x"}, "spec.lora.adapters", "adapter name 'a:b' is invalid"),
    ("spec.lora.adapters", {"a b": "/x"}, "spec.lora.adapters", "adapter name 'a b' is invalid"),
    ("spec.lora.adapters", {"a/b": "/x"}, "spec.lora.adapters", "no ':'"),
    ("spec.lora.adapters", {"-a": "/x"}, "spec.lora.adapters", "adapter name '-a' is invalid"),
    ("spec.lora.adapters", {"a.": "/x"}, "spec.lora.adapters", "adapter name 'a.' is invalid"),
    ("spec.lora.adapters", {"a" * 65: "/x"}, "spec.lora.adapters", "1-64 letters"),
    ("spec.lora.adapters", {"a\n": "/x"}, "spec.lora.adapters", "is invalid"),
    ("spec.lora.adapters", {"sql": ""}, "spec.lora.adapters", "adapter 'sql' has an empty path"),
    ("spec.lora.adapters", {"sql": "  "}, "spec.lora.adapters", "adapter 'sql' has an empty"),
    ("spec.lora.adapters", {"sql": 5}, "spec.lora.adapters.sql", "valid string"),
    ("spec.lora.adapters", ["sql"], "spec.lora.adapters", "valid dictionary"),
    ("spec.lora.max_adapters", 0, "spec.lora.max_adapters", "greater than or equal to 1"),
    ("spec.lora.max_adapters", 257, "spec.lora.max_adapters", "less than or equal to 256"),
    ("spec.lora.max_rank", 0, "spec.lora.max_rank", "greater than or equal to 1"),
    ("spec.lora.max_rank", 513, "spec.lora.max_rank", "less than or equal to 512"),
    ("spec.lora.enabled", "maybe", "spec.lora.enabled", "valid boolean"),
    # placement
    ("spec.placement.accelerator", "tpu", "spec.placement.accelerator", "'tpu' is not allowed"),
    ("spec.placement.accelerator", "cuda", "spec.placement.accelerator", "'cpu', 'gpu' or 'npu'"),
    ("spec.placement.cpus", 0, "spec.placement.cpus", "greater than 0"),
    ("spec.placement.cpus", 1025, "spec.placement.cpus", "less than or equal to 1024"),
    ("spec.placement.gpus", -1, "spec.placement.gpus", "greater than or equal to 0"),
    ("spec.placement.gpus", 65, "spec.placement.gpus", "less than or equal to 64"),
    ("spec.placement.gpus", 1.5, "spec.placement.gpus", "valid integer"),
    ("spec.placement.npus", -1, "spec.placement.npus", "greater than or equal to 0"),
    ("spec.placement.npus", 65, "spec.placement.npus", "less than or equal to 64"),
    (
        "spec.placement.tensor_parallel_size",
        0,
        "spec.placement.tensor_parallel_size",
        "greater than or equal to 1",
    ),
    (
        "spec.placement.tensor_parallel_size",
        65,
        "spec.placement.tensor_parallel_size",
        "less than or equal to 64",
    ),
    ("spec.placement.memory_gib", 0, "spec.placement.memory_gib", "greater than 0"),
    ("spec.placement.accelerator_type", 3, "spec.placement.accelerator_type", "valid string"),
    # autoscaling
    (
        "spec.autoscaling.min_replicas",
        -1,
        "spec.autoscaling.min_replicas",
        "greater than or equal to 0",
    ),
    (
        "spec.autoscaling.min_replicas",
        1001,
        "spec.autoscaling.min_replicas",
        "less than or equal to 1000",
    ),
    (
        "spec.autoscaling.max_replicas",
        0,
        "spec.autoscaling.max_replicas",
        "greater than or equal to 1",
    ),
    (
        "spec.autoscaling.max_replicas",
        1001,
        "spec.autoscaling.max_replicas",
        "less than or equal to 1000",
    ),
    (
        "spec.autoscaling.initial_replicas",
        -1,
        "spec.autoscaling.initial_replicas",
        "greater than or equal to 0",
    ),
    (
        "spec.autoscaling.target_ongoing_requests",
        0,
        "spec.autoscaling.target_ongoing_requests",
        "greater than 0",
    ),
    (
        "spec.autoscaling.upscale_delay_s",
        -1,
        "spec.autoscaling.upscale_delay_s",
        "greater than or equal to 0",
    ),
    (
        "spec.autoscaling.downscale_delay_s",
        -1,
        "spec.autoscaling.downscale_delay_s",
        "greater than or equal to 0",
    ),
]


@pytest.mark.parametrize(
    ("dotted", "value", "path", "fragment"),
    BAD_FIELDS,
    ids=[f"{d}={v!r}"[:60] for d, v, _, _ in BAD_FIELDS],
)
def test_bad_field_names_file_and_path(dotted: str, value: Any, path: str, fragment: str) -> None:
    assert_issue(errors_of(with_value(manifest(), dotted, value)), path, fragment)


def test_message_format_is_file_path_message() -> None:
    message = errors_of(with_value(manifest(), "spec.engine.max_model_len", "abc"))
    assert message.startswith(
        "m.yaml: spec.engine.max_model_len: Input should be a valid integer"
    ), message


def test_every_bad_field_is_reported_at_once() -> None:
    doc = with_value(manifest(), "spec.engine.max_model_len", "x")
    doc = with_value(doc, "spec.engine.dtype", "fp64")
    doc = with_value(doc, "metadata.name", "BAD")
    doc = with_value(doc, "spec.placement.cpus", -2)
    with pytest.raises(ManifestError) as info:
        load(doc)
    paths = {i.path for i in info.value.issues}
    assert paths == {
        "metadata.name",
        "spec.engine.max_model_len",
        "spec.engine.dtype",
        "spec.placement.cpus",
    }
    assert info.value.source == SOURCE
    assert len(str(info.value).splitlines()) == 4


# ------------------------------------------------------------- cross-field (whole spec)


@pytest.mark.parametrize(
    ("spec", "path", "fragment"),
    [
        ({"placement": {"gpus": 1}}, "spec.placement", "accelerator is cpu but gpus/npus are set"),
        ({"placement": {"npus": 2}}, "spec.placement", "accelerator is cpu but gpus/npus are set"),
        (
            {"placement": {"accelerator": "gpu", "gpus": 1, "npus": 1}},
            "spec.placement",
            "accelerator is gpu but npus is set",
        ),
        ({"placement": {"accelerator": "gpu"}}, "spec.placement", "accelerator is gpu: set gpus"),
        (
            {"placement": {"accelerator": "npu", "npus": 1, "gpus": 1}},
            "spec.placement",
            "accelerator is npu but gpus is set",
        ),
        ({"placement": {"accelerator": "npu"}}, "spec.placement", "accelerator is npu: set npus"),
        (
            {"placement": {"accelerator": "gpu", "gpus": 2}},
            "spec.placement",
            "tensor_parallel_size (1) must equal the gpus per replica (2)",
        ),
        (
            {"placement": {"accelerator": "gpu", "gpus": 1, "tensor_parallel_size": 2}},
            "spec.placement",
            "tensor_parallel_size (2) must equal the gpus per replica (1)",
        ),
        (
            {"placement": {"accelerator": "npu", "npus": 4, "tensor_parallel_size": 2}},
            "spec.placement",
            "tensor_parallel_size (2) must equal the npus per replica (4)",
        ),
        (
            {"placement": {"tensor_parallel_size": 2}},
            "spec.placement",
            "tensor_parallel_size > 1 needs gpu or npu placement",
        ),
        (
            {"autoscaling": {"min_replicas": 3, "max_replicas": 2}},
            "spec.autoscaling",
            "min_replicas (3) > max_replicas (2)",
        ),
        (
            {"autoscaling": {"min_replicas": 1, "max_replicas": 2, "initial_replicas": 3}},
            "spec.autoscaling",
            "initial_replicas must lie between min_replicas and max_replicas",
        ),
        (
            {"autoscaling": {"min_replicas": 2, "max_replicas": 4, "initial_replicas": 1}},
            "spec.autoscaling",
            "initial_replicas must lie between",
        ),
        (
            {"lora": {"adapters": {"a": "/a", "b": "/b", "c": "/c"}, "max_adapters": 2}},
            "spec.lora",
            "3 adapters listed but max_adapters is 2",
        ),
        (
            {"lora": {"adapters": {f"a{i}": f"/a{i}" for i in range(5)}}},
            "spec.lora",
            "5 adapters listed but max_adapters is 4",
        ),
        (
            {"lora": {"adapters": {"a": "/a"}, "enabled": False}},
            "spec.lora",
            "adapters are listed but `enabled` is false",
        ),
        (
            {"engine": {"kind": "transformers"}, "placement": NPU},
            "spec",
            "the transformers engine does not run on npu; use engine vllm",
        ),
        (
            {
                "engine": {"kind": "transformers"},
                "placement": {"accelerator": "gpu", "gpus": 2, "tensor_parallel_size": 2},
            },
            "spec",
            "tensor parallelism needs engine vllm",
        ),
        (
            {
                "quantization": {"method": "bnb_nf4"},
                "placement": {"accelerator": "gpu", "gpus": 2, "tensor_parallel_size": 2},
            },
            "spec",
            "tensor parallelism needs engine vllm (quantization.method 'bnb_nf4' runs only on "
            "transformers)",
        ),
        ({"engine": {"dtype": "float16"}}, "spec", "float16 is not supported on cpu"),
    ],
)
def test_cross_field_rules(spec: dict, path: str, fragment: str) -> None:
    assert_issue(errors_of(manifest(**spec)), path, fragment)


# ------------------------------------------------------------ lora canary traffic, refs

TWO = {"sql": "/adapters/sql", "law_v1.2": "/adapters/law"}


@pytest.mark.parametrize(
    ("lora", "path", "fragment"),
    [
        (
            {"adapters": TWO, "traffic": {"sqll": 0.2}},
            "spec.lora.traffic",
            "adapter 'sqll' is not in `adapters` (did you mean 'sql'?)",
        ),
        ({"traffic": {"sql": 0.2}}, "spec.lora.traffic", "(listed: none)"),
        ({"adapters": TWO, "traffic": {"sql": 0}}, "spec.lora.traffic", "adapter 'sql': share 0"),
        (
            {"adapters": TWO, "traffic": {"sql": -0.1}},
            "spec.lora.traffic",
            "adapter 'sql': share -0.1 must be above 0 and at most 1",
        ),
        (
            {"adapters": TWO, "traffic": {"sql": 1.5}},
            "spec.lora.traffic",
            "adapter 'sql': share 1.5 must be above 0 and at most 1",
        ),
        ({"adapters": TWO, "traffic": {"sql": float("nan")}}, "spec.lora.traffic", "share nan"),
        (
            {"adapters": TWO, "traffic": {"sql": 0.6, "law_v1.2": 0.5}},
            "spec.lora.traffic",
            "shares add up to 1.1 (law_v1.2 0.5 + sql 0.6), more than 1",
        ),
        (
            {"adapters": TWO, "traffic": {"sql": "half"}},
            "spec.lora.traffic.sql",
            "valid number",
        ),
        ({"adapters": TWO, "traffic": ["sql"]}, "spec.lora.traffic", "valid dictionary"),
        (
            {"adapters": TWO, "refs": {"tutor": "tutor@1"}},
            "spec.lora.refs",
            "adapter 'tutor' is not in `adapters`; refs may name only listed adapters",
        ),
        ({"adapters": TWO, "refs": {"sql": "sql-bot"}}, "spec.lora.refs", "adapter 'sql': ref"),
        ({"adapters": TWO, "refs": {"sql": "sql-bot@0"}}, "spec.lora.refs", "'sql-bot@0'"),
        ({"adapters": TWO, "refs": {"sql": "sql-bot@v2"}}, "spec.lora.refs", "'<name>@<version>'"),
        ({"adapters": TWO, "refs": {"sql": "@3"}}, "spec.lora.refs", "is not a registry ref"),
        ({"adapters": TWO, "refs": {"sql": "a/b@3"}}, "spec.lora.refs", "is not a registry ref"),
        ({"adapters": TWO, "refs": {"sql": "x" * 129 + "@3"}}, "spec.lora.refs", "1-128"),
        ({"adapters": TWO, "refs": {"sql": "sql@3\n"}}, "spec.lora.refs", "not a registry ref"),
    ],
)
def test_traffic_and_refs_rules(lora: dict, path: str, fragment: str) -> None:
    assert_issue(errors_of(manifest(lora=lora)), path, fragment)


def test_traffic_rules_hold_for_the_model_itself() -> None:
    """Validation is the model's, not the loader's: code that builds LoraOptions gets the
    same ValueError naming the adapter."""
    with pytest.raises(ValidationError, match="adapter 'sql': share 2"):
        md_mod.LoraOptions(adapters=TWO, traffic={"sql": 2})


def test_traffic_check_waits_for_valid_adapters() -> None:
    """A bad adapter name is reported once, at `adapters`, not again at `traffic`."""
    with pytest.raises(ManifestError) as info:
        load(manifest(lora={"adapters": {"a:b": "/x"}, "traffic": {"a:b": 0.5}}))
    assert [i.path for i in info.value.issues] == ["spec.lora.adapters"]


@pytest.mark.parametrize(
    "traffic",
    [
        {"sql": 1.0},
        {"sql": 1},
        {"sql": 1e-6},
        {"sql": 0.3, "law_v1.2": 0.7},
        {},
    ],
)
def test_valid_traffic(traffic: dict) -> None:
    (item,) = load(manifest(lora={"adapters": TWO, "traffic": traffic}))
    assert item.manifest.spec.lora.traffic == traffic  # type: ignore[attr-defined]


def test_shares_may_add_up_to_one_with_rounding() -> None:
    three = {"a": "/a", "b": "/b", "c": "/c"}
    traffic = {"a": 0.34, "b": 0.56, "c": 0.1}
    assert sum(traffic.values()) > 1  # 1.0000000000000002 in binary floating point
    (item,) = load(manifest(lora={"adapters": three, "traffic": traffic}))
    assert item.manifest.spec.lora.traffic == traffic  # type: ignore[attr-defined]


@pytest.mark.parametrize("ref", ["sql-bot@1", "a@12", "Law_v1.2@3", "x" * 128 + "@1"])
def test_valid_refs(ref: str) -> None:
    (item,) = load(manifest(lora={"adapters": TWO, "refs": {"sql": ref}}))
    assert item.manifest.spec.lora.refs == {"sql": ref}  # type: ignore[attr-defined]


# ----------------------------------------------- quantisation x engine x accelerator x LoRA

CATALOG = quantization_catalog()


def test_quantization_catalog_is_well_formed() -> None:
    assert CATALOG, "quantization.yaml lists no methods"
    assert "none" not in CATALOG
    for name, row in CATALOG.items():
        assert set(row) <= {"engines", "accelerators", "lora", "vllm_name", "note"}, name
        assert row["engines"] and set(row["engines"]) <= {"vllm", "transformers"}, name
        assert row["accelerators"] and set(row["accelerators"]) <= {"cpu", "gpu", "npu"}, name
        assert isinstance(row["lora"], bool), name
        assert ("vllm_name" in row) == ("vllm" in row["engines"]), name
        assert isinstance(row.get("note", ""), str), name


def _expected_matrix_error(method: str, engine: str, acc: str, lora: bool) -> str | None:
    """What the table in quantization.yaml says about one combination."""
    if method != "none":
        row = CATALOG[method]
        if engine != "auto" and engine not in row["engines"]:
            return f"quantization.method {method!r} is not available with engine {engine!r}"
        if acc not in row["accelerators"]:
            return f"quantization.method {method!r} is not available on {acc}"
        if lora and not row["lora"]:
            return f"quantization.method {method!r} cannot be combined with LoRA"
    if engine == "transformers" and acc == "npu":
        return "the transformers engine does not run on npu"
    return None


MATRIX = [
    (method, engine, acc, lora)
    for method in ["none", *CATALOG]
    for engine in ("vllm", "transformers", "auto")
    for acc in ("cpu", "gpu", "npu")
    for lora in (False, True)
]


@pytest.mark.parametrize(
    ("method", "engine", "acc", "lora"),
    MATRIX,
    ids=[f"{m}-{e}-{a}-{'lora' if lo else 'nolora'}" for m, e, a, lo in MATRIX],
)
def test_quantization_engine_accelerator_lora_matrix(
    method: str, engine: str, acc: str, lora: bool
) -> None:
    doc = manifest(
        engine={"kind": engine},
        quantization={"method": method},
        placement=PLACEMENT[acc],
        lora={"adapters": {"sql": "/adapters/sql"}} if lora else {},
    )
    expected = _expected_matrix_error(method, engine, acc, lora)
    if expected is None:
        (item,) = load(doc)
        assert item.manifest.spec.quantization.method == method  # type: ignore[attr-defined]
    else:
        assert_issue(errors_of(doc), "spec", expected)


@pytest.mark.parametrize(
    ("method", "engine", "acc", "lora", "fragment"),
    [
        # Pinned by hand so a wrong edit of quantization.yaml fails here too.
        ("awq", "auto", "cpu", False, "'awq' is not available on cpu (only on gpu)"),
        ("gptq", "auto", "npu", False, "'gptq' is not available on npu (only on gpu)"),
        ("fp8", "auto", "cpu", False, "'fp8' is not available on cpu (only on gpu)"),
        ("fp8_per_channel", "auto", "gpu", False, "'fp8_per_channel' is not available on gpu"),
        ("bnb_nf4", "vllm", "cpu", False, "with engine 'vllm' (it needs transformers)"),
        ("bnb_int8", "vllm", "gpu", False, "with engine 'vllm' (it needs transformers)"),
        ("awq", "transformers", "gpu", False, "with engine 'transformers' (it needs vllm)"),
        ("bnb_nf4", "auto", "npu", False, "'bnb_nf4' is not available on npu (only on cpu, gpu)"),
        ("w8a8_int8", "auto", "cpu", True, "'w8a8_int8' cannot be combined with LoRA"),
        ("w8a8_int8", "vllm", "gpu", True, "'w8a8_int8' cannot be combined with LoRA"),
    ],
)
def test_matrix_pinned_errors(method: str, engine: str, acc: str, lora: bool, fragment: str):
    doc = manifest(
        engine={"kind": engine},
        quantization={"method": method},
        placement=PLACEMENT[acc],
        lora={"enabled": True} if lora else {},
    )
    assert_issue(errors_of(doc), "spec", fragment)


@pytest.mark.parametrize(
    ("method", "engine", "acc", "lora"),
    [
        ("fp8_per_channel", "vllm", "cpu", True),
        ("w8a8_int8", "vllm", "cpu", False),
        ("awq", "vllm", "gpu", True),
        ("gptq", "auto", "gpu", True),
        ("compressed-tensors", "vllm", "npu", True),
        ("bnb_nf4", "transformers", "cpu", True),
        ("bnb_int8", "auto", "gpu", False),
    ],
)
def test_matrix_pinned_valid(method: str, engine: str, acc: str, lora: bool) -> None:
    load(
        manifest(
            engine={"kind": engine},
            quantization={"method": method},
            placement=PLACEMENT[acc],
            lora={"enabled": True} if lora else {},
        )
    )


# ------------------------------------------------------------------------ unknown keys

UNKNOWN_KEYS = [
    ("", "specs", "spec"),
    ("", "apiVersio", "apiVersion"),
    ("", "metdata", "metadata"),
    ("metadata", "nmae", "name"),
    ("metadata", "label", "labels"),
    ("metadata", "descripton", "description"),
    ("spec", "engin", "engine"),
    ("spec", "quantisation", "quantization"),
    ("spec", "placment", "placement"),
    ("spec", "autoscale", "autoscaling"),
    ("spec", "loras", "lora"),
    ("spec.model", "sourse", "source"),
    ("spec.model", "revison", "revision"),
    ("spec.model", "trust_remote", "trust_remote_code"),
    ("spec.engine", "max_model_lenn", "max_model_len"),
    ("spec.engine", "max_num_seq", "max_num_seqs"),
    ("spec.engine", "gpu_mem_utilization", "gpu_memory_utilization"),
    ("spec.quantization", "methd", "method"),
    ("spec.lora", "adaptors", "adapters"),
    ("spec.lora", "max_adapter", "max_adapters"),
    ("spec.placement", "gpu", "gpus"),
    ("spec.placement", "accelerater", "accelerator"),
    ("spec.placement", "tensor_parallel", "tensor_parallel_size"),
    ("spec.autoscaling", "max_replica", "max_replicas"),
    ("spec.autoscaling", "initial_replica", "initial_replicas"),
]


@pytest.mark.parametrize(("parent", "key", "hint"), UNKNOWN_KEYS)
def test_unknown_key_gets_did_you_mean(parent: str, key: str, hint: str) -> None:
    dotted = f"{parent}.{key}" if parent else key
    message = errors_of(with_value(manifest(), dotted, 1))
    assert_issue(message, dotted, f"unknown key (did you mean {hint!r}?); allowed here: ")
    assert hint in message.split("allowed here: ", 1)[1]


@pytest.mark.parametrize(
    "parent",
    ["", "metadata", "spec", "spec.model", "spec.engine", "spec.quantization", "spec.lora"]
    + ["spec.placement", "spec.autoscaling"],
)
def test_unknown_key_without_close_match_lists_allowed_keys(parent: str) -> None:
    dotted = f"{parent}.zzqx" if parent else "zzqx"
    message = errors_of(with_value(manifest(), dotted, 1))
    assert_issue(message, dotted, "unknown key; allowed here: ")
    assert "did you mean" not in message


def test_allowed_keys_use_yaml_spelling() -> None:
    message = errors_of(with_value(manifest(), "zzqx", 1))
    assert "allowed here: apiVersion, kind, metadata, spec" in message


# ------------------------------------------------------------- kind, apiVersion, metadata


@pytest.mark.parametrize(
    ("kind", "fragment"),
    [
        ("ModelDeploy", "unknown kind 'ModelDeploy' (did you mean 'ModelDeployment'?)"),
        ("modeldeployment", "(did you mean 'ModelDeployment'?)"),
        ("ModelDeployments", "(did you mean 'ModelDeployment'?)"),
        ("Frobnicator", "unknown kind 'Frobnicator'; known: ModelDeployment"),
        (["ModelDeployment"], "unknown kind ['ModelDeployment']"),
        ({"a": 1}, "unknown kind {'a': 1}"),
        (3, "unknown kind 3"),
    ],
)
def test_wrong_kind(kind: object, fragment: str) -> None:
    assert_issue(errors_of(with_value(manifest(), "kind", kind)), "kind", fragment)


@pytest.mark.parametrize(
    ("dotted", "path"),
    [
        ("kind", "kind"),
        ("apiVersion", "apiVersion"),
        ("metadata", "metadata"),
        ("spec", "spec"),
        ("metadata.name", "metadata.name"),
        ("spec.model", "spec.model"),
        ("spec.model.source", "spec.model.source"),
    ],
)
def test_missing_required_key(dotted: str, path: str) -> None:
    message = errors_of(without(manifest(), dotted))
    assert_issue(message, path, "required key is missing")


def test_wrong_api_version_gets_hint() -> None:
    message = errors_of(with_value(manifest(), "apiVersion", "qingliang.io/v2"))
    assert_issue(message, "apiVersion", "'qingliang.io/v2' is not allowed")
    assert "(did you mean 'qingliang.io/v1'?)" in message


# -------------------------------------------------------------------- YAML and documents

BASE_YAML = """\
apiVersion: qingliang.io/v1
kind: ModelDeployment
metadata:
  name: tiny
spec:
  model:
    source: /models/tiny
"""


@pytest.mark.parametrize(
    ("text", "line"),
    [
        (BASE_YAML.replace("  name: tiny", "  name: [tiny"), 5),
        (BASE_YAML.replace("    source: /models/tiny", "    source: /m\n   bad: indent"), 8),
        (BASE_YAML + "  engine: {kind: vllm\n", 9),
        ("apiVersion: qingliang.io/v1\nkind: ModelDeployment\n\tmetadata: {}\n", 3),
        (BASE_YAML.replace("kind: ModelDeployment", 'kind: "ModelDeployment'), 8),
    ],
)
def test_yaml_syntax_error_names_line(text: str, line: int) -> None:
    with pytest.raises(ManifestError) as info:
        parse_documents(text, SOURCE)
    message = str(info.value)
    assert re.match(rf"^m\.yaml: line {line}, column \d+: invalid YAML: ", message), message


def test_yaml_syntax_error_in_a_later_document() -> None:
    text = BASE_YAML + "---\n" + BASE_YAML.replace("name: tiny", "name: [x")
    with pytest.raises(ManifestError) as info:
        parse_documents(text, SOURCE)
    assert str(info.value).startswith("m.yaml: line 13, column "), str(info.value)


@pytest.mark.parametrize("text", ["", "\n\n", "# only a comment\n", "---\n", "---\n---\n...\n"])
def test_empty_file(text: str) -> None:
    with pytest.raises(ManifestError) as info:
        parse_documents(text, SOURCE)
    assert str(info.value) == "m.yaml: no manifest found (the file is empty)"


@pytest.mark.parametrize(
    ("text", "type_name"),
    [("- a\n- b\n", "list"), ("just words\n", "str"), ("42\n", "int"), ("true\n", "bool")],
)
def test_non_mapping_document(text: str, type_name: str) -> None:
    with pytest.raises(ManifestError) as info:
        parse_documents(text, SOURCE)
    assert str(info.value) == f"m.yaml: a manifest must be a mapping, got {type_name}"


def test_validate_document_rejects_non_mapping_directly() -> None:
    with pytest.raises(ManifestError, match=r"^x\.yaml: a manifest must be a mapping"):
        validate_document(["a"], "x.yaml")


def _yaml(doc: dict) -> str:
    return yaml.safe_dump(doc, sort_keys=False)


def test_multi_document_file_all_valid() -> None:
    text = _yaml(manifest("a")) + "---\n" + _yaml(manifest("b"))
    items = parse_documents(text, SOURCE)
    assert [i.name for i in items] == ["a", "b"]
    assert [i.source for i in items] == ["m.yaml[0]", "m.yaml[1]"]


def test_multi_document_file_with_one_bad_document() -> None:
    bad = with_value(manifest("b"), "spec.engine.max_model_len", "long")
    text = _yaml(manifest("a")) + "---\n" + _yaml(bad) + "---\n" + _yaml(manifest("c"))
    with pytest.raises(ManifestError) as info:
        parse_documents(text, SOURCE)
    message = str(info.value)
    assert message.splitlines() == [
        "m.yaml: spec.engine.max_model_len: (document 2) Input should be a valid integer, "
        "unable to parse string as an integer"
    ]


def test_multi_document_file_reports_every_bad_document() -> None:
    one = with_value(manifest("a"), "spec.engine.dtype", "fp64")
    two = with_value(manifest("b"), "spec.placement.cpus", 0)
    text = _yaml(one) + "---\n" + _yaml(two) + "---\n- not a mapping\n"
    with pytest.raises(ManifestError) as info:
        parse_documents(text, SOURCE)
    message = str(info.value)
    assert_issue(message, "spec.engine.dtype", "(document 1) 'fp64' is not allowed")
    assert_issue(message, "spec.placement.cpus", "(document 2) Input should be greater than 0")
    assert_issue(message, "", "(document 3) a manifest must be a mapping, got list")


def test_multi_document_numbering_counts_empty_documents() -> None:
    bad = with_value(manifest("b"), "spec.engine.dtype", "fp64")
    text = _yaml(manifest("a")) + "---\n---\n" + _yaml(bad)
    with pytest.raises(ManifestError) as info:
        parse_documents(text, SOURCE)
    assert "(document 3) 'fp64' is not allowed" in str(info.value)


# ------------------------------------------------------------------- files and folders


def write(path: Path, doc: dict | str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(doc if isinstance(doc, str) else _yaml(doc), encoding="utf-8")
    return path


def test_load_paths_reads_a_file_and_a_folder(tmp_path: Path) -> None:
    write(tmp_path / "one" / "a.yaml", manifest("a"))
    write(tmp_path / "one" / "nested" / "b.yml", manifest("b"))
    write(tmp_path / "one" / "notes.txt", "not a manifest")
    single = write(tmp_path / "c.yaml", manifest("c"))
    items = load_paths([tmp_path / "one", single])
    assert [i.name for i in items] == ["a", "b", "c"]
    assert items[0].source == str(tmp_path / "one" / "a.yaml")


def test_manifest_files_sorted_and_filtered(tmp_path: Path) -> None:
    for name in ("b.yaml", "a.yml", "c.json", "d.YAML.bak"):
        write(tmp_path / name, "x: 1\n")
    assert [p.name for p in manifest_files(tmp_path)] == ["a.yml", "b.yaml"]


def test_two_manifests_with_the_same_name_in_a_folder(tmp_path: Path) -> None:
    first = write(tmp_path / "a.yaml", manifest("tiny"))
    second = write(tmp_path / "b.yaml", manifest("tiny"))
    with pytest.raises(ManifestError) as info:
        load_paths([tmp_path])
    assert str(info.value) == (
        f"{second}: metadata.name: ModelDeployment 'tiny' is also defined in {first}"
    )


def test_same_name_twice_in_one_file(tmp_path: Path) -> None:
    f = write(tmp_path / "a.yaml", _yaml(manifest("tiny")) + "---\n" + _yaml(manifest("tiny")))
    with pytest.raises(ManifestError) as info:
        load_paths([f])
    assert f"{f}[1]: metadata.name: ModelDeployment 'tiny' is also defined in {f}[0]" in str(
        info.value
    )


def test_folder_with_no_yaml(tmp_path: Path) -> None:
    write(tmp_path / "readme.md", "# nothing here")
    with pytest.raises(ManifestError) as info:
        load_paths([tmp_path])
    assert str(info.value) == f"{tmp_path}: no *.yaml or *.yml files in this folder"


def test_empty_folder(tmp_path: Path) -> None:
    with pytest.raises(ManifestError, match="no \\*.yaml or \\*.yml files in this folder"):
        manifest_files(tmp_path)


def test_missing_path(tmp_path: Path) -> None:
    with pytest.raises(ManifestError) as info:
        load_paths([tmp_path / "nope.yaml"])
    assert str(info.value) == f"{tmp_path / 'nope.yaml'}: no such file or folder"


def test_unreadable_file(tmp_path: Path) -> None:
    bad = tmp_path / "latin1.yaml"
    bad.write_bytes("name: caf\xe9\n".encode("latin-1"))
    with pytest.raises(ManifestError, match=rf"^{re.escape(str(bad))}: cannot read: "):
        load_paths([bad])


def test_every_file_error_is_reported_together(tmp_path: Path) -> None:
    write(tmp_path / "a.yaml", with_value(manifest("a"), "spec.engine.dtype", "fp64"))
    write(tmp_path / "b.yaml", "")
    write(tmp_path / "c.yaml", manifest("c"))
    write(tmp_path / "d.yaml", "kind: [\n")
    with pytest.raises(ManifestError) as info:
        load_paths([tmp_path, tmp_path / "missing"])
    message = str(info.value)
    assert f"{tmp_path / 'a.yaml'}: spec.engine.dtype: 'fp64' is not allowed" in message
    assert f"{tmp_path / 'b.yaml'}: no manifest found (the file is empty)" in message
    assert f"{tmp_path / 'd.yaml'}: line 2, column 1: invalid YAML" in message
    assert f"{tmp_path / 'missing'}: no such file or folder" in message
    assert "c.yaml" not in message


# --------------------------------------------------------------- shipped files and docs

#: Every YAML file under deploy/ but the demo descriptors and Prometheus's config example
#: (deploy/grafana/: not manifests).
DEPLOY_FILES = sorted(
    p
    for p in (REPO / "deploy").rglob("*")
    if p.suffix in (".yaml", ".yml")
    and p.is_file()
    and p.name != "demo.yaml"
    and p.parent.name != "grafana"
)
#: The domain demonstrations' descriptors (not manifests: `qingliang demo` reads them).
DEMO_FILES = sorted((REPO / "deploy" / "domains").glob("*/demo.yaml"))


@pytest.mark.parametrize("path", DEMO_FILES, ids=[p.parent.name for p in DEMO_FILES])
def test_every_demo_bundle_loads(path: Path) -> None:
    from qingliang.platform.control.demos import Bundle

    bundle = Bundle.load(path.parent)
    assert bundle.manifests and all(m.is_file() for m in bundle.manifests)


def _is_qingliang(doc: object) -> bool:
    """KubeRay / Kubernetes files also live under deploy/: check only our own kinds."""
    if not isinstance(doc, dict):
        return True
    api = doc.get("apiVersion")
    return api is None or str(api).startswith("qingliang.io/")


@pytest.mark.parametrize("path", DEPLOY_FILES, ids=[str(p.relative_to(REPO)) for p in DEPLOY_FILES])
def test_every_manifest_under_deploy_validates(path: Path) -> None:
    text = path.read_text(encoding="utf-8")
    docs = [d for d in yaml.safe_load_all(text) if d is not None]
    ours = [d for d in docs if _is_qingliang(d)]
    if not ours:
        pytest.skip("not a Qingliang manifest (Kubernetes / KubeRay file)")
    for i, doc in enumerate(ours):
        validate_document(doc, f"{path}[{i}]")


@pytest.mark.parametrize(
    "name", ["qwen-gpu-awq.yaml", "npu-ascend.yaml", "smollm-transformers.yaml"]
)
def test_example_exists(name: str) -> None:
    assert (REPO / "deploy" / "examples" / name).is_file()


def test_examples_have_distinct_names() -> None:
    items = load_paths([REPO / "deploy" / "examples"])
    assert len({i.name for i in items}) == len(items) >= 3


def _field_names(model: type[BaseModel]) -> set[str]:
    names: set[str] = set()
    for name, info in model.model_fields.items():
        names.add(info.alias or name)
        inner = loader_mod._inner_model(info.annotation)
        if isinstance(inner, type) and issubclass(inner, BaseModel):
            names |= _field_names(inner)
    return names


def test_docs_describe_every_field_and_method() -> None:
    text = (REPO / "docs" / "manifests.md").read_text(encoding="utf-8")
    missing = sorted(n for n in _field_names(ModelDeployment) if f"`{n}`" not in text)
    assert not missing, f"docs/manifests.md does not mention: {missing}"
    missing = sorted(m for m in CATALOG if f"`{m}`" not in text)
    assert not missing, f"docs/manifests.md lacks quantisation methods: {missing}"


@pytest.mark.parametrize("module", [md_mod, loader_mod])
def test_docstring_examples_run(module: object) -> None:
    result = doctest.testmod(module)  # type: ignore[arg-type]
    assert result.failed == 0 and result.attempted > 0


def test_yaml_examples_in_the_docs_validate() -> None:
    text = (REPO / "docs" / "manifests.md").read_text(encoding="utf-8")
    blocks = re.findall(r"```yaml\n(.*?)```", text, flags=re.S)
    assert len(blocks) >= 3
    names = [
        parse_documents(block, f"docs/manifests.md[{i}]")[0].name for i, block in enumerate(blocks)
    ]
    assert len(set(names)) == len(names)

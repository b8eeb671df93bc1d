"""Plan compilation: a validated ModelDeployment plus a HardwareProfile → DeploymentPlan.

The hardware is passed in, so these tests plan for AVX-512 CPUs, GPU and NPU nodes
from any laptop.
"""

from __future__ import annotations

import dataclasses
import doctest
import importlib.util
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

import qingliang.platform.lifecycle.pipelines.kinds  # noqa: F401
from qingliang.platform.errors import ManifestError
from qingliang.platform.manifests.loader import load_paths
from qingliang.serving import plan as plan_mod
from qingliang.serving.manifest import ModelDeployment, quantization_catalog
from qingliang.serving.plan import DeploymentPlan, HardwareProfile, compile_plan

CATALOG = quantization_catalog()
GPU = {"accelerator": "gpu", "gpus": 1}
NPU = {"accelerator": "npu", "npus": 1}
PLACEMENT: dict[str, dict] = {"cpu": {}, "gpu": GPU, "npu": NPU}

AVX2 = HardwareProfile(cpu_isa="avx2", vllm=True)
NO_VLLM = HardwareProfile(cpu_isa="avx2", vllm=False)


def deployment(name: str = "tiny", *, metadata: dict | None = None, **spec: Any):
    return ModelDeployment.model_validate(
        {
            "apiVersion": "qingliang.io/v1",
            "kind": "ModelDeployment",
            "metadata": {"name": name, **(metadata or {})},
            "spec": {"model": {"source": "/models/tiny"}, **spec},
        }
    )


def plan(profile: HardwareProfile = AVX2, **spec: Any) -> DeploymentPlan:
    return compile_plan(deployment(**spec), profile, "m.yaml")


# ------------------------------------------------------------------------------ engine


@pytest.mark.parametrize(
    ("method", "acc", "vllm", "engine"),
    [
        ("none", "cpu", True, "vllm"),
        ("none", "cpu", False, "transformers"),
        ("none", "gpu", True, "vllm"),
        ("none", "gpu", False, "transformers"),
        ("none", "npu", True, "vllm"),
        ("fp8_per_channel", "cpu", True, "vllm"),
        ("w8a8_int8", "cpu", True, "vllm"),
        ("w8a8_int8", "gpu", True, "vllm"),
        ("awq", "gpu", True, "vllm"),
        ("gptq", "gpu", True, "vllm"),
        ("fp8", "gpu", True, "vllm"),
        ("compressed-tensors", "gpu", True, "vllm"),
        ("compressed-tensors", "npu", True, "vllm"),
        ("bnb_nf4", "cpu", True, "transformers"),
        ("bnb_nf4", "cpu", False, "transformers"),
        ("bnb_int8", "gpu", True, "transformers"),
        ("bnb_int8", "gpu", False, "transformers"),
    ],
)
def test_auto_engine(method: str, acc: str, vllm: bool, engine: str) -> None:
    profile = HardwareProfile(cpu_isa="avx512", vllm=vllm)
    p = plan(profile, quantization={"method": method}, placement=PLACEMENT[acc])
    assert p.engine == engine


def test_auto_engine_follows_the_table() -> None:
    for method, row in CATALOG.items():
        acc = row["accelerators"][0]
        p = plan(AVX2, quantization={"method": method}, placement=PLACEMENT[acc])
        expected = "vllm" if "vllm" in row["engines"] else "transformers"
        assert p.engine == expected, method


@pytest.mark.parametrize(
    "spec",
    [
        # No transformers fallback exists for these: auto must not silently pick it.
        {"quantization": {"method": "awq"}, "placement": GPU},
        {"quantization": {"method": "fp8_per_channel"}},
        {"quantization": {"method": "w8a8_int8"}},
        {"placement": NPU},
        {"placement": {"accelerator": "gpu", "gpus": 2, "tensor_parallel_size": 2}},
        {"engine": {"kind": "vllm"}},
        {"engine": {"kind": "vllm"}, "placement": GPU},
    ],
)
def test_vllm_needed_but_not_installed(spec: dict) -> None:
    with pytest.raises(ManifestError) as info:
        plan(NO_VLLM, **spec)
    assert str(info.value).startswith("m.yaml: spec.engine.kind: vllm is not installed here")
    assert [i.path for i in info.value.issues] == ["spec.engine.kind"]


def test_plan_error_without_source_names_only_the_field() -> None:
    with pytest.raises(ManifestError) as info:
        compile_plan(deployment(engine={"kind": "vllm"}), NO_VLLM)
    assert str(info.value).startswith("spec.engine.kind: vllm is not installed")


@pytest.mark.parametrize("vllm", [True, False])
def test_explicit_transformers_is_kept(vllm: bool) -> None:
    profile = HardwareProfile(vllm=vllm)
    assert plan(profile, engine={"kind": "transformers"}).engine == "transformers"


# ------------------------------------------------------------------------------- dtype


@pytest.mark.parametrize(
    ("isa", "acc", "engine", "dtype"),
    [
        ("avx2", "cpu", "vllm", "float32"),
        ("avx2", "cpu", "transformers", "float32"),
        ("other", "cpu", "vllm", "float32"),
        ("avx512", "cpu", "vllm", "bfloat16"),
        ("avx512", "cpu", "transformers", "bfloat16"),
        ("amx", "cpu", "vllm", "bfloat16"),
        ("avx2", "gpu", "vllm", "auto"),
        ("amx", "gpu", "transformers", "auto"),
        ("avx2", "npu", "vllm", "auto"),
    ],
)
def test_auto_dtype(isa: str, acc: str, engine: str, dtype: str) -> None:
    profile = HardwareProfile(cpu_isa=isa, vllm=True)  # type: ignore[arg-type]
    p = plan(profile, engine={"kind": engine}, placement=PLACEMENT[acc])
    assert p.dtype == dtype


@pytest.mark.parametrize(
    ("isa", "acc", "dtype"),
    [
        ("avx2", "cpu", "bfloat16"),
        ("amx", "cpu", "float32"),
        ("avx2", "gpu", "float16"),
        ("avx512", "gpu", "bfloat16"),
        ("avx2", "npu", "float16"),
        ("avx2", "npu", "float32"),
    ],
)
def test_explicit_dtype_is_kept(isa: str, acc: str, dtype: str) -> None:
    profile = HardwareProfile(cpu_isa=isa, vllm=True)  # type: ignore[arg-type]
    assert plan(profile, engine={"dtype": dtype}, placement=PLACEMENT[acc]).dtype == dtype


# ------------------------------------------------------------------------ actor options


@pytest.mark.parametrize(
    ("placement", "actor"),
    [
        ({}, {"num_cpus": 1.0}),
        ({"cpus": 4}, {"num_cpus": 4.0}),
        ({"cpus": 2, "memory_gib": 1.5}, {"num_cpus": 2.0, "memory": 1610612736}),
        (
            {"accelerator": "cpu", "accelerator_type": "Xeon-SPR"},
            {"num_cpus": 1.0, "accelerator_type": "Xeon-SPR"},
        ),
        ({"accelerator": "gpu", "gpus": 1}, {"num_cpus": 1.0, "num_gpus": 1}),
        (
            {"accelerator": "gpu", "gpus": 1, "cpus": 8, "accelerator_type": "H100"},
            {"num_cpus": 8.0, "num_gpus": 1, "accelerator_type": "H100"},
        ),
        # With tensor parallelism vLLM's own workers hold the GPUs, not the replica.
        (
            {"accelerator": "gpu", "gpus": 4, "tensor_parallel_size": 4},
            {"num_cpus": 1.0, "num_gpus": 0},
        ),
        ({"accelerator": "npu", "npus": 1}, {"num_cpus": 1.0, "resources": {"NPU": 1}}),
        (
            {
                "accelerator": "npu",
                "npus": 2,
                "tensor_parallel_size": 2,
                "accelerator_type": "Ascend910B",
                "memory_gib": 64,
            },
            {
                "num_cpus": 1.0,
                "resources": {"NPU": 2},
                "accelerator_type": "Ascend910B",
                "memory": 64 * 1024**3,
            },
        ),
    ],
)
def test_ray_actor_options(placement: dict, actor: dict) -> None:
    p = plan(AVX2, placement=placement)
    assert p.ray_actor_options == actor
    assert p.accelerator == placement.get("accelerator", "cpu")
    assert p.placement == deployment(placement=placement).spec.placement


def test_memory_is_whole_bytes() -> None:
    p = plan(AVX2, placement={"memory_gib": 0.3})
    assert isinstance(p.ray_actor_options["memory"], int)


# -------------------------------------------------------------------------- autoscaling


@pytest.mark.parametrize(
    ("autoscaling", "expected"),
    [
        (
            {},
            {
                "min_replicas": 1,
                "max_replicas": 1,
                "initial_replicas": None,
                "target_ongoing_requests": 4.0,
                "upscale_delay_s": 10.0,
                "downscale_delay_s": 300.0,
            },
        ),
        (
            {
                "min_replicas": 0,
                "max_replicas": 8,
                "initial_replicas": 2,
                "target_ongoing_requests": 16,
                "upscale_delay_s": 1,
                "downscale_delay_s": 60,
            },
            {
                "min_replicas": 0,
                "max_replicas": 8,
                "initial_replicas": 2,
                "target_ongoing_requests": 16.0,
                "upscale_delay_s": 1.0,
                "downscale_delay_s": 60.0,
            },
        ),
    ],
)
def test_autoscaling_config(autoscaling: dict, expected: dict) -> None:
    assert plan(AVX2, autoscaling=autoscaling).autoscaling_config == expected


def test_request_limits_come_from_the_engine_section() -> None:
    p = plan(AVX2, engine={"max_concurrent_requests": 7, "max_queued_requests": 3})
    assert (p.max_ongoing_requests, p.max_queued_requests) == (7, 3)
    assert p.options.max_concurrent_requests == 7


# ------------------------------------------------------------------------ quantisation


VLLM_METHODS = [m for m, row in CATALOG.items() if "vllm" in row["engines"]]
TRANSFORMERS_METHODS = [m for m, row in CATALOG.items() if "vllm" not in row["engines"]]


@pytest.mark.parametrize("method", VLLM_METHODS)
def test_engine_quantization_name_comes_from_the_yaml(method: str) -> None:
    row = CATALOG[method]
    p = plan(AVX2, quantization={"method": method}, placement=PLACEMENT[row["accelerators"][0]])
    assert p.quantization == method
    assert p.engine_quantization == row["vllm_name"]


@pytest.mark.parametrize(
    ("method", "vllm_name"),
    [
        ("w8a8_int8", "compressed-tensors"),
        ("fp8_per_channel", "fp8_per_channel"),
        ("awq", "awq"),
        ("gptq", "gptq"),
        ("fp8", "fp8"),
    ],
)
def test_engine_quantization_pinned(method: str, vllm_name: str) -> None:
    acc = CATALOG[method]["accelerators"][0]
    p = plan(AVX2, quantization={"method": method}, placement=PLACEMENT[acc])
    assert p.engine_quantization == vllm_name


@pytest.mark.parametrize("method", TRANSFORMERS_METHODS)
def test_transformers_methods_have_no_vllm_name(method: str) -> None:
    p = plan(AVX2, quantization={"method": method})
    assert (p.engine, p.quantization, p.engine_quantization) == ("transformers", method, None)


@pytest.mark.parametrize("engine", ["vllm", "transformers"])
def test_no_quantization(engine: str) -> None:
    p = plan(AVX2, engine={"kind": engine})
    assert (p.quantization, p.engine_quantization) == (None, None)


# ------------------------------------------------------------------ the rest of the plan


def test_lora_and_metadata_are_carried() -> None:
    md = deployment(
        "qwen",
        metadata={"labels": {"team": "nlp", "domain": "law"}, "description": "Qwen"},
        model={"source": "packaged:smollm2-135m-instruct", "trust_remote_code": True},
        lora={"adapters": {"sql": "/a/sql", "law": "/a/law"}, "max_rank": 32},
    )
    p = compile_plan(md, AVX2)
    assert p.name == "qwen"
    assert p.source == "packaged:smollm2-135m-instruct"
    assert p.lora_enabled is True
    assert (p.max_loras, p.max_lora_rank) == (4, 32)
    assert p.adapters == (("law", "/a/law"), ("sql", "/a/sql"))
    assert p.adapter_map == {"law": "/a/law", "sql": "/a/sql"}
    assert p.labels == (("domain", "law"), ("team", "nlp"))
    assert p.description == "Qwen"
    assert p.trust_remote_code is True
    assert p.model_path is None
    assert p.options is md.spec.engine


@pytest.mark.parametrize(
    ("lora", "enabled"),
    [({}, False), ({"enabled": True}, True), ({"enabled": False}, False)],
)
def test_lora_enabled_without_adapters(lora: dict, enabled: bool) -> None:
    p = plan(AVX2, lora=lora)
    assert p.lora_enabled is enabled
    assert p.adapters == ()


# ------------------------------------------------------------------------ immutability


@pytest.mark.parametrize(
    ("field", "value"),
    [("engine", "transformers"), ("dtype", "float16"), ("name", "x"), ("model_path", "/m")],
)
def test_plans_are_frozen(field: str, value: object) -> None:
    p = plan()
    with pytest.raises(dataclasses.FrozenInstanceError):
        setattr(p, field, value)


def test_plan_parts_are_frozen() -> None:
    p = plan()
    with pytest.raises(ValidationError):
        p.options.max_num_seqs = 1  # type: ignore[misc]
    with pytest.raises(ValidationError):
        p.placement.cpus = 2  # type: ignore[misc]
    assert isinstance(p.adapters, tuple) and isinstance(p.labels, tuple)


def test_with_model_path_returns_a_copy() -> None:
    p = plan()
    q = p.with_model_path("/cache/tiny")
    assert q.model_path == "/cache/tiny"
    assert p.model_path is None
    assert dataclasses.replace(q, model_path=None) == p


def test_plans_are_hashable_and_deterministic() -> None:
    a, b = plan(), plan()
    assert a == b
    assert hash(a) == hash(b)
    assert len({a, b}) == 1


def test_hardware_profile_is_frozen() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        AVX2.vllm = False  # type: ignore[misc]


# ------------------------------------------------------------------- hardware detection


@pytest.mark.parametrize(
    ("flags", "isa"),
    [
        ("flags : fpu sse avx avx2 avx512f avx512_bf16 amx_tile amx_bf16\n", "amx"),
        ("flags : fpu avx2 avx512f avx512_bf16\n", "avx512"),
        ("flags : fpu avx2 avx512f\n", "avx2"),  # AVX-512 without bf16 plans like AVX2
        ("flags : fpu avx2\n", "avx2"),
        ("flags : fpu sse4_2\n", "other"),
        ("processor : 0\n", "other"),
    ],
)
def test_detect_reads_cpu_flags(
    flags: str, isa: str, monkeypatch: pytest.MonkeyPatch, tmp_path
) -> None:
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor : 0\n" + flags, encoding="utf-8")
    real_open = open

    def fake_open(path, *args, **kwargs):
        return real_open(cpuinfo if path == "/proc/cpuinfo" else path, *args, **kwargs)

    monkeypatch.setattr(plan_mod, "open", fake_open, raising=False)
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1")
    profile = HardwareProfile.detect()
    assert profile == HardwareProfile(cpu_isa=isa, vllm=False, gpus=2)  # type: ignore[arg-type]


def test_detect_without_proc(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_proc(*args, **kwargs):
        raise OSError("no /proc here")

    monkeypatch.setattr(plan_mod, "open", no_proc, raising=False)
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: object())
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    assert HardwareProfile.detect() == HardwareProfile(cpu_isa="other", vllm=True, gpus=0)


def test_docstring_example_runs() -> None:
    result = doctest.testmod(plan_mod)
    assert result.failed == 0 and result.attempted > 0


EXAMPLES = [
    p
    for p in sorted((Path(__file__).resolve().parents[3] / "deploy" / "examples").glob("*.yaml"))
    if "kind: ModelDeployment" in p.read_text(encoding="utf-8")
]


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.name for p in EXAMPLES])
@pytest.mark.parametrize("isa", ["avx2", "amx"])
def test_examples_compile(path: Path, isa: str) -> None:
    (item,) = load_paths([path])
    profile = HardwareProfile(cpu_isa=isa, vllm=True)  # type: ignore[arg-type]
    p = compile_plan(item.manifest, profile, item.source)  # type: ignore[arg-type]
    assert p.name == item.name


def test_example_plans() -> None:
    root = Path(__file__).resolve().parents[3] / "deploy" / "examples"
    plans = {
        i.name: compile_plan(i.manifest, AVX2, i.source)  # type: ignore[arg-type]
        for i in load_paths([root])
        if i.kind == "ModelDeployment"
    }
    assert plans["smollm"].engine == "transformers"
    assert plans["smollm"].dtype == "float32"
    gpu = plans["qwen-7b-awq"]
    assert (gpu.engine, gpu.engine_quantization, gpu.lora_enabled) == ("vllm", "awq", True)
    assert gpu.ray_actor_options["num_gpus"] == 1
    npu = plans["qwen-7b-ascend"]
    assert npu.ray_actor_options["resources"] == {"NPU": 2}
    assert npu.ray_actor_options["accelerator_type"] == "Ascend910B"

"""How a plan becomes vLLM's arguments and environment (no vLLM import, no engine)."""

from __future__ import annotations

import json

import pytest

from qingliang.platform.errors import EngineError
from qingliang.serving.engines.vllm_engine import (
    _FORCED,
    _vllm_rank,
    cpu_environment,
    cpu_threads,
    engine_argv,
)
from qingliang.serving.manifest import ModelDeployment
from qingliang.serving.plan import HardwareProfile, compile_plan


def plan(spec: dict, profile: HardwareProfile | None = None):
    md = ModelDeployment.model_validate(
        {
            "apiVersion": "qingliang.io/v1",
            "kind": "ModelDeployment",
            "metadata": {"name": "m"},
            "spec": {"model": {"source": "/models/m"}} | spec,
        }
    )
    return compile_plan(md, profile or HardwareProfile(cpu_isa="avx2")).with_model_path("/models/m")


def arg(argv: list[str], flag: str) -> str:
    return argv[argv.index(flag) + 1]


def test_cpu_profile_runs_in_process_with_typed_options() -> None:
    argv = engine_argv(plan({"engine": {"max_model_len": 2048, "max_num_seqs": 4, "seed": 7}}))
    assert arg(argv, "--model") == "/models/m"
    assert arg(argv, "--served-model-name") == "m"
    assert arg(argv, "--dtype") == "float32"  # AVX2: bf16 is emulated
    assert arg(argv, "--max-model-len") == "2048"
    assert arg(argv, "--max-num-seqs") == "4"
    assert arg(argv, "--seed") == "7"
    assert arg(argv, "--distributed-executor-backend") == "uni"
    assert "--enforce-eager" in argv and "--enable-lora" not in argv
    assert "--tensor-parallel-size" not in argv


def test_tool_call_parser_is_the_manifests() -> None:
    assert arg(engine_argv(plan({})), "--tool-call-parser") == "hermes"
    argv = engine_argv(plan({"engine": {"tool_call_parser": "llama3_json"}}))
    assert arg(argv, "--tool-call-parser") == "llama3_json"
    assert "--enable-auto-tool-choice" in argv
    # The choices reach the replica through the Serve config's plan (options).
    p = plan({"engine": {"tool_call_parser": "mistral", "lenient_tool_calls": False}})
    again = type(p).from_dict(json.loads(json.dumps(p.to_dict())))
    assert (again.options.tool_call_parser, again.options.lenient_tool_calls) == ("mistral", False)


def test_lora_rank_is_rounded_up_to_a_value_vllm_accepts() -> None:
    argv = engine_argv(plan({"lora": {"enabled": True, "max_rank": 12, "max_adapters": 3}}))
    assert arg(argv, "--max-lora-rank") == "16"
    assert arg(argv, "--max-loras") == "3"
    assert [_vllm_rank(r) for r in (1, 8, 9, 64, 300, 1000)] == [1, 8, 16, 64, 320, 512]


def test_gpu_profile_sets_tensor_parallelism_and_memory_share() -> None:
    argv = engine_argv(
        plan(
            {
                "engine": {"gpu_memory_utilization": 0.8},
                "quantization": {"method": "awq"},
                "placement": {"accelerator": "gpu", "gpus": 2, "tensor_parallel_size": 2},
            }
        )
    )
    assert arg(argv, "--tensor-parallel-size") == "2"
    assert arg(argv, "--gpu-memory-utilization") == "0.8"
    assert arg(argv, "--distributed-executor-backend") == "ray"
    assert arg(argv, "--quantization") == "awq"


def test_w8a8_is_served_as_compressed_tensors() -> None:
    argv = engine_argv(plan({"quantization": {"method": "w8a8_int8"}}))
    assert arg(argv, "--quantization") == "compressed-tensors"


def test_unresolved_source_is_refused() -> None:
    p = plan({})
    with pytest.raises(EngineError, match="not resolved"):
        engine_argv(p.__class__(**{**p.__dict__, "model_path": None}))


@pytest.mark.parametrize(
    ("placement", "engine", "threads"),
    [({"cpus": 1}, {"cpu_threads": 2}, 2), ({"cpus": 2}, {}, 2), ({"cpus": 0.5}, {}, 1)],
)
def test_cpu_engine_threads_override_rays_omp_setting(placement, engine, threads) -> None:
    p = plan({"placement": placement, "engine": {"kv_cache_gib": 3, **engine}})
    env = cpu_environment(p)
    assert cpu_threads(p) == threads
    # Ray pre-sets OMP_NUM_THREADS to the actor's num_cpus; the engine must override it.
    assert env["OMP_NUM_THREADS"] == str(threads) and "OMP_NUM_THREADS" in _FORCED
    assert env["VLLM_CPU_KVCACHE_SPACE"] == "3"  # an integer: vLLM rejects '3.0'
    assert env["VLLM_ENABLE_V1_MULTIPROCESSING"] == "0"


def test_gpu_environment_leaves_threads_alone() -> None:
    env = cpu_environment(plan({"placement": {"accelerator": "gpu", "gpus": 1}}))
    assert "OMP_NUM_THREADS" not in env and "VLLM_CPU_KVCACHE_SPACE" not in env


def test_a_separate_tokenizer_is_passed_to_vllm() -> None:
    argv = engine_argv(plan({"model": {"source": "/models/m", "tokenizer": "/tok/m"}}))
    assert arg(argv, "--tokenizer") == "/tok/m"
    assert "--tokenizer" not in engine_argv(plan({}))

"""How a plan becomes vLLM's arguments and environment, and how ``spec.engine.vllm_args``
is checked (no engine; the last tests import vLLM's parser to hold the pinned tables to it)."""

from __future__ import annotations

import ast
import importlib.util
import json
from pathlib import Path

import pytest
from pydantic import ValidationError

from qingliang.platform.errors import EngineError
from qingliang.serving.engines import vllm_args_table
from qingliang.serving.engines.vllm_engine import (
    _FORCED,
    _vllm_rank,
    cpu_environment,
    cpu_threads,
    engine_argv,
    stats_enabled,
)
from qingliang.serving.families import default_tool_call_parser, read_config
from qingliang.serving.manifest import ModelDeployment, reasoning_parsers
from qingliang.serving.plan import HardwareProfile, compile_plan
from qingliang.serving.vllm_args import option_table, policy


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


# ------------------------------------------------------ spec.engine.vllm_args (checked)


def md_error(engine: dict, **spec: dict) -> str:
    with pytest.raises(ValidationError) as info:
        plan({"engine": engine, **spec})
    return str(info.value)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ({"kv-cache-dtyp": "fp8"}, "not an option of vLLM 0.32.0 (did you mean 'kv-cache-dtype'?)"),
        ({"enable-prefix-cache": True}, "(did you mean 'enable-prefix-caching'?)"),
        ({"--stream-interval": 4}, "without the leading '--'"),
        ({"no-enable-prefix-caching": True}, "write `enable-prefix-caching: false`"),
        ({"stream-interval": "four"}, "stream-interval: expected an integer, got 'four'"),
        ({"stream-interval": True}, "stream-interval: expected an integer, got True"),
        ({"enable-prefix-caching": "yes"}, "enable-prefix-caching: expected true or false"),
        ({"kv-cache-dtype": "fp9"}, "kv-cache-dtype: 'fp9' is not one of auto, "),
        ({"speculative-config": 3}, "speculative-config: expected a mapping"),
        ({"max-num-batched-tokens": 4}, "by the typed field spec.engine.max_num_batched_tokens"),
        ({"max_model_len": 4096}, "max-model-len: set by the typed field spec.engine.max_model_"),
        ({"tensor-parallel-size": 2}, "spec.placement.tensor_parallel_size; use that instead"),
        ({"pipeline-parallel-size": 2}, "spec.placement.pipeline_parallel_size; use that instead"),
        ({"quantization": "awq"}, "set by the typed field spec.quantization.method"),
        ({"tool-call-parser": "mistral"}, "set by the typed field spec.engine.tool_call_parser"),
        ({"device-memory-utilization": 0.5}, "spec.engine.gpu_memory_utilization"),
        ({"port": 9000}, "port: the platform sets this; the gateway listens"),
        ({"host": "0.0.0.0"}, "host: the platform sets this"),
        ({"api-key": "x"}, "api-key: the platform sets this"),
        ({"enable-log-requests": True}, "prompts are never logged"),
        ({"distributed-executor-backend": "mp"}, "picks it from spec.placement"),
        ({"stream-interval": None}, "stream-interval: give a value"),
    ],
)  # fmt: skip
def test_bad_vllm_args_are_named_with_the_reason(args: dict, message: str) -> None:
    text = md_error({"vllm_args": args})
    assert "spec.engine.vllm_args" in text
    assert message in text


def test_vllm_args_need_the_vllm_engine() -> None:
    text = md_error({"kind": "transformers", "vllm_args": {"stream-interval": 2}})
    assert "engine.vllm_args apply to the vLLM engine" in text


GOOD_ARGS = {
    "enable_prefix_caching": False,  # underscores read as dashes
    "kv-cache-dtype": "fp8",
    "speculative-config": {"method": "ngram", "num_speculative_tokens": 3, "prompt_lookup_max": 4},
    "chat-template": "{% for m in messages %}{{ m.content }}{% endfor %}",
    "stream-interval": 4,
    "max-num-scheduled-tokens": 512,
    "cudagraph-capture-sizes": [1, 2, 4],
    "optimization-level": 0,
    "hf-overrides": {"rope_theta": 20000},
}


def test_vllm_args_reach_the_argv_after_the_typed_fields() -> None:
    argv = engine_argv(plan({"engine": {"vllm_args": GOOD_ARGS}}))
    tail = argv[argv.index("--no-enable-prefix-caching") :]
    assert tail == [
        "--no-enable-prefix-caching",
        "--kv-cache-dtype=fp8",
        '--speculative-config={"method":"ngram","num_speculative_tokens":3,"prompt_lookup_max":4}',
        "--chat-template={% for m in messages %}{{ m.content }}{% endfor %}",
        "--stream-interval=4",
        "--max-num-scheduled-tokens=512",
        "--cudagraph-capture-sizes",
        "1",
        "2",
        "4",
        "--optimization-level=0",
        '--hf-overrides={"rope_theta":20000}',
    ]
    # the deployment's own choice replaces the platform's default
    assert "--enable-prefix-caching" not in argv


def test_prefix_caching_is_on_and_stats_are_not_disabled_by_default() -> None:
    p = plan({})
    argv = engine_argv(p)
    assert "--enable-prefix-caching" in argv
    assert "--disable-log-stats" not in argv and stats_enabled(p)
    off = plan({"engine": {"vllm_args": {"disable-log-stats": True}}})
    assert "--disable-log-stats" in engine_argv(off) and not stats_enabled(off)


def test_pipeline_parallelism_is_placement() -> None:
    p = plan({"placement": {"accelerator": "gpu", "gpus": 4, "tensor_parallel_size": 2,
                            "pipeline_parallel_size": 2}})  # fmt: skip
    argv = engine_argv(p)
    assert arg(argv, "--pipeline-parallel-size") == "2"
    assert arg(argv, "--tensor-parallel-size") == "2"
    assert arg(argv, "--distributed-executor-backend") == "ray"
    assert p.ray_actor_options["num_gpus"] == 0  # vLLM's Ray workers hold the GPUs
    text = md_error({}, placement={"accelerator": "gpu", "gpus": 2, "tensor_parallel_size": 2,
                                   "pipeline_parallel_size": 2})  # fmt: skip
    assert "tensor_parallel_size (2) × pipeline_parallel_size (2) must equal the gpus" in text
    text = md_error({}, placement={"pipeline_parallel_size": 2})
    assert "pipeline_parallel_size > 1 needs gpu or npu placement" in text


# ------------------------------------------------- tool-call and reasoning parsers


@pytest.mark.parametrize(
    ("config", "parser"),
    [
        ({"model_type": "llama", "vocab_size": 128256}, "llama3_json"),  # Llama 3.x
        ({"model_type": "llama", "vocab_size": 49152}, "hermes"),  # SmolLM2, the tiny test model
        ({"model_type": "llama4", "text_config": {"vocab_size": 202048}}, "llama4_pythonic"),
        ({"model_type": "mistral", "vocab_size": 32768}, "mistral"),
        ({"model_type": "deepseek_v3"}, "deepseek_v3"),
        ({"model_type": "qwen2"}, "hermes"),
        ({"model_type": "qwen3_moe"}, "hermes"),
        ({"model_type": "granite"}, "granite"),
        ({"model_type": "never-heard-of-it"}, "hermes"),
        ({}, "hermes"),  # no config.json (a GGUF file)
    ],
)
def test_the_tool_call_parser_follows_the_model_family(config: dict, parser: str) -> None:
    assert arg(engine_argv(plan({}), config), "--tool-call-parser") == parser
    # the manifest's own value wins
    chosen = plan({"engine": {"tool_call_parser": "pythonic"}})
    assert arg(engine_argv(chosen, config), "--tool-call-parser") == "pythonic"


def test_the_family_is_read_from_config_json(tmp_path) -> None:
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "mistral"}))
    assert default_tool_call_parser(read_config(str(tmp_path))) == "mistral"
    assert read_config(str(tmp_path / "missing")) == {}
    assert read_config(None) == {}


def test_the_reasoning_parser_is_checked_and_passed() -> None:
    assert "--reasoning-parser" not in engine_argv(plan({}))
    argv = engine_argv(plan({"engine": {"reasoning_parser": "deepseek_r1"}}))
    assert arg(argv, "--reasoning-parser") == "deepseek_r1"
    text = md_error({"reasoning_parser": "deepseek-r1"})
    assert "spec.engine.reasoning_parser" in text
    assert "unknown reasoning parser 'deepseek-r1' (did you mean 'deepseek_r1'?)" in text


# ------------------------------------- the pinned tables against the installed vLLM


def _vllm_dir() -> Path:
    spec = importlib.util.find_spec("vllm")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("vLLM is not installed")
    return Path(next(iter(spec.submodule_search_locations)))


def test_the_reasoning_parser_catalog_matches_the_installed_vllm() -> None:
    """serving/catalog/reasoning_parsers.yaml lists what vLLM registers (read, not imported)."""
    init = _vllm_dir() / "reasoning" / "__init__.py"
    registered: set[str] = set()
    for node in ast.walk(ast.parse(init.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Assign) and any(
            isinstance(t, ast.Name) and t.id == "_REASONING_PARSERS_TO_REGISTER"
            for t in node.targets
        ):
            assert isinstance(node.value, ast.Dict)
            registered = {k.value for k in node.value.keys if isinstance(k, ast.Constant)}
    assert registered, f"no _REASONING_PARSERS_TO_REGISTER in {init}"
    assert set(reasoning_parsers()) == registered


def test_every_policy_entry_names_a_vllm_option() -> None:
    options = option_table()["options"]
    rules = policy()
    unknown = sorted(n for n in [*rules["typed"], *rules["owned"]] if n not in options)
    assert not unknown, f"vllm_args_policy.yaml names options vLLM does not have: {unknown}"
    # every option engine_argv writes itself is one the manifest may not set again
    argv = engine_argv(plan({"lora": {"enabled": True},
                             "placement": {"accelerator": "gpu", "gpus": 2,
                                           "tensor_parallel_size": 2}}))  # fmt: skip
    written = {a[2:] for a in argv if a.startswith("--")} - {"enable-prefix-caching"}
    assert written <= set(rules["typed"]) | set(rules["owned"])


@pytest.fixture(scope="module")
def vllm_parser():
    _vllm_dir()
    from vllm.entrypoints.launchers.cli_args import make_arg_parser
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    return make_arg_parser(FlexibleArgumentParser())


def test_the_option_table_is_the_installed_vllms_parser(vllm_parser) -> None:
    """serving/catalog/vllm_args.json is what `vllm serve`'s parser has (regenerate it with
    `python -m qingliang.serving.engines.vllm_args_table`, see its docstring)."""
    from vllm import __version__

    table = vllm_args_table.table_from_parser(vllm_parser, __version__)
    assert table == option_table()
    path = Path(__file__).parents[3] / "serving" / "catalog" / "vllm_args.json"
    assert vllm_args_table.render(table) == path.read_text(encoding="utf-8")


def test_vllms_parser_reads_the_argv_as_the_manifest_meant(vllm_parser) -> None:
    p = plan(
        {"engine": {"vllm_args": GOOD_ARGS, "reasoning_parser": "deepseek_r1"}},
    )
    ns = vllm_parser.parse_args(engine_argv(p))
    assert ns.enable_prefix_caching is False
    assert ns.kv_cache_dtype == "fp8"
    assert ns.speculative_config == GOOD_ARGS["speculative-config"]
    assert ns.chat_template == GOOD_ARGS["chat-template"]
    assert (ns.stream_interval, ns.max_num_scheduled_tokens) == (4, 512)
    assert ns.cudagraph_capture_sizes == [1, 2, 4]
    assert ns.hf_overrides == {"rope_theta": 20000}
    assert (ns.reasoning_parser, ns.tool_call_parser) == ("deepseek_r1", "hermes")
    assert ns.disable_log_stats is False
    on = vllm_parser.parse_args(engine_argv(plan({})))
    assert on.enable_prefix_caching is True


def test_vllm_args_survive_the_serve_config_round_trip() -> None:
    """The replica rebuilds its plan from the Serve config's JSON: the options come back
    the same (canonical names), and the stats log line stays at one a minute."""
    p = plan({"engine": {"vllm_args": GOOD_ARGS}})
    again = type(p).from_dict(json.loads(json.dumps(p.to_dict())))
    assert again == p and hash(again) == hash(p)
    assert engine_argv(again) == engine_argv(p)
    assert cpu_environment(p)["VLLM_LOG_STATS_INTERVAL"] == "60"

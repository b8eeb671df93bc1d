"""bench/serving.py: rounds of both servers pooled into one comparison.

The benchmark's figures are what issue 18's targets are judged on, so the pooling and the
target arithmetic are checked here on hand-made rounds (no server is started).
"""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[3] / "bench"


@pytest.fixture(scope="module")
def bench():
    sys.path.insert(0, str(BENCH))
    try:
        spec = importlib.util.spec_from_file_location("bench_serving", BENCH / "serving.py")
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules["bench_serving"] = module  # dataclasses look their module up
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.modules.pop("bench_serving", None)
        sys.path.remove(str(BENCH))


def _phase(wall: float, by_process: dict[str, float] | None = None) -> dict:
    return {
        "wall_s": wall,
        "loadavg_before": [1.0, 1.0, 1.0],
        "loadavg_after": [1.2, 1.0, 1.0],
        "machine_busy_cpu_s": 2 * wall,
        "ours_cpu_s": 2 * wall,
        "others_cpu_s": 0.0,
        "steal_cpu_s": 0.0,
        "others_share_of_capacity": 0.0,
        "by_process": by_process or {},
    }


def _round(bench, tokens_per_request: int, wall: float, latencies_ms: list[float], rss: float):
    def load(n: int) -> dict:
        samples = [
            {"ok": True, "latency_s": 1.0, "ttft_s": 0.1, "completion_tokens": tokens_per_request}
            for _ in range(n)
        ]
        return {
            "concurrency": n,
            "truncated": False,
            "samples": samples,
            "wall_s": wall,
            "output_tokens_per_s": n * tokens_per_request / wall,
            "phase": _phase(wall, {"VLLM::EngineCore": 1.5 * wall, "ray::ProxyActor": 0.1}),
        }

    return {
        "engine_pid": 1,
        "engine_env": {},
        "non_loopback_listeners": [],
        "warmup": {"phase": _phase(1.0)},
        "latency": {
            "requests": len(latencies_ms),
            "errors": 0,
            "truncated": False,
            "samples_ms": latencies_ms,
            "phase": _phase(1.0),
        },
        "c1": load(1),
        "c8": load(8),
        "rss_gib": rss,
        "pss_gib": rss - 1.0,
        "process_cpu": {"c8": {"VLLM::EngineCore": 1.5 * wall, "ray::ProxyActor": 0.1}},
    }


def test_rounds_pool_as_all_tokens_over_all_wall_time(bench) -> None:
    rounds = [_round(bench, 64, 10.0, [80, 90], 8.0), _round(bench, 64, 6.0, [70, 100], 8.5)]
    pooled = bench._pool(rounds)
    # 8 requests x 64 tokens in each round, 16 s in all: 64 tokens/s, not the mean of
    # 51.2 and 85.3 tokens/s.
    assert pooled["c8"]["output_tokens_per_s"] == pytest.approx(1024 / 16)
    assert pooled["c8"]["per_round_tokens_per_s"] == pytest.approx([51.2, 512 / 6])
    assert pooled["latency"]["latency_s"]["p50"] == pytest.approx(0.085)
    assert pooled["rss_gib"] == 8.5
    assert pooled["process_cpu"]["c8"]["ray::ProxyActor"] == pytest.approx(0.2)
    assert pooled["c8"]["phase"]["wall_s"] == pytest.approx(16.0)


def test_targets_compare_against_vllm_direct_in_the_same_run(bench) -> None:
    gw = bench._pool([_round(bench, 60, 10.0, [85, 95], 7.0)])
    di = bench._pool([_round(bench, 64, 10.0, [70, 80], 5.0)])
    cmp_ = bench._compare(gw, di, {"up_to_first_token_s": 31.0}, {"launch_to_first_token_s": 20.0})
    assert cmp_["throughput_loss_c8"]["value"] == pytest.approx(1 - 60 / 64, abs=1e-4)
    assert cmp_["throughput_loss_c8"]["met"] is False  # 6.25 % > 5 %
    assert cmp_["added_p50_ms"]["value"] == pytest.approx(15.0)
    assert cmp_["added_p50_ms"]["met"] is True  # ≤ 15 ms
    assert cmp_["cold_start_over_direct_s"]["value"] == pytest.approx(11.0)
    assert cmp_["cold_start_over_direct_s"]["met"] is False
    assert cmp_["memory_over_direct_gib"]["value"] == pytest.approx(2.0)
    assert cmp_["memory_over_direct_gib"]["met"] is False


def test_process_names_drop_the_method_ray_runs(bench) -> None:
    sys.path.insert(0, str(BENCH))
    try:
        import _load
    finally:
        sys.path.remove(str(BENCH))
    assert _load.process_name(os.getpid()).startswith(("python", "pytest"))
    assert _load.process_name(2**22 + 12345) == f"pid {2**22 + 12345}"


def test_the_engine_start_phases_are_read_from_the_replica_log(bench, tmp_path: Path) -> None:
    import shutil

    from qingliang.platform.settings import Settings
    from qingliang.serving.engines.vllm_engine import start_phases_line

    platform = bench.Platform(tmp_path / "home", tmp_path)
    platform.launched_at = 1000.0
    logs = Settings(home=platform.home).ray_temp / "session_latest" / "logs"
    logs.mkdir(parents=True)
    try:
        marks = [
            ("begin", 1012.0),
            ("vllm imported", 1016.5),
            ("engine core ready (weights + KV cache + warm-up)", 1030.25),
        ]
        (logs / "worker-1.err").write_text(
            "INFO something else\n" + "INFO:x:" + start_phases_line("qwen", marks) + "\n"
        )
        assert platform.engine_phases() == [
            ("engine start begins", 12.0),
            ("vllm imported", 16.5),
            ("engine core ready (weights + KV cache + warm-up)", 30.25),
        ]
    finally:
        shutil.rmtree(Settings(home=platform.home).ray_temp, ignore_errors=True)


def test_server_timing_headers_give_the_exact_split_of_tiny_requests(bench) -> None:
    sys.path.insert(0, str(BENCH))
    try:
        import _load
    finally:
        sys.path.remove(str(BENCH))
    header = "gateway;dur=0.412, queue;dur=1.305, engine;dur=231.877"
    assert _load.server_timing(header) == {"gateway": 0.412, "queue": 1.305, "engine": 231.877}
    assert _load.server_timing("") == {}
    samples = [
        _load.Sample(True, 0.240, server_timing={"gateway": 1.0, "queue": 2.0, "engine": 230.0}),
        _load.Sample(True, 0.250, server_timing={"gateway": 3.0, "queue": 2.0, "engine": 240.0}),
        _load.Sample(True, 0.300),  # no header: not counted
    ]
    split = bench._server_timing(samples)
    assert split == {
        "requests": 2,
        "engine_ms": 235.0,
        "gateway_ms": 2.0,
        "queue_ms": 2.0,
        "client_ms": 245.0,
    }

"""Canary analysis: per-arm request counts (real SQLite), what the gateway's backend counts
(Serve handles faked at the handle boundary), and the promote step's verdicts (clock and
sleep injected). The pipeline path end to end is in test_pipelines.py."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from qingliang.platform.errors import ApiError, BadRequest
from qingliang.platform.lifecycle.pipelines import steps
from qingliang.platform.storage.arm_stats import ArmStats, ArmSummary, summary
from qingliang.platform.storage.state import StateStore
from qingliang.serving.deployments.handles import ServeBackend
from qingliang.serving.engine import StreamChunk
from qingliang.serving.metrics import ServingMetrics

# -- the counts -----------------------------------------------------------------------


def test_replicas_add_to_the_same_arm_and_latency_counts_answers_only(tmp_path: Path) -> None:
    now = time.time()
    one, two = ArmStats.for_home(tmp_path), ArmStats.for_home(tmp_path)
    for _ in range(3):
        one.observe("qwen", "faq-v2", ok=True, latency_s=0.2, at=now)
    two.observe("qwen", "faq-v2", ok=True, latency_s=0.5, at=now)
    two.observe("qwen", "faq-v2", ok=False, latency_s=30.0, at=now)  # a timeout: no latency
    two.observe("qwen", None, ok=True, latency_s=0.1, at=now)
    two.observe("other", None, ok=False, latency_s=0.1, at=now)
    one.close()
    two.close()

    arms = summary(tmp_path, "qwen", since=now)
    assert set(arms) == {"faq-v2", ""}
    canary = arms["faq-v2"]
    assert (canary.requests, canary.errors) == (5, 1)
    assert canary.error_rate == pytest.approx(0.2)
    assert canary.mean_latency_ms == pytest.approx((3 * 200 + 500) / 4, abs=0.1)
    assert arms[""].requests == 1
    assert summary(tmp_path, "nobody", since=now) == {}


def test_the_window_starts_at_the_canary(tmp_path: Path) -> None:
    now = time.time()
    stats = ArmStats.for_home(tmp_path)
    stats.observe("qwen", None, ok=False, latency_s=0.1, at=now - 3600)  # before the canary
    stats.observe("qwen", None, ok=True, latency_s=0.1, at=now)
    stats.close()
    assert summary(tmp_path, "qwen", since=now)[""].errors == 0
    assert summary(tmp_path, "qwen", since=now - 3600)[""].errors == 1
    assert summary(tmp_path, "qwen", since=now, until=now - 60) == {}


def test_counts_survive_a_failed_write(tmp_path: Path) -> None:
    blocker = tmp_path / "home"
    blocker.write_text("a file where the directory should be")
    stats = ArmStats(blocker / "arm_stats.sqlite", flush_s=3600)
    stats.observe("qwen", None, ok=True, latency_s=0.1)
    stats.flush()  # fails (logged), keeps the counts
    blocker.unlink()
    stats.close()
    assert summary(blocker, "qwen", since=time.time() - 60)[""].requests == 1


def test_no_file_means_no_figures(tmp_path: Path) -> None:
    assert summary(tmp_path, "qwen", since=0) == {}
    assert not (tmp_path / "arm_stats.sqlite").exists()


# -- what the gateway's backend counts ---------------------------------------------------


class FakeHandle:
    """A deployment handle whose replica answers, fails or streams as told."""

    def __init__(self, error: BaseException | None = None, fail_after: int | None = None):
        self.error = error
        self.fail_after = fail_after
        self.generate = SimpleNamespace(remote=self._generate)
        self.generate_stream = SimpleNamespace(remote=self._stream)

    def options(self, **_: Any) -> FakeHandle:
        return self

    async def _generate(
        self, endpoint: str, body: dict, adapter: str | None, meta: dict | None = None
    ) -> dict:
        if self.error is not None:
            raise self.error
        return {"choices": [{"message": {"content": "ok"}}]}

    async def _stream(
        self, endpoint: str, body: dict, adapter: str | None, meta: dict | None = None
    ) -> AsyncIterator[dict]:
        for i in range(3):
            if self.fail_after is not None and i == self.fail_after:
                assert self.error is not None
                raise self.error
            yield {"i": i}  # a chunk's dict, as ModelServer sends it


def _backend(tmp_path: Path, handle: FakeHandle) -> tuple[ServeBackend, ArmStats]:
    stats = ArmStats.for_home(tmp_path / "home", flush_s=3600)
    backend = ServeBackend(StateStore(tmp_path / "state.sqlite"), ServingMetrics(None), stats=stats)
    backend._handles["qwen"] = handle  # the Serve handle boundary
    return backend, stats


def _arms(tmp_path: Path, stats: ArmStats) -> dict[str, tuple[int, int]]:
    stats.close()
    got = summary(tmp_path / "home", "qwen", since=time.time() - 60)
    return {arm: (s.requests, s.errors) for arm, s in got.items()}


def test_backend_counts_answers_and_server_errors_not_bad_input(tmp_path: Path) -> None:
    async def main() -> None:
        ok, _ = _backend(tmp_path, FakeHandle())
        await ok.generate("qwen", "chat", {}, "faq-v2")
        await ok.generate("qwen", "chat", {}, None)
        broken = FakeHandle(error=ApiError("internal error: CUDA out of memory"))
        b, _ = _backend(tmp_path, broken)
        with pytest.raises(ApiError):
            await b.generate("qwen", "chat", {}, "faq-v2")
        bad = FakeHandle(error=BadRequest("max_tokens must be positive"))
        c, _ = _backend(tmp_path, bad)
        with pytest.raises(BadRequest):
            await c.generate("qwen", "chat", {}, "faq-v2")
        for backend in (ok, b, c):
            assert backend._stats is not None
            backend._stats.close()

    asyncio.run(main())
    got = summary(tmp_path / "home", "qwen", since=time.time() - 60)
    assert {arm: (s.requests, s.errors) for arm, s in got.items()} == {
        "faq-v2": (2, 1),  # the answer and the 500; the 400 was the client's fault
        "": (1, 0),
    }


def test_backend_counts_finished_and_broken_streams_not_abandoned_ones(tmp_path: Path) -> None:
    async def main() -> dict[str, tuple[int, int]]:
        backend, stats = _backend(tmp_path, FakeHandle())
        assert [c async for c in backend.stream("qwen", "chat", {}, "faq-v2")] == [
            StreamChunk({"i": 0}),
            StreamChunk({"i": 1}),
            StreamChunk({"i": 2}),
        ]
        backend._handles["qwen"] = FakeHandle(error=ApiError("engine died"), fail_after=1)
        with pytest.raises(ApiError, match="engine died"):
            async for _ in backend.stream("qwen", "chat", {}, "faq-v2"):
                pass
        backend._handles["qwen"] = FakeHandle()
        gone = backend.stream("qwen", "chat", {}, "faq-v2")
        assert await gone.__anext__() == StreamChunk({"i": 0})
        await gone.aclose()  # the client walked away
        return _arms(tmp_path, stats)

    assert asyncio.run(main()) == {"faq-v2": (2, 1)}


# -- the verdicts -----------------------------------------------------------------------

ANALYSIS = {
    "min_requests": 20,
    "max_error_rate": 0.05,
    "max_error_rate_increase": 0.02,
    "max_latency_ratio": None,
    "max_wait_s": 300,
    "interval_s": 10,
}


def figures(canary: tuple[int, int, float], baseline: tuple[int, int, float]) -> dict:
    return {
        "canary": ArmSummary("faq-v2", *canary),
        "baseline": ArmSummary("faq-v1", *baseline),
    }


@pytest.mark.parametrize(
    ("canary", "baseline", "extra", "verdict", "why"),
    [
        ((5, 0, 500.0), (100, 0, 1e4), {}, None, "5 of 20 requests so far"),
        ((20, 0, 2e4), (0, 0, 0.0), {}, True, "canary: 20 requests, 0 server errors"),
        ((20, 2, 1e4), (0, 0, 0.0), {}, False, "error rate 10.0% is over max_error_rate 5.0%"),
        ((50, 2, 1e4), (100, 0, 1e4), {}, False, "over the baseline's 0.0% + max_error_rate"),
        ((50, 2, 1e4), (100, 3, 1e4), {}, True, "baseline (faq-v1): 100 requests"),
        ((50, 2, 1e4), (10, 0, 1e3), {}, True, ""),  # baseline too thin to compare with
        ((20, 0, 4e4), (20, 0, 1e4), {"max_latency_ratio": 1.5}, False, "mean latency 2000 ms"),
        ((20, 0, 2e4), (20, 0, 1e4), {"max_latency_ratio": 2.5}, True, "mean 1000 ms"),
    ],
)
def test_judge_canary(
    canary: tuple, baseline: tuple, extra: dict, verdict: bool | None, why: str
) -> None:
    got, text = steps.judge_canary(figures(canary, baseline), {**ANALYSIS, **extra})
    assert got is verdict
    assert why in text


class Clock:
    """Fake time for the analysis loop; ``on_sleep`` lets traffic arrive while it waits."""

    def __init__(self, start: float, on_sleep: Any = None) -> None:
        self.now = start
        self.slept: list[float] = []
        self.on_sleep = on_sleep

    def __call__(self) -> float:
        return self.now

    def sleep(self, s: float) -> None:
        self.slept.append(s)
        self.now += s
        if self.on_sleep is not None:
            self.on_sleep(self.now)


def canary_output(at: float, before: dict | None = None, loaded_as: str = "faq-v2") -> dict:
    return {
        "deployment": "qwen",
        "adapter": "faq@2",
        "loaded_as": loaded_as,
        "before": before if before is not None else {},
        "traffic": {loaded_as: 0.1},
        "at": at,
    }


def record(home: Path, arm: str | None, ok: int, errors: int = 0, latency_s: float = 0.3) -> None:
    stats = ArmStats.for_home(home)
    for i in range(ok + errors):
        stats.observe("qwen", arm, ok=i >= errors, latency_s=latency_s)
    stats.close()


def analyse(home: Path, canary: dict, clock: Clock, hold_s: float, **analysis: Any) -> dict:
    logs: list[dict] = []
    out = steps.analyse_canary_step(
        logs.append,
        home=str(home),
        canary=canary,
        hold_s=hold_s,
        analysis={**ANALYSIS, **analysis},
        clock=clock,
        sleep=clock.sleep,
    )
    out["logs"] = [e["message"] for e in logs]
    return out


def test_a_healthy_canary_is_promoted_only_after_its_hold(tmp_path: Path) -> None:
    start = time.time()
    record(tmp_path, "faq-v2", ok=30)
    record(tmp_path, None, ok=100)
    clock = Clock(start)
    out = analyse(tmp_path, canary_output(start), clock, hold_s=60)
    assert out["healthy"] is True
    assert clock.now >= start + 60 and out["waited_s"] >= 60
    assert out["canary"]["requests"] == 30 and out["baseline"]["arm"] == "base"
    assert "baseline (base): 100 requests" in out["reason"]


def test_a_failing_canary_is_rolled_back_before_its_hold_ends(tmp_path: Path) -> None:
    start = time.time()
    record(tmp_path, "faq-v2", ok=15, errors=5)
    clock = Clock(start)
    out = analyse(tmp_path, canary_output(start), clock, hold_s=3600)
    assert out["healthy"] is False
    assert clock.slept == []  # judged at once: no waiting out the hour
    assert out["reason"].startswith("error rate 25.0% is over max_error_rate 5.0%")


def test_the_baseline_is_the_version_being_replaced(tmp_path: Path) -> None:
    start = time.time()
    record(tmp_path, "faq-v2", ok=48, errors=2)  # 4 %: under the 5 % ceiling ...
    record(tmp_path, "faq-v1", ok=200)  # ... but v1 has none
    record(tmp_path, None, ok=20, errors=20)  # the base model's trouble is not v1's
    clock = Clock(start)
    out = analyse(tmp_path, canary_output(start, before={"faq-v1": 1.0}), clock, hold_s=0)
    assert out["healthy"] is False
    assert out["baseline"] == {
        "arm": "faq-v1",
        "requests": 200,
        "errors": 0,
        "error_rate": 0.0,
        "mean_latency_ms": 300.0,
    }
    assert "over the baseline's 0.0% + max_error_rate_increase 2.0%" in out["reason"]


def test_traffic_arriving_while_it_waits_is_seen(tmp_path: Path) -> None:
    start = time.time()
    arrived: list[float] = []

    def traffic(now: float) -> None:  # 5 more requests every interval
        arrived.append(now)
        record(tmp_path, "faq-v2", ok=5)

    clock = Clock(start, on_sleep=traffic)
    out = analyse(tmp_path, canary_output(start), clock, hold_s=0, interval_s=10)
    assert out["healthy"] is True and out["canary"]["requests"] == 20
    assert len(arrived) == 4 and clock.slept == [10, 10, 10, 10]
    assert "canary analysis: 0 of 20 requests so far" in out["logs"]


def test_too_little_traffic_is_inconclusive_and_rolled_back(tmp_path: Path) -> None:
    start = time.time()
    record(tmp_path, "faq-v2", ok=3)
    clock = Clock(start)
    out = analyse(tmp_path, canary_output(start), clock, hold_s=60, max_wait_s=120)
    assert out["healthy"] is False
    assert out["reason"].startswith("inconclusive: 3 of 20 requests so far after 120 s")
    assert clock.now == pytest.approx(start + 120)


def test_a_resumed_analysis_counts_its_hold_from_the_canary(tmp_path: Path) -> None:
    start = time.time()
    record(tmp_path, "faq-v2", ok=25)
    clock = Clock(start)
    out = analyse(tmp_path, canary_output(start - 100), clock, hold_s=60)
    assert out["healthy"] is True and clock.slept == []


def test_min_requests_zero_promotes_after_the_hold_without_looking(tmp_path: Path) -> None:
    start = time.time()
    record(tmp_path, "faq-v2", ok=0, errors=50)
    clock = Clock(start)
    out = analyse(tmp_path, canary_output(start), clock, hold_s=30, min_requests=0)
    assert out["healthy"] is True and out["reason"] == "min_requests is 0: not analysed"
    assert clock.now == pytest.approx(start + 30)

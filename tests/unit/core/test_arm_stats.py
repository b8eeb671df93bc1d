"""Arm statistics: the counts the canary analysis and the console's metrics read.

The migration test builds a file with the first schema (no output tokens, no 429s, no
time-to-first-token histogram), as a gateway before this change wrote it, and checks
that it still reads and gains the new counts.
"""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

import pytest

from qingliang.platform.storage.arm_stats import (
    FILE_NAME,
    TTFT_BOUNDS_MS,
    ArmStats,
    percentile,
    series,
    summary,
)

OLD_SCHEMA = """
CREATE TABLE arm_buckets (
    deployment     TEXT NOT NULL,
    arm            TEXT NOT NULL,
    bucket         INTEGER NOT NULL,
    requests       INTEGER NOT NULL,
    errors         INTEGER NOT NULL,
    latency_ms_sum REAL NOT NULL,
    PRIMARY KEY (deployment, arm, bucket)
);
"""


def a_minute_ago() -> int:
    return int(time.time()) // 60 * 60 - 60


def test_an_old_file_still_reads_and_gains_the_new_counts(tmp_path: Path) -> None:
    t = a_minute_ago()
    with sqlite3.connect(tmp_path / FILE_NAME) as conn:
        conn.executescript(OLD_SCHEMA)
        conn.execute("INSERT INTO arm_buckets VALUES ('qwen', 'faq', ?, 4, 1, 900.0)", (t,))
    conn.close()

    old = summary(tmp_path, "qwen", since=t)["faq"]
    assert (old.requests, old.errors, old.mean_latency_ms) == (4, 1, 300.0)

    stats = ArmStats.for_home(tmp_path)
    stats.observe("qwen", "faq", ok=True, latency_s=0.1, at=t + 1, output_tokens=12, ttft_s=0.04)
    stats.rejected("qwen", "faq", at=t + 2)
    stats.close()

    now = summary(tmp_path, "qwen", since=t)["faq"]
    assert (now.requests, now.errors) == (5, 1)  # the 429 is no request of the arm
    _t0, out = series(tmp_path, since=t, step_s=60, until=t + 59)
    qwen = out["qwen"]
    assert qwen["requests"] == [5]
    assert qwen["output_tokens"] == [12]
    assert qwen["rejected_429"] == [1]
    assert qwen["ttft_p50_ms"] == [37.5]  # the one answer in the (25, 50] ms bin
    with sqlite3.connect(tmp_path / FILE_NAME) as conn:
        columns = {row[1] for row in conn.execute("PRAGMA table_info(arm_buckets)")}
    conn.close()
    assert {"output_tokens", "rejected"} <= columns


def test_a_deployment_with_only_rejections_has_no_arm_in_the_summary(tmp_path: Path) -> None:
    t = a_minute_ago()
    stats = ArmStats.for_home(tmp_path)
    stats.rejected("qwen", None, at=t)
    stats.close()
    assert summary(tmp_path, "qwen", since=t) == {}
    assert series(tmp_path, since=t, step_s=60, until=t + 59)[1]["qwen"]["rejected_429"] == [1]


def test_series_per_step_across_arms(tmp_path: Path) -> None:
    t = a_minute_ago() - 60
    stats = ArmStats.for_home(tmp_path)
    for i in range(20):  # step 1: 20 answers, ttft 10..200 ms, on two arms
        arm = "a" if i % 2 else None
        stats.observe("qwen", arm, ok=True, latency_s=1.0, at=t + 60, ttft_s=(i + 1) / 100)
    stats.observe("qwen", "a", ok=False, latency_s=5.0, at=t + 61)
    stats.observe("other", None, ok=True, latency_s=0.2, at=t, output_tokens=60)
    stats.close()

    t0, out = series(tmp_path, since=t, step_s=60, until=t + 119, deployments=["idle"])
    assert t0 == t
    assert sorted(out) == ["idle", "other", "qwen"]
    qwen = out["qwen"]
    assert qwen["t"] == [t, t + 60]
    assert qwen["requests"] == [0, 21] and qwen["errors"] == [0, 1]
    assert qwen["latency_mean_ms"] == [None, 1000.0]  # the error's 5 s is not an answer
    assert qwen["ttft_p50_ms"][0] is None
    assert 50 < qwen["ttft_p50_ms"][1] <= 100 and 100 < qwen["ttft_p95_ms"][1] <= 250
    assert out["other"]["tokens_per_s"] == [1.0, 0.0]
    assert out["idle"]["requests"] == [0, 0]
    only = series(tmp_path, since=t, step_s=60, until=t + 119, only="other")[1]
    assert list(only) == ["other"]


def test_series_refuses_a_step_that_is_not_whole_buckets(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="multiple of 10"):
        series(tmp_path, since=0, step_s=15)


def test_percentile_overflow_bin_reads_as_its_lower_bound() -> None:
    hist = [0] * len(TTFT_BOUNDS_MS) + [3]
    assert percentile(hist, 0.5) == TTFT_BOUNDS_MS[-1]
    assert percentile([0] * (len(TTFT_BOUNDS_MS) + 1), 0.5) is None

"""Bucket bounds of the overhead histograms: fine enough that a mean read from Ray's
exported ``_sum`` (computed from bucket midpoints) is close to the true one."""

from __future__ import annotations

import bisect

import pytest

from qingliang.serving import metrics


def _midpoint_mean(values: list[float], bounds: list[float]) -> float:
    """What Ray's exporter reports as sum / count: each value counted at its bucket's
    midpoint (the first bucket's from 0, the overflow bucket at twice the last bound)."""
    total = 0.0
    for v in values:
        i = bisect.bisect_left(bounds, v)
        if i == 0:
            total += bounds[0] / 2
        elif i == len(bounds):
            total += bounds[-1] * 2
        else:
            total += (bounds[i - 1] + bounds[i]) / 2
    return total / len(values)


def test_bounds_grow_by_the_ratio_and_cover_the_range() -> None:
    bounds = metrics.geometric_bounds(0.0001, 0.5)
    assert bounds[0] == 0.0001 and bounds[-1] >= 0.5
    assert all(1.45 < b / a < 1.55 for a, b in zip(bounds, bounds[1:], strict=False))


@pytest.mark.parametrize(
    ("bounds", "value"),
    [
        (metrics._GATEWAY_BOUNDS, 0.0009),  # a gateway's work: under a millisecond
        (metrics._QUEUE_BOUNDS, 0.0014),
        (metrics._TTFT_BOUNDS, 0.061),
        (metrics._TOKEN_BOUNDS, 0.058),  # a token on 2 CPU cores
    ],
)
def test_a_mean_read_from_midpoints_is_within_a_fifth(bounds: list[float], value: float) -> None:
    assert _midpoint_mean([value] * 10, bounds) == pytest.approx(value, rel=0.2)

"""bench/_overhead.py: the shares' means per request between two scrapes of the export port."""

from __future__ import annotations

from bench._overhead import parse, split

LABELS = 'Component="core_worker",SessionName="s",WorkerId="{w}",deployment="{d}",adapter="{a}"'


def histogram(family: str, series: list[tuple[str, str, str, str, float, int]]) -> str:
    """A Ray-style export of one histogram: (worker, deployment, adapter, side, sum, count)."""
    lines = [f"# HELP {family} x", f"# TYPE {family} histogram"]
    for w, d, a, side, total, count in series:
        labels = LABELS.format(w=w, d=d, a=a) + (f',side="{side}"' if side else "")
        lines += [
            f'{family}_bucket{{{labels},le="0.001"}} 0',
            f'{family}_bucket{{{labels},le="+Inf"}} {count}',
            f"{family}_count{{{labels}}} {count}",
            f"{family}_sum{{{labels}}} {total}",
        ]
    return "\n".join(lines) + "\n"


def export(scale: int) -> str:
    """Two replicas of tiny and one of other; every figure grows with ``scale``."""
    n = scale
    return "".join(
        [
            histogram(
                "ray_qingliang_gateway_seconds",
                [("g", "tiny", "", "", 0.0005 * n, n), ("g", "other", "", "", 9.0 * n, n)],
            ),
            histogram(
                "ray_qingliang_queue_seconds",
                [("r1", "tiny", "", "", 0.002 * n, n), ("r2", "tiny", "a", "", 0.004 * n, n)],
            ),
            histogram("ray_qingliang_engine_ttft_seconds", [("r1", "tiny", "", "", 0.25 * n, n)]),
            histogram(
                "ray_qingliang_time_per_output_token_seconds",
                [
                    ("r1", "tiny", "", "replica", 0.1 * n, n),
                    ("g", "tiny", "", "gateway", 0.12 * n, n),
                ],
            ),
            "# TYPE ray_qingliang_requests_total counter\n",
            'ray_qingliang_requests_total{deployment="tiny",status="200"} 5\n',
        ]
    )


def test_the_shares_per_request_between_two_scrapes() -> None:
    before, after = parse(export(2)), parse(export(6))
    assert split(before, after, deployment="tiny") == {
        "requests": 4,
        "gateway_ms": 0.5,
        "queue_ms": 3.0,  # both replicas and adapters: (4*2 + 4*4) ms / 8
        "engine_ttft_ms": 250.0,
        "tpot_replica_ms": 100.0,
        "tpot_gateway_ms": 120.0,
    }
    assert split(before, after)["gateway_ms"] == 4500.25  # both deployments: (0.5 + 9000) ms / 2


def test_no_new_requests_gives_no_figures() -> None:
    same = parse(export(3))
    assert split(same, same, deployment="tiny")["gateway_ms"] is None
    assert split({}, parse(export(1)), deployment="nope") == {
        "requests": 0,
        "gateway_ms": None,
        "queue_ms": None,
        "engine_ttft_ms": None,
        "tpot_replica_ms": None,
        "tpot_gateway_ms": None,
    }

"""platform/metrics.py: what each layer records, with ``ray.util.metrics`` replaced at its
one boundary (``_ray_metrics``) by a recorder; outside Ray nothing is recorded and Ray is
not imported."""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from types import SimpleNamespace

import pytest

from qingliang.platform import metrics


@dataclass
class Recorded:
    name: str
    kind: str
    calls: list[tuple[str, float, dict]] = field(default_factory=list)


class FakeRay:
    """The shape of ``ray.util.metrics``: each metric class records its calls."""

    def __init__(self) -> None:
        self.made: dict[str, Recorded] = {}

        def factory(kind: str):
            def make(name, description="", tag_keys=(), boundaries=None):
                assert description and tag_keys
                assert (kind == "histogram") == (boundaries is not None)
                rec = self.made.setdefault(name, Recorded(name, kind))

                def record(method):
                    return lambda value, tags: rec.calls.append((method, value, tags))

                return SimpleNamespace(
                    inc=record("inc"), observe=record("observe"), set=record("set")
                )

            return make

        self.Counter, self.Gauge, self.Histogram = (
            factory("counter"),
            factory("gauge"),
            factory("histogram"),
        )

    def calls(self, name: str) -> list[tuple[str, float, dict]]:
        return self.made[name].calls if name in self.made else []


@pytest.fixture
def ray(monkeypatch: pytest.MonkeyPatch) -> FakeRay:
    fake = FakeRay()
    monkeypatch.setattr(metrics, "_ray_metrics", lambda: fake)
    for gauge in metrics._GAUGES:
        monkeypatch.setattr(gauge, "_values", {})
    for metric in vars(metrics).values():
        if isinstance(metric, metrics.Metric):
            monkeypatch.setattr(metric, "_ray", None)
    monkeypatch.setattr(metrics._refresher, "ensure", lambda: None)
    monkeypatch.setattr(metrics, "_REWARDS", {})
    monkeypatch.setattr(metrics, "_WAITING", set())
    monkeypatch.setattr(metrics, "_SHARES", {})
    return fake


def test_outside_ray_nothing_is_recorded_and_ray_is_not_imported(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delitem(sys.modules, "ray", raising=False)
    metric = metrics.Metric(metrics.MetricSpec("qingliang_x_total", "counter", "x", ("kb",)))
    metric.inc(1, kb="a")
    assert "ray" not in sys.modules
    assert metric._ray is None


def test_a_sync_counts_documents_chunks_by_change_errors_and_time(ray: FakeRay) -> None:
    report = SimpleNamespace(added=3, updated=1, unchanged=5, deleted=0, errors=["bad.pdf"])
    metrics.knowledge_ingested("kb1", "sync", SimpleNamespace(files=4, report=report, seconds=2.5))
    assert ray.calls("qingliang_knowledge_documents_ingested_total") == [
        ("inc", 4, {"kb": "kb1", "action": "sync"})
    ]
    # A zero step is not sent (Ray refuses it): no `deleted` series for this sync.
    assert [
        (c[1], c[2]["change"]) for c in ray.calls("qingliang_knowledge_chunks_ingested_total")
    ] == [
        (3, "added"),
        (1, "updated"),
        (5, "unchanged"),
    ]
    assert ray.calls("qingliang_knowledge_ingest_errors_total") == [("inc", 1, {"kb": "kb1"})]
    assert ray.calls("qingliang_knowledge_ingest_seconds") == [
        ("observe", 2.5, {"kb": "kb1", "action": "sync"})
    ]


def test_approvals_of_a_graph_no_longer_waiting_read_zero(ray: FakeRay) -> None:
    metrics.approvals_waiting(["desk", "triage"], ["desk", "desk"])
    metrics.approvals_waiting(["triage"], [])  # desk was deleted
    sets = [(c[2]["graph"], c[1]) for c in ray.calls("qingliang_agent_approvals_waiting")]
    assert sets[:2] == [("desk", 2), ("triage", 0)]
    assert sorted(sets[2:]) == [("desk", 0), ("triage", 0)]


def test_rewards_add_up_per_arm_and_may_be_negative(ray: FakeRay) -> None:
    assert metrics.route_rewarded("g/triage", "quick", 0.75) == 0.75
    metrics.route_rewarded("g/triage", "quick", -1.0)
    metrics.route_rewarded("g/triage", "careful", 0.5)
    sums = [(c[2]["arm"], c[1]) for c in ray.calls("qingliang_router_reward_sum")]
    assert sums == [("quick", 0.75), ("quick", -0.25), ("careful", 0.5)]
    assert len(ray.calls("qingliang_router_rewards_total")) == 3


def test_a_pipeline_step_counts_its_outcome_failure_or_approval_wait(ray: FakeRay) -> None:
    class GraphInterrupt(Exception):
        pass

    with metrics.pipeline_step("govern"):
        pass
    with metrics.pipeline_step("promote") as step:
        step["outcome"] = "rolled_back"
    with pytest.raises(RuntimeError), metrics.pipeline_step("finetune"):
        raise RuntimeError("out of memory")
    with pytest.raises(GraphInterrupt), metrics.pipeline_step("approval"):
        raise GraphInterrupt()
    outcomes = [
        (c[2]["kind"], c[2]["outcome"]) for c in ray.calls("qingliang_pipeline_steps_total")
    ]
    assert outcomes == [
        ("govern", "ok"),
        ("promote", "rolled_back"),
        ("finetune", "failed"),
        ("approval", "waiting"),
    ]
    assert len(ray.calls("qingliang_pipeline_step_seconds")) == 4


def test_canary_arms_that_leave_read_zero_and_gauges_are_recorded_again(ray: FakeRay) -> None:
    metrics.canary_shares({"qwen": {"v2": 0.1, "base": 0.9}})
    metrics.canary_shares({"qwen": {"base": 1.0}})
    sets = [(c[2]["arm"], c[1]) for c in ray.calls("qingliang_canary_share")]
    assert sets == [("v2", 0.1), ("base", 0.9), ("v2", 0.0), ("base", 1.0)]
    metrics.CANARY_SHARE.refresh()  # what the background thread does every REFRESH_S
    again = sorted((c[2]["arm"], c[1]) for c in ray.calls("qingliang_canary_share")[4:])
    assert again == [("base", 1.0), ("v2", 0.0)]


def test_a_failing_recorder_never_reaches_the_caller(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken():
        raise RuntimeError("metrics agent gone")

    monkeypatch.setattr(metrics, "_ray_metrics", broken)
    monkeypatch.setattr(metrics.KNOWLEDGE_SEARCH, "_ray", None)
    metrics.KNOWLEDGE_SEARCH.observe(0.1, kb="kb1")  # no exception

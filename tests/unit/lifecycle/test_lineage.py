"""The lineage API the ``qingliang lineage`` command renders: resolve a ref, then trace it."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from qingliang.platform.errors import BadRequest, NotFound
from qingliang.platform.lifecycle.registry import Registry
from qingliang.platform.lifecycle.registry.lineage import (
    AppliedAdapters,
    dataset_version_ref,
    resolve,
    trace,
)
from qingliang.platform.storage.state import StateStore
from qingliang.serving.traffic import ServingView


def _applied(db: Path) -> Callable[[], AppliedAdapters]:
    """What ``qingliang lineage`` passes: the applied adapters read from ``db`` on demand."""
    return lambda: ServingView.read(StateStore(db)).adapter_refs()


@pytest.fixture
def reg(tmp_path: Path) -> Iterator[Registry]:
    """gov@sha256:bb… and base qwen-tiny -> job ft-1 -> faq-bot@1, served by `support`."""
    with Registry(home=tmp_path) as reg:
        reg.register_base_model("qwen-tiny", source="qwen/tiny", format="safetensors")
        data = reg.register_dataset_version(
            "gov", "sha256:" + "b" * 64, record_counts={"train": 9, "eval": 1}
        ).ref
        reg.register_job("ft-1", method="lora", base_model="qwen-tiny", train=[data])
        reg.set_job_status("ft-1", "running")
        reg.register_adapter("faq-bot", path="/adapters/faq-1", sha256="a" * 64, job="ft-1")
        reg.set_job_status("ft-1", "succeeded")
        reg.set_status("faq-bot@1", "evaluated")
        reg.set_status("faq-bot@1", "approved", "beats the base model")
        reg.deployments.set_serving("support", model="qwen-tiny", adapters={"faq-bot@1": 1.0})
        yield reg


def test_resolve_names_refs_and_kinds(reg: Registry, tmp_path: Path) -> None:
    db = tmp_path / "state.sqlite"
    assert resolve(reg, "faq-bot", applied=_applied(db)).ref == "faq-bot@1"
    assert resolve(reg, "faq-bot@1", applied=_applied(db)).kind == "adapter"
    assert resolve(reg, "ft-1", applied=_applied(db)).kind == "job"
    assert resolve(reg, "qwen-tiny", kind="model", applied=_applied(db)).kind == "base_model"
    with pytest.raises(BadRequest, match="--kind 'nope'"):
        resolve(reg, "ft-1", kind="nope", applied=_applied(db))
    with pytest.raises(NotFound, match="did you mean 'faq-bot'"):
        resolve(reg, "faq-bt", applied=_applied(db))
    assert dataset_version_ref(reg, "gov", "bbbb") == "gov@sha256:" + "b" * 64
    with pytest.raises(NotFound, match="no dataset 'gv' in the registry; did you mean 'gov'"):
        dataset_version_ref(reg, "gv")


def test_resolve_a_deployment_adapter_pair_through_the_applied_refs(
    reg: Registry, tmp_path: Path
) -> None:
    db = tmp_path / "state.sqlite"
    body = {"metadata": {"name": "support"}, "spec": {"lora": {"refs": {"faq": "faq-bot@1"}}}}
    StateStore(db).put("ModelDeployment", "support", body)
    found = resolve(reg, "support:faq", applied=_applied(db))
    assert (found.kind, found.ref) == ("adapter", "faq-bot@1")
    assert found.via == "support:faq → faq-bot@1 (spec.lora.refs)"
    with pytest.raises(NotFound, match="did you mean 'faq'"):
        resolve(reg, "support:faqq", applied=_applied(db))


def test_the_applied_deployments_are_read_only_when_a_ref_needs_them(
    reg: Registry, tmp_path: Path
) -> None:
    def unread() -> AppliedAdapters:
        raise AssertionError("the applied deployments were read")

    assert resolve(reg, "faq-bot@1", applied=unread).ref == "faq-bot@1"
    assert resolve(reg, "ft-1", applied=unread).kind == "job"
    db = tmp_path / "state.sqlite"
    with pytest.raises(NotFound, match=r"no ModelDeployment named 'support' \(none is applied\)"):
        resolve(reg, "support:faq", applied=_applied(db))


def test_an_applied_deployment_the_registry_does_not_know_names_its_adapters(
    reg: Registry, tmp_path: Path
) -> None:
    db = tmp_path / "state.sqlite"
    lora = {"adapters": {"sql": "/a/sql"}, "refs": {"faq": "faq-bot@1"}}
    StateStore(db).put("ModelDeployment", "billing", {"spec": {"lora": lora}})
    StateStore(db).put("ModelDeployment", "bare", {"spec": {}})
    with pytest.raises(NotFound) as caught:
        resolve(reg, "billing", applied=_applied(db))
    assert str(caught.value).endswith(
        "; ModelDeployment 'billing' is applied but the registry has no record of what it "
        "serves: trace one of its adapters (billing:faq, billing:sql)"
    )
    with pytest.raises(NotFound, match=r"trace one of its adapters \(it loads none\)"):
        resolve(reg, "bare", applied=_applied(db))
    with pytest.raises(NotFound, match="loads adapter 'sql' without a registry ref") as caught:
        resolve(reg, "billing:sql", applied=_applied(db))
    assert "(it has: faq → faq-bot@1, sql (no ref))" in str(caught.value)
    with pytest.raises(NotFound, match=r"no ModelDeployment named 'biling'; did you mean"):
        resolve(reg, "biling:sql", applied=_applied(db))
    with pytest.raises(NotFound, match=r"named 'other' \(applied: bare, billing\)"):
        resolve(reg, "other:sql", applied=_applied(db))


def test_trace_walks_both_ways_with_details_and_traffic(reg: Registry, tmp_path: Path) -> None:
    found = resolve(reg, "faq-bot@1", applied=_applied(tmp_path / "state.sqlite"))
    doc = trace(reg, found, "faq-bot@1")
    assert (doc["query"], doc["kind"], doc["ref"], doc["direction"]) == (
        "faq-bot@1",
        "adapter",
        "faq-bot@1",
        "both",
    )
    (job,) = doc["upstream"]
    assert (job["relation"], job["ref"], job["details"]["status"]) == (
        "produced_by",
        "ft-1",
        "succeeded",
    )
    (served,) = doc["downstream"]
    assert served["ref"] == "support" and served["details"]["traffic"]["serving"] is True
    up = trace(reg, found, "faq-bot@1", direction="upstream", depth=1)
    assert "downstream" not in up and up["upstream"][0]["children"] == []

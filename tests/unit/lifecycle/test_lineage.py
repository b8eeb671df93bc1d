"""The lineage API the ``qingliang lineage`` command renders: resolve a ref, then trace it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from qingliang.platform.errors import BadRequest, NotFound
from qingliang.platform.lifecycle.registry import Registry
from qingliang.platform.lifecycle.registry.lineage import (
    dataset_version_ref,
    resolve,
    trace,
)
from qingliang.platform.storage.state import StateStore


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
    assert resolve(reg, "faq-bot", state_db=db).ref == "faq-bot@1"
    assert resolve(reg, "faq-bot@1", state_db=db).kind == "adapter"
    assert resolve(reg, "ft-1", state_db=db).kind == "job"
    assert resolve(reg, "qwen-tiny", kind="model", state_db=db).kind == "base_model"
    with pytest.raises(BadRequest, match="--kind 'nope'"):
        resolve(reg, "ft-1", kind="nope", state_db=db)
    with pytest.raises(NotFound, match="did you mean 'faq-bot'"):
        resolve(reg, "faq-bt", state_db=db)
    assert dataset_version_ref(reg, "gov", "bbbb") == "gov@sha256:" + "b" * 64
    with pytest.raises(NotFound, match="no dataset 'gv' in the registry; did you mean 'gov'"):
        dataset_version_ref(reg, "gv")


def test_resolve_a_deployment_adapter_pair_through_the_applied_refs(
    reg: Registry, tmp_path: Path
) -> None:
    db = tmp_path / "state.sqlite"
    body = {"metadata": {"name": "support"}, "spec": {"lora": {"refs": {"faq": "faq-bot@1"}}}}
    StateStore(db).put("ModelDeployment", "support", body)
    found = resolve(reg, "support:faq", state_db=db)
    assert (found.kind, found.ref) == ("adapter", "faq-bot@1")
    assert found.via == "support:faq → faq-bot@1 (spec.lora.refs)"
    with pytest.raises(NotFound, match="did you mean 'faq'"):
        resolve(reg, "support:faqq", state_db=db)


def test_trace_walks_both_ways_with_details_and_traffic(reg: Registry, tmp_path: Path) -> None:
    found = resolve(reg, "faq-bot@1", state_db=tmp_path / "state.sqlite")
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

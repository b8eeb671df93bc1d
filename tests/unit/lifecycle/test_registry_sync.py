"""Keeping the registry in step with the DatasetStore
(qingliang.platform.lifecycle.registry.sync), on the example dataset: real files, the real
store and a real SQLite registry under tmp_path."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

import qingliang.platform.lifecycle.pipelines.kinds  # noqa: F401
from qingliang.platform.errors import NotFound
from qingliang.platform.lifecycle.data.store import DatasetStore
from qingliang.platform.lifecycle.registry import (
    Registry,
    propagate_deletion,
    record_dataset_version,
    sync_dataset,
)
from qingliang.platform.manifests.loader import load_paths

REPO = Path(__file__).resolve().parents[3]
EXAMPLE = REPO / "deploy" / "examples" / "dataset-gov.yaml"
NAME = "gov-sft"


@pytest.fixture
def store(tmp_path: Path) -> DatasetStore:
    store = DatasetStore.for_home(tmp_path / "home")
    (item,) = load_paths([EXAMPLE])
    store.cut(item.manifest, EXAMPLE.parent, actor="test")  # type: ignore[arg-type]
    return store


@pytest.fixture
def reg(tmp_path: Path) -> Iterator[Registry]:
    with Registry(home=tmp_path / "home") as registry:
        yield registry


def train_adapter(reg: Registry, data_ref: str, name: str = "gov-desk") -> str:
    """base model -> job trained (and evaluated) on ``data_ref`` -> approved adapter."""
    if not reg.list_base_models():
        reg.register_base_model("qwen-tiny", source="qwen/tiny", format="safetensors")
    job = f"{name}-job-{len(reg.list_jobs()) + 1}"
    reg.register_job(job, method="lora", base_model="qwen-tiny", train=[data_ref], eval=[data_ref])
    reg.set_job_status(job, "running")
    digest = f"{len(reg.list_adapters()) + 1:x}".rjust(64, "a")
    adapter = reg.register_adapter(name, path=f"/adapters/{job}", sha256=digest, job=job)
    reg.set_job_status(job, "succeeded")
    reg.set_status(adapter.ref, "evaluated")
    reg.set_status(adapter.ref, "approved", "good enough")
    return adapter.ref


def first_id(store: DatasetStore, version: str | None = None) -> str:
    return str(store.read(NAME, version, "all")[0]["id"])


def test_record_dataset_version_is_idempotent(store: DatasetStore, reg: Registry) -> None:
    v = store.get(NAME)
    first = record_dataset_version(reg, v)
    again = record_dataset_version(reg, v)
    assert first == again
    assert first.ref == f"{NAME}@{v.version}" and first.status == "active"
    assert first.record_counts == {"train": v.train, "eval": v.eval, "quarantined": v.quarantined}
    steps = [s["step"] for s in first.report["steps"]]
    assert steps == ["schema", "pii", "dedup", "quality"]
    assert [d.ref for d in reg.list_dataset_versions(NAME)] == [first.ref]


def test_record_returns_a_row_registered_by_someone_else(
    store: DatasetStore, reg: Registry
) -> None:
    v = store.get(NAME)
    theirs = reg.register_dataset_version(NAME, v.version, record_counts={"train": 1})
    assert record_dataset_version(reg, v) == theirs


def test_propagate_deletion_marks_the_adapter_stale(store: DatasetStore, reg: Registry) -> None:
    old = record_dataset_version(reg, store.get(NAME))
    adapter = train_adapter(reg, old.ref)
    rid = first_id(store)
    result = store.delete_record(NAME, rid, actor="dpo", reason="request 17")

    assert propagate_deletion(reg, result, "request 17", store=store) == [adapter]

    new_version = result.superseded[old.version]
    superseded = reg.get_dataset_version(old.ref)
    assert superseded.status == "superseded" and superseded.superseded_by == new_version
    assert superseded.superseded_reason == f"deleted record(s) {rid}: request 17"
    new = reg.get_dataset_version(f"{NAME}@{new_version}")
    stored_new = store.get(NAME, new_version)
    assert new.status == "active"
    assert new.record_counts["train"] + new.record_counts["eval"] == stored_new.records
    assert reg.lineage("dataset_version", new.ref, direction="upstream").refs(
        "dataset_version"
    ) == {old.ref}
    stale = reg.get_adapter(adapter)
    assert stale.status == "stale"
    assert stale.stale_reason and rid in stale.stale_reason and "request 17" in stale.stale_reason
    # The store keeps both versions: the old row superseded, the new one readable without it.
    versions = {v.version: v for v in store.versions(NAME)}
    assert versions[old.version].status == "superseded"
    assert versions[old.version].superseded_by == new_version
    assert versions[new_version].status == "active" and versions[new_version].latest
    assert rid not in {r["id"] for r in store.read(NAME, new_version, "all")}
    # Running it again changes nothing and fails nothing.
    assert propagate_deletion(reg, result, "request 17", store=store) == []


def test_propagate_records_the_new_version_when_the_old_was_never_recorded(
    store: DatasetStore, reg: Registry
) -> None:
    result = store.delete_record(NAME, first_id(store), actor="dpo", reason="r")
    assert propagate_deletion(reg, result, "r", store=store) == []
    (new_version,) = result.superseded.values()
    assert [d.version for d in reg.list_dataset_versions(NAME)] == [new_version]


def test_sync_catches_up_after_deletions_the_registry_missed(
    store: DatasetStore, reg: Registry
) -> None:
    first = record_dataset_version(reg, store.get(NAME))
    adapter = train_adapter(reg, first.ref)
    # Two deletions while the registry was unreachable: first -> second -> third.
    one = store.delete_record(NAME, first_id(store), actor="dpo", reason="one")
    two = store.delete_record(NAME, first_id(store), actor="dpo", reason="two")
    second, third = one.superseded[first.version], two.superseded[one.superseded[first.version]]

    result = sync_dataset(reg, store, NAME)

    assert result.stale == (adapter,)
    assert result.superseded == {first.ref: second, f"{NAME}@{second}": third}
    assert set(result.registered) == {f"{NAME}@{second}", f"{NAME}@{third}"}
    chain = {d.version: d for d in reg.list_dataset_versions(NAME)}
    assert chain[first.version].superseded_by == second
    assert chain[second].superseded_by == third and chain[third].status == "active"
    assert reg.get_adapter(adapter).status == "stale"
    again = sync_dataset(reg, store, NAME)
    assert (again.registered, again.superseded, again.stale) == ((), {}, ())


def test_a_later_deletion_recorded_first_still_makes_the_adapter_stale(
    store: DatasetStore, reg: Registry
) -> None:
    first = record_dataset_version(reg, store.get(NAME))
    adapter = train_adapter(reg, first.ref)
    one = store.delete_record(NAME, first_id(store), actor="dpo", reason="one")
    second = one.superseded[first.version]
    record_dataset_version(reg, store.get(NAME, second))  # recorded, supersession lost
    two = store.delete_record(NAME, first_id(store), actor="dpo", reason="two")
    assert propagate_deletion(reg, two, "two", store=store) == []  # nothing trained on second

    assert sync_dataset(reg, store, NAME).stale == (adapter,)
    # Superseded by what replaced the version the store names (the registry cannot
    # supersede a version by one that is itself superseded).
    assert reg.get_dataset_version(first.ref).superseded_by == two.superseded[second]


def test_sync_of_an_unknown_dataset(store: DatasetStore, reg: Registry) -> None:
    with pytest.raises(NotFound, match="no dataset named 'nope'"):
        sync_dataset(reg, store, "nope")

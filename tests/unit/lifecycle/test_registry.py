"""The model registry: one conformance suite, run against SQLite and PostgreSQL.

PostgreSQL is the throwaway local server of ``postgres_dsn`` (tests/conftest.py) or
``QINGLIANG_TEST_PG_DSN``; each test gets a fresh database, and without a server the
PostgreSQL cases skip and say why. Nothing here is mocked: the real migrations run on every
open.
"""

from __future__ import annotations

import math
import multiprocessing
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, text

from qingliang.platform.errors import BadRequest, Conflict, NotFound
from qingliang.platform.lifecycle.registry import ADAPTER_TRANSITIONS, Registry, RegistryError
from qingliang.platform.lifecycle.registry._db import normalize_url

BACKENDS = ["sqlite", "postgres"]


def sha(c: str) -> str:
    return c * 64


def ver(c: str) -> str:
    return "sha256:" + sha(c)


V1, V2, V3, EVAL = ver("1"), ver("2"), ver("3"), ver("e")


@pytest.fixture(params=BACKENDS)
def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'home' / 'registry.sqlite'}"
    return str(request.getfixturevalue("postgres_database"))


@pytest.fixture
def reg(url: str) -> Iterator[Registry]:
    with Registry(url) as registry:
        yield registry


def build_chain(reg: Registry) -> dict[str, str]:
    """base model -> dataset versions -> job -> adapter (approved) -> deployment."""
    reg.register_base_model(
        "qwen", source="Qwen/Qwen2.5-0.5B-Instruct", format="safetensors", revision="main"
    )
    reg.register_dataset_version("faq", V1, record_counts={"train": 90}, report={"dedup": 3})
    reg.register_dataset_version("faq-eval", EVAL, record_counts={"eval": 10})
    reg.register_job(
        "ft-1",
        method="lora",
        base_model="qwen",
        train=[f"faq@{V1}"],
        eval=[f"faq-eval@{EVAL}"],
        settings={"r": 8, "lr": 2e-4},
    )
    reg.set_job_status("ft-1", "running")
    adapter = reg.register_adapter("bot", path="/a/bot-1", sha256=sha("a"), job="ft-1")
    reg.set_job_status("ft-1", "succeeded", metrics={"loss": 0.5})
    reg.set_status(adapter.ref, "evaluated", metrics={"rouge_l": 0.41})
    reg.set_status(adapter.ref, "approved", "beats the base model")
    reg.deployments.set_serving("support", model="qwen", adapters={adapter.ref: 1.0})
    return {"adapter": adapter.ref, "dataset": f"faq@{V1}", "eval": f"faq-eval@{EVAL}"}


# -- the chain -------------------------------------------------------------------------------


def test_register_chain_and_read_back(reg: Registry) -> None:
    refs = build_chain(reg)

    base = reg.get_base_model("qwen")
    assert (base.source, base.format, base.revision, base.merged_from) == (
        "Qwen/Qwen2.5-0.5B-Instruct",
        "safetensors",
        "main",
        None,
    )
    dv = reg.get_dataset_version(refs["dataset"])
    assert (dv.record_counts, dv.report, dv.status) == ({"train": 90}, {"dedup": 3}, "active")

    job = reg.get_job("ft-1")
    assert job.train == (refs["dataset"],) and job.eval == (refs["eval"],)
    assert job.settings == {"r": 8, "lr": 2e-4} and job.metrics == {"loss": 0.5}
    assert job.status == "succeeded" and job.base_model == "qwen"
    assert job.started_at is not None and job.finished_at is not None
    assert job.started_at <= job.finished_at and job.started_at.tzinfo is not None

    adapter = reg.get_adapter("bot")  # newest version
    assert adapter.ref == "bot@1" == refs["adapter"]
    assert (adapter.job, adapter.base_model, adapter.status) == ("ft-1", "qwen", "serving")
    assert adapter.metrics == {"rouge_l": 0.41}
    assert [e.to_status for e in reg.adapter_history("bot@1")] == [
        "registered",
        "evaluated",
        "approved",
        "serving",
    ]

    [model, served] = reg.deployments.serving("support")
    assert (model.target_kind, model.target, model.share) == ("base_model", "qwen", 1.0)
    assert (served.target_kind, served.target, served.ended_at) == ("adapter", "bot@1", None)

    q = reg.quantized.register(
        "qwen-awq", model="qwen", method="awq", path="/q/awq", size_bytes=2**33, settings={"b": 4}
    )
    assert reg.quantized.get("qwen-awq") == q and q.size_bytes == 2**33
    assert [x.name for x in reg.quantized.all(model="qwen")] == ["qwen-awq"]
    assert [b.name for b in reg.list_base_models()] == ["qwen"]
    assert [d.ref for d in reg.list_dataset_versions("faq")] == [refs["dataset"]]
    assert [j.name for j in reg.list_jobs(status="succeeded")] == ["ft-1"]
    assert [a.ref for a in reg.list_adapters(status="serving")] == ["bot@1"]
    assert reg.deployments.names() == ["support"]


def test_adapter_versions_are_monotonic_per_name(reg: Registry) -> None:
    reg.register_base_model("qwen", source="/m/qwen", format="safetensors")
    refs = [
        reg.register_adapter(n, path=f"/a/{n}{i}", sha256=sha(c), base_model="qwen").ref
        for i, (n, c) in enumerate([("bot", "1"), ("bot", "2"), ("tab", "3"), ("bot", "4")])
    ]
    assert refs == ["bot@1", "bot@2", "tab@1", "bot@3"]
    assert reg.get_adapter("bot").version == 3
    with pytest.raises(Conflict, match=r"already registered as bot@2"):
        reg.register_adapter("bot", path="/elsewhere", sha256=sha("2"), base_model="qwen")


def test_concurrent_writers_get_distinct_versions(reg: Registry) -> None:
    reg.register_base_model("qwen", source="/m/qwen", format="safetensors")
    errors: list[BaseException] = []

    def register(i: int) -> None:
        try:
            reg.register_adapter("bot", path=f"/a/{i}", sha256=f"{i:064x}", base_model="qwen")
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=register, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert sorted(a.version for a in reg.list_adapters("bot")) == [1, 2, 3, 4, 5, 6]


# -- lineage ---------------------------------------------------------------------------------


def test_lineage_walks_both_ways(reg: Registry) -> None:
    refs = build_chain(reg)
    reg.register_base_model(
        "qwen-bot", source="/m/merged", format="safetensors", merged_from=refs["adapter"]
    )
    reg.quantized.register("qwen-bot-awq", model="qwen-bot", method="awq", path="/q/1")

    up = reg.lineage("adapter", refs["adapter"], direction="upstream")
    assert up.downstream == () and up.status == "serving"
    assert up.refs("dataset_version") == {refs["dataset"], refs["eval"]}
    assert up.refs("job") == {"ft-1"} and up.refs("base_model") == {"qwen"}
    [job] = up.upstream
    assert (job.kind, job.ref, job.relation, job.status) == (
        "job",
        "ft-1",
        "produced_by",
        "succeeded",
    )
    relations = {(c.kind, c.relation) for c in job.children}
    assert relations == {
        ("base_model", "fine_tunes"),
        ("dataset_version", "trained_on"),
        ("dataset_version", "evaluated_on"),
    }

    down = reg.lineage("dataset_version", refs["dataset"], direction="downstream")
    assert down.refs("adapter") == {refs["adapter"]}
    assert down.refs("deployment") == {"support"}
    assert down.refs("base_model") == {"qwen-bot"}  # merged from the adapter
    assert down.refs("quantized") == {"qwen-bot-awq"}

    both = reg.lineage("base_model", "qwen-bot")
    assert both.refs("dataset_version", "upstream") == {refs["dataset"], refs["eval"]}
    assert both.refs("quantized", "downstream") == {"qwen-bot-awq"}
    assert reg.get_base_model("qwen-bot").merged_from == refs["adapter"]

    shallow = reg.lineage("dataset_version", refs["dataset"], direction="downstream", depth=1)
    assert [n.ref for n in shallow.downstream] == ["ft-1"] and shallow.downstream[0].children == ()
    as_dict = shallow.to_dict()
    assert as_dict["downstream"][0]["relation"] == "trained_on" and as_dict["upstream"] == []


def test_link_adds_edges_and_refuses_cycles(reg: Registry) -> None:
    reg.register_dataset_version("faq", V1, record_counts={"train": 3})
    reg.register_dataset_version("faq", V2, record_counts={"train": 2}, derived_from=[f"faq@{V1}"])
    reg.register_dataset_version("faq", V3, record_counts={"train": 1})
    assert reg.link("dataset_version", f"faq@{V2}", "dataset_version", f"faq@{V3}", "derived_from")
    assert not reg.link(  # already there
        "dataset_version", f"faq@{V2}", "dataset_version", f"faq@{V3}", "derived_from"
    )
    with pytest.raises(Conflict, match="cycle"):
        reg.link("dataset_version", f"faq@{V3}", "dataset_version", f"faq@{V1}", "derived_from")
    with pytest.raises(BadRequest, match="cannot be linked by hand"):
        reg.link("dataset_version", f"faq@{V1}", "job", "x", "trained_on")
    with pytest.raises(BadRequest, match="joins adapter to job, not dataset_version to job"):
        reg.link("dataset_version", f"faq@{V1}", "job", "x", "initialized_from")
    assert reg.lineage("dataset_version", f"faq@{V1}").refs("dataset_version") == {
        f"faq@{V2}",
        f"faq@{V3}",
    }


# -- staleness -------------------------------------------------------------------------------


def test_superseded_data_makes_adapters_stale_transitively(reg: Registry) -> None:
    refs = build_chain(reg)
    # A second generation built on the first: a model merged from bot@1, fine-tuned again.
    reg.register_base_model("qwen-bot", source="/m/m", format="safetensors", merged_from="bot@1")
    reg.register_dataset_version("chat", V3, record_counts={"train": 5})
    reg.register_job("ft-2", method="qlora", base_model="qwen-bot", train=[f"chat@{V3}"])
    reg.set_job_status("ft-2", "running")
    gen2 = reg.register_adapter("bot2", path="/a/b2", sha256=sha("b"), job="ft-2")
    # Untouched: trained on other data, and one only evaluated on faq's old version.
    reg.register_job("ft-3", method="lora", base_model="qwen", train=[f"chat@{V3}"])
    reg.set_job_status("ft-3", "running")
    other = reg.register_adapter("chatbot", path="/a/c", sha256=sha("c"), job="ft-3")
    reg.register_job(
        "ft-4", method="lora", base_model="qwen", train=[f"chat@{V3}"], eval=[f"faq@{V1}"]
    )
    reg.set_job_status("ft-4", "running")
    evaluated_only = reg.register_adapter("evalbot", path="/a/e", sha256=sha("e"), job="ft-4")
    # A job on the old version still running when the data is withdrawn.
    reg.register_job("ft-late", method="lora", base_model="qwen", train=[f"faq@{V1}"])
    reg.set_job_status("ft-late", "running")

    reg.register_dataset_version(
        "faq", V2, record_counts={"train": 89}, derived_from=[refs["dataset"]]
    )
    marked = reg.mark_stale_from_dataset({V1: V2}, "PII in record 17")
    assert marked == ["bot@1", "bot2@1"]

    old = reg.get_dataset_version(refs["dataset"])
    assert (old.status, old.superseded_by, old.superseded_reason) == (
        "superseded",
        V2,
        "PII in record 17",
    )
    assert reg.get_dataset_version(f"faq@{V2}").status == "active"
    bot = reg.get_adapter("bot@1")
    assert bot.status == "stale" and "PII in record 17" in (bot.stale_reason or "")
    assert f"faq@{V1}" in (bot.stale_reason or "")
    assert reg.get_adapter(gen2.ref).status == "stale"
    assert reg.get_adapter(other.ref).status == "registered"
    assert reg.get_adapter(evaluated_only.ref).status == "registered"
    # Still served: staleness is recorded; taking it out is the operator's call.
    assert [a.target for a in reg.deployments.serving("support") if a.target_kind == "adapter"] == [
        "bot@1"
    ]

    # A stale adapter is never promoted or newly deployed again; it can only retire.
    with pytest.raises(Conflict, match=r"from stale to approved .*PII in record 17"):
        reg.set_status(gen2.ref, "approved")
    with pytest.raises(Conflict, match=r"from stale to evaluated"):
        reg.set_status(gen2.ref, "evaluated")
    with pytest.raises(Conflict, match=r"bot2@1 is stale .*only an approved adapter"):
        reg.deployments.set_serving("lab", model="qwen-bot", adapters={gen2.ref: 1.0})
    reg.deployments.set_serving("support", model="qwen", adapters={"bot@1": 0.5})  # phasing it out
    with pytest.raises(Conflict, match="bot@1 is stale; its share can only go down"):
        reg.deployments.set_serving("support", model="qwen", adapters={"bot@1": 0.8})
    with pytest.raises(Conflict, match="would train on stale inputs: adapter bot@1 is stale"):
        reg.register_job("ft-6", method="lora", base_model="qwen-bot", train=[f"chat@{V3}"])
    reg.deployments.set_serving("support", model="qwen")  # take it out; it stays stale
    assert reg.get_adapter("bot@1").status == "stale"
    assert reg.set_status("bot@1", "retired", "withdrawn").status == "retired"

    # Adapters of a job that trained on the old data come out stale; new jobs are refused.
    late = reg.register_adapter("late", path="/a/l", sha256=sha("d"), job="ft-late")
    assert late.status == "stale" and f"faq@{V1} was superseded by {V2}" in (
        late.stale_reason or ""
    )
    with pytest.raises(Conflict, match=r"would train on stale inputs: dataset version faq@"):
        reg.register_job("ft-5", method="lora", base_model="qwen", train=[f"faq@{V1}"])

    # Idempotent; a different replacement or a missing one is refused.
    assert reg.mark_stale_from_dataset({f"faq@{V1}": V2}, "PII in record 17") == []
    reg.register_dataset_version("faq", V3, record_counts={"train": 88})
    with pytest.raises(Conflict, match=f"faq@{V1} is already superseded by {V2}, not {V3}"):
        reg.mark_stale_from_dataset({f"faq@{V1}": V3}, "again")
    with pytest.raises(NotFound, match="register it before it supersedes"):
        reg.mark_stale_from_dataset({V3: ver("9")}, "x")
    with pytest.raises(NotFound, match="no dataset version"):
        reg.mark_stale_from_dataset({ver("8"): V2}, "x")


def test_stale_by_hand_propagates_to_what_was_built_on_it(reg: Registry) -> None:
    refs = build_chain(reg)
    reg.register_dataset_version("chat", V3, record_counts={"train": 5})
    reg.register_job("ft-2", method="lora", base_model="qwen", train=[f"chat@{V3}"])
    reg.link("adapter", refs["adapter"], "job", "ft-2", "initialized_from")
    reg.set_job_status("ft-2", "running")
    child = reg.register_adapter("bot", path="/a/2", sha256=sha("2"), job="ft-2")
    assert child.ref == "bot@2" and child.status == "registered"

    with pytest.raises(BadRequest, match="reason must be a non-empty string"):
        reg.set_status(refs["adapter"], "stale")
    reg.set_status(refs["adapter"], "stale", "base tokenizer was wrong")
    assert reg.get_adapter("bot@2").status == "stale"
    assert "base tokenizer was wrong" in (reg.get_adapter("bot@2").stale_reason or "")


# -- transitions -----------------------------------------------------------------------------


def test_adapter_transitions(reg: Registry) -> None:
    reg.register_base_model("qwen", source="/m/qwen", format="safetensors")
    ref = reg.register_adapter("bot", path="/a/1", sha256=sha("1"), base_model="qwen").ref

    with pytest.raises(Conflict, match="bot@1 cannot go from registered to approved"):
        reg.set_status(ref, "approved")
    with pytest.raises(Conflict, match="registered -> serving follows from deployments"):
        reg.set_status(ref, "serving")
    with pytest.raises(Conflict, match=r"bot@1 is registered; only an approved adapter"):
        reg.deployments.set_serving("d", model="qwen", adapters={ref: 1.0})
    with pytest.raises(BadRequest, match="'done' is not one of"):
        reg.set_status(ref, "done")  # type: ignore[arg-type]
    with pytest.raises(BadRequest, match="give the version too"):
        reg.set_status("bot", "evaluated")

    assert reg.set_status(ref, "evaluated", metrics={"a": 1}).status == "evaluated"
    assert reg.set_status(ref, "evaluated", metrics={"b": 2}).metrics == {"a": 1, "b": 2}
    reg.set_status(ref, "approved")
    assert reg.set_status(ref, "approved").status == "approved"  # no-op
    reg.deployments.set_serving("d", model="qwen", adapters={ref: 0.2})
    assert reg.get_adapter(ref).status == "canary"
    with pytest.raises(Conflict, match="canary -> approved follows from deployments"):
        reg.set_status(ref, "approved")
    with pytest.raises(Conflict, match="cannot go from canary to retired"):
        reg.set_status(ref, "retired")
    reg.deployments.set_serving("d", model="qwen")
    assert reg.get_adapter(ref).status == "approved"
    reg.set_status(ref, "retired", "replaced")
    with pytest.raises(Conflict, match=r"from retired to evaluated.*nothing \(final\)"):
        reg.set_status(ref, "evaluated")
    # The table itself: stale only retires, retired is final, served states need deployments.
    assert ADAPTER_TRANSITIONS["stale"] == {"retired"} and not ADAPTER_TRANSITIONS["retired"]


def test_retiring_a_served_adapter_is_refused(reg: Registry) -> None:
    build_chain(reg)
    reg.set_status("bot@1", "stale", "bad")
    with pytest.raises(Conflict, match="deployment.s. support still serve it"):
        reg.set_status("bot@1", "retired")


def test_job_transitions(reg: Registry) -> None:
    reg.register_base_model("qwen", source="/m/qwen", format="safetensors")
    reg.register_dataset_version("faq", V1, record_counts={"train": 1})
    reg.register_job("ft", method="qlora", base_model="qwen", train=[f"faq@{V1}"])
    with pytest.raises(Conflict, match="job 'ft' is pending; only a running or succeeded"):
        reg.register_adapter("bot", path="/a", sha256=sha("1"), job="ft")
    with pytest.raises(Conflict, match="cannot go from pending to succeeded"):
        reg.set_job_status("ft", "succeeded")
    reg.set_job_status("ft", "running")
    job = reg.set_job_status("ft", "failed", error="CUDA OOM")
    assert (job.status, job.error) == ("failed", "CUDA OOM") and job.finished_at is not None
    with pytest.raises(Conflict, match=r"from failed to running \(from failed: nothing"):
        reg.set_job_status("ft", "running")
    with pytest.raises(Conflict, match="job 'ft' is failed"):
        reg.register_adapter("bot", path="/a", sha256=sha("1"), job="ft")


def test_an_interrupted_job_resumes_or_ends(reg: Registry) -> None:
    reg.register_base_model("qwen", source="/m/qwen", format="safetensors")
    reg.register_dataset_version("faq", V1, record_counts={"train": 1})
    for name in ("ft", "ft-2"):
        reg.register_job(name, method="lora", base_model="qwen", train=[f"faq@{V1}"])
        reg.set_job_status(name, "running")
        assert reg.set_job_status(name, "interrupted").finished_at is None
    with pytest.raises(Conflict, match="job 'ft' is interrupted; only a running or succeeded"):
        reg.register_adapter("bot", path="/a", sha256=sha("1"), job="ft")
    reg.set_job_status("ft", "running")  # resumed from its checkpoint
    reg.register_adapter("bot", path="/a", sha256=sha("1"), job="ft")
    assert reg.set_job_status("ft", "succeeded").status == "succeeded"
    assert reg.set_job_status("ft-2", "cancelled", error="run cancelled").status == "cancelled"
    assert [j.status for j in reg.list_jobs(status="interrupted")] == []


def test_a_registry_from_before_interrupted_jobs_is_migrated(url: str) -> None:
    from alembic import command

    from qingliang.platform.lifecycle.registry._db import _alembic_config, make_engine

    engine = make_engine(normalize_url(url))
    try:
        with engine.begin() as conn:
            command.upgrade(_alembic_config(conn), "0001")
    finally:
        engine.dispose()
    with Registry(url) as r:  # migrates to the head
        assert r.schema_upgraded is True
        r.register_base_model("qwen", source="/m/qwen", format="safetensors")
        r.register_dataset_version("faq", V1, record_counts={"train": 1})
        r.register_job("ft", method="lora", base_model="qwen", train=[f"faq@{V1}"])
        r.set_job_status("ft", "running")
        r.set_job_status("ft", "interrupted")
    engine = make_engine(normalize_url(url))
    try:
        with engine.begin() as conn:
            command.downgrade(_alembic_config(conn), "0001")
            row = conn.execute(text("SELECT status, error FROM registry_jobs")).one()
            assert tuple(row) == ("failed", "interrupted (schema downgraded)")
            with pytest.raises(Exception, match="(?i)check"), conn.begin_nested():
                conn.execute(text("UPDATE registry_jobs SET status = 'interrupted'"))
    finally:
        engine.dispose()


# -- deployments -----------------------------------------------------------------------------


def test_canary_rollout_and_history(reg: Registry) -> None:
    build_chain(reg)
    two = reg.register_adapter("bot", path="/a/bot-2", sha256=sha("b"), base_model="qwen").ref
    reg.set_status(two, "evaluated")
    reg.set_status(two, "approved")
    before = reg.deployments.serving("support")

    canary = reg.deployments.set_serving("support", model="qwen", adapters={"bot@1": 0.9, two: 0.1})
    assert {(a.target, a.share) for a in canary} == {("qwen", 1.0), ("bot@1", 0.9), (two, 0.1)}
    assert (reg.get_adapter("bot@1").status, reg.get_adapter(two).status) == ("canary", "canary")
    start = next(a.started_at for a in canary if a.target == two)
    assert next(a for a in canary if a.target == "qwen").started_at < start  # kept open

    reg.deployments.set_serving("support", model="qwen", adapters={two: 1.0})
    assert (reg.get_adapter("bot@1").status, reg.get_adapter(two).status) == ("approved", "serving")

    # What served when: the state just before the canary, read back by time.
    then = reg.deployments.serving("support", at=start - timedelta(microseconds=1))
    assert {(a.target, a.share) for a in then} == {(a.target, a.share) for a in before}
    history = reg.deployments.history("support")
    assert [(a.target, a.share) for a in history if a.target_kind == "adapter"] == [
        ("bot@1", 1.0),
        ("bot@1", 0.9),
        (two, 0.1),
        (two, 1.0),
    ]
    assert [(a.target, a.share) for a in history if a.ended_at is None] == [
        ("qwen", 1.0),
        (two, 1.0),
    ]

    with pytest.raises(BadRequest, match="shares of adapter 'bot' add up to 1.2"):
        reg.deployments.set_serving("support", model="qwen", adapters={"bot@1": 0.5, two: 0.7})
    with pytest.raises(BadRequest, match=r"share must be a number in \(0, 1\]"):
        reg.deployments.set_serving("support", model="qwen", adapters={two: 0})
    with pytest.raises(BadRequest, match="adapters need the model"):
        reg.deployments.set_serving("support", adapters={two: 1.0})
    reg.register_base_model("llama", source="/m/llama", format="gguf")
    with pytest.raises(BadRequest, match="bot@2 was made for 'qwen'"):
        reg.deployments.set_serving("support", model="llama", adapters={two: 1.0})

    reg.quantized.register("qwen-awq", model="qwen", method="awq", path="/q")
    now = reg.deployments.set_serving("support", quantized="qwen-awq", adapters={two: 1.0})
    assert {(a.target_kind, a.target) for a in now} == {("quantized", "qwen-awq"), ("adapter", two)}
    assert (
        reg.deployments.set_serving("support") == [] and reg.get_adapter(two).status == "approved"
    )
    with pytest.raises(NotFound, match="no deployment 'suport' in the registry; did you mean"):
        reg.deployments.serving("suport")


# -- errors and atomicity --------------------------------------------------------------------


def test_duplicates_unknowns_and_bad_input(reg: Registry) -> None:
    build_chain(reg)
    with pytest.raises(Conflict, match="base model 'qwen' is already registered"):
        reg.register_base_model("qwen", source="/other", format="gguf")
    with pytest.raises(Conflict, match=f"dataset version faq@{V1} is already registered"):
        reg.register_dataset_version("faq", V1, record_counts={"train": 1})
    with pytest.raises(Conflict, match="job 'ft-1' is already registered"):
        reg.register_job("ft-1", method="lora", base_model="qwen", train=[f"faq@{V1}"])
    reg.quantized.register("q", model="qwen", method="awq", path="/q")
    with pytest.raises(Conflict, match="quantized artifact 'q' is already registered"):
        reg.quantized.register("q", model="qwen", method="gptq", path="/q2")

    with pytest.raises(
        NotFound, match="no base model 'qwenn' in the registry; did you mean 'qwen'"
    ):
        reg.get_base_model("qwenn")
    with pytest.raises(NotFound, match="no adapter 'bto'.*did you mean 'bot'"):
        reg.get_adapter("bto")
    with pytest.raises(NotFound, match=r"adapter 'bot' has no version 7 \(it has 1..1\)"):
        reg.get_adapter("bot@7")
    with pytest.raises(NotFound, match="dataset 'faq' has no version"):
        reg.get_dataset_version(f"faq@{V3}")
    with pytest.raises(NotFound, match="no job 'ft-9'"):
        reg.set_job_status("ft-9", "running")
    with pytest.raises(NotFound, match="no deployment"):
        reg.lineage("deployment", "nope")

    with pytest.raises(BadRequest, match="not a content address"):
        reg.register_dataset_version("faq", "v2", record_counts={})
    with pytest.raises(BadRequest, match="not a valid name"):
        reg.register_base_model("a b", source="/x", format="gguf")
    with pytest.raises(BadRequest, match=r"record_counts\['train'\] must be a non-negative"):
        reg.register_dataset_version("faq", V2, record_counts={"train": -1})
    with pytest.raises(BadRequest, match="metrics is not JSON"):
        reg.set_status("bot@1", "serving", metrics={"loss": math.nan})
    with pytest.raises(BadRequest, match="method 'dora' is not one of lora, qlora"):
        reg.register_job("ft-x", method="dora", base_model="qwen", train=[f"faq@{V1}"])  # type: ignore[arg-type]
    with pytest.raises(BadRequest, match="unknown kind 'model'"):
        reg.lineage("model", "qwen")  # type: ignore[arg-type]


def test_failed_writes_leave_nothing_behind(reg: Registry) -> None:
    build_chain(reg)
    reg.register_dataset_version("faq", V2, record_counts={"train": 1})
    # The unknown dataset is found after the job row would have been written: none is.
    with pytest.raises(NotFound):
        reg.register_job("ft-2", method="lora", base_model="qwen", train=[f"faq@{V2}", f"faq@{V3}"])
    with pytest.raises(NotFound):
        reg.get_job("ft-2")
    assert reg.lineage("dataset_version", f"faq@{V2}").downstream == ()

    # The second adapter is refused after the first interval ended: the deployment is as it was.
    before = reg.deployments.serving("support")
    stale = reg.register_adapter("bot", path="/a/2", sha256=sha("2"), base_model="qwen").ref
    reg.set_status(stale, "stale", "bad")
    with pytest.raises(Conflict):
        reg.deployments.set_serving("support", model="qwen", adapters={"bot@1": 0.5, stale: 0.5})
    assert reg.deployments.serving("support") == before
    assert reg.get_adapter("bot@1").status == "serving"

    # One of two supersessions fails: neither dataset version changed, no adapter marked.
    with pytest.raises(NotFound):
        reg.mark_stale_from_dataset({V1: V2, EVAL: ver("9")}, "x")
    assert reg.get_dataset_version(f"faq@{V1}").status == "active"
    assert reg.get_adapter("bot@1").status == "serving"


# -- opening, concurrency, migrations --------------------------------------------------------


def _open_in_child(url: str, barrier: Any, out: Any) -> None:
    try:
        barrier.wait(timeout=30)
        with Registry(url) as r:
            out.put(("ok", r.schema_upgraded))
    except BaseException as exc:  # pragma: no cover - reported by the parent
        out.put(("error", repr(exc)))


def test_concurrent_opens_migrate_once(url: str) -> None:
    ctx = multiprocessing.get_context("fork")
    n = 4
    barrier, out = ctx.Barrier(n), ctx.Queue()
    procs = [ctx.Process(target=_open_in_child, args=(url, barrier, out)) for _ in range(n)]
    for p in procs:
        p.start()
    results = [out.get(timeout=60) for _ in procs]
    for p in procs:
        p.join(timeout=30)
    assert all(kind == "ok" for kind, _ in results), results
    assert sorted(upgraded for _, upgraded in results) == [False, False, False, True]
    with Registry(url) as r:
        assert r.schema_upgraded is False
        assert r.list_adapters() == []


def test_reopening_is_a_no_op_and_keeps_data(url: str) -> None:
    with Registry(url) as first:
        assert first.schema_upgraded is True
        build_chain(first)
    with Registry(url) as again:
        assert again.schema_upgraded is False
        assert again.get_adapter("bot@1").status == "serving"


def test_models_match_migrations_and_downgrade_round_trips(url: str) -> None:
    from alembic import command
    from alembic.autogenerate import compare_metadata
    from alembic.runtime.migration import MigrationContext

    from qingliang.platform.lifecycle.registry._db import _alembic_config
    from qingliang.platform.lifecycle.registry.tables import VERSION_TABLE, Base

    Registry(url).close()
    engine = create_engine(normalize_url(url))
    try:
        with engine.connect() as conn:
            ctx = MigrationContext.configure(conn, opts={"version_table": VERSION_TABLE})
            assert compare_metadata(ctx, Base.metadata) == []
        with engine.begin() as conn:
            command.downgrade(_alembic_config(conn), "base")
        with engine.connect() as conn:
            names = set(conn.dialect.get_table_names(conn))
            assert not {n for n in names if n != VERSION_TABLE}
    finally:
        engine.dispose()
    with Registry(url) as r:
        assert r.schema_upgraded is True
        r.register_base_model("qwen", source="/m", format="gguf")


def test_a_newer_schema_is_refused(url: str) -> None:
    Registry(url).close()
    engine = create_engine(normalize_url(url))
    try:
        with engine.begin() as conn:
            conn.execute(text("UPDATE registry_schema_version SET version_num = '0099_future'"))
    finally:
        engine.dispose()
    with pytest.raises(RegistryError, match="at schema revision '0099_future'.*newer Qingliang"):
        Registry(url)


def test_urls(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("QINGLIANG_HOME", str(tmp_path / "qlhome"))
    with Registry() as r:
        assert str(r.url) == f"sqlite:///{tmp_path / 'qlhome' / 'registry.sqlite'}"
        assert r.backend == "sqlite"
        with r._engine.connect() as conn:
            assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
            assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
    assert normalize_url("postgresql://u:p@h/db").drivername == "postgresql+psycopg"
    assert normalize_url("postgres://u:p@h/db").drivername == "postgresql+psycopg"
    with pytest.raises(RegistryError, match="only sqlite:/// and postgresql"):
        Registry("mysql://u:p@h/db")
    with pytest.raises(RegistryError) as err:
        Registry("postgresql://qa:s3cret-Pw@127.0.0.1:1/registry")
    assert "s3cret-Pw" not in str(err.value) and "127.0.0.1" in str(err.value)
    with Registry("sqlite://") as memory:  # in-memory, for quick experiments
        memory.register_base_model("qwen", source="/m", format="gguf")
        assert memory.get_base_model("qwen").created_at <= datetime.now(UTC)
